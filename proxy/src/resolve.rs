//! The proxy's own resolver: asks only the configured upstream servers (`upstream_dns`),
//! never the host's resolver configuration, so what the proxy dials is what the operator's
//! resolvers say and nothing a job can influence.
//!
//! Messages are built and parsed with hickory-proto. Each exchange goes over UDP first and
//! falls back to TCP when the answer is truncated (RFC 1035 section 4.2.1, RFC 7766). A
//! response is only accepted when it comes from the server asked, carries the query's
//! random id and echoes its question (RFC 5452 section 4), which makes off-path forging
//! from inside a sandbox impractical.
//!
//! [`Resolver::lookup_ip`] caches address sets for their TTL, bounded to 1..=300 seconds,
//! so that a name keeps resolving to the same set while connections are opened at a high
//! rate; which of those addresses may be dialled is still decided on every connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No upstream server is configured.
    #[error("no upstream DNS server configured")]
    NoServers,
    /// The name could not be turned into a DNS name.
    #[error("invalid name: {0}")]
    Name(String),
    /// Building the query failed.
    #[error("cannot encode query: {0}")]
    Encode(String),
    /// No server gave a usable answer.
    #[error("no answer from upstream DNS: {0}")]
    NoAnswer(String),
}

/// Longest time an answer is cached.
const MAX_TTL: u64 = 300;

struct CacheEntry {
    expires: Instant,
    addrs: Arc<[IpAddr]>,
}

/// Resolver over the configured upstream servers.
pub struct Resolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<String, CacheEntry>>,
}

impl Resolver {
    /// A resolver asking `servers` in order, each for at most `timeout`.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Resolver {
            servers,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The servers asked.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Addresses (A then AAAA) of a normalised name; empty when it has none.
    pub async fn lookup_ip(&self, name: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        if let Some(entry) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            if entry.expires > Instant::now() {
                return Ok(Arc::clone(&entry.addrs));
            }
        }
        let mut dns_name = Name::from_ascii(name).map_err(|e| ResolveError::Name(e.to_string()))?;
        // Responses carry absolute names; the question must be absolute to match them.
        dns_name.set_fqdn(true);
        let (v4, v6) = tokio::join!(
            self.exchange(&dns_name, RecordType::A),
            self.exchange(&dns_name, RecordType::AAAA)
        );
        if let (Err(err), Err(_)) = (&v4, &v6) {
            return Err(ResolveError::NoAnswer(err.to_string()));
        }
        let mut addrs = Vec::new();
        let mut ttl = MAX_TTL;
        let asked = [(v4.ok(), RecordType::A), (v6.ok(), RecordType::AAAA)];
        for (message, rtype) in asked {
            let Some(message) = message else { continue };
            // Only the question's chain: an address the answer gives another name is not
            // one of this name (crate::dns::chain).
            for record in crate::dns::chain::on_chain(message.answers(), &dns_name, rtype).records {
                let ip = match record.data() {
                    RData::A(a) => IpAddr::V4(Ipv4Addr::from(*a)),
                    RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(*a)),
                    _ => continue,
                };
                ttl = ttl.min(u64::from(record.ttl()));
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
        let addrs: Arc<[IpAddr]> = addrs.into();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 100_000 {
            cache.clear(); // bounded memory; a refill costs one lookup per name
        }
        cache.insert(
            name.to_owned(),
            CacheEntry {
                expires: Instant::now() + Duration::from_secs(ttl.max(1)),
                addrs: Arc::clone(&addrs),
            },
        );
        Ok(addrs)
    }

    /// One question to the upstream servers; the first acceptable response wins.
    pub async fn exchange(&self, name: &Name, rtype: RecordType) -> Result<Message, ResolveError> {
        if self.servers.is_empty() {
            return Err(ResolveError::NoServers);
        }
        let id: u16 = rand::random();
        let mut query = Message::new();
        query
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name.clone(), rtype));
        let wire = query
            .to_vec()
            .map_err(|e| ResolveError::Encode(e.to_string()))?;
        let mut last = String::from("no server answered");
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, exchange_one(*server, &wire, &query)).await {
                Ok(Ok(message)) => return Ok(message),
                Ok(Err(err)) => last = format!("{server}: {err}"),
                Err(_) => last = format!("{server}: timed out"),
            }
        }
        Err(ResolveError::NoAnswer(last))
    }
}

async fn exchange_one(server: SocketAddr, wire: &[u8], query: &Message) -> Result<Message, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    // connect() makes the kernel drop datagrams from any other source.
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(wire).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
        let Ok(message) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if !answers(&message, query) {
            continue;
        }
        if message.truncated() {
            return exchange_tcp(server, wire, query).await;
        }
        return Ok(message);
    }
}

async fn exchange_tcp(server: SocketAddr, wire: &[u8], query: &Message) -> Result<Message, String> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(wire.len()).map_err(|_| "query too long".to_owned())?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(wire);
    stream.write_all(&framed).await.map_err(|e| e.to_string())?;
    let len = stream.read_u16().await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(len)];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    let message = Message::from_vec(&buf).map_err(|e| e.to_string())?;
    if answers(&message, query) {
        Ok(message)
    } else {
        Err("answer does not match the question".to_owned())
    }
}

/// Whether `message` is the response to `query` (id, QR bit and echoed question).
fn answers(message: &Message, query: &Message) -> bool {
    message.message_type() == MessageType::Response
        && message.id() == query.id()
        && message.queries().len() == 1
        && query.queries().first().is_some_and(|q| {
            let r = &message.queries()[0];
            // Name equality is case-insensitive (RFC 4343).
            r.name() == q.name() && r.query_type() == q.query_type()
        })
}
