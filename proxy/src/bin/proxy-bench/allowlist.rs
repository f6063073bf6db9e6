//! The allow-list both proxies get: the same names, egress-proxy's as a [`Policy`], Squid's
//! as a domain list and hosts file (squid.rs).

use egress_proxy::config::{EgressConfig, RuleConfig, RuleTarget};
use egress_proxy::policy::Policy;

use crate::topology::BULK_NAME;

pub(crate) fn names(rules: usize) -> Vec<String> {
    (0..rules).map(|i| format!("svc{i}.bench.test")).collect()
}

/// `rules` names of the loopback world on `ports`, 127.0.0.1 on `ports`, and
/// [`BULK_NAME`] on the runner topology's bulk port if there is one.
pub(crate) fn bench_policy(
    rules: usize,
    ports: &[u16],
    runner_bulk: Option<u16>,
) -> anyhow::Result<Policy> {
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
