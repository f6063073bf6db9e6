//! The compiled egress policy: turns an [`EgressConfig`] into a matcher whose lookup cost
//! does not depend on the number of rules.
//!
//! Structure (why): a user may list 100,000 hosts, and every request is checked, so a
//! linear scan is out. Exact names live in one hash map; `*.suffix` rules live in a second
//! map keyed by the suffix, and a lookup walks the request name's label suffixes
//! (`a.b.example.com` probes `b.example.com`, `example.com`, `com`), so it costs one hash
//! probe per label — at most 127 — whatever the rule count. `cidr` rules are grouped by
//! prefix length; an address is truncated to each length present and probed, so the cost
//! is bounded by the number of *distinct* prefix lengths (at most 33 + 129).
//!
//! Invariants:
//! - names are compared only in normalised form ([`name`]);
//! - `*.example.com` matches any name strictly below `example.com`, never `example.com`
//!   itself nor `evilexample.com` (the walk only stops at label boundaries);
//! - a wildcard is only ever a whole leftmost label, and never sits directly on a public
//!   suffix (`*.com`, `*.co.uk`, `*.github.io`): the `psl` crate's embedded copy of the
//!   Public Suffix List decides, and single-label suffixes (`*.internal`) are refused too;
//! - an address, in any spelling, is decided only by `cidr` rules;
//! - a rule with `methods` or `paths` only allows what it can see: opaque tunnels (CONNECT,
//!   transparent TLS) to such a host are denied. A client with an interception
//!   (`crate::intercept`) gets such tunnels terminated instead: [`Policy::check_deferred`]
//!   lets the connection open and every request inside is then checked with its method
//!   and path;
//! - in `audit` mode every decision is `allow`, carrying the reason it would have been
//!   denied.

pub mod addr;
pub mod name;
pub mod pattern;

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{EgressConfig, Mode, RuleTarget};
pub use addr::{is_local_address, KernelLocalAddresses, LocalAddresses, SpecialNets};
pub use name::{classify_host, normalise_name, Host, HostError};
use pattern::PathPattern;

/// A rule's host pattern after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name.
    Exact(String),
    /// Any name strictly below this suffix.
    Below(String),
}

impl HostPattern {
    /// Parses and normalises a `host:` value, refusing addresses, inner wildcards and
    /// wildcards on public suffixes.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (wild, rest) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if rest.contains('*') {
            return Err(format!(
                "`{raw}`: a wildcard is only allowed as the whole first label, as in `*.example.com`"
            ));
        }
        let name = match name::classify_host(rest) {
            Ok(Host::Name(name)) => name,
            Ok(Host::Ip(_)) => {
                return Err(format!("`{raw}` is an address: write it as a `cidr` rule"))
            }
            Err(err) => return Err(err.to_string()),
        };
        let known_suffix = psl::suffix(name.as_bytes())
            .is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes());
        if known_suffix {
            return Err(format!(
                "`{raw}` names a public suffix, which would allow unrelated owners' hosts"
            ));
        }
        if wild && !name.contains('.') {
            return Err(format!(
                "`{raw}` would allow a whole top-level domain; name a domain below it"
            ));
        }
        Ok(if wild {
            HostPattern::Below(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

/// Why a policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A `host:` value is not a valid pattern.
    #[error("allow[{index}]: {reason}")]
    Host {
        /// Position of the rule in `allow:`.
        index: usize,
        /// What was wrong.
        reason: String,
    },
    /// A `paths:` entry is not a valid pattern.
    #[error("allow[{index}]: {reason}")]
    Path {
        /// Position of the rule in `allow:`.
        index: usize,
        /// What was wrong.
        reason: String,
    },
}

#[derive(Debug)]
struct Rule {
    label: String,
    ports: Vec<u16>,
    methods: Option<Vec<String>>,
    paths: Option<Vec<PathPattern>>,
}

/// The HTTP request a decision can see, when it can see one.
#[derive(Debug, Clone, Copy)]
pub struct HttpView<'a> {
    /// Method, upper case as sent.
    pub method: &'a str,
    /// Request path with query.
    pub path: &'a str,
    /// Whether the request asks the server to take another method or path than the
    /// request line's ([`asks_for_another_method_or_path`]).
    pub overrides: bool,
}

/// Headers by which common servers and frameworks take another method, path or host
/// than the request's own (Google APIs, Rails and Rack, Symfony, Laravel, Spring, IIS URL
/// Rewrite, Zend, nginx, Traefik and Envoy setups; `Forwarded`, `X-Forwarded-Host`, `X-Forwarded-Server`,
/// `X-Forwarded-Prefix` and `X-Host` where a framework trusts them for routing): a rule
/// restricting methods or paths cannot judge a request that carries one. Compared as
/// [`same_header`] does.
pub const OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-envoy-original-path",
    "x-rewrite-url",
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-host",
];

/// Whether the header `name` is `known` (lower case, `-` between words) as servers
/// compare names: in any case, with every character other than a letter or a digit
/// taken as `-` (PHP and CGI read `X_HTTP_METHOD_OVERRIDE`, and some frameworks
/// `X.HTTP.Method.Override`, as `X-HTTP-Method-Override`). Allocates nothing: it runs for
/// every header of every request.
pub fn same_header(name: &str, known: &str) -> bool {
    name.len() == known.len()
        && name.bytes().zip(known.bytes()).all(|(a, b)| {
            let a = if a.is_ascii_alphanumeric() {
                a.to_ascii_lowercase()
            } else {
                b'-'
            };
            a == b
        })
}

/// A request parameter's name as PHP, Node and Python read it: percent-decoded, leading
/// blanks and `+` dropped, and `.`, space and `[` taken as `_`, in lower case.
fn parameter_key(raw: &str) -> String {
    let decoded = pattern::percent_decode(raw)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|| raw.to_owned());
    decoded
        .trim_start_matches([' ', '+'])
        .chars()
        .map(|c| match c {
            '.' | ' ' | '[' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether a request with header names `headers` and target `target` (path and query)
/// asks the server to take another method, path or host: one of [`OVERRIDE_HEADERS`],
/// or a `_method` parameter (which Laravel and Symfony read as the method) in the query
/// or as a path parameter, however its name is spelt ([`parameter_key`]; found by an
/// attack run: `?.method=DELETE` and `?_%6Dethod=DELETE` reached a server). A `_method`
/// field in a form body is not seen (bodies are not read).
pub fn asks_for_another_method_or_path<'a>(
    mut headers: impl Iterator<Item = &'a str>,
    target: &str,
) -> bool {
    let by_header = headers.any(|name| {
        OVERRIDE_HEADERS
            .iter()
            .any(|known| same_header(name, known))
    });
    let by_parameter = target.split(['?', '&', ';']).skip(1).any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        parameter_key(name) == "_method"
    });
    by_header || by_parameter
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the traffic may go on (always true in audit mode).
    pub allowed: bool,
    /// The rule that allowed it, as `allow[INDEX] TARGET`.
    pub rule: Option<String>,
    /// Why it was (or in audit mode, would have been) denied.
    pub reason: Option<String>,
}

impl Decision {
    fn allow(rule: &Rule) -> Self {
        Decision {
            allowed: true,
            rule: Some(rule.label.clone()),
            reason: None,
        }
    }

    /// A denial (adjusted for audit mode by the policy).
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision {
            allowed: false,
            rule: None,
            reason: Some(reason.into()),
        }
    }
}

/// Deny reasons, most specific last: when several candidate rules fail, the reason of the
/// one that got furthest is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    Host,
    Port,
    Opaque,
    Method,
    Path,
    Override,
}

impl Miss {
    fn reason(self) -> &'static str {
        match self {
            Miss::Host => "host not allowed",
            Miss::Port => "port not allowed",
            Miss::Opaque => "rule restricts methods or paths, which a tunnel hides",
            Miss::Method => "method not allowed",
            Miss::Path => "path not allowed",
            Miss::Override => {
                "the request asks for another method, path or host (an override header \
                 or `_method`), which a rule restricting methods or paths cannot judge"
            }
        }
    }
}

/// A compiled egress policy.
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    rules: Vec<Rule>,
    exact: HashMap<String, Vec<u32>>,
    below: HashMap<String, Vec<u32>>,
    /// (prefix length, networks of that length) for IPv4 then IPv6, longest first.
    cidrs: Vec<(u16, HashMap<IpNet, Vec<u32>>)>,
}

impl Policy {
    /// Compiles a policy; every rule is validated again (configs may come from code, not
    /// only from files).
    pub fn new(config: &EgressConfig) -> Result<Self, PolicyError> {
        let mut policy = Policy {
            mode: config.mode,
            rules: Vec::with_capacity(config.allow.len()),
            exact: HashMap::new(),
            below: HashMap::new(),
            cidrs: Vec::new(),
        };
        let mut cidr_map: HashMap<u16, HashMap<IpNet, Vec<u32>>> = HashMap::new();
        for (index, rc) in config.allow.iter().enumerate() {
            let id = u32::try_from(index).expect("fewer than 2^32 rules");
            let paths = match &rc.paths {
                Some(paths) => Some(
                    paths
                        .iter()
                        .map(|p| PathPattern::new(p))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|reason| PolicyError::Path { index, reason })?,
                ),
                None => None,
            };
            let label = match &rc.target {
                RuleTarget::Host(raw) => {
                    match HostPattern::parse(raw)
                        .map_err(|reason| PolicyError::Host { index, reason })?
                    {
                        HostPattern::Exact(n) => policy.exact.entry(n).or_default().push(id),
                        HostPattern::Below(n) => policy.below.entry(n).or_default().push(id),
                    }
                    format!("allow[{index}] {raw}")
                }
                RuleTarget::Cidr(net) => {
                    let net = net.trunc();
                    cidr_map
                        .entry(cidr_key(&net))
                        .or_default()
                        .entry(net)
                        .or_default()
                        .push(id);
                    format!("allow[{index}] {net}")
                }
            };
            policy.rules.push(Rule {
                label,
                ports: rc.ports.clone(),
                methods: rc.methods.clone(),
                paths,
            });
        }
        policy.cidrs = cidr_map.into_iter().collect();
        policy.cidrs.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        Ok(policy)
    }

    /// A policy that allows nothing (for clients registered without one).
    pub fn deny_all() -> Self {
        Policy::new(&EgressConfig::default()).expect("the empty policy is valid")
    }

    /// enforce or audit.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn finish(&self, decision: Decision) -> Decision {
        if decision.allowed || self.mode == Mode::Enforce {
            decision
        } else {
            Decision {
                allowed: true,
                ..decision
            }
        }
    }

    /// Rule ids whose host pattern matches `name` (normalised), exact ones first.
    fn host_candidates<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        let exact = self.exact.get(name).into_iter().flatten().copied();
        let below = name
            .match_indices('.')
            .filter_map(move |(i, _)| self.below.get(&name[i + 1..]))
            .flatten()
            .copied();
        exact.chain(below)
    }

    fn cidr_candidates(&self, ip: IpAddr) -> impl Iterator<Item = u32> + '_ {
        let ip = ip.to_canonical();
        self.cidrs
            .iter()
            .filter_map(move |(len, nets)| {
                let v6 = *len >= 129;
                if v6 != ip.is_ipv6() {
                    return None;
                }
                let bits = u8::try_from(if v6 { len - 129 } else { *len }).ok()?;
                let net = IpNet::new(ip, bits).ok()?.trunc();
                nets.get(&net)
            })
            .flatten()
            .copied()
    }

    fn judge(&self, ids: impl Iterator<Item = u32>, port: u16, sight: Sight<'_>) -> Decision {
        let mut best = Miss::Host;
        for id in ids {
            let rule = &self.rules[id as usize];
            let miss = rule_miss(rule, port, sight);
            match miss {
                None => return self.finish(Decision::allow(rule)),
                Some(miss) => best = best.max(miss),
            }
        }
        self.finish(Decision::deny(best.reason()))
    }

    /// Decides traffic to `host:port`; `http` is the request when it is visible (plain
    /// HTTP), `None` for opaque tunnels.
    pub fn check(&self, host: &Host, port: u16, http: Option<HttpView<'_>>) -> Decision {
        let sight = match http {
            Some(view) => Sight::Request(view),
            None => Sight::Opaque,
        };
        self.check_sight(host, port, sight)
    }

    /// Decides whether a connection to `host:port` whose requests will each be checked
    /// (terminated TLS) may open: a rule matching the host and port allows it whatever
    /// its `methods` and `paths`, which the per-request [`Policy::check`] then enforces.
    pub fn check_deferred(&self, host: &Host, port: u16) -> Decision {
        self.check_sight(host, port, Sight::Deferred)
    }

    fn check_sight(&self, host: &Host, port: u16, sight: Sight<'_>) -> Decision {
        match host {
            Host::Name(name) => self.judge(self.host_candidates(name), port, sight),
            Host::Ip(ip) => {
                let decision = self.judge(self.cidr_candidates(*ip), port, Sight::Opaque);
                if decision.rule.is_none()
                    && decision.reason.as_deref() == Some(Miss::Host.reason())
                {
                    self.finish(Decision::deny("address literal not allowed"))
                } else {
                    decision
                }
            }
        }
    }

    /// Decides whether the proxy may dial `ip` for a name that was already allowed: an
    /// address in `special` needs a `cidr` rule covering it and the port.
    pub fn check_resolved(&self, ip: IpAddr, port: u16, special: &SpecialNets) -> Decision {
        if !special.contains(ip) {
            return Decision {
                allowed: true,
                rule: None,
                reason: None,
            };
        }
        let decision = self.judge(self.cidr_candidates(ip), port, Sight::Opaque);
        if decision.rule.is_some() {
            decision
        } else {
            self.finish(Decision::deny("internal address"))
        }
    }

    /// Whether some `cidr` rule lists `ip` (on any port): such addresses may appear in DNS
    /// answers even when they are internal.
    pub fn lists_address(&self, ip: IpAddr) -> bool {
        self.cidr_candidates(ip).next().is_some()
    }

    /// Whether a name may be resolved: some host rule matches it, whatever the port.
    pub fn check_dns_name(&self, name: &str) -> Decision {
        match self.host_candidates(name).next() {
            Some(id) => Decision::allow(&self.rules[id as usize]),
            None => self.finish(Decision::deny("name not allowed")),
        }
    }
}

/// `cidr_candidates` keys IPv6 prefix lengths as 129..=257 so one sorted list serves both.
fn cidr_key(net: &IpNet) -> u16 {
    match net {
        IpNet::V4(n) => u16::from(n.prefix_len()),
        IpNet::V6(n) => u16::from(n.prefix_len()) + 129,
    }
}

/// What a check can see of the traffic.
#[derive(Debug, Clone, Copy)]
enum Sight<'a> {
    /// An opaque tunnel: rules restricting methods or paths cannot allow it.
    Opaque,
    /// A request (plain HTTP, or inside terminated TLS).
    Request(HttpView<'a>),
    /// A connection whose requests will each be checked: method and path wait.
    Deferred,
}

fn rule_miss(rule: &Rule, port: u16, sight: Sight<'_>) -> Option<Miss> {
    if !rule.ports.contains(&port) {
        return Some(Miss::Port);
    }
    let restricted = rule.methods.is_some() || rule.paths.is_some();
    match sight {
        Sight::Opaque if restricted => Some(Miss::Opaque),
        Sight::Opaque | Sight::Deferred => None,
        Sight::Request(view) => {
            if let Some(methods) = &rule.methods {
                if !methods.iter().any(|m| m == view.method) {
                    return Some(Miss::Method);
                }
            }
            if let Some(paths) = &rule.paths {
                if !paths.iter().any(|p| p.matches(view.path)) {
                    return Some(Miss::Path);
                }
            }
            if restricted && view.overrides {
                return Some(Miss::Override);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests;
