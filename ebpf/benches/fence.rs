//! Cost of the fence: connect() latency and bulk TCP throughput from a runner to the
//! proxy's listener, without and with the programs attached, side by side in one run
//! (DESIGN.md section 10). Targets: under 2 µs added per connect, at least 95% of the
//! throughput.
//!
//! Run as root, on demand: `cargo bench -p egress-ebpf --bench fence`
//! (options after `--`: `--connects N` per run, `--seconds S` per throughput run,
//! `--rounds R`). Everything stays on this machine: a runner namespace joined by a veth to
//! a host namespace where a sink listens at the proxy's address; the runner has no other
//! link. Rounds alternate unfenced and fenced runs so that drift hits both alike.
//!
//! The client is this same binary re-executed with `--client`: it joins the runner's
//! netns and cgroup first, so every socket it opens is subject to the fence. The bed is
//! built with `ip` (a benchmark, not the product) and removed on drop.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use egress_ebpf::{Fence, FenceConfig, OtherTcp};

const PROXY: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const RUNNER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// Stands for any address the job names; the fence redirects it to the sink.
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const EXPLICIT: u16 = 3128;
const TLS: u16 = 3129;

struct Options {
    connects: usize,
    seconds: f64,
    rounds: usize,
}

fn options() -> Result<Options> {
    let mut o = Options {
        connects: 2000,
        seconds: 2.0,
        rounds: 5,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = || args.get(i + 1).context("missing option value");
        match args[i].as_str() {
            "--connects" => o.connects = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            _ => {
                i += 1; // `--bench` and other harness flags from cargo
                continue;
            }
        }
        i += 2;
    }
    Ok(o)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        return client(&args[2..]);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the fence benchmark needs root (namespaces, cgroups, eBPF)");
    }
    let opts = options()?;
    let bed = Bed::build()?;
    // Per-program run time and count (kernel.bpf_stats_enabled, sysctl(8)): the fence's
    // own CPU cost, which the end-to-end figures show only through noise.
    let _stats_on = StatsEnabled::new()?;
    let mut stats = BTreeMap::new();
    let mut lat: [Vec<u64>; 3] = Default::default();
    let mut tput: [Vec<f64>; 2] = Default::default();
    for round in 0..opts.rounds {
        // Alternate the order so that neither side always runs first.
        for fenced in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if fenced {
                let fence = bed.fence(round as u32)?;
                lat[1].extend(
                    bed.client_connects(SocketAddr::from((ELSEWHERE, 443)), opts.connects)?,
                );
                lat[2].extend(
                    bed.client_connects(SocketAddr::from((PROXY, EXPLICIT)), opts.connects)?,
                );
                tput[1].push(bed.client_stream(SocketAddr::from((ELSEWHERE, 443)), opts.seconds)?);
                collect_stats(&fence, &mut stats)?;
                fence.detach()?;
            } else {
                lat[0].extend(bed.client_connects(SocketAddr::from((PROXY, TLS)), opts.connects)?);
                tput[0].push(bed.client_stream(SocketAddr::from((PROXY, TLS)), opts.seconds)?);
            }
        }
    }
    report(&opts, &mut lat, &mut tput);
    report_stats(&stats);
    Ok(())
}

fn median_u64(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn p90(v: &[u64]) -> u64 {
    v[v.len() * 9 / 10]
}

fn report(o: &Options, lat: &mut [Vec<u64>; 3], tput: &mut [Vec<f64>; 2]) {
    let base = median_u64(&mut lat[0]);
    println!(
        "connect() latency to the proxy listener, median (p90) of {} connects ({} rounds x {}):",
        lat[0].len(),
        o.rounds,
        o.connects
    );
    let names = [
        "without fence",
        "with fence, redirected (203.0.113.7:443 -> TLS listener)",
        "with fence, direct to the explicit proxy port",
    ];
    for (i, name) in names.iter().enumerate() {
        let m = median_u64(&mut lat[i]);
        let added = m as f64 / 1000.0 - base as f64 / 1000.0;
        let extra = if i == 0 {
            String::new()
        } else {
            format!("  added {added:+.2} us")
        };
        println!(
            "  {name:<58} {:>8.2} us ({:.2}){extra}",
            m as f64 / 1000.0,
            p90(&lat[i]) as f64 / 1000.0
        );
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Each round ran both sides back to back: the median of the per-round ratios is less
    // sensitive to load from other processes than the ratio of the medians. (Pair them
    // before `med` sorts the vectors.)
    let mut paired: Vec<f64> = tput[0].iter().zip(&tput[1]).map(|(a, b)| b / a).collect();
    let paired_median = med(&mut paired);
    let (lo, hi) = (paired[0], paired[paired.len() - 1]);
    let (off, on) = (med(&mut tput[0]), med(&mut tput[1]));
    println!(
        "bulk TCP throughput, one connection, median of {} runs of {} s:",
        o.rounds, o.seconds
    );
    println!("  without fence {:>10.2} Gbit/s", off * 8.0 / 1e9);
    println!(
        "  with fence    {:>10.2} Gbit/s  ratio of medians {:.3}, median of per-round ratios {:.3} (range {:.2}..{:.2})",
        on * 8.0 / 1e9,
        on / off,
        paired_median,
        lo,
        hi
    );
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns on kernel.bpf_stats_enabled for the benchmark's duration, restoring it after.
struct StatsEnabled(String);

impl StatsEnabled {
    fn new() -> Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1")?;
        Ok(Self(before))
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.0.trim());
    }
}

/// Adds the run time (ns) and run count of each of the fence's programs to `stats`.
fn collect_stats(fence: &Fence, stats: &mut BTreeMap<String, (u128, u64)>) -> Result<()> {
    let ids = fence.object_ids()?;
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        if ids.programs.contains(&info.id()) {
            let name = info.name_as_str().unwrap_or("?").to_owned();
            let entry = stats.entry(name).or_insert((0, 0));
            entry.0 += info.run_time().as_nanos();
            entry.1 += info.run_count();
        }
    }
    Ok(())
}

fn report_stats(stats: &BTreeMap<String, (u128, u64)>) {
    println!("programs' own cost while fenced (kernel.bpf_stats_enabled), all rounds:");
    for (name, (ns, runs)) in stats {
        let avg = if *runs == 0 {
            0.0
        } else {
            *ns as f64 / *runs as f64
        };
        println!("  {name:<16} {runs:>10} runs  {avg:>8.0} ns/run");
    }
}

/// Runs `ip` and fails with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a thread inside the named netns (setns(2) affects only that thread).
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns = std::fs::File::open(Path::new("/run/netns").join(name))?;
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// The runner and host namespaces, the cgroup, and the sink at the proxy's address; all
/// removed on drop (namespaces take their veth with them).
struct Bed {
    runner: String,
    host: String,
    cgroup: PathBuf,
    host_ifindex: u32,
    pin_root: PathBuf,
}

impl Bed {
    fn build() -> Result<Self> {
        let id = std::process::id();
        let mut bed = Self {
            runner: format!("fence-bench-r{id}"),
            host: format!("fence-bench-h{id}"),
            cgroup: PathBuf::new(),
            host_ifindex: 0,
            pin_root: Path::new(egress_ebpf::bpffs::DEFAULT_BPFFS)
                .join(format!("fence-bench-{id}")),
        };
        ip(&["netns", "add", &bed.runner])?;
        ip(&["netns", "add", &bed.host])?;
        let (r, h) = (bed.runner.as_str(), bed.host.as_str());
        for cmd in [
            format!("link add fbr{id} netns {r} type veth peer name fbh{id} netns {h}"),
            format!("-n {r} addr add 10.250.0.2/30 dev fbr{id}"),
            format!("-n {r} link set fbr{id} up"),
            format!("-n {r} link set lo up"),
            format!("-n {r} route add default via 10.250.0.1"),
            format!("-n {h} addr add 10.250.0.1/30 dev fbh{id}"),
            format!("-n {h} link set fbh{id} up"),
        ] {
            ip(&cmd.split(' ').collect::<Vec<_>>())?;
        }
        let name = format!("fbh{id}");
        bed.host_ifindex = in_netns(h, move || nix::net::if_::if_nametoindex(name.as_str()))??;
        let listeners = in_netns(h, || -> std::io::Result<_> {
            Ok([
                TcpListener::bind((PROXY, EXPLICIT))?,
                TcpListener::bind((PROXY, TLS))?,
            ])
        })??;
        for l in listeners {
            std::thread::spawn(move || sink(l));
        }
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.subtree_control").exists())
            .context("no cgroup v2 hierarchy")?;
        bed.cgroup = root.join(format!("fence-bench-{id}"));
        std::fs::create_dir(&bed.cgroup)?;
        Ok(bed)
    }

    fn fence(&self, round: u32) -> Result<Fence> {
        let cfg = FenceConfig {
            proxy_addr_v4: PROXY,
            runner_addr_v4: RUNNER,
            explicit_proxy_port: EXPLICIT,
            transparent_tls_port: TLS,
            transparent_http_port: 3130,
            dns_port: 5353,
            runner_id: round,
            other_tcp: OtherTcp::HttpListener,
            allow_loopback: true,
        };
        let pins = self.pin_root.join(round.to_string());
        let mut fence = Fence::attach(&self.cgroup, cfg, &pins)?;
        let ifindex = self.host_ifindex;
        fence = in_netns(&self.host, move || fence.attach_tc(ifindex).map(|()| fence))??;
        Ok(fence)
    }

    fn run_client(&self, args: &[String]) -> Result<String> {
        let out = Command::new(std::env::current_exe()?)
            .arg("--client")
            .arg(Path::new("/run/netns").join(&self.runner))
            .arg(self.cgroup.join("cgroup.procs"))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("client failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    fn client_connects(&self, to: SocketAddr, n: usize) -> Result<Vec<u64>> {
        let out = self.run_client(&["connect".into(), to.to_string(), n.to_string()])?;
        out.split_whitespace().map(|s| Ok(s.parse()?)).collect()
    }

    fn client_stream(&self, to: SocketAddr, seconds: f64) -> Result<f64> {
        let out = self.run_client(&["stream".into(), to.to_string(), seconds.to_string()])?;
        Ok(out.trim().parse()?)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.pin_root);
        let _ = std::fs::remove_dir(&self.cgroup);
        for ns in [&self.runner, &self.host] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Accepts and drains every connection until the peer closes.
fn sink(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = vec![0u8; 1 << 17];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
}

/// Client side: join the runner's netns and cgroup, then measure.
fn client(args: &[String]) -> Result<()> {
    let [netns, procs, mode, to, amount] = args else {
        bail!("usage: --client NETNS CGROUP_PROCS connect|stream ADDR N|SECONDS");
    };
    let ns = std::fs::File::open(netns)?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    // Writing "0" moves the writing process into the cgroup (cgroups(7)).
    std::fs::write(procs, "0")?;
    let to: SocketAddr = to.parse()?;
    let mut out = String::new();
    match mode.as_str() {
        "connect" => {
            let n: usize = amount.parse()?;
            for _ in 0..n {
                let start = Instant::now();
                let stream = TcpStream::connect(to)?;
                let ns = start.elapsed().as_nanos();
                // RST on close: no TIME_WAIT pile-up across thousands of connects.
                nix::sys::socket::setsockopt(
                    &stream,
                    nix::sys::socket::sockopt::Linger,
                    &nix::libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                )?;
                out.push_str(&format!("{ns} "));
            }
        }
        "stream" => {
            let seconds: f64 = amount.parse()?;
            let mut stream = TcpStream::connect(to)?;
            let buf = vec![0x5au8; 1 << 17];
            let (start, limit) = (Instant::now(), Duration::from_secs_f64(seconds));
            let mut bytes = 0u64;
            while start.elapsed() < limit {
                stream.write_all(&buf)?;
                bytes += buf.len() as u64;
            }
            out = format!("{}", bytes as f64 / start.elapsed().as_secs_f64());
        }
        other => bail!("unknown client mode {other}"),
    }
    println!("{out}");
    Ok(())
}
