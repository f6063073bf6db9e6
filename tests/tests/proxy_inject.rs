//! End-to-end tests of TLS termination and credential injection (DESIGN.md 6 and 7) in
//! the network test bed.
//!
//! The proxy runs in the bed's host namespace with a policy and an `Interception`: a job
//! CA, one credential bound to `allowed.test`, and the bed's certificate as the only
//! upstream root. Clients run in the runner namespace and trust the job CA (and, for
//! hosts that stay spliced, the bed's certificate), as a sandbox's trust store would.
//! The bed's web servers record every request with its headers, so each test asserts
//! what really arrived, and the audit sink records what the proxy decided.
//!
//! Responses from the bound host are scrubbed of the credential: the bed's `/echo` path
//! sends the request headers back (in headers and body), `/gzip` answers compressed.
//!
//! Both tunnel entry points are covered: CONNECT through the explicit proxy, and the
//! transparent TLS listener (the harness records the original destination in a fixed
//! table, as the eBPF layer does for redirected connections); plain HTTP through the
//! explicit and the transparent HTTP listeners.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use egress_proxy::audit::{AuditEvent, Kind, Verdict};
use egress_proxy::intercept::{Credential, Interception, JobCa};
use egress_proxy::server::Proxy;
use runner_agent_tests::netbed::{
    self, read_response, read_response_with_headers, NetBed, ECHO_PATH, GZIP_PATH, REASON_PATH,
    RUNNER_IP, WEB2_IP, WEB_IP,
};
use runner_agent_tests::proxy_client::{self, ProxyWorld};
use runner_agent_tests::{enforce_policy, require_privilege};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

const POLICY: &str = enforce_policy!(
    r#"    - host: allowed.test
      ports: [80, 443]
    - host: "*.allowed.test"
    - host: second.test
      ports: [443]
      methods: [GET]
      paths: ["/ok/**"]
    - host: xallowed.test
    - host: allowed.test.evil.test
    - host: allowed-test.test
"#
);

/// The credential's complete header value; it must reach the server and nothing else.
const VALUE: &str = "Bearer inject-7f3a9c1e55d04b2a";
/// The raw secret `VALUE` was formatted from.
const SECRET: &str = "inject-7f3a9c1e55d04b2a";
const TOKEN: &str = "REGISTRY_TOKEN";

const EXPLICIT: SocketAddr = netbed::PROXY_HTTP;
const TLS: SocketAddr = netbed::PROXY_TLS;
const PLAIN: SocketAddr = netbed::PROXY_PLAIN;

/// The bed and the proxy, with the job CA the runner trusts.
struct World {
    served: ProxyWorld,
    /// The job CA's certificate (what the sandbox trusts).
    job_ca: Vec<u8>,
}

impl Deref for World {
    type Target = ProxyWorld;

    fn deref(&self) -> &ProxyWorld {
        &self.served
    }
}

/// The bed, and the proxy serving the runner with an interception whose upstream roots
/// are `upstream_roots` (`None`: the bed's certificate) and whose credential sets
/// `header`.
fn world_with(upstream_roots: Option<String>, header: &str) -> World {
    let bed = NetBed::new().expect("building the test bed");
    for name in [
        "xallowed.test",
        "allowed.test.evil.test",
        "allowed-test.test",
    ] {
        bed.set_name(name, vec![IpAddr::V4(WEB_IP)]);
    }
    let policy = proxy_client::policy(POLICY);
    let ca = JobCa::mint("j-inject", &["allowed.test".into(), "second.test".into()]).unwrap();
    let job_ca = ca.cert_der().to_vec();
    let credential = Credential {
        name: TOKEN.into(),
        hosts: vec!["allowed.test".into()],
        header: header.into(),
        value: Zeroizing::new(VALUE.into()),
        secret: Zeroizing::new(SECRET.into()),
    };
    let roots = upstream_roots.unwrap_or_else(|| bed.ca_pem().to_owned());
    let interception = Interception::new(ca, vec![credential], roots.as_bytes()).unwrap();
    let served = ProxyWorld::start(bed, Proxy::builder());
    served.proxy().set_client_intercepting(
        IpAddr::V4(RUNNER_IP),
        "r-1",
        "j-inject",
        policy,
        Some(Arc::new(interception)),
    );
    World { served, job_ca }
}

fn world_with_roots(upstream_roots: Option<String>) -> World {
    world_with(upstream_roots, "Authorization")
}

fn world() -> World {
    world_with_roots(None)
}

/// Which roots the runner's TLS client trusts.
#[derive(Clone, Copy)]
enum Trust {
    /// The job CA and the bed's certificate (a sandbox's store: system roots + job CA).
    Both,
    /// Only the bed's certificate: the client refuses the proxy's leaves.
    BedOnly,
}

impl World {
    /// No request reached the bed's web servers (after a moment for stragglers).
    fn assert_no_request_arrived(&self) {
        std::thread::sleep(Duration::from_millis(100));
        let hits = self.bed.web_hits();
        assert!(hits.is_empty(), "{hits:?}");
    }

    /// The credential's value appears in no audit event, in any field.
    fn assert_value_never_logged(&self) {
        for event in self.events() {
            let line = event.to_json();
            assert!(!line.contains(SECRET), "{line}");
        }
    }

    fn roots(&self, trust: Trust) -> Vec<Vec<u8>> {
        match trust {
            Trust::Both => vec![self.job_ca.clone(), self.bed.ca_der().to_vec()],
            Trust::BedOnly => vec![self.bed.ca_der().to_vec()],
        }
    }

    /// From the runner: CONNECT `name:443`, TLS to `name`, then `requests` in order on
    /// that connection; the status of each response (`None`: the connection ended).
    fn https_via_connect(
        &self,
        name: &'static str,
        trust: Trust,
        requests: Vec<String>,
    ) -> std::io::Result<Vec<Option<(u16, String)>>> {
        let replies = self.https_via_connect_with_headers(name, trust, requests)?;
        Ok(replies
            .into_iter()
            .map(|r| r.map(without_headers))
            .collect())
    }

    /// [`World::https_via_connect`], with each response's headers.
    fn https_via_connect_with_headers(
        &self,
        name: &'static str,
        trust: Trust,
        requests: Vec<String>,
    ) -> std::io::Result<Vec<Option<Reply>>> {
        let roots = self.roots(trust);
        self.bed.runner().run(async move {
            let mut stream = netbed::connect(EXPLICIT).await?;
            let connect = format!("CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n");
            stream.write_all(connect.as_bytes()).await?;
            let status = read_response(&mut stream).await.map(|r| r.0);
            assert_eq!(status, Some(200), "CONNECT {name}");
            exchange_tls(stream, roots, name, requests).await
        })
    }

    /// From the runner: a connection to the transparent TLS listener redirected from
    /// `server:443`, TLS to `name`, then `requests`.
    fn https_transparent(
        &self,
        server: Ipv4Addr,
        name: &'static str,
        requests: Vec<String>,
    ) -> std::io::Result<Vec<Option<(u16, String)>>> {
        let roots = self.roots(Trust::Both);
        let table = self.origdst.clone();
        self.bed.runner().run(async move {
            let origin = netbed::curl_origin(SocketAddr::new(IpAddr::V4(server), 443));
            let stream = netbed::connect_redirected(&table, TLS, origin).await?;
            let replies = exchange_tls(stream, roots, name, requests).await?;
            Ok(replies
                .into_iter()
                .map(|r| r.map(without_headers))
                .collect())
        })
    }

    /// From the runner: `request` written on a plain connection to `to` (the explicit
    /// proxy, or the transparent HTTP listener as if headed for `WEB_IP:80`).
    fn http(&self, to: SocketAddr, request: String) -> Option<(u16, String)> {
        self.http_with_headers(to, request).map(without_headers)
    }

    /// [`World::http`], with the response's headers.
    fn http_with_headers(&self, to: SocketAddr, request: String) -> Option<Reply> {
        let table = self.origdst.clone();
        self.bed.runner().run(async move {
            let mut stream = if to == PLAIN {
                let original = SocketAddr::new(IpAddr::V4(WEB_IP), 80);
                netbed::connect_redirected(&table, to, original)
                    .await
                    .ok()?
            } else {
                netbed::connect(to).await.ok()?
            };
            stream.write_all(request.as_bytes()).await.ok()?;
            read_response_with_headers(&mut stream).await
        })
    }
}

/// `GET path` for `host` with extra header lines (each ending in CRLF).
fn get(host: &str, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

/// A response: status, headers (lower-case name, value), body.
type Reply = (u16, Vec<(String, String)>, String);

fn without_headers((status, _, body): Reply) -> (u16, String) {
    (status, body)
}

async fn exchange_tls(
    stream: TcpStream,
    roots: Vec<Vec<u8>>,
    name: &'static str,
    requests: Vec<String>,
) -> std::io::Result<Vec<Option<Reply>>> {
    let mut config = netbed::tls_client_config(roots);
    // As curl does: offer h2 first; the proxy must settle on HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, stream)
        .await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert!(
        alpn.is_none() || alpn.as_deref() == Some(b"http/1.1"),
        "{alpn:?}"
    );
    let mut out = Vec::new();
    for request in requests {
        tls.write_all(request.as_bytes()).await?;
        out.push(read_response_with_headers(&mut tls).await);
    }
    // close_notify, then FIN, as a well-behaved client ends.
    let _ = tls.shutdown().await;
    Ok(out)
}

fn hello() -> Option<(u16, String)> {
    Some((200, format!("hello from {WEB_IP}\n")))
}

/// The event of the one allowed request to `path`.
fn request_event(w: &World, path: &str) -> AuditEvent {
    w.wait_event(path, |e| {
        e.kind == Kind::Http && e.verdict == Verdict::Allow && e.path.as_deref() == Some(path)
    })
}

/// [`request_event`], which must say that the credential was added.
fn injected_event(w: &World, path: &str) -> AuditEvent {
    let e = request_event(w, path);
    assert_eq!(e.reason.as_deref(), Some("credential REGISTRY_TOKEN added"));
    e
}

/// The deny event of the request to `path`.
fn deny_at(w: &World, path: &str) -> AuditEvent {
    w.wait_event(&format!("a denial at {path}"), |e| {
        e.verdict == Verdict::Deny && e.path.as_deref() == Some(path)
    })
}

/// Every request the bed's servers saw, after checking that there are `n` and that each
/// carried the credential's value as its only Authorization.
fn assert_hits_got_the_value(w: &World, n: usize) -> Vec<netbed::WebHit> {
    let hits = w.bed.web_hits();
    assert_eq!(hits.len(), n, "{hits:?}");
    for hit in &hits {
        assert_eq!(hit.header_values("authorization"), vec![VALUE], "{hit:?}");
    }
    hits
}

/// `reply` is a response with `status` whose body says `says`.
fn assert_refused(reply: &Option<(u16, String)>, status: u16, says: &str) {
    let (got, body) = reply.as_ref().expect("a response");
    assert_eq!(*got, status, "{body}");
    assert!(body.contains(says), "{body}");
}

// ------------------------------------------------------------------ injection

#[test]
fn connect_to_a_bound_host_carries_the_credential_instead_of_the_jobs_header() {
    require_privilege!();
    let w = world();
    let own = "Authorization: Bearer job-own\r\nauthorization: Basic am9iOm93bg==\r\n";
    let got = w
        .https_via_connect(
            "allowed.test",
            Trust::Both,
            vec![get("allowed.test", "/v2/", own)],
        )
        .expect("TLS with the job CA");
    assert_eq!(got, vec![hello()]);
    let hits = assert_hits_got_the_value(&w, 1);
    let hit = &hits[0];
    // The proxy's own TLS to the server: SNI and Host name the host, on port 443.
    assert_eq!(hit.sni.as_deref(), Some("allowed.test"));
    assert_eq!(hit.host.as_deref(), Some("allowed.test"));
    assert_eq!(hit.local, SocketAddr::new(IpAddr::V4(WEB_IP), 443));
    let e = injected_event(&w, "/v2/");
    assert_eq!(
        (e.host.as_deref(), e.ip, e.port, e.method.as_deref()),
        (
            Some("allowed.test"),
            Some(IpAddr::V4(WEB_IP)),
            Some(443),
            Some("GET")
        )
    );
    assert_eq!(e.rule.as_deref(), Some("allow[0] allowed.test"));
    assert!(e.bytes_down.unwrap() > 0, "{e:?}");
    w.assert_value_never_logged();
}

#[test]
fn transparent_tls_to_a_bound_host_is_terminated_and_carries_the_credential() {
    require_privilege!();
    let w = world();
    let got = w
        .https_transparent(
            WEB_IP,
            "allowed.test",
            vec![
                get("allowed.test", "/one", "Authorization: Bearer job-own\r\n"),
                get("allowed.test", "/two", ""),
            ],
        )
        .expect("TLS with the job CA");
    assert_eq!(got, vec![hello(), hello()]);
    for hit in assert_hits_got_the_value(&w, 2) {
        assert_eq!(hit.sni.as_deref(), Some("allowed.test"));
    }
    let e = injected_event(&w, "/two");
    assert_eq!((e.pid, e.comm.as_deref()), (Some(4242), Some("curl")));
    assert_eq!(e.ip, Some(IpAddr::V4(WEB_IP)));
    w.assert_value_never_logged();
}

#[test]
fn plain_http_to_a_bound_host_carries_the_credential_too() {
    require_privilege!();
    let w = world();
    let explicit = "GET http://allowed.test/plain HTTP/1.1\r\nHost: allowed.test\r\nAUTHORIZATION: Bearer job-own\r\n\r\n";
    assert_eq!(w.http(EXPLICIT, explicit.into()), hello());
    let transparent = get("allowed.test", "/redirected", "Authorization: x\r\n");
    assert_eq!(w.http(PLAIN, transparent), hello());
    for hit in assert_hits_got_the_value(&w, 2) {
        assert_eq!(hit.sni, None);
    }
    for path in ["/plain", "/redirected"] {
        assert_eq!(injected_event(&w, path).port, Some(80));
    }
    w.assert_value_never_logged();
}

/// Plain HTTP to port 443 is refused before anything is dialled: with a bound host it
/// would carry the credential in clear text to the port the operator allowed for HTTPS
/// (found by an attack run from a sandbox: `curl -x $HTTP_PROXY http://bound:443/`).
#[test]
fn plain_http_to_port_443_is_refused_and_carries_nothing() {
    require_privilege!();
    let w = world();
    let explicit = "GET http://allowed.test:443/clear HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n";
    let reply = w.http(EXPLICIT, explicit.into());
    assert_eq!(reply.map(|r| r.0), Some(403));
    w.deny_event("plain to 443", |e| {
        e.reason.as_deref() == Some("plain HTTP to port 443, which takes TLS only")
            && e.port == Some(443)
    });
    assert!(w.bed.web_hits().is_empty(), "{:?}", w.bed.web_hits());
    w.assert_value_never_logged();
}

/// The one request the bed's servers saw, to `path`, after `request` went through
/// terminated TLS to the bound host and was answered.
fn the_hit_of(w: &World, path: &str, request: String) -> netbed::WebHit {
    let got = w
        .https_via_connect("allowed.test", Trust::Both, vec![request])
        .expect("TLS with the job CA");
    assert_eq!(got, vec![hello()]);
    let hits = w.bed.web_hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].path, path);
    hits[0].clone()
}

#[test]
fn a_connection_header_naming_authorization_cannot_remove_the_credential() {
    require_privilege!();
    let w = world();
    // Listed in Connection, Authorization is hop-by-hop: a strip after the injection
    // would take the credential out again.
    let trick = "Authorization: Bearer job-own\r\nConnection: authorization\r\n";
    let hit = the_hit_of(&w, "/hop", get("allowed.test", "/hop", trick));
    assert_eq!(hit.header_values("authorization"), vec![VALUE], "{hit:?}");
    assert!(!format!("{hit:?}").contains("job-own"), "{hit:?}");
}

#[test]
fn a_request_that_gets_the_credential_loses_its_range_headers() {
    require_privilege!();
    let w = world();
    // With them, a server echoing the credential could return it a few bytes at a time,
    // past a scrubber that looks for the whole value.
    let range = "Range: bytes=0-3\r\nIf-Range: x\r\n";
    let hit = the_hit_of(&w, "/range", get("allowed.test", "/range", range));
    assert_eq!(hit.header_values("authorization"), vec![VALUE], "{hit:?}");
    assert!(hit.header_values("range").is_empty(), "{hit:?}");
    assert!(hit.header_values("if-range").is_empty(), "{hit:?}");
}

#[test]
fn the_jobs_authorization_goes_whatever_header_the_credential_sets() {
    require_privilege!();
    let w = world_with(None, "X-Registry-Key");
    let own = "Authorization: Bearer job-own\r\n";
    let hit = the_hit_of(&w, "/key", get("allowed.test", "/key", own));
    assert!(hit.header_values("authorization").is_empty(), "{hit:?}");
    assert_eq!(hit.header_values("x-registry-key"), vec![VALUE], "{hit:?}");
}

#[test]
fn hosts_the_credential_is_not_bound_to_get_nothing() {
    require_privilege!();
    let w = world();
    // An allowed subdomain: spliced, not terminated (the client sees the server's own
    // certificate, which only the bed's root vouches for), and the job's header arrives
    // as the job sent it.
    let got = w
        .https_via_connect(
            "api.allowed.test",
            Trust::BedOnly,
            vec![get(
                "api.allowed.test",
                "/sub",
                "Authorization: Bearer job-own\r\n",
            )],
        )
        .expect("spliced TLS to the real server");
    assert_eq!(got, vec![hello()]);
    // Names that resemble the bound one, over plain HTTP (where injection applies too).
    for name in [
        "xallowed.test",
        "allowed.test.evil.test",
        "allowed-test.test",
    ] {
        let request = format!("GET http://{name}/look HTTP/1.1\r\nHost: {name}\r\n\r\n");
        assert_eq!(w.http(EXPLICIT, request), hello(), "{name}");
    }
    let hits = w.bed.web_hits();
    assert_eq!(hits.len(), 4, "{hits:?}");
    assert_eq!(
        hits[0].header_values("authorization"),
        vec!["Bearer job-own"]
    );
    assert_eq!(hits[0].sni.as_deref(), Some("api.allowed.test"));
    for hit in &hits[1..] {
        assert!(hit.header_values("authorization").is_empty(), "{hit:?}");
    }
    let tunnel = w.wait_event("spliced tunnel", |e| {
        e.kind == Kind::Connect && e.verdict == Verdict::Allow
    });
    assert_eq!(tunnel.host.as_deref(), Some("api.allowed.test"));
    // Each request's event first: a scan of events not yet written would prove nothing.
    for name in [
        "xallowed.test",
        "allowed.test.evil.test",
        "allowed-test.test",
    ] {
        w.wait_event(name, |e| {
            e.host.as_deref() == Some(name) && e.path.as_deref() == Some("/look")
        });
    }
    for event in w.events() {
        let reason = event.reason.unwrap_or_default();
        assert!(!reason.contains("credential"), "{reason}");
    }
    w.assert_value_never_logged();
}

// ------------------------------------------------------------------ scrubbing

/// The values of header `name` in `reply`.
fn reply_header<'a>(reply: &'a Reply, name: &str) -> Vec<&'a str> {
    netbed::header_values(&reply.1, name)
}

fn stars(text: &str) -> String {
    "*".repeat(text.len())
}

/// A request for the echo path that also carries the raw secret (as if the server had it
/// from elsewhere and returned it) and asks for compressed answers.
fn echo_request(host: &str) -> String {
    get(
        host,
        ECHO_PATH,
        &format!("X-Probe: {SECRET}\r\nAccept-Encoding: gzip, br\r\n"),
    )
}

/// [`echo_request`] in the absolute form of the explicit proxy.
fn explicit_echo_request(host: &str) -> String {
    echo_request(host).replacen(
        &format!("GET {ECHO_PATH}"),
        &format!("GET http://{host}{ECHO_PATH}"),
        1,
    )
}

/// The echo came back with the header value and the raw secret replaced by as many `*`,
/// in the response headers and in the body, and the rest of the echo intact.
fn assert_echo_scrubbed(reply: &Reply) {
    let (status, _, body) = reply;
    assert_eq!(*status, 200, "{reply:?}");
    assert_eq!(
        reply_header(reply, "x-echo-authorization"),
        vec![stars(VALUE)]
    );
    assert_eq!(reply_header(reply, "x-echo-x-probe"), vec![stars(SECRET)]);
    assert!(
        body.contains(&format!("authorization: {}\n", stars(VALUE))),
        "{body}"
    );
    assert!(
        body.contains(&format!("x-probe: {}\n", stars(SECRET))),
        "{body}"
    );
    // The proxy asked the server for an identity-coded answer.
    assert_eq!(
        reply_header(reply, "x-echo-accept-encoding"),
        vec!["identity"]
    );
    assert!(body.contains("accept-encoding: identity\n"), "{body}");
    assert!(!format!("{reply:?}").contains(SECRET), "{reply:?}");
}

/// The server received the real credential on every echo request.
fn assert_server_got_the_value(w: &World, expected_echoes: usize) {
    let hits = w.bed.web_hits();
    let echoes: Vec<_> = hits.iter().filter(|h| h.path == ECHO_PATH).collect();
    assert_eq!(echoes.len(), expected_echoes, "{hits:?}");
    for hit in echoes {
        assert_eq!(hit.header_values("authorization"), vec![VALUE], "{hit:?}");
        assert_eq!(hit.header_values("accept-encoding"), vec!["identity"]);
    }
}

const SCRUBBED_REASON: &str = "credential REGISTRY_TOKEN added; \
credential REGISTRY_TOKEN scrubbed from the response headers; \
credential REGISTRY_TOKEN scrubbed from the response body";

#[test]
fn an_echo_of_the_credential_from_the_bound_host_reaches_the_client_as_stars() {
    require_privilege!();
    let w = world();
    // Inside terminated TLS, then a second request on the same connection: the echo's
    // framing (Content-Length) must still be right for it to be read.
    let got = w
        .https_via_connect_with_headers(
            "allowed.test",
            Trust::Both,
            vec![
                echo_request("allowed.test"),
                get("allowed.test", "/after", ""),
            ],
        )
        .expect("TLS with the job CA");
    assert_echo_scrubbed(got[0].as_ref().expect("an echo"));
    assert_eq!(got[1].clone().map(without_headers), hello());
    // Plain HTTP through the explicit proxy.
    let reply = w
        .http_with_headers(EXPLICIT, explicit_echo_request("allowed.test"))
        .expect("an echo");
    assert_echo_scrubbed(&reply);
    assert_server_got_the_value(&w, 2);
    let events = w.wait_events(2, |e| e.path.as_deref() == Some(ECHO_PATH));
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e.verdict, Verdict::Allow);
        assert_eq!(e.reason.as_deref(), Some(SCRUBBED_REASON), "{e:?}");
    }
    injected_event(&w, "/after");
    w.assert_value_never_logged();
}

#[test]
fn a_compressed_answer_from_the_bound_host_is_refused_with_a_deny_event() {
    require_privilege!();
    let w = world();
    let got = w
        .https_via_connect(
            "allowed.test",
            Trust::Both,
            vec![
                get("allowed.test", GZIP_PATH, "Accept-Encoding: gzip\r\n"),
                get("allowed.test", "/after", ""),
            ],
        )
        .expect("TLS with the job CA");
    assert_refused(
        &got[0],
        502,
        "compressed response from a credential host cannot be checked",
    );
    // The client's connection goes on; the next request gets a new upstream connection.
    assert_eq!(got[1], hello());
    let e = deny_at(&w, GZIP_PATH);
    assert_eq!(
        (e.kind, e.host.as_deref(), e.rule.as_deref()),
        (Kind::Http, Some("allowed.test"), None)
    );
    let reason = e.reason.unwrap_or_default();
    assert!(
        reason.starts_with("credential REGISTRY_TOKEN added; compressed response from a credential host cannot be checked (Content-Encoding: gzip)"),
        "{reason}"
    );
    // The server was asked for identity and answered gzip all the same.
    let hits = w.bed.web_hits();
    let gzip: Vec<_> = hits.iter().filter(|h| h.path == GZIP_PATH).collect();
    assert_eq!(gzip.len(), 1, "{hits:?}");
    assert_eq!(gzip[0].header_values("accept-encoding"), vec!["identity"]);
    w.assert_value_never_logged();
}

#[test]
fn responses_from_hosts_without_a_credential_pass_unchanged() {
    require_privilege!();
    let w = world();
    // Spliced TLS to an allowed subdomain, and plain HTTP to a resembling name.
    let spliced = w
        .https_via_connect_with_headers(
            "api.allowed.test",
            Trust::BedOnly,
            vec![
                echo_request("api.allowed.test"),
                get("api.allowed.test", GZIP_PATH, ""),
            ],
        )
        .expect("spliced TLS to the real server");
    let plain = w
        .http_with_headers(EXPLICIT, explicit_echo_request("xallowed.test"))
        .expect("an echo");
    for reply in [spliced[0].as_ref().expect("an echo"), &plain] {
        assert_eq!(reply.0, 200);
        assert_eq!(reply_header(reply, "x-echo-x-probe"), vec![SECRET]);
        assert_eq!(
            reply_header(reply, "x-echo-accept-encoding"),
            vec!["gzip, br"]
        );
        assert!(
            reply.2.contains(&format!("x-probe: {SECRET}\n")),
            "{reply:?}"
        );
        assert!(reply_header(reply, "x-echo-authorization").is_empty());
    }
    let gzip = spliced[1].as_ref().expect("a gzip answer");
    assert_eq!(gzip.0, 200);
    assert_eq!(reply_header(gzip, "content-encoding"), vec!["gzip"]);
    // The scan below covers both the tunnel's event and the plain request's.
    w.wait_event("spliced tunnel", |e| {
        e.kind == Kind::Connect && e.host.as_deref() == Some("api.allowed.test")
    });
    w.wait_event("plain echo", |e| {
        e.host.as_deref() == Some("xallowed.test") && e.path.as_deref() == Some(ECHO_PATH)
    });
    for event in w.events() {
        let reason = event.reason.unwrap_or_default();
        assert!(!reason.contains("credential"), "{reason}");
    }
}

#[test]
fn a_credential_reflected_in_the_reason_phrase_does_not_reach_the_client() {
    require_privilege!();
    let w = world();
    let request = format!(
        "GET http://allowed.test{REASON_PATH} HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
    );
    let raw = w.bed.runner().run(async move {
        let mut stream = netbed::connect(EXPLICIT).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the proxy closes after the response")
            .unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    });
    // The server did put the credential in its status line.
    assert_hits_got_the_value(&w, 1);
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(!raw.contains(SECRET), "{raw}");
    // Nor did it reach the audit log through the event of that request.
    w.wait_event("reflecting request", |e| {
        e.path.as_deref() == Some(REASON_PATH)
    });
    w.assert_value_never_logged();
}

// ------------------------------------------------------------------ per-request checks

#[test]
fn a_host_header_differing_from_the_tls_name_is_denied_inside_terminated_tls() {
    require_privilege!();
    let w = world();
    let got = w
        .https_via_connect(
            "allowed.test",
            Trust::Both,
            vec![
                get("api.allowed.test", "/fronted", ""),
                get("allowed.test:8443", "/other-port", ""),
            ],
        )
        .expect("TLS with the job CA");
    assert_eq!(got.len(), 2);
    for response in &got {
        assert_refused(response, 403, "differs from the TLS server name");
    }
    // The event names the host asked for and the connection's TLS name and port.
    let e = deny_at(&w, "/fronted");
    assert_eq!(e.kind, Kind::Http);
    assert_eq!(
        e.reason.as_deref(),
        Some("Host `api.allowed.test` differs from the TLS server name")
    );
    assert_eq!(e.host.as_deref(), Some("allowed.test"));
    assert_eq!(e.port, Some(443));
    let e = deny_at(&w, "/other-port");
    assert_eq!(
        e.reason.as_deref(),
        Some("Host `allowed.test:8443` differs from the TLS server name")
    );
    w.assert_no_request_arrived();
}

#[test]
fn methods_and_paths_on_https_are_decided_per_request() {
    require_privilege!();
    for transparent in [false, true] {
        let w = world();
        let post = "POST /ok/write HTTP/1.1\r\nHost: second.test\r\nContent-Length: 4\r\n\r\nbody";
        let requests = vec![
            get("second.test", "/ok/read", ""),
            post.to_owned(),
            get("second.test", "/elsewhere", ""),
            get("second.test", "/ok/again", ""),
        ];
        let got = if transparent {
            w.https_transparent(WEB2_IP, "second.test", requests)
        } else {
            w.https_via_connect("second.test", Trust::Both, requests)
        }
        .expect("TLS with the job CA");
        let statuses: Vec<_> = got.iter().map(|r| r.as_ref().map(|r| r.0)).collect();
        assert_eq!(
            statuses,
            vec![Some(200), Some(403), Some(403), Some(200)],
            "transparent: {transparent}"
        );
        let hits = w.bed.web_hits();
        let paths: Vec<_> = hits.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(paths, vec!["/ok/read", "/ok/again"]);
        assert_eq!(hits[0].sni.as_deref(), Some("second.test"));
        assert_eq!(hits[0].local, SocketAddr::new(IpAddr::V4(WEB2_IP), 443));
        // Not bound: nothing injected.
        assert!(hits[0].header_values("authorization").is_empty());
        for (path, reason) in [
            ("/ok/write", "method not allowed"),
            ("/elsewhere", "path not allowed"),
        ] {
            let e = deny_at(&w, path);
            assert_eq!(e.reason.as_deref(), Some(reason), "{e:?}");
            assert_eq!(
                (e.kind, e.host.as_deref()),
                (Kind::Http, Some("second.test"))
            );
        }
        let e = request_event(&w, "/ok/read");
        assert_eq!(e.rule.as_deref(), Some("allow[2] second.test"));
        assert_eq!(e.reason, None);
    }
}

#[test]
fn a_terminated_connection_without_a_request_is_recorded() {
    require_privilege!();
    let w = world();
    let got = w
        .https_via_connect("allowed.test", Trust::Both, Vec::new())
        .expect("TLS with the job CA");
    assert!(got.is_empty());
    let e = w.wait_event("empty connection", |e| e.verdict == Verdict::Deny);
    assert_eq!(
        (e.kind, e.host.as_deref(), e.port),
        (Kind::Http, Some("allowed.test"), Some(443))
    );
    assert_eq!(
        e.reason.as_deref(),
        Some("connection closed before a request")
    );
    w.assert_no_request_arrived();
}

// ------------------------------------------------------------------ fail closed

#[test]
fn a_client_refusing_the_proxys_certificate_ends_with_a_deny_event() {
    require_privilege!();
    let w = world();
    let got = w.https_via_connect(
        "allowed.test",
        Trust::BedOnly,
        vec![get("allowed.test", "/never", "")],
    );
    let err = got.expect_err("the client must refuse a leaf it has no root for");
    assert!(err.to_string().contains("certificate"), "{err}");
    let e = w.wait_event("handshake failure", |e| e.verdict == Verdict::Deny);
    assert_eq!(
        (e.kind, e.host.as_deref(), e.port),
        (Kind::Connect, Some("allowed.test"), Some(443))
    );
    let reason = e.reason.unwrap_or_default();
    assert!(
        reason.starts_with("TLS handshake with the client failed"),
        "{reason}"
    );
    w.assert_no_request_arrived();
}

#[test]
fn an_upstream_certificate_not_trusted_fails_closed_with_a_deny_event() {
    require_privilege!();
    // The proxy trusts only an unrelated CA upstream, so the bed's server cannot prove
    // its name.
    let unrelated = JobCa::mint("other", &[]).unwrap().cert_pem().to_owned();
    let w = world_with_roots(Some(unrelated));
    let got = w
        .https_via_connect(
            "allowed.test",
            Trust::Both,
            vec![
                get("allowed.test", "/first", ""),
                get("allowed.test", "/second", ""),
            ],
        )
        .expect("TLS with the job CA");
    assert_refused(&got[0], 502, "upstream TLS failed");
    assert_eq!(got[1], None, "the connection must close after the failure");
    let e = deny_at(&w, "/first");
    assert_eq!(
        (e.kind, e.host.as_deref(), e.ip),
        (Kind::Http, Some("allowed.test"), Some(IpAddr::V4(WEB_IP)))
    );
    assert!(
        e.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("upstream TLS failed"),
        "{e:?}"
    );
    // No request, and so no credential, reached the server.
    w.assert_no_request_arrived();
    w.assert_value_never_logged();
}
