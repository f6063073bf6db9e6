//! The idle upstream pool through the forward path: a proxy on loopback, an origin that
//! counts its open connections, and a DNS server answering every `*.allowed.test` name
//! with 127.0.0.1, so each name is a pool key of its own while every connection lands on
//! the one origin. Counting at the origin shows that a connection the pool lets go is
//! really closed, not only forgotten.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::config::{EgressConfig, RuleConfig, RuleTarget};
use crate::limits::Limits;
use crate::policy::Policy;
use crate::server::Proxy;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Connections the origin has open now and has ever accepted.
#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    accepted: AtomicUsize,
}

/// Counts one open connection until dropped, however its task ends.
struct OpenGuard(Arc<Counts>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An HTTP/1.1 keep-alive origin on loopback answering `ok` to everything.
async fn origin() -> (u16, Arc<Counts>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Arc::new(Counts::default());
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            shared.open.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(Arc::clone(&shared));
            tokio::spawn(async move {
                let _guard = guard;
                crate::testing::serve_ok(stream).await;
            });
        }
    });
    (port, counts)
}

/// A DNS server on loopback: A records of `*.allowed.test` are 127.0.0.1, the rest empty.
async fn dns() -> SocketAddr {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(crate::testing::serve_fixed_dns(
        socket,
        ".allowed.test.",
        Ipv4Addr::LOCALHOST,
    ));
    addr
}

/// `*.allowed.test` and the loopback origin on `port` (loopback is refused without a
/// `cidr` rule).
fn policy(port: u16) -> Arc<Policy> {
    let rule = |target| RuleConfig {
        target,
        ports: vec![port],
        methods: None,
        paths: None,
    };
    let config = EgressConfig {
        allow: vec![
            rule(RuleTarget::Host("*.allowed.test".into())),
            rule(RuleTarget::Cidr("127.0.0.1/32".parse().unwrap())),
        ],
        ..EgressConfig::default()
    };
    Arc::new(Policy::new(&config).unwrap())
}

/// The proxy, its origin and the origin's counts.
struct World {
    proxy: Proxy,
    port: u16,
    origin: Arc<Counts>,
}

async fn world(limits: Limits) -> World {
    let (port, origin) = origin().await;
    let proxy = Proxy::builder()
        .http_listen((LOOPBACK, 0).into())
        .upstream_dns(vec![dns().await])
        .limits(limits)
        .start()
        .await
        .unwrap();
    proxy.set_default_policy(Some(policy(port)));
    World {
        proxy,
        port,
        origin,
    }
}

impl World {
    /// A client connection to the proxy that has had one `GET http://host/pool` answered
    /// `ok`; dropping it closes the connection.
    async fn client(&self, host: &str) -> SendRequest<Empty<Bytes>> {
        let stream = TcpStream::connect(self.proxy.http_addrs()[0])
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let authority = format!("{host}:{}", self.port);
        let request = http::Request::get(format!("http://{authority}/pool"))
            .header(http::header::HOST, &authority)
            .body(Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200, "{host}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok\n");
        sender
    }

    fn open(&self) -> usize {
        self.origin.open.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.origin.accepted.load(Ordering::SeqCst)
    }

    /// Waits until every client connection the proxy served has ended (and so has left
    /// its upstream connection to the pool).
    async fn clients_gone(&self) {
        let client = self.proxy.clients().get(LOOPBACK).unwrap();
        crate::testing::wait_until("the proxy to end every client connection", || {
            client.active() == 0
        })
        .await;
    }
}

/// The attack: many names times many connections, then every client socket closed. The
/// proxy must keep no more idle upstream connections than its caps, per key and in all,
/// and must close the ones it lets go; the most recently used one is still reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_capped_per_key_and_in_all() {
    let limits = Limits {
        // Long enough that nothing expires during the test: the caps alone must hold.
        upstream_idle_timeout: Duration::from_secs(3600),
        ..Limits::default()
    };
    let (per_key, max) = (limits.max_idle_upstream_per_key, limits.max_idle_upstream);
    let w = world(limits).await;

    // One name, twice the per-key cap of connections open at once: each client holds
    // its own upstream connection until it closes, so each dialled one.
    let mut clients = Vec::new();
    for _ in 0..2 * per_key {
        clients.push(w.client("same.allowed.test").await);
    }
    assert_eq!(w.accepted(), 2 * per_key);
    drop(clients);
    w.clients_gone().await;
    assert!(w.proxy.idle_upstreams() <= per_key, "per-key cap");
    crate::testing::wait_until("the origin to see the extra connections closed", || {
        w.open() <= per_key
    })
    .await;

    // Many names, one connection each, closed one after the other: more keys than the
    // pool may hold connections in all.
    let names = 3 * max;
    for i in 0..names {
        drop(w.client(&format!("n{i}.allowed.test")).await);
        assert!(w.proxy.idle_upstreams() <= max, "cap in all, after {i}");
    }
    w.clients_gone().await;
    assert!(w.proxy.idle_upstreams() <= max, "cap in all");
    crate::testing::wait_until("the origin to see the evicted connections closed", || {
        w.open() <= max
    })
    .await;

    // Keep-alive still works: the most recently used connection is the one kept.
    let accepted = w.accepted();
    drop(w.client(&format!("n{}.allowed.test", names - 1)).await);
    assert_eq!(w.accepted(), accepted, "reused, not dialled");
}

/// An idle pooled connection is closed once unused for the idle timeout, whether or not
/// anything else happens in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_expire() {
    let w = world(Limits {
        upstream_idle_timeout: Duration::from_millis(100),
        ..Limits::default()
    })
    .await;
    for i in 0..3 {
        drop(w.client(&format!("n{i}.allowed.test")).await);
    }
    w.clients_gone().await;
    crate::testing::wait_until("idle connections to expire", || {
        w.proxy.idle_upstreams() == 0 && w.open() == 0
    })
    .await;
}
