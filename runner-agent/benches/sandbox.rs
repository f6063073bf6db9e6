//! Sandbox lifecycle benchmark: create → exec `true` → destroy, side by side with
//! `bwrap --unshare-all` and `crun run` on the same machine (DESIGN.md 10). Results and
//! their reading: runner-agent/BENCHMARKS.md.
//!
//! Run as root: `cargo bench -p runner-agent --bench sandbox [-- --iterations N
//! --warmup N --settle-ms MS]` (see [`options`]). Without root it prints why and exits 0;
//! a missing `bwrap` or `crun` is reported and that contender skipped.
//!
//! What is timed, per iteration, wall clock:
//!
//! - `runner-agent`: `Sandbox::create` + `run_step("true")` + `destroy`, through the
//!   library, as `runner-agent run` drives it: slot and record, cgroups with limits,
//!   init with its namespaces, veth, overlay root, seccomp, the step (`bash -e -c true`),
//!   then kill, veth and cgroup removal and the leftover check;
//! - `runner-agent run`: the CLI end to end with a one-step job (`run: "true"`), for the
//!   figure a user sees (adds process start, config parsing and the audit log);
//! - `bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev true`;
//! - `crun run` on a bundle made at start (see [`crun`]), one container id per
//!   iteration;
//! - the kernel floor (see [`floor`]): only the cgroup, namespaces and veth a runner
//!   must have, around `exec true`, with none of the sandbox's own work.
//!
//! Every task runs once per round, in a random order per round, so that drift in the
//! machine's load and the kernel's deferred clean-up after one task (network namespaces
//! are freed by a kernel worker) fall on all of them alike. The rounds also drive the
//! same lifecycle phase by phase (see [`phases`]) to show where the time goes, and time
//! three reference operations: the init binary starting alone, a process being moved
//! into a runner's cgroups (which the sandbox avoids), and the eBPF fence attached and
//! removed with nothing else running.
//!
//! Two more tables read the same samples. "Without create" adds each round's step and
//! destroy: what would still lie on a job's path if its sandbox had been made in advance
//! (a warm pool). "CPU time" is each task's user and system time, of this process and
//! the children it reaped (see [`cpu`]), beside its wall time: divided by the number of
//! CPUs it is a bound no amount of overlap can beat on this machine.
//!
//! Isolation: before any thread exists, the process moves into a network namespace of its
//! own (unshare(2) `CLONE_NEWNET` applies to the calling thread only, so it must run while
//! there is just one); every veth the sandboxes create lives there and vanishes with the
//! process. No packet is sent anywhere. State goes to temporary directories; a guard reaps
//! any runner a failed iteration left (cgroups live outside the namespace).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

mod common;
use common::{installed, load_average, stats, ReapGuard};

/// Runs `cmd` to its end (stdin empty, output captured) and returns how long it took;
/// fails, with its stderr, unless it exits 0.
pub fn timed(cmd: &mut std::process::Command, what: &str) -> Result<Duration> {
    let started = std::time::Instant::now();
    let output = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("start {what}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

mod options {
    //! Command line and environment: `--iterations N` (30), `--warmup N` (3),
    //! `--settle-ms MS` (0), and the `--bench` flag cargo adds (ignored). The variables
    //! `SANDBOX_BENCH_ITERATIONS`, `SANDBOX_BENCH_WARMUP` and `SANDBOX_BENCH_SETTLE_MS`
    //! give the defaults so that the bench can be tuned without touching the cargo
    //! command.

    use std::time::Duration;

    use anyhow::{bail, Context, Result};

    /// How much to run.
    #[derive(Debug, Clone, Copy)]
    pub struct Options {
        /// Timed iterations per contender.
        pub iterations: usize,
        /// Untimed iterations per contender before them.
        pub warmup: usize,
        /// Pause after every task, so that the kernel's deferred clean-up of one task
        /// (freeing network namespaces) does not land in the next one's time.
        pub settle: Duration,
    }

    fn env_count(name: &str, default: usize) -> Result<usize> {
        match std::env::var(name) {
            Ok(value) => value
                .parse()
                .with_context(|| format!("{name}={value:?} is not a count")),
            Err(_) => Ok(default),
        }
    }

    /// Parses the process arguments.
    pub fn parse() -> Result<Options> {
        let mut options = Options {
            iterations: env_count("SANDBOX_BENCH_ITERATIONS", 30)?,
            warmup: env_count("SANDBOX_BENCH_WARMUP", 3)?,
            settle: Duration::from_millis(env_count("SANDBOX_BENCH_SETTLE_MS", 0)? as u64),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = |what: &str| -> Result<usize> {
                let text = match inline.clone() {
                    Some(v) => v,
                    None => args
                        .next()
                        .with_context(|| format!("{what} needs a value"))?,
                };
                text.parse()
                    .with_context(|| format!("{what} {text:?} is not a count"))
            };
            match name.as_str() {
                "--iterations" | "-n" => options.iterations = value("--iterations")?,
                "--warmup" => options.warmup = value("--warmup")?,
                "--settle-ms" => {
                    options.settle = Duration::from_millis(value("--settle-ms")? as u64)
                }
                // Cargo passes this to every bench target.
                "--bench" => {}
                other => bail!(
                    "unknown argument {other:?} (use --iterations N, --warmup N, --settle-ms MS)"
                ),
            }
        }
        if options.iterations == 0 {
            bail!("--iterations must be at least 1");
        }
        Ok(options)
    }
}

mod ours {
    //! The runner-agent contender: the sandbox library, and the CLI.

    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use runner_agent::sandbox::protocol::{StepEnd, StepRequest};
    use runner_agent::sandbox::{Sandbox, SandboxConfig, WORKSPACE};

    pub use crate::common::sandbox_config as config;

    /// The step every contender runs.
    pub fn true_step() -> StepRequest {
        StepRequest {
            script: "true".to_owned(),
            env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
            cwd: PathBuf::from(WORKSPACE),
            timeout_ms: 0,
        }
    }

    /// Fails unless the step ran and exited 0.
    pub fn check_step(end: StepEnd) -> Result<()> {
        if !end.success() {
            bail!("`true` did not succeed in the sandbox: {end:?}");
        }
        Ok(())
    }

    /// One lifecycle through the library: (create, step, destroy) durations.
    pub async fn lifecycle(
        config: &SandboxConfig,
        job_id: &str,
    ) -> Result<(Duration, Duration, Duration)> {
        let t0 = Instant::now();
        let mut sandbox = Sandbox::create(config, job_id)
            .await
            .context("Sandbox::create")?;
        let t1 = Instant::now();
        let end = sandbox
            .run_step(true_step(), &mut tokio::io::sink())
            .await
            .context("run_step")?;
        let t2 = Instant::now();
        sandbox.destroy().await.context("Sandbox::destroy")?;
        let t3 = Instant::now();
        check_step(end)?;
        Ok((t1 - t0, t2 - t1, t3 - t2))
    }

    /// `runner-agent run` with a one-step job, in a world of its own files.
    pub struct Cli {
        job: PathBuf,
        config: PathBuf,
    }

    impl Cli {
        /// Writes the job file and a host config whose state_dir and run_dir are under
        /// `dir`.
        pub fn prepare(dir: &Path) -> Result<Cli> {
            let (job, config) = crate::common::write_cli_files(
                dir,
                "name: bench\nsteps:\n  - name: true\n    run: \"true\"\n",
                "",
            )?;
            Ok(Cli { job, config })
        }

        /// One `runner-agent run`; fails unless it exits 0.
        pub fn run_once(&self) -> Result<Duration> {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_runner-agent"));
            cmd.arg("run")
                .arg(&self.job)
                .arg("--config")
                .arg(&self.config);
            crate::timed(&mut cmd, "runner-agent run")
        }
    }
}

mod phases {
    //! The sandbox lifecycle driven one phase at a time, to see where the time goes.
    //!
    //! `Sandbox` times nothing itself and exposes no hook between its phases, so this
    //! module repeats `Sandbox::create`, `run_step` and `teardown` (runner-agent
    //! src/sandbox/mod.rs) with the same public building blocks, in the same order, with
    //! a clock read between them. It is a mirror: if the sandbox changes, this can go
    //! stale. The bench prints its total next to the real lifecycle's so that a mismatch
    //! shows.
    //!
    //! The mirror does not attach the eBPF fence (whose loading overlaps the init's
    //! start in `Sandbox::create`), so its total is below the real lifecycle's.

    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use runner_agent::cgroup::CgroupLayout;
    use runner_agent::network;
    use runner_agent::sandbox::protocol::{FromInit, ToInit};
    use runner_agent::sandbox::{self, init, SandboxConfig};
    use runner_agent::state::{RunDir, RunnerRecord};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;

    /// The phases, in order, as printed.
    pub const NAMES: [&str; 10] = [
        "slot + record",
        "cgroup create + limits",
        "spawn init (clone3 + exec)",
        "veth create + configure",
        "rest of init (v1 join, rootfs, ...)",
        "step: bash -c true",
        "kill (cgroup.kill, wait empty)",
        "veth delete (what outlasts the kill)",
        "cgroup rmdir + scratch rmdir",
        "verify + record removal",
    ];

    /// Durations of one lifecycle, indexed like [`NAMES`].
    pub type Timings = [Duration; NAMES.len()];

    struct Clock {
        last: Instant,
        timings: Timings,
        next: usize,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                last: Instant::now(),
                timings: [Duration::ZERO; NAMES.len()],
                next: 0,
            }
        }

        /// Ends the current phase.
        fn lap(&mut self) {
            let now = Instant::now();
            self.timings[self.next] = now - self.last;
            self.last = now;
            self.next += 1;
        }
    }

    async fn send(stream: &mut tokio::net::unix::OwnedWriteHalf, msg: &ToInit) -> Result<()> {
        let line = runner_agent::sandbox::protocol::json_line(msg)?;
        stream.write_all(&line).await.context("send to init")
    }

    async fn recv(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Result<FromInit> {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .await
            .context("read from init")?
            == 0
        {
            bail!("the sandbox init exited unexpectedly");
        }
        let msg: FromInit = serde_json::from_str(&line).context("message from init")?;
        if let FromInit::Failed { stage, message } = &msg {
            bail!("sandbox set-up failed at {stage}: {message}");
        }
        Ok(msg)
    }

    /// One lifecycle, phase by phase. Whatever happens, the runner is torn down before
    /// this returns (an error after the record was written still leaves the record for
    /// the caller's reaper).
    pub async fn lifecycle(config: &SandboxConfig, job_id: &str) -> Result<Timings> {
        let mut clock = Clock::new();

        // 1. Slot and record, as Sandbox::create.
        let run_dir = RunDir::open(&config.run_dir)?;
        let mut lease = None;
        for slot in 0..config.max_concurrent.max(1) {
            if let Some(l) = run_dir.try_lease(slot)? {
                lease = Some(l);
                break;
            }
        }
        let lease = lease.context("no free slot")?;
        let slot = lease.slot;
        let layout = CgroupLayout::detect(&config.cgroup_root)?;
        let (mut record, cgroup_name) =
            sandbox::new_record(config, &run_dir, &layout, slot, job_id)?;
        // The replay does not attach the eBPF fence; its cost shows as the gap between the
        // replay's total and the real median.
        record.pin_dir = None;
        run_dir.write_record(&record)?;
        clock.lap();

        let started =
            start_and_step(config, &layout, &cgroup_name, &mut record, &run_dir, clock).await;
        let (mut clock, child) = match started {
            Ok(ok) => ok,
            Err(err) => {
                let _ = sandbox::teardown(&run_dir, &record, sandbox::NetnsCheck::ByCgroup).await;
                return Err(err);
            }
        };

        // Teardown, as sandbox::teardown, with the clock read between its parts. The
        // control socket and the output pipe were closed when `start_and_step` returned.
        let cgroup = runner_agent::cgroup::RunnerCgroup::from_dirs(&record.cgroup_dirs)
            .context("no cgroup in the record")?;
        let host_if = record.host_if.clone();
        let owner = record.veth_owner();
        let veth = tokio::spawn(async move { network::remove(&host_if, &owner).await });
        let killer = cgroup.clone();
        tokio::task::spawn_blocking(move || killer.kill_all(Duration::from_secs(10))).await??;
        clock.lap();
        veth.await??;
        clock.lap();
        tokio::task::spawn_blocking(move || cgroup.remove()).await??;
        match std::fs::remove_dir(&record.scratch_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("remove scratch dir"),
        }
        clock.lap();
        let left = sandbox::verify_gone(&record, sandbox::NetnsCheck::ByCgroup);
        if !left.is_empty() {
            bail!("left behind: {}", left.join("; "));
        }
        run_dir.remove_record(record.slot)?;
        let _ = tokio::time::timeout(Duration::from_secs(10), child.reap()).await;
        clock.lap();
        drop(lease);
        Ok(clock.timings)
    }

    /// Phases 2 to 6: cgroup, init, veth, root, step. Returns the clock and
    /// the init process; the control socket and output pipe are closed on return, which
    /// (as in `Sandbox::destroy`) tells pid 1 to exit.
    async fn start_and_step(
        config: &SandboxConfig,
        layout: &CgroupLayout,
        cgroup_name: &str,
        record: &mut RunnerRecord,
        run_dir: &RunDir,
        mut clock: Clock,
    ) -> Result<(Clock, runner_agent::sys::spawn::Child)> {
        // 2. Cgroup.
        let cgroup = layout.create(cgroup_name, &config.limits)?;
        clock.lap();

        // 3. Spawn init (in its netns and v2 cgroup) and send the spec Sandbox::start sends.
        let spec = sandbox::init_spec(record, config, &cgroup, sandbox::private_entries(config)?);
        let spawned = sandbox::spawn_init(&config.init_program, &cgroup)?;
        let init_pid = spawned.child.pid();
        spawned.control.set_nonblocking(true)?;
        let (read, mut write) = UnixStream::from_std(spawned.control)?.into_split();
        let mut read = BufReader::new(read);
        // Held open (as Sandbox holds it) so that the step's stdout is a live pipe.
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(spawned.output)?;
        let netns = std::fs::metadata(format!("/proc/{init_pid}/ns/net"))?;
        record.netns_inode = Some(std::os::unix::fs::MetadataExt::ino(&netns));
        run_dir.write_record(record)?;
        send(&mut write, &ToInit::Spec(spec)).await?;
        clock.lap();

        // 4. Veth, while init starts, joins its v1 cgroups and unshares the other
        // namespaces.
        network::setup(
            &record.host_if,
            record.addresses,
            init_pid,
            &record.veth_owner(),
        )
        .await?;
        clock.lap();

        // 5. The rest of init: namespaces, root filesystem, user namespace, seccomp (what
        // of it did not overlap the veth).
        send(&mut write, &ToInit::NetworkReady).await?;
        let FromInit::SandboxReady { .. } = recv(&mut read).await? else {
            bail!("expected SandboxReady");
        };
        clock.lap();

        // 6. The step (`true` prints nothing, so only the report is read).
        send(&mut write, &ToInit::RunStep(super::ours::true_step())).await?;
        let FromInit::StepExited(end) = recv(&mut read).await? else {
            bail!("expected StepExited");
        };
        super::ours::check_step(end)?;
        clock.lap();
        drop((read, write, output));
        Ok((clock, spawned.child))
    }

    /// Reference point: the init binary started with no spec (it reads end of file and
    /// exits), i.e. fork + exec + dynamic loading + exit of `runner-agent`.
    pub async fn init_exec_only(config: &SandboxConfig) -> Result<Duration> {
        let started = Instant::now();
        let status = tokio::process::Command::new(&config.init_program)
            .arg(init::INIT_ARG)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("start init")?;
        let elapsed = started.elapsed();
        if status.success() {
            bail!("init without a spec should fail, but it exited 0");
        }
        Ok(elapsed)
    }

    /// Reference point for the cgroup join: a runner's cgroups are created as the sandbox
    /// creates them, a `sleep` is started, and its pid is written to the v2 `cgroup.procs`,
    /// then to the v1 ones (hybrid hosts). Moving a process between cgroups write-locks
    /// the kernel's global `cgroup_threadgroup_rwsem`, whose writer may first wait for
    /// an RCU grace period; timing the writes separately shows what that costs here, and
    /// why the sandbox moves no process: init is cloned into the v2 cgroup and joins the
    /// v1 ones by `tasks`, as a single thread (see runner_agent::sys::spawn).
    /// Returns (v2 write, v1 writes).
    pub fn cgroup_join(config: &SandboxConfig, name: &str) -> Result<(Duration, Duration)> {
        let layout = CgroupLayout::detect(&config.cgroup_root)?;
        let cgroup = layout.create(name, &config.limits)?;
        let result = (|| {
            let mut sleeper = std::process::Command::new("sleep")
                .arg("10")
                .stdin(Stdio::null())
                .spawn()
                .context("start sleep")?;
            let pid = sleeper.id().to_string();
            let procs = cgroup.procs_files();
            let moved = (|| {
                let started = Instant::now();
                let mut split = None;
                for (i, file) in procs.iter().enumerate() {
                    std::fs::write(file, &pid)
                        .with_context(|| format!("write {}", file.display()))?;
                    if i == 0 {
                        split = Some(started.elapsed());
                    }
                }
                let v2 = split.context("no cgroup.procs file")?;
                Ok::<_, anyhow::Error>((v2, started.elapsed() - v2))
            })();
            let _ = sleeper.kill();
            let _ = sleeper.wait();
            moved
        })();
        let killed = cgroup.kill_all(Duration::from_secs(10));
        let removed = cgroup.remove();
        let timings = result?;
        killed?;
        removed?;
        Ok(timings)
    }
}

mod fence {
    //! Reference point for the eBPF fence: what `Sandbox::create` spends on it when
    //! nothing else runs beside it.

    use std::time::{Duration, Instant};

    use anyhow::Result;
    use runner_agent::cgroup::CgroupLayout;
    use runner_agent::sandbox::SandboxConfig;

    /// Creates a runner's cgroups as the sandbox does, then times `Fence::attach` (load
    /// and verify the programs, create the maps, write the config, attach to the v2
    /// directory, pin) and the removal the teardown does (`egress_ebpf::reap`), and
    /// removes the cgroups. The fence sees no traffic: its addresses only need to be
    /// valid. Returns (attach, removal).
    pub fn alone(config: &SandboxConfig, name: &str) -> Result<(Duration, Duration)> {
        let layout = CgroupLayout::detect(&config.cgroup_root)?;
        let cgroup = layout.create(name, &config.limits)?;
        let pin_dir = config.bpf_pin_root.join(name);
        let fence_config = runner_agent::egress::fence_config(
            std::net::Ipv4Addr::new(10, 255, 255, 1),
            std::net::Ipv4Addr::new(10, 255, 255, 2),
            0,
        );
        let started = Instant::now();
        let attached = egress_ebpf::Fence::attach(&cgroup.v2_dir, fence_config, &pin_dir);
        let attach = started.elapsed();
        // Dropped, as Sandbox::destroy drops it: the pins keep it until the reap. A
        // failed attach is reported, after the same clean-up.
        let attached = attached.map(drop);
        let started = Instant::now();
        let reaped = egress_ebpf::reap(&pin_dir);
        let removal = started.elapsed();
        let removed = cgroup.remove();
        attached?;
        reaped?;
        removed?;
        Ok((attach, removal))
    }
}

mod floor {
    //! The kernel floor: only the per-runner kernel objects the sandbox must have that
    //! bwrap does not make, around `exec true`, with none of the sandbox's own work.
    //!
    //! A cgroup made as the sandbox makes it (v2 directory with limits, and the v1
    //! directories on a hybrid host), a child cloned into it with new mount, pid, net,
    //! uts, ipc and cgroup namespaces, a veth pair to that network namespace configured
    //! by the agent's own `network::setup`, then a user namespace and `execve("true")`;
    //! afterwards the veth removed by `network::remove` and the cgroup directories
    //! removed. No overlay root, no /proc or /dev, no uid map, no seccomp, no eBPF fence,
    //! no step protocol and no leftover check. Whatever the sandbox does beyond this
    //! floor is its own cost; the floor is what any design would pay here for a runner
    //! with its own cgroup and veth.
    //!
    //! The child waits on a pipe until the veth is in place (its network namespace must
    //! still exist when the veth moves in), as init waits for the agent's NetworkReady.

    use std::ffi::CString;
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use runner_agent::cgroup::CgroupLayout;
    use runner_agent::network::{self, RunnerAddresses};
    use runner_agent::sandbox::SandboxConfig;
    use runner_agent::sys::spawn::{clone_with_pidfd, Cloned, CLONE_INTO_CGROUP};

    /// The pool slot the floor's veth uses: far from the sandbox's slot 0, so that a
    /// veth still being freed by one task never shares an address with the next.
    const SLOT: u32 = 40;

    /// The alias of the floor's veth.
    const OWNER: &str = "runner-agent sandbox bench floor";

    /// The child's side: wait for the agent, join the v1 cgroups, make the user
    /// namespace, exec `true`. Raw, async-signal-safe system calls only, on data
    /// prepared before the clone (see `runner_agent::sys::spawn`).
    fn child(go: RawFd, v1_tasks: &[RawFd], program: &CString, argv: &[*const libc::c_char]) -> ! {
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: read, write, unshare, execve and _exit are async-signal-safe and are
        // given descriptor numbers and pointers into buffers that live across the calls.
        unsafe {
            let mut byte = 0u8;
            if libc::read(go, (&mut byte as *mut u8).cast(), 1) != 1 {
                libc::_exit(125);
            }
            for &tasks in v1_tasks {
                if libc::write(tasks, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(124);
                }
            }
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                libc::_exit(126);
            }
            libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127)
        }
    }

    /// One floor lifecycle; fails unless `true` exited 0 and everything was removed.
    pub async fn lifecycle(config: &SandboxConfig, name: &str) -> Result<Duration> {
        let program = CString::new("/usr/bin/true")?;
        let argv: [*const libc::c_char; 2] = [program.as_ptr(), std::ptr::null()];
        let host_if = "rafloor0";
        let addrs = RunnerAddresses::for_slot(config.runner_pool, SLOT)?;

        let started = Instant::now();
        let layout = CgroupLayout::detect(&config.cgroup_root)?;
        let cgroup = layout.create(name, &config.limits)?;
        let result = async {
            let v2 = std::fs::File::open(&cgroup.v2_dir).context("open the v2 cgroup")?;
            let v1: Vec<std::fs::File> = cgroup
                .v1_task_files()
                .iter()
                .map(|p| std::fs::OpenOptions::new().write(true).open(p))
                .collect::<Result<_, _>>()
                .context("open the v1 tasks files")?;
            let v1_fds: Vec<RawFd> = v1.iter().map(|f| f.as_raw_fd()).collect();
            let (go_read, go_write) = std::io::pipe()?;
            let flags = CLONE_INTO_CGROUP
                | (libc::CLONE_NEWNS
                    | libc::CLONE_NEWPID
                    | libc::CLONE_NEWNET
                    | libc::CLONE_NEWUTS
                    | libc::CLONE_NEWIPC
                    | libc::CLONE_NEWCGROUP) as u64;
            // SAFETY: the child side only calls `child`, which makes async-signal-safe
            // system calls and never returns.
            let cloned = unsafe { clone_with_pidfd(flags, Some(v2.as_fd())) }.context("clone3")?;
            let child_process = match cloned {
                Cloned::Child => child(go_read.as_raw_fd(), &v1_fds, &program, &argv),
                Cloned::Parent(c) => c,
            };
            drop(go_read);
            let veth = network::setup(host_if, addrs, child_process.pid(), OWNER).await;
            // Released even when the veth failed, so that the child ends either way.
            std::io::Write::write_all(&mut &go_write, b"g")?;
            drop(go_write);
            let status = child_process.reap().await;
            veth.context("veth")?;
            network::remove(host_if, OWNER)
                .await
                .context("veth removal")?;
            Ok::<_, anyhow::Error>(status)
        }
        .await;
        let removed = cgroup.remove();
        let elapsed = started.elapsed();
        let status = result?;
        removed.context("cgroup removal")?;
        match status {
            Some(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(elapsed),
            other => bail!("`true` in the floor's namespaces did not exit 0: {other:?}"),
        }
    }
}

mod bwrap {
    //! The bubblewrap contender: `bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev
    //! true`. --unshare-all gives it new user, ipc, pid, net, uts and cgroup namespaces
    //! (bwrap(1)); it creates no veth and no cgroup and applies no limits.

    use std::process::Command;
    use std::time::Duration;

    use anyhow::Result;

    /// The full command line.
    pub const ARGS: [&str; 9] = [
        "--unshare-all",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "true",
    ];

    /// One run; fails unless it exits 0.
    pub fn run_once() -> Result<Duration> {
        crate::timed(Command::new("bwrap").args(ARGS), "bwrap")
    }
}

mod sys {
    //! The bench's one unsafe operation: starting a child in a mount namespace of its own
    //! whose /sys/fs/cgroup is the cgroup v2 hierarchy.
    //!
    //! Why: on a hybrid host with a controller left on v2 (here: hugetlb), crun refuses
    //! to start anything ("cgroups in hybrid mode not supported, drop all controllers
    //! from cgroupv2"), whatever its cgroup manager. Showing crun a pure v2 layout, in a
    //! mount namespace that dies with it, lets it run without touching the machine's
    //! mounts. The cost (unshare(2) of a mount namespace, two mount(2) calls) is charged
    //! to crun's time.

    use std::ffi::CStr;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};

    /// Makes `cmd` run in a private mount namespace with cgroup2 mounted on
    /// /sys/fs/cgroup.
    pub fn cgroup2_view(cmd: &mut Command) {
        const ROOT: &CStr = c"/";
        const CGROUP: &CStr = c"/sys/fs/cgroup";
        const CGROUP2: &CStr = c"cgroup2";
        // SAFETY: the closure runs between fork and exec. It only makes the unshare(2)
        // and mount(2) system calls, which are async-signal-safe, on `&'static CStr`
        // arguments (nix passes those through without allocating), and converts an errno
        // into an io::Error, which does not allocate either.
        unsafe {
            cmd.pre_exec(|| {
                unshare(CloneFlags::CLONE_NEWNS)?;
                // Private first, so that the cgroup2 mount cannot propagate to the host
                // (mount_namespaces(7), "Shared subtrees").
                mount(
                    None::<&CStr>,
                    ROOT,
                    None::<&CStr>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&CStr>,
                )?;
                mount(
                    Some(CGROUP2),
                    CGROUP,
                    Some(CGROUP2),
                    MsFlags::empty(),
                    None::<&CStr>,
                )?;
                Ok(())
            });
        }
    }
}

mod crun {
    //! The crun contender: an OCI bundle generated at start, run once per iteration with a
    //! fresh container id (`crun run` deletes the container when its process exits).
    //!
    //! The bundle: `crun spec`'s default config with `terminal: false`, `args: ["true"]`,
    //! the cgroup namespace added, and a user namespace mapping 0..65536 to an unused
    //! host range. The rootfs is a directory holding only `/usr/bin/true` and the
    //! libraries `ldd` lists for it, mounted read-only. crun's state goes to a temporary
    //! `--root`, so nothing lands in /run/crun.
    //!
    //! Not every crun set-up works on every host, so the first that runs `true` of these
    //! is used, and the bench prints which and why the others failed: with a user
    //! namespace and crun's cgroupfs manager; with a user namespace and no cgroup
    //! (`--cgroup-manager=disabled`; crun 1.8 raises RLIMIT_MEMLOCK before loading its
    //! device-filter eBPF program, which fails without CAP_SYS_RESOURCE); then the same
    //! two without a user namespace. On hybrid hosts crun also runs in a cgroup v2 view
    //! (see [`super::sys`]). With a cgroup manager, the container's cgroup path is fixed
    //! (`/ra-bench-<pid>`) so that a run that fails half-way (crun then leaves the
    //! directory) can be cleaned up.

    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use anyhow::{bail, Context, Result};
    use serde_json::{json, Value};

    /// Host ids the container's user namespace maps to (outside runner-agent's range).
    const USERNS_HOST_BASE: u32 = 0x3000_0000;

    /// One way of running crun.
    #[derive(Debug, Clone, Copy)]
    pub struct Setup {
        /// The config has a user namespace.
        pub userns: bool,
        /// crun's `--cgroup-manager` (`cgroupfs` or `disabled`).
        pub cgroup_manager: &'static str,
        /// crun runs in a mount namespace where /sys/fs/cgroup is cgroup2.
        pub cgroup2_view: bool,
    }

    impl Setup {
        /// A short description for the table.
        pub fn describe(&self) -> String {
            format!(
                "crun run ({}, cgroups {})",
                if self.userns { "+userns" } else { "no userns" },
                if self.cgroup_manager == "disabled" {
                    "off"
                } else {
                    self.cgroup_manager
                }
            )
        }
    }

    /// A bundle and crun's state directory.
    pub struct Bundle {
        bundle: PathBuf,
        state: PathBuf,
        template: Value,
        /// How crun is run.
        pub setup: Setup,
        prefix: String,
    }

    /// Copies `path` (absolute) into `rootfs` at the same place.
    fn copy_in(rootfs: &Path, path: &Path) -> Result<()> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        let target = rootfs.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(path, &target)
            .with_context(|| format!("copy {} into the rootfs", path.display()))?;
        Ok(())
    }

    /// The files `ldd` lists for `binary` (`lib => /path (addr)` and `/path (addr)`).
    fn libraries(binary: &str) -> Result<Vec<PathBuf>> {
        let output = Command::new("ldd")
            .arg(binary)
            .output()
            .context("start ldd")?;
        if !output.status.success() {
            bail!("ldd {binary} failed");
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let path = match line.split_once("=>") {
                    Some((_, right)) => right.trim(),
                    None => line,
                };
                let path = path.split_whitespace().next()?;
                path.starts_with('/').then(|| PathBuf::from(path))
            })
            .collect())
    }

    /// Whether this is a hybrid host (v2 mounted at /sys/fs/cgroup/unified).
    fn hybrid() -> bool {
        Path::new("/sys/fs/cgroup/unified/cgroup.controllers").is_file()
    }

    /// The machine's cgroup v2 root, as the bench (not crun) sees it.
    fn v2_root() -> &'static Path {
        if hybrid() {
            Path::new("/sys/fs/cgroup/unified")
        } else {
            Path::new("/sys/fs/cgroup")
        }
    }

    impl Bundle {
        /// Generates the bundle under `dir` and picks the first set-up that works.
        pub fn prepare(dir: &Path) -> Result<Bundle> {
            let bundle = dir.join("bundle");
            let state = dir.join("state");
            let rootfs = bundle.join("rootfs");
            std::fs::create_dir_all(&rootfs)?;
            std::fs::create_dir_all(&state)?;
            let spec = Command::new("crun")
                .arg("spec")
                .current_dir(&bundle)
                .output()
                .context("start crun spec")?;
            if !spec.status.success() {
                bail!("crun spec: {}", String::from_utf8_lossy(&spec.stderr));
            }
            let template: Value =
                serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)
                    .context("parse crun spec's config.json")?;
            copy_in(&rootfs, Path::new("/usr/bin/true"))?;
            for library in libraries("/usr/bin/true")? {
                copy_in(&rootfs, &library)?;
            }
            for mount_point in ["proc", "dev", "sys", "tmp"] {
                std::fs::create_dir_all(rootfs.join(mount_point))?;
            }
            let view = hybrid();
            let setups = [
                (true, "cgroupfs"),
                (true, "disabled"),
                (false, "cgroupfs"),
                (false, "disabled"),
            ]
            .map(|(userns, cgroup_manager)| Setup {
                userns,
                cgroup_manager,
                cgroup2_view: view,
            });
            let mut bundle = Bundle {
                bundle,
                state,
                template,
                setup: setups[0],
                prefix: format!("ra-bench-{}", std::process::id()),
            };
            let mut failures = Vec::new();
            for (i, setup) in setups.into_iter().enumerate() {
                bundle.setup = setup;
                bundle.write_config()?;
                match bundle.run_once(&format!("probe{i}")) {
                    Ok(_) => {
                        for failure in &failures {
                            println!("crun: not used: {failure}");
                        }
                        return Ok(bundle);
                    }
                    Err(err) => {
                        let why = format!("{err:#}");
                        let first = why.lines().next().unwrap_or_default().to_owned();
                        failures.push(format!("{}: {first}", setup.describe()));
                    }
                }
            }
            bail!("no crun set-up works here: {}", failures.join("; "))
        }

        fn write_config(&self) -> Result<()> {
            let mut config = self.template.clone();
            config["process"]["terminal"] = json!(false);
            config["process"]["args"] = json!(["true"]);
            config["root"] = json!({ "path": "rootfs", "readonly": true });
            let linux = &mut config["linux"];
            linux["cgroupsPath"] = json!(format!("/{}", self.prefix));
            let mut namespaces: Vec<Value> = ["pid", "network", "ipc", "uts", "mount", "cgroup"]
                .iter()
                .map(|t| json!({ "type": t }))
                .collect();
            if self.setup.userns {
                namespaces.push(json!({ "type": "user" }));
                let map = json!([{ "containerID": 0, "hostID": USERNS_HOST_BASE, "size": 65536 }]);
                linux["uidMappings"] = map.clone();
                linux["gidMappings"] = map;
            }
            linux["namespaces"] = Value::Array(namespaces);
            std::fs::write(
                self.bundle.join("config.json"),
                serde_json::to_vec_pretty(&config)?,
            )
            .context("write config.json")
        }

        /// `crun <global options> ARGS` as set up.
        fn command(&self, args: &[&str]) -> Command {
            let mut cmd = Command::new("crun");
            cmd.arg("--root")
                .arg(&self.state)
                .arg(format!("--cgroup-manager={}", self.setup.cgroup_manager))
                .args(args)
                .stdin(Stdio::null());
            if self.setup.cgroup2_view {
                super::sys::cgroup2_view(&mut cmd);
            }
            cmd
        }

        fn crun(&self, args: &[&str]) -> Result<std::process::Output> {
            self.command(args)
                .output()
                .with_context(|| format!("start crun {args:?}"))
        }

        /// `crun run` with container id `<prefix>-<tag>`; fails unless `true` exits 0.
        pub fn run_once(&self, tag: &str) -> Result<Duration> {
            let id = format!("{}-{tag}", self.prefix);
            let bundle = self.bundle.to_string_lossy();
            let timed = crate::timed(
                &mut self.command(&["run", "--bundle", &bundle, &id]),
                "crun run",
            );
            if timed.is_err() {
                self.remove_cgroup();
            }
            timed
        }

        /// Removes the container cgroup a failed run may have left.
        fn remove_cgroup(&self) {
            let dir = v2_root().join(&self.prefix);
            if let Err(err) = std::fs::remove_dir(&dir) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("cannot remove {}: {err}", dir.display());
                }
            }
        }

        /// Containers crun still knows about (should be none: `run` deletes them).
        pub fn leftovers(&self) -> Vec<String> {
            let Ok(output) = self.crun(&["list", "--quiet"]) else {
                return Vec::new();
            };
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        }
    }

    impl Drop for Bundle {
        /// Deletes whatever container a failed run left (its cgroup, if any, is outside
        /// the temporary directory).
        fn drop(&mut self) {
            for id in self.leftovers() {
                let _ = self.crun(&["delete", "--force", &id]);
            }
            self.remove_cgroup();
        }
    }
}

mod cpu {
    //! CPU time spent by a task: user and system time of this process (all its threads)
    //! and of the children it has reaped (with, recursively, the children they reaped),
    //! from getrusage(2). The kernel's own workers (which free a network namespace after
    //! its last process, for bwrap as for us) are not counted, and neither is a detached
    //! child that nobody here reaps.

    use std::time::Duration;

    use anyhow::{Context, Result};
    use nix::sys::resource::{getrusage, UsageWho};

    fn total(who: UsageWho) -> Result<Duration> {
        let usage = getrusage(who).context("getrusage")?;
        let micros = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
        };
        Ok(micros(usage.user_time()) + micros(usage.system_time()))
    }

    /// CPU time used so far by this process and its reaped children.
    pub fn used() -> Result<Duration> {
        Ok(total(UsageWho::RUSAGE_SELF)? + total(UsageWho::RUSAGE_CHILDREN)?)
    }
}

mod report {
    //! The printed tables.

    use std::time::Duration;

    use super::stats::{ms, summarize, Summary};

    /// One row of the main table.
    pub struct Row {
        /// What ran.
        pub name: String,
        /// Its timings.
        pub sample: Vec<Duration>,
    }

    fn ratio(value: Duration, base: Option<Summary>) -> String {
        match base {
            Some(b) if !b.median.is_zero() => {
                format!("{:.2}x", value.as_secs_f64() / b.median.as_secs_f64())
            }
            _ => "-".to_owned(),
        }
    }

    /// The comparison table; ratios are medians over bwrap's median.
    pub fn contenders(rows: &[Row], bwrap: Option<&Row>) {
        let base = bwrap.and_then(|r| summarize(&r.sample));
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>9}",
            "contender", "median", "p90", "min", "vs bwrap"
        );
        for row in rows {
            line(row, base);
        }
    }

    /// One row in the comparison table's columns.
    fn line(row: &Row, base: Option<Summary>) {
        let Some(s) = summarize(&row.sample) else {
            return;
        };
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>9}",
            row.name,
            ms(s.median),
            ms(s.p90),
            ms(s.min),
            ratio(s.median, base)
        );
    }

    /// CPU time per task next to its wall time: with `cpus` processors, no schedule can
    /// finish a task's work in less than its CPU time divided by `cpus`.
    pub fn cpu_time(rows: &[(Row, Vec<Duration>)], cpus: usize, bwrap: Option<&Row>) {
        let base = bwrap.and_then(|r| summarize(&r.sample));
        println!(
            "\nCPU time per task (user + system, this process and its reaped children; \
             kernel workers not counted), {cpus} cpus"
        );
        println!(
            "{:<44} {:>10} {:>10} {:>16}",
            "contender", "wall", "cpu", "cpu / cpus"
        );
        for (row, cpu) in rows {
            let (Some(wall), Some(cpu)) = (summarize(&row.sample), summarize(cpu)) else {
                continue;
            };
            let bound = cpu.median / cpus.max(1) as u32;
            println!(
                "{:<44} {:>10} {:>10} {:>10} {:>5}",
                row.name,
                ms(wall.median),
                ms(cpu.median),
                ms(bound),
                ratio(bound, base)
            );
        }
        println!("(medians; the last column is that bound against bwrap's median wall time)");
    }

    /// What is left of our lifecycle when `Sandbox::create` is taken out (per round,
    /// the step and the destroy together), against bwrap's whole run: the part that no
    /// sandbox made ahead of time (a warm pool) could take off a job's path.
    pub fn without_create(after_create: &Row, bwrap: Option<&Row>) {
        let base = bwrap.and_then(|r| summarize(&r.sample));
        println!(
            "
without create: the part of our lifecycle no sandbox made in advance removes"
        );
        line(after_create, base);
    }

    /// A breakdown table: each part's median, p90 and share of the sum of medians.
    pub fn breakdown(title: &str, parts: &[(&str, Vec<Duration>)]) {
        let summaries: Vec<(&str, Summary)> = parts
            .iter()
            .filter_map(|(n, s)| summarize(s).map(|s| (*n, s)))
            .collect();
        let total: Duration = summaries.iter().map(|(_, s)| s.median).sum();
        println!("\n{title}");
        println!(
            "{:<44} {:>10} {:>10} {:>8}",
            "phase", "median", "p90", "share"
        );
        for (name, s) in &summaries {
            let share = if total.is_zero() {
                0.0
            } else {
                100.0 * s.median.as_secs_f64() / total.as_secs_f64()
            };
            println!(
                "{:<44} {:>10} {:>10} {:>7.1}%",
                name,
                ms(s.median),
                ms(s.p90),
                share
            );
        }
        println!("{:<44} {:>10}", "sum of medians", ms(total));
    }
}

/// Everything timed in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// The sandbox library: create, step, destroy.
    Ours,
    /// `runner-agent run`.
    Cli,
    /// bubblewrap.
    Bwrap,
    /// crun.
    Crun,
    /// The phase-by-phase mirror.
    Mirror,
    /// The init binary alone.
    InitExec,
    /// Moving a process into a runner's cgroups.
    CgroupJoin,
    /// The eBPF fence alone.
    Fence,
    /// The kernel floor.
    Floor,
}

/// Every sample taken.
#[derive(Default)]
struct Samples {
    total: Vec<Duration>,
    create: Vec<Duration>,
    step: Vec<Duration>,
    destroy: Vec<Duration>,
    cli: Vec<Duration>,
    bwrap: Vec<Duration>,
    crun: Vec<Duration>,
    mirror: Vec<phases::Timings>,
    init_exec: Vec<Duration>,
    join_v2: Vec<Duration>,
    join_v1: Vec<Duration>,
    fence_attach: Vec<Duration>,
    fence_removal: Vec<Duration>,
    floor: Vec<Duration>,
    /// CPU time of each timed task (see [`cpu`]).
    cpu: Vec<(Task, Duration)>,
}

/// What the tasks run against.
struct Bench {
    runtime: tokio::runtime::Runtime,
    config: runner_agent::sandbox::SandboxConfig,
    cli: ours::Cli,
    crun: Option<crun::Bundle>,
}

impl Bench {
    /// Runs `task` once; records it into `samples` when given.
    fn run(&self, task: Task, id: &str, samples: Option<&mut Samples>) -> Result<()> {
        let mut scratch = Samples::default();
        let s = samples.unwrap_or(&mut scratch);
        let cpu_before = cpu::used()?;
        self.run_task(task, id, s)?;
        let cpu_after = cpu::used()?;
        s.cpu.push((task, cpu_after.saturating_sub(cpu_before)));
        Ok(())
    }

    fn run_task(&self, task: Task, id: &str, s: &mut Samples) -> Result<()> {
        match task {
            Task::Ours => {
                let (c, st, d) = self.runtime.block_on(ours::lifecycle(&self.config, id))?;
                s.create.push(c);
                s.step.push(st);
                s.destroy.push(d);
                s.total.push(c + st + d);
            }
            Task::Cli => s.cli.push(self.cli.run_once()?),
            Task::Bwrap => s.bwrap.push(bwrap::run_once()?),
            Task::Crun => {
                if let Some(c) = &self.crun {
                    s.crun.push(c.run_once(id)?);
                }
            }
            Task::Mirror => s
                .mirror
                .push(self.runtime.block_on(phases::lifecycle(&self.config, id))?),
            Task::InitExec => s.init_exec.push(
                self.runtime
                    .block_on(phases::init_exec_only(&self.config))?,
            ),
            Task::CgroupJoin => {
                let (v2, v1) = phases::cgroup_join(&self.config, id)?;
                s.join_v2.push(v2);
                s.join_v1.push(v1);
            }
            Task::Floor => s
                .floor
                .push(self.runtime.block_on(floor::lifecycle(&self.config, id))?),
            Task::Fence => {
                let (attach, removal) = fence::alone(&self.config, id)?;
                s.fence_attach.push(attach);
                s.fence_removal.push(removal);
            }
        }
        Ok(())
    }
}

/// The samples of phase `index` across lifecycles.
fn phase(timings: &[phases::Timings], index: usize) -> Vec<Duration> {
    timings.iter().map(|t| t[index]).collect()
}

/// Two samples taken in the same rounds, added round by round.
fn pairwise_sum(a: &[Duration], b: &[Duration]) -> Vec<Duration> {
    a.iter().zip(b).map(|(x, y)| *x + *y).collect()
}

fn print_results(options: options::Options, bench: &Bench, s: &Samples) {
    let crun_name = bench
        .crun
        .as_ref()
        .map(|c| c.setup.describe())
        .unwrap_or_else(|| "crun run".to_owned());
    let row = |name: &str, sample: &[Duration]| report::Row {
        name: name.to_owned(),
        sample: sample.to_vec(),
    };
    let rows = [
        row("runner-agent (Sandbox create+step+destroy)", &s.total),
        row("bwrap --unshare-all", &s.bwrap),
        row(&crun_name, &s.crun),
        row("runner-agent run (CLI, one-step job)", &s.cli),
        row("kernel floor (cgroup, namespaces, veth)", &s.floor),
    ];
    println!(
        "\nsandbox create -> exec `true` -> destroy: {} rounds after {} warm-up, \
         each round in random order, {} ms pause after each task",
        options.iterations,
        options.warmup,
        options.settle.as_millis()
    );
    let fence_total = pairwise_sum(&s.fence_attach, &s.fence_removal);
    let mirror_total: Vec<Duration> = s.mirror.iter().map(|t| t.iter().sum()).collect();
    let bwrap = (!s.bwrap.is_empty()).then_some(&rows[1]);
    report::contenders(&rows, bwrap);
    let after_create = pairwise_sum(&s.step, &s.destroy);
    report::without_create(
        &row("run_step(true) + destroy, per round", &after_create),
        bwrap,
    );
    let cpu_of = |task: Task| -> Vec<Duration> {
        s.cpu
            .iter()
            .filter(|(t, _)| *t == task)
            .map(|(_, d)| *d)
            .collect()
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    report::cpu_time(
        &[
            (
                row("runner-agent (Sandbox create+step+destroy)", &s.total),
                cpu_of(Task::Ours),
            ),
            (row("bwrap --unshare-all", &s.bwrap), cpu_of(Task::Bwrap)),
            (row(&crun_name, &s.crun), cpu_of(Task::Crun)),
            (
                row("runner-agent run (CLI, one-step job)", &s.cli),
                cpu_of(Task::Cli),
            ),
            (
                row("kernel floor (cgroup, namespaces, veth)", &s.floor),
                cpu_of(Task::Floor),
            ),
            (
                row("the same without the fence (phase mirror)", &mirror_total),
                cpu_of(Task::Mirror),
            ),
            (
                row("the eBPF fence alone (attach, then reap)", &fence_total),
                cpu_of(Task::Fence),
            ),
        ],
        cpus,
        bwrap,
    );

    report::breakdown(
        "runner-agent, timed around each library call",
        &[
            ("Sandbox::create", s.create.clone()),
            ("run_step(true)", s.step.clone()),
            ("Sandbox::destroy (incl. verify)", s.destroy.clone()),
        ],
    );
    let named: Vec<(&str, Vec<Duration>)> = phases::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, phase(&s.mirror, i)))
        .collect();
    report::breakdown(
        "runner-agent, phase by phase (mirror of create/run_step/destroy, without the fence)",
        &named,
    );
    if let Some(total) = stats::summarize(&mirror_total) {
        println!(
            "{:<44} {:>10} {:>10}",
            "total (median, p90)",
            stats::ms(total.median),
            stats::ms(total.p90)
        );
    }
    for (what, sample) in [
        ("runner-agent init exec + exit without a spec", &s.init_exec),
        (
            "moving a process into a runner's v2 cgroup (init is cloned into it instead)",
            &s.join_v2,
        ),
        ("then into its v1 cgroups by cgroup.procs", &s.join_v1),
        (
            "the eBPF fence alone: load, attach and pin (Fence::attach)",
            &s.fence_attach,
        ),
        (
            "the eBPF fence alone: unpin and detach (reap)",
            &s.fence_removal,
        ),
    ] {
        if let Some(summary) = stats::summarize(sample) {
            println!(
                "reference: {what}: median {}, p90 {}, max {}",
                stats::ms(summary.median),
                stats::ms(summary.p90),
                stats::ms(sample.iter().copied().max().unwrap_or_default())
            );
        }
    }
}

fn bench(options: options::Options, tmp: &Path) -> Result<()> {
    use rand::seq::SliceRandom;

    let run_dir = tmp.join("run");
    let state_dir = tmp.join("state");
    let cli_dir = tmp.join("cli");
    std::fs::create_dir_all(&cli_dir)?;
    let _reap = ReapGuard {
        run_dirs: vec![run_dir.clone(), cli_dir.join("run")],
    };

    let mut tasks = vec![
        Task::Ours,
        Task::Cli,
        Task::Mirror,
        Task::InitExec,
        Task::CgroupJoin,
        Task::Fence,
        Task::Floor,
    ];
    if installed("bwrap") {
        tasks.push(Task::Bwrap);
    } else {
        println!("bwrap is not installed: skipping the bubblewrap contender");
    }
    let crun = if installed("crun") {
        let dir = tmp.join("crun");
        std::fs::create_dir_all(&dir)?;
        tasks.push(Task::Crun);
        Some(crun::Bundle::prepare(&dir).context("crun bundle")?)
    } else {
        println!("crun is not installed: skipping the crun contender");
        None
    };
    let bench = Bench {
        runtime: tokio::runtime::Runtime::new().context("tokio runtime")?,
        config: ours::config(&run_dir, &state_dir),
        cli: ours::Cli::prepare(&cli_dir)?,
        crun,
    };

    // Random order within each round: a contender's asynchronous kernel clean-up (a
    // network namespace is freed by a kernel worker after its last process exits) then
    // delays whichever task happens to come next, not always the same one.
    let mut rng = rand::rng();
    let mut samples = Samples::default();
    println!(
        "{} warm-up and {} timed rounds of: {tasks:?}",
        options.warmup, options.iterations
    );
    println!(
        "{} cpus, load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    // The kernel's RCU grace periods are most of what a runner's start still waits for
    // (cgroup migration, tc attach); this host-wide setting shortens them. BENCHMARKS.md.
    println!(
        "/sys/kernel/rcu_expedited: {}",
        std::fs::read_to_string("/sys/kernel/rcu_expedited")
            .map_or_else(|e| format!("unreadable ({e})"), |v| v.trim().to_owned())
    );
    for round in 0..options.warmup + options.iterations {
        tasks.shuffle(&mut rng);
        let timed = round >= options.warmup;
        for task in &tasks {
            let id = format!("b{}-{round}-{task:?}", std::process::id());
            bench
                .run(*task, &id, timed.then_some(&mut samples))
                .with_context(|| format!("{task:?}, round {round}"))?;
            std::thread::sleep(options.settle);
        }
    }

    println!("load average at end: {}", load_average());
    print_results(options, &bench, &samples);
    if let Some(c) = &bench.crun {
        let left = c.leftovers();
        if !left.is_empty() {
            bail!("crun left containers behind: {left:?}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match options::parse() {
        Ok(o) => o,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(64);
        }
    };
    common::run_privileged("sandbox", "ra-bench-", |tmp| bench(options, tmp))
}
