//! The `egress` policy section as users write it (DESIGN.md 3.3), and the standalone policy
//! file of `egress-proxy --policy FILE` (DESIGN.md 6).
//!
//! These are the *file* forms: every struct denies unknown fields, and every rule that can
//! be checked on one node is checked while deserializing (through `try_from`), so that the
//! error carries the node's line and column. Turning a valid [`EgressConfig`] into a fast
//! matcher is the job of the policy module.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `mode:` of an egress section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what no rule allows.
    #[default]
    Enforce,
    /// Allow everything, but record what would have been denied.
    Audit,
}

/// An `egress:` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// enforce (default) or audit.
    #[serde(default)]
    pub mode: Mode,
    /// The allow-list; empty means nothing is allowed.
    #[serde(default)]
    pub allow: Vec<RuleConfig>,
}

/// What a rule names: a host pattern or an address range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleTarget {
    /// `host:` — an exact name or `*.suffix`, as written (normalised by the policy module).
    Host(String),
    /// `cidr:` — an explicit address range.
    Cidr(IpNet),
}

/// One entry of `allow:`. Deserialized through `RawRule` with
/// [`crate::yaml::checked_map`] (not `#[serde(try_from)]`), so that a rule's error is
/// reported at that rule's line rather than at the start of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// What the rule applies to.
    pub target: RuleTarget,
    /// Destination ports; `[80, 443]` when not given.
    pub ports: Vec<u16>,
    /// HTTP methods (upper case); `None` allows every method.
    pub methods: Option<Vec<String>>,
    /// Path patterns; `None` allows every path.
    pub paths: Option<Vec<String>>,
}

/// Ports a rule allows when it names none.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ports: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paths: Option<Vec<String>>,
}

/// Rules serialise back to the file form (so the agent can send a policy over the
/// control channel in the same shape it was read).
impl Serialize for RuleConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (host, cidr) = match &self.target {
            RuleTarget::Host(host) => (Some(host.clone()), None),
            RuleTarget::Cidr(net) => (None, Some(net.to_string())),
        };
        RawRule {
            host,
            cidr,
            ports: Some(self.ports.clone()),
            methods: self.methods.clone(),
            paths: self.paths.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RuleConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::yaml::checked_map::<D, RawRule, RuleConfig>(
            d,
            "a rule: a mapping with `host` or `cidr`",
        )
    }
}

impl TryFrom<RawRule> for RuleConfig {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<Self, Self::Error> {
        let target = match (raw.host, raw.cidr) {
            (Some(host), None) => {
                // Validated here, not only when the policy is compiled, so that the error
                // carries the node's line and column.
                crate::policy::HostPattern::parse(&host)?;
                RuleTarget::Host(host)
            }
            (None, Some(cidr)) => RuleTarget::Cidr(parse_cidr(&cidr)?),
            (Some(_), Some(_)) => {
                return Err("a rule has either `host` or `cidr`, not both".to_owned())
            }
            (None, None) => return Err("a rule needs `host` or `cidr`".to_owned()),
        };
        let ports = match raw.ports {
            None => DEFAULT_PORTS.to_vec(),
            Some(ports) if ports.is_empty() => {
                return Err("`ports` is empty; leave it out for the default [80, 443]".to_owned())
            }
            Some(ports) if ports.contains(&0) => return Err("port 0 is not a port".to_owned()),
            Some(ports) => ports,
        };
        let methods = match raw.methods {
            Some(methods) if methods.is_empty() => {
                return Err("`methods` is empty; leave it out to allow every method".to_owned())
            }
            Some(methods) => Some(
                methods
                    .into_iter()
                    .map(|m| {
                        if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) {
                            Ok(m.to_ascii_uppercase())
                        } else {
                            Err(format!("`{m}` is not an HTTP method"))
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
            None => None,
        };
        let paths = match raw.paths {
            Some(paths) if paths.is_empty() => {
                return Err("`paths` is empty; leave it out to allow every path".to_owned())
            }
            Some(paths) => {
                for path in &paths {
                    crate::policy::pattern::PathPattern::new(path)?;
                }
                Some(paths)
            }
            None => None,
        };
        if matches!(target, RuleTarget::Cidr(_)) && (methods.is_some() || paths.is_some()) {
            return Err(
                "`methods` and `paths` need a `host` rule: an address rule cannot see names"
                    .to_owned(),
            );
        }
        Ok(RuleConfig {
            target,
            ports,
            methods,
            paths,
        })
    }
}

/// Parses `198.51.100.0/24` or a bare address (a single-address range).
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net = if text.contains('/') {
        text.parse::<IpNet>()
            .map_err(|_| format!("`{text}` is not an address range like 198.51.100.0/24"))?
    } else {
        let addr: IpAddr = text
            .parse()
            .map_err(|_| format!("`{text}` is not an address range like 198.51.100.0/24"))?;
        IpNet::from(addr)
    };
    if net.trunc() != net {
        return Err(format!(
            "`{text}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// The file of `egress-proxy --policy FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Resolvers the proxy and DNS filter ask; default: the host's.
    #[serde(default)]
    pub upstream_dns: Option<Vec<IpAddr>>,
    /// The policy served to every client.
    pub egress: EgressConfig,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_str;
    use std::path::Path;

    fn parse(text: &str) -> Result<EgressConfig, String> {
        parse_str(Path::new("p.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn full_example_parses() {
        let cfg = parse(
            "mode: audit\nallow:\n  - host: example.com\n  - host: github.com\n    ports: [443, 22]\n    methods: [get, HEAD]\n    paths: [\"/rust-lang/*\"]\n  - cidr: 198.51.100.0/24\n    ports: [5432]\n",
        )
        .unwrap();
        assert_eq!(cfg.mode, Mode::Audit);
        assert_eq!(cfg.allow[0].ports, vec![80, 443]);
        assert_eq!(
            cfg.allow[1].methods.as_deref(),
            Some(&["GET".to_owned(), "HEAD".to_owned()][..])
        );
        assert_eq!(
            cfg.allow[2].target,
            RuleTarget::Cidr("198.51.100.0/24".parse().unwrap())
        );
    }

    #[test]
    fn rules_round_trip_through_json() {
        let cfg = parse(
            "mode: audit\nallow:\n  - host: \"*.example.com\"\n    methods: [GET]\n  - cidr: 198.51.100.0/24\n    ports: [5432]\n",
        )
        .unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        let back: EgressConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn a_bad_rule_is_located_at_itself_not_at_the_list() {
        let err = parse(
            "allow:\n  - host: a.example.com\n  - host: b.example.com\n  - cidr: 10.0.0.1/8\n",
        )
        .unwrap_err();
        assert!(err.starts_with("p.yaml:4:"), "{err}");
        assert!(err.contains("allow[2]"), "{err}");
    }

    #[test]
    fn rule_errors_carry_location() {
        for (text, want) in [
            ("allow:\n  - ports: [80]\n", "needs `host` or `cidr`"),
            (
                "allow:\n  - host: a.com\n    cidr: 10.0.0.0/8\n",
                "not both",
            ),
            ("allow:\n  - cidr: 10.0.0.1/8\n", "host bits set"),
            ("allow:\n  - host: a.com\n    ports: [0]\n", "port 0"),
            (
                "allow:\n  - host: a.com\n    ports: [70000]\n",
                "invalid value",
            ),
            (
                "allow:\n  - cidr: 10.0.0.0/8\n    paths: [\"/x\"]\n",
                "need a `host` rule",
            ),
            (
                "allow:\n  - host: a.com\n    paths: [\"x\"]\n",
                "must start with `/`",
            ),
            (
                "allow:\n  - host: a.com\n    colour: red\n",
                "unknown field `colour`",
            ),
            ("allow:\n  - host: \"*.com\"\n", "public suffix"),
            ("allow:\n  - host: 10.0.0.1\n", "cidr"),
            (
                "allow:\n  - host: a.com\n    paths: [\"/a**\"]\n",
                "whole segment",
            ),
            ("mode: open\n", "unknown variant `open`"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("p.yaml:"), "{text:?}: {err}");
            assert!(
                err.split(':').nth(1).unwrap().parse::<usize>().is_ok(),
                "{err}"
            );
        }
    }
}
