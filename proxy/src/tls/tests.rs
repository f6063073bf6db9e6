//! ClientHello parsing on recorded bytes, every prefix of them, and re-fragmented forms.

use super::*;

const OPENSSL: &[u8] = include_bytes!("../../testdata/openssl-client-hello.bin");
const OPENSSL_NO_SNI: &[u8] = include_bytes!("../../testdata/openssl-client-hello-no-sni.bin");
const MAX: usize = 64 * 1024;

/// The handshake message inside the recorded single-record hello.
fn handshake_of(recorded: &[u8]) -> &[u8] {
    &recorded[5..]
}

fn sni(buf: &[u8]) -> Option<String> {
    parse_client_hello(buf, MAX).unwrap().unwrap().sni
}

#[test]
fn recorded_openssl_hello() {
    assert_eq!(sni(OPENSSL).as_deref(), Some("api.example.com"));
    assert_eq!(sni(OPENSSL_NO_SNI), None);
}

#[test]
fn every_prefix_needs_more() {
    for recorded in [OPENSSL, OPENSSL_NO_SNI] {
        for len in 0..recorded.len() {
            assert_eq!(
                parse_client_hello(&recorded[..len], MAX),
                Ok(None),
                "prefix {len}"
            );
        }
    }
}

#[test]
fn split_across_records() {
    for size in [1, 2, 3, 4, 5, 7, 64, 100, 1000] {
        let split = records(handshake_of(OPENSSL), size);
        assert_eq!(
            sni(&split).as_deref(),
            Some("api.example.com"),
            "record size {size}"
        );
        for len in 0..split.len() {
            assert_eq!(
                parse_client_hello(&split[..len], MAX),
                Ok(None),
                "{size}/{len}"
            );
        }
    }
}

#[test]
fn trailing_bytes_after_hello_are_kept_for_replay() {
    let mut buf = OPENSSL.to_vec();
    buf.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
    assert_eq!(sni(&buf).as_deref(), Some("api.example.com"));
}

#[test]
fn synthetic_hellos() {
    assert_eq!(
        sni(&synthetic_client_hello(&["a.example"], 1000)).as_deref(),
        Some("a.example")
    );
    assert_eq!(sni(&synthetic_client_hello(&[], 3)), None);
    assert_eq!(
        parse_client_hello(
            &synthetic_client_hello(&["a.example", "b.example"], 1000),
            MAX
        ),
        Err(HelloError::Malformed("two host names in server_name"))
    );
}

#[test]
fn malformed_inputs() {
    assert_eq!(
        parse_client_hello(b"GET / HTTP/1.1\r\n", MAX),
        Err(HelloError::NotTls)
    );
    assert!(matches!(
        parse_client_hello(&[22, 3, 1, 0, 0, 1], MAX),
        Err(HelloError::Malformed(_))
    ));
    // A ServerHello (type 2) is not a ClientHello.
    let mut wrong = OPENSSL.to_vec();
    wrong[5] = 2;
    assert!(matches!(
        parse_client_hello(&wrong, MAX),
        Err(HelloError::Malformed(_))
    ));
    // An alert record in the middle of a fragmented hello.
    let mut mixed = records(&handshake_of(OPENSSL)[..10], 10);
    mixed.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
    assert!(matches!(
        parse_client_hello(&mixed, MAX),
        Err(HelloError::Malformed(_))
    ));
    // Corrupt the extensions length so the block no longer parses to its end.
    let mut corrupt = synthetic_client_hello(&["a.example"], 1000);
    let ext_len_at = 5 + 4 + 2 + 32 + 1 + 4 + 2;
    corrupt[ext_len_at + 1] = corrupt[ext_len_at + 1].wrapping_sub(1);
    assert!(parse_client_hello(&corrupt, MAX).is_err());
}

#[test]
fn size_limit() {
    assert_eq!(
        parse_client_hello(OPENSSL, 100),
        Err(HelloError::TooLarge(100))
    );
    let split = records(handshake_of(OPENSSL), 10);
    assert_eq!(
        parse_client_hello(&split[..200], 150),
        Err(HelloError::TooLarge(150))
    );
}

#[tokio::test]
async fn reads_across_segments() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let bytes = records(handshake_of(OPENSSL), 50);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for chunk in bytes.chunks(13) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let (buf, info) = read_client_hello(&mut server, Vec::new(), MAX, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(info.sni.as_deref(), Some("api.example.com"));
    assert_eq!(buf, records(handshake_of(OPENSSL), 50));
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn slow_hello_times_out() {
    let (_client, mut server) = tokio::io::duplex(64);
    let err = read_client_hello(&mut server, Vec::new(), MAX, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err, HelloError::Timeout);
}

// ---------------------------------------------------------------- non-TLS first flights

use sniff::{sniff_plain, Plain};

fn limits() -> FlightLimits {
    FlightLimits {
        wait: Duration::from_millis(50),
        max_client_hello: MAX,
        hello_timeout: Duration::from_secs(5),
        max_request_line: 1024,
        line_timeout: Duration::from_millis(200),
    }
}

#[test]
fn http_request_lines_are_http() {
    for line in [
        &b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"[..],
        b"GET http://evil.test/ HTTP/1.0\r\n",
        b"\r\n\r\nGET / HTTP/1.1\r\n",
        b"\n\nPOST /x HTTP/1.1\n",
        b"get / http/1.1\r\n",
        b"GET\t/ HTTP/1.1\r\n",
        b"GET http://evil.test/\r\n",
    ] {
        assert_eq!(sniff_plain(line), Some(Plain::Http), "{line:?}");
    }
}

#[test]
fn the_h2_preface_is_reported() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_eq!(sniff_plain(preface), Some(Plain::Http2Preface));
    assert_eq!(
        sniff_plain(b"\r\nPRI * HTTP/2.0\r\n"),
        Some(Plain::Http2Preface)
    );
}

#[test]
fn other_protocols_are_other() {
    for line in [
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n",
        b"EHLO client.example\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b" GET / HTTP/1.1\r\n",
        b"{\"json\": 1}",
    ] {
        assert_eq!(sniff_plain(line), Some(Plain::Other), "{line:?}");
    }
}

#[test]
fn an_unfinished_candidate_needs_more() {
    for prefix in [
        &b""[..],
        b"\r\n",
        b"G",
        b"GET",
        b"GET /",
        b"GET / HTTP/1.1",
        b"\r\nPRI * HTTP/2",
        b"SSH-2.0-OpenSSH_9.6p1 Ubuntu",
    ] {
        assert_eq!(sniff_plain(prefix), None, "{prefix:?}");
    }
}

#[tokio::test]
async fn a_request_line_sent_slowly_is_still_http() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for chunk in b"\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n".chunks(3) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let flight = first_flight(&mut server, Vec::new(), &limits())
        .await
        .unwrap();
    assert!(matches!(flight, FirstFlight::Http { .. }), "{flight:?}");
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn an_endless_or_stalled_request_line_fails_closed() {
    let (_client, mut server) = tokio::io::duplex(64);
    let err = classify_flight(&mut server, b"GET / HTTP/1.1".to_vec(), &limits())
        .await
        .unwrap_err();
    assert_eq!(err, FlightError::LineTimeout);
    let long = [b"GET /".to_vec(), vec![b'a'; 2000]].concat();
    let err = classify_flight(&mut server, long, &limits())
        .await
        .unwrap_err();
    assert_eq!(err, FlightError::LineTooLong(1024));
    let (client, mut server) = tokio::io::duplex(64);
    drop(client);
    let err = classify_flight(&mut server, b"GET /".to_vec(), &limits())
        .await
        .unwrap_err();
    assert_eq!(err, FlightError::LineTruncated);
}

#[tokio::test]
async fn tls_after_silence_is_classified_like_early_tls() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let flight = first_flight(&mut server, Vec::new(), &limits())
        .await
        .unwrap();
    assert_eq!(flight, FirstFlight::Silent);
    use tokio::io::AsyncWriteExt;
    let hello = synthetic_client_hello(&["tenant.test"], 16_384);
    client.write_all(&hello).await.unwrap();
    let mut first = vec![0u8; 5];
    server.read_exact(&mut first).await.unwrap();
    let flight = classify_flight(&mut server, first, &limits())
        .await
        .unwrap();
    match flight {
        FirstFlight::Tls { bytes, info } => {
            assert_eq!(info.sni.as_deref(), Some("tenant.test"));
            assert_eq!(bytes, hello);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_ssh_banner_after_silence_is_other() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    use tokio::io::AsyncWriteExt;
    let banner = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n";
    client.write_all(banner).await.unwrap();
    let flight = classify_flight(&mut server, Vec::new(), &limits())
        .await
        .unwrap();
    assert_eq!(
        flight,
        FirstFlight::Other {
            bytes: banner.to_vec()
        }
    );
}
