//! Helpers for the eBPF enforcement tests: a world of network namespaces, a cgroup to
//! fence, stand-ins for the proxy's listeners, a recorder on the "internet" side, and a
//! probe process that attacks from inside the fenced runner.
//!
//! The world (DESIGN.md section 8), built with `ip` and removed on drop:
//!
//! ```text
//!  runner ns                 host ns                          internet ns
//!  eth0 10.250.0.2/30 ─── vrun 10.250.0.1 (proxy stand-in)
//!       2001:db8:250::2      2001:db8:250::1
//!       default via host     forwarding on, no default route
//!                            vnet 10.251.0.1 ─────────────── eth0 10.251.0.2
//!                                                             lo 203.0.113.7 (must stay unreachable)
//!                                                                198.51.100.53 (another DNS server)
//!                                                                2001:db8:203::7
//! ```
//!
//! The host forwards, like a docker host would, so without the fence the runner *can*
//! reach the internet namespace (the control test proves the recorder would see it); with
//! the fence, nothing from the runner's addresses may arrive there. The recorder is a
//! packet socket in the internet namespace: it sees every frame, whatever protocol.
//! Nothing here routes to a real network: no namespace has a link to one.
//!
//! Probes run as a separate process: the current test binary re-executed with only its
//! `fence_probe` test selected, placed into the runner's netns and cgroup (and optionally
//! dropped to an unprivileged uid that is root in a new user namespace) before exec, so
//! every socket call it makes goes through the fence. Each test file that uses
//! [`World::probe`] must contain the entry point:
//!
//! ```ignore
//! #[test]
//! #[ignore = "entry point of the probe process started by the fence tests"]
//! fn fence_probe() { runner_agent_tests::fence::probe_main(); }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use egress_ebpf::{Denial, DenialStream, FenceConfig, OtherTcp};
use serde::{Deserialize, Serialize};

/// Address of the host side of the runner's veth: where the proxy stand-in listens.
pub const PROXY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The runner's address.
pub const RUNNER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// The runner's IPv6 address (it has a v6 route through the host, so v6 is a real path).
pub const RUNNER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x250, 0, 0, 0, 0, 2);
/// A target that must stay unreachable.
pub const TARGET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// The same target over IPv6.
pub const TARGET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 7);
/// A DNS server other than the filter.
pub const OTHER_DNS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// Explicit proxy stand-in port.
pub const EXPLICIT_PORT: u16 = 3128;
/// Transparent TLS stand-in port.
pub const TLS_PORT: u16 = 3129;
/// Transparent HTTP stand-in port.
pub const HTTP_PORT: u16 = 3130;
/// DNS filter stand-in port (UDP and TCP).
pub const DNS_PORT: u16 = 5353;
/// TCP ports the internet namespace listens on, so that unfenced connects succeed.
pub const TARGET_TCP_PORTS: [u16; 6] = [22, 53, 80, 443, 5432, 8080];

const PROBE_ENV: &str = "FENCE_PROBE_OPS";
const PROBE_RESULT: &str = "FENCE_PROBE_RESULT ";
const PROBE_TEST: &str = "fence_probe";
/// Host uid the probe drops to in [`Placement::UserNsRoot`].
pub const NOBODY: u32 = 65534;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs `ip` with `args` and fails with its stderr (shared with the network bed).
pub use crate::netbed::ip;

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a fresh namespace.
    pub fn create(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        ip(&["netns", "add", &name])?;
        Ok(Self { name })
    }

    /// Its bind-mounted nsfs file.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread that joined this namespace (setns(2) on a thread changes only
    /// that thread). Sockets created there stay in this namespace wherever they are used.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = File::open(self.path()).context("opening netns")?;
        std::thread::spawn(move || -> Result<T> {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Root of the cgroup v2 hierarchy: /sys/fs/cgroup on pure v2 hosts, /sys/fs/cgroup/unified
/// on hybrid ones.
pub fn cgroup2_root() -> Result<PathBuf> {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let p = Path::new(root);
        if p.join("cgroup.procs").exists()
            && nix::sys::statfs::statfs(p)
                .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                .unwrap_or(false)
        {
            return Ok(p.to_owned());
        }
    }
    bail!("no cgroup v2 hierarchy mounted")
}

/// A cgroup v2 directory for one test, emptied (cgroup.kill) and removed on drop.
#[derive(Debug)]
pub struct TestCgroup {
    /// The directory.
    pub path: PathBuf,
}

impl TestCgroup {
    /// Creates `<v2 root>/fence-test-<unique>`.
    pub fn create() -> Result<Self> {
        let path = cgroup2_root()?.join(unique("fence-test-"));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    /// A child cgroup `name` of this one (removed on drop; drop it before its parent).
    pub fn child(&self, name: &str) -> Result<Self> {
        let path = self.path.join(name);
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.path.exists() {
            eprintln!("cleanup: could not remove {}", self.path.display());
        }
    }
}

/// What the stand-ins for the proxy's listeners saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Local port (which listener).
    pub port: u16,
    /// TCP or UDP.
    pub udp: bool,
    /// The runner-side address, as the proxy sees it.
    pub peer: SocketAddr,
    /// First bytes received.
    pub data: Vec<u8>,
}

/// Listeners at [`PROXY_ADDR`] on the four proxy ports, in the host namespace. TCP ones
/// answer `proxy:<port>` and record the first bytes; the UDP DNS one answers
/// `dns-reply:<query>`.
pub struct StandIn {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tcp_ports: Mutex<BTreeMap<u16, std::net::TcpListener>>,
}

impl StandIn {
    fn start(host: &Netns) -> Result<Self> {
        let (tcp, udp) = host.run(|| -> std::io::Result<_> {
            let mut tcp = Vec::new();
            for port in [EXPLICIT_PORT, TLS_PORT, HTTP_PORT, DNS_PORT] {
                tcp.push(std::net::TcpListener::bind((PROXY_ADDR, port))?);
            }
            let udp = UdpSocket::bind((PROXY_ADDR, DNS_PORT))?;
            Ok((tcp, udp))
        })??;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut kept = BTreeMap::new();
        for listener in tcp {
            let port = listener.local_addr()?.port();
            kept.insert(port, listener.try_clone()?);
            listener.set_nonblocking(true)?;
            let (arrivals, stop) = (arrivals.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                accept_loop(listener, port, &arrivals, &stop)
            }));
        }
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (arrivals2, stop2) = (arrivals.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            dns_loop(udp, &arrivals2, &stop2)
        }));
        Ok(Self {
            arrivals,
            stop,
            threads,
            tcp_ports: Mutex::new(kept),
        })
    }

    /// Everything that arrived so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Waits (up to 3 s) until `enough` holds for the arrivals, and returns them.
    pub fn arrivals_until(&self, enough: impl Fn(&[Arrival]) -> bool) -> Vec<Arrival> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let got = self.arrivals();
            if enough(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes the TCP listener on `port`: the proxy died. Later connects are refused.
    pub fn kill_listener(&self, port: u16) {
        if let Ok(mut ports) = self.tcp_ports.lock() {
            if let Some(l) = ports.remove(&port) {
                // shutdown(2) on a listening socket wakes and fails its accept loop.
                let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            }
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: std::net::TcpListener,
    port: u16,
    arrivals: &Mutex<Vec<Arrival>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
                let _ = stream.write_all(format!("proxy:{port}\n").as_bytes());
                let mut buf = [0u8; 256];
                let n = stream.read(&mut buf).unwrap_or(0);
                if let Ok(mut a) = arrivals.lock() {
                    a.push(Arrival {
                        port,
                        udp: false,
                        peer,
                        data: buf[..n].to_vec(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

fn dns_loop(udp: UdpSocket, arrivals: &Mutex<Vec<Arrival>>, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let mut reply = b"dns-reply:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&reply, peer);
            if let Ok(mut a) = arrivals.lock() {
                a.push(Arrival {
                    port: DNS_PORT,
                    udp: true,
                    peer,
                    data: buf[..n].to_vec(),
                });
            }
        }
    }
}

/// A frame seen in the internet namespace whose source is one of the runner's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol.
    pub protocol: u8,
}

/// Packet recorder in the internet namespace (a packet socket, so it sees every frame of
/// every protocol), plus TCP listeners on the target so unfenced connects complete.
pub struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(internet: &Netns) -> Result<Self> {
        let (packet, listeners) = internet.run(|| -> Result<_> {
            let packet = sys::packet_socket().context("packet socket")?;
            let mut listeners = Vec::new();
            for port in TARGET_TCP_PORTS {
                listeners.push(std::net::TcpListener::bind((TARGET, port))?);
                listeners.push(std::net::TcpListener::bind((TARGET6, port))?);
            }
            listeners.push(std::net::TcpListener::bind((OTHER_DNS, 53))?);
            Ok((packet, listeners))
        })??;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            record_loop(&packet, &seen2, &stop2)
        }));
        let sink = Arc::new(Mutex::new(Vec::new()));
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let (sink, stop) = (sink.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                accept_loop(listener, 0, &sink, &stop)
            }));
        }
        Ok(Self {
            seen,
            stop,
            threads,
        })
    }

    /// Frames from the runner seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Forgets what was seen (between phases of a test).
    pub fn clear(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn record_loop(packet: &OwnedFd, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = nix::sys::socket::recv(
            packet.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) else {
            continue; // SO_RCVTIMEO expired
        };
        if let Some(s) = parse_frame(&buf[..n]) {
            if s.src == IpAddr::V4(RUNNER_ADDR) || s.src == IpAddr::V6(RUNNER_ADDR6) {
                if let Ok(mut v) = seen.lock() {
                    v.push(s);
                }
            }
        }
    }
}

/// Source, destination and protocol of an Ethernet frame carrying IPv4 or IPv6.
pub fn parse_frame(frame: &[u8]) -> Option<Seen> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    match ethertype {
        0x0800 if ip.len() >= 20 => Some(Seen {
            src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
            dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
            protocol: ip[9],
        }),
        0x86dd if ip.len() >= 40 => {
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            Some(Seen {
                src: IpAddr::V6(src.into()),
                dst: IpAddr::V6(dst.into()),
                protocol: ip[6],
            })
        }
        _ => None,
    }
}

/// How the probe process is placed before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Host root inside the runner's netns and cgroup: the strongest socket privileges
    /// (CAP_NET_RAW over the runner's netns), to test the programs alone.
    HostRoot,
    /// Host uid [`NOBODY`] mapped to root in a new user namespace, in the runner's netns
    /// and cgroup: what a job in the sandbox is.
    UserNsRoot,
    /// Only in the runner's netns, not in the cgroup (to show what the fence stops).
    Unfenced,
    /// Host uid [`NOBODY`] without any capability, in the runner's netns, not in the
    /// cgroup: an unprivileged proxy process.
    Unprivileged,
}

/// One step of a probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    /// TCP connect (kept open for [`Op::Send`]); reports getpeername and the first reply line.
    Connect {
        /// Destination.
        to: SocketAddr,
        /// Bytes to send after connecting.
        send: String,
    },
    /// Send on the `index`-th connection made by [`Op::Connect`].
    Send {
        /// Which connection.
        index: usize,
        /// Bytes.
        data: String,
    },
    /// Unconnected UDP sendto(2); optionally waits for a reply and reports its source.
    SendTo {
        /// Destination.
        to: SocketAddr,
        /// Payload.
        data: String,
        /// Wait for a reply.
        reply: bool,
    },
    /// UDP connect(2) then send(2); optionally waits for a reply and reports its source
    /// (recvfrom(2) on the connected socket) and getpeername(2).
    UdpConnect {
        /// Destination.
        to: SocketAddr,
        /// Wait for a reply.
        reply: bool,
    },
    /// One sendmmsg(2) with one datagram per destination, from one unconnected socket.
    Sendmmsg {
        /// Destinations.
        to: Vec<SocketAddr>,
    },
    /// socket(2) with these numbers, then (if created) sendto a destination.
    Socket {
        /// Domain.
        domain: i32,
        /// Type.
        ty: i32,
        /// Protocol.
        protocol: i32,
        /// Optional destination for one sendto.
        to: Option<SocketAddr>,
    },
    /// Sends a raw Ethernet frame out of `ifname` through a packet socket.
    Frame {
        /// Interface in the probe's netns.
        ifname: String,
        /// The frame.
        frame: Vec<u8>,
    },
    /// unshare(CLONE_NEWNET) and bring its loopback up (as root of its own user namespace).
    NewNetns,
    /// bpf(BPF_MAP_CREATE) and bpf(BPF_PROG_GET_NEXT_ID): what bpf() gives a job.
    Bpf,
    /// Reads one line from stdin before going on (lets the test act in between).
    WaitStdin,
    /// Attaches a fence to `cgroup`, pinned under `pin_dir` (the process is then a loader
    /// that can be killed), and its tc program when `tc` names the namespace (under
    /// /run/netns) holding the host-side veth and the veth's index there.
    AttachFence {
        /// cgroup v2 directory.
        cgroup: PathBuf,
        /// Pin directory.
        pin_dir: PathBuf,
        /// Configuration.
        config: FenceConfigJson,
        /// Namespace name and interface index of the host-side veth.
        tc: Option<(String, u32)>,
    },
    /// Opens the inherited map fd `fd` as [`egress_ebpf::OriginalDestinations`] and looks
    /// `peer` up.
    LookupOrigDst {
        /// Inherited fd number.
        fd: i32,
        /// Runner-side address of a redirected connection.
        peer: SocketAddr,
    },
}

/// [`FenceConfig`] as JSON for [`Op::AttachFence`] (the config type itself only
/// deserializes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FenceConfigJson {
    /// Runner id.
    pub runner_id: u32,
    /// Deny TCP to ports other than 53 and 443 instead of redirecting it.
    pub deny_other_tcp: bool,
}

impl FenceConfigJson {
    /// The configuration matching the stand-ins.
    pub fn config(&self) -> FenceConfig {
        let other = if self.deny_other_tcp {
            OtherTcp::Deny
        } else {
            OtherTcp::HttpListener
        };
        fence_config(self.runner_id, other)
    }
}

/// The fence configuration matching the stand-ins.
pub fn fence_config(runner_id: u32, other_tcp: OtherTcp) -> FenceConfig {
    FenceConfig {
        proxy_addr_v4: PROXY_ADDR,
        runner_addr_v4: RUNNER_ADDR,
        explicit_proxy_port: EXPLICIT_PORT,
        transparent_tls_port: TLS_PORT,
        transparent_http_port: HTTP_PORT,
        dns_port: DNS_PORT,
        runner_id,
        other_tcp,
        allow_loopback: true,
    }
}

/// What one step gave.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the operation succeeded.
    pub ok: bool,
    /// errno when it failed.
    pub errno: i32,
    /// Free text: peer, reply, source of the reply.
    pub detail: String,
}

/// The result of a probe run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Host pid of the probe process (what the fence reports).
    pub pid: u32,
    /// One outcome per op.
    pub outcomes: Vec<Outcome>,
}

/// The world of one test.
pub struct World {
    /// The runner's namespace.
    pub runner: Netns,
    /// The host's namespace (proxy stand-in).
    pub host: Netns,
    /// The test's internet.
    pub internet: Netns,
    /// The cgroup to fence.
    pub cgroup: TestCgroup,
    /// Proxy stand-in listeners.
    pub proxy: StandIn,
    /// Packet recorder in the internet namespace.
    pub recorder: Recorder,
    /// ifindex of the host-side veth, in the host namespace.
    pub host_ifindex: u32,
    /// MAC address of the host-side veth.
    pub host_mac: [u8; 6],
    /// MAC address of the runner's eth0.
    pub runner_mac: [u8; 6],
    /// Pin directories handed out by [`World::pin_dir`], reaped on drop.
    pins: Mutex<Vec<PathBuf>>,
}

impl Drop for World {
    fn drop(&mut self) {
        // A test that failed before detaching leaves its fence pinned; remove it.
        for dir in self.pins.lock().map(|p| p.clone()).unwrap_or_default() {
            if let Err(e) = egress_ebpf::reap(&dir) {
                eprintln!("cleanup: reap {}: {e}", dir.display());
            }
        }
    }
}

/// MAC address of `ifname` in `ns`, from `ip link show` (sysfs shows the netns that
/// mounted it, not the caller's).
fn read_mac(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-o", "link", "show", "dev", ifname])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC in {text}"))?;
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {mac}"))
}

impl World {
    /// Builds the namespaces, links, routes, stand-ins and recorder, and a cgroup.
    pub fn build() -> Result<Self> {
        let runner = Netns::create("fxr")?;
        let host = Netns::create("fxh")?;
        let internet = Netns::create("fxi")?;
        let (a, b, c, d) = (unique("fa"), unique("fb"), unique("fc"), unique("fd"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &runner.name])?;
        ip(&["link", "set", &b, "netns", &host.name])?;
        ip(&["link", "add", &c, "type", "veth", "peer", "name", &d])?;
        ip(&["link", "set", &c, "netns", &host.name])?;
        ip(&["link", "set", &d, "netns", &internet.name])?;
        runner.ip(&["link", "set", &a, "name", "eth0"])?;
        host.ip(&["link", "set", &b, "name", "vrun"])?;
        host.ip(&["link", "set", &c, "name", "vnet"])?;
        internet.ip(&["link", "set", &d, "name", "eth0"])?;
        for (ns, cmds) in [
            (
                &runner,
                &[
                    "addr add 10.250.0.2/30 dev eth0",
                    "addr add 2001:db8:250::2/64 dev eth0 nodad",
                    "link set lo up",
                    "link set eth0 up",
                    "route add default via 10.250.0.1",
                    "-6 route add default via 2001:db8:250::1",
                ][..],
            ),
            (
                &host,
                &[
                    "addr add 10.250.0.1/30 dev vrun",
                    "addr add 2001:db8:250::1/64 dev vrun nodad",
                    "addr add 10.251.0.1/30 dev vnet",
                    "addr add 2001:db8:251::1/64 dev vnet nodad",
                    "link set lo up",
                    "link set vrun up",
                    "link set vnet up",
                    "route add 198.51.100.0/24 via 10.251.0.2",
                    "route add 203.0.113.0/24 via 10.251.0.2",
                    "-6 route add 2001:db8:203::/64 via 2001:db8:251::2",
                ][..],
            ),
            (
                &internet,
                &[
                    "addr add 10.251.0.2/30 dev eth0",
                    "addr add 2001:db8:251::2/64 dev eth0 nodad",
                    "addr add 203.0.113.7/32 dev lo",
                    "addr add 198.51.100.53/32 dev lo",
                    "addr add 2001:db8:203::7/128 dev lo",
                    "link set lo up",
                    "link set eth0 up",
                    "route add default via 10.251.0.1",
                    "-6 route add default via 2001:db8:251::1",
                ][..],
            ),
        ] {
            for cmd in cmds {
                ns.ip(&cmd.split(' ').collect::<Vec<_>>())?;
            }
        }
        host.run(|| -> Result<()> {
            // The host forwards, as docker hosts do: the fence must hold anyway.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("ip_forward")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").context("forwarding")
        })??;
        runner
            .run(|| {
                // Let every group create ICMP "ping" sockets, so that refusing them is the
                // fence's doing and not the default ping_group_range's (icmp(7)).
                std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
            })?
            .context("ping_group_range")?;
        let host_ifindex = host
            .run(|| nix::net::if_::if_nametoindex("vrun"))?
            .context("ifindex")?;
        let host_mac = read_mac(&host, "vrun")?;
        let runner_mac = read_mac(&runner, "eth0")?;
        let proxy = StandIn::start(&host).context("proxy stand-in")?;
        let recorder = Recorder::start(&internet).context("recorder")?;
        let cgroup = TestCgroup::create()?;
        Ok(Self {
            runner,
            host,
            internet,
            cgroup,
            proxy,
            recorder,
            host_ifindex,
            host_mac,
            runner_mac,
            pins: Mutex::new(Vec::new()),
        })
    }

    /// The fence configuration matching the stand-ins.
    pub fn fence_config(&self, runner_id: u32, other_tcp: OtherTcp) -> FenceConfig {
        fence_config(runner_id, other_tcp)
    }

    /// A pin directory for this world's fence, under /sys/fs/bpf.
    pub fn pin_dir(&self) -> PathBuf {
        let dir = Path::new(egress_ebpf::bpffs::DEFAULT_BPFFS).join(unique("fence-test-"));
        if let Ok(mut pins) = self.pins.lock() {
            pins.push(dir.clone());
        }
        dir
    }

    /// Starts a probe running `ops`; [`ProbeChild::finish`] collects its report.
    pub fn spawn_probe(&self, ops: &[Op], placement: Placement) -> Result<ProbeChild> {
        self.spawn_probe_in(ops, placement, &self.cgroup.path)
    }

    /// Like [`Self::spawn_probe`], placing the probe in `cgroup` (a descendant of the
    /// fenced one, say) instead of the world's cgroup.
    pub fn spawn_probe_in(
        &self,
        ops: &[Op],
        placement: Placement,
        cgroup: &Path,
    ) -> Result<ProbeChild> {
        // Through /proc/self/exe (a magic link, followed without searching the directories
        // on the way, see proc(5)), so that a probe that dropped to an unprivileged uid can
        // exec a test binary that lives under a directory closed to that uid.
        let exe = Path::new("/proc/self/exe");
        let netns = File::open(self.runner.path())?;
        let procs = match placement {
            Placement::Unfenced | Placement::Unprivileged => None,
            _ => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(cgroup.join("cgroup.procs"))?,
            ),
        };
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            PROBE_TEST,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(PROBE_ENV, serde_json::to_string(ops)?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let drop_to = match placement {
            Placement::UserNsRoot => sys::Drop::UserNsRoot,
            Placement::Unprivileged => sys::Drop::Nobody,
            Placement::HostRoot | Placement::Unfenced => sys::Drop::Stay,
        };
        sys::place_before_exec(&mut cmd, netns, procs, drop_to);
        let mut child = cmd.spawn().context("spawning probe")?;
        let stdin = child.stdin.take();
        Ok(ProbeChild { child, stdin })
    }

    /// One TCP connect from a probe, sending nothing.
    pub fn connect(&self, to: SocketAddr, placement: Placement) -> Result<Outcome> {
        let op = Op::Connect {
            to,
            send: String::new(),
        };
        let mut report = self.probe(&[op], placement)?;
        report.outcomes.pop().context("no outcome")
    }

    /// Runs a probe to completion.
    pub fn probe(&self, ops: &[Op], placement: Placement) -> Result<ProbeReport> {
        self.spawn_probe(ops, placement)?.finish()
    }
}

/// A running probe.
pub struct ProbeChild {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ProbeChild {
    /// Host pid of the probe.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the probe (a loader dying without any cleanup).
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Lets an [`Op::WaitStdin`] go on.
    pub fn resume(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin gone")?;
        stdin.write_all(b"go\n")?;
        Ok(stdin.flush()?)
    }

    /// Waits (at most 30 s) and parses the report.
    pub fn finish(mut self) -> Result<ProbeReport> {
        drop(self.stdin.take());
        let stdout = self.child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(json) = line.strip_prefix(PROBE_RESULT) {
                    found = Some(json.to_owned());
                }
            }
            let _ = tx.send(found);
        });
        let line = rx.recv_timeout(Duration::from_secs(30));
        let status = self.child.wait()?;
        match line {
            Ok(Some(json)) => Ok(serde_json::from_str(&json)?),
            _ => bail!("probe produced no report (status {status})"),
        }
    }
}

impl Drop for ProbeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects denials for up to `wait`, stopping early once `enough` says so.
pub async fn collect_denials(
    stream: &mut DenialStream,
    wait: Duration,
    enough: impl Fn(&[Denial]) -> bool,
) -> Vec<Denial> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while !enough(&got) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Ok(d)) => got.push(d),
            _ => break,
        }
    }
    got
}

/// Entry point of the probe process (see the module docs). Does nothing when not started
/// by [`World::spawn_probe`].
pub fn probe_main() {
    let Ok(json) = std::env::var(PROBE_ENV) else {
        eprintln!("fence_probe: not started by a fence test, nothing to do");
        return;
    };
    let ops: Vec<Op> = match serde_json::from_str(&json) {
        Ok(ops) => ops,
        Err(e) => panic!("bad probe ops: {e}"),
    };
    let mut conns = Vec::new();
    let outcomes = ops.iter().map(|op| run_op(op, &mut conns)).collect();
    let report = ProbeReport {
        pid: std::process::id(),
        outcomes,
    };
    match serde_json::to_string(&report) {
        Ok(json) => println!("{PROBE_RESULT}{json}"),
        Err(e) => panic!("probe report: {e}"),
    }
}

fn outcome(r: std::io::Result<String>) -> Outcome {
    match r {
        Ok(detail) => Outcome {
            ok: true,
            errno: 0,
            detail,
        },
        Err(e) => Outcome {
            ok: false,
            errno: e.raw_os_error().unwrap_or(-1),
            detail: e.to_string(),
        },
    }
}

fn unspecified_for(to: &SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

fn run_op(op: &Op, conns: &mut Vec<TcpStream>) -> Outcome {
    let timeout = Duration::from_secs(5);
    outcome(match op {
        Op::Connect { to, send } => (|| {
            let mut s = TcpStream::connect_timeout(to, timeout)?;
            let peer = s.peer_addr()?;
            s.set_read_timeout(Some(timeout))?;
            if !send.is_empty() {
                s.write_all(send.as_bytes())?;
            }
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            let reply = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
            let local = s.local_addr()?;
            conns.push(s);
            Ok(format!("local={local} peer={peer} reply={reply}"))
        })(),
        Op::Send { index, data } => (|| {
            let s = conns
                .get_mut(*index)
                .ok_or_else(|| std::io::Error::other("no such connection"))?;
            s.write_all(data.as_bytes())?;
            s.flush()?;
            std::thread::sleep(Duration::from_millis(200));
            Ok("sent".to_owned())
        })(),
        Op::SendTo { to, data, reply } => (|| {
            let s = UdpSocket::bind(unspecified_for(to))?;
            s.send_to(data.as_bytes(), to)?;
            if !reply {
                return Ok("sent".to_owned());
            }
            s.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf)?;
            Ok(format!(
                "from={from} reply={}",
                String::from_utf8_lossy(&buf[..n])
            ))
        })(),
        Op::UdpConnect { to, reply } => (|| {
            let s = UdpSocket::bind(unspecified_for(to))?;
            s.connect(to)?;
            s.send(b"udp-connect")?;
            if !reply {
                return Ok("sent".to_owned());
            }
            s.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf)?;
            let reply = String::from_utf8_lossy(&buf[..n]);
            Ok(format!("from={from} peer={} reply={reply}", s.peer_addr()?))
        })(),
        Op::Sendmmsg { to } => (|| {
            let s = UdpSocket::bind(unspecified_for(&to[0]))?;
            let sent = sys::sendmmsg(&s, to, b"sendmmsg")?;
            Ok(format!("sent={sent}"))
        })(),
        Op::Socket {
            domain,
            ty,
            protocol,
            to,
        } => (|| {
            let fd = sys::socket(*domain, *ty, *protocol)?;
            if let Some(to) = to {
                sys::sendto(&fd, b"\x08\x00\xf7\xff\x00\x00\x00\x00", to)?;
            }
            Ok("created".to_owned())
        })(),
        Op::Frame { ifname, frame } => sys::send_frame(ifname, frame).map(|n| format!("sent={n}")),
        Op::NewNetns => (|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            // Bring lo up without `ip` inside: not needed for the attacks, which never
            // target loopback; the namespace simply has no other link.
            Ok("unshared".to_owned())
        })(),
        Op::Bpf => sys::bpf_attempts(),
        Op::WaitStdin => (|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            Ok("resumed".to_owned())
        })(),
        Op::AttachFence {
            cgroup,
            pin_dir,
            config,
            tc,
        } => (|| -> std::io::Result<String> {
            let mut fence = egress_ebpf::Fence::attach(cgroup, config.config(), pin_dir)
                .map_err(std::io::Error::other)?;
            if let Some((netns, ifindex)) = tc {
                let ifindex = *ifindex;
                fence = crate::netbed::in_netns(netns, move || {
                    fence.attach_tc(ifindex).map(|()| fence)
                })
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            }
            // Leave it in place: this process is the loader that gets killed.
            std::mem::forget(fence);
            Ok("attached".to_owned())
        })(),
        Op::LookupOrigDst { fd, peer } => (|| {
            let fd = sys::inherited_fd(*fd)?;
            let orig =
                egress_ebpf::OriginalDestinations::from_fd(fd).map_err(std::io::Error::other)?;
            let found = orig.lookup(*peer).map_err(std::io::Error::other)?;
            Ok(format!("uid={} orig={found:?}", nix::unistd::geteuid()))
        })(),
    })
}

/// Builds an Ethernet + IPv4 + UDP frame (checksums: IPv4 header computed, UDP zero,
/// which RFC 768 allows for IPv4).
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let payload = b"raw-frame";
    let udp_len = 8 + payload.len() as u16;
    let total = 20 + udp_len;
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    set_ipv4_checksum(&mut ip);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Turns a frame from [`udp_frame`] into a non-first IPv4 fragment (offset 1480 bytes, no
/// more fragments): a packet without transport header, that port filters cannot judge.
pub fn non_first_fragment(mut frame: Vec<u8>) -> Vec<u8> {
    let ip = &mut frame[14..34];
    ip[6..8].copy_from_slice(&185u16.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    set_ipv4_checksum(ip);
    frame
}

/// Fills the header checksum of a 20-byte IPv4 header whose checksum field is zero
/// (RFC 791: one's complement of the one's complement sum of the 16-bit words).
fn set_ipv4_checksum(ip: &mut [u8]) {
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !((folded & 0xffff) + (folded >> 16)) as u16;
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// The few raw system calls the harness needs that have no safe wrapper.
mod sys {
    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// socket(2) with arbitrary numbers.
    pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
        // SAFETY: socket(2) takes plain integers and returns a new fd or -1.
        let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) }.into())?;
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// A packet socket receiving every frame of its netns, with a 50 ms receive timeout.
    pub fn packet_socket() -> io::Result<OwnedFd> {
        let fd = socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: tv is a valid timeval that outlives the call; the length matches it.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        check(ret.into())?;
        Ok(fd)
    }

    fn sockaddr(to: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        let addr = nix::sys::socket::SockaddrStorage::from(*to);
        let len = nix::sys::socket::SockaddrLike::len(&addr);
        // SAFETY: SockaddrStorage is a union over the sockaddr types, at most the size of
        // sockaddr_storage; copying its bytes into a zeroed sockaddr_storage is sound.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for `len` bytes and do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                nix::sys::socket::SockaddrLike::as_ptr(&addr).cast::<u8>(),
                (&raw mut storage).cast::<u8>(),
                len as usize,
            );
        }
        (storage, len)
    }

    /// sendto(2) on any socket.
    pub fn sendto(fd: &OwnedFd, data: &[u8], to: &SocketAddr) -> io::Result<usize> {
        let (addr, len) = sockaddr(to);
        // SAFETY: data and addr are valid for the lengths given and outlive the call.
        let n = check(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                0,
                (&raw const addr).cast(),
                len,
            )
        } as libc::c_long)?;
        Ok(n as usize)
    }

    /// sendmmsg(2): one datagram per destination in a single call.
    pub fn sendmmsg(s: &UdpSocket, to: &[SocketAddr], data: &[u8]) -> io::Result<usize> {
        let mut addrs: Vec<_> = to.iter().map(sockaddr).collect();
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let mut msgs: Vec<libc::mmsghdr> = addrs
            .iter_mut()
            .map(|(addr, len)| {
                // SAFETY: mmsghdr is plain data; zero is a valid value for every field.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = *len;
                m.msg_hdr.msg_iov = &raw mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: every mmsghdr points at an address and the iovec, all alive for the call.
        let n = check(
            unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) }
                .into(),
        )?;
        Ok(n as usize)
    }

    /// Sends `frame` out of `ifname` through an AF_PACKET socket.
    pub fn send_frame(ifname: &str, frame: &[u8]) -> io::Result<usize> {
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(io::Error::from)?;
        // SAFETY: sockaddr_ll is plain data; zero is valid before the fields are set.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_ifindex = ifindex as i32;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and ll are valid for the lengths given and outlive the call.
        let n = check(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        } as libc::c_long)?;
        Ok(n as usize)
    }

    /// What bpf() gives the caller: BPF_MAP_CREATE of a small array, then
    /// BPF_PROG_GET_NEXT_ID (the first step of finding the fence to detach it).
    pub fn bpf_attempts() -> io::Result<String> {
        // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
        let mut attr = [0u32; 32];
        attr[0] = 2; // BPF_MAP_TYPE_ARRAY
        attr[1] = 4;
        attr[2] = 4;
        attr[3] = 1;
        // SAFETY: attr is a zero-padded buffer larger than the bpf_attr fields read for
        // this command, and its size is passed.
        let create = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), 128) };
        let create_err = io::Error::last_os_error();
        let mut attr = [0u32; 32];
        // SAFETY: as above; BPF_PROG_GET_NEXT_ID (11) reads start_id and writes next_id.
        let next = unsafe { libc::syscall(libc::SYS_bpf, 11, attr.as_mut_ptr(), 128) };
        let next_err = io::Error::last_os_error();
        if create >= 0 || next >= 0 {
            return Ok(format!(
                "bpf allowed: map_create={create} get_next_id={next}"
            ));
        }
        Err(if create_err.raw_os_error() == next_err.raw_os_error() {
            create_err
        } else {
            next_err
        })
    }

    /// What the probe becomes before exec.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Drop {
        /// Keeps host root.
        Stay,
        /// Host uid NOBODY, no capabilities.
        Nobody,
        /// Host uid NOBODY, root in a new user namespace.
        UserNsRoot,
    }

    /// Takes ownership of an fd inherited from the parent.
    pub fn inherited_fd(fd: i32) -> io::Result<OwnedFd> {
        // F_GETFD fails with EBADF unless fd is open.
        // SAFETY: fcntl(F_GETFD) only reads the fd's flags.
        check(unsafe { libc::fcntl(fd, libc::F_GETFD) }.into())?;
        // SAFETY: fd is open (checked above) and was inherited for this process alone to own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Arranges for the child, between fork and exec, to join the runner's netns, move
    /// into the cgroup, and optionally become root of a new user namespace as uid
    /// [`super::NOBODY`]. Only async-signal-safe calls run there (setns, write, setgroups,
    /// setresgid, setresuid, prctl, unshare, open), on data prepared before the fork.
    pub fn place_before_exec(cmd: &mut Command, netns: File, procs: Option<File>, drop_to: Drop) {
        let uid_map = CString::new(format!("0 {} 1", super::NOBODY)).unwrap_or_default();
        let gid_map = uid_map.clone();
        let paths = [
            c"/proc/self/setgroups",
            c"/proc/self/uid_map",
            c"/proc/self/gid_map",
        ];
        let write_file = move |path: &std::ffi::CStr, data: &[u8]| -> io::Result<()> {
            // SAFETY: path is a valid C string; data is valid for its length.
            let fd = check(
                unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) }.into(),
            )?;
            // SAFETY: fd was just opened and data is valid for its length.
            let res = check(
                unsafe { libc::write(fd as i32, data.as_ptr().cast(), data.len()) } as libc::c_long,
            );
            // SAFETY: fd is ours to close.
            unsafe { libc::close(fd as i32) };
            res.map(|_| ())
        };
        let hook = move || -> io::Result<()> {
            // SAFETY: netns is an open nsfs fd; setns(2) has no memory effects.
            check(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }.into())?;
            if let Some(procs) = &procs {
                // Writing "0" moves the writing process (cgroups(7)).
                // SAFETY: the buffer is a static byte string of the length given.
                let ret = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
                check(ret as libc::c_long)?;
            }
            if drop_to != Drop::Stay {
                let nobody = super::NOBODY;
                // SAFETY: plain integer arguments; dropping groups, gid then uid.
                check(unsafe { libc::setgroups(0, std::ptr::null()) }.into())?;
                // SAFETY: as above.
                check(unsafe { libc::setresgid(nobody, nobody, nobody) }.into())?;
                // SAFETY: as above.
                check(unsafe { libc::setresuid(nobody, nobody, nobody) }.into())?;
                // Changing uid made the process non-dumpable, which makes /proc/self/*
                // root-owned (proc(5)); the maps below must be writable by us.
                // SAFETY: plain integer arguments.
                check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) }.into())?;
                if drop_to == Drop::Nobody {
                    return Ok(());
                }
                // SAFETY: plain flag argument; the child is single-threaded after fork.
                check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into())?;
                write_file(paths[0], b"deny")?;
                write_file(paths[1], uid_map.as_bytes())?;
                write_file(paths[2], gid_map.as_bytes())?;
            }
            Ok(())
        };
        // SAFETY: the hook only makes async-signal-safe system calls on values created
        // before fork (see above), as pre_exec requires.
        unsafe { cmd.pre_exec(hook) };
    }
}

/// A [`World`] with a fence attached to its cgroup (and optionally to its host-side veth),
/// and a runtime to read the fence's denials. The fence is detached on drop.
pub struct Fenced {
    /// The fence (None once detached).
    pub fence: Option<egress_ebpf::Fence>,
    /// Denials of this fence.
    pub denials: DenialStream,
    /// Runtime the denial stream is registered with.
    pub rt: tokio::runtime::Runtime,
    /// Everything else.
    pub world: World,
}

impl Fenced {
    /// Builds a world and fences it.
    pub fn new(runner_id: u32, other_tcp: OtherTcp, with_tc: bool) -> Result<Self> {
        let world = World::build()?;
        let mut fence = egress_ebpf::Fence::attach(
            &world.cgroup.path,
            world.fence_config(runner_id, other_tcp),
            &world.pin_dir(),
        )?;
        if with_tc {
            let ifindex = world.host_ifindex;
            // The tc program is attached from the host namespace, where the veth end is.
            fence = world
                .host
                .run(move || fence.attach_tc(ifindex).map(|()| fence))??;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let denials = {
            let _guard = rt.enter();
            fence.denials()?
        };
        Ok(Self {
            fence: Some(fence),
            denials,
            rt,
            world,
        })
    }

    /// The attached fence.
    pub fn fence(&self) -> &egress_ebpf::Fence {
        self.fence.as_ref().expect("fence attached")
    }

    /// Waits (up to 3 s) until `n` denials arrived, and returns all that did.
    pub fn denials(&mut self, n: usize) -> Vec<Denial> {
        self.denials_until(|d| d.len() >= n)
    }

    /// Waits (up to 3 s) until `enough` holds for the denials received, and returns them
    /// all. For tests whose fence also sees the kernel's own traffic (IPv6 neighbour
    /// discovery reaching the tc program), where a count would stop too early.
    pub fn denials_until(&mut self, enough: impl Fn(&[Denial]) -> bool) -> Vec<Denial> {
        let stream = &mut self.denials;
        self.rt
            .block_on(collect_denials(stream, Duration::from_secs(3), enough))
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        if let Some(fence) = self.fence.take() {
            if let Err(e) = fence.detach() {
                eprintln!("cleanup: detach: {e}");
            }
        }
    }
}

/// Asserts that a denial from `hook` names the process `pid` (when given) and the
/// destination, and returns it.
pub fn find_denial(
    denials: &[Denial],
    hook: egress_ebpf::Hook,
    ip: Option<IpAddr>,
    port: Option<u16>,
    pid: Option<u32>,
) -> &Denial {
    denials
        .iter()
        .find(|d| {
            d.hook == hook && d.ip == ip && (port.is_none() || d.port == port) && d.pid == pid
        })
        .unwrap_or_else(|| {
            panic!("no {hook:?} denial for {ip:?}:{port:?} pid {pid:?} in {denials:#?}")
        })
}
