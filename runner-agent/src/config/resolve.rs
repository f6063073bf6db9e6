//! Fitting a job to the host config, and the effective-policy summary of `check`.
//!
//! Resolution rules:
//! - the job's environment (default `default`) must exist in the host config; the error
//!   points at the job's `environment:` value, or, when the job named none, says it uses
//!   the implicit `default` and lists the environments that exist;
//! - image: the job's `image`, else the environment's, else `runner.image`;
//! - limits: the environment's `limits` override `runner.limits` field by field;
//! - job timeout: the job's `timeout` if given, capped by the effective limits' timeout
//!   (a job cannot grant itself more time than the operator allows).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use egress_proxy::config::{Mode, RuleConfig, RuleTarget};

use super::environment::{Approval, Delivery, Environment};
use super::error::{invalid_at, ConfigError};
use super::host::HostConfig;
use super::job::{JobFile, DEFAULT_ENVIRONMENT};
use super::limits::EffectiveLimits;
use super::locate::value_position;
use super::units::format_duration;

/// A job with everything the host config decides for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedJob {
    /// The environment's name.
    pub environment_name: String,
    /// The environment (copied from the host config).
    pub environment: Environment,
    /// The image the runner starts from.
    pub image: String,
    /// Limits of the runner.
    pub limits: EffectiveLimits,
    /// Timeout of the whole job: min(job timeout or limit, limit).
    pub job_timeout: Duration,
}

impl HostConfig {
    /// Decides environment, image, limits and timeout for `job` (parsed from `job_text`,
    /// read from `job_path`; both are used to locate errors).
    pub fn resolve(
        &self,
        job: &JobFile,
        job_path: &Path,
        job_text: &str,
    ) -> Result<ResolvedJob, ConfigError> {
        let Some(environment) = self.environments.get(&job.environment) else {
            let defined = if self.environments.is_empty() {
                "none are defined".to_owned()
            } else {
                let names: Vec<&str> = self.environments.keys().map(String::as_str).collect();
                format!("defined: {}", names.join(", "))
            };
            let at = value_position(job_text, &["environment"]);
            let message = if !names_environment(job_text) {
                format!(
                    "the job names no environment, so it uses the implicit `{DEFAULT_ENVIRONMENT}`, \
                     which the host config does not define ({defined}); add `environment: NAME`"
                )
            } else {
                format!(
                    "unknown environment `{}`: the host config does not define it ({defined})",
                    job.environment
                )
            };
            return Err(ConfigError::Resolve(invalid_at(job_path, at, message)));
        };
        let image = job
            .image
            .clone()
            .or_else(|| environment.image.clone())
            .unwrap_or_else(|| self.runner.image.clone());
        let limits = environment
            .limits
            .unwrap_or_default()
            .or(&self.runner.limits)
            .effective();
        let job_timeout = job.timeout.unwrap_or(limits.timeout).min(limits.timeout);
        Ok(ResolvedJob {
            environment_name: job.environment.clone(),
            environment: environment.clone(),
            image,
            limits,
            job_timeout,
        })
    }
}

/// Whether the job text has a top-level `environment` with a value (parsed again rather
/// than scanned, so that flow-style files are read correctly too).
fn names_environment(job_text: &str) -> bool {
    serde_yaml::from_str::<serde_yaml::Value>(job_text)
        .ok()
        .and_then(|doc| doc.get("environment").map(|v| !v.is_null()))
        .unwrap_or(false)
}

/// The human summary printed by `runner-agent check`: the host settings, then every
/// environment (or, with a job, only the job's, and what the job gets). Secret values
/// are never part of the config, so they cannot appear here.
pub fn render_effective(config: &HostConfig, resolved: Option<&ResolvedJob>) -> String {
    let mut out = String::new();
    let pool = config.network.runner_pool;
    let dns = match &config.network.upstream_dns {
        Some(list) => list
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        None => "the host's resolvers".to_owned(),
    };
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(out, "state_dir:      {}", config.state_dir.display());
    let _ = writeln!(out, "run_dir:        {}", config.run_dir.display());
    let _ = writeln!(out, "runner_pool:    {pool} (a /30 per runner)");
    let _ = writeln!(out, "upstream_dns:   {dns}");
    let _ = writeln!(out, "image:          {}", config.runner.image);
    let _ = writeln!(out, "max_concurrent: {}", config.runner.max_concurrent);
    let _ = writeln!(out, "limits:         {}", config.runner.limits.effective());
    match resolved {
        Some(job) => {
            render_environment(&mut out, &job.environment_name, &job.environment);
            let _ = writeln!(out, "job:");
            let _ = writeln!(out, "  environment: {}", job.environment_name);
            let _ = writeln!(out, "  image: {}", job.image);
            let _ = writeln!(out, "  limits: {}", job.limits);
            let _ = writeln!(out, "  job timeout: {}", format_duration(job.job_timeout));
        }
        None => {
            if config.environments.is_empty() {
                let _ = writeln!(out, "no environments: no job can run");
            }
            for (name, env) in &config.environments {
                render_environment(&mut out, name, env);
            }
        }
    }
    out
}

fn render_environment(out: &mut String, name: &str, env: &Environment) {
    let _ = writeln!(out, "environment {name}:");
    let approval = match env.approval {
        Approval::Required => format!(
            "required (a job waits up to {} for `runner-agent approve`)",
            format_duration(env.approval_timeout)
        ),
        Approval::NotRequired => "none".to_owned(),
    };
    let _ = writeln!(out, "  approval: {approval}");
    match &env.match_ {
        None => {
            let _ = writeln!(out, "  match: any job");
        }
        Some(m) => {
            let _ = writeln!(out, "  match (all of):");
            for line in m.describe() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    let mode = match env.egress.mode {
        Mode::Enforce => "enforce (deny what no rule allows)",
        Mode::Audit => "audit (allow everything, record what would be denied)",
    };
    let _ = writeln!(out, "  egress: {mode}");
    if env.egress.allow.is_empty() {
        let none = match env.egress.mode {
            Mode::Enforce => "allow: nothing",
            Mode::Audit => "allow rules: none (every connection is recorded as would-be denied)",
        };
        let _ = writeln!(out, "    {none}");
    }
    for rule in &env.egress.allow {
        let _ = writeln!(out, "    allow {}", describe_rule(rule));
    }
    if env.secrets.is_empty() {
        let _ = writeln!(out, "  secrets: none");
    } else {
        let _ = writeln!(out, "  secrets:");
    }
    for (secret, spec) in &env.secrets {
        let how = match &spec.deliver {
            Delivery::Env => "env (environment variable)".to_owned(),
            Delivery::File => "file (tmpfs file)".to_owned(),
            Delivery::Proxy {
                hosts,
                header,
                format,
            } => format!(
                "proxy (header {header}: {format} for {}; never visible to the job)",
                hosts.join(", ")
            ),
        };
        let _ = writeln!(out, "    {secret}: {how}");
    }
    if let Some(image) = &env.image {
        let _ = writeln!(out, "  image: {image}");
    }
    if let Some(limits) = &env.limits {
        let _ = writeln!(out, "  limits: {}", limits.describe());
    }
}

fn describe_rule(rule: &RuleConfig) -> String {
    let target = match &rule.target {
        RuleTarget::Host(host) => format!("host {host}"),
        RuleTarget::Cidr(net) => format!("cidr {net}"),
    };
    let ports: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
    let mut text = format!("{target} ports {}", ports.join(","));
    if let Some(methods) = &rule.methods {
        let _ = write!(text, " methods {}", methods.join(","));
    }
    if let Some(paths) = &rule.paths {
        let _ = write!(text, " paths {}", paths.join(","));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::host::tests::DESIGN_EXAMPLE;
    use crate::config::units::GIB;

    fn host(text: &str) -> HostConfig {
        HostConfig::parse(Path::new("host.yaml"), text).unwrap()
    }

    fn resolve(config: &HostConfig, job_text: &str) -> Result<ResolvedJob, String> {
        let path = Path::new("job.yaml");
        let job = JobFile::parse(path, job_text).map_err(|e| e.to_string())?;
        config
            .resolve(&job, path, job_text)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn resolves_the_design_example() {
        let config = host(DESIGN_EXAMPLE);
        let job = resolve(
            &config,
            "environment: ci\ntimeout: 30m\nsteps: [ { run: make } ]\n",
        )
        .unwrap();
        assert_eq!(job.environment_name, "ci");
        assert_eq!(job.environment, config.environments["ci"]);
        assert_eq!(job.image, "host");
        assert_eq!(job.limits.memory, 4 * GIB);
        assert_eq!(job.job_timeout, Duration::from_secs(1800));
    }

    #[test]
    fn environment_limits_override_and_cap_the_job_timeout() {
        let config = host(
            "runner:\n  limits: { memory: 2GiB, timeout: 2h }\n\
             environments:\n  small:\n    limits: { memory: 512MiB, timeout: 10m }\n  plain: {}\n",
        );
        let job = resolve(
            &config,
            "environment: small\ntimeout: 1h\nsteps: [ { run: x } ]\n",
        )
        .unwrap();
        assert_eq!(job.limits.memory, 512 << 20);
        assert_eq!(job.limits.pids, 4096);
        assert_eq!(job.limits.timeout, Duration::from_secs(600));
        assert_eq!(
            job.job_timeout,
            Duration::from_secs(600),
            "capped by the limit"
        );
        let job = resolve(&config, "environment: plain\nsteps: [ { run: x } ]\n").unwrap();
        assert_eq!(job.limits.memory, 2 * GIB);
        assert_eq!(
            job.job_timeout,
            Duration::from_secs(7200),
            "the limit when the job says nothing"
        );
        let job = resolve(
            &config,
            "environment: plain\ntimeout: 5m\nsteps: [ { run: x } ]\n",
        )
        .unwrap();
        assert_eq!(
            job.job_timeout,
            Duration::from_secs(300),
            "shorter job timeout kept"
        );
    }

    #[test]
    fn builtin_default_runs_jobs_without_environment() {
        let job = resolve(&HostConfig::builtin_default(), "steps: [ { run: x } ]\n").unwrap();
        assert_eq!(job.environment_name, "default");
        assert!(job.environment.egress.allow.is_empty());
        assert_eq!(job.job_timeout, Duration::from_secs(6 * 3600));
    }

    #[test]
    fn unknown_environments_are_located_in_the_job() {
        let config = host(DESIGN_EXAMPLE);
        assert_eq!(
            resolve(&config, "name: x\nenvironment:  prod   # typo\nsteps: [ { run: x } ]\n").unwrap_err(),
            "job.yaml:2:15: unknown environment `prod`: the host config does not define it (defined: ci, release)"
        );
        assert_eq!(
            resolve(&config, "environment: default\nsteps: [ { run: x } ]\n").unwrap_err(),
            "job.yaml:1:14: unknown environment `default`: the host config does not define it (defined: ci, release)"
        );
        assert_eq!(
            resolve(&config, "steps: [ { run: x } ]\n").unwrap_err(),
            "job.yaml: the job names no environment, so it uses the implicit `default`, which the host config does not define (defined: ci, release); add `environment: NAME`"
        );
        assert_eq!(
            resolve(&config, "{ environment: default, steps: [ { run: x } ] }\n").unwrap_err(),
            "job.yaml: unknown environment `default`: the host config does not define it (defined: ci, release)"
        );
        assert!(resolve(&config, "environment:\nsteps: [ { run: x } ]\n")
            .unwrap_err()
            .starts_with("job.yaml:1:1: the job names no environment"));
        let empty = host("environments: {}\n");
        assert!(resolve(&empty, "steps: [ { run: x } ]\n")
            .unwrap_err()
            .contains("(none are defined)"));
    }

    #[test]
    fn render_lists_policy_but_never_values() {
        let config = host(DESIGN_EXAMPLE);
        let all = render_effective(&config, None);
        for want in [
            "state_dir:      /var/lib/runner-agent",
            "runner_pool:    10.249.0.0/16",
            "upstream_dns:   198.51.100.53",
            "limits:         memory 4GiB, pids 4096, cpus 2, disk 8GiB, timeout 6h",
            "environment ci:",
            "    allow host github.com ports 443,22 methods GET,HEAD paths /rust-lang/*",
            "    allow cidr 198.51.100.0/24 ports 5432",
            "    allow host example.com ports 80,443",
            "    DEV_TOKEN: env",
            "environment release:",
            "  approval: required",
            "    refs: refs/tags/v*",
            "    PROD_REGISTRY_TOKEN: proxy (header Authorization: Bearer {secret} for registry.example.com",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        let job = resolve(&config, "environment: release\nsteps: [ { run: x } ]\n").unwrap();
        let one = render_effective(&config, Some(&job));
        assert!(one.contains("environment release:"), "{one}");
        assert!(!one.contains("environment ci:"), "{one}");
        assert!(one.contains("  job timeout: 6h"), "{one}");
        let none = render_effective(&HostConfig::builtin_default(), None);
        assert!(
            none.contains(
                "environment default:\n  approval: none\n  match: any job\n  egress: enforce"
            ),
            "{none}"
        );
        assert!(none.contains("    allow: nothing"), "{none}");
    }
}
