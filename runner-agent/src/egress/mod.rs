//! Egress of a runner: the unprivileged proxy process that decides every connection, the
//! eBPF fence that makes it mandatory, and the audit log both report to.
//!
//! ```text
//!  runner netns                    agent's netns ("the host")
//!  job ──connect(any)──▶ fence ──▶ host side of the veth:
//!                        (eBPF)      3128 explicit proxy   (HTTP_PROXY points here)
//!                                    3443 transparent TLS  (TCP to :443 anywhere)
//!                                    3080 transparent HTTP (TCP to any other port)
//!                                    3053 DNS filter       (UDP/TCP to :53 anywhere)
//!                                  egress-proxy (uid nobody, no capabilities)
//!                                    └── audit events ──▶ agent ──▶ audit log + summary
//!                  fence denials (ring buffer) ─────────▶ agent ──▶ audit log + summary
//! ```
//!
//! The listener ports are above 1024 so that the proxy needs no capability to bind them;
//! the fence rewrites a job's port 53 to the DNS filter's port and its answers back.
//! Fail closed: the fence is attached before the job's first process exists, and the
//! only thing it lets through is the proxy's ports; if the proxy is not there (not yet
//! started, crashed, killed) those connections are refused.

pub mod audit_log;
pub mod proxy_child;
pub mod proxy_process;

use std::net::Ipv4Addr;

/// Explicit HTTP proxy (absolute-form and CONNECT).
pub const EXPLICIT_PROXY_PORT: u16 = 3128;
/// Transparent TLS listener.
pub const TRANSPARENT_TLS_PORT: u16 = 3443;
/// Transparent plain-HTTP listener.
pub const TRANSPARENT_HTTP_PORT: u16 = 3080;
/// DNS filter (UDP and TCP).
pub const DNS_PORT: u16 = 3053;

/// The fence configuration of a runner whose veth has `host` on the agent's side and
/// `runner` on the runner's.
pub fn fence_config(host: Ipv4Addr, runner: Ipv4Addr, slot: u32) -> egress_ebpf::FenceConfig {
    egress_ebpf::FenceConfig {
        proxy_addr_v4: host,
        runner_addr_v4: runner,
        explicit_proxy_port: EXPLICIT_PROXY_PORT,
        transparent_tls_port: TRANSPARENT_TLS_PORT,
        transparent_http_port: TRANSPARENT_HTTP_PORT,
        dns_port: DNS_PORT,
        runner_id: slot,
        other_tcp: egress_ebpf::OtherTcp::HttpListener,
        allow_loopback: true,
    }
}

/// The proxy variables every step gets, pointing at the explicit proxy.
pub fn proxy_env(host: Ipv4Addr) -> Vec<(String, String)> {
    let url = format!("http://{host}:{EXPLICIT_PROXY_PORT}");
    let no_proxy = "localhost,127.0.0.1,::1".to_owned();
    vec![
        ("HTTP_PROXY".into(), url.clone()),
        ("HTTPS_PROXY".into(), url.clone()),
        ("http_proxy".into(), url.clone()),
        ("https_proxy".into(), url),
        ("NO_PROXY".into(), no_proxy.clone()),
        ("no_proxy".into(), no_proxy),
    ]
}

/// Converts a fence denial into an audit event (DESIGN.md 3.4, source `ebpf`).
pub fn denial_event(
    denial: &egress_ebpf::Denial,
    job: &str,
    runner: &str,
) -> egress_proxy::audit::AuditEvent {
    use egress_proxy::audit::{AuditEvent, Kind, Source, Verdict};
    let kind = match denial.hook.audit_kind() {
        "socket" => Kind::Socket,
        _ => Kind::Packet,
    };
    let mut event = AuditEvent::new(Source::Ebpf, kind, Verdict::Deny);
    event.ts = format_time(denial.wall_clock());
    event.job = Some(job.to_owned());
    event.runner = Some(runner.to_owned());
    event.ip = denial.ip;
    event.port = denial.port;
    event.pid = denial.pid;
    event.comm = denial.comm.clone();
    event.reason = Some(denial.audit_reason());
    event
}

/// Converts a system call the sandbox refused into an audit event. The contract's sources
/// are proxy, dns and ebpf; these come from the kernel-side enforcement layer too (the
/// seccomp filter), so they carry source `ebpf`, kind `socket`, and a reason starting with
/// `seccomp:` that names the call.
pub fn seccomp_event(
    denial: &crate::sandbox::SeccompDenial,
    job: &str,
    runner: &str,
) -> egress_proxy::audit::AuditEvent {
    use egress_proxy::audit::{AuditEvent, Kind, Source, Verdict};
    let mut event = AuditEvent::new(Source::Ebpf, Kind::Socket, Verdict::Deny);
    event.job = Some(job.to_owned());
    event.runner = Some(runner.to_owned());
    event.pid = denial.host_pid;
    event.comm = Some(denial.comm.clone());
    event.reason = Some(format!(
        "seccomp: {} refused (pid {} in the sandbox)",
        denial.call, denial.pid
    ));
    event
}

/// How often the fence's count of denials it could not itemise is looked at.
const LOSS_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// What of the fence's unitemised denials has been recorded.
#[derive(Default)]
struct LossReport {
    recorded: u64,
}

impl LossReport {
    /// Records one event for the denials lost since the last one, if any.
    fn report(
        &mut self,
        stream: &egress_ebpf::DenialStream,
        log: &audit_log::AuditLog,
        job: &str,
        runner: &str,
    ) {
        let Ok(lost) = stream.lost() else {
            return;
        };
        if lost > self.recorded {
            log.record(&lost_event(lost - self.recorded, lost, job, runner));
            self.recorded = lost;
        }
    }
}

/// The audit event that says `new` more of the fence's denials (`total` in all) were not
/// itemised. Source `ebpf`, kind `packet`, verdict `deny`: they were all refused.
pub fn lost_event(
    new: u64,
    total: u64,
    job: &str,
    runner: &str,
) -> egress_proxy::audit::AuditEvent {
    use egress_proxy::audit::{AuditEvent, Kind, Source, Verdict};
    let mut event = AuditEvent::new(Source::Ebpf, Kind::Packet, Verdict::Deny);
    event.job = Some(job.to_owned());
    event.runner = Some(runner.to_owned());
    event.reason = Some(format!(
        "{new} more denials not itemised: the fence's event buffer was full \
         ({total} in all so far; each was refused)"
    ));
    event
}

fn format_time(at: std::time::SystemTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(at)
        .format(&format)
        .unwrap_or_else(|_| egress_proxy::audit::now_rfc3339())
}

/// Egress could not be set up for a runner.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The fence's map or event stream was not available.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The proxy did not start.
    #[error(transparent)]
    Proxy(#[from] proxy_process::ProxyProcessError),
}

/// The live egress machinery of one runner: its proxy process and the reader of its
/// fence's denials, both writing to the job's audit log.
pub struct RunnerEgress {
    proxy: Option<proxy_process::ProxyProcess>,
    /// Moving the proxy into its cgroup ([`crate::sandbox::Sandbox::proxy_cgroup`]).
    confined: Option<tokio::task::JoinHandle<Result<(), String>>>,
    denials: tokio::task::JoinHandle<()>,
    stop_denials: tokio::sync::oneshot::Sender<()>,
    /// Ends by itself when the sandbox's control channel closes.
    seccomp: tokio::task::JoinHandle<()>,
}

/// What the proxy of a runner serves.
pub struct EgressSettings<'a> {
    /// The runner-agent binary (it also acts as the proxy process).
    pub program: &'a std::path::Path,
    /// The environment's policy.
    pub egress: &'a egress_proxy::config::EgressConfig,
    /// Resolvers the proxy asks.
    pub upstream_dns: Vec<std::net::SocketAddr>,
    /// Ranges the proxy must treat as internal (the runner pool).
    pub internal: Vec<ipnet::IpNet>,
    /// TLS interception and credentials for the proxy, when the job needs them.
    pub interception: Option<proxy_child::InterceptConfig>,
    /// The limits of the proxy's own cgroup.
    pub proxy_limits: crate::cgroup::CgroupLimits,
}

impl RunnerEgress {
    /// Starts the proxy for `sandbox`'s runner and begins logging its fence's denials.
    pub async fn start(
        sandbox: &mut crate::sandbox::Sandbox,
        job_id: &str,
        settings: EgressSettings<'_>,
        log: std::sync::Arc<audit_log::AuditLog>,
    ) -> Result<RunnerEgress, EgressError> {
        let addresses = sandbox.addresses();
        let runner = sandbox.runner().to_owned();
        let mut stream = sandbox.denials()?;
        let (stop_denials, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let denial_log = log.clone();
        let (job, runner_name) = (job_id.to_owned(), runner.clone());
        let denials = tokio::spawn(async move {
            // Denials the kernel could not itemise (its ring was full) are recorded as
            // such, so that the log itself says it is incomplete: a job flooding denials
            // could otherwise hide an attempt among the ones that were never written.
            let mut lost = LossReport::default();
            let mut check = tokio::time::interval(LOSS_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    next = stream.next() => match next {
                        Ok(denial) => denial_log.record(&denial_event(&denial, &job, &runner_name)),
                        Err(err) => {
                            tracing::error!(error = %err, "fence events stopped");
                            return;
                        }
                    },
                    _ = check.tick() => lost.report(&stream, &denial_log, &job, &runner_name),
                    _ = &mut stop_rx => break,
                }
            }
            // The job is over: log what is still queued, then stop.
            while let Some(denial) = stream.try_next() {
                denial_log.record(&denial_event(&denial, &job, &runner_name));
            }
            lost.report(&stream, &denial_log, &job, &runner_name);
        });
        let seccomp = match sandbox.seccomp_denials() {
            Some(mut denied) => {
                let (log, job, runner) = (log.clone(), job_id.to_owned(), runner.clone());
                tokio::spawn(async move {
                    while let Some(denial) = denied.recv().await {
                        log.record(&seccomp_event(&denial, &job, &runner));
                    }
                })
            }
            None => tokio::spawn(async {}),
        };
        let config = proxy_child::ProxyChildConfig {
            listen: addresses.host,
            client: std::net::IpAddr::V4(addresses.runner),
            runner,
            job: job_id.to_owned(),
            egress: proxy_process::egress_value(settings.egress),
            upstream_dns: settings.upstream_dns,
            internal: settings.internal,
            intercept: settings.interception,
        };
        let orig_dst = sandbox.orig_dst_fd()?;
        let proxy_cgroup = match sandbox.proxy_cgroup(&settings.proxy_limits) {
            Ok(cgroup) => cgroup,
            Err(err) => {
                denials.abort();
                seccomp.abort();
                return Err(err.into());
            }
        };
        let proxy = match proxy_process::ProxyProcess::start(
            settings.program,
            &config,
            orig_dst,
            log,
        )
        .await
        {
            Ok(proxy) => proxy,
            Err(err) => {
                denials.abort();
                seccomp.abort();
                return Err(err.into());
            }
        };
        // Into its cgroup once it serves, off the runner's start: moving a process waits
        // for an RCU grace period (several milliseconds; see `crate::sys::spawn`).
        let proxy_pid = proxy.pid();
        let confined = tokio::task::spawn_blocking(move || {
            let pid = proxy_pid.ok_or_else(|| "the proxy has no pid".to_owned())?;
            for procs in proxy_cgroup.procs_files() {
                std::fs::write(&procs, pid.to_string())
                    .map_err(|e| format!("move the proxy into {}: {e}", procs.display()))?;
            }
            Ok(())
        });
        Ok(RunnerEgress {
            proxy: Some(proxy),
            confined: Some(confined),
            denials,
            stop_denials,
            seccomp,
        })
    }

    /// The proxy's process id.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().and_then(|p| p.pid())
    }

    /// Stops the proxy after it has logged everything it decided. Call before the
    /// sandbox is destroyed.
    pub async fn stop_proxy(&mut self) {
        if let Some(confined) = self.confined.take() {
            match confined.await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => tracing::warn!(%why, "the proxy ran outside its cgroup"),
                Err(err) => tracing::warn!(%err, "the proxy ran outside its cgroup"),
            }
        }
        if let Some(proxy) = self.proxy.take() {
            proxy.stop().await;
        }
    }

    /// Logs what is still queued of the fence's denials and of the refused system calls,
    /// and stops. Call after the sandbox is destroyed (its control channel closed).
    pub async fn finish(mut self) {
        self.stop_proxy().await;
        let timeout = std::time::Duration::from_secs(5);
        let _ = self.stop_denials.send(());
        let _ = tokio::time::timeout(timeout, self.denials).await;
        let _ = tokio::time::timeout(timeout, self.seccomp).await;
    }
}
