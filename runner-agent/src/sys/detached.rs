//! One netlink request sent from a child process of its own, for requests whose answer
//! the caller does not want to wait for in its own process.
//!
//! Why: deleting a veth (RTM_DELLINK) takes the devices out of the host's tables at once,
//! but the kernel answers only after it has waited for RCU grace periods until their
//! memory can be freed (about 20 ms here). Sent from a thread, that wait holds the whole
//! process: a process exits only when each of its threads has left the kernel, so
//! `runner-agent run` took 20 ms longer to end than its work did. Sent from a child, the
//! wait is the child's; the agent watches the device's name instead (see
//! `network::remove`), and a child still waiting when the agent exits is reparented and
//! reaped by the system.
//!
//! The child is a copy of this multi-threaded process (`clone3` without `CLONE_VM`), so
//! until it exits it makes raw, async-signal-safe system calls only, on a request
//! serialised before the clone: it closes every descriptor it inherited (stdin, stdout
//! and stderr included) except the report pipe, opens a `NETLINK_ROUTE` socket, sends the request, reads the kernel's
//! acknowledgement and writes its error number (0 for success) to the pipe.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::spawn::{clone_with_pidfd, Child, Cloned};

/// `NLMSG_ERROR` from `<linux/netlink.h>`: the type of an acknowledgement.
const NLMSG_ERROR: u16 = 2;
/// Bytes of a `struct nlmsghdr`, after which an acknowledgement's error number follows.
const NLMSG_HDRLEN: usize = 16;
/// Where the report pipe's write end goes in the child.
const REPORT_FD: RawFd = 3;
/// How long the child waits for the kernel's answer.
const ANSWER_TIMEOUT_SECS: libc::time_t = 30;

/// The error number the kernel answered a netlink request with, from the start of the
/// answer `reply` (`Some(0)` for an acknowledgement without error), or `None` when
/// `reply` is not an acknowledgement.
fn ack_errno(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    let error = i32::from_ne_bytes(reply.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)?.try_into().ok()?);
    Some(-error)
}

/// Sends `request` (one serialised `NETLINK_ROUTE` message that asks for an
/// acknowledgement, `NLM_F_ACK`) from a new child process. Returns the child and the read
/// end of a pipe on which it writes the request's error number as 4 native-endian bytes
/// (0 for success) before it exits; end of file without them means the child could not
/// send the request.
pub fn netlink_request(request: &[u8]) -> Result<(Child, OwnedFd), Errno> {
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child side only calls `send_and_exit`, which makes raw,
    // async-signal-safe system calls on `request` (alive in the child's copy of this
    // address space) and local buffers, and never returns.
    match unsafe { clone_with_pidfd(0, None) }? {
        Cloned::Child => send_and_exit(request, report_write.as_raw_fd()),
        Cloned::Parent(child) => Ok((child, report_read)),
    }
}

/// The child's side of [`netlink_request`].
fn send_and_exit(request: &[u8], report: RawFd) -> ! {
    // SAFETY: only raw system calls on descriptor numbers, on `request` and on local
    // buffers that outlive each call; nothing allocates, locks or panics (`ack_errno`
    // only slices a local array).
    unsafe {
        let finish = |errno: i32| -> ! {
            let bytes = errno.to_ne_bytes();
            libc::write(REPORT_FD, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0)
        };
        // Keep nothing of the agent's open, its stdin, stdout and stderr included: a copy
        // of one of its sockets or pipes would keep the other end from seeing it closed
        // for as long as this child waits (`runner-agent run | tee log` would wait).
        if libc::dup2(report, REPORT_FD) < 0 {
            libc::_exit(1);
        }
        libc::syscall(libc::SYS_close_range, 0, REPORT_FD - 1, 0);
        libc::syscall(libc::SYS_close_range, REPORT_FD + 1, u32::MAX, 0);
        let socket = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if socket < 0 {
            finish(Errno::last_raw());
        }
        // The kernel always answers a request that asks for an acknowledgement; should it
        // not, the child gives up (EAGAIN) rather than wait for ever.
        let patience = libc::timeval {
            tv_sec: ANSWER_TIMEOUT_SECS,
            tv_usec: 0,
        };
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&patience as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let sent = libc::sendto(
            socket,
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        );
        if sent < 0 {
            finish(Errno::last_raw());
        }
        let mut reply = [0u8; 512];
        let received = libc::recv(socket, reply.as_mut_ptr().cast(), reply.len(), 0);
        if received < 0 {
            finish(Errno::last_raw());
        }
        match ack_errno(&reply[..received as usize]) {
            Some(errno) => finish(errno),
            None => finish(libc::EPROTO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(kind: u16, error: i32) -> Vec<u8> {
        let mut reply = vec![0u8; 36];
        reply[0..4].copy_from_slice(&36u32.to_ne_bytes());
        reply[4..6].copy_from_slice(&kind.to_ne_bytes());
        reply[16..20].copy_from_slice(&error.to_ne_bytes());
        reply
    }

    #[test]
    fn acknowledgements_give_their_error_number() {
        assert_eq!(ack_errno(&answer(NLMSG_ERROR, 0)), Some(0));
        assert_eq!(
            ack_errno(&answer(NLMSG_ERROR, -libc::ENODEV)),
            Some(libc::ENODEV)
        );
        // Not an acknowledgement, or too short to hold one.
        assert_eq!(ack_errno(&answer(16, 0)), None);
        assert_eq!(ack_errno(&answer(NLMSG_ERROR, 0)[..18]), None);
        assert_eq!(ack_errno(&[]), None);
    }
}
