//! Fuzz entry points for the three parsers that read attacker bytes: the TLS ClientHello,
//! the HTTP request head (with the proxy's target and policy logic behind it), and DNS
//! messages (with the filter's local decision behind it).
//!
//! Each entry point takes arbitrary bytes and must return without panicking; some also
//! check properties (a ClientHello re-split into smaller records must parse to the same
//! result). They are plain functions so that any engine can drive them. CI drives them
//! with the deterministic mutation loop in this module's tests for a bounded time
//! (`FUZZ_SECONDS`, default 1 second per target; `FUZZ_SEED` picks the sequence). For a
//! longer run:
//!
//! ```text
//! FUZZ_SECONDS=600 cargo test --release -p egress-proxy --lib fuzz -- --nocapture
//! ```
//!
//! and, with a nightly toolchain, the same functions can be wrapped in cargo-fuzz or
//! libFuzzer targets unchanged.

use std::net::SocketAddr;
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Uri;

use crate::config::{EgressConfig, RuleConfig, RuleTarget};
use crate::http::{http_target, Mode};
use crate::policy::name::split_authority;
use crate::policy::{classify_host, HttpView, Policy};
use crate::tls::{parse_client_hello, records};

const MAX_HELLO: usize = 64 * 1024;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let rule = |target: RuleTarget, paths: Option<Vec<String>>| RuleConfig {
            target,
            ports: vec![80, 443, 8080],
            methods: paths.as_ref().map(|_| vec!["GET".to_owned()]),
            paths,
        };
        Policy::new(&EgressConfig {
            allow: vec![
                rule(RuleTarget::Host("example.com".into()), None),
                rule(RuleTarget::Host("*.example.com".into()), None),
                rule(
                    RuleTarget::Host("api.example.org".into()),
                    Some(vec!["/a/**".into(), "/b/*.txt".into()]),
                ),
                rule(
                    RuleTarget::Cidr("198.51.100.0/24".parse().expect("valid")),
                    None,
                ),
            ],
            ..EgressConfig::default()
        })
        .expect("the fuzz policy is valid")
    })
}

/// ClientHello parsing; checks that re-fragmenting a single-record hello into smaller
/// records gives the same answer.
pub fn client_hello(data: &[u8]) {
    let whole = parse_client_hello(data, MAX_HELLO);
    if let Ok(Some(info)) = &whole {
        if data.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([data[3], data[4]]));
            if data.len() >= 5 + len && len > 0 {
                let payload = &data[5..5 + len];
                // Only a hello that fills exactly one record is re-split.
                let whole_message = payload.len() >= 4
                    && payload.len()
                        == 4 + (usize::from(payload[1]) << 16
                            | usize::from(payload[2]) << 8
                            | usize::from(payload[3]));
                if whole_message {
                    for size in [1, 3, 64] {
                        let split = records(payload, size);
                        assert_eq!(
                            parse_client_hello(&split, MAX_HELLO)
                                .ok()
                                .flatten()
                                .as_ref(),
                            Some(info),
                            "record size {size}, input {data:02x?}"
                        );
                    }
                }
            }
        }
    }
}

/// HTTP request head parsing, target extraction (explicit and transparent) and the policy
/// decision behind it.
pub fn http_head(data: &[u8]) {
    let _ = crate::framing::has_conflict(data);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(data) else {
        return;
    };
    let method = request.method.unwrap_or("GET");
    let target = request.path.unwrap_or("/");
    if let Some((host, _)) = split_authority(target) {
        if let Ok(host) = classify_host(host) {
            let _ = policy().check(&host, 443, None);
        }
    }
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    let mut map = HeaderMap::new();
    for header in request.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) {
            map.append(name, value);
        }
    }
    let original: SocketAddr = ([198, 51, 100, 10], 80).into();
    for mode in [Mode::Explicit, Mode::Transparent { original }] {
        if let Ok((host, port)) = http_target(&mode, &uri, &map) {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let overrides = crate::policy::asks_for_another_method_or_path(
                map.keys().map(|name| name.as_str()),
                path,
            );
            let view = HttpView {
                method,
                path,
                overrides,
            };
            let _ = policy().check(&host, port, Some(view));
        }
    }
}

/// DNS message parsing and the filter's local decision; an answer, when there is one,
/// must encode.
pub fn dns_message(data: &[u8]) {
    if let crate::dns::Local::Reply {
        reply: Some(reply), ..
    } = crate::dns::local_decision(policy(), data)
    {
        assert!(reply.to_vec().is_ok(), "local replies always encode");
    }
    let _ = classify_host(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::tls::synthetic_client_hello;

    fn budget() -> Duration {
        let secs: f64 = std::env::var("FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0);
        Duration::from_secs_f64(secs)
    }

    fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        for _ in 0..rng.random_range(1..8) {
            let len = input.len();
            match rng.random_range(0..7) {
                0 if len > 0 => {
                    let i = rng.random_range(0..len);
                    input[i] ^= 1 << rng.random_range(0..8);
                }
                1 if len > 0 => {
                    let i = rng.random_range(0..len);
                    input[i] =
                        [0, 0xff, 0x7f, 0x80, b'.', b':', b'\r', b'\n'][rng.random_range(0..8)];
                }
                2 => {
                    let i = rng.random_range(0..=len);
                    let n = rng.random_range(1..16);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    input.splice(i..i, bytes);
                }
                3 if len > 0 => {
                    let a = rng.random_range(0..len);
                    let b = rng.random_range(a..=len.min(a + 64));
                    input.drain(a..b);
                }
                4 if len > 0 => {
                    let a = rng.random_range(0..len);
                    let b = rng.random_range(a..=len.min(a + 64));
                    let copy = input[a..b].to_vec();
                    let at = rng.random_range(0..=input.len());
                    input.splice(at..at, copy);
                }
                5 if len > 0 => input.truncate(rng.random_range(0..len)),
                _ => {
                    let other = &seeds[rng.random_range(0..seeds.len())];
                    if !other.is_empty() {
                        let from = rng.random_range(0..other.len());
                        let at = rng.random_range(0..=input.len());
                        input.truncate(at);
                        input.extend_from_slice(&other[from..]);
                    }
                }
            }
        }
    }

    fn drive(name: &str, seeds: Vec<Vec<u8>>, target: fn(&[u8])) {
        for seed in &seeds {
            for end in 0..=seed.len() {
                target(&seed[..end]);
            }
        }
        let seed: u64 = std::env::var("FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed);
        let mut rng = StdRng::seed_from_u64(seed);
        let deadline = Instant::now() + budget();
        let mut runs = 0u64;
        while Instant::now() < deadline {
            let mut input = seeds[rng.random_range(0..seeds.len())].clone();
            mutate(&mut rng, &mut input, &seeds);
            target(&input);
            runs += 1;
        }
        eprintln!("fuzz {name}: {runs} mutated inputs, seed {seed}");
        assert!(runs > 0);
    }

    #[test]
    fn fuzz_client_hello() {
        drive(
            "client_hello",
            vec![
                include_bytes!("../testdata/openssl-client-hello.bin").to_vec(),
                include_bytes!("../testdata/openssl-client-hello-no-sni.bin").to_vec(),
                synthetic_client_hello(&["a.example.com"], 16_384),
                synthetic_client_hello(&["a.example.com"], 7),
                synthetic_client_hello(&["a", "b"], 16_384),
            ],
            client_hello,
        );
    }

    #[test]
    fn fuzz_http_head() {
        drive(
            "http_head",
            vec![
                b"GET http://api.example.com/a/b HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec(),
                b"CONNECT [::ffff:198.51.100.1]:443 HTTP/1.1\r\n\r\n".to_vec(),
                b"GET /b/x.txt HTTP/1.1\r\nHost: api.example.org\r\nContent-Length: 3\r\n\r\n".to_vec(),
                b"POST http://0x7f.1:8080/ HTTP/1.1\r\nHost: 127.1:8080\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                "GET http://bücher.example.com/ HTTP/1.1\r\n\r\n".as_bytes().to_vec(),
            ],
            http_head,
        );
    }

    #[test]
    fn fuzz_dns_message() {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{Name, RecordType};
        let query = |name: &str, rtype| {
            let mut m = Message::new();
            m.set_id(7)
                .set_message_type(MessageType::Query)
                .set_op_code(OpCode::Query)
                .add_query(Query::query(Name::from_ascii(name).expect("valid"), rtype));
            m.to_vec().expect("encodes")
        };
        drive(
            "dns_message",
            vec![
                query("a.example.com.", RecordType::A),
                query("xn--bcher-kva.example.com.", RecordType::AAAA),
                query("data.evil.net.", RecordType::TXT),
                query("example.com.", RecordType::NULL),
            ],
            dns_message,
        );
    }
}
