//! The host config (DESIGN.md 3.3): where the agent keeps state, how runners are
//! addressed, what they run on, and the environments jobs can ask for.
//!
//! Every section is optional. Defaults: `state_dir: /var/lib/runner-agent`,
//! `run_dir: /run/runner-agent`, `network.runner_pool: 10.249.0.0/16`,
//! `network.upstream_dns` unset (the host's resolvers), `runner.image: host`,
//! `runner.max_concurrent: 4`, `runner.limits` as in `limits::DEFAULT_LIMITS`. When
//! `environments` is left out the config has the built-in `default` environment (egress
//! `mode: enforce` with nothing allowed, no secrets); when it is given, it is exactly the
//! environments listed.
//!
//! Rules on one node (reported at that node):
//! - `state_dir`, `run_dir`: absolute, not `/`, no `.`/`..` components;
//! - `runner_pool`: an IPv4 network (IPv6 pools are refused: runners are addressed over
//!   IPv4, and IPv6 is denied inside them), without host bits, prefix length 8 to 28
//!   (each runner takes a /30: its address and the host side's), not overlapping
//!   0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/4 or 240.0.0.0/4 (RFC 6890
//!   special-purpose ranges a veth pair cannot sensibly use);
//! - `upstream_dns`: a non-empty list of unicast addresses;
//! - `max_concurrent` >= 1; environment names `[a-z0-9][a-z0-9_-]{0,62}`.
//!
//! Rules across nodes (reported at the later of the two, found again in the text):
//! - `state_dir` and `run_dir` differ and neither is inside the other (the reaper
//!   empties `run_dir`; it must never touch keys and records);
//! - `max_concurrent` runners fit in the pool (pool size / 4 addresses per runner);
//! - no `upstream_dns` address lies inside the runner pool.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::de::{scalar_deserialize, unique_map, EmptyHint, NonEmpty, ScalarForm};
use super::environment::Environment;
use super::error::{invalid_at, read_file, ConfigError};
use super::job::DEFAULT_ENVIRONMENT;

/// The largest host config read (the operator's file; room for very large allow-lists).
pub const MAX_HOST_CONFIG_BYTES: u64 = 16 << 20;
use super::limits::Limits;
use super::locate::value_position;
use super::names::{EnvironmentName, HostDir, ImageName};
use super::units::MaxConcurrent;

/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/runner-agent";
/// Default `run_dir`.
pub const DEFAULT_RUN_DIR: &str = "/run/runner-agent";
/// Default `runner.image`.
pub const DEFAULT_IMAGE: &str = "host";
/// Default `runner.max_concurrent`.
pub const DEFAULT_MAX_CONCURRENT: u32 = 4;
/// Addresses each runner takes from the pool (a /30).
pub const ADDRESSES_PER_RUNNER: u64 = 4;

/// Default `network.runner_pool`.
pub fn default_runner_pool() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 249, 0, 0), 16).unwrap_or_default()
}

/// The whole host config.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// Keys, secret store, job records.
    pub state_dir: PathBuf,
    /// Live runner state, used to reap leftovers.
    pub run_dir: PathBuf,
    /// Runner addressing and DNS.
    pub network: NetworkConfig,
    /// Runner defaults.
    pub runner: RunnerConfig,
    /// Environments by name.
    pub environments: BTreeMap<String, Environment>,
}

/// `network:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Addresses runners are given, one /30 each.
    pub runner_pool: Ipv4Net,
    /// Resolvers the proxy and DNS filter ask; `None`: the host's.
    pub upstream_dns: Option<Vec<IpAddr>>,
}

/// `runner:`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    /// Image when neither the job nor the environment names one.
    pub image: String,
    /// Most runners alive at once.
    pub max_concurrent: u32,
    /// Limits, with every field set (defaults filled in).
    pub limits: Limits,
}

/// `runner_pool`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunnerPool(Ipv4Net);

/// Ranges a runner pool may not overlap, with why.
const RESERVED: [(Ipv4Addr, u8, &str); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

impl ScalarForm for RunnerPool {
    const EXPECTING: &'static str = "an IPv4 network like 10.249.0.0/16";

    fn parse(text: &str) -> Result<Self, String> {
        let net: ipnet::IpNet = text
            .parse()
            .map_err(|_| format!("`{text}` is not a network like 10.249.0.0/16"))?;
        let ipnet::IpNet::V4(net) = net else {
            return Err(format!(
                "`{text}` is an IPv6 network; the runner pool must be IPv4, like 10.249.0.0/16 \
                 (runners get IPv4 addresses; their IPv6 traffic is denied)"
            ));
        };
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        if !(8..=28).contains(&net.prefix_len()) {
            return Err(format!(
                "`{text}` has prefix length /{}; use /8 to /28 (each runner takes a /30)",
                net.prefix_len()
            ));
        }
        for (addr, len, what) in RESERVED {
            let reserved = Ipv4Net::new(addr, len).unwrap_or_default();
            if reserved.contains(&net) || net.contains(&reserved) {
                return Err(format!(
                    "`{text}` overlaps {reserved} ({what}); pick a private range like 10.249.0.0/16"
                ));
            }
        }
        Ok(RunnerPool(net))
    }
}

/// An `upstream_dns` entry: a unicast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resolver(IpAddr);

impl ScalarForm for Resolver {
    const EXPECTING: &'static str = "a resolver address like 198.51.100.53";

    fn parse(text: &str) -> Result<Self, String> {
        let addr: IpAddr = text
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address like 198.51.100.53"))?;
        let broadcast = matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
        if addr.is_unspecified() || addr.is_multicast() || broadcast {
            return Err(format!(
                "`{text}` cannot be a resolver; give a unicast address"
            ));
        }
        Ok(Resolver(addr))
    }
}

scalar_deserialize!(RunnerPool, Resolver);

/// Why `upstream_dns` may not be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResolversHint;

impl EmptyHint for ResolversHint {
    const HINT: &'static str =
        "the list is empty; list resolvers, or leave it out to use the host's";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    runner_pool: Option<RunnerPool>,
    upstream_dns: Option<NonEmpty<Resolver, ResolversHint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    image: Option<ImageName>,
    max_concurrent: Option<MaxConcurrent>,
    limits: Option<Limits>,
}

/// `environments:` with checked, unique names.
struct Environments(BTreeMap<String, Environment>);

impl<'de> Deserialize<'de> for Environments {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        unique_map::<D, EnvironmentName, Environment>(d, "a mapping of environment names")
            .map(Environments)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    state_dir: Option<HostDir>,
    run_dir: Option<HostDir>,
    network: Option<RawNetwork>,
    runner: Option<RawRunner>,
    environments: Option<Environments>,
}

impl HostConfig {
    /// The config used when no `--config` is given: every default, and one environment
    /// `default` that allows no egress and has no secrets.
    pub fn builtin_default() -> HostConfig {
        HostConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            network: NetworkConfig {
                runner_pool: default_runner_pool(),
                upstream_dns: None,
            },
            runner: RunnerConfig {
                image: DEFAULT_IMAGE.to_owned(),
                max_concurrent: DEFAULT_MAX_CONCURRENT,
                limits: Limits::defaults(),
            },
            environments: BTreeMap::from([(
                DEFAULT_ENVIRONMENT.to_owned(),
                Environment::no_egress(),
            )]),
        }
    }

    /// Reads and validates the host config at `path`.
    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        HostConfig::parse(path, &read_file(path, MAX_HOST_CONFIG_BYTES)?)
    }

    /// The host config at `path` (`--config`), or the built-in one without it.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<HostConfig, ConfigError> {
        match path {
            Some(path) => HostConfig::load(path),
            None => Ok(HostConfig::builtin_default()),
        }
    }

    /// Parses and validates `text`, read from `path` (used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<HostConfig, ConfigError> {
        let raw: RawHost = egress_proxy::yaml::parse_str(path, text)?;
        let defaults = HostConfig::builtin_default();
        let network = raw.network.unwrap_or(RawNetwork {
            runner_pool: None,
            upstream_dns: None,
        });
        let runner = raw.runner.unwrap_or(RawRunner {
            image: None,
            max_concurrent: None,
            limits: None,
        });
        let config = HostConfig {
            state_dir: raw.state_dir.map_or(defaults.state_dir, |d| d.0),
            run_dir: raw.run_dir.map_or(defaults.run_dir, |d| d.0),
            network: NetworkConfig {
                runner_pool: network
                    .runner_pool
                    .map_or(defaults.network.runner_pool, |p| p.0),
                upstream_dns: network
                    .upstream_dns
                    .map(|list| list.0.into_iter().map(|r| r.0).collect()),
            },
            runner: RunnerConfig {
                image: runner.image.map_or(defaults.runner.image, String::from),
                max_concurrent: runner
                    .max_concurrent
                    .map_or(defaults.runner.max_concurrent, |m| m.0),
                limits: runner
                    .limits
                    .unwrap_or_default()
                    .or(&defaults.runner.limits),
            },
            environments: raw.environments.map_or(defaults.environments, |e| e.0),
        };
        config.check(path, text)?;
        Ok(config)
    }

    /// The rules across nodes (module docs).
    fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let fail = |keys: &[&[&str]], message: String| {
            let at = keys.iter().find_map(|k| value_position(text, k));
            Err(ConfigError::Validate(invalid_at(path, at, message)))
        };
        let (state, run) = (&self.state_dir, &self.run_dir);
        if state == run {
            return fail(
                &[&["run_dir"], &["state_dir"]],
                format!(
                    "state_dir and run_dir are both {}; they must be different directories",
                    run.display()
                ),
            );
        }
        if state.starts_with(run) || run.starts_with(state) {
            return fail(
                &[&["run_dir"], &["state_dir"]],
                format!(
                    "state_dir {} and run_dir {} are nested; neither may be inside the other \
                     (leftovers in run_dir are deleted)",
                    state.display(),
                    run.display()
                ),
            );
        }
        let pool = self.network.runner_pool;
        let capacity = (1u64 << (32 - u32::from(pool.prefix_len()))) / ADDRESSES_PER_RUNNER;
        if u64::from(self.runner.max_concurrent) > capacity {
            return fail(
                &[&["runner", "max_concurrent"], &["network", "runner_pool"]],
                format!(
                    "max_concurrent {} does not fit in runner_pool {pool}, which has room for \
                     {capacity} runners (a /30 each); lower it or widen the pool",
                    self.runner.max_concurrent
                ),
            );
        }
        for addr in self.network.upstream_dns.iter().flatten() {
            if matches!(addr, IpAddr::V4(v4) if pool.contains(v4)) {
                return fail(
                    &[&["network", "upstream_dns"]],
                    format!(
                        "upstream resolver {addr} is inside runner_pool {pool}; runners are \
                         never resolvers"
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::environment::{Approval, Delivery};
    use crate::config::testing::assert_table;
    use crate::config::units::GIB;
    use egress_proxy::config::{Mode, RuleTarget};
    use std::time::Duration;

    fn parse(text: &str) -> Result<HostConfig, String> {
        HostConfig::parse(Path::new("host.yaml"), text).map_err(|e| e.to_string())
    }

    /// The example of DESIGN.md 3.3, verbatim.
    pub(crate) const DESIGN_EXAMPLE: &str = r#"state_dir: /var/lib/runner-agent     # keys, secret store, job records
run_dir: /run/runner-agent           # live runner state, used to reap leftovers
network:
  runner_pool: 10.249.0.0/16         # one small subnet per runner
  upstream_dns: [198.51.100.53]      # default: the host's resolvers
runner:
  image: host
  max_concurrent: 4
  limits: { memory: 4GiB, pids: 4096, cpus: 2, disk: 8GiB, timeout: 6h }
environments:
  ci:
    egress:
      mode: enforce                  # enforce | audit (audit allows and records)
      allow:
        - host: example.com          # exact name
        - host: "*.example.com"      # any name below example.com, not example.com itself
        - host: github.com
          ports: [443, 22]           # default [80, 443]
          methods: [GET, HEAD]       # enforced wherever the request is visible
          paths: ["/rust-lang/*"]
        - cidr: 198.51.100.0/24      # explicit address rules, never learned from the job
          ports: [5432]
    secrets:
      DEV_TOKEN: { deliver: env }
  release:
    match:                           # all given fields must match the job's claims
      repositories: [acme/app]
      refs: ["refs/tags/v*"]         # `*` does not cross `/`; `**` does
      workflows: [.github/workflows/release.yaml]
      events: [push]
    approval: required
    egress: { mode: enforce, allow: [ { host: registry.example.com } ] }
    secrets:
      PROD_REGISTRY_TOKEN:
        deliver: proxy               # the sandbox never sees the value
        hosts: [registry.example.com]
        header: Authorization
        format: "Bearer {secret}"
"#;

    #[test]
    fn design_example_parses() {
        let c = parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/runner-agent"));
        assert_eq!(
            c.network.upstream_dns,
            Some(vec!["198.51.100.53".parse().unwrap()])
        );
        assert_eq!(c.runner.limits.effective().memory, 4 * GIB);
        assert_eq!(c.runner.limits.timeout, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(c.environments.keys().collect::<Vec<_>>(), ["ci", "release"]);
        let ci = &c.environments["ci"];
        assert_eq!(ci.egress.mode, Mode::Enforce);
        assert_eq!(ci.egress.allow.len(), 4);
        assert_eq!(
            ci.egress.allow[1].target,
            RuleTarget::Host("*.example.com".into())
        );
        assert_eq!(ci.secrets["DEV_TOKEN"].deliver, Delivery::Env);
        assert_eq!(ci.approval, Approval::NotRequired);
        let release = &c.environments["release"];
        assert_eq!(release.approval, Approval::Required);
        assert!(release.match_.as_ref().unwrap().events.is_some());
        assert_eq!(
            release.secrets["PROD_REGISTRY_TOKEN"].delivery_name(),
            "proxy"
        );
    }

    #[test]
    fn every_section_is_optional() {
        let builtin = HostConfig::builtin_default();
        // A file needs one key; an empty `runner:` is as good as none.
        let c = parse("runner:\n").unwrap();
        assert_eq!(c, builtin);
        assert_eq!(parse("network: {}\nrunner: {}\n").unwrap(), builtin);
        assert_eq!(builtin.network.runner_pool.to_string(), "10.249.0.0/16");
        assert_eq!(builtin.run_dir, Path::new("/run/runner-agent"));
        assert_eq!(builtin.runner.max_concurrent, 4);
        assert_eq!(builtin.runner.image, "host");
        assert_eq!(builtin.environments["default"].egress.allow, vec![]);
        assert_eq!(builtin.environments["default"].egress.mode, Mode::Enforce);
        assert!(builtin.environments["default"].secrets.is_empty());
        // Given environments replace the built-in one.
        let c = parse("environments:\n  ci: {}\n").unwrap();
        assert_eq!(c.environments.keys().collect::<Vec<_>>(), ["ci"]);
        assert_eq!(c.environments["ci"], Environment::no_egress());
    }

    #[test]
    fn runner_limits_override_defaults_field_by_field() {
        let c = parse("runner:\n  limits:\n    memory: 1G\n").unwrap();
        let e = c.runner.limits.effective();
        assert_eq!(e.memory, GIB);
        assert_eq!(e.disk, 8 * GIB);
        assert_eq!(c.runner.limits.pids, Some(4096));
    }

    #[test]
    fn pools() {
        for good in [
            "10.249.0.0/16",
            "10.0.0.0/8",
            "192.168.7.0/28",
            "100.64.0.0/10",
        ] {
            assert!(RunnerPool::parse(good).is_ok(), "{good}");
        }
        for (bad, want) in [
            (
                "fd00::/64",
                "is an IPv6 network; the runner pool must be IPv4",
            ),
            (
                "10.249.0.1/16",
                "has host bits set; did you mean 10.249.0.0/16?",
            ),
            ("10.0.0.0/7", "prefix length /7; use /8 to /28"),
            ("10.0.0.0/29", "prefix length /29"),
            ("127.0.0.0/16", "overlaps 127.0.0.0/8 (loopback)"),
            ("0.0.0.0/8", "overlaps 0.0.0.0/8"),
            ("224.0.0.0/8", "overlaps 224.0.0.0/4 (multicast)"),
            ("240.0.0.0/8", "overlaps 240.0.0.0/4"),
            ("169.254.0.0/16", "link-local"),
            ("10.249.0.0", "is not a network like 10.249.0.0/16"),
            ("pool", "is not a network"),
        ] {
            let err = RunnerPool::parse(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn node_errors_are_located() {
        assert_table(
            parse,
            &[
            ("state_dir: var/lib\n", "host.yaml:1:12: state_dir: `var/lib` is not an absolute path; write e.g. /var/lib/runner-agent"),
            ("run_dir: /\n", "host.yaml:1:10: run_dir: `/` cannot be used: the agent creates and removes files below this directory"),
            ("network:\n  runner_pool: fd00::/64\n", "host.yaml:2:16: network.runner_pool: `fd00::/64` is an IPv6 network; the runner pool must be IPv4, like 10.249.0.0/16 (runners get IPv4 addresses; their IPv6 traffic is denied)"),
            ("network:\n  runner_pool: 10.0.0.0/30\n", "host.yaml:2:16: network.runner_pool: `10.0.0.0/30` has prefix length /30; use /8 to /28 (each runner takes a /30)"),
            ("network:\n  upstream_dns: []\n", "host.yaml:2:17: network.upstream_dns: the list is empty; list resolvers, or leave it out to use the host's"),
            ("network:\n  upstream_dns: [1.1.1.1, dns]\n", "host.yaml:2:27: network.upstream_dns[1]: `dns` is not an IP address like 198.51.100.53"),
            ("network:\n  upstream_dns: [0.0.0.0]\n", "host.yaml:2:18: network.upstream_dns[0]: `0.0.0.0` cannot be a resolver; give a unicast address"),
            ("network:\n  dns: []\n", "host.yaml:2:3: network: unknown field `dns`, expected `runner_pool` or `upstream_dns`"),
            ("runner:\n  image: docker\n", "host.yaml:2:10: runner.image: unknown image `docker` (available: host)"),
            ("runner:\n  max_concurrent: 0\n", "host.yaml:2:19: runner.max_concurrent: `0` is not a whole number of runners of at least 1"),
            ("runner:\n  limits: { memory: 1MiB }\n", "host.yaml:2:21: runner.limits.memory: `1MiB` is too small; the minimum is 16MiB"),
            ("environments:\n  CI: {}\n", "host.yaml:2:3: environments: `CI` is not a valid environment name; use 1 to 63 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit"),
            ("environments:\n  ci: {}\n  ci: {}\n", "host.yaml:2:3: environments: `ci` appears twice in this mapping; each key may appear once"),
            ("environments:\n  ci:\n    egress:\n      allow:\n        - host: a.com\n          ports: [0]\n", "host.yaml:5:11: environments.ci.egress.allow[0]: port 0 is not a port"),
            ("state_dir: /x\nlogging: {}\n", "host.yaml:2:1: unknown field `logging`"),
            ("- a\n", "host.yaml:1:1: invalid type: sequence"),
            ],
        );
    }

    #[test]
    fn cross_node_errors_are_located() {
        assert_table(
            parse,
            &[
            ("state_dir: /srv/ra\nrun_dir: /srv/ra/\n", "host.yaml:2:10: state_dir and run_dir are both /srv/ra"),
            ("state_dir: /srv/ra\nrun_dir: /srv/ra/run\n", "host.yaml:2:10: state_dir /srv/ra and run_dir /srv/ra/run are nested"),
            ("state_dir: /run/runner-agent/state\n", "host.yaml:1:12: state_dir /run/runner-agent/state and run_dir /run/runner-agent are nested"),
            ("state_dir: /srv/rab\nrun_dir: /srv/ra\n", ""),
            ("network:\n  runner_pool: 10.0.0.0/28\nrunner:\n  max_concurrent: 5\n", "host.yaml:4:19: max_concurrent 5 does not fit in runner_pool 10.0.0.0/28, which has room for 4 runners"),
            ("network:\n  runner_pool: 10.0.0.0/28\nrunner: { max_concurrent: 4 }\n", ""),
            ("network: { runner_pool: 10.0.0.0/24, upstream_dns: [10.0.0.53] }\n", "host.yaml:1:52: upstream resolver 10.0.0.53 is inside runner_pool 10.0.0.0/24"),
            ],
        );
    }

    #[test]
    fn load_reports_unreadable_files() {
        let err = HostConfig::load(Path::new("/nonexistent/host.yaml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with("/nonexistent/host.yaml: cannot read: "),
            "{err}"
        );
    }
}
