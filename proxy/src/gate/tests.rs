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
