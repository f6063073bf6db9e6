//! The test world of DESIGN.md section 8: a "host" namespace with no default route, an
//! "internet" namespace with the tests' own servers, and a "runner" namespace whose only
//! peer is the host, all built with `ip` and torn down on drop.
//!
//! ```text
//!  runner ns                 host ns (no default route)            internet ns
//!  eth0 192.0.2.2/24 ─ run0 192.0.2.1/24   inet0 198.51.100.1/24 ─ host0 198.51.100.2/24
//!                                          203.0.113.0/24 via .2        + .10 .11 .53 (servers)
//!                                                                       local 203.0.113.0/24 (traps)
//!  IPv6 (documentation prefix 2001:db8::/32, RFC 3849):
//!  2001:db8:2::2/64 ─ 2001:db8:2::1/64     2001:db8:100::1/64 ─ 2001:db8:100::2/64
//!                                          2001:db8:113::/64 via ::2    + ::10 (web server)
//!                                                                       local 2001:db8:113::/64 (traps)
//! ```
//!
//! - 198.51.100.10 and .11 are web servers: HTTP on 80 and 8080, HTTPS on 443 and 8443
//!   with a certificate minted per bed ([`NetBed::ca_der`], [`NetBed::ca_pem`]); every
//!   request is recorded with its Host, SNI, method, path and headers. They answer
//!   `hello from ADDR`, except on [`ECHO_PATH`] (the request headers back, as a debugging
//!   endpoint would: see [`web_answer`]), [`GZIP_PATH`] (a gzip-encoded answer) and
//!   [`REASON_PATH`] (the request's Authorization in the status line's reason phrase).
//! - 198.51.100.53 is a DNS server (UDP and TCP) answering from a name table that tests
//!   may change ([`NetBed::set_name`]) and recording every query.
//! - 203.0.113.0/24 is routed locally in the internet namespace; trap listeners on
//!   [`TRAP_IPS`] × [`TRAP_PORTS`] (TCP and UDP) record every connection and datagram.
//!   Targets that must stay unreachable live there: a test asserts "nothing arrived" with
//!   [`NetBed::trap_hits`].
//!
//! Invariants: no namespace has a default route, the host namespace does not forward
//! (a new namespace starts with forwarding off), and the internet namespace has no route
//! back to the runner, so nothing a test or the product does can leave the machine or
//! bypass the host. Addresses are all from documentation ranges (RFC 5737).
//!
//! Code runs inside a namespace through [`NsRuntime`]: a thread that entered the namespace
//! with setns(2) and drives a current-thread tokio runtime, so every socket its tasks open
//! belongs to that namespace. Dropping the [`NetBed`] stops the runtimes, then deletes the
//! namespaces (which removes their links), also when the test failed.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use egress_proxy::audit::{AuditEvent, MemorySink};
use egress_proxy::origdst::{FixedTable, Origin};
use egress_proxy::server::{Proxy, ProxyBuilder};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata, RData, Record, RecordType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

/// Host end of the runner link.
pub const RUNNER_HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The runner's address.
pub const RUNNER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The runner link's network (what the product treats as its runner pool).
pub const RUNNER_NET: &str = "192.0.2.0/24";
/// Host end of the internet link.
pub const HOST_INET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Internet end of the internet link.
pub const INET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// First web server.
pub const WEB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Second web server (another tenant, or a second allowed host).
pub const WEB2_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// The DNS server.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// IPv6 address of the first web server (HTTP and HTTPS, like [`WEB_IP`]).
pub const WEB6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
/// IPv6 trap address (listeners on [`TRAP_PORTS`]).
pub const TRAP6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x10);
/// The runner's IPv6 address.
pub const RUNNER6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

/// Addresses with trap listeners.
pub const TRAP_IPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 20),
];
/// Ports with trap listeners (TCP and UDP) on every trap address.
pub const TRAP_PORTS: [u16; 10] = [22, 25, 53, 80, 443, 853, 3128, 5432, 8080, 8443];
/// Where tests run the proxy's explicit listener (the host end of the runner link).
pub const PROXY_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(RUNNER_HOST_IP), 3128);
/// Where tests run the proxy's transparent TLS listener.
pub const PROXY_TLS: SocketAddr = SocketAddr::new(IpAddr::V4(RUNNER_HOST_IP), 3129);
/// Where tests run the proxy's transparent HTTP listener.
pub const PROXY_PLAIN: SocketAddr = SocketAddr::new(IpAddr::V4(RUNNER_HOST_IP), 3130);
/// Web server HTTP ports.
pub const HTTP_PORTS: [u16; 2] = [80, 8080];
/// Web server HTTPS ports.
pub const HTTPS_PORTS: [u16; 2] = [443, 8443];

/// Web server path that echoes the request's headers, in the body (`name: value` lines)
/// and as response headers (`x-echo-NAME: value`).
pub const ECHO_PATH: &str = "/echo";
/// Web server path that always answers with `Content-Encoding: gzip`, whatever the
/// request's Accept-Encoding.
pub const GZIP_PATH: &str = "/gzip";
/// Web server path whose status line carries the request's Authorization value as the
/// reason phrase (`HTTP/1.1 200 <value>`), a place where no header scrubbing looks.
pub const REASON_PATH: &str = "/reason";

/// The names the DNS server answers when a bed is created.
pub fn default_names() -> Vec<(&'static str, Vec<IpAddr>)> {
    let v4 = |ip: Ipv4Addr| vec![IpAddr::V4(ip)];
    vec![
        ("allowed.test", v4(WEB_IP)),
        ("api.allowed.test", v4(WEB_IP)),
        ("deep.api.allowed.test", v4(WEB_IP)),
        ("second.test", v4(WEB2_IP)),
        ("tenant.test", v4(WEB_IP)), // another tenant on allowed.test's address
        ("evil.test", v4(TRAP_IPS[0])),
        ("exfil.evil.test", v4(TRAP_IPS[0])),
        ("rebind.allowed.test", vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
        (
            "metadata.allowed.test",
            vec![IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))],
        ),
        (
            "private.allowed.test",
            vec![IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))],
        ),
        ("runner.allowed.test", v4(RUNNER_IP)),
        ("v6.allowed.test", vec![IpAddr::V6(WEB6_IP)]),
        ("evil6.test", vec![IpAddr::V6(TRAP6_IP)]),
        (
            "ula.allowed.test",
            vec![IpAddr::V6("fd00::1".parse().expect("valid"))],
        ),
    ]
}

/// Names the test web server's certificate covers.
const CERT_NAMES: [&str; 5] = [
    "allowed.test",
    "*.allowed.test",
    "second.test",
    "tenant.test",
    "evil.test",
];

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `/run/netns/NAME` with loopback up.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        // A leftover of a crashed earlier run with the same name is removed first.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip -n` and `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace `name` (setns(2)).
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    let file = File::open(format!("/run/netns/{name}")).with_context(|| format!("netns {name}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {name}"))?;
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
pub fn in_netns<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> anyhow::Result<R> {
    let owned = name.to_owned();
    std::thread::spawn(move || -> anyhow::Result<R> {
        enter_netns(&owned)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {name} panicked"))?
}

/// A tokio runtime whose thread lives in one network namespace.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the runtime thread inside `ns`.
    pub fn start(ns: &str) -> anyhow::Result<NsRuntime> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let name = ns.to_owned();
        let thread = std::thread::spawn(move || {
            let runtime = enter_netns(&name).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building runtime")
            });
            match runtime {
                Ok(runtime) => {
                    let _ = ready_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                    // Dropping the runtime here cancels every task still running in it.
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            }
        });
        let handle = ready_rx.recv().context("runtime thread died")??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Spawns a task in the namespace.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Runs `fut` in the namespace and waits for its output (from a non-async caller).
    pub fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .expect("task in namespace runtime panicked or was cancelled")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP connection.
    Tcp,
    /// A UDP datagram.
    Udp,
}

/// Something that reached a trap listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrapHit {
    /// TCP or UDP.
    pub transport: Transport,
    /// Trap address and port.
    pub local: SocketAddr,
    /// Who came.
    pub peer: SocketAddr,
    /// Bytes received (for TCP: as far as read when recorded).
    pub bytes: usize,
}

/// A request a web server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebHit {
    /// Server address and port.
    pub local: SocketAddr,
    /// Who sent it.
    pub peer: SocketAddr,
    /// TLS server name, for HTTPS.
    pub sni: Option<String>,
    /// Request method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Host header.
    pub host: Option<String>,
    /// Every header as received, in order: (name in lower case, value).
    pub headers: Vec<(String, String)>,
}

impl WebHit {
    /// The values of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
}

/// The values of header `name` (any case) in `headers` (name, value), in order.
pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A query the DNS server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHit {
    /// Question name, lowercase, without the trailing dot.
    pub name: String,
    /// Question type (`A`, `TXT`, ...).
    pub rtype: String,
    /// Whether it came over TCP.
    pub tcp: bool,
}

#[derive(Default)]
struct Records {
    traps: Mutex<Vec<TrapHit>>,
    web: Mutex<Vec<WebHit>>,
    dns: Mutex<Vec<DnsHit>>,
    names: Mutex<HashMap<String, Vec<IpAddr>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The whole test world. Field order is drop order: runtimes stop before namespaces go.
pub struct NetBed {
    host_rt: NsRuntime,
    runner_rt: NsRuntime,
    internet_rt: NsRuntime,
    records: Arc<Records>,
    ca_der: Vec<u8>,
    ca_pem: String,
    runner: Netns,
    internet: Netns,
    host: Netns,
}

impl NetBed {
    /// Builds the namespaces, links, routes and servers.
    pub fn new() -> anyhow::Result<NetBed> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let host = Netns::create(&format!("nb-h-{id}"))?;
        let internet = Netns::create(&format!("nb-i-{id}"))?;
        let runner = Netns::create(&format!("nb-r-{id}"))?;
        let (h, i, r) = (
            host.name().to_owned(),
            internet.name().to_owned(),
            runner.name().to_owned(),
        );
        // {h}, {i}, {r}: the host, internet and runner namespaces.
        const SETUP: &[&str] = &[
            "-n {h} link add inet0 type veth peer name host0 netns {i}",
            "-n {h} addr add 198.51.100.1/24 dev inet0",
            "-n {h} link set inet0 up",
            "-n {h} route add 203.0.113.0/24 via 198.51.100.2",
            "-n {i} addr add 198.51.100.2/24 dev host0",
            "-n {i} addr add 198.51.100.10/24 dev host0",
            "-n {i} addr add 198.51.100.11/24 dev host0",
            "-n {i} addr add 198.51.100.53/24 dev host0",
            "-n {i} link set host0 up",
            "-n {i} route add local 203.0.113.0/24 dev lo",
            "-n {h} link add run0 type veth peer name eth0 netns {r}",
            "-n {h} addr add 192.0.2.1/24 dev run0",
            "-n {h} link set run0 up",
            "-n {r} addr add 192.0.2.2/24 dev eth0",
            "-n {r} link set eth0 up",
            // IPv6: `nodad` makes the addresses usable at once (no duplicate address
            // detection delay, RFC 4862 section 5.4; nobody else is on these links).
            "-n {h} addr add 2001:db8:100::1/64 dev inet0 nodad",
            "-n {i} addr add 2001:db8:100::2/64 dev host0 nodad",
            "-n {i} addr add 2001:db8:100::10/64 dev host0 nodad",
            "-n {h} route add 2001:db8:113::/64 via 2001:db8:100::2",
            // IPv6 only binds configured addresses, so the trap address is added too.
            "-n {i} addr add 2001:db8:113::10/128 dev lo nodad",
            "-n {i} route add local 2001:db8:113::/64 dev lo",
            "-n {h} addr add 2001:db8:2::1/64 dev run0 nodad",
            "-n {r} addr add 2001:db8:2::2/64 dev eth0 nodad",
        ];
        for line in SETUP {
            let line = line
                .replace("{h}", &h)
                .replace("{i}", &i)
                .replace("{r}", &r);
            ip(&line.split_whitespace().collect::<Vec<_>>())?;
        }
        let records = Arc::new(Records::default());
        for (name, ips) in default_names() {
            lock(&records.names).insert(name.to_owned(), ips);
        }
        let cert = rcgen::generate_simple_self_signed(
            CERT_NAMES
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )?;
        let ca_der = cert.cert.der().to_vec();
        let ca_pem = cert.cert.pem();
        let key_der = cert.key_pair.serialize_der();
        let internet_rt = NsRuntime::start(&i)?;
        let host_rt = NsRuntime::start(&h)?;
        let runner_rt = NsRuntime::start(&r)?;
        let tls = Arc::new(tls_acceptor(ca_der.clone(), key_der)?);
        let started = internet_rt.run(start_servers(Arc::clone(&records), tls));
        started?;
        Ok(NetBed {
            host_rt,
            runner_rt,
            internet_rt,
            records,
            ca_der,
            ca_pem,
            runner,
            internet,
            host,
        })
    }

    /// The host namespace's name.
    pub fn host_ns(&self) -> &str {
        self.host.name()
    }

    /// The internet namespace's name.
    pub fn internet_ns(&self) -> &str {
        self.internet.name()
    }

    /// The runner namespace's name.
    pub fn runner_ns(&self) -> &str {
        self.runner.name()
    }

    /// Runtime inside the host namespace (run the product here).
    pub fn host(&self) -> &NsRuntime {
        &self.host_rt
    }

    /// Runtime inside the runner namespace (run attacks from here).
    pub fn runner(&self) -> &NsRuntime {
        &self.runner_rt
    }

    /// Runtime inside the internet namespace (add servers here).
    pub fn internet(&self) -> &NsRuntime {
        &self.internet_rt
    }

    /// DER of the web servers' self-signed certificate (trust it in TLS clients).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The same certificate, PEM (a roots bundle for the proxy's upstream TLS).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Makes the DNS server answer `name` with `ips` (empty: NXDOMAIN).
    pub fn set_name(&self, name: &str, ips: Vec<IpAddr>) {
        lock(&self.records.names).insert(name.to_owned(), ips);
    }

    /// Everything that reached a trap so far.
    pub fn trap_hits(&self) -> Vec<TrapHit> {
        lock(&self.records.traps).clone()
    }

    /// Every request the web servers saw so far.
    pub fn web_hits(&self) -> Vec<WebHit> {
        lock(&self.records.web).clone()
    }

    /// Every query the DNS server saw so far.
    pub fn dns_hits(&self) -> Vec<DnsHit> {
        lock(&self.records.dns).clone()
    }

    /// Upstream DNS as a socket address.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(DNS_IP), 53)
    }
}

fn tls_acceptor(cert: Vec<u8>, key: Vec<u8>) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn start_servers(
    records: Arc<Records>,
    tls: Arc<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    for ip in [IpAddr::V4(WEB_IP), IpAddr::V4(WEB2_IP), IpAddr::V6(WEB6_IP)] {
        for port in HTTP_PORTS {
            let listener = bind_tcp(ip, port).await?;
            tokio::spawn(web_accept(listener, Arc::clone(&records), None));
        }
        for port in HTTPS_PORTS {
            let listener = bind_tcp(ip, port).await?;
            tokio::spawn(web_accept(
                listener,
                Arc::clone(&records),
                Some(Arc::clone(&tls)),
            ));
        }
    }
    let traps = TRAP_IPS
        .iter()
        .map(|ip| IpAddr::V4(*ip))
        .chain([IpAddr::V6(TRAP6_IP)]);
    for ip in traps {
        for port in TRAP_PORTS {
            let listener = bind_tcp(ip, port).await?;
            tokio::spawn(trap_tcp(listener, Arc::clone(&records)));
            let socket = UdpSocket::bind((ip, port))
                .await
                .with_context(|| format!("udp {ip} {port}"))?;
            tokio::spawn(trap_udp(socket, Arc::clone(&records)));
        }
    }
    let udp = UdpSocket::bind((DNS_IP, 53)).await?;
    tokio::spawn(dns_udp(udp, Arc::clone(&records)));
    let tcp = TcpListener::bind((DNS_IP, 53)).await?;
    tokio::spawn(dns_tcp(tcp, Arc::clone(&records)));
    Ok(())
}

async fn bind_tcp(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((ip, port))
        .await
        .with_context(|| format!("listening on {}", SocketAddr::new(ip, port)))
}

async fn trap_tcp(listener: TcpListener, records: Arc<Records>) {
    while let Ok((mut stream, peer)) = listener.accept().await {
        let local = stream.local_addr().unwrap_or(peer);
        let index = {
            let mut traps = lock(&records.traps);
            traps.push(TrapHit {
                transport: Transport::Tcp,
                local,
                peer,
                bytes: 0,
            });
            traps.len() - 1
        };
        let records = Arc::clone(&records);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                lock(&records.traps)[index].bytes += n;
            }
        });
    }
}

async fn trap_udp(socket: UdpSocket, records: Arc<Records>) {
    let local = socket.local_addr().ok();
    let mut buf = [0u8; 65536];
    while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
        lock(&records.traps).push(TrapHit {
            transport: Transport::Udp,
            local: local.unwrap_or(peer),
            peer,
            bytes: n,
        });
    }
}

async fn web_accept(
    listener: TcpListener,
    records: Arc<Records>,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
) {
    while let Ok((stream, peer)) = listener.accept().await {
        let records = Arc::clone(&records);
        let tls = tls.clone();
        tokio::spawn(async move {
            let local = match stream.local_addr() {
                Ok(local) => local,
                Err(_) => return,
            };
            match tls {
                None => web_serve(stream, local, peer, None, records).await,
                Some(tls) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await
                    else {
                        return;
                    };
                    let sni = stream.get_ref().1.server_name().map(str::to_owned);
                    web_serve(stream, local, peer, sni, records).await;
                }
            }
        });
    }
}

/// A small HTTP/1.1 server: keep-alive, Content-Length bodies, answers
/// `hello from ADDR` so clients can tell which server answered.
async fn web_serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    local: SocketAddr,
    peer: SocketAddr,
    sni: Option<String>,
    records: Arc<Records>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if !matches!(
            request.parse(&buf[..head_end]),
            Ok(httparse::Status::Complete(_))
        ) {
            return;
        }
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let hit = WebHit {
            local,
            peer,
            sni: sni.clone(),
            method: request.method.unwrap_or("").to_owned(),
            path: request.path.unwrap_or("").to_owned(),
            host: header("host"),
            headers: request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        };
        let response = web_answer(&hit);
        let hit_path = hit.path.split('?').next().unwrap_or("").to_owned();
        lock(&records.web).push(hit);
        buf.drain(..head_end);
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        // The echo in several small writes, so that a reader can see its body in pieces.
        let piece = if hit_path == ECHO_PATH {
            7
        } else {
            response.len().max(1)
        };
        for piece in response.chunks(piece) {
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        if stream.flush().await.is_err() || close {
            return;
        }
    }
}

/// The response (head and body) of the bed's web servers to `hit` (module docs).
fn web_answer(hit: &WebHit) -> Vec<u8> {
    let path = hit.path.split('?').next().unwrap_or("");
    let reason = match path {
        REASON_PATH => hit.header_values("authorization").first().copied(),
        _ => None,
    };
    let reason = reason.unwrap_or("OK");
    let mut head = format!("HTTP/1.1 200 {reason}\r\ncontent-type: text/plain\r\n");
    let body = match path {
        ECHO_PATH => {
            let mut body = Vec::new();
            for (name, value) in &hit.headers {
                head.push_str(&format!("x-echo-{name}: {value}\r\n"));
                body.extend_from_slice(format!("{name}: {value}\n").as_bytes());
            }
            body
        }
        GZIP_PATH => {
            head.push_str("content-encoding: gzip\r\n");
            // gzip (RFC 1952) of the empty text: header, an empty final deflate block,
            // CRC-32 and size 0.
            vec![
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]
        }
        _ => format!("hello from {}\n", hit.local.ip()).into_bytes(),
    };
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut response = head.into_bytes();
    response.extend_from_slice(&body);
    response
}

/// The start of a recursive resolver's response to `query`: its id, the response flag,
/// recursion desired as asked and available; no question or answer yet.
pub fn dns_response_to(query: &Message) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    reply
}

fn dns_answer(records: &Records, wire: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(wire).ok()?;
    let mut reply = dns_response_to(&query);
    for question in query.queries() {
        reply.add_query(question.clone());
        let name = question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        lock(&records.dns).push(DnsHit {
            name: name.clone(),
            rtype: question.query_type().to_string(),
            tcp,
        });
        let ips = lock(&records.names).get(&name).cloned();
        match ips {
            None => {
                reply.set_response_code(ResponseCode::NXDomain);
            }
            Some(ips) => {
                for ip in ips {
                    let data = match (ip, question.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(rdata::AAAA(v6)),
                        _ => continue,
                    };
                    reply.add_answer(Record::from_rdata(question.name().clone(), 60, data));
                }
            }
        }
    }
    reply.to_vec().ok()
}

async fn dns_udp(socket: UdpSocket, records: Arc<Records>) {
    let mut buf = [0u8; 4096];
    while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
        if let Some(reply) = dns_answer(&records, &buf[..n], false) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn dns_tcp(listener: TcpListener, records: Arc<Records>) {
    serve_dns_over_tcp(listener, move |wire| dns_answer(&records, wire, true)).await
}

/// Serves DNS over TCP (RFC 7766: each message after its 2-byte length) on `listener`,
/// answering each message with `answer` (`None` closes that connection).
pub async fn serve_dns_over_tcp(
    listener: TcpListener,
    answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
) {
    let answer = Arc::new(answer);
    while let Ok((mut stream, _)) = listener.accept().await {
        let answer = Arc::clone(&answer);
        tokio::spawn(async move {
            while let Ok(len) = stream.read_u16().await {
                let mut wire = vec![0u8; usize::from(len)];
                if stream.read_exact(&mut wire).await.is_err() {
                    return;
                }
                let Some(reply) = answer(&wire) else {
                    return;
                };
                let mut framed = u16::try_from(reply.len())
                    .unwrap_or(0)
                    .to_be_bytes()
                    .to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Reads one HTTP response (head plus Content-Length body); `None` if the connection
/// closed first.
pub async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> Option<(u16, String)> {
    read_response_with_headers(stream)
        .await
        .map(|(status, _, body)| (status, body))
}

/// [`read_response`] with the response's headers too: (name in lower case, value), in
/// order.
pub async fn read_response_with_headers(
    stream: &mut (impl AsyncRead + Unpin),
) -> Option<(u16, Vec<(String, String)>, String)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        read_more(stream, &mut buf).await?;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(&buf[..head_end]).ok()?;
    let status = response.code?;
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    while buf.len() < head_end + length {
        read_more(stream, &mut buf).await?;
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Some((status, headers, body))
}

/// Appends what the next read brings; `None` at the end of the stream, on an error, or
/// after five seconds without a byte.
async fn read_more(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        _ => None,
    }
}

/// A proxy started in the bed's host namespace, with what tests observe it through.
pub struct BedProxy {
    /// The proxy (drop it before the bed).
    pub proxy: Proxy,
    /// Every audit event it wrote.
    pub audit: Arc<MemorySink>,
    /// Original destinations of connections to its transparent listeners.
    pub origdst: Arc<FixedTable>,
}

/// Starts `builder` in the host namespace with the three proxy listeners at
/// [`PROXY_HTTP`], [`PROXY_TLS`] and [`PROXY_PLAIN`], the bed's DNS server upstream, an
/// audit sink and a fixed original-destination table; the runner link counts as internal
/// (as runner-agent passes its runner pool).
pub fn start_proxy(bed: &NetBed, builder: ProxyBuilder) -> BedProxy {
    let audit = Arc::new(MemorySink::default());
    let origdst = Arc::new(FixedTable::default());
    let builder = builder
        .http_listen(PROXY_HTTP)
        .tls_listen(PROXY_TLS)
        .plain_http_listen(PROXY_PLAIN)
        .upstream_dns(vec![bed.dns_addr()])
        .audit(audit.clone())
        .internal_ranges([
            RUNNER_NET.parse().expect("valid"),
            "2001:db8:2::/64".parse().expect("valid"),
            // Not the host's own addresses: egress-proxy detects and refuses them itself.
        ])
        .original_destination(origdst.clone());
    let proxy = bed.host().run(builder.start()).expect("starting the proxy");
    BedProxy {
        proxy,
        audit,
        origdst,
    }
}

/// Waits up to two seconds for an event in `sink` matching `pred` (events of tunnels and
/// requests are written when they end, asynchronously); panics naming `what` and listing
/// every event otherwise.
pub fn wait_for_event(
    sink: &MemorySink,
    what: &str,
    pred: impl Fn(&AuditEvent) -> bool,
) -> AuditEvent {
    for _ in 0..200 {
        if let Some(e) = sink.events().into_iter().find(|e| pred(e)) {
            return e;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no audit event for {what}; events: {:#?}", sink.events());
}

/// Waits up to two seconds until `sink` holds `n` events matching `pred`, and returns
/// those it holds then (fewer only when the time ran out, which the caller's assertion on
/// the count shows).
pub fn wait_for_events(
    sink: &MemorySink,
    n: usize,
    pred: impl Fn(&AuditEvent) -> bool,
) -> Vec<AuditEvent> {
    let matching =
        || -> Vec<AuditEvent> { sink.events().into_iter().filter(|e| pred(e)).collect() };
    for _ in 0..200 {
        if matching().len() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    matching()
}

/// Connects to `addr` and returns the stream (a helper for attack code in a runtime).
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// The origin the eBPF layer would record for a connection that an ordinary client
/// process (pid 4242, `curl`) opened toward `destination`.
pub fn curl_origin(destination: SocketAddr) -> Origin {
    Origin {
        destination,
        pid: Some(4242),
        comm: Some("curl".into()),
    }
}

/// Connects from [`RUNNER_IP`] to the transparent listener `listener` as if the
/// connection had been redirected there: the socket's local address is recorded in
/// `table` with `origin` (a destination, or a destination and process) before connecting.
pub async fn connect_redirected(
    table: &FixedTable,
    listener: SocketAddr,
    origin: impl Into<Origin>,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(RUNNER_IP), 0))?;
    table.insert_origin(socket.local_addr()?, origin.into());
    socket.connect(listener).await
}

/// A TLS client configuration (ring provider, safe default protocol versions, no client
/// certificate) trusting only `roots` (DER certificates).
pub fn tls_client_config(roots: impl IntoIterator<Item = Vec<u8>>) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.into()).expect("a valid root certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// A fresh bed and an agent world in its host namespace with [`allowed_test_config`]
/// and nothing more: the start of most attack tests.
pub fn allowed_test_bed() -> (NetBed, crate::agent::World) {
    let bed = NetBed::new().expect("net bed");
    let world = crate::agent::World::in_netns(bed.host_ns(), "", &allowed_test_config("", ""));
    (bed, world)
}

/// A host config whose `default` environment allows `allowed.test` and `*.allowed.test`
/// (then `extra_rules`, more lines of its `allow` list) with the bed's DNS server
/// upstream, followed by `extra_env` (more keys of that environment).
pub fn allowed_test_config(extra_rules: &str, extra_env: &str) -> String {
    format!(
        "network:\n  upstream_dns: [{DNS_IP}]\nenvironments:\n  default:\n    egress:\n      mode: enforce\n      allow:\n        - host: allowed.test\n        - host: \"*.allowed.test\"\n{extra_rules}{extra_env}"
    )
}

/// Lets packets in flight reach the bed's recorders before they are read.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}
