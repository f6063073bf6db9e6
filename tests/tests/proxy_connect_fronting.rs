//! Domain fronting through CONNECT tunnels that are not TLS from their first byte, in the
//! network test bed (DESIGN.md sections 6 and 8).
//!
//! A tunnel is decided for one host, but the server at that host's address serves other
//! tenants (`tenant.test` shares `allowed.test`'s address in the bed). Plain HTTP inside
//! the tunnel must name the CONNECT host in every request, pipelined ones included, and a
//! client that stays silent past the first-flight wait must get exactly the same checks
//! when it finally speaks; server-speaks-first protocols keep working.

use std::time::Duration;

use egress_proxy::audit::{Kind, Verdict};
use egress_proxy::limits::Limits;
use egress_proxy::server::Proxy;
use runner_agent_tests::netbed::{read_response, NetBed, WEB_IP};
use runner_agent_tests::proxy_client::{closed, https_get, tunnel, ProxyWorld};
use runner_agent_tests::{enforce_policy, require_privilege};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const POLICY: &str = enforce_policy!(
    r#"    - host: allowed.test
      ports: [80, 443, 8443, 2222]
"#
);

/// The port of the bed's server-speaks-first service (started by the test).
const BANNER_PORT: u16 = 2222;
/// The first-flight wait of the proxy under test; the tests stay silent for longer.
const FIRST_WAIT: Duration = Duration::from_millis(200);
const SILENCE: Duration = Duration::from_millis(500);

type World = ProxyWorld;

fn world() -> World {
    let bed = NetBed::new().expect("building the test bed");
    let limits = Limits {
        client_first_wait: FIRST_WAIT,
        ..Limits::default()
    };
    let w = World::start(bed, Proxy::builder().limits(limits));
    w.set_runner_policy(POLICY);
    w
}

#[test]
fn plain_http_in_a_tunnel_must_name_the_connect_host() {
    require_privilege!();
    let w = world();
    let cases: [(&str, &'static [u8], bool, &str); 5] = [
        (
            "Host of another tenant",
            b"GET /front HTTP/1.1\r\nHost: tenant.test\r\n\r\n",
            false,
            "Host `tenant.test` differs from the CONNECT host",
        ),
        (
            "after empty lines",
            b"\r\n\r\nGET /front HTTP/1.1\r\nHost: tenant.test\r\n\r\n",
            false,
            "Host `tenant.test` differs from the CONNECT host",
        ),
        (
            "absolute form",
            b"GET http://tenant.test/front HTTP/1.1\r\nHost: tenant.test\r\n\r\n",
            false,
            "Host `tenant.test` differs from the CONNECT host",
        ),
        (
            "another port",
            b"GET /front HTTP/1.1\r\nHost: allowed.test:8080\r\n\r\n",
            false,
            "Host port 8080 differs from the CONNECT port",
        ),
        (
            "silent past the first-flight wait",
            b"GET /front HTTP/1.1\r\nHost: tenant.test\r\n\r\n",
            true,
            "Host `tenant.test` differs from the CONNECT host",
        ),
    ];
    for (what, request, late, reason) in cases {
        let (status, closed_after) = w.runner(async move {
            let mut stream = tunnel("allowed.test:80").await;
            if late {
                tokio::time::sleep(SILENCE).await;
            }
            stream.write_all(request).await.unwrap();
            let status = read_response(&mut stream).await.map(|r| r.0);
            (status, closed(&mut stream).await)
        });
        assert_eq!(status, Some(403), "{what}");
        assert!(closed_after, "{what}: the tunnel stayed open");
        let e = w.deny_event(what, |e| e.reason.as_deref() == Some(reason));
        assert_eq!(e.host.as_deref(), Some("allowed.test"), "{what}");
        assert_eq!(e.path.as_deref(), Some("/front"), "{what}");
        w.assert_nothing_reached(what);
    }
    // The h2c preface cannot be checked: denied before anything is dialled.
    let closed_early = w.runner(async {
        let mut stream = tunnel("allowed.test:80").await;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        closed(&mut stream).await
    });
    assert!(closed_early);
    w.deny_event("h2c preface", |e| {
        e.kind == Kind::Connect && e.reason.as_deref().is_some_and(|r| r.contains("HTTP/2"))
    });
    w.assert_nothing_reached("h2c preface");
}

#[test]
fn pipelined_requests_are_checked_one_by_one() {
    require_privilege!();
    let w = world();
    let answers = w.runner(async {
        let mut stream = tunnel("allowed.test:80").await;
        stream
            .write_all(
                b"GET /honest HTTP/1.1\r\nHost: allowed.test\r\n\r\n\
                  GET /fronted HTTP/1.1\r\nHost: tenant.test\r\n\r\n\
                  GET /third HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
            )
            .await
            .unwrap();
        // The answers may come in one segment: read them all, up to the close.
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all))
            .await
            .expect("the tunnel closes after the fronted request")
            .unwrap();
        String::from_utf8_lossy(&all).into_owned()
    });
    let statuses: Vec<&str> = answers
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden"],
        "{answers}"
    );
    assert!(
        answers.contains(&format!("hello from {WEB_IP}")),
        "{answers}"
    );
    let e = w.deny_event("fronted", |e| e.path.as_deref() == Some("/fronted"));
    assert_eq!(
        e.reason.as_deref(),
        Some("Host `tenant.test` differs from the CONNECT host")
    );
    let allowed = w.wait_event("honest", |e| {
        e.verdict == Verdict::Allow && e.path.as_deref() == Some("/honest")
    });
    assert_eq!(allowed.host.as_deref(), Some("allowed.test"));
    std::thread::sleep(Duration::from_millis(100));
    let hits = w.bed.web_hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].path, "/honest");
    assert_eq!(hits[0].host.as_deref(), Some("allowed.test"));
}

#[test]
fn tls_after_silence_must_name_the_connect_host() {
    require_privilege!();
    let w = world();
    let ca = w.bed.ca_der().to_vec();
    let fronted = w.runner(async move {
        let stream = tunnel("allowed.test:8443").await;
        tokio::time::sleep(SILENCE).await;
        https_get(stream, ca, "tenant.test").await
    });
    assert!(
        fronted
            .as_ref()
            .map_or(true, |body| !body.contains("hello")),
        "{fronted:?}"
    );
    let e = w.deny_event("late SNI", |e| e.kind == Kind::Connect);
    assert_eq!(
        e.reason.as_deref(),
        Some("SNI `tenant.test` differs from the CONNECT host")
    );
    assert_eq!(e.port, Some(8443));
    w.assert_nothing_reached("late SNI");
    // The honest late client still gets through.
    let ca = w.bed.ca_der().to_vec();
    let honest = w.runner(async move {
        let stream = tunnel("allowed.test:8443").await;
        tokio::time::sleep(SILENCE).await;
        https_get(stream, ca, "allowed.test").await
    });
    let body = honest.unwrap();
    assert!(body.contains(&format!("hello from {WEB_IP}")), "{body}");
    let hits = w.bed.web_hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].sni.as_deref(), Some("allowed.test"));
}

/// Starts a server-speaks-first service at `allowed.test`'s address: it sends a banner,
/// reads one line and answers `got: LINE`.
fn start_banner_server(w: &World) {
    let listener = w
        .bed
        .internet()
        .run(TcpListener::bind((WEB_IP, BANNER_PORT)))
        .unwrap();
    w.bed.internet().spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.write_all(b"SSH-2.0-bedserver\r\n").await?;
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while stream.read(&mut byte).await? == 1 && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                let answer = format!("got: {}\n", String::from_utf8_lossy(&line).trim_end());
                stream.write_all(answer.as_bytes()).await?;
                stream.shutdown().await
            });
        }
    });
}

#[test]
fn server_first_protocols_still_work() {
    require_privilege!();
    let w = world();
    start_banner_server(&w);
    let (banner, answer) = w.runner(async {
        let mut stream = tunnel(&format!("allowed.test:{BANNER_PORT}")).await;
        let mut banner = vec![0u8; 19];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut banner))
            .await
            .expect("banner in time")
            .unwrap();
        stream
            .write_all(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .expect("answer in time")
            .unwrap();
        (String::from_utf8_lossy(&banner).into_owned(), answer)
    });
    assert_eq!(banner, "SSH-2.0-bedserver\r\n");
    assert_eq!(answer, "got: SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\n");
    let e = w.wait_event("banner tunnel", |e| {
        e.kind == Kind::Connect && e.verdict == Verdict::Allow && e.bytes_up.is_some()
    });
    assert_eq!(e.port, Some(BANNER_PORT));
    assert_eq!(e.bytes_up, Some(42));
    assert_eq!(e.bytes_down, Some(19 + 46));
}
