//! CONNECT tunnel bulk throughput: the tunnel runs of both topologies, each target's
//! medians, and the CPU time of the whole path per GiB, read from `/proc/PID/stat`.

use std::net::SocketAddr;

use anyhow::{bail, Context};

use crate::client::{BulkClient, Destination, LocalClient};
use crate::squid::Squid;
use crate::topology::{RunnerWorld, BULK_NAME};
use crate::{median, Args, TARGET};

/// One tunnel transfer: how fast, and how much CPU the whole path used per GiB.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TunnelRun {
    pub(crate) mib_per_s: f64,
    /// CPU time (user + system, including the softirq work the kernel charges to the
    /// interrupted task) of every process on the path, per GiB moved: this process
    /// (egress-proxy, and in the loopback topology the client and the bulk server), Squid,
    /// and in the runner topology the client and bulk server helpers. Unlike MiB/s it
    /// barely moves with other load on the machine, and it says what a relay costs: on
    /// loopback the sender also pays for the receiver's TCP input, so a relay adds one
    /// whole TCP hop to the two copies of a direct connection. (Work the kernel defers to
    /// ksoftirqd is charged to no process here and so not counted.)
    pub(crate) cpu_ms_per_gib: f64,
}

impl TunnelRun {
    pub(crate) fn describe(&self, direct: Option<TunnelRun>) -> String {
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

/// The medians of one topology's tunnel runs.
pub(crate) struct TopologyResult {
    pub(crate) label: &'static str,
    pub(crate) about: &'static str,
    pub(crate) names: Vec<&'static str>,
    pub(crate) runs: Vec<TunnelRun>,
}

impl TopologyResult {
    pub(crate) fn get(&self, name: &str) -> Option<TunnelRun> {
        self.names
            .iter()
            .position(|n| *n == name)
            .map(|i| self.runs[i])
    }
}

/// The tunnel runs of the topologies `--topology` asks for, runner first: each target's
/// medians against the direct connection of the same topology.
pub(crate) fn measure_tunnels(
    args: &Args,
    runner: Option<&mut RunnerWorld>,
    bulk: SocketAddr,
    egress: SocketAddr,
    egress_runner: Option<SocketAddr>,
    squid: &Squid,
) -> anyhow::Result<Vec<TopologyResult>> {
    let base_pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(squid.pid())
        .collect();
    let mut tunnels: Vec<TopologyResult> = Vec::new();
    if let Some(world) = runner {
        let targets = choose(
            args,
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
        let runs = tunnel_medians(&mut world.client, &targets, &dest, &pids, args)?;
        tunnels.push(TopologyResult {
            label: "runner",
            about: "client in a runner namespace behind a veth (MTU 65535), routed by the host to a server behind a 1500-MTU link: what a job sees",
            names: targets.iter().map(|(n, _)| *n).collect(),
            runs,
        });
    }
    if args.topology.loopback() {
        let targets = choose(
            args,
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
        let runs = tunnel_medians(&mut LocalClient(None), &targets, &dest, &base_pids, args)?;
        tunnels.push(TopologyResult {
            label: "loopback",
            about: "client, bulk server and proxies on one loopback interface (MTU 65536), no link, no forwarding",
            names: targets.iter().map(|(n, _)| *n).collect(),
            runs,
        });
    }
    Ok(tunnels)
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
