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
