//! What each first flight leads to, for the tunnel kinds that differ.

use super::*;
use crate::tls::{synthetic_client_hello, ClientHelloInfo, HelloError};

fn gate(host: &str, tls_required: bool) -> TunnelGate {
    TunnelGate {
        kind: Kind::Connect,
        host: classify_host(host).unwrap(),
        port: if tls_required { 443 } else { 80 },
        addrs: Vec::new(),
        decision: Decision::deny("test"),
        tls_required,
        origin: None,
        intercept: None,
    }
}

fn tls(sni: Option<&str>) -> FirstFlight {
    FirstFlight::Tls {
        bytes: synthetic_client_hello(sni.as_slice(), 16_384),
        info: ClientHelloInfo {
            sni: sni.map(str::to_owned),
        },
    }
}

#[test]
fn http_goes_to_the_per_request_checks() {
    let bytes = b"\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n".to_vec();
    let next = gate("allowed.test", false).check(Ok(FirstFlight::Http {
        bytes: bytes.clone(),
    }));
    assert_eq!(next, Ok(Next::Http(bytes)));
}

#[test]
fn the_h2_preface_is_denied() {
    let err = gate("allowed.test", false)
        .check(Ok(FirstFlight::Http2Preface))
        .unwrap_err();
    assert!(err.contains("HTTP/2"), "{err}");
}

#[test]
fn tls_must_name_the_connect_host_on_any_port() {
    let g = gate("allowed.test", false);
    assert!(matches!(
        g.check(Ok(tls(Some("allowed.test")))),
        Ok(Next::Replay(_))
    ));
    assert_eq!(
        g.check(Ok(tls(Some("tenant.test")))),
        Err("SNI `tenant.test` differs from the CONNECT host".to_owned())
    );
    assert_eq!(g.check(Ok(tls(None))), Err("TLS without SNI".to_owned()));
}

#[test]
fn silence_leads_to_the_server_first_path_only_where_tls_is_optional() {
    assert_eq!(
        gate("allowed.test", false).check(Ok(FirstFlight::Silent)),
        Ok(Next::ServerFirst)
    );
    assert_eq!(
        gate("allowed.test", true).check(Ok(FirstFlight::Silent)),
        Err("no TLS ClientHello on a port-443 tunnel".to_owned())
    );
    let http = FirstFlight::Http {
        bytes: b"GET / HTTP/1.1\r\n".to_vec(),
    };
    assert!(gate("allowed.test", true).check(Ok(http)).is_err());
}

#[test]
fn other_protocols_are_replayed_and_errors_deny() {
    let banner = b"SSH-2.0-OpenSSH_9.6\r\n".to_vec();
    assert_eq!(
        gate("allowed.test", false).check(Ok(FirstFlight::Other {
            bytes: banner.clone()
        })),
        Ok(Next::Replay(banner))
    );
    assert_eq!(
        gate("allowed.test", false).check(Err(FlightError::Hello(HelloError::Timeout))),
        Err("ClientHello not received in time".to_owned())
    );
}

/// A tunnel still open when the proxy stops (its runtime shut down, as the proxy process
/// does when the agent is done with the runner) is recorded then, with the bytes it moved:
/// a job that held a tunnel open until its end left no event at all.
#[test]
fn a_tunnel_open_when_the_proxy_stops_is_recorded_with_what_it_moved() {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::audit::MemorySink;
    use crate::config::{EgressConfig, RuleConfig, RuleTarget};
    use crate::server::Proxy;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const SENT: usize = 10_000;
    let runtime = crate::testing::one_worker_runtime();
    let sink = Arc::new(MemorySink::default());
    let received = Arc::new(AtomicU64::new(0));
    // Both held past the shutdown: the client side stays open all along, and the proxy
    // is stopped by the shutdown alone.
    let _held = runtime.block_on(async {
        let origin = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = origin.local_addr().unwrap().port();
        let counted = Arc::clone(&received);
        tokio::spawn(async move {
            let (mut stream, _) = origin.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                counted.fetch_add(n as u64, Ordering::SeqCst);
            }
            std::future::pending::<()>().await
        });
        let proxy = Proxy::builder()
            .http_listen((Ipv4Addr::LOCALHOST, 0).into())
            .audit(Arc::clone(&sink) as Arc<dyn crate::audit::AuditSink>)
            .start()
            .await
            .unwrap();
        let config = EgressConfig {
            allow: vec![RuleConfig {
                target: RuleTarget::Cidr("127.0.0.1/32".parse().unwrap()),
                ports: vec![port],
                methods: None,
                paths: None,
            }],
            ..EgressConfig::default()
        };
        proxy.set_default_policy(Some(Arc::new(crate::policy::Policy::new(&config).unwrap())));
        let mut client = TcpStream::connect(proxy.http_addrs()[0]).await.unwrap();
        let connect =
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        client.write_all(connect.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(client.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // Not TLS, not HTTP: spliced as it is.
        client.write_all(&[0u8; SENT]).await.unwrap();
        crate::testing::wait_until("the origin has every byte", || {
            received.load(Ordering::SeqCst) == SENT as u64
        })
        .await;
        assert!(
            !sink
                .events()
                .iter()
                .any(|e| e.kind == Kind::Connect && e.verdict == Verdict::Allow),
            "recorded before it ended: {:?}",
            sink.events()
        );
        (proxy, client)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let events = sink.events();
    let tunnel: Vec<_> = events
        .iter()
        .filter(|e| e.kind == Kind::Connect && e.verdict == Verdict::Allow)
        .collect();
    assert_eq!(tunnel.len(), 1, "{events:?}");
    assert_eq!(tunnel[0].bytes_up, Some(SENT as u64), "{:?}", tunnel[0]);
    assert_eq!(
        tunnel[0].reason.as_deref(),
        Some("still open when the proxy stopped"),
        "{:?}",
        tunnel[0]
    );
}
