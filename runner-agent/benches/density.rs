//! Runner density benchmark: how much host memory each idle runner holds and how long N
//! runners take to come up at once, side by side with N idle `bwrap --unshare-all`
//! sandboxes on the same machine (DESIGN.md 10, "many runners at once"). Results and
//! their reading: runner-agent/BENCHMARKS.md.
//!
//! Run as root: `cargo bench -p runner-agent --bench density [-- --runners N --rounds R
//! --settle-ms MS]`. Without root it prints why and exits 0; without `bwrap` that
//! contender is skipped.
//!
//! Contenders, each brought to N idle sandboxes at once, measured, then torn down:
//!
//! - `Sandbox` (library): N `Sandbox::create` at once in this process, as a long-lived
//!   host daemon would hold them: cgroups with limits, init in its namespaces, netns and
//!   veth, overlay root, seccomp, the eBPF fence. Idle means init waiting for a step.
//! - `runner-agent run` (CLI): N concurrent CLI processes, each running a one-step job
//!   `echo up; sleep`. Each brings its own agent process and egress proxy, as the CLI
//!   does, so this is what N jobs started from a shell cost.
//! - `bwrap --unshare-all --die-with-parent --ro-bind / / --proc /proc --dev /dev sh -c
//!   'echo up; exec sleep'`: no cgroup, no veth, no eBPF, no overlay.
//!
//! Memory is read from /proc/meminfo after a settle before the runners start and again
//! after a settle once all are up, and the change is divided by N. "held" adds up the
//! fields that do not overlap (anonymous and shmem pages, slab, kernel stacks, page
//! tables, per-CPU and vmalloc areas; each is printed too); the drop in MemAvailable is
//! printed beside it as a cross-check, but it moves with the kernel's page cache and
//! reclaim estimates, so it is the noisier of the two. Pages a driver allocates
//! directly (an eBPF ring buffer's, for one) appear in neither field list. The machine is shared with whatever else
//! runs, so each figure is the median of `--rounds` rounds, and the order of the
//! contenders rotates from round to round.
//!
//! Isolation as in the `sandbox` bench: the process moves into a network namespace of
//! its own before any thread starts, so every veth lands there and no packet leaves it;
//! state goes to a temporary directory, and a guard reaps runners a failed round left.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use runner_agent::sandbox::{Sandbox, SandboxConfig};

mod common;
use common::{installed, load_average, sandbox_config, stats, ReapGuard};

/// Memory and start-up time of N idle runners, against N idle bwrap sandboxes.
#[derive(Debug, Parser)]
struct Options {
    /// Runners brought up at once by each contender.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    runners: u32,
    /// Rounds; each figure is the median over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Pause before each memory reading, so that deferred kernel work (network namespaces
    /// and veths are freed by kernel workers) has finished.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Passed by `cargo bench` to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The /proc/meminfo fields that add up to what a runner holds, in kB: user memory
/// (anonymous and tmpfs pages), kernel objects (slab, stacks, page tables, per-CPU
/// areas) and vmalloc'd pages, which is where large eBPF maps live. None of them
/// overlaps another.
const FIELDS: [&str; 7] = [
    "AnonPages",
    "Shmem",
    "Slab",
    "KernelStack",
    "PageTables",
    "Percpu",
    "VmallocUsed",
];

/// One reading of /proc/meminfo, in kB per field.
#[derive(Debug, Clone)]
struct MemInfo(BTreeMap<String, i64>);

impl MemInfo {
    fn read() -> Result<MemInfo> {
        let text = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
        let fields = text
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.split_once(':')?;
                let kb = rest.split_whitespace().next()?.parse().ok()?;
                Some((name.to_owned(), kb))
            })
            .collect();
        Ok(MemInfo(fields))
    }

    fn get(&self, field: &str) -> Result<i64> {
        self.0
            .get(field)
            .copied()
            .with_context(|| format!("/proc/meminfo has no {field} line"))
    }

    /// What the host can no longer hand out: MemTotal - MemAvailable.
    fn used(&self) -> Result<i64> {
        Ok(self.get("MemTotal")? - self.get("MemAvailable")?)
    }
}

/// What one contender's N runners cost in one round.
#[derive(Debug, Clone)]
struct Reading {
    /// From the first start to the last runner being up.
    up: Duration,
    /// kB per runner: the sum of [`FIELDS`], the drop in MemAvailable, then each of
    /// [`FIELDS`] in order.
    per_runner_kb: Vec<f64>,
}

fn per_runner(before: &MemInfo, after: &MemInfo, n: u32) -> Result<Vec<f64>> {
    let n = f64::from(n);
    let mut fields = Vec::new();
    for field in FIELDS {
        fields.push((after.get(field)? - before.get(field)?) as f64 / n);
    }
    let mut values = vec![
        fields.iter().sum(),
        (after.used()? - before.used()?) as f64 / n,
    ];
    values.extend(fields);
    Ok(values)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Library,
    Cli,
    Bwrap,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Library => "runner-agent (Sandbox, one process)",
            Contender::Cli => "runner-agent run (CLI per job)",
            Contender::Bwrap => "bwrap --unshare-all",
        }
    }
}

/// N idle runners of one contender, until [`Idle::stop`].
enum Idle {
    Library(Vec<Sandbox>),
    Processes(Vec<Child>),
}

impl Idle {
    /// Fails if a process-backed runner has already ended.
    fn all_running(&mut self) -> Result<()> {
        if let Idle::Processes(children) = self {
            for child in children.iter_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("a runner ended before the reading: {status}");
                }
            }
        }
        Ok(())
    }

    /// Tears everything down and checks that it ended well.
    fn stop(self, runtime: &tokio::runtime::Runtime, contender: Contender) -> Result<()> {
        match self {
            Idle::Library(sandboxes) => runtime.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for sandbox in sandboxes {
                    set.spawn(sandbox.destroy());
                }
                while let Some(done) = set.join_next().await {
                    done.context("destroy task")?.context("Sandbox::destroy")?;
                }
                Ok(())
            }),
            Idle::Processes(children) => {
                let mut failures = Vec::new();
                for mut child in children {
                    if contender == Contender::Bwrap {
                        // --die-with-parent: the sandbox dies with the outer bwrap.
                        let _ = child.kill();
                        let _ = child.wait();
                    } else {
                        // SIGTERM cancels the job: runner-agent destroys the runner and
                        // exits 1 ("cancelled"); anything else is a failure.
                        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                        let status = child.wait().context("wait for runner-agent run")?;
                        if status.code() != Some(1) {
                            failures.push(status);
                        }
                    }
                }
                if !failures.is_empty() {
                    bail!("runner-agent run did not end as cancelled: {failures:?}");
                }
                Ok(())
            }
        }
    }
}

/// Everything a round needs.
struct Bench {
    options: Options,
    runtime: tokio::runtime::Runtime,
    config: Arc<SandboxConfig>,
    cli_job: PathBuf,
    cli_config: PathBuf,
}

impl Bench {
    fn prepare(options: Options, tmp: &Path) -> Result<Bench> {
        let mut config = sandbox_config(&tmp.join("run"), &tmp.join("state"));
        config.max_concurrent = options.runners;
        let cli_dir = tmp.join("cli");
        std::fs::create_dir_all(&cli_dir)?;
        let (cli_job, cli_config) = common::write_cli_files(
            &cli_dir,
            // Ended by SIGTERM after the reading (the CLI then cancels the job).
            "name: density\nsteps:\n  - name: idle\n    run: \"echo up; sleep 600\"\n",
            &format!("runner:\n  max_concurrent: {}\n", options.runners),
        )?;
        Ok(Bench {
            options,
            runtime: tokio::runtime::Runtime::new().context("tokio runtime")?,
            config: Arc::new(config),
            cli_job,
            cli_config,
        })
    }

    fn settle(&self) {
        std::thread::sleep(Duration::from_millis(self.options.settle_ms));
    }

    /// Brings N runners of `contender` up; returns them and how long it took.
    fn start(&self, contender: Contender, round: u32) -> Result<(Duration, Idle)> {
        let n = self.options.runners;
        let started = Instant::now();
        let idle = match contender {
            Contender::Library => self.runtime.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..n {
                    let config = Arc::clone(&self.config);
                    let id = format!("d{}-{round}-{i}", std::process::id());
                    set.spawn(async move { Sandbox::create(&config, &id).await });
                }
                let (mut up, mut failed) = (Vec::new(), None);
                while let Some(done) = set.join_next().await {
                    match done.context("create task")? {
                        Ok(sandbox) => up.push(sandbox),
                        Err(err) => failed = Some(err),
                    }
                }
                if let Some(err) = failed {
                    // Leave nothing: destroy the ones that did come up.
                    for sandbox in up {
                        let _ = sandbox.destroy().await;
                    }
                    return Err(anyhow::Error::new(err).context("Sandbox::create"));
                }
                Ok(Idle::Library(up))
            })?,
            Contender::Cli => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_runner-agent"));
                command
                    .arg("run")
                    .arg(&self.cli_job)
                    .arg("--config")
                    .arg(&self.cli_config);
                Idle::Processes(start_processes(&mut command, n, "runner-agent run")?)
            }
            Contender::Bwrap => {
                let mut command = Command::new("bwrap");
                command
                    .args(["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/"])
                    .args(["--proc", "/proc", "--dev", "/dev", "sh", "-c"])
                    .arg("echo up; exec sleep 600");
                Idle::Processes(start_processes(&mut command, n, "bwrap")?)
            }
        };
        Ok((started.elapsed(), idle))
    }

    fn round(&self, contender: Contender, round: u32) -> Result<Reading> {
        self.settle();
        let before = MemInfo::read()?;
        let (up, mut idle) = self.start(contender, round)?;
        self.settle();
        // A runner that ended early would make the reading too low.
        let after = idle.all_running().and_then(|()| MemInfo::read());
        let stopped = idle.stop(&self.runtime, contender);
        let after = after?;
        stopped.with_context(|| format!("stopping {}", contender.label()))?;
        Ok(Reading {
            up,
            per_runner_kb: per_runner(&before, &after, self.options.runners)?,
        })
    }
}

/// Starts `n` copies of `command` and waits until each has printed a line `up`.
fn start_processes(command: &mut Command, n: u32, what: &str) -> Result<Vec<Child>> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut children = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..n {
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                kill_all(&mut children);
                return Err(err).with_context(|| format!("start {what}"));
            }
        };
        outputs.push(BufReader::new(child.stdout.take().context("piped stdout")?));
        children.push(child);
    }
    for output in &mut outputs {
        if let Err(err) = wait_for_up(output) {
            kill_all(&mut children);
            return Err(err).with_context(|| format!("{what} did not come up"));
        }
    }
    // The rest of the output (the CLI's step footer) must not block the writers.
    for output in outputs {
        std::thread::spawn(move || std::io::copy(&mut output.into_inner(), &mut std::io::sink()));
    }
    Ok(children)
}

fn wait_for_up(output: &mut impl BufRead) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if output.read_line(&mut line)? == 0 {
            bail!("output ended before `up`");
        }
        if line.trim() == "up" {
            return Ok(());
        }
    }
}

fn kill_all(children: &mut Vec<Child>) {
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    children.clear();
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn report(options: &Options, results: &[(Contender, Vec<Reading>)]) {
    let n = options.runners;
    println!(
        "\n{n} idle runners at once, medians of {} rounds. Memory per runner, MiB: held = the \
         sum of the fields after MemAvail; MemAvail = the drop in MemAvailable (noisier)",
        options.rounds
    );
    print!(
        "{:<38} {:>12} {:>12} {:>12} {:>8} {:>8}",
        "contender", "all up", "p90", "fastest", "held", "MemAvail"
    );
    for field in FIELDS {
        print!(" {field:>11}");
    }
    println!();
    let bwrap_used = results
        .iter()
        .find(|(c, _)| *c == Contender::Bwrap)
        .map(|(_, r)| median(&mut r.iter().map(|x| x.per_runner_kb[0]).collect::<Vec<_>>()));
    for (contender, readings) in results {
        let up: Vec<Duration> = readings.iter().map(|r| r.up).collect();
        let Some(up) = stats::summarize(&up) else {
            continue;
        };
        print!(
            "{:<38} {:>12} {:>12} {:>12}",
            contender.label(),
            stats::ms(up.median),
            stats::ms(up.p90),
            stats::ms(up.min)
        );
        for column in 0..FIELDS.len() + 2 {
            let mut values: Vec<f64> = readings.iter().map(|r| r.per_runner_kb[column]).collect();
            let width = if column < 2 { 8 } else { 11 };
            print!(" {:>width$.2}", median(&mut values) / 1024.0);
        }
        println!();
    }
    if let Some(bwrap) = bwrap_used.filter(|b| *b > 0.0) {
        for (contender, readings) in results {
            if *contender != Contender::Bwrap {
                let used = median(
                    &mut readings
                        .iter()
                        .map(|r| r.per_runner_kb[0])
                        .collect::<Vec<_>>(),
                );
                println!(
                    "{}: {:.1}x bwrap's memory per runner",
                    contender.label(),
                    used / bwrap
                );
            }
        }
    }
}

fn bench(options: Options, tmp: &Path) -> Result<()> {
    let _reap = ReapGuard {
        run_dirs: vec![tmp.join("run"), tmp.join("cli").join("run")],
    };
    let mut contenders = vec![Contender::Library, Contender::Cli];
    if installed("bwrap") {
        contenders.push(Contender::Bwrap);
    } else {
        println!("bwrap is not installed: skipping the bubblewrap contender");
    }
    let rounds = options.rounds;
    println!(
        "{} runners at once per contender, {rounds} rounds, {} ms settle; {} cpus, load average at start: {}",
        options.runners,
        options.settle_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let bench = Bench::prepare(options, tmp)?;
    let mut results: Vec<(Contender, Vec<Reading>)> =
        contenders.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..rounds {
        // Rotate the order so that no contender always follows the same one.
        let k = round as usize % contenders.len();
        let order: Vec<Contender> = contenders[k..]
            .iter()
            .chain(&contenders[..k])
            .copied()
            .collect();
        for contender in order {
            let reading = bench
                .round(contender, round)
                .with_context(|| format!("{}, round {round}", contender.label()))?;
            println!(
                "round {round}: {:<38} all up in {}, {:.2} MiB held per runner (MemAvailable {:.2} MiB lower)",
                contender.label(),
                stats::ms(reading.up),
                reading.per_runner_kb[0] / 1024.0,
                reading.per_runner_kb[1] / 1024.0
            );
            if let Some((_, readings)) = results.iter_mut().find(|(c, _)| *c == contender) {
                readings.push(reading);
            }
        }
    }
    println!("load average at end: {}", load_average());
    report(&bench.options, &results);
    Ok(())
}

fn main() -> ExitCode {
    let options = Options::parse();
    common::run_privileged("density", "ra-density-", |tmp| bench(options, tmp))
}
