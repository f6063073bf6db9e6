//! The proxy process: `runner-agent __egress-proxy`, started by the agent for one runner.
//!
//! It reads its configuration (one JSON line) from stdin, takes the fence's
//! original-destination map from descriptor 3, and then, still single-threaded, drops to
//! uid/gid `nobody` with no supplementary groups and no_new_privs: from then on it holds
//! no capability at all (DESIGN.md 1: "the proxy runs without root and without
//! capabilities"). Only then does it start its runtime, bind its listeners (ports above
//! 1024, on the host side of the runner's veth) and serve.
//!
//! When the job needs TLS interception, the configuration also carries the job CA's key
//! and the credentials to inject (see `crate::interception`); they live only in this
//! process's memory, which is made non-dumpable (no core file, no /proc/PID/mem for other
//! processes of uid nobody), and die with it.
//!
//! Audit events go to stdout, one JSON line each, after a first line `ready` that tells
//! the agent every listener is bound. When stdin closes (the agent is done, or dead), the
//! process exits: a proxy never outlives its agent. It first drops every connection, so
//! that those still open (a tunnel a job kept open to its end) are recorded with what
//! went through them.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use egress_proxy::audit::{AuditEvent, AuditSink};
use egress_proxy::config::EgressConfig;
use egress_proxy::intercept::{Credential, Interception, JobCa};
use egress_proxy::policy::Policy;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{DNS_PORT, EXPLICIT_PROXY_PORT, TRANSPARENT_HTTP_PORT, TRANSPARENT_TLS_PORT};

/// The hidden first argument that makes `runner-agent` act as the proxy process.
pub const PROXY_ARG: &str = "__egress-proxy";

/// The line the child prints once it serves.
pub const READY_LINE: &str = "ready";

/// The descriptor on which the child receives the original-destination map.
pub const ORIG_DST_FD: i32 = 3;

/// The unprivileged identity the proxy runs as.
pub const PROXY_UID: u32 = 65534;

/// TLS interception for the runner: the job CA, the credentials, the upstream roots.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptConfig {
    /// The job CA's certificate (PEM).
    pub ca_cert_pem: String,
    /// Its key (PEM); zeroed on drop.
    pub ca_key_pem: Zeroizing<String>,
    /// Credentials to inject.
    pub credentials: Vec<Credential>,
    /// Roots trusted for the proxy's own TLS connections upstream (PEM bundle).
    pub upstream_roots_pem: String,
}

impl std::fmt::Debug for InterceptConfig {
    /// Names only: never the key or a value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.credentials.iter().map(|c| c.name.as_str()).collect();
        f.debug_struct("InterceptConfig")
            .field("credentials", &names)
            .finish_non_exhaustive()
    }
}

/// What the proxy child serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyChildConfig {
    /// Where to listen (the host side of the runner's veth).
    pub listen: Ipv4Addr,
    /// The runner's address: the only client.
    pub client: IpAddr,
    /// Runner name, for audit events.
    pub runner: String,
    /// Job id, for audit events.
    pub job: String,
    /// The environment's egress section, in the host config's form.
    pub egress: serde_json::Value,
    /// Resolvers to ask.
    pub upstream_dns: Vec<SocketAddr>,
    /// Ranges treated as internal besides the built-in ones (the runner pool).
    pub internal: Vec<ipnet::IpNet>,
    /// TLS interception and credential injection, when the job needs them.
    #[serde(default)]
    pub intercept: Option<InterceptConfig>,
}

/// Writes each event as a JSON line to stdout.
struct StdoutSink;

impl AuditSink for StdoutSink {
    fn record(&self, event: AuditEvent) {
        let mut line = event.to_json();
        line.push('\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

/// Looks up redirected connections in the fence's map.
struct FenceLookup(egress_ebpf::OriginalDestinations);

impl egress_proxy::origdst::OriginalDestination for FenceLookup {
    /// The fence also recorded which process connected: it goes into the audit events.
    /// Datagrams to the DNS filter are recorded too, as they leave the runner's socket.
    fn lookup_peer(&self, peer: std::net::SocketAddr) -> Option<egress_proxy::origdst::Origin> {
        let entry = self.0.lookup_entry(peer).ok().flatten()?;
        Some(egress_proxy::origdst::Origin {
            destination: entry.destination,
            pid: Some(entry.pid).filter(|pid| *pid != 0),
            comm: Some(entry.comm).filter(|comm| !comm.is_empty()),
        })
    }
}

fn fail(message: String) -> ! {
    eprintln!("egress-proxy: {message}");
    std::process::exit(1)
}

/// Entry point of `runner-agent __egress-proxy`. Never returns.
pub fn main() -> ! {
    // Before any secret arrives: no core dump, no reading of this process's memory by
    // other processes of its uid (prctl(2), PR_SET_DUMPABLE).
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        fail(format!("make the process non-dumpable: {err}"));
    }
    let line = crate::sandbox::protocol::read_secret_line(&mut std::io::stdin().lock())
        .unwrap_or_else(|err| fail(format!("read configuration: {err}")));
    let mut config: ProxyChildConfig =
        serde_json::from_slice(&line).unwrap_or_else(|e| fail(format!("bad configuration: {e}")));
    drop(line);
    let interception = config.intercept.take().map(|intercept| {
        build_interception(intercept).unwrap_or_else(|e| fail(format!("interception: {e}")))
    });
    let egress: EgressConfig = serde_json::from_value(config.egress.clone())
        .unwrap_or_else(|e| fail(format!("bad egress policy: {e}")));
    let policy = Policy::new(&egress).unwrap_or_else(|e| fail(format!("egress policy: {e}")));
    let orig_dst = crate::sys::take_inherited_fd(ORIG_DST_FD)
        .map_err(|e| e.to_string())
        .and_then(|fd| egress_ebpf::OriginalDestinations::from_fd(fd).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| fail(format!("original-destination map: {e}")));
    if let Err(err) = drop_privileges() {
        fail(format!("drop privileges: {err}"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("runtime: {e}")));
    runtime.block_on(serve(config, Arc::new(policy), interception, orig_dst));
    // Shutting the runtime down drops every connection's task: a tunnel or request still
    // open writes its event then (`egress_proxy` records an open tunnel when it is
    // dropped), before the process ends. `exit` alone would drop nothing.
    runtime.shutdown_timeout(SHUTDOWN_WAIT);
    std::process::exit(0)
}

/// How long the runtime's shutdown waits for blocking work (a DNS exchange, say) after
/// every task has been dropped.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The proxy's interception from the agent's configuration.
fn build_interception(config: InterceptConfig) -> Result<Arc<Interception>, String> {
    let ca = JobCa::from_pem(&config.ca_cert_pem, &config.ca_key_pem).map_err(|e| e.to_string())?;
    Interception::new(
        ca,
        config.credentials.clone(),
        config.upstream_roots_pem.as_bytes(),
    )
    .map(Arc::new)
    .map_err(|e| e.to_string())
}

/// Becomes `nobody`: no supplementary groups, then gid, then uid (in that order, since
/// changing the uid first would take away the right to change the rest). Changing every
/// uid away from 0 clears all capability sets (capabilities(7), "Effect of user ID
/// changes"); no_new_privs keeps an exec from regaining any.
fn drop_privileges() -> nix::Result<()> {
    use nix::unistd::{Gid, Uid};
    nix::unistd::setgroups(&[])?;
    let gid = Gid::from_raw(PROXY_UID);
    nix::unistd::setresgid(gid, gid, gid)?;
    let uid = Uid::from_raw(PROXY_UID);
    nix::unistd::setresuid(uid, uid, uid)?;
    nix::sys::prctl::set_no_new_privs()?;
    if nix::unistd::geteuid().is_root() {
        return Err(nix::errno::Errno::EPERM);
    }
    Ok(())
}

async fn serve(
    config: ProxyChildConfig,
    policy: Arc<Policy>,
    interception: Option<Arc<Interception>>,
    orig_dst: egress_ebpf::OriginalDestinations,
) {
    let at = |port| SocketAddr::new(IpAddr::V4(config.listen), port);
    let started = egress_proxy::server::Proxy::builder()
        .http_listen(at(EXPLICIT_PROXY_PORT))
        .tls_listen(at(TRANSPARENT_TLS_PORT))
        .plain_http_listen(at(TRANSPARENT_HTTP_PORT))
        .dns_listen(at(DNS_PORT))
        .upstream_dns(config.upstream_dns.clone())
        .internal_ranges(config.internal.clone())
        .audit(Arc::new(StdoutSink))
        .original_destination(Arc::new(FenceLookup(orig_dst)))
        .start()
        .await;
    let proxy = match started {
        Ok(proxy) => proxy,
        Err(err) => fail(format!("start: {err}")),
    };
    proxy.set_client_intercepting(
        config.client,
        &config.runner,
        &config.job,
        policy,
        interception,
    );
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{READY_LINE}");
        let _ = out.flush();
    }
    // Serve until the agent closes stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await;
    drop(proxy);
}
