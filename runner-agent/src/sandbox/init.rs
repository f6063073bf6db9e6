//! The sandbox init: the process that builds a runner's sandbox from the inside and then
//! runs the job's steps in it, one at a time, at the agent's request.
//!
//! The agent starts it as `runner-agent __sandbox-init` (a fresh, single-threaded process,
//! which `unshare` and `setns` into a user namespace require) with stdin = the control
//! socket and stdout = stderr = the step output pipe. It runs in two processes:
//!
//! 1. the *outer* init, in the host's pid namespace: the agent starts it in its own
//!    network namespace and in the runner's v2 cgroup (`crate::sys::spawn`) and sets up
//!    the veth meanwhile; it joins the runner's v1 cgroups (hybrid hosts; so that the
//!    cgroup namespace is rooted in the runner's cgroups), unshares the mount, UTS, IPC,
//!    cgroup and pid namespaces, forks, and then only waits for its child so that the
//!    agent can follow one process;
//! 2. the *inner* init, pid 1 of the new pid namespace: builds the root filesystem, then
//!    drops into the runner's user namespace, closes every other fd, disables core dumps,
//!    sets no_new_privs, installs the seccomp filter, waits until the agent says the
//!    network is ready, and serves `RunStep` requests.
//!
//! Ordering is the security argument: every namespace is created while init is still
//! root in the *host's* user namespace, so they all belong to it; the user namespace the
//! job runs in is joined last and owns nothing. Root inside therefore has no capability
//! over its mounts, network, hostname or IPC: it cannot unmount a mask, change an address
//! or route, or remount anything. Its uid 0 is an unprivileged host uid, so files it
//! writes on the host (it can reach none) and signals it sends carry no privilege.
//!
//! When the control socket closes (the agent finished or died), pid 1 exits and the kernel
//! kills every process of the pid namespace: a runner never outlives its agent unfenced.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use std::os::unix::process::CommandExt;

use super::protocol::{FromInit, SandboxSpec, StepEnd, StepRequest, ToInit};
use super::{rootfs, seccomp};
use crate::sys::{self, Forked};

/// The hidden first argument that makes `runner-agent` act as the sandbox init.
pub const INIT_ARG: &str = "__sandbox-init";

/// The shell every step runs under (DESIGN.md 3.2: `bash -e`).
const SHELL: &str = "/bin/bash";

/// A failure inside init, reported to the agent as `Failed { stage, message }`.
struct InitFailure {
    stage: &'static str,
    message: String,
}

trait Stage<T> {
    fn stage(self, stage: &'static str) -> Result<T, InitFailure>;
}

impl<T, E: std::fmt::Display> Stage<T> for Result<T, E> {
    fn stage(self, stage: &'static str) -> Result<T, InitFailure> {
        self.map_err(|e| InitFailure {
            stage,
            message: e.to_string(),
        })
    }
}

/// The control socket, as a line reader and a writer on the same descriptor.
struct Control {
    reader: BufReader<File>,
    writer: File,
}

impl Control {
    fn from_stdin() -> io::Result<Control> {
        // Close-on-exec (F_DUPFD_CLOEXEC): a step must never hold the control socket, or
        // it could read the next step's script and environment and forge init's messages.
        // (`exec_step` also closes everything above stderr, whatever the flags.)
        let fd = io::stdin().as_fd().try_clone_to_owned()?;
        let writer = File::from(fd.try_clone()?);
        Ok(Control {
            reader: BufReader::new(File::from(fd)),
            writer,
        })
    }

    fn send(&mut self, msg: &FromInit) -> io::Result<()> {
        let line = super::protocol::json_line(msg).map_err(io::Error::other)?;
        self.writer.write_all(&line)
    }

    /// The next message, or `None` when the agent closed the socket.
    fn recv(&mut self) -> io::Result<Option<ToInit>> {
        // The line may carry secrets (`deliver: file` values in the spec, `deliver: env`
        // values in a step's environment): it is zeroed once parsed.
        let line = super::protocol::read_secret_line(&mut self.reader)?;
        if line.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn fail(&mut self, failure: InitFailure) -> ! {
        let _ = self.send(&FromInit::Failed {
            stage: failure.stage.to_owned(),
            message: failure.message,
        });
        std::process::exit(1)
    }
}

/// Entry point of `runner-agent __sandbox-init`. Never returns.
pub fn main() -> ! {
    let mut control = match Control::from_stdin() {
        Ok(control) => control,
        Err(_) => std::process::exit(125),
    };
    match outer(&mut control) {
        Ok(code) => std::process::exit(code),
        Err(failure) => control.fail(failure),
    }
}

/// The outer init: namespaces, then wait for pid 1 of the new pid namespace.
fn outer(control: &mut Control) -> Result<i32, InitFailure> {
    let spec = match control.recv().stage("read spec")? {
        Some(ToInit::Spec(spec)) => spec,
        other => {
            return Err(InitFailure {
                stage: "read spec",
                message: format!("expected the sandbox spec, got {other:?}"),
            })
        }
    };
    // This process was born in its network namespace and the runner's v2 cgroup; the
    // agent builds and fences the veth meanwhile. Nothing of the job runs before the
    // network is ready (see `inner`).
    join_v1_cgroups(&spec.v1_tasks)?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWPID,
    )
    .stage("unshare namespaces")?;
    match sys::fork().stage("fork pid 1")? {
        Forked::Child => {
            let code = match inner(control, spec) {
                Ok(code) => code,
                Err(failure) => control.fail(failure),
            };
            std::process::exit(code)
        }
        Forked::Parent(child) => {
            // The secret files are pid 1's to write; this copy is zeroed now.
            drop(spec);
            // Only pid 1 talks to the agent from now on; the outer init keeps nothing
            // open that could hold the control socket or the output pipe. (The `Control`
            // objects are never used or dropped again: this process only exits.)
            let _ = sys::close_from(0);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return Ok(1),
                }
            }
        }
    }
}

/// Joins the runner's v1 cgroups (hybrid hosts) by writing "0" to each `tasks` file,
/// which moves only the calling thread (see `RunnerCgroup::v1_task_files` for why). That
/// moves the whole process only while it has a single thread, so that is checked first:
/// a second thread would stay outside the limits, and so would whatever it started.
fn join_v1_cgroups(tasks: &[std::path::PathBuf]) -> Result<(), InitFailure> {
    if tasks.is_empty() {
        return Ok(());
    }
    let threads = std::fs::read_dir("/proc/self/task")
        .stage("join cgroup")?
        .count();
    if threads != 1 {
        return Err(InitFailure {
            stage: "join cgroup",
            message: format!("init has {threads} threads; it must have one to join by tasks"),
        });
    }
    for file in tasks {
        std::fs::write(file, "0").map_err(|e| InitFailure {
            stage: "join cgroup",
            message: format!("{}: {e}", file.display()),
        })?;
    }
    Ok(())
}

/// Pid 1 inside: build the root, drop privileges, serve steps.
fn inner(control: &mut Control, mut spec: SandboxSpec) -> Result<i32, InitFailure> {
    // Nothing mounted from here on may propagate back to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .stage("make mounts private")?;
    // The host's /proc, while it is still the one mounted here (see `HostPids`).
    let host_proc = HostPids::open();
    nix::unistd::sethostname(&spec.runner).stage("set hostname")?;
    let userns = make_user_namespace(spec.id_base, spec.id_count).stage("create user namespace")?;
    let built = rootfs::build(&spec, userns.as_fd()).stage("build root filesystem")?;
    // The secret files are written; their values are zeroed (`SecretFile::content` is
    // `Zeroizing`).
    drop(std::mem::take(&mut spec.secret_files));
    rootfs::pivot_into(&built.root).stage("pivot_root")?;

    // Opened while still root: see `OomOrder`. Best effort.
    let oom_order = OomOrder::open().ok();

    // Become root of the runner's user namespace: the id mapping makes that the
    // unprivileged host uid `id_base`. setgroups first, while we still may.
    setns(&userns, CloneFlags::CLONE_NEWUSER).stage("join user namespace")?;
    drop(userns);
    nix::unistd::setgroups(&[]).stage("setgroups")?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .stage("setresgid")?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .stage("setresuid")?;

    // Keep only stdin (control), stdout and stderr (output pipe).
    let control_fd = control.reader.get_ref().as_raw_fd();
    let writer_fd = control.writer.as_raw_fd();
    let keep = control_fd.max(writer_fd) + 1;
    let kept: Vec<std::os::fd::RawFd> = oom_order
        .iter()
        .map(|order| order.file.as_raw_fd())
        .chain(host_proc.iter().map(|pids| pids.proc.as_raw_fd()))
        .collect();
    sys::close_from_except(keep, &kept).stage("close inherited fds")?;

    // No core dumps: with a pipe in core_pattern the kernel hands a crashing job
    // process's memory (its environment's secrets included) to a helper on the host,
    // which writes it to the host's disk. RLIMIT_CORE 1 stops both kinds of dump: a
    // file dump needs at least a page, and a pipe dump is refused at exactly 1 (core(5),
    // fs/coredump.c). The hard limit cannot be raised again without CAP_SYS_RESOURCE in
    // the host's user namespace, which the job never has.
    setrlimit(Resource::RLIMIT_CORE, 1, 1).stage("limit core dumps")?;
    nix::sys::prctl::set_no_new_privs().stage("no_new_privs")?;
    let filters = seccomp::build().stage("build seccomp filter")?;
    let listener = seccomp::install(&filters).stage("install seccomp filter")?;
    let mut notifier = Notifier {
        listener,
        host_pids: host_proc,
    };

    // SIGCHLD is read from a signalfd so that a step's exit, its timeout, an intercepted
    // system call and the agent closing the socket are all waited for in one poll.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().stage("block SIGCHLD")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .stage("signalfd")?;

    // The veth and its fence are the agent's to finish; no step runs before they are.
    match control.recv().stage("wait for network")? {
        Some(ToInit::NetworkReady) => {}
        None => return Ok(1),
        Some(other) => {
            return Err(InitFailure {
                stage: "wait for network",
                message: format!("unexpected {other:?}"),
            })
        }
    }
    control
        .send(&FromInit::SandboxReady {
            idmapped: built.idmapped,
        })
        .stage("report")?;
    loop {
        // Between steps, background processes of the job may still make intercepted
        // calls: serve those while waiting for the next request.
        if control.reader.buffer().is_empty() {
            let mut fds = [
                PollFd::new(control.reader.get_ref().as_fd(), PollFlags::POLLIN),
                PollFd::new(notifier.listener.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).stage("wait"),
            }
            let notified = readable(&fds[1]);
            let request = readable(&fds[0]) || hung_up(&fds[0]);
            if notified {
                notifier.serve(control);
            }
            if !request {
                continue;
            }
        }
        match control.recv() {
            Ok(Some(ToInit::RunStep(step))) => {
                let end = run_step(control, &signals, &mut notifier, oom_order.as_ref(), &step)
                    .stage("run step")?;
                control.send(&FromInit::StepExited(end)).stage("report")?;
            }
            Ok(Some(other)) => {
                return Err(InitFailure {
                    stage: "serve",
                    message: format!("unexpected {other:?}"),
                })
            }
            // The agent is done (or gone): returning ends pid 1 and with it the sandbox.
            Ok(None) | Err(_) => return Ok(0),
        }
    }
}

fn readable(fd: &PollFd<'_>) -> bool {
    fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN))
}

fn hung_up(fd: &PollFd<'_>) -> bool {
    fd.revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}

/// The supervisor of the seccomp filter: answers every intercepted call with `EPERM`
/// and reports it to the agent.
struct Notifier {
    listener: OwnedFd,
    /// How the caller's host pid is found (`None` where the host's /proc could not be
    /// opened: the agent then looks it up itself).
    host_pids: Option<HostPids>,
}

/// Finds the host pid of a process of the sandbox while it waits in an intercepted call,
/// so that its refusal names it even when it exits right after (a job's last act often
/// is): a pidfd for it, opened in init's pid namespace, and that pidfd's `Pid:` line in
/// the fdinfo of init's own entry in the host's /proc, which numbers pids as the host does
/// (proc(5), /proc/PID/fdinfo for pidfds). Looking the pid up from the agent instead
/// raced with the caller's exit.
///
/// The descriptor is an `O_PATH` handle on the host's procfs, opened before the root is
/// switched. It gives init nothing its credentials do not: every entry is checked against
/// them (the job's uid, unprivileged on the host); init only reads its own. The job
/// cannot take it: init is not dumpable, so neither ptrace nor pidfd_getfd reach its
/// descriptors, and steps close every descriptor beyond stdio.
struct HostPids {
    proc: OwnedFd,
}

/// The process (thread group) of thread `tid`, from the sandbox's /proc.
fn thread_group(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

impl HostPids {
    /// Opens the host's /proc (call before the sandbox's own is mounted over it).
    fn open() -> Option<HostPids> {
        let proc = nix::fcntl::open(
            "/proc",
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        Some(HostPids { proc })
    }

    /// The host pid of the process of thread `tid` (numbered in init's pid namespace),
    /// while it exists. The kernel names the calling *thread*, and pidfd_open(2) takes
    /// only a process's main thread (EINVAL, or ENOENT on newer kernels, otherwise): for
    /// another thread, its thread group (the `Tgid:` of its status in the sandbox's
    /// /proc) is opened instead.
    ///
    /// `still_waiting` says whether the caller still waits in its call: only then does
    /// its thread id name it, so it is asked once the pidfd is open (a pid that ended and
    /// was given to another process meanwhile must not be named). A caller killed while
    /// waiting (at a step's timeout, say) gets no host pid.
    fn host_pid(&self, tid: u32, still_waiting: impl Fn() -> bool) -> Option<u32> {
        let pidfd = match sys::pidfd_open(tid) {
            Ok(pidfd) => pidfd,
            Err(_) => {
                let group = thread_group(tid).filter(|&group| group != tid)?;
                sys::pidfd_open(group).ok()?
            }
        };
        if !still_waiting() {
            return None;
        }
        let path = format!("self/fdinfo/{}", pidfd.as_raw_fd());
        let fd = nix::fcntl::openat(
            self.proc.as_fd(),
            path.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        let mut fdinfo = String::new();
        std::io::Read::read_to_string(&mut File::from(fd), &mut fdinfo).ok()?;
        let host: i64 = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))?
            .trim()
            .parse()
            .ok()?;
        u32::try_from(host).ok().filter(|&host| host > 0)
    }
}

impl Notifier {
    fn serve(&mut self, control: &mut Control) {
        let notification = match sys::receive_notification(self.listener.as_fd()) {
            Ok(n) => n,
            // ENOENT: the caller died (or was interrupted) before we looked.
            Err(_) => return,
        };
        // Read who it was before answering: afterwards the process may be gone.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", notification.pid))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        let host_pid = self.host_pids.as_ref().and_then(|pids| {
            pids.host_pid(notification.pid, || {
                sys::notification_valid(self.listener.as_fd(), notification.id)
            })
        });
        // Every refusal is reported: the agent's audit budget (limits.audit_log) is what
        // bounds a job that keeps trying, by stopping it. A write to the agent that blocks
        // holds the answer back, and with it the job's intercepted call. Reported before
        // it is answered, while the caller still waits in the call: the agent looks up
        // the caller's host pid as the report arrives, and a caller that made its last
        // call before exiting is usually still there.
        let _ = control.send(&FromInit::Denied {
            pid: notification.pid,
            host_pid,
            comm,
            call: seccomp::describe(notification.arch, notification.nr, &notification.args),
        });
        let _ = sys::deny_notification(self.listener.as_fd(), notification.id, libc::EPERM);
    }
}

/// Creates a user namespace mapping `0..count` inside to `base..base+count` on the host,
/// and returns a descriptor for it. A child unshares the namespace and we, still root in
/// the parent namespace, write its maps (user_namespaces(7), "User and group ID mappings").
fn make_user_namespace(base: u32, count: u32) -> io::Result<OwnedFd> {
    let (ready_read, ready_write) = nix::unistd::pipe()?;
    let (hold_read, hold_write) = nix::unistd::pipe()?;
    match sys::fork()? {
        Forked::Child => {
            drop(ready_read);
            drop(hold_write);
            // /proc is still the host's, where our pid is not the one our parent sees
            // (we are in a new pid namespace): report the host pid /proc knows us by.
            let host_pid = std::fs::read_link("/proc/self")
                .ok()
                .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
                .filter(|_| unshare(CloneFlags::CLONE_NEWUSER).is_ok())
                .unwrap_or(0);
            let _ = nix::unistd::write(&ready_write, &host_pid.to_ne_bytes());
            // Wait until the parent has opened our namespace (it closes the pipe).
            let mut byte = [0u8; 1];
            let _ = nix::unistd::read(&hold_read, &mut byte);
            std::process::exit(0)
        }
        Forked::Parent(child) => {
            drop(ready_write);
            drop(hold_read);
            let mut bytes = [0u8; 4];
            let result = (|| {
                let host_pid = match nix::unistd::read(&ready_read, &mut bytes)? {
                    4 => u32::from_ne_bytes(bytes),
                    _ => 0,
                };
                if host_pid == 0 {
                    return Err(io::Error::other(
                        "the child could not unshare a user namespace",
                    ));
                }
                let proc_dir = Path::new("/proc").join(host_pid.to_string());
                let map = format!("0 {base} {count}\n");
                std::fs::write(proc_dir.join("uid_map"), &map)?;
                std::fs::write(proc_dir.join("gid_map"), &map)?;
                File::open(proc_dir.join("ns/user")).map(OwnedFd::from)
            })();
            drop(hold_write);
            let _ = waitpid(child, None);
            result
        }
    }
}

/// Runs one step and waits for it, reaping every other process that ends meanwhile (pid
/// 1 inherits orphans).
fn run_step(
    control: &mut Control,
    signals: &SignalFd,
    notifier: &mut Notifier,
    oom_order: Option<&OomOrder>,
    step: &StepRequest,
) -> io::Result<StepEnd> {
    let pid = match OomOrder::fork_step(oom_order)? {
        Forked::Child => exec_step(step),
        Forked::Parent(pid) => pid,
    };
    let deadline =
        (step.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(step.timeout_ms));
    let mut timed_out = false;
    loop {
        if let Some(end) = reap(pid)? {
            return Ok(if timed_out { StepEnd::TimedOut } else { end });
        }
        let wait = match deadline {
            Some(deadline) if !timed_out => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Kill the step's whole process group (it is a session leader).
                    let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                    let _ = kill(pid, Signal::SIGKILL);
                    timed_out = true;
                    continue;
                }
                PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                    .unwrap_or(PollTimeout::MAX)
            }
            _ => PollTimeout::try_from(60_000).unwrap_or(PollTimeout::MAX),
        };
        let control_fd = control.reader.get_ref().as_fd();
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(control_fd, PollFlags::POLLIN),
            PollFd::new(notifier.listener.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, wait) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let (hangup, notified) = (hung_up(&fds[1]), readable(&fds[2]));
        // Drain the signalfd; the reap above does the actual work.
        while let Ok(Some(_)) = signals.read_signal() {}
        if hangup {
            // The agent is gone mid-step: end everything now.
            std::process::exit(1);
        }
        if notified {
            notifier.serve(control);
        }
    }
}

/// Reaps every exited child; returns how `step` ended once it has.
fn reap(step: Pid) -> io::Result<Option<StepEnd>> {
    let mut result = None;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(result),
            Ok(WaitStatus::Exited(pid, code)) if pid == step => {
                result = Some(StepEnd::Exited { code })
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == step => {
                result = Some(StepEnd::Signaled {
                    signal: signal as i32,
                })
            }
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => return Ok(result),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The order in which the OOM killer takes a runner's processes: a step's first, init
/// last.
///
/// Why: the OOM killer picks the process with the most memory of the runner's cgroup,
/// counted as resident pages. A job that fills its tmpfs (the writable layer is memory)
/// holds its memory in files, which count for no process, so the largest was init, with
/// the agent binary mapped: the OOM killer took both inits and the whole sandbox died
/// ("the sandbox init exited unexpectedly") instead of the step, and no later step could
/// run. Lowering init's score would need CAP_SYS_RESOURCE, which root does not have on
/// every host (not on this project's CI machines). Raising a score needs no privilege,
/// but a step cannot raise its own before exec (its /proc files belong to the host's root
/// until it execs in the job's user namespace). So pid 1 keeps a descriptor of its own
/// `oom_score_adj`, opened while it is still root, sets [`STEP_OOM_SCORE_ADJ`] just
/// before forking a step (the child inherits it) and its own value again right after
/// (the value it started with, inherited from the agent: going back to it is not below
/// the minimum inherited with it, so it needs no privilege either). For the few
/// microseconds of the fork, pid 1 itself is at 1000; an OOM in exactly that window
/// could still take it. It also makes a job's processes the first choice of a host-wide
/// OOM, ahead of the host's services. The job can lower its score again, but not below
/// the minimum the agent passed down, so it can at most tie with init.
struct OomOrder {
    file: File,
    /// pid 1's own value, restored after each fork.
    own: Vec<u8>,
}

/// `oom_score_adj` (proc(5)) of a step's processes.
const STEP_OOM_SCORE_ADJ: &[u8] = b"1000";

impl OomOrder {
    /// Opens pid 1's own `oom_score_adj`; call while still root in the host's namespace.
    fn open() -> io::Result<OomOrder> {
        let path = "/proc/self/oom_score_adj";
        let own = std::fs::read(path)?.trim_ascii().to_vec();
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        Ok(OomOrder { file, own })
    }

    fn set(&self, value: &[u8]) {
        use std::os::unix::fs::FileExt;
        // Best effort: a failure only loses the order.
        let _ = self.file.write_at(value, 0);
    }

    /// Forks with the step's score, then restores pid 1's.
    fn fork_step(order: Option<&OomOrder>) -> nix::Result<Forked> {
        if let Some(order) = order {
            order.set(STEP_OOM_SCORE_ADJ);
        }
        let forked = sys::fork();
        if let (Some(order), Ok(Forked::Parent(_)) | Err(_)) = (order, &forked) {
            order.set(&order.own);
        }
        forked
    }
}

/// In the forked child: become a session leader, set up stdio and exec bash.
fn exec_step(step: &StepRequest) -> ! {
    let _ = nix::unistd::setsid();
    let _ = SigSet::empty().thread_set_mask();
    // Never run a step with init's stdin (the control socket) as its own: if /dev/null
    // cannot be had, the step does not run.
    let stdin = File::open("/dev/null")
        .and_then(|null| nix::unistd::dup2_stdin(null).map_err(io::Error::from));
    if let Err(e) = stdin {
        eprintln!("runner: cannot give the step /dev/null as stdin: {e}");
        std::process::exit(1);
    }
    // The step gets stdin (/dev/null), stdout and stderr (the output pipe) and nothing
    // else of init's: not the control socket, not the seccomp listener, not the
    // oom_score_adj handle. Closing them here does not depend on each being close-on-exec.
    if let Err(e) = sys::close_from(3) {
        eprintln!("runner: cannot close init's descriptors: {e}");
        std::process::exit(1);
    }
    if let Err(e) = nix::unistd::chdir(&step.cwd) {
        eprintln!(
            "runner: cannot enter working directory {}: {e}",
            step.cwd.display()
        );
        std::process::exit(1);
    }
    let err = std::process::Command::new(SHELL)
        .args(["--noprofile", "--norc", "-e", "-c", &step.script])
        .arg0("bash")
        .env_clear()
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .exec();
    eprintln!("runner: cannot run {SHELL}: {err}");
    std::process::exit(127)
}
