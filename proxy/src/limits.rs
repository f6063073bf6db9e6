//! Limits on everything a client sends (DESIGN.md section 6, THREATS.md "proxy parsing"
//! and "resources"). Defaults are generous for real builds and small enough that one
//! runner cannot pin proxy memory or file descriptors.

use std::time::Duration;

/// Per-connection and per-client limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line plus headers), bytes. hyper's floor is 8 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Time allowed to send one request head, and to wait for the next on keep-alive.
    pub header_timeout: Duration,
    /// A tunnel with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Longest life of any connection.
    pub total_timeout: Duration,
    /// Open connections per client across all TCP listeners.
    pub max_conns_per_client: usize,
    /// Largest ClientHello accepted (all records together), bytes.
    pub max_client_hello: usize,
    /// Time allowed for the ClientHello to arrive.
    pub client_hello_timeout: Duration,
    /// How long a CONNECT tunnel to a port other than 443 waits for the client to speak
    /// first (to check a TLS SNI) before assuming a server-speaks-first protocol.
    pub client_first_wait: Duration,
    /// Time allowed to connect to the destination.
    pub connect_timeout: Duration,
    /// Time allowed for an upstream DNS answer (per server and try).
    pub dns_timeout: Duration,
    /// Most DNS-over-TCP connections per client.
    pub max_dns_tcp_per_client: usize,
    /// Most DNS-over-UDP questions being resolved upstream at once, per DNS listener;
    /// one past it is dropped unanswered, never sent upstream.
    pub max_dns_udp_in_flight: usize,
    /// Most idle upstream connections kept for reuse (HTTP keep-alive), all clients
    /// together; past it the least recently used one is closed. Meant to stay small:
    /// each one is the proxy's descriptor and memory, and lookups scan the pool.
    pub max_idle_upstream: usize,
    /// Most idle upstream connections kept for one (client, name, port, address).
    pub max_idle_upstream_per_key: usize,
    /// An idle upstream connection unused for this long is closed.
    pub upstream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            total_timeout: Duration::from_secs(6 * 3600),
            max_conns_per_client: 512,
            max_client_hello: 64 * 1024,
            client_hello_timeout: Duration::from_secs(10),
            client_first_wait: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            dns_timeout: Duration::from_secs(3),
            max_dns_tcp_per_client: 16,
            max_dns_udp_in_flight: 256,
            max_idle_upstream: 64,
            max_idle_upstream_per_key: 16,
            upstream_idle_timeout: Duration::from_secs(30),
        }
    }
}
