//! The UDP listener against an upstream of the test's own. The bound on queries in
//! flight: an upstream that never answers, so every query forwarded stays in flight (and
//! holds its upstream socket) for the whole test, and a client sending many more queries
//! than the cap. And what upstream sees of an allowed query.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

use crate::audit::{Kind, MemorySink, Source, Verdict};
use crate::limits::Limits;
use crate::policy::Policy;
use crate::server::Proxy;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = super::tests::query(name, RecordType::A);
    m.set_id(id).set_recursion_desired(true);
    m.to_vec().unwrap()
}

fn allow_example_com() -> Arc<Policy> {
    Arc::new(super::tests::policy())
}

/// An upstream DNS server that never answers and keeps what `note` makes of each query
/// it receives (the query's bytes and its sender).
async fn silent_upstream<T: Send + 'static>(
    note: impl Fn(&[u8], std::net::SocketAddr) -> Option<T> + Send + 'static,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<T>>>) {
    let upstream = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let noted = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&noted);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = upstream.recv_from(&mut buf).await {
            if let Some(item) = note(&buf[..n], from) {
                seen.lock().unwrap().push(item);
            }
        }
    });
    (addr, noted)
}

/// The queries the summary events say were shed, and how many such events there are.
fn shed_events(audit: &MemorySink) -> (usize, usize) {
    let summaries: Vec<usize> = audit
        .events()
        .iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.contains("in flight")))
        .map(|e| {
            assert_eq!(
                (e.source, e.kind, e.verdict),
                (Source::Dns, Kind::Dns, Verdict::Deny)
            );
            let reason = e.reason.as_deref().unwrap_or_default();
            reason
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count in {reason:?}"))
        })
        .collect();
    (summaries.iter().sum(), summaries.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_queries_past_the_cap_are_dropped_and_counted_not_forwarded() {
    const CAP: usize = 16;
    const EXTRA: usize = 10 * CAP;
    // Upstream: records the source port of every query and never answers. Each forwarded
    // query comes from a socket of its own, so distinct ports are upstream sockets.
    let (upstream_addr, ports) = silent_upstream(|_, from| Some(from.port())).await;
    let forwarded = || ports.lock().unwrap().len();

    let audit = Arc::new(MemorySink::default());
    let proxy = Proxy::builder()
        .dns_listen((LOOPBACK, 0).into())
        .upstream_dns(vec![upstream_addr])
        .audit(audit.clone())
        .limits(Limits {
            max_dns_udp_in_flight: CAP,
            // Nothing times out during the test: forwarded queries stay in flight.
            dns_timeout: Duration::from_secs(3600),
            ..Limits::default()
        })
        .start()
        .await
        .unwrap();
    proxy.set_default_policy(Some(allow_example_com()));
    let client = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    client.connect(proxy.dns_addrs()[0]).await.unwrap();

    // Fill the cap with allowed names: each is forwarded and waits on the silent upstream.
    for id in 0..CAP {
        let name = format!("q{id}.example.com.");
        client.send(&query(id as u16, &name)).await.unwrap();
    }
    crate::testing::wait_until("the first queries to reach the upstream", || {
        forwarded() >= CAP
    })
    .await;

    // Past the cap: each allowed query is dropped, never forwarded. Behind each, a query
    // for a denied name, which is answered locally: the listener takes datagrams in
    // order, so its answer means the one before it was dealt with (and one at a time, no
    // socket buffer overflows).
    let mut buf = [0u8; 1500];
    for i in 0..EXTRA {
        let id = (CAP + i) as u16;
        client
            .send(&query(id, &format!("q{id}.example.com.")))
            .await
            .unwrap();
        let marker = 0x8000 | id;
        client
            .send(&query(marker, &format!("m{id}.denied.test.")))
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer to the denied name after query {id}"))
            .unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        // Nothing came back for the dropped query.
        assert_eq!(reply.id(), marker);
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    }
    assert_eq!(forwarded(), CAP, "queries sent upstream");
    let sockets: HashSet<u16> = ports.lock().unwrap().iter().copied().collect();
    assert_eq!(sockets.len(), CAP, "upstream sockets");

    // Every shed query is in the log, in summary events rather than one event each.
    crate::testing::wait_until("the shed queries to be recorded", || {
        shed_events(&audit).0 >= EXTRA
    })
    .await;
    let (shed, events) = shed_events(&audit);
    assert_eq!(shed, EXTRA);
    // One event per second at most: fewer than one per query unless each loopback round
    // trip above took a second.
    assert!(events < EXTRA, "{events} events for {shed} queries");
}

/// The letter case of an allowed name is not passed on: upstream sees the name in lower
/// case, however the job spelled it (a bit per letter would otherwise reach the
/// resolver and the zone's servers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_the_name_in_lower_case() {
    let (upstream_addr, names) = silent_upstream(|wire, _| {
        let query = Message::from_vec(wire).ok()?;
        Some(query.queries().first()?.name().to_ascii())
    })
    .await;
    let proxy = Proxy::builder()
        .dns_listen((LOOPBACK, 0).into())
        .upstream_dns(vec![upstream_addr])
        .audit(Arc::new(MemorySink::default()))
        .start()
        .await
        .unwrap();
    proxy.set_default_policy(Some(allow_example_com()));
    let client = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    client.connect(proxy.dns_addrs()[0]).await.unwrap();
    client.send(&query(7, "WwW.ExAmPlE.CoM.")).await.unwrap();
    crate::testing::wait_until("the query to reach the upstream", || {
        !names.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(names.lock().unwrap()[0], "www.example.com.");
}
