//! One entry of `environments:` in the host config: who may use it (`match`,
//! `approval`), what it may reach (`egress`), which credentials it gets (`secrets`), and
//! what it runs on (`image`, `limits`).
//!
//! Rules checked here, at the environment's node:
//! - `approval` is `required` or `none` (default `none`); `approval_timeout` (a duration,
//!   default [`DEFAULT_APPROVAL_TIMEOUT`]) is how long a job waits for an operator's
//!   approval before it is refused, and is only accepted with `approval: required` (on its
//!   own it would have no effect, which is more likely a mistake than an intent);
//! - `egress` defaults to `mode: enforce` with an empty allow list: an environment that
//!   says nothing about egress gets none (fail closed);
//! - secret names are `[A-Z_][A-Z0-9_]*`; `deliver` is `env`, `file` or `proxy`;
//!   `proxy` needs `hosts` (non-empty, exact host names: a credential is never bound to
//!   a wildcard) and `header` (an RFC 9110 §5.1 field name), and takes `format`
//!   (default `{secret}`, must contain `{secret}`, no CR or LF: RFC 9110 §5.5, header
//!   injection); `env` and `file` take none of `hosts`, `header`, `format`;
//! - in `enforce` mode, each host a `proxy` secret is bound to must be allowed by a
//!   `host` rule of the same environment, or the credential could never be used.

use std::collections::BTreeMap;

use egress_proxy::config::{EgressConfig, Mode, RuleTarget};
use serde::Deserialize;

use super::claims::ClaimMatch;
use super::de::{checked_map, unique_map};
use super::limits::Limits;
use super::names::{ImageName, SecretName};
use super::units::Timeout;

/// How long a job waits for approval when `approval_timeout` is not given.
pub const DEFAULT_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether an operator must approve each job before it gets this environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// `approval: required`.
    Required,
    /// `approval: none` (the default).
    #[default]
    #[serde(rename = "none")]
    NotRequired,
}

/// How a secret reaches the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// As an environment variable of the same name.
    Env,
    /// As a file on a tmpfs, readable by the job user.
    File,
    /// Added by the proxy to requests for `hosts`; the sandbox never sees the value.
    Proxy {
        /// Exact host names (lower case) the header is added for.
        hosts: Vec<String>,
        /// Header name, e.g. `Authorization`.
        header: String,
        /// Header value template containing `{secret}`.
        format: String,
    },
}

/// One entry of `secrets:` (the value itself lives in the secret store, never here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// How the secret is delivered.
    pub deliver: Delivery,
}

impl SecretSpec {
    /// `env`, `file` or `proxy`.
    pub fn delivery_name(&self) -> &'static str {
        match self.deliver {
            Delivery::Env => "env",
            Delivery::File => "file",
            Delivery::Proxy { .. } => "proxy",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum DeliverKind {
    Env,
    File,
    Proxy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    deliver: DeliverKind,
    hosts: Option<Vec<String>>,
    header: Option<String>,
    format: Option<String>,
}

/// The value template of a proxy secret when none is given.
pub const DEFAULT_FORMAT: &str = "{secret}";

impl TryFrom<RawSecret> for SecretSpec {
    type Error = String;

    fn try_from(raw: RawSecret) -> Result<Self, String> {
        let deliver = match raw.deliver {
            DeliverKind::Env | DeliverKind::File => {
                if raw.hosts.is_some() || raw.header.is_some() || raw.format.is_some() {
                    return Err(
                        "`hosts`, `header` and `format` belong to `deliver: proxy` only".to_owned(),
                    );
                }
                if matches!(raw.deliver, DeliverKind::Env) {
                    Delivery::Env
                } else {
                    Delivery::File
                }
            }
            DeliverKind::Proxy => {
                let hosts = match raw.hosts {
                    None => {
                        return Err(
                            "`deliver: proxy` needs `hosts`, the names the header is added for"
                                .to_owned(),
                        )
                    }
                    Some(h) if h.is_empty() => {
                        return Err(
                            "`hosts` is empty; list the names the header is added for".to_owned()
                        )
                    }
                    Some(h) => h
                        .iter()
                        .map(|h| check_exact_host(h))
                        .collect::<Result<_, _>>()?,
                };
                let header = raw
                    .header
                    .ok_or("`deliver: proxy` needs `header`, e.g. `header: Authorization`")?;
                check_header_name(&header)?;
                let format = raw.format.unwrap_or_else(|| DEFAULT_FORMAT.to_owned());
                if !format.contains("{secret}") {
                    return Err(format!(
                        "`format` `{format}` does not contain `{{secret}}`, where the value goes"
                    ));
                }
                if format.contains(['\r', '\n', '\0']) {
                    return Err(
                        "`format` cannot contain CR, LF or NUL (header injection)".to_owned()
                    );
                }
                Delivery::Proxy {
                    hosts,
                    header,
                    format,
                }
            }
        };
        Ok(SecretSpec { deliver })
    }
}

impl<'de> Deserialize<'de> for SecretSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map::<D, RawSecret, SecretSpec>(d, "a mapping like { deliver: env }")
    }
}

/// An exact DNS name, lower-cased: letters, digits, `-` and `.`, no empty label
/// (RFC 1123 §2.1 host names).
fn check_exact_host(host: &str) -> Result<String, String> {
    let lower = host.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    let ok = !lower.is_empty()
        && lower.len() <= 253
        && lower.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(lower.to_owned())
    } else {
        Err(format!(
            "`{host}` is not an exact host name; a credential is bound to names like \
             registry.example.com (no wildcards)"
        ))
    }
}

/// RFC 9110 §5.1: a field name is a `token` (RFC 9110 §5.6.2 tchar).
fn check_header_name(name: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.is_empty() && name.bytes().all(tchar) {
        Ok(())
    } else {
        Err(format!("`{name}` is not an HTTP header name"))
    }
}

/// One environment of the host config.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// Claims a job must carry to use this environment (`match:`); `None` = any job.
    pub match_: Option<ClaimMatch>,
    /// Whether each job needs an operator's approval.
    pub approval: Approval,
    /// How long a job waits for that approval before it is refused.
    pub approval_timeout: std::time::Duration,
    /// The egress policy of its runners.
    pub egress: EgressConfig,
    /// Secrets by name.
    pub secrets: BTreeMap<String, SecretSpec>,
    /// Image for its jobs, overriding `runner.image`.
    pub image: Option<String>,
    /// Limits overriding `runner.limits` field by field.
    pub limits: Option<Limits>,
}

impl Environment {
    /// No egress, no secrets, no constraints: the built-in `default` environment.
    pub fn no_egress() -> Environment {
        Environment {
            match_: None,
            approval: Approval::NotRequired,
            approval_timeout: DEFAULT_APPROVAL_TIMEOUT,
            egress: EgressConfig {
                mode: Mode::Enforce,
                allow: Vec::new(),
            },
            secrets: BTreeMap::new(),
            image: None,
            limits: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    #[serde(rename = "match")]
    match_: Option<ClaimMatch>,
    #[serde(default)]
    approval: Approval,
    approval_timeout: Option<Timeout>,
    #[serde(default)]
    egress: EgressConfig,
    #[serde(default, deserialize_with = "secrets_map")]
    secrets: BTreeMap<String, SecretSpec>,
    image: Option<ImageName>,
    limits: Option<Limits>,
}

fn secrets_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SecretSpec>, D::Error> {
    unique_map::<D, SecretName, SecretSpec>(d, "a mapping of secret names")
}

/// Whether an egress `host:` pattern allows `host` (exact, or `*.suffix` for names strictly
/// below the suffix, as DESIGN.md 3.3 defines).
fn host_rule_allows(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let pattern = pattern.strip_suffix('.').unwrap_or(&pattern);
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => pattern == host,
    }
}

impl TryFrom<RawEnvironment> for Environment {
    type Error = String;

    fn try_from(raw: RawEnvironment) -> Result<Self, String> {
        if raw.approval_timeout.is_some() && raw.approval != Approval::Required {
            return Err(
                "`approval_timeout` applies only with `approval: required`; remove it or require approval"
                    .to_owned(),
            );
        }
        if raw.egress.mode == Mode::Enforce {
            for (name, spec) in &raw.secrets {
                let Delivery::Proxy { hosts, .. } = &spec.deliver else {
                    continue;
                };
                for host in hosts {
                    let allowed = raw.egress.allow.iter().any(|rule| {
                        matches!(&rule.target, RuleTarget::Host(p) if host_rule_allows(p, host))
                    });
                    if !allowed {
                        return Err(format!(
                            "secret `{name}` is bound to `{host}`, which no `host` rule of this \
                             environment's egress allows; add `- host: {host}` to `egress.allow`"
                        ));
                    }
                }
            }
        }
        Ok(Environment {
            match_: raw.match_,
            approval: raw.approval,
            approval_timeout: raw
                .approval_timeout
                .map_or(DEFAULT_APPROVAL_TIMEOUT, |t| t.0),
            egress: raw.egress,
            secrets: raw.secrets,
            image: raw.image.map(String::from),
            limits: raw.limits,
        })
    }
}

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map::<D, RawEnvironment, Environment>(
            d,
            "an environment mapping (match, approval, approval_timeout, egress, secrets, image, limits)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::assert_table;

    fn parse(text: &str) -> Result<Environment, String> {
        crate::config::testing::parse("e.yaml", text)
    }

    #[test]
    fn full_environment_parses() {
        let env = parse(
            "match:\n  repositories: [acme/app]\n  refs: [\"refs/tags/v*\"]\n\
             approval: required\n\
             egress: { mode: enforce, allow: [ { host: Registry.Example.com } ] }\n\
             secrets:\n  PROD_TOKEN:\n    deliver: proxy\n    hosts: [registry.example.com]\n\
             \x20   header: Authorization\n    format: \"Bearer {secret}\"\n\
             \x20 DEV: { deliver: env }\n  KEY: { deliver: file }\n\
             image: host\nlimits: { memory: 1GiB }\n",
        )
        .unwrap();
        assert_eq!(env.approval, Approval::Required);
        assert_eq!(env.approval_timeout, DEFAULT_APPROVAL_TIMEOUT);
        assert_eq!(env.image.as_deref(), Some("host"));
        assert_eq!(env.limits.unwrap().memory, Some(1 << 30));
        assert_eq!(env.secrets["DEV"].deliver, Delivery::Env);
        assert_eq!(env.secrets["KEY"].deliver, Delivery::File);
        assert_eq!(
            env.secrets["PROD_TOKEN"].deliver,
            Delivery::Proxy {
                hosts: vec!["registry.example.com".into()],
                header: "Authorization".into(),
                format: "Bearer {secret}".into(),
            }
        );
        let m = env.match_.unwrap();
        assert_eq!(m.refs.unwrap()[0].as_str(), "refs/tags/v*");
        assert!(m.workflows.is_none());
    }

    #[test]
    fn defaults_fail_closed() {
        let env = parse("approval: none\n").unwrap();
        assert_eq!(env, Environment::no_egress());
        let proxy = parse("secrets:\n  T: { deliver: proxy, hosts: [a.example.com], header: X-Token }\negress: { allow: [ { host: \"*.example.com\" } ] }\n").unwrap();
        let Delivery::Proxy { format, .. } = &proxy.secrets["T"].deliver else {
            panic!("{proxy:?}")
        };
        assert_eq!(format, DEFAULT_FORMAT);
    }

    #[test]
    fn environment_errors_are_located() {
        assert_table(
            parse,
            &[
            ("approval: maybe\n", "e.yaml:1:11: approval: unknown variant `maybe`, expected `required` or `none`"),
            ("secrets:\n  dev_token: { deliver: env }\n", "e.yaml:2:3: secrets: `dev_token` is not a valid secret name; use upper-case letters, digits and `_`, not starting with a digit"),
            ("secrets:\n  T: { deliver: mail }\n", "e.yaml:2:17: secrets.T.deliver: unknown variant `mail`, expected one of `env`, `file`, `proxy`"),
            ("secrets:\n  T: { deliver: env, header: X }\n", "e.yaml:2:6: secrets.T: `hosts`, `header` and `format` belong to `deliver: proxy` only"),
            ("secrets:\n  T: { deliver: file, hosts: [a.com] }\n", "e.yaml:2:6: secrets.T: `hosts`, `header` and `format` belong to `deliver: proxy` only"),
            ("secrets:\n  T: { deliver: proxy, header: X }\n", "e.yaml:2:6: secrets.T: `deliver: proxy` needs `hosts`, the names the header is added for"),
            ("secrets:\n  T: { deliver: proxy, hosts: [], header: X }\n", "e.yaml:2:6: secrets.T: `hosts` is empty; list the names the header is added for"),
            ("secrets:\n  T: { deliver: proxy, hosts: [a.com] }\n", "e.yaml:2:6: secrets.T: `deliver: proxy` needs `header`, e.g. `header: Authorization`"),
            ("secrets:\n  T: { deliver: proxy, hosts: [\"*.a.com\"], header: X }\n", "e.yaml:2:6: secrets.T: `*.a.com` is not an exact host name; a credential is bound to names like registry.example.com (no wildcards)"),
            ("secrets:\n  T: { deliver: proxy, hosts: [a.com], header: \"X Y\" }\n", "e.yaml:2:6: secrets.T: `X Y` is not an HTTP header name"),
            ("secrets:\n  T: { deliver: proxy, hosts: [a.com], header: X, format: Bearer }\n", "e.yaml:2:6: secrets.T: `format` `Bearer` does not contain `{secret}`, where the value goes"),
            ("secrets:\n  T: { deliver: proxy, hosts: [a.com], header: X, format: \"{secret}\\r\\nX: y\" }\n", "e.yaml:2:6: secrets.T: `format` cannot contain CR, LF or NUL (header injection)"),
            ("secrets:\n  T: { deliver: env, colour: red }\n", "e.yaml:2:22: secrets.T: unknown field `colour`, expected one of `deliver`, `hosts`, `header`, `format`"),
            ("secrets:\n  T: { deliver: env }\n  T: { deliver: file }\n", "e.yaml:2:3: secrets: `T` appears twice in this mapping; each key may appear once"),
            ("secrets:\n  T:\n    deliver: proxy\n    hosts: [b.com]\n    header: X\n", "e.yaml:1:1: secret `T` is bound to `b.com`, which no `host` rule"),
            ("match: {}\n", "e.yaml:1:8: match: `match` is empty; give at least one of repositories, refs, workflows, events, or leave `match` out"),
            ("match:\n  refs: []\n", "e.yaml:2:9: match.refs: this list is empty, so no job could match; list at least one pattern or leave the field out"),
            ("match:\n  refs: [\"v?\", \"+x\"]\n", "e.yaml:2:16: match.refs[1]: pattern `+x`: `+` is not supported; write `\\+` for a literal `+`"),
            ("match:\n  branches: [main]\n", "e.yaml:2:3: match: unknown field `branches`, expected one of `repositories`, `refs`, `workflows`, `events`"),
            ("image: alpine\n", "e.yaml:1:8: image: unknown image `alpine` (available: host)"),
            ("limits: { pids: 1 }\n", "e.yaml:1:17: limits.pids: `1` is out of range; give a number of processes from 16 to 4194304"),
            ("egress: { mode: open }\n", "e.yaml:1:17: egress.mode: unknown variant `open`, expected `enforce` or `audit`"),
            ("colour: red\n", "e.yaml:1:1: unknown field `colour`"),
            ("approval_timeout: 5m\n", "e.yaml:1:1: `approval_timeout` applies only with `approval: required`"),
            ("approval: required\napproval_timeout: soon\n", "e.yaml:2:19: approval_timeout: `soon` is not a duration"),
            ],
        );
    }

    #[test]
    fn approval_timeout_is_read() {
        let env = parse("approval: required\napproval_timeout: 90s\n").unwrap();
        assert_eq!(env.approval_timeout, std::time::Duration::from_secs(90));
    }

    #[test]
    fn audit_mode_does_not_need_host_rules_for_proxy_secrets() {
        let env = parse("egress: { mode: audit }\nsecrets:\n  T: { deliver: proxy, hosts: [b.com], header: X }\n");
        assert!(env.is_ok(), "{env:?}");
    }

    #[test]
    fn host_rule_matching_for_secret_binding() {
        assert!(host_rule_allows(
            "registry.example.com",
            "registry.example.com"
        ));
        assert!(host_rule_allows(
            "Registry.Example.com.",
            "registry.example.com"
        ));
        assert!(host_rule_allows("*.example.com", "registry.example.com"));
        assert!(!host_rule_allows("*.example.com", "example.com"));
        assert!(!host_rule_allows("*.example.com", "evilexample.com"));
        assert!(!host_rule_allows("example.com", "registry.example.com"));
    }
}
