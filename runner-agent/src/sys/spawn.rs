//! Starting the sandbox init with `clone3(2)`: born in the runner's v2 cgroup
//! (`CLONE_INTO_CGROUP`) and, optionally, in a network namespace of its own
//! (`CLONE_NEWNET`), owned through a pidfd (`CLONE_PIDFD`).
//!
//! Why not `std::process::Command` and a `cgroup.procs` write: moving a process into a
//! cgroup write-locks the kernel's global `cgroup_threadgroup_rwsem` while holding
//! `cgroup_mutex`, and that writer first waits for an RCU grace period unless another
//! migration happened moments before. Measured here: 5 to 10 ms per move, on every
//! `runner-agent run`, and every other cgroup operation on the host (the fence's
//! attachments included) queues behind it. A process cloned into the cgroup takes only
//! the read side of that lock (about 0.15 ms, fork included). The child also exists in
//! its network namespace from its first instruction, so the agent can build the veth
//! while the child is still being exec'd.
//!
//! The child of `clone3` without `CLONE_VM` is a copy of this multi-threaded process with
//! only the calling thread: until `execve` it may only make async-signal-safe calls
//! (`signal-safety(7)`). Everything it needs (C strings, argument vectors, descriptor
//! numbers) is prepared before the clone, and [`exec_child`] makes raw system calls only:
//! no allocation, no lock, no panic. An exec failure is reported through a close-on-exec
//! pipe, as `posix_spawn` does; a successful exec closes the pipe. The clone itself,
//! [`clone_with_pidfd`], also serves [`super::detached`].
//!
//! A [`Child`] is reaped by [`Child::reap`] (or [`Child::try_reap`]); dropping one that
//! has not exited leaves a zombie until this process exits, when the system reaps it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};

/// `CLONE_PIDFD` from `<linux/sched.h>`: return a pidfd for the child.
const CLONE_PIDFD: u64 = 0x0000_1000;
/// `CLONE_NEWNET` from `<linux/sched.h>`.
const CLONE_NEWNET: u64 = 0x4000_0000;
/// `CLONE_INTO_CGROUP` from `<linux/sched.h>` (Linux 5.7): start in `cgroup`.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` from `<linux/sched.h>`, version 2 (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// What [`spawn`] starts, and where.
pub struct SpawnRequest<'a> {
    /// The program, executed with an empty environment.
    pub program: &'a Path,
    /// Its arguments after `argv[0]` (which is `program`).
    pub args: &'a [&'a str],
    /// The child's stdin, stdout and stderr.
    pub stdio: [BorrowedFd<'a>; 3],
    /// An open v2 cgroup directory the child starts in.
    pub cgroup: BorrowedFd<'a>,
    /// Whether the child starts in a new network namespace (owned by this process's
    /// user namespace).
    pub new_netns: bool,
}

/// Why [`spawn`] failed, by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The program path or an argument holds a NUL byte, or a pipe could not be made.
    #[error("preparing: {0}")]
    Prepare(Errno),
    /// `clone3` refused. ENOSYS, E2BIG or EINVAL mean a kernel older than 5.7, which has
    /// no `CLONE_INTO_CGROUP`, or a seccomp filter around the agent that hides `clone3`
    /// (container runtimes' default profiles do); EBADF, a directory that is not a v2
    /// cgroup.
    #[error("clone3: {0}{hint}", hint = if matches!(.0, Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL) {
        " (starting a sandbox needs clone3 with CLONE_INTO_CGROUP: Linux 5.7 or later, \
         and no seccomp filter around runner-agent that refuses clone3)"
    } else {
        ""
    })]
    Clone(Errno),
    /// The child could not execute the program (the child was reaped).
    #[error("exec: {0}")]
    Exec(Errno),
    /// The child was gone by the time it should have been running the program.
    #[error("the child ended as it started: {0:?}")]
    Ended(WaitStatus),
}

/// A child started by [`spawn`]. Nothing else reaps it, so its pid names it until
/// [`Child::try_reap`] has seen it exit; the pidfd names it even after that.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: OwnedFd,
}

impl Drop for Child {
    /// Reaps the child if it has exited meanwhile, so that a handle dropped on an error
    /// path leaves no zombie behind when it need not.
    fn drop(&mut self) {
        let _ = self.try_reap();
    }
}

impl Child {
    /// Its pid in this process's pid namespace.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its pidfd: polls readable once the child has exited (`pidfd_open(2)`).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.pidfd.as_fd()
    }

    /// Reaps the child if it has exited: `Ok(None)` while it still runs.
    pub fn try_reap(&self) -> Result<Option<WaitStatus>, Errno> {
        match waitid(
            Id::PIDFd(self.pidfd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        )? {
            WaitStatus::StillAlive => Ok(None),
            status => Ok(Some(status)),
        }
    }

    /// Waits until the child has exited and reaps it. Returns its exit status, or `None`
    /// when it had already been reaped or could not be waited for.
    pub async fn reap(&self) -> Option<WaitStatus> {
        if let Ok(Some(status)) = self.try_reap() {
            return Some(status);
        }
        let Ok(pidfd) = self.pidfd.try_clone() else {
            return None;
        };
        // SAFETY: the OwnedFd owns its descriptor for its whole life and as_raw_fd()
        // always returns it; the AsyncFd takes ownership of the OwnedFd, so the
        // descriptor stays open until the AsyncFd is dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        };
        // A pidfd polls readable once its process has exited (pidfd_open(2)).
        if let Ok(exited) = registered {
            let _ = exited.readable().await;
        }
        self.try_reap().ok().flatten()
    }

    /// Waits until the child exits and reaps it.
    fn wait_blocking(&self) -> Result<WaitStatus, Errno> {
        loop {
            match waitid(Id::PIDFd(self.pidfd()), WaitPidFlag::WEXITED) {
                Err(Errno::EINTR) => continue,
                other => return other,
            }
        }
    }
}

/// Which side of [`clone_with_pidfd`] the caller is on.
pub enum Cloned {
    /// In the parent, with the child.
    Parent(Child),
    /// In the child: a copy of the caller's address space with only the calling thread,
    /// every signal blocked (but SIGKILL and SIGSTOP) and the caller's handlers still
    /// installed.
    Child,
}

/// `clone3(2)` with `CLONE_PIDFD` and `flags`, like fork(2) (no `CLONE_VM`: the child
/// returns from this call on its own copy of the stack), in `cgroup` when `flags` holds
/// `CLONE_INTO_CGROUP`.
///
/// # Safety
///
/// On the [`Cloned::Child`] side the caller runs in a copy of a multi-threaded process
/// whose other threads are gone, possibly holding locks: it may only make
/// async-signal-safe calls (`signal-safety(7)`; no allocation, no lock, no panic) until
/// it execs or exits.
pub unsafe fn clone_with_pidfd(
    flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<Cloned, Errno> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: flags | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.map_or(0, |fd| fd.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    // Every signal is blocked across the clone, so that none can run one of this
    // process's handlers in the child before it has reset them (posix_spawn does the
    // same); the parent's mask is restored right after.
    let mut previous = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )?;
    // SAFETY: `args` is a valid, fully initialised clone_args of the size passed, and
    // `pidfd` (where the kernel writes the new pidfd) outlives the call. What the child
    // may do afterwards is this function's own safety contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        return Ok(Cloned::Child);
    }
    let clone_errno = Errno::last();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
    match ret {
        pid if pid > 0 => Ok(Cloned::Parent(Child {
            pid: pid as u32,
            // SAFETY: clone3 succeeded with CLONE_PIDFD, so the kernel stored a new
            // descriptor in `pidfd` that nothing else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        })),
        _ => Err(clone_errno),
    }
}

fn c_string(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// Starts `request.program` as described. Returns once the child has exec'd (or fails
/// with the exec's error, the child reaped).
pub fn spawn(request: &SpawnRequest<'_>) -> Result<Child, SpawnError> {
    let program =
        c_string(request.program.as_os_str().as_encoded_bytes()).map_err(SpawnError::Prepare)?;
    let args = request
        .args
        .iter()
        .map(|a| c_string(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SpawnError::Prepare)?;
    let mut argv: Vec<*const libc::c_char> = Vec::with_capacity(args.len() + 2);
    argv.push(program.as_ptr());
    argv.extend(args.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let stdio = request.stdio.map(|fd| fd.as_raw_fd());
    let (report_read, report_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Prepare)?;

    let mut flags = CLONE_INTO_CGROUP;
    if request.new_netns {
        flags |= CLONE_NEWNET;
    }
    // SAFETY: the child side only calls `exec_child`, which is async-signal-safe (module
    // docs) and never returns.
    let child = match unsafe { clone_with_pidfd(flags, Some(request.cgroup)) } {
        Ok(Cloned::Child) => exec_child(&program, &argv, &envp, stdio, report_write.as_raw_fd()),
        Ok(Cloned::Parent(child)) => child,
        Err(e) => return Err(SpawnError::Clone(e)),
    };
    drop(report_write);
    let mut report = [0u8; 4];
    let read = loop {
        match nix::unistd::read(&report_read, &mut report) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    match read {
        // The pipe closed: on exec, or because the child died before it could report
        // (killed, or out of memory in the runner's cgroup). The programs started here
        // wait for input first, so one that is already gone did not run.
        Ok(0) => match child.try_reap() {
            Ok(Some(status)) => Err(SpawnError::Ended(status)),
            _ => Ok(child),
        },
        Ok(_) => {
            let _ = child.wait_blocking();
            Err(SpawnError::Exec(Errno::from_raw(i32::from_ne_bytes(
                report,
            ))))
        }
        Err(e) => {
            let _ = child.wait_blocking();
            Err(SpawnError::Exec(e))
        }
    }
}

/// The child's side of [`spawn`]: descriptors, process group, signals, then `execve`.
/// Only raw, async-signal-safe system calls on data prepared before the clone.
fn exec_child(
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdio: [RawFd; 3],
    mut report: RawFd,
) -> ! {
    let fail = |report: RawFd| -> ! {
        let errno = Errno::last_raw().to_ne_bytes();
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `errno` is a local array.
        unsafe {
            libc::write(report, errno.as_ptr().cast(), errno.len());
            libc::_exit(127)
        }
    };
    let mut sources = stdio;
    // SAFETY: raw system calls on descriptor numbers and on pointers into `program`,
    // `argv`, `envp` and a local signal set, all alive for the calls; none of them
    // allocates or takes a lock.
    unsafe {
        // The report pipe too must survive the dup2s below.
        if report <= 2 {
            report = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, 3);
            if report < 0 {
                libc::_exit(127);
            }
        }
        // A source among 0..=2 could be overwritten by an earlier dup2: move it up first.
        for fd in sources.iter_mut() {
            if *fd <= 2 {
                let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3);
                if moved < 0 {
                    fail(report);
                }
                *fd = moved;
            }
        }
        for (target, fd) in sources.iter().enumerate() {
            if libc::dup2(*fd, target as libc::c_int) < 0 {
                fail(report);
            }
        }
        // Its own process group: a Ctrl-C at the agent's terminal is the agent's to handle
        // (by destroying the sandbox), not the sandbox's.
        if libc::setpgid(0, 0) < 0 {
            fail(report);
        }
        // Ignored signals and the mask would survive exec (Rust ignores SIGPIPE; a parent
        // may have ignored others): the init starts with every signal at its default and
        // unblocked, as POSIX_SPAWN_SETSIGDEF and SETSIGMASK would do. Dispositions
        // first, while every signal is still blocked (see `clone_with_pidfd`), so that
        // none reaches one of the agent's handlers here. The raw rt_sigaction(2) also
        // reaches the two signals glibc reserves (32, 33); an all-zero
        // `struct sigaction` is SIG_DFL with no flags on every architecture.
        let default_action = [0u64; 4];
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    fail(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Root and a v2 cgroup are needed; these tests only check what needs neither.
    #[test]
    fn clone_args_layout_matches_the_kernel() {
        assert_eq!(std::mem::offset_of!(CloneArgs, cgroup), 80);
        assert_eq!(std::mem::offset_of!(CloneArgs, exit_signal), 32);
    }

    #[test]
    fn a_nul_in_an_argument_is_refused_before_any_clone() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let dir = std::fs::File::open("/").unwrap();
        let request = SpawnRequest {
            program: Path::new("/bin/true"),
            args: &["a\0b"],
            stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
            cgroup: dir.as_fd(),
            new_netns: false,
        };
        assert_eq!(
            spawn(&request).unwrap_err(),
            SpawnError::Prepare(Errno::EINVAL)
        );
    }

    #[test]
    fn an_old_kernel_is_named_in_the_clone_error() {
        let old = SpawnError::Clone(Errno::ENOSYS).to_string();
        assert!(old.contains("Linux 5.7 or later"), "{old}");
        let other = SpawnError::Clone(Errno::EBADF).to_string();
        assert!(!other.contains("Linux"), "{other}");
    }
}
