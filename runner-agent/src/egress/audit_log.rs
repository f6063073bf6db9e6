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
//!
//! What a job can make it write is bounded, because every decision is a line and a job
//! looping over denied connections causes tens of megabytes a second (a Python loop of
//! IPv6 connects: 167 MB in 5 s) on the host's disk:
//!
//! - Once the job's events reach the budget (`limits.audit_log`), [`AuditLog::exhausted`]
//!   resolves and the agent stops the job. Events keep being written while it stops, up
//!   to [`OVERRUN`] beyond the budget; anything after that is counted, not written, and
//!   the count is reported ([`AuditLog::budget_report`]). So the file never grows by more
//!   than budget + [`OVERRUN`] per job.
//! - The per-destination tally behind the summary keeps at most [`TALLY_DESTINATIONS`]
//!   destinations; further ones are counted under one "(other destinations)" row, so a
//!   job that tries a million addresses costs neither the agent's memory nor a
//!   million-line summary.
//!
//! The log also carries why a job fails for its egress's sake without being cut short
//! ([`AuditLog::fail_job`]): the runner's proxy ending while the job runs. The step that
//! runs goes on (without a way out), no further step starts, and the job fails.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use egress_proxy::audit::{AuditEvent, Verdict};

use crate::mask::Masker;

/// Whether JSON writes `c` as an escape (RFC 8259 section 7).
fn needs_json_escape(c: char) -> bool {
    c == '"' || c == '\\' || c.is_control()
}

/// Counts of one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Decisions that let traffic through (in audit mode, including would-be denials).
    pub allowed: u64,
    /// Decisions that stopped it.
    pub denied: u64,
}

/// Bytes written past the budget while the job is being stopped, before events are only
/// counted.
pub const OVERRUN: u64 = 1 << 20;

/// Destinations the summary tallies one by one.
pub const TALLY_DESTINATIONS: usize = 1000;

/// The summary row that counts every destination beyond [`TALLY_DESTINATIONS`].
const OTHER_DESTINATIONS: &str = "(other destinations)";

/// The audit log of one job.
pub struct AuditLog {
    file: Mutex<File>,
    masker: Masker,
    tally: Mutex<BTreeMap<String, Tally>>,
    /// Bytes of events this job has caused, counted until they pass the budget and its
    /// overrun (past that, events are only counted in `unwritten`).
    caused: AtomicU64,
    /// Bytes after which the job is stopped.
    budget: u64,
    /// Events counted but not written (past budget + [`OVERRUN`]).
    unwritten: AtomicU64,
    /// Woken when `caused` crosses `budget`.
    reached_notify: tokio::sync::Notify,
    /// Why the job fails ([`AuditLog::fail_job`]).
    failure: Mutex<Option<String>>,
}

impl AuditLog {
    /// Creates (or appends to) the log at `path`, making its directory if needed; what
    /// is written is masked with `masker`; the job may cause `budget` bytes of events.
    pub fn create(path: &Path, masker: Masker, budget: u64) -> std::io::Result<AuditLog> {
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
            caused: AtomicU64::new(0),
            budget,
            unwritten: AtomicU64::new(0),
            reached_notify: tokio::sync::Notify::new(),
            failure: Mutex::new(None),
        })
    }

    /// Writes one event (within the budget and its overrun; see the module docs) and
    /// counts it under its destination.
    pub fn record(&self, event: &AuditEvent) {
        let write_limit = self.budget.saturating_add(OVERRUN);
        if self.caused.load(Ordering::SeqCst) >= write_limit {
            // Past the overrun every event is only counted: no need to build its line.
            self.unwritten.fetch_add(1, Ordering::SeqCst);
            return self.count(&destination(event), event.verdict);
        }
        let mut line = self.masked_line(event);
        line.push('\n');
        let len = line.len() as u64;
        let before = self.caused.fetch_add(len, Ordering::SeqCst);
        if before + len <= write_limit {
            if let Err(err) = self
                .file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(line.as_bytes())
            {
                tracing::error!(error = %err, "cannot write the audit log");
            }
        } else {
            self.unwritten.fetch_add(1, Ordering::SeqCst);
        }
        // `fetch_add` lets exactly one event cross the budget: it wakes the waiters.
        if before < self.budget && before + len >= self.budget {
            self.reached_notify.notify_waiters();
        }
        self.count(&destination(event), event.verdict);
    }

    /// `event` as a JSON line in which no secret value appears.
    ///
    /// The values are masked, not the serialised line: masking across JSON's escapes
    /// broke the line (a job sending a tab and then a secret's tail made `\t` + tail spell
    /// the secret, and `\***` is no JSON) and missed a secret that escaping had changed
    /// (one with a quote in it). A job can still combine an escape with its text so that
    /// the line spells a secret that no value holds; then the line is built again with
    /// every character JSON would escape replaced in the job's text, and if even that
    /// spells one, with the job's text replaced by the mask.
    fn masked_line(&self, event: &AuditEvent) -> String {
        let line = self
            .with_text(event, |text| self.masker.mask_str(text))
            .to_json();
        if !self.holds_secret(&line) {
            return line;
        }
        let line = self
            .with_text(event, |text| {
                let plain: String = text
                    .chars()
                    .map(|c| if needs_json_escape(c) { '\u{fffd}' } else { c })
                    .collect();
                self.masker.mask_str(&plain)
            })
            .to_json();
        if !self.holds_secret(&line) {
            return line;
        }
        self.with_text(event, |_| crate::mask::MASK.to_owned())
            .to_json()
    }

    /// Whether `text` holds a secret value (or one of its masked forms).
    fn holds_secret(&self, text: &str) -> bool {
        self.masker.mask_str(text) != text
    }

    /// `event` with `rewrite` applied to each text field the job can choose.
    fn with_text(&self, event: &AuditEvent, rewrite: impl Fn(&str) -> String) -> AuditEvent {
        let mut event = event.clone();
        // The job id and runner name are the agent's own names, kept as they are.
        for field in [
            &mut event.host,
            &mut event.method,
            &mut event.path,
            &mut event.reason,
            &mut event.rule,
            &mut event.comm,
        ] {
            if let Some(text) = field.as_mut() {
                *text = rewrite(text);
            }
        }
        event
    }

    fn count(&self, destination: &str, verdict: Verdict) {
        let key = self.masker.mask_str(destination);
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        // The "other" row does not count against the limit, so the map holds at most
        // TALLY_DESTINATIONS + 1 rows.
        let key = if tally.contains_key(&key) || tally.len() < TALLY_DESTINATIONS {
            key
        } else {
            OTHER_DESTINATIONS.to_owned()
        };
        let entry = tally.entry(key).or_default();
        match verdict {
            Verdict::Allow => entry.allowed += 1,
            Verdict::Deny => entry.denied += 1,
        }
    }

    /// Resolves once the job's events have reached the budget (at once if they have).
    pub async fn exhausted(&self) {
        loop {
            // Created before the check: a Notified future receives notify_waiters() calls
            // made after its creation even before it is first polled (tokio docs).
            let notified = self.reached_notify.notified();
            if self.reached() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the job's events have reached the budget.
    fn reached(&self) -> bool {
        self.caused.load(Ordering::SeqCst) >= self.budget
    }

    /// Why the job is stopped, once the budget has been reached.
    pub fn budget_report(&self) -> Option<String> {
        self.reached().then(|| {
            format!(
                "its audit events reached limits.audit_log ({})",
                crate::config::format_size(self.budget)
            )
        })
    }

    /// Marks the job as failed for `reason` (the first reason given is kept): no further
    /// step starts (see the module docs).
    pub fn fail_job(&self, reason: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some(reason);
        }
    }

    /// Why the job failed, if [`AuditLog::fail_job`] was called.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Events counted but not written (past the budget and its overrun).
    pub fn unwritten(&self) -> u64 {
        self.unwritten.load(Ordering::SeqCst)
    }

    /// The tally so far, by destination.
    pub fn tally(&self) -> BTreeMap<String, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The egress summary printed at the end of a job, with a line for the events that
    /// were counted but not written, if any.
    pub fn summary(&self) -> String {
        let unwritten = match self.unwritten() {
            0 => String::new(),
            n => format!(
                "Audit log: {n} events past limits.audit_log ({}) and its {} overrun were \
                 counted here but not written.\n",
                crate::config::format_size(self.budget),
                crate::config::format_size(OVERRUN)
            ),
        };
        self.tally_summary() + &unwritten
    }

    fn tally_summary(&self) -> String {
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
    use crate::config::MIB;
    use egress_proxy::audit::{Kind, Source};

    fn no_secrets() -> Masker {
        Masker::new(std::iter::empty::<&[u8]>())
    }

    fn denial(port: u16) -> AuditEvent {
        let mut event = AuditEvent::new(Source::Ebpf, Kind::Socket, Verdict::Deny);
        event.ip = Some("2001:db8::1".parse().unwrap());
        event.port = Some(port);
        event
    }

    /// The one line `event` becomes in a log masking `secret`, parsed.
    fn written(secret: &str, event: &AuditEvent) -> (String, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::create(&path, Masker::new([secret.as_bytes()]), 1 << 20).unwrap();
        log.record(event);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let value = serde_json::from_str(text.trim_end())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (text, value)
    }

    /// A job sent a tab, then a secret's tail: JSON's `\t` spelled the secret in the
    /// line, and masking the line once left `\***`, which is no JSON (found by an attack
    /// run: `jq` stopped reading the log there).
    #[test]
    fn an_escape_next_to_the_jobs_text_neither_breaks_the_line_nor_spells_a_secret() {
        let secret = "tok-4f9c2b";
        let mut event = denial(443);
        event.host = Some(format!("a\n{}", &secret[1..]));
        event.reason = Some(format!("`a\t{}` is not a valid host name", &secret[1..]));
        let (text, value) = written(secret, &event);
        assert!(!text.contains(secret), "{text}");
        assert_eq!(
            value["reason"],
            "`a\u{fffd}ok-4f9c2b` is not a valid host name"
        );
        assert_eq!(value["host"], "a\u{fffd}ok-4f9c2b");
        // Text that spells nothing keeps its escapes.
        event.reason = Some("`a\tb` is not a valid host name".to_owned());
        event.host = Some("a\nb".to_owned());
        let (_, value) = written(secret, &event);
        assert_eq!(value["reason"], "`a\tb` is not a valid host name");
        assert_eq!(value["host"], "a\nb");
    }

    /// A secret with a quote is written escaped (`\"`): only masking the value finds it.
    #[test]
    fn a_secret_is_masked_in_a_value_whatever_json_makes_of_it() {
        let secret = "pa\"ss\\77x1";
        let mut event = denial(80);
        event.path = Some(format!("/x?{secret}"));
        event.comm = Some(secret.to_owned());
        let (text, value) = written(secret, &event);
        assert!(!text.contains("77x1"), "{text}");
        assert_eq!(value["path"], "/x?***");
        assert_eq!(value["comm"], "***");
    }

    /// Even plain text can spell a secret across the line's own punctuation: then the
    /// job's text goes whole.
    #[test]
    fn a_secret_spelt_across_fields_masks_the_jobs_text_whole() {
        let secret = "com\",\"ip";
        let mut event = denial(443);
        event.host = Some("evil.com".to_owned());
        let (text, value) = written(secret, &event);
        assert!(!text.contains(secret), "{text}");
        assert_eq!(value["host"], "***");
        assert_eq!(value["port"], 443);
    }

    #[tokio::test]
    async fn the_budget_stops_the_job_and_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let budget = 64 * 1024;
        let log = AuditLog::create(&path, no_secrets(), budget).unwrap();
        let line = log.masked_line(&denial(80)).len() as u64 + 1;
        // Below the budget: nothing reached yet.
        for _ in 0..budget / line - 1 {
            log.record(&denial(80));
        }
        assert!(log.budget_report().is_none());
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), log.exhausted());
        assert!(
            pending.await.is_err(),
            "exhausted() resolved below the budget"
        );
        // A waiter that starts before the budget is reached is woken when it is.
        let (woken, ()) = tokio::join!(
            tokio::time::timeout(std::time::Duration::from_secs(5), log.exhausted()),
            async {
                tokio::task::yield_now().await;
                for _ in 0..2 {
                    log.record(&denial(80));
                }
            }
        );
        assert!(woken.is_ok(), "exhausted() did not resolve at the budget");
        assert_eq!(
            log.budget_report().unwrap(),
            "its audit events reached limits.audit_log (64KiB)"
        );
        // Far past it: the file stops at budget + OVERRUN, the rest is counted.
        let flood = 2 * (budget + OVERRUN) / line;
        for _ in 0..flood {
            log.record(&denial(80));
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= budget + OVERRUN, "{size} bytes written");
        assert!(size > budget + OVERRUN - line, "{size} bytes written");
        let written = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        let total = budget / line + 1 + flood;
        assert_eq!(log.tally()["[2001:db8::1]:80"].denied, total);
        assert_eq!(log.unwritten(), total - written);
        let summary = log.summary();
        assert!(
            summary.contains(&format!(
                "Audit log: {} events past limits.audit_log (64KiB) and its 1MiB overrun",
                total - written
            )),
            "{summary}"
        );
        // Already reached: resolves at once.
        log.exhausted().await;
    }

    #[test]
    fn the_tally_keeps_a_bounded_number_of_destinations() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::create(&dir.path().join("a.jsonl"), no_secrets(), 64 * MIB).unwrap();
        for port in 1..=TALLY_DESTINATIONS as u16 + 500 {
            log.record(&denial(port));
        }
        // A destination already counted keeps its own row.
        log.record(&denial(1));
        let tally = log.tally();
        assert_eq!(tally.len(), TALLY_DESTINATIONS + 1);
        assert_eq!(tally["[2001:db8::1]:1"].denied, 2);
        assert_eq!(tally[OTHER_DESTINATIONS].denied, 500);
        assert_eq!(log.summary().lines().count(), TALLY_DESTINATIONS + 3);
    }

    #[test]
    fn secrets_are_masked_in_lines_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::create(&path, Masker::new([b"tok3n-s3cret".as_slice()]), MIB).unwrap();
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
        let log = AuditLog::create(&path, no_secrets(), MIB).unwrap();
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
