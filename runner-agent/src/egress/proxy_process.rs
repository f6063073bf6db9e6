//! Starting, watching and stopping the proxy process of a runner (see `proxy_child` for
//! the process itself).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use egress_proxy::audit::{AuditEvent, Kind, Source, Verdict};
use egress_proxy::config::{EgressConfig, Mode, RuleTarget};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::oneshot;

use super::audit_log::AuditLog;
use super::proxy_child::{ProxyChildConfig, ORIG_DST_FD, PROXY_ARG, READY_LINE};

/// How long the proxy may take to bind its listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the proxy may take to stop (recording the connections it still holds) before
/// it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProcessError {
    /// The process did not start.
    #[error("start the proxy: {0}")]
    Spawn(std::io::Error),
    /// It started but did not report ready.
    #[error("the proxy did not start serving: {0}")]
    NotReady(String),
}

/// A running proxy process.
pub struct ProxyProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    events: tokio::task::JoinHandle<()>,
    /// Set by [`ProxyProcess::stop`]: the proxy's end is expected from then on.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<AuditLog>,
    /// The job id and runner name, for the events of the proxy's own end.
    names: (String, String),
}

impl ProxyProcess {
    /// Starts `program __egress-proxy` with `config`, handing it the fence's
    /// original-destination map; its audit events go to `log`. Returns once it serves.
    pub async fn start(
        program: &Path,
        config: &ProxyChildConfig,
        orig_dst: OwnedFd,
        log: Arc<AuditLog>,
    ) -> Result<ProxyProcess, ProxyProcessError> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg(PROXY_ARG)
            .env_clear()
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        crate::sys::pass_fd(&mut cmd, orig_dst, ORIG_DST_FD);
        let mut child = cmd.spawn().map_err(ProxyProcessError::Spawn)?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| ProxyProcessError::NotReady("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| ProxyProcessError::NotReady("no stdout".into()))?;
        // Zeroed once sent: it may carry the job CA's key and credentials.
        let line = crate::sandbox::protocol::json_line(config)
            .map_err(|e| ProxyProcessError::NotReady(e.to_string()))?;
        stdin
            .write_all(&line)
            .await
            .map_err(|e| ProxyProcessError::NotReady(format!("send configuration: {e}")))?;

        let (ready_tx, ready_rx) = oneshot::channel();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let names = (config.job.clone(), config.runner.clone());
        let events = tokio::spawn(read_events(
            stdout,
            Arc::clone(&log),
            ready_tx,
            stopping.clone(),
            names.clone(),
        ));
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(ProxyProcess {
                child,
                stdin: Some(stdin),
                events,
                stopping,
                log,
                names,
            }),
            Ok(Err(_)) => {
                let status = child.wait().await.ok();
                Err(ProxyProcessError::NotReady(format!(
                    "it exited ({status:?})"
                )))
            }
            Err(_) => {
                let _ = child.kill().await;
                Err(ProxyProcessError::NotReady(format!(
                    "no answer within {READY_TIMEOUT:?}"
                )))
            }
        }
    }

    /// The process id (for tests that kill the proxy).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the proxy (closing its stdin ends it) and waits until every event it wrote
    /// has been logged. A proxy that does not end within [`STOP_TIMEOUT`] (hung, or
    /// stopped by a signal) is killed, and then what it still held never reaches the log:
    /// an event says so and the job fails, rather than ending "succeeded" with connections
    /// missing from its log (found by an attack run: a tunnel's whole traffic was).
    pub async fn stop(mut self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.stdin.take());
        let ended = tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_ok();
        if !ended {
            let _ = self.child.kill().await;
        }
        let _ = tokio::time::timeout(STOP_TIMEOUT, &mut self.events).await;
        if !ended {
            let why = format!(
                "the runner's proxy did not stop within {}s of the job's end and was killed: \
                 connections it still held are not in the log",
                STOP_TIMEOUT.as_secs()
            );
            tracing::error!("{why}");
            let (job, runner) = self.names.clone();
            self.log.record(&end_event(job, runner, &why));
            self.log.fail_job(why);
        }
    }
}

/// Reads the child's stdout: `ready`, then audit events until it closes. When it closes
/// after the proxy served and before `stopping` was set, the proxy ended on its own
/// (killed, or crashed): the runner's connections are refused from then on (the fence
/// lets nothing else through), and the job fails, with an event (for `names`: job and
/// runner) that says so, rather
/// than going on to "succeed" with its network gone and nothing in the log.
async fn read_events(
    stdout: tokio::process::ChildStdout,
    log: Arc<AuditLog>,
    ready: oneshot::Sender<()>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    names: (String, String),
) {
    let mut lines = BufReader::new(stdout).lines();
    let mut ready = Some(ready);
    while let Ok(Some(line)) = lines.next_line().await {
        if line == READY_LINE {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            continue;
        }
        match serde_json::from_str::<AuditEvent>(&line) {
            Ok(event) => log.record(&event),
            Err(err) => tracing::warn!(error = %err, "unreadable event from the proxy"),
        }
    }
    let served = ready.is_none();
    if served && !stopping.load(std::sync::atomic::Ordering::SeqCst) {
        let why =
            "the runner's proxy ended while the job ran: its connections were refused from then on";
        tracing::error!("{why}");
        log.record(&end_event(names.0, names.1, why));
        log.fail_job(why.to_owned());
    }
}

/// The event recording that the proxy of `runner` (job `job`) ended badly, and `why`.
fn end_event(job: String, runner: String, why: &str) -> AuditEvent {
    let mut event = AuditEvent::new(Source::Proxy, Kind::Connect, Verdict::Deny);
    event.job = Some(job);
    event.runner = Some(runner);
    event.reason = Some(why.to_owned());
    event
}

/// The egress section in its file form (what the proxy parses), from the parsed config.
pub fn egress_value(egress: &EgressConfig) -> serde_json::Value {
    let rules: Vec<serde_json::Value> = egress
        .allow
        .iter()
        .map(|rule| {
            let mut map = serde_json::Map::new();
            match &rule.target {
                RuleTarget::Host(host) => map.insert("host".into(), host.clone().into()),
                RuleTarget::Cidr(net) => map.insert("cidr".into(), net.to_string().into()),
            };
            map.insert("ports".into(), rule.ports.clone().into());
            if let Some(methods) = &rule.methods {
                map.insert("methods".into(), methods.clone().into());
            }
            if let Some(paths) = &rule.paths {
                map.insert("paths".into(), paths.clone().into());
            }
            serde_json::Value::Object(map)
        })
        .collect();
    let mode = match egress.mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    };
    serde_json::json!({ "mode": mode, "allow": rules })
}

/// The resolvers the proxy asks: the configured ones, else the host's (`nameserver`
/// lines of /etc/resolv.conf), on port 53.
pub fn upstream_dns(configured: Option<&[IpAddr]>) -> Vec<SocketAddr> {
    let servers: Vec<IpAddr> = match configured {
        Some(list) => list.to_vec(),
        None => std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some("nameserver"))
                    .then(|| words.next().and_then(|w| w.parse().ok()))
                    .flatten()
            })
            .collect(),
    };
    servers
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_egress_section_round_trips_through_its_file_form() {
        let text = "mode: audit\nallow:\n  - host: \"*.example.com\"\n    ports: [443]\n    methods: [GET]\n    paths: [\"/a/*\"]\n  - cidr: 198.51.100.0/24\n    ports: [5432]\n";
        let parsed: EgressConfig =
            egress_proxy::yaml::parse_str(Path::new("x.yaml"), text).unwrap();
        let value = egress_value(&parsed);
        let again: EgressConfig = serde_json::from_value(value).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn configured_resolvers_win() {
        let ips: Vec<IpAddr> = vec!["198.51.100.53".parse().unwrap()];
        assert_eq!(
            upstream_dns(Some(&ips)),
            vec!["198.51.100.53:53".parse().unwrap()]
        );
    }
}
