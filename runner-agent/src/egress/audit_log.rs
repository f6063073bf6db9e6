//! The job's audit log: every egress decision as one JSON line (DESIGN.md 3.4), from the
//! proxy process and from the eBPF fence, plus the per-host tally printed as the egress
//! summary at the end of the job.
//!
//! One writer for both sources: each event is serialised once and written with a single
//! `write` under a lock, so lines from concurrent connections never interleave. The file
//! is created with mode 0600 (it names what the job tried to reach).
//!
//! Secret values the job was given are masked in every line and in the summary (a job
//! can put a value into a URL, a DNS label or a host name; the log must not keep it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use egress_proxy::audit::{AuditEvent, Verdict};

use crate::mask::Masker;

/// Counts of one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Decisions that let traffic through (in audit mode, including would-be denials).
    pub allowed: u64,
    /// Decisions that stopped it.
    pub denied: u64,
}

/// The audit log of one job.
pub struct AuditLog {
    file: Mutex<File>,
    masker: Masker,
    tally: Mutex<BTreeMap<String, Tally>>,
}

impl AuditLog {
    /// Creates (or appends to) the log at `path`, making its directory if needed; what
    /// is written is masked with `masker`.
    pub fn create(path: &Path, masker: Masker) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            file: Mutex::new(file),
            masker,
            tally: Mutex::new(BTreeMap::new()),
        })
    }

    /// Writes one event and counts it under its destination.
    pub fn record(&self, event: &AuditEvent) {
        let mut line = self.masker.mask_str(&event.to_json());
        line.push('\n');
        if let Err(err) = self
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(line.as_bytes())
        {
            tracing::error!(error = %err, "cannot write the audit log");
        }
        let key = self.masker.mask_str(&destination(event));
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        let entry = tally.entry(key).or_default();
        match event.verdict {
            Verdict::Allow => entry.allowed += 1,
            Verdict::Deny => entry.denied += 1,
        }
    }

    /// The tally so far, by destination.
    pub fn tally(&self) -> BTreeMap<String, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The egress summary printed at the end of a job.
    pub fn summary(&self) -> String {
        let tally = self.tally();
        if tally.is_empty() {
            return "Egress summary: no connection or lookup was attempted.\n".to_owned();
        }
        let width = tally.keys().map(String::len).max().unwrap_or(4).max(4);
        let mut text = format!("Egress summary:\n  {:<width$}  allowed  denied\n", "host");
        for (host, t) in &tally {
            text.push_str(&format!(
                "  {host:<width$}  {:>7}  {:>6}\n",
                t.allowed, t.denied
            ));
        }
        text
    }
}

/// What a summary line is about: the name when one was asked for, else the address and
/// port, else the kind of attempt.
fn destination(event: &AuditEvent) -> String {
    match (&event.host, event.ip, event.port) {
        (Some(host), _, Some(port)) if port != 80 && port != 443 && port != 53 => {
            format!("{host}:{port}")
        }
        (Some(host), _, _) => host.clone(),
        (None, Some(ip), Some(port)) => match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            v4 => format!("{v4}:{port}"),
        },
        (None, Some(ip), None) => ip.to_string(),
        (None, None, _) => match event
            .reason
            .as_deref()
            .and_then(|r| r.strip_prefix("seccomp: "))
        {
            // "seccomp: bpf() refused (...)": summarise by the call.
            Some(rest) => format!(
                "(refused) {}",
                rest.split(" refused").next().unwrap_or(rest)
            ),
            None => format!("({} {})", source_name(event), kind_name(event)),
        },
    }
}

fn source_name(event: &AuditEvent) -> String {
    serde_json::to_value(event.source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn kind_name(event: &AuditEvent) -> String {
    serde_json::to_value(event.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_proxy::audit::{Kind, Source};

    #[test]
    fn secrets_are_masked_in_lines_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::create(&path, Masker::new([b"tok3n-s3cret".as_slice()])).unwrap();
        let mut event = AuditEvent::new(Source::Dns, Kind::Dns, Verdict::Deny);
        event.host = Some("tok3n-s3cret.evil.example".into());
        event.path = Some("/?t=tok3n-s3cret".into());
        log.record(&event);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("tok3n-s3cret"), "{text}");
        assert!(text.contains("***.evil.example"), "{text}");
        assert!(!log.summary().contains("tok3n-s3cret"));
    }

    #[test]
    fn events_are_written_as_lines_and_tallied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let log = AuditLog::create(&path, Masker::new(std::iter::empty::<&[u8]>())).unwrap();
        let mut allowed = AuditEvent::new(Source::Proxy, Kind::Connect, Verdict::Allow);
        allowed.host = Some("example.com".into());
        allowed.port = Some(443);
        let mut denied = AuditEvent::new(Source::Ebpf, Kind::Socket, Verdict::Deny);
        denied.ip = Some("203.0.113.10".parse().unwrap());
        denied.port = Some(5432);
        log.record(&allowed);
        log.record(&denied);
        log.record(&allowed);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        for line in text.lines() {
            serde_json::from_str::<AuditEvent>(line).unwrap();
        }
        let tally = log.tally();
        assert_eq!(
            tally["example.com"],
            Tally {
                allowed: 2,
                denied: 0
            }
        );
        assert_eq!(
            tally["203.0.113.10:5432"],
            Tally {
                allowed: 0,
                denied: 1
            }
        );
        assert!(log.summary().contains("example.com"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
