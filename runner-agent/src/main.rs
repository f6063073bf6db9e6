//! `runner-agent` binary: argument parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runner_agent::config::Claims;
use runner_agent::config::{event_claim, ref_claim, repository_claim, workflow_claim};
use runner_agent::egress::proxy_child;
use runner_agent::run::{self, RunRequest, EXIT_BAD_INPUT};
use runner_agent::sandbox::init;

/// Egress-firewalled ephemeral runners: each job runs in a fresh, isolated sandbox that
/// is destroyed afterwards.
#[derive(Debug, Parser)]
#[command(name = "runner-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one job in a fresh sandbox and destroy it afterwards.
    Run {
        /// The job file.
        job: PathBuf,
        /// Host configuration (default: built-in, one `default` environment).
        #[arg(long, value_name = "HOST.yaml")]
        config: Option<PathBuf>,
        /// Write audit events here, one JSON object per line.
        #[arg(long, value_name = "FILE.jsonl")]
        audit_log: Option<PathBuf>,
        /// The repository the job comes from (owner/name).
        #[arg(long, value_name = "R", value_parser = repository_claim)]
        repository: Option<String>,
        /// The git ref the job runs for (refs/heads/main, refs/tags/v1).
        #[arg(long = "ref", value_name = "REF", value_parser = ref_claim)]
        git_ref: Option<String>,
        /// The event that triggered the job (push, pull_request, ...).
        #[arg(long, value_name = "E", value_parser = event_claim)]
        event: Option<String>,
        /// The workflow file (.github/workflows/ci.yaml).
        #[arg(long, value_name = "PATH", value_parser = workflow_claim)]
        workflow: Option<String>,
    },
    /// Approve a job that waits for approval, or list the waiting jobs.
    Approve {
        /// The job id (`j-…`, printed by the waiting `runner-agent run`). Without it, the
        /// waiting jobs are listed.
        job: Option<String>,
        /// Refuse the job instead of approving it.
        #[arg(long)]
        reject: bool,
        /// Host configuration (default: built-in); its state_dir holds the approvals.
        #[arg(long, value_name = "HOST.yaml")]
        config: Option<PathBuf>,
    },
    /// Validate the host config (and a job file) and print the effective policy.
    Check {
        /// Host configuration (default: built-in).
        #[arg(long, value_name = "HOST.yaml")]
        config: Option<PathBuf>,
        /// A job file to validate against it.
        job: Option<PathBuf>,
    },
    /// Set, list and remove secret values (read from stdin or a file, never argv).
    Secrets(runner_agent::secrets::cli::SecretsArgs),
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    // The sandbox init must start single-threaded, before anything else runs.
    // The sandbox init and the proxy process must start single-threaded, before
    // anything else runs.
    match std::env::args_os().nth(1) {
        Some(arg) if arg == init::INIT_ARG => init::main(),
        Some(arg) if arg == proxy_child::PROXY_ARG => proxy_child::main(),
        _ => {}
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let usage_error = err.use_stderr();
            let _ = err.print();
            return exit(if usage_error { EXIT_BAD_INPUT } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNNER_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run {
            job,
            config,
            audit_log,
            repository,
            git_ref,
            event,
            workflow,
        } => {
            let request = RunRequest {
                job,
                config,
                audit_log,
                claims: Claims {
                    repository,
                    git_ref,
                    workflow,
                    event,
                },
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("error: cannot start the runtime: {err}");
                    return exit(run::EXIT_SETUP);
                }
            };
            exit(runtime.block_on(run::run(request)))
        }
        Command::Check { config, job } => exit(run::check(config.as_deref(), job.as_deref())),
        Command::Approve {
            job,
            reject,
            config,
        } => exit(runner_agent::approval::command(
            config.as_deref(),
            job.as_deref(),
            reject,
        )),
        Command::Secrets(args) => exit(runner_agent::secrets::cli::main(args)),
    }
}
