//! What the egress-proxy end-to-end tests (`proxy_e2e`, `proxy_connect_fronting`,
//! `proxy_host_addresses`, `proxy_inject`) share: the bed with a running proxy and its
//! audit helpers, the policy YAML head, and what a job does from the runner namespace
//! (requests to the explicit proxy, CONNECT tunnels, HTTPS, DNS questions to the filter).
//!
//! One copy here, so that every test file drives the proxy and checks its answers the
//! same way, with the same timeouts and messages.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use egress_proxy::audit::{AuditEvent, MemorySink, Verdict};
use egress_proxy::config::{EgressConfig, PolicyFile};
use egress_proxy::origdst::FixedTable;
use egress_proxy::policy::Policy;
use egress_proxy::server::{Proxy, ProxyBuilder};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::netbed::{self, read_response, NetBed, RUNNER_HOST_IP, RUNNER_IP};

/// The proxy's DNS filter on the runner link (where tests have it listen).
pub const PROXY_DNS: SocketAddr = SocketAddr::new(IpAddr::V4(RUNNER_HOST_IP), 53);

/// A policy file enforcing the allow rules given as string literals (YAML list items
/// indented by four spaces), with the bed's DNS server upstream; a `&'static str`.
#[macro_export]
macro_rules! enforce_policy {
    ($($rules:literal),+ $(,)?) => {
        concat!(
            "\nupstream_dns: [198.51.100.53]\negress:\n  mode: enforce\n  allow:\n",
            $($rules),+
        )
    };
}

/// The `egress` section of the policy file `text`.
pub fn egress(text: &str) -> EgressConfig {
    let file: PolicyFile =
        egress_proxy::yaml::parse_str(std::path::Path::new("policy.yaml"), text).unwrap();
    file.egress
}

/// The policy of the policy file `text`.
pub fn policy(text: &str) -> Arc<Policy> {
    Arc::new(Policy::new(&egress(text)).unwrap())
}

/// The bed and a proxy running in it; the proxy is stopped first, while the bed's
/// runtimes still run.
pub struct ProxyWorld {
    /// `None` once a test has stopped the proxy.
    pub proxy: Option<Proxy>,
    /// Every audit event the proxy wrote.
    pub audit: Arc<MemorySink>,
    /// Original destinations of connections to the transparent listeners.
    pub origdst: Arc<FixedTable>,
    pub bed: NetBed,
}

impl Drop for ProxyWorld {
    fn drop(&mut self) {
        // Stop the proxy before the bed's runtimes go away.
        drop(self.proxy.take());
    }
}

impl ProxyWorld {
    /// Starts `builder` in `bed` with [`netbed::start_proxy`].
    pub fn start(bed: NetBed, builder: ProxyBuilder) -> Self {
        let netbed::BedProxy {
            proxy,
            audit,
            origdst,
        } = netbed::start_proxy(&bed, builder);
        Self {
            proxy: Some(proxy),
            audit,
            origdst,
            bed,
        }
    }

    /// The running proxy.
    pub fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("the proxy runs until the world is dropped")
    }

    /// Serves the runner (`r-1`, job `j-1`) with the policy file `text`.
    pub fn set_runner_policy(&self, text: &str) {
        self.proxy()
            .set_client(IpAddr::V4(RUNNER_IP), "r-1", "j-1", policy(text));
    }

    pub fn events(&self) -> Vec<AuditEvent> {
        self.audit.events()
    }

    /// Waits for an event matching `pred` (see [`netbed::wait_for_event`]; events of
    /// tunnels are written when the tunnel closes, asynchronously).
    pub fn wait_event(&self, what: &str, pred: impl Fn(&AuditEvent) -> bool) -> AuditEvent {
        netbed::wait_for_event(&self.audit, what, pred)
    }

    /// Every event matching `pred`, once there are `n` of them (see
    /// [`netbed::wait_for_events`]).
    pub fn wait_events(&self, n: usize, pred: impl Fn(&AuditEvent) -> bool) -> Vec<AuditEvent> {
        netbed::wait_for_events(&self.audit, n, pred)
    }

    /// [`ProxyWorld::wait_event`] for a deny event matching `pred`.
    pub fn deny_event(&self, what: &str, pred: impl Fn(&AuditEvent) -> bool) -> AuditEvent {
        self.wait_event(what, |e| e.verdict == Verdict::Deny && pred(e))
    }

    /// Asserts nothing reached the traps or the web servers.
    pub fn assert_nothing_reached(&self, what: &str) {
        // Give stray packets a moment to arrive before looking.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            self.bed.trap_hits().is_empty(),
            "{what}: trap hit {:?}",
            self.bed.trap_hits()
        );
        assert!(
            self.bed.web_hits().is_empty(),
            "{what}: web hit {:?}",
            self.bed.web_hits()
        );
    }

    /// Runs `fut` in the runner namespace.
    pub fn runner<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.bed.runner().run(fut)
    }
}

/// Sends `request` on a new connection to the explicit proxy and reads one response.
pub async fn exchange(request: String) -> Option<(u16, String)> {
    let mut stream = netbed::connect(netbed::PROXY_HTTP).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    read_response(&mut stream).await
}

/// From the runner: opens a CONNECT tunnel to `target` through the explicit proxy.
pub async fn tunnel(target: &str) -> TcpStream {
    let mut stream = netbed::connect(netbed::PROXY_HTTP).await.unwrap();
    let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(connect.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(200));
    stream
}

/// True when the peer closes (or resets) the connection within five seconds.
pub async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A TLS connector trusting only `ca_der`.
pub fn tls_connector(ca_der: &[u8]) -> tokio_rustls::TlsConnector {
    let config = netbed::tls_client_config([ca_der.to_vec()]);
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// TLS through `stream` naming `name` and trusting `ca`, then one GET; the response, or
/// the error that ended the attempt.
pub async fn https_get(
    stream: TcpStream,
    ca: Vec<u8>,
    name: &'static str,
) -> std::io::Result<String> {
    let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
    let mut tls = tls_connector(&ca).connect(server_name, stream).await?;
    let request = format!("GET /secure HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A DNS query for `name` (fully qualified) of type `rtype`, on the wire.
pub fn dns_query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

/// From the runner: `wire` over UDP to [`PROXY_DNS`]; the answer within two seconds.
pub async fn udp_dns(wire: Vec<u8>) -> Option<Message> {
    let socket = UdpSocket::bind((RUNNER_IP, 0)).await.ok()?;
    socket.send_to(&wire, PROXY_DNS).await.ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..n]).ok()
}

/// The A and AAAA addresses answered in `m`.
pub fn answer_ips(m: &Message) -> Vec<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(*a))),
            RData::AAAA(a) => Some(IpAddr::V6((*a).into())),
            _ => None,
        })
        .collect()
}
