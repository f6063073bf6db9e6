//! The proxy as a library: listeners bound to given addresses, the per-client policy
//! table, and the tasks that serve them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), egress_proxy::server::ProxyError> {
//! use std::sync::Arc;
//! use egress_proxy::{policy::Policy, server::Proxy};
//! let proxy = Proxy::builder()
//!     .http_listen("127.0.0.1:3128".parse().unwrap())
//!     .dns_listen("127.0.0.1:5353".parse().unwrap())
//!     .upstream_dns(vec!["198.51.100.53:53".parse().unwrap()])
//!     .start()
//!     .await?;
//! proxy.set_client("10.249.0.2".parse().unwrap(), "r-1", "j-1", Arc::new(Policy::deny_all()));
//! # Ok(()) }
//! ```
//!
//! Lifecycle: [`ProxyBuilder::start`] binds every listener first (so a port conflict is an
//! error returned to the caller, not a log line) and then spawns one accept task per
//! listener, plus one that closes idle upstream connections once they expire. Each accept
//! task (and each DNS UDP task) owns a `JoinSet` of its connections (queries), so
//! dropping the [`Proxy`] aborts the accept tasks and with them every connection: nothing
//! keeps serving after the owner is gone (fail closed).
//!
//! Every TCP connection is matched to a client by source address first; unknown clients
//! are refused with an audit event, and each client's open connections are capped.
//! A client registered with [`Proxy::set_client_intercepting`] also gets TLS termination
//! and credential injection (`crate::intercept`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::audit::{AuditSink, Kind, NullSink};
use crate::clients::{ClientEntry, ClientTable};
use crate::http::{self, Mode};
use crate::intercept::Interception;
use crate::limits::Limits;
use crate::origdst::OriginalDestination;
use crate::policy::{Decision, KernelLocalAddresses, LocalAddresses, Policy, SpecialNets};
use crate::resolve::Resolver;
use crate::shared::{Shared, Subject};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A TCP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    BindTcp {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The DNS UDP socket could not be bound.
    #[error("cannot bind DNS socket {addr}: {source}")]
    BindUdp {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The control socket could not be set up.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Builder of a [`Proxy`].
pub struct ProxyBuilder {
    http: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    plain: Vec<SocketAddr>,
    dns: Vec<SocketAddr>,
    control: Option<PathBuf>,
    upstream_dns: Vec<SocketAddr>,
    audit: Arc<dyn AuditSink>,
    limits: Limits,
    internal: Vec<IpNet>,
    local: Arc<dyn LocalAddresses>,
    origdst: Option<Arc<dyn OriginalDestination>>,
}

impl ProxyBuilder {
    /// Adds an explicit HTTP proxy listener (absolute-form and CONNECT).
    pub fn http_listen(mut self, addr: SocketAddr) -> Self {
        self.http.push(addr);
        self
    }

    /// Adds a transparent TLS listener (decides on SNI).
    pub fn tls_listen(mut self, addr: SocketAddr) -> Self {
        self.tls.push(addr);
        self
    }

    /// Adds a transparent plain-HTTP listener (decides on Host).
    pub fn plain_http_listen(mut self, addr: SocketAddr) -> Self {
        self.plain.push(addr);
        self
    }

    /// Adds a DNS filter on UDP and TCP at this address.
    pub fn dns_listen(mut self, addr: SocketAddr) -> Self {
        self.dns.push(addr);
        self
    }

    /// Serves the control channel on a unix socket at `path` (see [`crate::control`]).
    pub fn control_socket(mut self, path: PathBuf) -> Self {
        self.control = Some(path);
        self
    }

    /// The resolvers the proxy and the DNS filter ask.
    pub fn upstream_dns(mut self, servers: Vec<SocketAddr>) -> Self {
        self.upstream_dns = servers;
        self
    }

    /// Where audit events go (default: dropped).
    pub fn audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = sink;
        self
    }

    /// Connection limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Ranges treated as internal in addition to the built-in ones (the runner pool).
    /// The host's own addresses need no range: every address local to the proxy's network
    /// namespace is internal, asked of the kernel on each decision (see
    /// [`ProxyBuilder::local_addresses`]).
    pub fn internal_ranges(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.internal.extend(nets);
        self
    }

    /// Which addresses count as the host's own, refused (dialling and in DNS answers)
    /// unless a `cidr` rule allows them. Default: [`KernelLocalAddresses`], every address
    /// configured in the network namespace the proxy runs in, at the moment of the
    /// decision. Replace it only to test.
    pub fn local_addresses(mut self, local: Arc<dyn LocalAddresses>) -> Self {
        self.local = local;
        self
    }

    /// How transparent listeners learn the original destination.
    pub fn original_destination(mut self, lookup: Arc<dyn OriginalDestination>) -> Self {
        self.origdst = Some(lookup);
        self
    }

    /// Binds every listener and starts serving.
    pub async fn start(self) -> Result<Proxy, ProxyError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let pool = Arc::new(http::UpstreamPool::new(&self.limits));
        let shared = Arc::new(Shared {
            clients: Arc::new(ClientTable::default()),
            resolver: Resolver::new(self.upstream_dns, self.limits.dns_timeout),
            audit: self.audit,
            limits: self.limits,
            special: SpecialNets::with_extra(self.internal).with_local(self.local),
            origdst: self.origdst,
            pool: Arc::clone(&pool),
            stopped,
        });
        let mut proxy = Proxy {
            shared: Arc::clone(&shared),
            tasks: Vec::new(),
            expire_idle: tokio::spawn(http::UpstreamPool::expire(pool)),
            http_addrs: Vec::new(),
            tls_addrs: Vec::new(),
            plain_addrs: Vec::new(),
            dns_addrs: Vec::new(),
            control_path: None,
            stop,
        };
        for (addrs, listener_kind) in [
            (&self.http, Listener::Http),
            (&self.tls, Listener::Tls),
            (&self.plain, Listener::Plain),
        ] {
            for addr in addrs {
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ProxyError::BindTcp {
                            addr: *addr,
                            source,
                        })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ProxyError::BindTcp {
                        addr: *addr,
                        source,
                    })?;
                match listener_kind {
                    Listener::Http => proxy.http_addrs.push(bound),
                    Listener::Tls => proxy.tls_addrs.push(bound),
                    Listener::Plain => proxy.plain_addrs.push(bound),
                }
                proxy.tasks.push(tokio::spawn(accept_loop(
                    Arc::clone(&shared),
                    listener,
                    listener_kind,
                )));
            }
        }
        for addr in &self.dns {
            let (udp, tcp, bound) = bind_dns(*addr).await?;
            proxy.dns_addrs.push(bound);
            proxy.tasks.push(tokio::spawn(crate::dns::serve_udp(
                Arc::clone(&shared),
                Arc::new(udp),
            )));
            proxy.tasks.push(tokio::spawn(crate::dns::serve_tcp(
                Arc::clone(&shared),
                tcp,
            )));
        }
        if let Some(path) = self.control {
            let listener = crate::control::bind(&path).map_err(|source| ProxyError::Control {
                path: path.clone(),
                source,
            })?;
            proxy.control_path = Some(path);
            proxy.tasks.push(tokio::spawn(crate::control::serve(
                Arc::clone(&shared.clients),
                listener,
            )));
        }
        Ok(proxy)
    }
}

/// Binds the DNS UDP socket at `addr` and a TCP listener on the same port, as resolvers
/// expect (RFC 7766). With port 0 the kernel picks the UDP port, and that port may be
/// taken for TCP (by any connection's ephemeral local port), so a few fresh picks are
/// tried before giving up.
async fn bind_dns(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), ProxyError> {
    const PICKS: usize = 16;
    let mut picks = 1;
    loop {
        let udp_error = |source| ProxyError::BindUdp { addr, source };
        let udp = UdpSocket::bind(addr).await.map_err(udp_error)?;
        let bound = udp.local_addr().map_err(udp_error)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(err)
                if addr.port() == 0
                    && err.kind() == std::io::ErrorKind::AddrInUse
                    && picks < PICKS =>
            {
                picks += 1;
            }
            Err(source) => {
                return Err(ProxyError::BindTcp {
                    addr: bound,
                    source,
                })
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Listener {
    Http,
    Tls,
    Plain,
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, kind: Listener) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning (accept(2) ERRORS).
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        // Client sockets carry small writes that must not wait for the previous one's ACK
        // (Nagle): response heads written apart from their bodies, the TLS flights of a
        // terminated tunnel, interactive traffic in a splice. Set once here, for every
        // listener, while the stream is still a TcpStream: `http::serve` is generic over
        // it, and CONNECT tunnels and terminated TLS carry on over this same socket.
        let _ = stream.set_nodelay(true);
        let audit_kind = match kind {
            Listener::Http | Listener::Plain => Kind::Http,
            Listener::Tls => Kind::Tls,
        };
        let Some(client) = shared.clients.get(peer.ip()) else {
            shared.record_unknown_client(audit_kind, peer);
            continue;
        };
        let Some(slot) = client.try_acquire(shared.limits.max_conns_per_client) else {
            shared.record(
                Some(&client),
                &Subject::new(audit_kind),
                &Decision::deny("too many connections from this client"),
            );
            continue;
        };
        let shared = Arc::clone(&shared);
        let span =
            tracing::info_span!("conn", %peer, runner = client.runner.as_deref(), listener = ?kind);
        let task = async move {
            // Where the connection was headed and which process opened it, where the table
            // knows (the runner-agent fence records redirected connections and those to
            // the explicit listener, whose destination is this listener itself).
            let origin = shared.origdst.as_ref().and_then(|o| o.lookup(&stream));
            match kind {
                Listener::Http => {
                    http::serve(shared, stream, client, Some(slot), Mode::Explicit, origin).await
                }
                Listener::Plain => match origin {
                    Some(origin) => {
                        let mode = Mode::Transparent {
                            original: origin.destination,
                        };
                        http::serve(shared, stream, client, Some(slot), mode, Some(origin)).await
                    }
                    None => shared.record(
                        Some(&client),
                        &Subject::new(Kind::Http),
                        &Decision::deny("original destination unknown"),
                    ),
                },
                Listener::Tls => {
                    crate::transparent::serve_tls(shared, stream, client, slot, origin).await
                }
            }
        };
        connections.spawn(tracing::Instrument::instrument(task, span));
    }
}

/// A running proxy. Dropping it stops every listener and connection.
pub struct Proxy {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Closes idle upstream connections; apart from `tasks`, which are the listeners
    /// [`Proxy::wait`] waits on.
    expire_idle: JoinHandle<()>,
    http_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    plain_addrs: Vec<SocketAddr>,
    dns_addrs: Vec<SocketAddr>,
    control_path: Option<PathBuf>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// A builder with no listener, no upstream DNS, default limits and no audit sink.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder {
            http: Vec::new(),
            tls: Vec::new(),
            plain: Vec::new(),
            dns: Vec::new(),
            control: None,
            upstream_dns: Vec::new(),
            audit: Arc::new(NullSink),
            limits: Limits::default(),
            internal: Vec::new(),
            local: Arc::new(KernelLocalAddresses),
            origdst: None,
        }
    }

    /// Registers (or replaces) the client at `ip`.
    pub fn set_client(&self, ip: IpAddr, runner: &str, job: &str, policy: Arc<Policy>) {
        self.shared.clients.set(
            ip,
            ClientEntry::new(Some(runner.to_owned()), Some(job.to_owned()), policy),
        );
    }

    /// Registers (or replaces) the client at `ip`, terminating TLS and injecting
    /// credentials as `interception` says (`None`: the same as [`Proxy::set_client`]).
    pub fn set_client_intercepting(
        &self,
        ip: IpAddr,
        runner: &str,
        job: &str,
        policy: Arc<Policy>,
        interception: Option<Arc<Interception>>,
    ) {
        self.shared.clients.set(
            ip,
            ClientEntry::new(Some(runner.to_owned()), Some(job.to_owned()), policy)
                .with_interception(interception),
        );
    }

    /// Forgets the client at `ip`; its new connections are refused.
    pub fn remove_client(&self, ip: IpAddr) -> bool {
        self.shared.clients.remove(ip)
    }

    /// Serves `policy` to every address without a registration (standalone mode).
    pub fn set_default_policy(&self, policy: Option<Arc<Policy>>) {
        self.shared
            .clients
            .set_default(policy.map(|p| ClientEntry::new(None, None, p)));
    }

    /// The client table (shared with the control channel).
    pub fn clients(&self) -> Arc<ClientTable> {
        Arc::clone(&self.shared.clients)
    }

    /// Bound explicit proxy addresses (useful with port 0).
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// Bound transparent TLS addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// Bound transparent plain-HTTP addresses.
    pub fn plain_http_addrs(&self) -> &[SocketAddr] {
        &self.plain_addrs
    }

    /// Bound DNS addresses (UDP and TCP).
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns_addrs
    }

    /// Idle upstream connections kept for reuse right now.
    #[cfg(test)]
    pub(crate) fn idle_upstreams(&self) -> usize {
        self.shared.pool.len()
    }

    /// Waits until a listener task ends (they only end when aborted or on panic).
    pub async fn wait(&mut self) {
        if let Some(task) = self.tasks.first_mut() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.expire_idle.abort();
        let _ = self.stop.send(true);
        if let Some(path) = &self.control_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
