//! The only unsafe code of the crate: marking the map mirrors as plain old data for aya,
//! and reading a ring buffer record.
//!
//! Invariant: every type marked `Pod` is `#[repr(C)]`, `Copy`, has explicit padding
//! fields and no invalid bit patterns (integers and byte arrays only), so any byte
//! sequence of the right size is a valid value; [`crate::maps`] asserts the layouts.

use crate::maps::{RawConfig, RawEvent, RawOrigDst, RawOrigKey};

// SAFETY: repr(C), only integer and byte-array fields with explicit padding; every bit
// pattern is valid (see the module invariant and the layout assertions in maps.rs).
unsafe impl aya::Pod for RawConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for RawOrigKey {}
// SAFETY: as above.
unsafe impl aya::Pod for RawOrigDst {}
// SAFETY: as above.
unsafe impl aya::Pod for RawEvent {}

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
