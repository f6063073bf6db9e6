//! `proxy-bench`: egress-proxy against Squid and against a direct connection, in one run
//! on this machine (DESIGN.md section 10). Run on demand, never from `cargo test`:
//!
//! ```text
//! cargo run --release -p egress-proxy --bin proxy-bench -- [--runs 3] [--duration 5]
//!     [--tunnel-only [--only direct|egress-proxy|squid]] [--topology runner|loopback|both]
//! ```
//!
//! What it measures, each repeated `--runs` times and reported as the median:
//! - HTTP requests per second through the forward proxy with wrk, keep-alive and with a
//!   new connection per request (`Connection: close`), 32 connections (loopback world);
//! - latency added by the proxy: wrk p50 and p99 with one connection, minus direct
//!   (loopback world);
//! - CONNECT tunnel bulk throughput, in two topologies (below), each reported against the
//!   direct connection *of the same topology*: one tunnel, `--bulk-mib` MiB downstream,
//!   the same client code, buffer sizes and socket options for direct and proxied runs;
//!   per topology one discarded warm-up transfer per target, then the runs interleaved
//!   (direct, egress-proxy, Squid, direct, ...) so that load from other work on the
//!   machine falls on all three alike rather than on whichever target happened to run
//!   during it; next to MiB/s, the CPU time of the whole path per GiB (see [`TunnelRun`]);
//! - policy lookup time at 10, 1,000 and 100,000 rules.
//!
//! The world: the program re-executes itself in a private network namespace
//! (`unshare --net`; needs root), so no packet can leave the machine and the host's port
//! space is untouched. That namespace plays the *host* of DESIGN.md section 8: it holds
//! egress-proxy (in this process: its own runtime, `--proxy-threads` workers, default 1
//! to match Squid's single worker), Squid 5 (the Debian package, started from a generated
//! config in a temporary directory, never the system config or service), a DNS server
//! and, on its loopback interface, an origin HTTP server (hyper) and a bulk server. The
//! DNS server answers `*.bench.test` with 127.0.0.1 and `bulk.internet.test` with
//! 198.51.100.10. Both proxies get an equivalent allow-list of 1,000 names plus
//! `bulk.internet.test` (egress-proxy also needs a `cidr` rule for 127.0.0.1, since it
//! refuses loopback otherwise), both resolve the names themselves (egress-proxy through
//! the DNS server, Squid from its `hosts_file`), and both write an access/audit log line
//! per request.
//!
//! The two tunnel topologies:
//!
//! - **runner** (`--topology runner`), the one that models what a job sees. Two more
//!   network namespaces: a *runner* namespace joined to the host by a veth pair
//!   (host side 10.250.0.1/30, runner side 10.250.0.2/30, MTU 65535 on both ends, as
//!   runner-agent configures a runner's link: `RUNNER_LINK_MTU` in
//!   runner-agent/src/network.rs), and an *internet* namespace joined to the host by a
//!   veth pair with the default MTU of 1500, a real network's (host side
//!   198.51.100.1/24, internet side 198.51.100.10/24). The host forwards
//!   (`net.ipv4.ip_forward=1`, in the bench's private namespace only); the runner routes
//!   198.51.100.0/24 via 10.250.0.1 and the internet 10.250.0.0/30 via 198.51.100.1;
//!   there is no default route anywhere. The bulk server listens at 198.51.100.10 in the
//!   internet namespace, and the client's socket lives in the runner namespace. *Direct*
//!   is what a job without the proxy would do: connect to 198.51.100.10, routed through
//!   the host. *Proxied* is what a job does: connect to the proxy at 10.250.0.1 (both
//!   proxies listen there too) and send `CONNECT bulk.internet.test:PORT`, which the
//!   proxy resolves and dials from the host. So both paths cross the same two links; a
//!   proxy replaces the host's forwarding by two TCP connections of its own.
//! - **loopback** (`--topology loopback`): client, bulk server and proxies all on the
//!   loopback interface of the host namespace, `CONNECT svc500.bench.test:PORT`. Kept as
//!   a second, separately labelled result (and comparable with earlier figures), but it
//!   is not what a job sees: its direct path has no link and no forwarding at all, and
//!   every TCP hop, including the proxy's second one, runs over loopback's 64 KiB MTU
//!   with the receiver's work done in the sender's context, so it weighs a relay's extra
//!   hop against a direct path that is cheaper than any a job has.
//!
//! How the runner topology's sockets get into their namespaces: a socket stays in the
//! network namespace it was created in, and this crate has neither setns(2) (nix's `sched`
//! feature is not enabled for it) nor `unsafe`. So the client end and the bulk server of
//! the runner topology are helper processes of this same program ([`NsHelper`]), each
//! started with `unshare --net`, so each *holds* its namespace: the runner namespace
//! lives exactly as long as the client helper, the internet namespace as long as the
//! bulk helper. Nothing is named in `/run/netns`, and a helper exits when its standard
//! input closes, so no namespace, link or helper is left on the host however the bench
//! ends (an error, a panic, Ctrl-C or SIGKILL): the namespaces, and with them the veth
//! pairs, go when the helpers do. They run the same code as the loopback topology's client and bulk server,
//! and their CPU time is added to the path's (see [`TunnelRun`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
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
    /// Tunnel topologies to measure: `runner` (client in a runner namespace behind a veth,
    /// server behind a routed link: what a job sees), `loopback` (everything on one
    /// loopback interface), or both.
    #[arg(long, value_enum, default_value_t = TopologyChoice::Both)]
    topology: TopologyChoice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TopologyChoice {
    Runner,
    Loopback,
    Both,
}

impl TopologyChoice {
    fn runner(self) -> bool {
        self != TopologyChoice::Loopback
    }

    fn loopback(self) -> bool {
        self != TopologyChoice::Runner
    }
}

/// The name the loopback topology's tunnels (and the wrk runs) ask the proxies for.
const TARGET: &str = "svc500.bench.test";

/// Runner topology addresses (see the module docs).
const RUNNER_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const RUNNER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const INTERNET_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INTERNET_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The bulk server's name in the runner topology.
const BULK_NAME: &str = "bulk.internet.test";
/// MTU of both ends of a runner's veth pair, as runner-agent configures it
/// (`RUNNER_LINK_MTU` in runner-agent/src/network.rs: the most a veth takes).
const RUNNER_LINK_MTU: u32 = 65535;

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
/// Set in a helper process of the runner topology: its role ([`NsHelper`]).
const HELPER_ROLE: &str = "PROXY_BENCH_HELPER";

/// Re-runs this program in a new network namespace holding only a loopback interface:
/// the new-connection runs open tens of thousands of loopback connections, and a private
/// namespace gives them their own port space and TIME_WAIT table (tcp_tw_reuse is set
/// there, not on the host), and guarantees no packet can leave (its only other links,
/// those of the runner topology, lead to namespaces that the bench itself makes).
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
    if let Ok(role) = std::env::var(HELPER_ROLE) {
        return helper_main(&role);
    }
    let args = Args::parse();
    if std::env::var_os(IN_NETNS).is_none() {
        let status = reexec_in_netns()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let dir = Scratch::new("world")?;
    // First, so that the proxies can listen on the runner link's host side. Dropped
    // (helpers killed, namespaces gone) on every way out of this function.
    let mut runner = if args.topology.runner() {
        Some(RunnerWorld::build(args.bulk_mib)?)
    } else {
        None
    };
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
    if let Some(world) = &runner {
        println!(
            "runner topology: client in a runner namespace ({RUNNER_SIDE}, veth MTU {RUNNER_LINK_MTU}), proxies at {RUNNER_HOST_SIDE}, bulk {BULK_NAME} = {} in an internet namespace (veth MTU 1500), routed by the host",
            world.bulk
        );
    }

    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.proxy_threads)
        .thread_name("egress-proxy")
        .enable_all()
        .build()?;
    let audit = std::fs::File::create(dir.path().join("audit.jsonl"))?;
    let mut builder = Proxy::builder().http_listen((Ipv4Addr::LOCALHOST, 0).into());
    if runner.is_some() {
        // A second listener: the loopback runs keep theirs on 127.0.0.1.
        builder = builder.http_listen((RUNNER_HOST_SIDE, 0).into());
    }
    let proxy = proxy_rt.block_on(
        builder
            .upstream_dns(vec![dns])
            .audit(Arc::new(JsonLinesSink::new(audit)))
            .start(),
    )?;
    proxy.set_default_policy(Some(Arc::new(bench_policy(
        args.rules,
        &[origin.port(), bulk.port()],
        runner.as_ref().map(|w| w.bulk.port()),
    )?)));
    let egress = proxy.http_addrs()[0];
    let egress_runner = proxy.http_addrs().get(1).copied();
    let mut squid = Squid::start(dir.path(), args.rules, runner.as_ref().map(|w| w.bulk))?;

    let base_pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(squid.pid())
        .collect();
    let mut tunnels: Vec<TopologyResult> = Vec::new();
    if let Some(world) = runner.as_mut() {
        let targets = choose(
            &args,
            vec![
                ("direct", None),
                (
                    "egress-proxy",
                    Some(egress_runner.context("egress-proxy has no runner listener")?),
                ),
                (
                    "squid",
                    Some(squid.runner_addr.context("squid has no runner listener")?),
                ),
            ],
        )?;
        let mut pids = base_pids.clone();
        pids.extend([world.client.pid, world.server.pid]);
        let dest = Destination {
            addr: world.bulk,
            name: BULK_NAME,
        };
        let runs = tunnel_medians(&mut world.client, &targets, &dest, &pids, &args)?;
        tunnels.push(TopologyResult {
            label: "runner",
            about: "client in a runner namespace behind a veth (MTU 65535), routed by the host to a server behind a 1500-MTU link: what a job sees",
            names: targets.iter().map(|(n, _)| *n).collect(),
            runs,
        });
    }
    if args.topology.loopback() {
        let targets = choose(
            &args,
            vec![
                ("direct", None),
                ("egress-proxy", Some(egress)),
                ("squid", Some(squid.addr)),
            ],
        )?;
        let dest = Destination {
            addr: bulk,
            name: TARGET,
        };
        let runs = tunnel_medians(&mut LocalClient(None), &targets, &dest, &base_pids, &args)?;
        tunnels.push(TopologyResult {
            label: "loopback",
            about: "client, bulk server and proxies on one loopback interface (MTU 65536), no link, no forwarding",
            names: targets.iter().map(|(n, _)| *n).collect(),
            runs,
        });
    }
    if args.tunnel_only {
        for topology in &tunnels {
            println!("{} topology ({}):", topology.label, topology.about);
            let direct = topology.get("direct");
            for (name, tunnel) in topology.names.iter().zip(&topology.runs) {
                println!(
                    "  {name}: {}",
                    tunnel.describe(direct.filter(|_| *name != "direct"))
                );
            }
        }
        return Ok(());
    }

    let proxies = [
        ("direct", None),
        ("egress-proxy", Some(egress)),
        ("squid", Some(squid.addr)),
    ];
    let mut results = Vec::new();
    for (name, via) in proxies {
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
        results.push((name, keep, close, p50, p99));
    }
    squid.stop();
    drop(proxy);
    drop(runner);

    let direct = results[0];
    let mut table = Vec::new();
    let mut header =
        "| | req/s keep-alive | req/s new conn | p50 µs (added) | p99 µs (added) |".to_owned();
    let mut rule = "|---|---|---|---|---|".to_owned();
    for topology in &tunnels {
        header.push_str(&format!(
            " {0} tunnel MiB/s | {0} tunnel CPU ms/GiB |",
            topology.label
        ));
        rule.push_str("---|---|");
    }
    table.push(header);
    table.push(rule);
    for (name, keep, close, p50, p99) in &results {
        let mut row = format!(
            "| {name} | {keep:.0} | {close:.0} | {p50:.0} (+{:.0}) | {p99:.0} (+{:.0}) |",
            p50 - direct.3,
            p99 - direct.4
        );
        for topology in &tunnels {
            let run = topology.get(name).context("a tunnel result is missing")?;
            let (tput, cpu) = match topology.get("direct").filter(|_| *name != "direct") {
                None => (
                    format!("{:.0}", run.mib_per_s),
                    format!("{:.0}", run.cpu_ms_per_gib),
                ),
                Some(d) => (
                    format!(
                        "{:.0} ({:.0}% of direct)",
                        run.mib_per_s,
                        100.0 * run.mib_per_s / d.mib_per_s
                    ),
                    format!(
                        "{:.0} ({:.2}x direct)",
                        run.cpu_ms_per_gib,
                        run.cpu_ms_per_gib / d.cpu_ms_per_gib
                    ),
                ),
            };
            row.push_str(&format!(" {tput} | {cpu} |"));
        }
        table.push(row);
    }
    let (ours, squid_r) = (results[1], results[2]);
    table.push(String::new());
    let mut summary = format!(
        "egress-proxy / squid: keep-alive {:.2}x, new connections {:.2}x",
        ours.1 / squid_r.1,
        ours.2 / squid_r.2,
    );
    for topology in &tunnels {
        if let (Some(e), Some(d)) = (topology.get("egress-proxy"), topology.get("direct")) {
            summary.push_str(&format!(
                "; tunnel {:.0}% of direct ({})",
                100.0 * e.mib_per_s / d.mib_per_s,
                topology.label
            ));
        }
    }
    table.push(summary);
    table.push(
        "(requests and latency: loopback world; tunnel topologies: ".to_owned()
            + &tunnels
                .iter()
                .map(|t| format!("{}: {}", t.label, t.about))
                .collect::<Vec<_>>()
                .join("; ")
            + ")",
    );
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

/// The tunnel targets `--only` leaves (all of them without it), in the order given.
fn choose(
    args: &Args,
    all: Vec<(&'static str, Option<SocketAddr>)>,
) -> anyhow::Result<Vec<(&'static str, Option<SocketAddr>)>> {
    let Some(only) = &args.only else {
        return Ok(all);
    };
    let one: Vec<_> = all.into_iter().filter(|(n, _)| n == only).collect();
    if one.is_empty() {
        bail!("--only {only}: expected direct, egress-proxy or squid");
    }
    Ok(one)
}

/// The medians of one topology's tunnel runs.
struct TopologyResult {
    label: &'static str,
    about: &'static str,
    names: Vec<&'static str>,
    runs: Vec<TunnelRun>,
}

impl TopologyResult {
    fn get(&self, name: &str) -> Option<TunnelRun> {
        self.names
            .iter()
            .position(|n| *n == name)
            .map(|i| self.runs[i])
    }
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

/// `rules` names of the loopback world on `ports`, 127.0.0.1 on `ports`, and
/// [`BULK_NAME`] on the runner topology's bulk port if there is one.
fn bench_policy(rules: usize, ports: &[u16], runner_bulk: Option<u16>) -> anyhow::Result<Policy> {
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
    if let Some(port) = runner_bulk {
        allow.push(RuleConfig {
            target: RuleTarget::Host(BULK_NAME.to_owned()),
            ports: vec![port],
            methods: None,
            paths: None,
        });
    }
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
    tokio::spawn(serve_bulk(bulk, bulk_mib));
    let dns = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let dns_addr = dns.local_addr()?;
    tokio::spawn(egress_proxy::testing::serve_dns_table(
        dns,
        vec![
            (".bench.test.".to_owned(), Ipv4Addr::LOCALHOST),
            (format!("{BULK_NAME}."), INTERNET_SERVER),
        ],
    ));
    Ok((origin_addr, bulk_addr, dns_addr))
}

/// The bulk server of both topologies: for each connection, once the client has sent
/// "GO\n", streams `bulk_mib` MiB.
async fn serve_bulk(listener: tokio::net::TcpListener, bulk_mib: u64) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
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
}

/// A helper process of the runner topology: this program again, started with
/// `unshare --net` so that it runs in (and holds) a network namespace of its own, driven
/// by one-line requests on its standard input, each answered by one line (`err ...` on
/// failure). Dropping it kills it, which removes its namespace and the veth end in it
/// (and so the whole veth pair); it also exits by itself when its standard input closes,
/// i.e. when the bench ends in any way, so nothing outlives the bench.
struct NsHelper {
    role: &'static str,
    /// Its process id, which names its namespace (`/proc/PID/ns/net`).
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NsHelper {
    fn spawn(role: &'static str) -> anyhow::Result<NsHelper> {
        let mut child = Command::new("unshare")
            .args(["--net", "--"])
            .arg(std::env::current_exe()?)
            .env(HELPER_ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {role} helper with unshare --net"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{role} helper: no pipes");
        };
        let mut helper = NsHelper {
            role,
            pid: child.id(),
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        // It says so once it runs in its namespace (unshare(1) execs it, so it keeps the
        // process id; taking the one it reports costs nothing).
        let ready = helper.reply()?;
        helper.pid = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("{role} helper said `{ready}`"))?;
        Ok(helper)
    }

    fn reply(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the {} helper exited", self.role);
        }
        let line = line.trim_end().to_owned();
        if let Some(error) = line.strip_prefix("err ") {
            bail!("{} helper: {error}", self.role);
        }
        Ok(line)
    }

    fn request(&mut self, request: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        self.reply()
    }

    /// Runs `ip ARGS` in the helper's network namespace.
    fn ip(&self, args: &str) -> anyhow::Result<()> {
        let netns = format!("--net=/proc/{}/ns/net", self.pid);
        run(Command::new("nsenter")
            .args([netns.as_str(), "--", "ip"])
            .args(args.split_whitespace()))
        .with_context(|| format!("in the {} helper's namespace", self.role))
    }
}

impl Drop for NsHelper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion, failing with its standard error if it fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `ip ARGS` in this (the host) namespace.
fn host_ip(args: &str) -> anyhow::Result<()> {
    run(Command::new("ip").args(args.split_whitespace()))
}

/// The runner topology (module docs): a runner namespace held by the client helper, an
/// internet namespace held by the bulk server helper, and their links to this one, the
/// host. Dropping it kills the helpers, which removes both namespaces and both veth
/// pairs; what it set in this namespace (addresses, `ip_forward`) goes with the bench's
/// private namespace.
struct RunnerWorld {
    /// The tunnel client, in the runner namespace.
    client: NsHelper,
    /// The bulk server, in the internet namespace.
    server: NsHelper,
    /// Where the bulk server listens (198.51.100.10:PORT).
    bulk: SocketAddr,
}

impl RunnerWorld {
    fn build(bulk_mib: u64) -> anyhow::Result<RunnerWorld> {
        let client = NsHelper::spawn("runner-client")?;
        let server = NsHelper::spawn("internet-bulk")?;
        // Runner link: MTU 65535 on both ends, as runner-agent gives a runner's veth
        // pair (RUNNER_LINK_MTU in runner-agent/src/network.rs).
        host_ip(&format!(
            "link add pb-runner mtu {RUNNER_LINK_MTU} type veth peer name eth0 mtu {RUNNER_LINK_MTU} netns {}",
            client.pid
        ))?;
        // Internet link: the default MTU of 1500, a real network's.
        host_ip(&format!(
            "link add pb-internet type veth peer name eth0 netns {}",
            server.pid
        ))?;
        host_ip(&format!("addr add {RUNNER_HOST_SIDE}/30 dev pb-runner"))?;
        host_ip("link set pb-runner up")?;
        host_ip(&format!("addr add {INTERNET_HOST_SIDE}/24 dev pb-internet"))?;
        host_ip("link set pb-internet up")?;
        // The host routes between its links. This is the bench's private namespace,
        // not the machine's.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
            .context("setting net.ipv4.ip_forward in the bench's namespace")?;
        // Each side reaches only the other's subnet, through the host: no default routes.
        client.ip("link set lo up")?;
        client.ip(&format!("addr add {RUNNER_SIDE}/30 dev eth0"))?;
        client.ip("link set eth0 up")?;
        client.ip(&format!("route add 198.51.100.0/24 via {RUNNER_HOST_SIDE}"))?;
        server.ip("link set lo up")?;
        server.ip(&format!("addr add {INTERNET_SERVER}/24 dev eth0"))?;
        server.ip("link set eth0 up")?;
        server.ip(&format!("route add 10.250.0.0/30 via {INTERNET_HOST_SIDE}"))?;
        let mut world = RunnerWorld {
            client,
            server,
            bulk: (INTERNET_SERVER, 0).into(),
        };
        let port = world
            .server
            .request(&format!("serve {INTERNET_SERVER} {bulk_mib}"))?;
        let port: u16 = port
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("bulk helper said `{port}`"))?;
        world.bulk.set_port(port);
        Ok(world)
    }
}

/// Entry point of a helper process ([`NsHelper`]): says `ready PID`, then serves requests
/// from standard input until it closes.
fn helper_main(role: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", std::process::id())?;
    out.flush()?;
    let mut lines = std::io::stdin().lock().lines();
    match role {
        // `open - ADDR NAME` (direct) or `open PROXY ADDR NAME`, then `go MIB`: the same
        // client code as the loopback topology's, in the runner namespace.
        "runner-client" => {
            let mut stream = None;
            for line in lines {
                let line = line?;
                let reply = runner_client_request(&line, &mut stream)
                    .unwrap_or_else(|e| format!("err {e:#}").replace('\n', " "));
                writeln!(out, "{reply}")?;
                out.flush()?;
            }
        }
        // `serve ADDR MIB`: the same bulk server as the loopback topology's, in the
        // internet namespace, until standard input closes.
        "internet-bulk" => {
            let line = lines.next().context("no serve request")??;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("bench-bulk")
                .enable_all()
                .build()?;
            let reply = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["serve", addr, mib] => {
                    let (addr, mib): (Ipv4Addr, u64) = (addr.parse()?, mib.parse()?);
                    match runtime.block_on(tokio::net::TcpListener::bind((addr, 0))) {
                        Ok(listener) => {
                            let port = listener.local_addr()?.port();
                            runtime.spawn(serve_bulk(listener, mib));
                            format!("port {port}")
                        }
                        Err(e) => format!("err binding {addr}: {e}"),
                    }
                }
                _ => format!("err unknown request `{line}`"),
            };
            writeln!(out, "{reply}")?;
            out.flush()?;
            for line in lines {
                line?;
            }
        }
        _ => bail!("unknown helper role `{role}`"),
    }
    Ok(())
}

fn runner_client_request(line: &str, stream: &mut Option<TcpStream>) -> anyhow::Result<String> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["open", via, addr, name] => {
            let via = match *via {
                "-" => None,
                proxy => Some(proxy.parse()?),
            };
            *stream = Some(open_bulk(via, addr.parse()?, name)?);
            Ok("ok".to_owned())
        }
        ["go", mib] => {
            let s = stream.take().context("no connection open")?;
            let (bytes, secs) = read_bulk(s, mib.parse()?)?;
            Ok(format!("done {bytes} {secs}"))
        }
        _ => bail!("unknown request `{line}`"),
    }
}

struct Squid {
    child: Option<Child>,
    /// Its listener on loopback.
    addr: SocketAddr,
    /// Its listener on the runner link's host side, if the runner topology is measured.
    runner_addr: Option<SocketAddr>,
}

impl Squid {
    /// `runner_bulk`: the runner topology's bulk server, if it is measured; then Squid
    /// also listens on the runner link and knows [`BULK_NAME`].
    fn start(dir: &Path, rules: usize, runner_bulk: Option<SocketAddr>) -> anyhow::Result<Squid> {
        let free_port = |ip: Ipv4Addr| -> anyhow::Result<u16> {
            let probe = std::net::TcpListener::bind((ip, 0))?;
            Ok(probe.local_addr()?.port())
        };
        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?).into();
        let runner_addr: Option<SocketAddr> = match runner_bulk {
            Some(_) => Some((RUNNER_HOST_SIDE, free_port(RUNNER_HOST_SIDE)?).into()),
            None => None,
        };
        let d = dir.display();
        let mut domains = names(rules);
        let mut hosts: String = names(rules)
            .iter()
            .map(|n| format!("127.0.0.1 {n}\n"))
            .collect();
        let mut ports = format!("http_port {addr}\n");
        if let (Some(bulk), Some(listen)) = (runner_bulk, runner_addr) {
            domains.push(BULK_NAME.to_owned());
            hosts.push_str(&format!("{} {BULK_NAME}\n", bulk.ip()));
            ports.push_str(&format!("http_port {listen}\n"));
        }
        std::fs::write(dir.join("domains.txt"), domains.join("\n") + "\n")?;
        std::fs::write(dir.join("hosts"), hosts)?;
        // Our own config only: no system config, no cache, no helpers; DNS limited to
        // loopback so nothing is ever asked outside (names come from hosts_file).
        let conf = format!(
            "{ports}pid_filename {d}/squid.pid\ncache_log {d}/cache.log\naccess_log stdio:{d}/access.log\ncache deny all\ncache_mem 8 MB\nhosts_file {d}/hosts\ndns_nameservers 127.0.0.1\nacl allowed dstdomain \"{d}/domains.txt\"\nhttp_access allow allowed\nhttp_access deny all\ncoredump_dir {d}\ncache_effective_user proxy\nshutdown_lifetime 0 seconds\nworkers 1\n"
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
            addr,
            runner_addr,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        for listen in std::iter::once(addr).chain(runner_addr) {
            while TcpStream::connect(listen).is_err() {
                if Instant::now() > deadline {
                    bail!("squid did not start on {listen}; see {d}/cache.log");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
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
    /// interrupted task) of every process on the path, per GiB moved: this process
    /// (egress-proxy, and in the loopback topology the client and the bulk server), Squid,
    /// and in the runner topology the client and bulk server helpers. Unlike MiB/s it
    /// barely moves with other load on the machine, and it says what a relay costs: on
    /// loopback the sender also pays for the receiver's TCP input, so a relay adds one
    /// whole TCP hop to the two copies of a direct connection. (Work the kernel defers to
    /// ksoftirqd is charged to no process here and so not counted.)
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

/// The bulk server as a client reaches it: directly at `addr`, or through a proxy as
/// `CONNECT name:port`.
struct Destination {
    addr: SocketAddr,
    name: &'static str,
}

/// The client end of the tunnel runs, wherever its socket lives.
trait BulkClient {
    /// Connects to the bulk server directly (`via` None) or opens a tunnel to it through
    /// the proxy at `via`.
    fn open(&mut self, via: Option<SocketAddr>, dest: &Destination) -> anyhow::Result<()>;
    /// Sends "GO\n" on the open connection and reads up to `mib` MiB: bytes read and the
    /// seconds from the request to the last byte.
    fn transfer(&mut self, mib: u64) -> anyhow::Result<(u64, f64)>;
}

/// A client socket of this process (the loopback topology).
struct LocalClient(Option<TcpStream>);

impl BulkClient for LocalClient {
    fn open(&mut self, via: Option<SocketAddr>, dest: &Destination) -> anyhow::Result<()> {
        self.0 = Some(open_bulk(via, dest.addr, dest.name)?);
        Ok(())
    }

    fn transfer(&mut self, mib: u64) -> anyhow::Result<(u64, f64)> {
        read_bulk(self.0.take().context("no connection open")?, mib)
    }
}

/// The runner topology's client helper: the same code in the runner namespace.
impl BulkClient for NsHelper {
    fn open(&mut self, via: Option<SocketAddr>, dest: &Destination) -> anyhow::Result<()> {
        let via = via.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let reply = self.request(&format!("open {via} {} {}", dest.addr, dest.name))?;
        if reply != "ok" {
            bail!("runner client said `{reply}`");
        }
        Ok(())
    }

    fn transfer(&mut self, mib: u64) -> anyhow::Result<(u64, f64)> {
        let reply = self.request(&format!("go {mib}"))?;
        let parsed = reply.strip_prefix("done ").and_then(|r| {
            let (bytes, secs) = r.split_once(' ')?;
            Some((bytes.parse().ok()?, secs.parse().ok()?))
        });
        parsed.with_context(|| format!("runner client said `{reply}`"))
    }
}

/// Median tunnel throughput and CPU cost of each target, in the order given: one
/// discarded warm-up transfer each, then `--runs` rounds that visit every target in turn.
fn tunnel_medians(
    client: &mut dyn BulkClient,
    targets: &[(&str, Option<SocketAddr>)],
    dest: &Destination,
    cpu_pids: &[u32],
    args: &Args,
) -> anyhow::Result<Vec<TunnelRun>> {
    for (name, via) in targets {
        tunnel_throughput(client, *via, dest, args.bulk_mib.min(256), cpu_pids)
            .with_context(|| format!("warm-up tunnel via {name} to {}", dest.name))?;
    }
    let mut samples: Vec<Vec<TunnelRun>> = vec![Vec::new(); targets.len()];
    for _ in 0..args.runs {
        for ((name, via), samples) in targets.iter().zip(&mut samples) {
            let run = tunnel_throughput(client, *via, dest, args.bulk_mib, cpu_pids)
                .with_context(|| format!("tunnel throughput via {name} to {}", dest.name))?;
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

/// CPU seconds of the processes on a tunnel's path together.
fn path_cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// Throughput and CPU cost of one tunnel carrying the bulk server's stream.
fn tunnel_throughput(
    client: &mut dyn BulkClient,
    via: Option<SocketAddr>,
    dest: &Destination,
    mib: u64,
    cpu_pids: &[u32],
) -> anyhow::Result<TunnelRun> {
    client.open(via, dest)?;
    let cpu_before = path_cpu_seconds(cpu_pids)?;
    let (total, secs) = client.transfer(mib)?;
    let cpu = path_cpu_seconds(cpu_pids)? - cpu_before;
    if total < mib << 20 {
        bail!("tunnel carried {total} bytes of {}", mib << 20);
    }
    let gib = total as f64 / (1u64 << 30) as f64;
    Ok(TunnelRun {
        mib_per_s: gib * 1024.0 / secs,
        cpu_ms_per_gib: 1000.0 * cpu / gib,
    })
}

/// Connects to the bulk server at `addr` directly (`via` None) or through the proxy at
/// `via` with `CONNECT name:PORT`.
fn open_bulk(via: Option<SocketAddr>, addr: SocketAddr, name: &str) -> anyhow::Result<TcpStream> {
    let Some(proxy) = via else {
        return TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"));
    };
    let mut s = TcpStream::connect(proxy).with_context(|| format!("connecting to {proxy}"))?;
    write!(
        s,
        "CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n\r\n",
        port = addr.port()
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
    Ok(s)
}

/// Asks for the bulk stream and reads up to `mib` MiB of it: bytes read, and seconds from
/// the request to the last byte.
fn read_bulk(mut stream: TcpStream, mib: u64) -> anyhow::Result<(u64, f64)> {
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
    Ok((total, start.elapsed().as_secs_f64()))
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
