//! Rust mirrors of the structs in `bpf/maps.h`, the single definition of every map layout.
//!
//! Invariant: each struct here has the same size and field offsets as its C twin. The C
//! header asserts them with `_Static_assert`, this module with `const` assertions carrying
//! the same numbers, so changing a layout on one side only fails the build. Addresses are
//! in network byte order (as the kernel hands them to the programs), ports in host order.
//! The `aya::Pod` impls that let these travel through maps live in [`crate::sys`].

use std::mem::{offset_of, size_of};

/// `fence_config.other_tcp`: redirect TCP to other ports to the transparent HTTP listener.
pub const OTHER_TCP_HTTP: u8 = 0;
/// `fence_config.other_tcp`: deny TCP to other ports.
pub const OTHER_TCP_DENY: u8 = 1;

/// Key 0 of the `fence_config` array: what the runner may reach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawConfig {
    /// Host-side veth address, network order.
    pub proxy_addr: u32,
    /// Runner-side veth address, network order.
    pub runner_addr: u32,
    /// Explicit proxy port, host order.
    pub explicit_port: u16,
    /// Transparent TLS listener port.
    pub tls_port: u16,
    /// Transparent HTTP listener port.
    pub http_port: u16,
    /// DNS filter port (UDP and TCP).
    pub dns_port: u16,
    /// Copied into every event.
    pub runner_id: u32,
    /// [`OTHER_TCP_HTTP`] or [`OTHER_TCP_DENY`].
    pub other_tcp: u8,
    /// 1 when the runner's own loopback is reachable.
    pub allow_loopback: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

/// Key of the `orig_dst` map: the runner-side end of a redirected TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawOrigKey {
    /// Runner source address, network order.
    pub addr: u32,
    /// Runner source port, host order.
    pub port: u16,
    /// Explicit padding, always zero (part of the hash key).
    pub pad: u16,
}

/// Value of the `orig_dst` map and of the `sock_orig` socket storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawOrigDst {
    /// Original destination address, network order.
    pub addr: u32,
    /// Original destination port, host order.
    pub port: u16,
    /// Padding.
    pub pad: u16,
    /// Process (thread group) id of the connecting process, in the host pid namespace.
    pub tgid: u32,
    /// Padding.
    pub pad2: u32,
    /// `comm` of the connecting thread, NUL padded.
    pub comm: [u8; 16],
}

/// One record of the `events` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`, CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Thread id, 0 outside process context.
    pub pid: u32,
    /// Process id, 0 outside process context.
    pub tgid: u32,
    /// Thread name, NUL padded.
    pub comm: [u8; 16],
    /// Runner id from the config.
    pub runner_id: u32,
    /// `enum fence_hook`.
    pub hook: u8,
    /// `FENCE_VERDICT_*`.
    pub verdict: u8,
    /// `enum fence_reason`.
    pub reason: u8,
    /// Address family (or the denied socket family).
    pub family: u8,
    /// IP protocol or socket protocol.
    pub protocol: u16,
    /// Socket type.
    pub sock_type: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// Padding.
    pub pad: u16,
    /// Hook specific detail (the bpf() command).
    pub detail: u32,
    /// IPv4 in the first four bytes, or IPv6; network order.
    pub daddr: [u8; 16],
}

/// Index of the first counter after the per-hook denial counters (`enum fence_counter`).
pub const CNT_REDIRECT_TLS: u32 = 10;
/// Connections redirected to the transparent HTTP listener.
pub const CNT_REDIRECT_HTTP: u32 = 11;
/// Connections and datagrams redirected to the DNS filter.
pub const CNT_REDIRECT_DNS: u32 = 12;
/// Direct connections to a proxy listener.
pub const CNT_ALLOWED_PROXY: u32 = 13;
/// Events dropped because the ring buffer was full.
pub const CNT_EVENTS_LOST: u32 = 14;
/// Size of the `counters` array.
pub const CNT_MAX: u32 = 16;

const _: () = {
    assert!(size_of::<RawConfig>() == 24);
    assert!(offset_of!(RawConfig, explicit_port) == 8);
    assert!(offset_of!(RawConfig, dns_port) == 14);
    assert!(offset_of!(RawConfig, runner_id) == 16);
    assert!(offset_of!(RawConfig, other_tcp) == 20);
    assert!(offset_of!(RawConfig, allow_loopback) == 21);
    assert!(size_of::<RawOrigKey>() == 8);
    assert!(offset_of!(RawOrigKey, port) == 4);
    assert!(size_of::<RawOrigDst>() == 32);
    assert!(offset_of!(RawOrigDst, port) == 4);
    assert!(offset_of!(RawOrigDst, tgid) == 8);
    assert!(offset_of!(RawOrigDst, comm) == 16);
    assert!(size_of::<RawEvent>() == 72);
    assert!(offset_of!(RawEvent, pid) == 8);
    assert!(offset_of!(RawEvent, comm) == 16);
    assert!(offset_of!(RawEvent, runner_id) == 32);
    assert!(offset_of!(RawEvent, hook) == 36);
    assert!(offset_of!(RawEvent, family) == 39);
    assert!(offset_of!(RawEvent, protocol) == 40);
    assert!(offset_of!(RawEvent, dport) == 44);
    assert!(offset_of!(RawEvent, detail) == 48);
    assert!(offset_of!(RawEvent, daddr) == 52);
};

/// The text of a NUL-padded `comm`.
pub(crate) fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}
