//! Helpers shared by the privileged benchmarks (`sandbox`, `density`): the private
//! network namespace they run in, order statistics, and the clean-up of runners a failed
//! iteration left behind. Each bench target includes this file as `mod common`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use runner_agent::sandbox::SandboxConfig;

pub mod stats {
    //! Order statistics of a sample of durations: median, p90 (nearest rank), min.
    //! Medians rather than means: process start-up times have a long right tail
    //! (scheduler, page cache, RCU grace periods) that a mean would smear over everything.

    use std::time::Duration;

    /// Summary of one sample.
    #[derive(Debug, Clone, Copy)]
    pub struct Summary {
        /// The median (mean of the two middle values for even counts).
        pub median: Duration,
        /// 90th percentile, nearest-rank method.
        pub p90: Duration,
        /// The fastest run.
        pub min: Duration,
    }

    /// Summarises `sample`; `None` when it is empty.
    pub fn summarize(sample: &[Duration]) -> Option<Summary> {
        if sample.is_empty() {
            return None;
        }
        let mut sorted = sample.to_vec();
        sorted.sort();
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        };
        // Nearest rank: the smallest value with at least 90% of the sample at or below it.
        let rank = (n * 9).div_ceil(10).max(1);
        Some(Summary {
            median,
            p90: sorted[rank - 1],
            min: sorted[0],
        })
    }

    /// Milliseconds with two decimals.
    pub fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

pub mod netns {
    //! Moves the whole (still single-threaded) process into a fresh network namespace.

    use anyhow::{bail, Context, Result};
    use nix::sched::{unshare, CloneFlags};

    /// Threads of this process, from /proc/self/status.
    fn thread_count() -> Result<usize> {
        let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no Threads: line in /proc/self/status")
    }

    /// unshare(2) `CLONE_NEWNET`. Refuses to run with more than one thread: the others
    /// would stay in the machine's namespace and anything they create would land there.
    pub fn enter_private() -> Result<()> {
        let threads = thread_count()?;
        if threads != 1 {
            bail!("{threads} threads already run; the network namespace must be entered first");
        }
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        Ok(())
    }
}

/// The first line of /proc/loadavg: the bench shares the machine, and the figures mean
/// little without knowing what else ran.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Whether `program` is on PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Reaps every runner a failed iteration left in the bench's run_dirs, on drop: its
/// cgroups are in the machine's cgroup tree, outside everything temporary.
pub struct ReapGuard {
    /// run_dirs whose leftover runners are reaped.
    pub run_dirs: Vec<PathBuf>,
}

impl Drop for ReapGuard {
    fn drop(&mut self) {
        let run_dirs = std::mem::take(&mut self.run_dirs);
        // A thread of its own: this may run while a runtime is being unwound.
        let reaped = std::thread::spawn(move || -> Result<Vec<String>> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut all = Vec::new();
            for dir in run_dirs.iter().filter(|d| d.exists()) {
                let run_dir = runner_agent::state::RunDir::open(dir)?;
                all.extend(runtime.block_on(runner_agent::sandbox::reap_leftovers(&run_dir))?);
            }
            Ok(all)
        })
        .join();
        match reaped {
            Ok(Ok(reaped)) if reaped.is_empty() => {}
            Ok(Ok(reaped)) => eprintln!("reaped runners left by a failed iteration: {reaped:?}"),
            Ok(Err(err)) => eprintln!("reaping leftovers failed: {err:#}"),
            Err(_) => eprintln!("reaping leftovers panicked"),
        }
    }
}

/// The sandbox configuration `runner-agent run` would build with the built-in host
/// config and default limits, with state under `run_dir`.
pub fn sandbox_config(run_dir: &Path, state_dir: &Path) -> SandboxConfig {
    SandboxConfig::builtin(
        run_dir,
        state_dir,
        PathBuf::from(env!("CARGO_BIN_EXE_runner-agent")),
    )
}

/// The common entry of a privileged bench: without root, says so and succeeds (benches
/// are run on demand, and a plain `cargo bench` must not fail for lack of privilege);
/// otherwise moves into a private network namespace and runs `bench` with a temporary
/// directory whose name starts with `prefix`, which is removed afterwards.
pub fn run_privileged(
    name: &str,
    prefix: &str,
    bench: impl FnOnce(&Path) -> Result<()>,
) -> std::process::ExitCode {
    use anyhow::Context;
    use std::process::ExitCode;

    if !nix::unistd::geteuid().is_root() {
        println!("skipping the {name} benchmark: it needs root (namespaces, cgroups, veth)");
        return ExitCode::SUCCESS;
    }
    let result = netns::enter_private().and_then(|()| {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("temporary directory")?;
        bench(tmp.path())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `dir/job.yaml` (`job`) and `dir/host.yaml`: a host config whose state_dir and
/// run_dir are under `dir`, followed by `host_extra` (more YAML, possibly empty). Returns
/// the two paths, for `runner-agent run JOB --config HOST`.
pub fn write_cli_files(dir: &Path, job: &str, host_extra: &str) -> Result<(PathBuf, PathBuf)> {
    use anyhow::Context;
    let (job_path, config_path) = (dir.join("job.yaml"), dir.join("host.yaml"));
    std::fs::write(&job_path, job).context("write job file")?;
    std::fs::write(
        &config_path,
        format!(
            "state_dir: {}\nrun_dir: {}\n{host_extra}",
            dir.join("state").display(),
            dir.join("run").display()
        ),
    )
    .context("write host config")?;
    Ok((job_path, config_path))
}
