//! What the bench prints at the end: each topology's tunnel results alone
//! (`--tunnel-only`), or the full table of requests, latency, tunnels and policy lookups.

use anyhow::Context;

use crate::lookup::lookup_time;
use crate::tunnel::TopologyResult;

/// The tunnel results of each topology, against its direct connection.
pub(crate) fn print_tunnels(tunnels: &[TopologyResult]) {
    for topology in tunnels {
        println!("{} topology ({}):", topology.label, topology.about);
        let direct = topology.get("direct");
        for (name, tunnel) in topology.names.iter().zip(&topology.runs) {
            println!(
                "  {name}: {}",
                tunnel.describe(direct.filter(|_| *name != "direct"))
            );
        }
    }
}

/// The full result table: per target the wrk medians (`results`: name, req/s keep-alive,
/// req/s new connection, p50 µs, p99 µs; direct, egress-proxy, Squid in that order) and
/// each topology's tunnel medians, then the policy lookup times, measured here.
pub(crate) fn print_table(
    results: &[(&str, f64, f64, f64, f64)],
    tunnels: &[TopologyResult],
) -> anyhow::Result<()> {
    let direct = results[0];
    let mut table = Vec::new();
    let mut header =
        "| | req/s keep-alive | req/s new conn | p50 µs (added) | p99 µs (added) |".to_owned();
    let mut rule = "|---|---|---|---|---|".to_owned();
    for topology in tunnels {
        header.push_str(&format!(
            " {0} tunnel MiB/s | {0} tunnel CPU ms/GiB |",
            topology.label
        ));
        rule.push_str("---|---|");
    }
    table.push(header);
    table.push(rule);
    for (name, keep, close, p50, p99) in results {
        let mut row = format!(
            "| {name} | {keep:.0} | {close:.0} | {p50:.0} (+{:.0}) | {p99:.0} (+{:.0}) |",
            p50 - direct.3,
            p99 - direct.4
        );
        for topology in tunnels {
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
    for topology in tunnels {
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
