//! `runner-agent run`: one job, in a fresh sandbox, start to finish.
//!
//! Exit codes (DESIGN.md 3.1): 0 every step succeeded (or failed with
//! `continue-on-error`), 1 a step failed or the job timed out or was cancelled, 2 the
//! sandbox or the policy could not be set up (no step ran), 64 the job file or host config
//! is invalid (nothing was created).
//!
//! If the sandbox cannot be destroyed completely, the job is reported as failed (exit 1,
//! or 2 if nothing ran) even if every step succeeded: the operator must learn that
//! something of the runner is left, and the next start of the agent will reap it.
//!
//! Output: step output goes to stdout as it comes, each step between a `==> [i/n] name`
//! header and a `<== [i/n] name: result` trailer; the agent's own messages go to stderr.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::cgroup::{CgroupLimits, CGROUP_ROOT};
use crate::config::{
    format_duration, Approval, Claims, ConfigError, HostConfig, JobFile, ResolvedJob,
};
use crate::egress::audit_log::AuditLog;
use crate::egress::proxy_process::upstream_dns;
use crate::egress::{EgressSettings, RunnerEgress};
use crate::sandbox::protocol::{StepEnd, StepRequest};
use crate::sandbox::{self, Sandbox, SandboxConfig, BPF_PIN_ROOT, WORKSPACE};
use crate::state::RunDir;
use std::sync::Arc;

/// Every step succeeded.
pub const EXIT_OK: i32 = 0;
/// A step failed, the job timed out, or it was cancelled.
pub const EXIT_FAILED: i32 = 1;
/// The sandbox or the policy could not be set up; nothing ran.
pub const EXIT_SETUP: i32 = 2;
/// The job file or host config is invalid.
pub const EXIT_BAD_INPUT: i32 = 64;

/// The `PATH` of every step.
const STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `runner-agent run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The job file.
    pub job: PathBuf,
    /// The host config; the built-in default when absent.
    pub config: Option<PathBuf>,
    /// Where to write audit events (JSON lines); under state_dir when absent.
    pub audit_log: Option<PathBuf>,
    /// What the job claims about itself.
    pub claims: Claims,
}

/// A job that passed validation.
pub struct ValidatedJob {
    /// The job file.
    pub job: JobFile,
    /// The host config.
    pub host: HostConfig,
    /// What the host config decided for the job.
    pub resolved: ResolvedJob,
}

/// Loads and validates the job file and host config (no side effects).
pub fn validate(job_path: &Path, config: Option<&Path>) -> Result<ValidatedJob, ConfigError> {
    let host = match config {
        Some(path) => HostConfig::load(path)?,
        None => HostConfig::builtin_default(),
    };
    let text = std::fs::read_to_string(job_path).map_err(|source| {
        ConfigError::from(egress_proxy::yaml::YamlError::Read {
            path: job_path.to_owned(),
            source,
        })
    })?;
    let job = JobFile::parse(job_path, &text)?;
    let resolved = host.resolve(&job, job_path, &text)?;
    Ok(ValidatedJob {
        job,
        host,
        resolved,
    })
}

/// `runner-agent check`: validates the host config (built-in when absent) and, if given,
/// a job file against it, then prints the effective policy. Returns the exit code.
pub fn check(config: Option<&Path>, job: Option<&Path>) -> i32 {
    let result = match job {
        Some(job_path) => validate(job_path, config)
            .map(|v| crate::config::render_effective(&v.host, Some(&v.resolved))),
        None => match config {
            Some(path) => HostConfig::load(path),
            None => Ok(HostConfig::builtin_default()),
        }
        .map(|host| crate::config::render_effective(&host, None)),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            EXIT_OK
        }
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_BAD_INPUT
        }
    }
}

/// A fresh job id: `j-` and a ULID (48 bits of milliseconds, 80 random bits, Crockford
/// base32), so ids sort by start time.
pub fn new_job_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let value = (millis << 80) | (rand::random::<u128>() & ((1u128 << 80) - 1));
    let mut id = String::with_capacity(28);
    id.push_str("j-");
    for i in (0..26).rev() {
        id.push(ALPHABET[((value >> (i * 5)) & 31) as usize] as char);
    }
    id
}

/// How one step went.
struct StepOutcome {
    name: String,
    result: StepResult,
    elapsed: Duration,
    continue_on_error: bool,
}

enum StepResult {
    Ended(StepEnd),
    Skipped,
}

impl StepOutcome {
    fn failed(&self) -> bool {
        matches!(self.result, StepResult::Ended(end) if !end.success())
    }
}

fn describe(end: StepEnd, timeout: Option<Duration>) -> String {
    match end {
        StepEnd::Exited { code: 0 } => "ok".to_owned(),
        StepEnd::Exited { code } => format!("failed: exit code {code}"),
        StepEnd::Signaled { signal } => format!("failed: killed by signal {signal}"),
        StepEnd::TimedOut => match timeout {
            Some(t) => format!("failed: timed out after {}", format_duration(t)),
            None => "failed: timed out".to_owned(),
        },
    }
}

/// Runs the job; returns the process exit code.
pub async fn run(request: RunRequest) -> i32 {
    let validated = match validate(&request.job, request.config.as_deref()) {
        Ok(v) => v,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_BAD_INPUT;
        }
    };
    let ValidatedJob {
        job,
        host,
        resolved,
    } = validated;

    // Policy checks that need the job's claims: refuse before creating anything.
    if let Some(rule) = &resolved.environment.match_ {
        if let Err(field) = rule.matches(&request.claims) {
            eprintln!(
                "error: the job's claims do not match environment `{}`: {field}",
                resolved.environment_name
            );
            return EXIT_SETUP;
        }
    }
    if resolved.environment.approval == Approval::Required {
        eprintln!(
            "error: environment `{}` requires approval, which this version cannot grant yet; refusing the job",
            resolved.environment_name
        );
        return EXIT_SETUP;
    }
    if !resolved.environment.secrets.is_empty() {
        eprintln!(
            "warning: environment `{}` names secrets; this version does not deliver secrets",
            resolved.environment_name
        );
    }

    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "error: runner-agent run needs root: it creates namespaces, cgroups and eBPF programs for the runner"
        );
        return EXIT_SETUP;
    }

    let job_id = new_job_id();
    let audit_path = request.audit_log.clone().unwrap_or_else(|| {
        host.state_dir
            .join("jobs")
            .join(&job_id)
            .join("audit.jsonl")
    });
    let audit_log = match AuditLog::create(&audit_path) {
        Ok(log) => Arc::new(log),
        Err(err) => {
            eprintln!("error: audit log {}: {err}", audit_path.display());
            return EXIT_SETUP;
        }
    };

    let run_dir = match RunDir::open(&host.run_dir) {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_SETUP;
        }
    };
    match sandbox::reap_leftovers(&run_dir).await {
        Ok(reaped) if !reaped.is_empty() => {
            eprintln!("runner-agent: reaped leftovers of {}", reaped.join(", "))
        }
        Ok(_) => {}
        Err(err) => eprintln!("warning: reaping leftovers: {err}"),
    }

    let init_program = match std::env::current_exe() {
        Ok(path) => path,
        Err(err) => {
            eprintln!("error: cannot find the runner-agent binary: {err}");
            return EXIT_SETUP;
        }
    };
    let sandbox_config = SandboxConfig {
        run_dir: host.run_dir.clone(),
        runner_pool: host.network.runner_pool,
        max_concurrent: host.runner.max_concurrent,
        limits: CgroupLimits {
            memory: Some(resolved.limits.memory),
            pids: Some(resolved.limits.pids),
            cpus: Some(resolved.limits.cpus),
        },
        disk_bytes: resolved.limits.disk,
        extra_masks: vec![host.state_dir.clone(), host.run_dir.clone()],
        cgroup_root: PathBuf::from(CGROUP_ROOT),
        init_program: init_program.clone(),
        files: Vec::new(),
        bpf_pin_root: PathBuf::from(BPF_PIN_ROOT),
    };

    let span = tracing::info_span!("job", job = %job_id, name = %job.name);
    let _enter = span.enter();
    let started = Instant::now();
    let mut sandbox = match Sandbox::create(&sandbox_config, &job_id).await {
        Ok(sandbox) => sandbox,
        Err(err) => {
            eprintln!("error: cannot set up the sandbox: {err}");
            return EXIT_SETUP;
        }
    };
    eprintln!(
        "runner-agent: job {} ({job_id}) on runner {} in environment `{}`",
        job.name,
        sandbox.runner(),
        resolved.environment_name
    );
    let settings = EgressSettings {
        program: &init_program,
        egress: &resolved.environment.egress,
        upstream_dns: upstream_dns(host.network.upstream_dns.as_deref()),
        internal: vec![ipnet::IpNet::V4(host.network.runner_pool)],
    };
    let mut egress =
        match RunnerEgress::start(&mut sandbox, &job_id, settings, audit_log.clone()).await {
            Ok(egress) => egress,
            Err(err) => {
                eprintln!("error: cannot set up egress: {err}");
                if let Err(err) = sandbox.destroy().await {
                    eprintln!("error: {err}");
                }
                return EXIT_SETUP;
            }
        };
    if !sandbox.idmapped() {
        eprintln!("warning: the host root could not be idmapped; host files appear owned by nobody inside");
    }

    let deadline = started + resolved.job_timeout;
    let (outcomes, interruption) =
        run_steps(&mut sandbox, &job, &resolved, &job_id, deadline).await;
    let runner = sandbox.runner().to_owned();
    let counters = sandbox.fence_counters();
    egress.stop_proxy().await;
    let destroyed = sandbox.destroy().await;
    egress.finish().await;

    let mut code =
        if interruption.is_some() || outcomes.iter().any(|o| o.failed() && !o.continue_on_error) {
            EXIT_FAILED
        } else {
            EXIT_OK
        };
    print_summary(
        &job,
        &job_id,
        &runner,
        &outcomes,
        interruption.as_deref(),
        started.elapsed(),
        &(audit_log.summary() + &fence_summary(counters.as_ref())),
    );
    if let Err(err) = destroyed {
        eprintln!("error: {err}");
        code = EXIT_FAILED;
    }
    code
}

/// Runs the steps in order until one fails (without `continue-on-error`), the job's
/// deadline passes, or the agent is told to stop. Returns each step's outcome and, if the
/// job was cut short, why.
async fn run_steps(
    sandbox: &mut Sandbox,
    job: &JobFile,
    resolved: &ResolvedJob,
    job_id: &str,
    deadline: Instant,
) -> (Vec<StepOutcome>, Option<String>) {
    let total = job.steps.len();
    let mut outcomes = Vec::with_capacity(total);
    let mut stop: Option<String> = None;
    let mut failed = false;
    let mut stdout = tokio::io::stdout();
    for (index, step) in job.steps.iter().enumerate() {
        let label = format!("[{}/{}] {}", index + 1, total, step.name);
        if failed || stop.is_some() {
            outcomes.push(StepOutcome {
                name: step.name.clone(),
                result: StepResult::Skipped,
                elapsed: Duration::ZERO,
                continue_on_error: step.continue_on_error,
            });
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let step_timeout = step.timeout.map(|t| t.min(left));
        let request = StepRequest {
            script: step.run.clone(),
            env: step_env(job, step, resolved, sandbox, job_id),
            cwd: step_cwd(step.working_directory.as_deref()),
            timeout_ms: step_timeout
                .map(|t| t.as_millis().max(1) as u64)
                .unwrap_or(0),
        };
        let _ = stdout.write_all(format!("==> {label}\n").as_bytes()).await;
        let _ = stdout.flush().await;
        let began = Instant::now();
        let result = tokio::select! {
            result = sandbox.run_step(request, &mut stdout) => Some(result),
            _ = tokio::time::sleep(left) => None,
            _ = shutdown_signal() => {
                stop = Some("cancelled by a signal to the agent".to_owned());
                None
            }
        };
        let elapsed = began.elapsed();
        let end = match result {
            Some(Ok(end)) => end,
            Some(Err(err)) => {
                stop = Some(format!("the sandbox failed during the step: {err}"));
                StepEnd::Signaled { signal: 9 }
            }
            None => {
                if stop.is_none() {
                    stop = Some(format!(
                        "job timed out after {}",
                        format_duration(resolved.job_timeout)
                    ));
                }
                StepEnd::TimedOut
            }
        };
        let description = describe(end, step_timeout);
        let note = if !end.success() && step.continue_on_error {
            " (continue-on-error)"
        } else {
            ""
        };
        let _ = stdout
            .write_all(
                format!(
                    "<== {label}: {description}{note} ({:.1}s)\n",
                    elapsed.as_secs_f64()
                )
                .as_bytes(),
            )
            .await;
        let _ = stdout.flush().await;
        if !end.success() && !step.continue_on_error {
            failed = true;
        }
        outcomes.push(StepOutcome {
            name: step.name.clone(),
            result: StepResult::Ended(end),
            elapsed,
            continue_on_error: step.continue_on_error,
        });
    }
    (outcomes, stop)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// The complete environment of a step: a fixed base (nothing of the agent's own
/// environment leaks in), then the job's `env`, then the step's.
fn step_env(
    job: &JobFile,
    step: &crate::config::Step,
    resolved: &ResolvedJob,
    sandbox: &Sandbox,
    job_id: &str,
) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = [
        ("PATH", STEP_PATH),
        ("HOME", "/root"),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("SHELL", "/bin/bash"),
        ("LANG", "C.UTF-8"),
        ("CI", "true"),
        ("RUNNER_WORKSPACE", WORKSPACE),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.insert("RUNNER_NAME".into(), sandbox.runner().to_owned());
    env.insert("RUNNER_JOB_ID".into(), job_id.to_owned());
    env.insert(
        "RUNNER_ENVIRONMENT".into(),
        resolved.environment_name.clone(),
    );
    env.extend(crate::egress::proxy_env(sandbox.addresses().host));
    env.extend(job.env.clone());
    env.extend(step.env.clone());
    env.into_iter().collect()
}

/// `working-directory` relative to the workspace, or absolute.
fn step_cwd(working_directory: Option<&str>) -> PathBuf {
    match working_directory {
        None => PathBuf::from(WORKSPACE),
        Some(dir) if dir.starts_with('/') => PathBuf::from(dir),
        Some(dir) => Path::new(WORKSPACE).join(dir),
    }
}

fn print_summary(
    job: &JobFile,
    job_id: &str,
    runner: &str,
    outcomes: &[StepOutcome],
    interruption: Option<&str>,
    elapsed: Duration,
    egress_summary: &str,
) {
    let succeeded =
        interruption.is_none() && !outcomes.iter().any(|o| o.failed() && !o.continue_on_error);
    let mut text = format!(
        "\nJob {} ({job_id}) on {runner}: {} in {:.1}s\n",
        job.name,
        if succeeded { "succeeded" } else { "failed" },
        elapsed.as_secs_f64()
    );
    if let Some(why) = interruption {
        text.push_str(&format!("  {why}\n"));
    }
    for outcome in outcomes {
        let status = match &outcome.result {
            StepResult::Skipped => "skipped",
            StepResult::Ended(end) if end.success() => "ok",
            StepResult::Ended(_) if outcome.continue_on_error => "failed (continue-on-error)",
            StepResult::Ended(_) => "failed",
        };
        text.push_str(&format!(
            "  {status:<28} {} ({:.1}s)\n",
            outcome.name,
            outcome.elapsed.as_secs_f64()
        ));
    }
    text.push_str(egress_summary);
    print!("{text}");
}

/// The fence's counters, one line: what the kernel redirected, let through and refused.
fn fence_summary(counters: Option<&egress_ebpf::Counters>) -> String {
    match counters {
        None => String::new(),
        Some(c) => {
            let mut line = format!(
                "Fence: {} redirected to the proxy (TLS {}, HTTP {}, DNS {}), {} direct to it, {} refused",
                c.redirected_tls + c.redirected_http + c.redirected_dns,
                c.redirected_tls,
                c.redirected_http,
                c.redirected_dns,
                c.allowed_proxy,
                c.denied_total()
            );
            if c.events_lost > 0 {
                line.push_str(&format!(
                    " ({} denials not itemised: event buffer full)",
                    c.events_lost
                ));
            }
            line.push('\n');
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_unique_and_well_formed() {
        let a = new_job_id();
        let b = new_job_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 28);
        assert!(a.starts_with("j-"));
        assert!(a[2..]
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    }

    #[test]
    fn working_directory_is_relative_to_the_workspace() {
        assert_eq!(step_cwd(None), PathBuf::from("/workspace"));
        assert_eq!(step_cwd(Some("src")), PathBuf::from("/workspace/src"));
        assert_eq!(step_cwd(Some("/opt")), PathBuf::from("/opt"));
    }

    #[test]
    fn step_results_are_described() {
        assert_eq!(describe(StepEnd::Exited { code: 0 }, None), "ok");
        assert_eq!(
            describe(StepEnd::Exited { code: 3 }, None),
            "failed: exit code 3"
        );
        assert!(
            describe(StepEnd::TimedOut, Some(Duration::from_secs(60))).contains("timed out after")
        );
    }
}
