//! Thin wrappers around the few system calls that nix does not cover.
//!
//! This is one of the two places in the project where `unsafe` is allowed (the other is the
//! eBPF crate's own `sys` module). Every wrapper takes and returns safe types, checks the
//! return value, and documents its invariants next to the `unsafe` block.
//!
//! The new mount API (`open_tree`, `mount_setattr`, `move_mount`; Linux 5.12+) is used to
//! build the idmapped lower layer of the sandbox root: see `mount_setattr(2)`. Starting
//! the sandbox init with `clone3(2)` has a module of its own, [`spawn`], and so has sending
//! a netlink request from a child process, [`detached`].

pub mod detached;
pub mod spawn;

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;

/// `OPEN_TREE_CLONE` from `<linux/mount.h>`: detach a copy of the mount.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOUNT_ATTR_RDONLY` from `<linux/mount.h>`.
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
/// `MOUNT_ATTR_NOSUID` from `<linux/mount.h>`.
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
/// `MOUNT_ATTR_NODEV` from `<linux/mount.h>`.
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
/// `MOUNT_ATTR_IDMAP` from `<linux/mount.h>`: apply the user namespace's id mapping.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `MOVE_MOUNT_F_EMPTY_PATH` from `<linux/mount.h>`: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

/// `struct mount_attr` from `<linux/mount.h>` (version 0, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const _: () = assert!(std::mem::size_of::<MountAttr>() == 32);

fn cstring(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)
}

/// Clones the single mount at `path` (not its submounts) into a detached mount and returns
/// its file descriptor (`open_tree(2)` with `OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC`).
pub fn open_tree_clone(path: &Path) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call; the flags are
    // plain integers. The kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the syscall succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Makes the detached mount `mount` read-only, nosuid and nodev, and maps its ownership
/// through the user namespace `userns` (an idmapped mount, `mount_setattr(2)`).
pub fn idmap_read_only(mount: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    set_mount_attr(mount, &attr)
}

/// Makes the detached mount `mount` read-only, nosuid and nodev without an id mapping: the
/// fallback when the host root's filesystem cannot be idmapped.
pub fn read_only(mount: BorrowedFd<'_>) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    set_mount_attr(mount, &attr)
}

fn set_mount_attr(mount: BorrowedFd<'_>, attr: &MountAttr) -> Result<(), Errno> {
    let empty = c"";
    // SAFETY: `mount` is a live descriptor; `empty` is a valid C string; `attr` points to a
    // properly initialised `struct mount_attr` whose size we pass, and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Attaches the detached mount `mount` at `target` (`move_mount(2)`).
pub fn move_mount_to(mount: BorrowedFd<'_>, target: &Path) -> Result<(), Errno> {
    let target = cstring(target)?;
    let empty = c"";
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call, and
    // `mount` is a live descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Sets the extended attribute `name` of `path` to `value` (`setxattr(2)`), used for
/// overlayfs's `trusted.overlay.opaque` marker.
pub fn set_xattr(path: &Path, name: &std::ffi::CStr, value: &[u8]) -> Result<(), Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` and `name` are valid C strings and `value` a valid slice, all alive
    // for the duration of the call; the kernel copies them.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Closes every descriptor from `first` upwards (`close_range(2)`), so that nothing the
/// agent had open leaks into the sandbox.
pub fn close_from(first: RawFd) -> Result<(), Errno> {
    close_range(first, u32::MAX)
}

/// Closes every descriptor from `first` upwards except those in `kept` (which may lie
/// anywhere).
pub fn close_from_except(first: RawFd, kept: &[RawFd]) -> Result<(), Errno> {
    let mut kept: Vec<RawFd> = kept.iter().copied().filter(|&fd| fd >= first).collect();
    kept.sort_unstable();
    kept.dedup();
    let mut from = first;
    for fd in kept {
        if fd > from {
            close_range(from, fd as u32 - 1)?;
        }
        from = fd + 1;
    }
    close_range(from, u32::MAX)
}

/// A pidfd for process `pid` of the caller's pid namespace (`pidfd_open(2)`).
pub fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain integer arguments; the kernel returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the call succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn close_range(first: RawFd, last: u32) -> Result<(), Errno> {
    // SAFETY: close_range only closes descriptors; no memory is passed. Descriptors owned
    // by Rust objects in the range must not be used afterwards, which the callers ensure
    // by calling this right before exec or right after setting up the only fds they keep.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, last, 0) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The result of [`fork`].
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(nix::unistd::Pid),
    /// In the child.
    Child,
}

/// `fork(2)`. Only called by the sandbox init, which is single-threaded, so the child may
/// run arbitrary code afterwards (no lock can be held by a thread that no longer exists).
pub fn fork() -> Result<Forked, Errno> {
    // SAFETY: the sandbox init process never starts a second thread (it runs no async
    // runtime and spawns no threads), so the child inherits a consistent address space.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Takes ownership of descriptor `fd`, which this process inherited from its parent by
/// agreement (the proxy child gets the original-destination map as fd 3). Fails when no
/// such descriptor is open.
pub fn take_inherited_fd(fd: RawFd) -> Result<OwnedFd, Errno> {
    nix::fcntl::fcntl(
        // SAFETY: the descriptor is only borrowed for this one fcntl call, which checks
        // that it is open.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )?;
    // SAFETY: the descriptor is open (checked above), was passed to us for this purpose,
    // and nothing else in this process owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arranges for `cmd`'s child to receive `fd` as descriptor `target` (and nothing else of
/// ours: everything else stays close-on-exec).
pub fn pass_fd(cmd: &mut tokio::process::Command, fd: OwnedFd, target: RawFd) {
    // SAFETY: the closure runs between fork and exec and only calls dup2(2) and fcntl(2),
    // which are async-signal-safe; it allocates nothing. `fd` is moved into the closure,
    // so it stays open until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let raw = fd.as_raw_fd();
            if raw == target {
                // dup2 onto itself keeps FD_CLOEXEC; clear it instead.
                if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Installs a seccomp filter on the calling thread with `SECCOMP_FILTER_FLAG_NEW_LISTENER`
/// and returns the listener: the descriptor on which calls the filter answers with
/// `SECCOMP_RET_USER_NOTIF` are delivered (seccomp_unotify(2)). no_new_privs must be set.
pub fn install_notifying_filter(program: &[seccompiler::sock_filter]) -> Result<OwnedFd, Errno> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| Errno::E2BIG)?,
        // The kernel only reads the program; seccompiler's sock_filter has the kernel's
        // layout (u16 code, u8 jt, u8 jf, u32 k).
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to `program`, which outlives the call; the kernel copies the
    // filter. The flags request a listener fd, returned on success.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the call succeeded, so `fd` is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One intercepted system call.
#[derive(Debug, Clone, Copy)]
pub struct Notification {
    /// Cookie to answer with.
    pub id: u64,
    /// The caller (in the supervisor's pid namespace).
    pub pid: u32,
    /// The `AUDIT_ARCH_*` value of the ABI the call was made through.
    pub arch: u32,
    /// System call number (in that ABI's numbering).
    pub nr: i64,
    /// Its arguments.
    pub args: [u64; 6],
}

/// Receives the next notification from a seccomp listener (SECCOMP_IOCTL_NOTIF_RECV).
pub fn receive_notification(listener: BorrowedFd<'_>) -> Result<Notification, Errno> {
    // SAFETY: seccomp_notif is plain old data for which all-zero is valid; the kernel
    // requires it zeroed before NOTIF_RECV.
    let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: `notif` is a properly sized, writable seccomp_notif that outlives the call.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut notif as *mut libc::seccomp_notif,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(Notification {
        id: notif.id,
        pid: notif.pid,
        arch: notif.data.arch,
        nr: i64::from(notif.data.nr),
        args: notif.data.args,
    })
}

/// Whether notification `id` is still pending: its caller is still waiting in the call,
/// so its thread id still names it (SECCOMP_IOCTL_NOTIF_ID_VALID, seccomp_unotify(2)).
pub fn notification_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    let mut id = id;
    // SAFETY: `id` is a u64 that outlives the call; the kernel only reads it.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &mut id as *mut u64,
        )
    };
    rc == 0
}

/// Answers notification `id`: the call fails with `errno` and is never executed.
pub fn deny_notification(listener: BorrowedFd<'_>, id: u64, errno: i32) -> Result<(), Errno> {
    let mut resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: -errno,
        flags: 0,
    };
    // SAFETY: `resp` is a valid seccomp_notif_resp that outlives the call.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp as *mut libc::seccomp_notif_resp,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
