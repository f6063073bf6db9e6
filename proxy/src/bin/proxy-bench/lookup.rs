//! Policy lookup time: how long one allow-list check takes at a given number of rules,
//! with and without normalising the name first.

use std::time::Instant;

use egress_proxy::config::{EgressConfig, RuleConfig, RuleTarget};
use egress_proxy::policy::{classify_host, Policy};

use crate::median;

/// Median nanoseconds per policy check over hits and misses, without and with name
/// normalisation.
pub(crate) fn lookup_time(rules: usize) -> anyhow::Result<(f64, f64)> {
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
