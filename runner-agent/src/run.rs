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
//! header and a `<== [i/n] name: result` trailer, each on a line of its own, with the
//! job's terminal control sequences shown rather than obeyed (`crate::output`); the
//! agent's own messages go to stderr. Secret values (and their encoded forms) are masked
//! in everything printed and logged.
//!
//! Order of admission, each a gate the job must pass before the next: the job file and
//! host config are valid; the claims match the environment's `match`; where the
//! environment says `approval: required`, an operator approves this job id
//! (`crate::approval`); only then are the environment's secrets read from the store
//! (`crate::credentials`) and the sandbox, the fence and the proxy created. Every job that
//! got an id leaves a record under `state_dir/jobs/JOB-ID/` (`crate::record`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use zeroize::Zeroizing;

use crate::approval::{self, Approvals};
use crate::cgroup::{CgroupLimits, CGROUP_ROOT};
use crate::config::{
    format_duration, Approval, Claims, ConfigError, EffectiveLimits, HostConfig, JobFile,
    ResolvedJob,
};
use crate::credentials::{self, Released};
use crate::egress::audit_log::AuditLog;
use crate::egress::proxy_process::upstream_dns;
use crate::egress::{EgressSettings, RunnerEgress};
use crate::interception::Interception;
use crate::mask::Masker;
use crate::output::MaskedWriter;
use crate::record::{self, ApprovalRecord, JobRecord};
use crate::sandbox::protocol::{StepEnd, StepRequest};
use crate::sandbox::{self, Sandbox, SandboxConfig, BPF_PIN_ROOT, WORKSPACE};
use crate::secrets::SecretStore;
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
    let host = HostConfig::load_or_builtin(config)?;
    let text = JobFile::read(job_path)?;
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
        None => HostConfig::load_or_builtin(config)
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

/// Memory of a runner's proxy process: ample for its work (tens of MiB), bounded for a job
/// that makes it hold much more.
pub const PROXY_MEMORY: u64 = 512 << 20;

/// Tasks of a runner's proxy process (its tokio workers and blocking threads).
pub const PROXY_PIDS: u64 = 1024;

/// The limits of a runner's proxy process: its own memory and task bounds, and the job's
/// CPU share (the proxy works for the job; a job cannot make it spend more CPU than the
/// job itself may).
fn proxy_limits(job: &EffectiveLimits) -> CgroupLimits {
    CgroupLimits {
        memory: Some(PROXY_MEMORY),
        pids: Some(PROXY_PIDS),
        cpus: cgroup_limits(job).cpus,
    }
}

/// The cgroup limits of a job's effective limits.
fn cgroup_limits(limits: &EffectiveLimits) -> CgroupLimits {
    CgroupLimits {
        memory: Some(limits.memory),
        pids: Some(limits.pids),
        cpus: Some(limits.cpus),
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
        if let Some(field) = rule.mismatch(&request.claims) {
            eprintln!(
                "error: the job's claims do not match environment `{}`: {field}",
                resolved.environment_name
            );
            return EXIT_SETUP;
        }
    }

    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "error: runner-agent run needs root: it creates namespaces, cgroups and eBPF programs for the runner"
        );
        return EXIT_SETUP;
    }
    // The agent holds secrets in memory from here on: no core dump may write them to
    // disk, and no process of the same uid may read them through /proc (prctl(2),
    // PR_SET_DUMPABLE).
    let _ = nix::sys::prctl::set_dumpable(false);

    let job_id = new_job_id();
    let audit_path = request
        .audit_log
        .clone()
        .unwrap_or_else(|| record::job_dir(&host.state_dir, &job_id).join("audit.jsonl"));
    let mut record = JobRecord {
        job: job_id.clone(),
        name: job.name.clone(),
        job_file: request.job.clone(),
        environment: resolved.environment_name.clone(),
        claims: request.claims.clone(),
        approval: ApprovalRecord::not_required(),
        secrets: Vec::new(),
        runner: None,
        audit_log: audit_path.clone(),
        started_at: record::now(),
        ended_at: None,
        status: "running".to_owned(),
        detail: None,
        exit_code: None,
    };

    // Approval comes before anything of the environment is touched: no secret is read
    // and no sandbox or proxy exists while the job waits.
    if resolved.environment.approval == Approval::Required {
        match await_approval(
            &host,
            request.config.as_deref(),
            &job,
            &resolved,
            &request.claims,
            &job_id,
        )
        .await
        {
            Ok(approved) => record.approval = approved,
            Err((approval, why)) => {
                record.approval = approval;
                return refuse(&mut record, &host, "refused", why);
            }
        }
    }

    let released = match release_secrets(&host, &resolved) {
        Ok(released) => released,
        Err(why) => return refuse(&mut record, &host, "setup failed", why),
    };
    record.secrets = released.record.clone();
    // From here on the record and what is printed mask the job's name like its output:
    // a name can be built from a secret's value (found by an attack run).
    record.name = released.masker.mask_str(&record.name);
    let masker = released.masker.clone();
    if let Err(err) = record.write(&host.state_dir) {
        eprintln!("error: {err}");
        return EXIT_SETUP;
    }

    let audit_log = match AuditLog::create(
        &audit_path,
        released.masker.clone(),
        resolved.limits.audit_log,
    ) {
        Ok(log) => Arc::new(log),
        Err(err) => {
            let why = format!("audit log {}: {err}", audit_path.display());
            return refuse(&mut record, &host, "setup failed", why);
        }
    };

    let admitted = Admitted {
        job: &job,
        host: &host,
        resolved: &resolved,
        job_id: &job_id,
    };
    let (code, detail) = admitted.run(released, audit_log, &mut record).await;
    let detail = detail.map(|text| masker.mask_str(&text));
    let status = match code {
        EXIT_OK => "succeeded",
        EXIT_SETUP => "setup failed",
        _ => "failed",
    };
    finish_record(&mut record, &host, status, detail, code);
    code
}

/// The environment's secrets, read from the store (none when it declares none).
fn release_secrets(host: &HostConfig, resolved: &ResolvedJob) -> Result<Released, String> {
    if resolved.environment.secrets.is_empty() {
        return Ok(Released::none());
    }
    let store = SecretStore::open(&host.state_dir)
        .map_err(|err| format!("cannot open the secret store: {err}"))?;
    credentials::release(&store, &resolved.environment_name, &resolved.environment)
        .map_err(|err| err.to_string())
}

/// Stops a job before anything ran: says why, records the outcome, returns exit 2.
fn refuse(record: &mut JobRecord, host: &HostConfig, status: &str, why: String) -> i32 {
    eprintln!("error: {why}");
    finish_record(record, host, status, Some(why), EXIT_SETUP);
    EXIT_SETUP
}

/// Writes the record's outcome, reporting (not failing on) a write error.
fn finish_record(
    record: &mut JobRecord,
    host: &HostConfig,
    status: &str,
    detail: Option<String>,
    code: i32,
) {
    if let Err(err) = record.finish(&host.state_dir, status, detail, code) {
        eprintln!("error: {err}");
    }
}

/// Files an approval request for the job and waits for the operator's answer, the
/// environment's `approval_timeout`, or a signal to the agent. Returns the approval, or
/// what the record should say and why the job is refused.
async fn await_approval(
    host: &HostConfig,
    config_path: Option<&Path>,
    job: &JobFile,
    resolved: &ResolvedJob,
    claims: &Claims,
    job_id: &str,
) -> Result<ApprovalRecord, (ApprovalRecord, String)> {
    let approvals = Approvals::new(&host.state_dir);
    let timeout = resolved.environment.approval_timeout;
    let request = approval::new_request(
        job_id,
        &job.name,
        &resolved.environment_name,
        claims,
        timeout,
    );
    if let Err(err) = approvals.request(&request) {
        return Err((
            ApprovalRecord::timed_out(),
            format!("cannot ask for approval: {err}"),
        ));
    }
    let config_flag = config_path
        .map(|p| format!(" --config {}", p.display()))
        .unwrap_or_default();
    eprintln!(
        "runner-agent: job {} ({job_id}) waits for approval to use environment `{}` (up to {}); approve it with:\n  runner-agent approve {job_id}{config_flag}",
        job.name,
        resolved.environment_name,
        format_duration(timeout)
    );
    let outcome = tokio::select! {
        outcome = approvals.wait(job_id, timeout) => outcome,
        _ = shutdown_signal() => {
            approvals.withdraw(job_id);
            return Err((
                ApprovalRecord::timed_out(),
                "cancelled by a signal to the agent while waiting for approval".to_owned(),
            ));
        }
    };
    match outcome {
        Ok(approval::Outcome::Approved(answer)) => {
            eprintln!("runner-agent: job {job_id} approved by {}", answer.by);
            Ok(ApprovalRecord::answered("approved", &answer))
        }
        Ok(approval::Outcome::Rejected(answer)) => Err((
            ApprovalRecord::answered("rejected", &answer),
            format!("job {job_id} was rejected by {}; refusing it", answer.by),
        )),
        Ok(approval::Outcome::TimedOut) => Err((
            ApprovalRecord::timed_out(),
            format!(
                "job {job_id} was not approved within {}; refusing it",
                format_duration(timeout)
            ),
        )),
        Err(err) => Err((
            ApprovalRecord::timed_out(),
            format!("waiting for approval: {err}"),
        )),
    }
}

/// A job that passed every check and was given its environment.
struct Admitted<'a> {
    job: &'a JobFile,
    host: &'a HostConfig,
    resolved: &'a ResolvedJob,
    job_id: &'a str,
}

impl Admitted<'_> {
    /// Runs the job: sandbox, egress, steps, destroy. Returns the exit code and, when the
    /// job did not succeed, why (for the job record).
    async fn run(
        &self,
        released: Released,
        audit_log: Arc<AuditLog>,
        record: &mut JobRecord,
    ) -> (i32, Option<String>) {
        let Admitted {
            job,
            host,
            resolved,
            job_id,
        } = *self;
        let setup_failed = |why: String| {
            eprintln!("error: {why}");
            (EXIT_SETUP, Some(why))
        };
        let run_dir = match RunDir::open(&host.run_dir) {
            Ok(dir) => dir,
            Err(err) => return setup_failed(err.to_string()),
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
            Err(err) => return setup_failed(format!("cannot find the runner-agent binary: {err}")),
        };

        // The job's own CA, when the proxy must see inside TLS (credentials it adds, or
        // method and path rules). Its certificate is trusted inside this sandbox only;
        // its key goes to the proxy process and nowhere else.
        let interception =
            match Interception::prepare(job_id, &resolved.environment.egress, &released.proxy) {
                Ok(interception) => interception,
                Err(err) => return setup_failed(format!("cannot set up TLS interception: {err}")),
            };
        let secret_file_names: Vec<String> =
            released.files.iter().map(|f| f.name.clone()).collect();
        let mut files = Vec::new();
        if let Some(interception) = &interception {
            files.extend(interception.sandbox_files());
        }
        let ca_env = interception.is_some();
        let sandbox_config = SandboxConfig {
            run_dir: host.run_dir.clone(),
            runner_pool: host.network.runner_pool,
            max_concurrent: host.runner.max_concurrent,
            limits: cgroup_limits(&resolved.limits),
            disk_bytes: resolved.limits.disk,
            // The agent's own state, and this job's audit log wherever --audit-log put it
            // (a shared log outside state_dir holds other jobs' events).
            extra_masks: vec![
                host.state_dir.clone(),
                host.run_dir.clone(),
                record.audit_log.clone(),
            ],
            cgroup_root: PathBuf::from(CGROUP_ROOT),
            init_program: init_program.clone(),
            files,
            secret_files: released.files,
            bpf_pin_root: PathBuf::from(BPF_PIN_ROOT),
        };

        let span =
            tracing::info_span!("job", job = %job_id, name = %released.masker.mask_str(&job.name));
        let _enter = span.enter();
        let started = Instant::now();
        let created = Sandbox::create(&sandbox_config, job_id).await;
        // The file secrets are in the sandbox now (or nowhere): zero this copy.
        drop(sandbox_config);
        let mut sandbox = match created {
            Ok(sandbox) => sandbox,
            Err(err) => return setup_failed(format!("cannot set up the sandbox: {err}")),
        };
        record.runner = Some(sandbox.runner().to_owned());
        if let Err(err) = record.write(&host.state_dir) {
            eprintln!("warning: {err}");
        }
        eprintln!(
            "runner-agent: job {} ({job_id}) on runner {} in environment `{}`",
            released.masker.mask_str(&job.name),
            sandbox.runner(),
            resolved.environment_name
        );
        let settings = EgressSettings {
            program: &init_program,
            egress: &resolved.environment.egress,
            upstream_dns: upstream_dns(host.network.upstream_dns.as_deref()),
            internal: vec![ipnet::IpNet::V4(host.network.runner_pool)],
            // The proxy's configuration takes the credentials and the CA: the agent
            // keeps no copy of either while the job runs.
            interception: interception.map(|i| i.into_proxy_config(released.proxy)),
            proxy_limits: proxy_limits(&resolved.limits),
        };
        let mut egress =
            match RunnerEgress::start(&mut sandbox, job_id, settings, audit_log.clone()).await {
                Ok(egress) => egress,
                Err(err) => {
                    if let Err(err) = sandbox.destroy().await {
                        eprintln!("error: {err}");
                    }
                    return setup_failed(format!("cannot set up egress: {err}"));
                }
            };
        if !sandbox.idmapped() {
            eprintln!("warning: the host root could not be idmapped; host files appear owned by nobody inside");
        }

        let deadline = started + resolved.job_timeout;
        let steps = StepContext {
            job,
            resolved,
            job_id,
            audit: &audit_log,
            secret_env: &released.env,
            secret_files: &secret_file_names,
            ca_env,
            masker: &released.masker,
        };
        let (outcomes, interruption) = steps.run(&mut sandbox, deadline).await;
        let runner = sandbox.runner().to_owned();
        // Nothing of the job may outlive its proxy: what a background process tries while
        // no proxy listens would go unrecorded. (A failure here is reported by destroy's
        // checks below.)
        if let Err(err) = sandbox.kill_processes().await {
            tracing::warn!(%err, "could not end the runner's processes before its proxy");
        }
        let counters = sandbox.fence_counters();
        egress.stop_proxy().await;
        // A proxy that had to be killed at the end fails the job (ProxyProcess::stop).
        let interruption = interruption.or_else(|| audit_log.failure());
        let destroyed = sandbox.destroy().await;
        egress.finish().await;

        let failed_step = outcomes.iter().find(|o| o.failed() && !o.continue_on_error);
        let mut detail = interruption
            .clone()
            .or_else(|| failed_step.map(|o| format!("step `{}` failed", o.name)));
        let mut code = if detail.is_some() {
            EXIT_FAILED
        } else {
            EXIT_OK
        };
        let summary = summary(
            job,
            job_id,
            &runner,
            &outcomes,
            interruption.as_deref(),
            started.elapsed(),
            &(audit_log.summary() + &fence_summary(counters.as_ref())),
        );
        print!("{}", released.masker.mask_str(&summary));
        if let Err(err) = destroyed {
            eprintln!("error: {err}");
            detail = Some(err.to_string());
            code = EXIT_FAILED;
        }
        (code, detail)
    }
}

/// What every step of one job shares.
struct StepContext<'a> {
    job: &'a JobFile,
    resolved: &'a ResolvedJob,
    job_id: &'a str,
    /// The job's audit log: a job whose events reach its budget is stopped.
    audit: &'a AuditLog,
    /// `deliver: env` secrets.
    secret_env: &'a [(String, Zeroizing<String>)],
    /// Names of the `deliver: file` secrets.
    secret_files: &'a [String],
    /// Whether the job has a CA of its own (TLS interception), which its tools must trust.
    ca_env: bool,
    /// Masks secret values in what is printed.
    masker: &'a Masker,
}

impl StepContext<'_> {
    /// Runs the steps in order until one fails (without `continue-on-error`), the job's
    /// deadline passes, or the agent is told to stop. Returns each step's outcome and, if the
    /// job was cut short, why.
    async fn run(
        &self,
        sandbox: &mut Sandbox,
        deadline: Instant,
    ) -> (Vec<StepOutcome>, Option<String>) {
        let job = self.job;
        let resolved = self.resolved;
        let total = job.steps.len();
        let mut outcomes = Vec::with_capacity(total);
        let mut stop: Option<String> = None;
        let mut failed = false;
        // Everything printed while steps run goes through the masker: step output, and the
        // headers and trailers (a step's name could be built from a secret too).
        let mut stdout = MaskedWriter::new(tokio::io::stdout(), self.masker);
        for (index, step) in job.steps.iter().enumerate() {
            let label = format!("[{}/{}] {}", index + 1, total, step.name);
            // Reached as the previous step ended (its end won the race below): no further
            // step starts.
            if stop.is_none() {
                stop = self
                    .audit
                    .budget_report()
                    .or_else(|| self.audit.failure())
                    .map(|r| format!("stopped: {r}"));
            }
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
                env: self.step_env(step, sandbox),
                cwd: step_cwd(step.working_directory.as_deref()),
                timeout_ms: step_timeout
                    .map(|t| t.as_millis().max(1) as u64)
                    .unwrap_or(0),
            };
            let _ = stdout.end_line().await;
            let _ = stdout.write_all(format!("==> {label}\n").as_bytes()).await;
            let _ = stdout.settle().await;
            let limits_before = sandbox.limit_events();
            let began = Instant::now();
            let result = tokio::select! {
                result = sandbox.run_step(request, &mut stdout) => Some(result),
                _ = tokio::time::sleep(left) => None,
                _ = shutdown_signal() => {
                    stop = Some("cancelled by a signal to the agent".to_owned());
                    None
                }
                () = self.audit.exhausted() => {
                    stop = self.audit.budget_report().map(|r| format!("stopped: {r}"));
                    None
                }
            };
            let elapsed = began.elapsed();
            // Set only when a signal or the audit budget cut the step short (the job
            // timeout is noted below and keeps its own wording).
            let interrupted = stop.clone().filter(|_| result.is_none());
            // The step's output has ended: release what the masker held back, and end the
            // line the job left open, so that the trailer is a line of its own.
            let _ = stdout.end_line().await;
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
            let mut description = match &interrupted {
                Some(why) => format!("failed: {why}"),
                None => describe(end, step_timeout),
            };
            // "killed by signal 9" says little: name the limit the kernel enforced.
            if let Some(note) = sandbox
                .limit_events()
                .since(&limits_before, &cgroup_limits(&resolved.limits))
            {
                description = format!("{description}; {note}");
                if let Some(why) = stop.as_mut() {
                    *why = format!("{why} ({note})");
                }
            }
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
            let _ = stdout.settle().await;
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
        // The proxy may have ended during the last step (see AuditLog::fail_job).
        if stop.is_none() {
            stop = self.audit.failure().map(|r| format!("stopped: {r}"));
        }
        (outcomes, stop)
    }

    /// The complete environment of a step: a fixed base (nothing of the agent's own
    /// environment leaks in), then the job's `env`, then the step's, then `NAME_FILE`
    /// (the path) for each `deliver: file` secret and the `deliver: env` secrets.
    fn step_env(&self, step: &crate::config::Step, sandbox: &Sandbox) -> Vec<(String, String)> {
        let (job, resolved, job_id) = (self.job, self.resolved, self.job_id);
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
        if self.ca_env {
            env.extend(crate::interception::trust_env());
        }
        // The job's own `env` cannot override a secret: the environment decides its value.
        env.extend(job.env.clone());
        env.extend(step.env.clone());
        for name in self.secret_files {
            env.insert(
                format!("{name}_FILE"),
                format!("{}/{name}", crate::sandbox::SECRETS_DIR),
            );
        }
        for (name, value) in self.secret_env {
            env.insert(name.clone(), value.to_string());
        }
        env.into_iter().collect()
    }
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

/// `working-directory` relative to the workspace, or absolute.
fn step_cwd(working_directory: Option<&str>) -> PathBuf {
    match working_directory {
        None => PathBuf::from(WORKSPACE),
        Some(dir) if dir.starts_with('/') => PathBuf::from(dir),
        Some(dir) => Path::new(WORKSPACE).join(dir),
    }
}

/// The end-of-job summary (the caller masks and prints it).
fn summary(
    job: &JobFile,
    job_id: &str,
    runner: &str,
    outcomes: &[StepOutcome],
    interruption: Option<&str>,
    elapsed: Duration,
    egress_summary: &str,
) -> String {
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
    text
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
