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
//!   during it; next to MiB/s, the CPU time of the whole path per GiB (see [`TunnelRun`](tunnel::TunnelRun));
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
//! How the runner topology's sockets get into their namespaces, and why no namespace, link
//! or helper outlives the bench however it ends: see the [`netns`] module.

mod allowlist;
mod client;
mod lookup;
mod netns;
mod report;
mod servers;
mod squid;
mod topology;
mod tunnel;
mod wrk;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use clap::{Parser, ValueEnum};
use egress_proxy::audit::JsonLinesSink;
use egress_proxy::server::Proxy;

use crate::allowlist::bench_policy;
use crate::netns::{helper_main, reexec_in_netns, HELPER_ROLE, IN_NETNS};
use crate::report::{print_table, print_tunnels};
use crate::servers::start_servers;
use crate::squid::Squid;
use crate::topology::{RunnerWorld, BULK_NAME, RUNNER_HOST_SIDE, RUNNER_LINK_MTU, RUNNER_SIDE};
use crate::tunnel::measure_tunnels;
use crate::wrk::{wrk, WrkResult};

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

    let tunnels = measure_tunnels(&args, runner.as_mut(), bulk, egress, egress_runner, &squid)?;
    if args.tunnel_only {
        print_tunnels(&tunnels);
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
    print_table(&results, &tunnels)
}

fn median(values: impl Iterator<Item = anyhow::Result<f64>>) -> anyhow::Result<f64> {
    let mut v: Vec<f64> = values.collect::<anyhow::Result<_>>()?;
    if v.is_empty() {
        bail!("no samples");
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}
