//! `proxy-bench`: egress-proxy against Squid and against a direct connection, in one run
//! on this machine (DESIGN.md section 10). Run on demand, never from `cargo test`:
//!
//! ```text
//! cargo run --release -p egress-proxy --bin proxy-bench -- [--runs 3] [--duration 5]
//! ```
//!
//! What it measures, each repeated `--runs` times and reported as the median:
//! - HTTP requests per second through the forward proxy with wrk, keep-alive and with a
//!   new connection per request (`Connection: close`), 32 connections;
//! - latency added by the proxy: wrk p50 and p99 with one connection, minus direct;
//! - CONNECT tunnel bulk throughput: one tunnel, `--bulk-mib` MiB downstream, the same
//!   client code, buffer sizes and socket options for direct and proxied runs; one
//!   discarded warm-up transfer per target, then the runs interleaved (direct, egress-proxy,
//!   Squid, direct, ...) so that load from other work on the machine falls on all three
//!   alike rather than on whichever target happened to run during it; next to MiB/s, the
//!   CPU time of the whole path per GiB (see [`TunnelRun`]);
//! - policy lookup time at 10, 1,000 and 100,000 rules.
//!
//! The world: everything on the loopback interface of a private network namespace that
//! the program re-executes itself in (`unshare --net`; needs root), so no packet can
//! leave the machine and the host's port space is untouched: an
//! origin HTTP server (hyper), a bulk server, a DNS server answering `*.bench.test` with
//! 127.0.0.1, egress-proxy in this process (its own runtime, `--proxy-threads` workers,
//! default 1 to match Squid's single worker) and Squid 5 (the Debian package) started
//! from a generated config in a temporary directory, never the system config or service.
//! Both proxies get an equivalent allow-list of 1,000 names (egress-proxy also needs a
//! `cidr` rule for 127.0.0.1, since it refuses loopback otherwise) and both write an
//! access/audit log line per request.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use egress_proxy::audit::JsonLinesSink;
use egress_proxy::config::{EgressConfig, RuleConfig, RuleTarget};
use egress_proxy::policy::{classify_host, Policy};
use egress_proxy::server::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Benchmark egress-proxy against Squid and a direct connection.
#[derive(Parser, Debug)]
struct Args {
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Concurrent connections for the requests-per-second runs.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// MiB sent through each tunnel throughput run.
    #[arg(long, default_value_t = 2048)]
    bulk_mib: u64,
    /// Worker threads of egress-proxy's runtime.
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Rules in the allow-lists of both proxies.
    #[arg(long, default_value_t = 1000)]
    rules: usize,
    /// Measure only tunnel throughput (skips the wrk runs and lookups).
    #[arg(long)]
    tunnel_only: bool,
    /// With `--tunnel-only`: measure only this target (`direct`, `egress-proxy` or
    /// `squid`), e.g. to profile it alone with `perf record`.
    #[arg(long, requires = "tunnel_only")]
    only: Option<String>,
}

const TARGET: &str = "svc500.bench.test";

/// A scratch directory removed on drop (also when a measurement fails).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("proxy-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Set in the re-executed child that already runs in its own network namespace.
const IN_NETNS: &str = "PROXY_BENCH_IN_NETNS";

/// Re-runs this program in a new network namespace holding only a loopback interface:
/// the new-connection runs open tens of thousands of loopback connections, and a private
/// namespace gives them their own port space and TIME_WAIT table (tcp_tw_reuse is set
/// there, not on the host), and guarantees no packet can leave (there is no other link).
fn reexec_in_netns() -> anyhow::Result<std::process::ExitStatus> {
    let exe = std::env::current_exe()?;
    let mut script = String::from(
        "ip link set lo up && echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse && echo '1024 65000' > /proc/sys/net/ipv4/ip_local_port_range && exec \"$0\" \"$@\"",
    );
    script.push('\n');
    Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &script])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(IN_NETNS, "1")
        .status()
        .context("running unshare --net (needs root)")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os(IN_NETNS).is_none() {
        let status = reexec_in_netns()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let dir = Scratch::new("world")?;
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-servers")
        .enable_all()
        .build()?;
    let (origin, bulk, dns) = servers.block_on(start_servers(args.bulk_mib))?;
    println!(
        "origin {origin}, bulk {bulk}, dns {dns}, runs {}, {} s each",
        args.runs, args.duration
    );

    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.proxy_threads)
        .thread_name("egress-proxy")
        .enable_all()
        .build()?;
    let audit = std::fs::File::create(dir.path().join("audit.jsonl"))?;
    let proxy = proxy_rt.block_on(
        Proxy::builder()
            .http_listen((Ipv4Addr::LOCALHOST, 0).into())
            .upstream_dns(vec![dns])
            .audit(Arc::new(JsonLinesSink::new(audit)))
            .start(),
    )?;
    proxy.set_default_policy(Some(Arc::new(bench_policy(
        args.rules,
        &[origin.port(), bulk.port()],
    )?)));
    let egress = proxy.http_addrs()[0];
    let mut squid = Squid::start(dir.path(), args.rules)?;
    let squid_addr = squid.addr;

    let mut table = Vec::new();
    let proxies = [
        ("direct", None),
        ("egress-proxy", Some(egress)),
        ("squid", Some(squid_addr)),
    ];
    let mut results = Vec::new();
    if args.tunnel_only {
        let chosen: Vec<_> = match &args.only {
            None => proxies.to_vec(),
            Some(only) => {
                let one: Vec<_> = proxies.iter().filter(|(n, _)| n == only).copied().collect();
                if one.is_empty() {
                    bail!("--only {only}: expected direct, egress-proxy or squid");
                }
                one
            }
        };
        let tunnels = tunnel_medians(&chosen, bulk, squid.pid(), &args)?;
        let direct = (chosen[0].0 == "direct").then_some(tunnels[0]);
        for ((name, _), tunnel) in chosen.iter().zip(&tunnels) {
            println!(
                "{name}: {}",
                tunnel.describe(direct.filter(|_| *name != "direct"))
            );
        }
        return Ok(());
    }
    let tunnels = tunnel_medians(&proxies, bulk, squid.pid(), &args)?;
    for ((name, via), tunnel) in proxies.into_iter().zip(tunnels) {
        let keep = median(
            (0..args.runs).map(|_| wrk(&args, via, origin, false, args.connections).map(|r| r.rps)),
        )?;
        let close = median(
            (0..args.runs).map(|_| wrk(&args, via, origin, true, args.connections).map(|r| r.rps)),
        )?;
        let lat: Vec<WrkResult> = (0..args.runs)
            .map(|_| wrk(&args, via, origin, false, 1))
            .collect::<anyhow::Result<_>>()?;
        let p50 = median(lat.iter().map(|r| Ok(r.p50_us)))?;
        let p99 = median(lat.iter().map(|r| Ok(r.p99_us)))?;
        results.push((name, keep, close, p50, p99, tunnel));
    }
    squid.stop();
    drop(proxy);

    let direct = results[0];
    let squid_r = results[2];
    table.push(
        "| | req/s keep-alive | req/s new conn | p50 µs (added) | p99 µs (added) | tunnel MiB/s | tunnel CPU ms/GiB |"
            .to_owned(),
    );
    table.push("|---|---|---|---|---|---|---|".to_owned());
    for (name, keep, close, p50, p99, tunnel) in &results {
        let (tput, cpu) = if *name == "direct" {
            (
                format!("{:.0}", tunnel.mib_per_s),
                format!("{:.0}", tunnel.cpu_ms_per_gib),
            )
        } else {
            (
                format!(
                    "{:.0} ({:.0}% of direct)",
                    tunnel.mib_per_s,
                    100.0 * tunnel.mib_per_s / direct.5.mib_per_s
                ),
                format!(
                    "{:.0} ({:.2}x direct)",
                    tunnel.cpu_ms_per_gib,
                    tunnel.cpu_ms_per_gib / direct.5.cpu_ms_per_gib
                ),
            )
        };
        table.push(format!(
            "| {name} | {keep:.0} | {close:.0} | {p50:.0} (+{:.0}) | {p99:.0} (+{:.0}) | {tput} | {cpu} |",
            p50 - direct.3,
            p99 - direct.4
        ));
    }
    let ours = results[1];
    table.push(String::new());
    table.push(format!(
        "egress-proxy / squid: keep-alive {:.2}x, new connections {:.2}x; tunnel {:.0}% of direct",
        ours.1 / squid_r.1,
        ours.2 / squid_r.2,
        100.0 * ours.5.mib_per_s / direct.5.mib_per_s
    ));
    table.push(String::new());
    table.push(
        "| rules | ns per lookup (normalised host) | ns per lookup (incl. normalisation) |"
            .to_owned(),
    );
    table.push("|---|---|---|".to_owned());
    for rules in [10, 1_000, 100_000] {
        let (check, full) = lookup_time(rules)?;
        table.push(format!("| {rules} | {check:.0} | {full:.0} |"));
    }
    println!("\n{}", table.join("\n"));
    Ok(())
}

fn median(values: impl Iterator<Item = anyhow::Result<f64>>) -> anyhow::Result<f64> {
    let mut v: Vec<f64> = values.collect::<anyhow::Result<_>>()?;
    if v.is_empty() {
        bail!("no samples");
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

fn names(rules: usize) -> Vec<String> {
    (0..rules).map(|i| format!("svc{i}.bench.test")).collect()
}

fn bench_policy(rules: usize, ports: &[u16]) -> anyhow::Result<Policy> {
    let mut allow: Vec<RuleConfig> = names(rules)
        .into_iter()
        .map(|n| RuleConfig {
            target: RuleTarget::Host(n),
            ports: ports.to_vec(),
            methods: None,
            paths: None,
        })
        .collect();
    allow.push(RuleConfig {
        target: RuleTarget::Cidr("127.0.0.1/32".parse()?),
        ports: ports.to_vec(),
        methods: None,
        paths: None,
    });
    Ok(Policy::new(&EgressConfig {
        allow,
        ..EgressConfig::default()
    })?)
}

async fn start_servers(bulk_mib: u64) -> anyhow::Result<(SocketAddr, SocketAddr, SocketAddr)> {
    let origin = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let origin_addr = origin.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = origin.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(egress_proxy::testing::serve_ok(stream));
        }
    });
    let bulk = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let bulk_addr = bulk.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = bulk.accept().await {
            tokio::spawn(async move {
                // Client speaks first ("GO\n"), then the server streams bulk_mib MiB.
                let mut go = [0u8; 3];
                if stream.read_exact(&mut go).await.is_err() {
                    return;
                }
                let chunk = vec![0x5au8; 1 << 20];
                for _ in 0..bulk_mib {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dns = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let dns_addr = dns.local_addr()?;
    tokio::spawn(egress_proxy::testing::serve_fixed_dns(
        dns,
        ".bench.test.",
        Ipv4Addr::LOCALHOST,
    ));
    Ok((origin_addr, bulk_addr, dns_addr))
}

struct Squid {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Squid {
    fn start(dir: &Path, rules: usize) -> anyhow::Result<Squid> {
        let port = {
            let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            probe.local_addr()?.port()
        };
        let d = dir.display();
        std::fs::write(dir.join("domains.txt"), names(rules).join("\n") + "\n")?;
        let hosts: String = names(rules)
            .iter()
            .map(|n| format!("127.0.0.1 {n}\n"))
            .collect();
        std::fs::write(dir.join("hosts"), hosts)?;
        // Our own config only: no system config, no cache, no helpers; DNS limited to
        // loopback so nothing is ever asked outside (names come from hosts_file).
        let conf = format!(
            "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache_log {d}/cache.log\naccess_log stdio:{d}/access.log\ncache deny all\ncache_mem 8 MB\nhosts_file {d}/hosts\ndns_nameservers 127.0.0.1\nacl allowed dstdomain \"{d}/domains.txt\"\nhttp_access allow allowed\nhttp_access deny all\ncoredump_dir {d}\ncache_effective_user proxy\nshutdown_lifetime 0 seconds\nworkers 1\n"
        );
        std::fs::write(dir.join("squid.conf"), conf)?;
        // squid drops to the `proxy` user and must still write its logs and pid file.
        let chown = |p: &Path| std::os::unix::fs::chown(p, Some(13), Some(13));
        chown(dir)?;
        let child = Command::new("squid")
            .args(["-N", "-f"])
            .arg(dir.join("squid.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting squid")?;
        let squid = Squid {
            child: Some(child),
            addr: (Ipv4Addr::LOCALHOST, port).into(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(squid.addr).is_err() {
            if Instant::now() > deadline {
                bail!("squid did not start; see {d}/cache.log");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(squid)
    }

    /// Process id of the running Squid (its CPU time counts in the tunnel measurements).
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}

struct WrkResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn parse_us(text: &str) -> Option<f64> {
    let text = text.trim();
    let (num, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

fn wrk(
    args: &Args,
    via: Option<SocketAddr>,
    origin: SocketAddr,
    close: bool,
    conns: usize,
) -> anyhow::Result<WrkResult> {
    let dir = Scratch::new("wrk")?;
    let script = dir.path().join("req.lua");
    let mut lua = String::new();
    let url = match via {
        Some(proxy) => {
            lua.push_str(&format!(
                "wrk.path = \"http://{TARGET}:{port}/\"\nwrk.headers[\"Host\"] = \"{TARGET}:{port}\"\n",
                port = origin.port()
            ));
            format!("http://{proxy}/")
        }
        None => format!("http://{origin}/"),
    };
    if close {
        lua.push_str("wrk.headers[\"Connection\"] = \"close\"\n");
    }
    std::fs::write(&script, lua)?;
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{}s", args.duration),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(&url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    if text.contains("Non-2xx") {
        bail!("wrk saw non-2xx answers via {via:?}: {text}");
    }
    let p50 = field("50%").and_then(|v| parse_us(&v)).context("wrk p50")?;
    let p99 = field("99%").and_then(|v| parse_us(&v)).context("wrk p99")?;
    Ok(WrkResult {
        rps,
        p50_us: p50,
        p99_us: p99,
    })
}

/// One tunnel transfer: how fast, and how much CPU the whole path used per GiB.
#[derive(Clone, Copy, Debug)]
struct TunnelRun {
    mib_per_s: f64,
    /// CPU time (user + system, including the softirq work the kernel charges to the
    /// interrupted task) of this process (client, bulk server and egress-proxy) plus
    /// Squid's, per GiB moved. Unlike MiB/s it barely moves with other load on the
    /// machine, and it says what a relay costs: on loopback the sender also pays for the
    /// receiver's TCP input, so a relay adds one whole TCP hop to the two copies of a
    /// direct connection.
    cpu_ms_per_gib: f64,
}

impl TunnelRun {
    fn describe(&self, direct: Option<TunnelRun>) -> String {
        match direct {
            Some(d) => format!(
                "tunnel {:.0} MiB/s ({:.0}% of direct), {:.0} CPU ms/GiB ({:.2}x direct)",
                self.mib_per_s,
                100.0 * self.mib_per_s / d.mib_per_s,
                self.cpu_ms_per_gib,
                self.cpu_ms_per_gib / d.cpu_ms_per_gib
            ),
            None => format!(
                "tunnel {:.0} MiB/s, {:.0} CPU ms/GiB",
                self.mib_per_s, self.cpu_ms_per_gib
            ),
        }
    }
}

/// Median tunnel throughput and CPU cost of each target, in the order given: one
/// discarded warm-up transfer each, then `--runs` rounds that visit every target in turn.
fn tunnel_medians(
    targets: &[(&str, Option<SocketAddr>)],
    bulk: SocketAddr,
    squid: Option<u32>,
    args: &Args,
) -> anyhow::Result<Vec<TunnelRun>> {
    for (_, via) in targets {
        tunnel_throughput(*via, bulk, args.bulk_mib.min(256), squid)?;
    }
    let mut samples: Vec<Vec<TunnelRun>> = vec![Vec::new(); targets.len()];
    for _ in 0..args.runs {
        for ((name, via), samples) in targets.iter().zip(&mut samples) {
            let run = tunnel_throughput(*via, bulk, args.bulk_mib, squid)
                .with_context(|| format!("tunnel throughput via {name}"))?;
            samples.push(run);
        }
    }
    samples
        .into_iter()
        .map(|s| {
            Ok(TunnelRun {
                mib_per_s: median(s.iter().map(|r| Ok(r.mib_per_s)))?,
                cpu_ms_per_gib: median(s.iter().map(|r| Ok(r.cpu_ms_per_gib)))?,
            })
        })
        .collect()
}

/// User + system CPU seconds a process has used so far, from proc(5) `/proc/PID/stat`
/// fields 14 and 15 (utime, stime), in clock ticks of USER_HZ (100 on Linux).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after_name = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: no `)` after the command name"))?
        .1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        let value = fields
            .get(i)
            .with_context(|| format!("{path}: field {} missing", i + 3))?;
        Ok(value
            .parse::<u64>()
            .with_context(|| format!("{path}: field {} is `{value}`", i + 3))? as f64
            / 100.0)
    };
    // Fields after the name start at field 3 (state): utime is field 14, stime 15.
    Ok(tick(11)? + tick(12)?)
}

/// CPU seconds of this process and of Squid together.
fn path_cpu_seconds(squid: Option<u32>) -> anyhow::Result<f64> {
    let mut total = cpu_seconds(std::process::id())?;
    if let Some(pid) = squid {
        total += cpu_seconds(pid)?;
    }
    Ok(total)
}

/// Throughput and CPU cost of one tunnel carrying the bulk server's stream.
fn tunnel_throughput(
    via: Option<SocketAddr>,
    bulk: SocketAddr,
    mib: u64,
    squid: Option<u32>,
) -> anyhow::Result<TunnelRun> {
    let mut stream = match via {
        None => TcpStream::connect(bulk)?,
        Some(proxy) => {
            let mut s = TcpStream::connect(proxy)?;
            write!(
                s,
                "CONNECT {TARGET}:{port} HTTP/1.1\r\nHost: {TARGET}:{port}\r\n\r\n",
                port = bulk.port()
            )?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte)? == 0 {
                    bail!("proxy closed during CONNECT");
                }
                head.push(byte[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
            }
            s
        }
    };
    let cpu_before = path_cpu_seconds(squid)?;
    let start = Instant::now();
    stream.write_all(b"GO\n")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total >= mib << 20 {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = path_cpu_seconds(squid)? - cpu_before;
    if total < mib << 20 {
        bail!("tunnel carried {total} bytes of {}", mib << 20);
    }
    let gib = total as f64 / (1u64 << 30) as f64;
    Ok(TunnelRun {
        mib_per_s: gib * 1024.0 / secs,
        cpu_ms_per_gib: 1000.0 * cpu / gib,
    })
}

/// Median nanoseconds per policy check over hits and misses, without and with name
/// normalisation.
fn lookup_time(rules: usize) -> anyhow::Result<(f64, f64)> {
    let mut allow = Vec::with_capacity(rules);
    for i in 0..rules {
        // Half exact names, half wildcards, as a large real list would mix them.
        let host = if i % 2 == 0 {
            format!("h{i}.example{}.org", i % 97)
        } else {
            format!("*.w{i}.example.org")
        };
        allow.push(RuleConfig {
            target: RuleTarget::Host(host),
            ports: vec![443],
            methods: None,
            paths: None,
        });
    }
    let policy = Policy::new(&EgressConfig {
        allow,
        ..EgressConfig::default()
    })?;
    let queries: Vec<String> = (0..64)
        .map(|i| match i % 4 {
            0 => format!(
                "h{}.example{}.org",
                (i * 2) % rules.max(1),
                ((i * 2) % rules.max(1)) % 97
            ),
            1 => format!("a.b.w{}.example.org", (i * 2 + 1) % rules.max(2)),
            2 => format!("miss{i}.example.net"),
            _ => format!("deep.miss.{i}.w.example.org"),
        })
        .collect();
    let hosts: Vec<_> = queries
        .iter()
        .map(|q| classify_host(q))
        .collect::<Result<_, _>>()?;
    let mut check = Vec::new();
    let mut full = Vec::new();
    let rounds = 200_000 / queries.len();
    for _ in 0..5 {
        let start = Instant::now();
        let mut allowed = 0usize;
        for _ in 0..rounds {
            for host in &hosts {
                allowed +=
                    usize::from(std::hint::black_box(&policy).check(host, 443, None).allowed);
            }
        }
        check.push(Ok(
            start.elapsed().as_nanos() as f64 / (rounds * hosts.len()) as f64
        ));
        std::hint::black_box(allowed);
        let start = Instant::now();
        for _ in 0..rounds {
            for q in &queries {
                if let Ok(host) = classify_host(std::hint::black_box(q)) {
                    allowed += usize::from(policy.check(&host, 443, None).allowed);
                }
            }
        }
        full.push(Ok(
            start.elapsed().as_nanos() as f64 / (rounds * queries.len()) as f64
        ));
        std::hint::black_box(allowed);
    }
    Ok((median(check.into_iter())?, median(full.into_iter())?))
}
