//! The only unsafe code of the crate: marking the map mirrors as plain old data for aya,
//! reading a ring buffer record, and the getsockopt(2) calls of the tunnel relay.
//!
//! Invariant: every type marked `Pod` is `#[repr(C)]`, `Copy`, has explicit padding
//! fields and no invalid bit patterns (integers and byte arrays only), so any byte
//! sequence of the right size is a valid value; [`crate::maps`] asserts the layouts.

use crate::maps::{RawConfig, RawEvent, RawOrigDst, RawOrigKey};
use crate::relay::RawRelayPeer;

// SAFETY: repr(C), only integer and byte-array fields with explicit padding; every bit
// pattern is valid (see the module invariant and the layout assertions in maps.rs).
unsafe impl aya::Pod for RawConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for RawOrigKey {}
// SAFETY: as above.
unsafe impl aya::Pod for RawOrigDst {}
// SAFETY: as above.
unsafe impl aya::Pod for RawEvent {}
// SAFETY: as above (two u64, no padding; layout asserted in relay.rs).
unsafe impl aya::Pod for RawRelayPeer {}

/// Decodes one ring buffer record, or `None` when it is shorter than a [`RawEvent`]
/// (a record from a different object version; never produced by ours).
pub(crate) fn read_event(bytes: &[u8]) -> Option<RawEvent> {
    if bytes.len() < std::mem::size_of::<RawEvent>() {
        return None;
    }
    // SAFETY: the slice holds at least size_of::<RawEvent>() readable bytes (checked
    // above), RawEvent accepts any bit pattern (module invariant), and read_unaligned
    // makes no alignment assumption about the ring buffer's memory.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
}

/// Registers a ring buffer with the tokio reactor for read readiness.
pub(crate) fn register_ring(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
) -> std::io::Result<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
    // SAFETY: the RingBuf owns its MapData, which owns the map fd for the RingBuf's whole
    // life, and as_raw_fd() always returns that same fd; the AsyncFd takes ownership of
    // the RingBuf, so the fd stays open until the AsyncFd is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// The socket's cookie (socket(7) SO_COOKIE): a 64-bit id unique for the socket's life.
pub(crate) fn socket_cookie(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `fd` is a live descriptor for the call (borrowed); the kernel writes at most
    // `len` (8) bytes into `cookie`, a u64 on our stack, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Bytes the application side has handed to this TCP socket's send path so far: first
/// transmissions (`tcpi_bytes_sent - tcpi_bytes_retrans`, RFC 4898 counters) plus what
/// is queued but not yet sent (`tcpi_notsent_bytes`). tcp(7) TCP_INFO; Linux 4.19+.
pub(crate) fn tcp_bytes_written(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is a plain C struct of integers; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is live for the call; the kernel writes at most `len` bytes into
    // `info` (it truncates to the length given) and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_retrans) + 8;
    if (len as usize) < needed {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("TCP_INFO of {len} bytes lacks tcpi_bytes_sent/retrans (kernel < 4.19)"),
        ));
    }
    Ok(info.tcpi_bytes_sent - info.tcpi_bytes_retrans + u64::from(info.tcpi_notsent_bytes))
}

/// Sets SO_RCVLOWAT to 1 (the default), for its side effect: tcp_set_rcvlowat() calls
/// tcp_data_ready(), i.e. the socket's `sk_data_ready`, when bytes are queued. Once the
/// socket is in the relay SOCKHASH that callback is the sockmap verdict, which then
/// relays what arrived before the socket was added (net/ipv4/tcp.c, tcp_set_rcvlowat).
pub(crate) fn kick_data_ready(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: `fd` is live for the call; the kernel reads `size_of::<c_int>()` bytes
    // from `one`, an int on our stack.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
