//! Audit events (DESIGN.md 3.4) and the sinks that receive them.
//!
//! One [`AuditEvent`] is one egress decision. The proxy, the DNS filter, the agent and the
//! eBPF layer all emit this struct, so it is deliberately general: every field that may not
//! apply is an `Option` and is written as `null`, never omitted, and fields are serialised
//! in the order of DESIGN.md 3.4. One field follows the documented ones: `duration_ms`,
//! the lifetime of a connection or request whose end the event records (null otherwise);
//! consumers that only know the documented fields can ignore it.
//!
//! When events are written: a denial is written at once; an allowed connection, tunnel or
//! request is written when it ends, with `bytes_up` (client to server), `bytes_down` and
//! `duration_ms`, so that one line answers both "was it allowed" and "what went through".
//!
//! `ts` is RFC 3339 in UTC with milliseconds (`2026-11-22T10:00:00.123Z`).

use std::io::Write;
use std::net::IpAddr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Which layer made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The L7 proxy.
    Proxy,
    /// The DNS filter.
    Dns,
    /// The kernel programs.
    Ebpf,
}

/// What was decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A plain HTTP request (explicit or transparent).
    Http,
    /// A CONNECT tunnel.
    Connect,
    /// A transparent TLS connection (decided on the SNI).
    Tls,
    /// A DNS question.
    Dns,
    /// A socket operation (eBPF).
    Socket,
    /// A packet (eBPF).
    Packet,
}

/// allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Traffic went on (in audit mode, possibly with a deny reason).
    Allow,
    /// Traffic was stopped.
    Deny,
}

/// One line of the audit log. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// Job id.
    pub job: Option<String>,
    /// Runner name.
    pub runner: Option<String>,
    /// Deciding layer.
    pub source: Source,
    /// What was decided on.
    pub kind: Kind,
    /// Name asked for (SNI, Host, CONNECT host, DNS question), normalised when valid.
    pub host: Option<String>,
    /// Address dialled, or asked for when the host was an address.
    pub ip: Option<IpAddr>,
    /// Destination port.
    pub port: Option<u16>,
    /// HTTP method, when visible.
    pub method: Option<String>,
    /// HTTP path, when visible.
    pub path: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it was (or would have been, in audit mode) denied, or what went wrong.
    pub reason: Option<String>,
    /// The rule that allowed it.
    pub rule: Option<String>,
    /// Process id, when known (eBPF).
    pub pid: Option<u32>,
    /// Process name, when known (eBPF).
    pub comm: Option<String>,
    /// Bytes from the client toward the destination.
    pub bytes_up: Option<u64>,
    /// Bytes from the destination toward the client.
    pub bytes_down: Option<u64>,
    /// How long the connection or request lasted, when the event records its end.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

impl AuditEvent {
    /// A new event stamped now, every optional field null.
    pub fn new(source: Source, kind: Kind, verdict: Verdict) -> Self {
        AuditEvent {
            ts: now_rfc3339(),
            job: None,
            runner: None,
            source,
            kind,
            host: None,
            ip: None,
            port: None,
            method: None,
            path: None,
            verdict,
            reason: None,
            rule: None,
            pid: None,
            comm: None,
            bytes_up: None,
            bytes_down: None,
            duration_ms: None,
        }
    }

    /// The event as one JSON line (without the newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("audit events always serialise")
    }
}

/// `2026-11-22T10:00:00.123Z`.
pub fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

/// Where events go. Implementations must not block for long: they are called on the
/// connection's task.
pub trait AuditSink: Send + Sync {
    /// Records one event.
    fn record(&self, event: AuditEvent);
}

/// Writes JSON lines to any writer (a file, stdout) from a writer thread of its own.
///
/// Events are serialised on the caller's thread and handed over a bounded channel; the
/// writer thread writes whatever has queued up in one `write` and flushes, so a busy
/// proxy pays one system call per batch rather than per event (an event reaches the
/// writer within a few milliseconds), and lines from concurrent
/// connections never interleave. When the queue is full, callers wait (back-pressure:
/// events are never dropped). Dropping the sink drains the queue and flushes before it
/// returns, so nothing recorded is lost on an orderly exit.
pub struct JsonLinesSink {
    queue: Option<std::sync::mpsc::SyncSender<String>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Events queued before callers wait.
const QUEUE: usize = 16 * 1024;
/// Pause after each batch; bounds how late an event reaches the file.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl JsonLinesSink {
    /// Starts the writer thread over `out`.
    pub fn new<W: Write + Send + 'static>(mut out: W) -> Self {
        let (queue, lines) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let writer = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || {
                let mut batch = String::new();
                while let Ok(line) = lines.recv() {
                    batch.push_str(&line);
                    while batch.len() < 1 << 20 {
                        match lines.try_recv() {
                            Ok(line) => batch.push_str(&line),
                            Err(_) => break,
                        }
                    }
                    if let Err(err) = out.write_all(batch.as_bytes()).and_then(|()| out.flush()) {
                        tracing::error!(error = %err, "cannot write audit events");
                    }
                    batch.clear();
                    // Let events gather for a moment: senders only enqueue while the
                    // writer sleeps, so a busy proxy wakes this thread a few hundred
                    // times a second instead of once per event.
                    std::thread::sleep(BATCH_PAUSE);
                }
            })
            .ok();
        JsonLinesSink {
            queue: Some(queue),
            writer,
        }
    }
}

impl AuditSink for JsonLinesSink {
    fn record(&self, event: AuditEvent) {
        let mut line = event.to_json();
        line.push('\n');
        if let Some(queue) = &self.queue {
            if queue.send(line).is_err() {
                tracing::error!("audit writer is gone; event lost");
            }
        }
    }
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Keeps events in memory (tests, and embedders that poll).
#[derive(Default)]
pub struct MemorySink {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemorySink {
    /// A copy of every event so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: AuditEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}

/// Drops every event (benchmarks that measure the proxy without logging).
pub struct NullSink;

impl AuditSink for NullSink {
    fn record(&self, _event: AuditEvent) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_the_contract() {
        let mut e = AuditEvent::new(Source::Proxy, Kind::Connect, Verdict::Deny);
        e.ts = "2026-11-22T10:00:00.123Z".into();
        e.job = Some("j-1".into());
        e.runner = Some("r-3".into());
        e.host = Some("github.com".into());
        e.ip = Some("140.82.112.3".parse().unwrap());
        e.port = Some(443);
        e.reason = Some("host not allowed".into());
        e.pid = Some(4242);
        e.comm = Some("curl".into());
        e.bytes_up = Some(0);
        e.bytes_down = Some(0);
        assert_eq!(
            e.to_json(),
            r#"{"ts":"2026-11-22T10:00:00.123Z","job":"j-1","runner":"r-3","source":"proxy","kind":"connect","host":"github.com","ip":"140.82.112.3","port":443,"method":null,"path":null,"verdict":"deny","reason":"host not allowed","rule":null,"pid":4242,"comm":"curl","bytes_up":0,"bytes_down":0,"duration_ms":null}"#
        );
        let back: AuditEvent = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn timestamp_shape() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    }

    /// A writer whose bytes the test can read after the sink is gone.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_sink_writes_every_line_before_drop_returns() {
        let out = Shared::default();
        let sink = JsonLinesSink::new(out.clone());
        for _ in 0..1000 {
            sink.record(AuditEvent::new(Source::Dns, Kind::Dns, Verdict::Allow));
        }
        sink.record(AuditEvent::new(Source::Ebpf, Kind::Packet, Verdict::Deny));
        drop(sink);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1001);
        assert!(lines[1000].contains(r#""source":"ebpf","kind":"packet""#));
        assert!(lines
            .iter()
            .all(|l| serde_json::from_str::<AuditEvent>(l).is_ok()));
    }
}
