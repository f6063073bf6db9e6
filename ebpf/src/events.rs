//! Denials: the `events` ring buffer read asynchronously, and the per-runner `counters`.
//!
//! Every denial of every hook is one [`Denial`], a plain struct with the fields an audit
//! event needs (DESIGN.md 3.4, source `ebpf`): pid, comm, destination, what was refused
//! and why. The ring buffer is per runner; when it is full the programs count the lost
//! event in [`Counters::events_lost`] instead of blocking the job.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{Map, MapData, MapError, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::maps::{self, RawEvent};

/// The program that produced a denial (`enum fence_hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// cgroup/connect4.
    Connect4,
    /// cgroup/connect6.
    Connect6,
    /// cgroup/sendmsg4 (unconnected UDP).
    Sendmsg4,
    /// cgroup/sendmsg6.
    Sendmsg6,
    /// cgroup/sock_create (inet socket type and protocol).
    SockCreate,
    /// cgroup_skb/egress backstop.
    SkbEgress,
    /// tc ingress on the host-side veth.
    TcIngress,
}

impl Hook {
    /// All hooks, in counter order.
    pub const ALL: [Hook; 7] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
        Hook::SockCreate,
        Hook::SkbEgress,
        Hook::TcIngress,
    ];

    fn from_raw(raw: u8) -> Option<Self> {
        Self::ALL.get(usize::from(raw).checked_sub(1)?).copied()
    }

    fn index(self) -> u32 {
        Self::ALL
            .iter()
            .position(|h| *h == self)
            .map_or(0, |i| i as u32 + 1)
    }

    /// The audit `kind` (DESIGN.md 3.4): `packet` for the packet filters, else `socket`.
    pub fn audit_kind(self) -> &'static str {
        match self {
            Hook::SkbEgress | Hook::TcIngress => "packet",
            _ => "socket",
        }
    }

    /// Stable lowercase name, for logs and audit reasons.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::Sendmsg4 => "sendmsg4",
            Hook::Sendmsg6 => "sendmsg6",
            Hook::SockCreate => "sock_create",
            Hook::SkbEgress => "skb_egress",
            Hook::TcIngress => "tc_ingress",
        }
    }
}

/// Why something was denied (`enum fence_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The address and port are not served.
    Destination,
    /// A native IPv6 destination.
    Ipv6,
    /// The host-side address on a port that is not a listener.
    ProxyPort,
    /// A transport protocol that is not served (raw, ICMP, SCTP, UDP other than DNS).
    Protocol,
    /// An IP fragment.
    Fragment,
    /// A source address other than the runner's.
    Spoofed,
    /// A reason this version does not know.
    Unknown(u8),
}

impl Reason {
    fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Reason::Destination,
            2 => Reason::Ipv6,
            3 => Reason::ProxyPort,
            4 => Reason::Protocol,
            5 => Reason::Fragment,
            6 => Reason::Spoofed,
            other => Reason::Unknown(other),
        }
    }

    /// Human-readable reason for the audit event.
    pub fn text(self) -> &'static str {
        match self {
            Reason::Destination => "destination not served by the proxy",
            Reason::Ipv6 => "IPv6 destination",
            Reason::ProxyPort => "host-side address on a port that is not a proxy listener",
            Reason::Protocol => "transport protocol not served",
            Reason::Fragment => "IP fragment",
            Reason::Spoofed => "source address is not the runner's",
            Reason::Unknown(_) => "unknown reason",
        }
    }
}

/// One denial, ready to become an audit event with source `ebpf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// CLOCK_MONOTONIC nanoseconds when the program ran.
    pub monotonic_ns: u64,
    /// The runner ([`crate::FenceConfig::runner_id`]).
    pub runner_id: u32,
    /// Which program denied.
    pub hook: Hook,
    /// Why.
    pub reason: Reason,
    /// Process id in the host pid namespace; `None` for packet filters (no process context).
    pub pid: Option<u32>,
    /// Thread id in the host pid namespace; `None` for packet filters.
    pub tid: Option<u32>,
    /// Thread name; `None` for packet filters.
    pub comm: Option<String>,
    /// Address family (AF_INET 2, AF_INET6 10).
    pub family: u8,
    /// IP protocol (or the socket's protocol argument).
    pub protocol: u16,
    /// Socket type (SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_RAW 3), 0 where unknown.
    pub sock_type: u16,
    /// Destination address, when the denied operation had one.
    pub ip: Option<IpAddr>,
    /// Destination port, when it had one.
    pub port: Option<u16>,
    /// Hook specific detail, 0 so far.
    pub detail: u32,
}

impl Denial {
    /// The `reason` text of the audit event: which program refused and why, and for a
    /// socket refused at creation, which kind of socket (the event has no destination
    /// that would say it): `sock_create: transport protocol not served (AF_INET
    /// SOCK_STREAM, protocol 262 MPTCP)`.
    pub fn audit_reason(&self) -> String {
        let base = format!("{}: {}", self.hook.name(), self.reason.text());
        if self.hook != Hook::SockCreate {
            return base;
        }
        format!(
            "{base} ({})",
            describe_socket(self.family, self.sock_type, self.protocol)
        )
    }

    /// Wall-clock time of the denial, for the audit event's `ts`: the programs stamp
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns), converted here through the current offset
    /// between the two clocks.
    pub fn wall_clock(&self) -> std::time::SystemTime {
        let now_wall = std::time::SystemTime::now();
        let Ok(now_mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
            return now_wall;
        };
        let now_ns = u64::try_from(now_mono.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(now_mono.tv_nsec()).unwrap_or(0);
        now_wall - std::time::Duration::from_nanos(now_ns.saturating_sub(self.monotonic_ns))
    }

    fn from_raw(raw: &RawEvent) -> Option<Self> {
        let hook = Hook::from_raw(raw.hook)?;
        let in_task = raw.tgid != 0;
        let ip = match raw.family {
            2 if hook != Hook::SockCreate => {
                let a = Ipv4Addr::new(raw.daddr[0], raw.daddr[1], raw.daddr[2], raw.daddr[3]);
                Some(IpAddr::V4(a))
            }
            10 if hook != Hook::SockCreate => {
                let v6 = Ipv6Addr::from(raw.daddr);
                Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
            }
            _ => None,
        };
        Some(Denial {
            monotonic_ns: raw.ts_ns,
            runner_id: raw.runner_id,
            hook,
            reason: Reason::from_raw(raw.reason),
            pid: in_task.then_some(raw.tgid),
            tid: in_task.then_some(raw.pid),
            comm: in_task.then(|| maps::comm_str(&raw.comm)),
            family: raw.family,
            protocol: raw.protocol,
            sock_type: raw.sock_type,
            ip,
            port: (raw.dport != 0).then_some(raw.dport),
            detail: raw.detail,
        })
    }
}

/// `AF_INET SOCK_DGRAM, protocol 136 UDP-Lite`: a socket's family, type and protocol as
/// socket(2) was given them, named where they have a usual name.
fn describe_socket(family: u8, sock_type: u16, protocol: u16) -> String {
    let family = match family {
        2 => "AF_INET".to_owned(),
        10 => "AF_INET6".to_owned(),
        other => format!("family {other}"),
    };
    let sock_type = match sock_type {
        1 => "SOCK_STREAM".to_owned(),
        2 => "SOCK_DGRAM".to_owned(),
        3 => "SOCK_RAW".to_owned(),
        5 => "SOCK_SEQPACKET".to_owned(),
        other => format!("type {other}"),
    };
    let name = match protocol {
        0 => "default",
        1 => "ICMP",
        6 => "TCP",
        17 => "UDP",
        33 => "DCCP",
        58 => "ICMPv6",
        132 => "SCTP",
        136 => "UDP-Lite",
        255 => "raw",
        262 => "MPTCP",
        _ => "",
    };
    let protocol = if name.is_empty() {
        format!("protocol {protocol}")
    } else {
        format!("protocol {protocol} {name}")
    };
    format!("{family} {sock_type}, {protocol}")
}

/// Failures reading denials or counters.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The ring buffer map could not be opened.
    #[error("opening the events ring buffer: {0}")]
    OpenRingBuf(#[source] MapError),
    /// The ring buffer fd could not be registered with tokio (no runtime?).
    #[error("registering the events ring buffer with tokio: {0}")]
    Register(#[source] std::io::Error),
    /// Waiting for readiness failed.
    #[error("waiting for denial events: {0}")]
    Poll(#[source] std::io::Error),
    /// The counters map could not be read.
    #[error("reading counters: {0}")]
    ReadCounters(#[source] MapError),
}

/// Asynchronous reader of a runner's denials (tokio).
pub struct DenialStream {
    ring: AsyncFd<RingBuf<MapData>>,
    pending: VecDeque<Denial>,
    /// The runner's counters, for [`DenialStream::lost`].
    counters: Option<PerCpuArray<MapData, u64>>,
}

impl std::fmt::Debug for DenialStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenialStream")
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// Events moved from the ring buffer per [`DenialStream::drain`].
const DRAIN_BATCH: usize = 1024;

impl DenialStream {
    /// Wraps the `events` map; must be called inside a tokio runtime.
    pub fn new(map: MapData) -> Result<Self, EventError> {
        let ring = RingBuf::try_from(Map::RingBuf(map)).map_err(EventError::OpenRingBuf)?;
        let ring = crate::sys::register_ring(ring).map_err(EventError::Register)?;
        Ok(Self {
            ring,
            pending: VecDeque::new(),
            counters: None,
        })
    }

    /// Lets [`DenialStream::lost`] read the runner's `counters` map.
    pub fn with_counters(mut self, map: MapData) -> Result<Self, EventError> {
        let array =
            PerCpuArray::try_from(Map::PerCpuArray(map)).map_err(EventError::ReadCounters)?;
        self.counters = Some(array);
        Ok(self)
    }

    /// Denials so far that the kernel could not put in the ring (it was full), so that no
    /// event of theirs will come: [`Counters::events_lost`], read without the rest. Zero
    /// when the stream was made without the counters map.
    pub fn lost(&self) -> Result<u64, EventError> {
        let Some(counters) = &self.counters else {
            return Ok(0);
        };
        sum_counter(counters, maps::CNT_EVENTS_LOST)
    }

    /// Moves up to [`DRAIN_BATCH`] events from the ring into `pending`. Bounded so that a
    /// job producing events as fast as they are read cannot keep this loop (and the
    /// memory of `pending`) growing.
    fn drain(&mut self) {
        let ring = self.ring.get_mut();
        for _ in 0..DRAIN_BATCH {
            let Some(item) = ring.next() else {
                break;
            };
            match crate::sys::read_event(&item)
                .as_ref()
                .and_then(Denial::from_raw)
            {
                Some(denial) => self.pending.push_back(denial),
                None => tracing::warn!(len = item.len(), "undecodable fence event skipped"),
            }
        }
    }

    /// The next denial already in the buffer, without waiting.
    pub fn try_next(&mut self) -> Option<Denial> {
        if self.pending.is_empty() {
            self.drain();
        }
        self.pending.pop_front()
    }

    /// Waits for the next denial. Cooperative: while a job keeps the ring full there is
    /// always an event ready, so this spends the task's tokio budget on each one rather
    /// than letting a consumer loop hold its worker thread (which stalled the agent's
    /// other tasks, the proxy's shutdown among them, for as long as a flood lasted).
    pub async fn next(&mut self) -> Result<Denial, EventError> {
        loop {
            // Before taking an event, not after: a caller that drops this future while it
            // waits here (a `select!` that took another branch) loses nothing.
            tokio::task::consume_budget().await;
            if let Some(d) = self.try_next() {
                return Ok(d);
            }
            let mut guard = self.ring.readable_mut().await.map_err(EventError::Poll)?;
            guard.clear_ready();
        }
    }
}

/// A runner's counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Denials per hook.
    pub denied: Vec<(Hook, u64)>,
    /// TCP connections redirected to the transparent TLS listener.
    pub redirected_tls: u64,
    /// TCP connections redirected to the transparent HTTP listener.
    pub redirected_http: u64,
    /// TCP connections and UDP datagrams redirected to the DNS filter.
    pub redirected_dns: u64,
    /// Direct connections and datagrams to a proxy listener.
    pub allowed_proxy: u64,
    /// Denials that could not be reported because the ring buffer was full.
    pub events_lost: u64,
}

impl Counters {
    /// Denials counted for one hook.
    pub fn denied_by(&self, hook: Hook) -> u64 {
        self.denied
            .iter()
            .find(|(h, _)| *h == hook)
            .map_or(0, |(_, n)| *n)
    }

    /// All denials.
    pub fn denied_total(&self) -> u64 {
        self.denied.iter().map(|(_, n)| n).sum()
    }

    /// Reads the `counters` per-CPU array.
    pub(crate) fn read(map: &PerCpuArray<&MapData, u64>) -> Result<Self, EventError> {
        let sum = |index: u32| sum_counter(map, index);
        let mut denied = Vec::with_capacity(Hook::ALL.len());
        for hook in Hook::ALL {
            denied.push((hook, sum(hook.index())?));
        }
        Ok(Counters {
            denied,
            redirected_tls: sum(maps::CNT_REDIRECT_TLS)?,
            redirected_http: sum(maps::CNT_REDIRECT_HTTP)?,
            redirected_dns: sum(maps::CNT_REDIRECT_DNS)?,
            allowed_proxy: sum(maps::CNT_ALLOWED_PROXY)?,
            events_lost: sum(maps::CNT_EVENTS_LOST)?,
        })
    }
}

/// Counter `index` of a `counters` per-CPU array, summed over CPUs.
fn sum_counter<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
    index: u32,
) -> Result<u64, EventError> {
    let values = map.get(&index, 0).map_err(EventError::ReadCounters)?;
    Ok(values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_refused_at_creation_says_which() {
        let raw = RawEvent {
            tgid: 10,
            pid: 10,
            hook: Hook::SockCreate.index() as u8,
            reason: 4,
            family: 2,
            protocol: 262,
            sock_type: 1,
            ..RawEvent::default()
        };
        let d = Denial::from_raw(&raw).unwrap();
        assert_eq!(
            d.audit_reason(),
            "sock_create: transport protocol not served (AF_INET SOCK_STREAM, protocol 262 MPTCP)"
        );
        assert_eq!(
            describe_socket(10, 2, 77),
            "AF_INET6 SOCK_DGRAM, protocol 77"
        );
    }

    #[test]
    fn raw_event_decodes_pid_comm_and_destination() {
        let mut raw = RawEvent {
            pid: 11,
            tgid: 10,
            hook: 1,
            reason: 1,
            family: 2,
            protocol: 6,
            sock_type: 1,
            dport: 443,
            ..RawEvent::default()
        };
        raw.comm[..4].copy_from_slice(b"curl");
        raw.daddr[..4].copy_from_slice(&[203, 0, 113, 7]);
        let d = Denial::from_raw(&raw).unwrap();
        assert_eq!(d.hook, Hook::Connect4);
        assert_eq!(d.pid, Some(10));
        assert_eq!(d.tid, Some(11));
        assert_eq!(d.comm.as_deref(), Some("curl"));
        assert_eq!(d.ip, Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))));
        assert_eq!(d.port, Some(443));
        assert_eq!(d.hook.audit_kind(), "socket");
        assert_eq!(
            d.audit_reason(),
            "connect4: destination not served by the proxy"
        );
        // A stamp of 0 is the boot moment: long before now.
        assert!(d.wall_clock() < std::time::SystemTime::now());
    }

    #[test]
    fn mapped_ipv6_is_reported_as_ipv4_and_packets_have_no_process() {
        let mut raw = RawEvent {
            hook: 7,
            reason: 2,
            family: 10,
            ..RawEvent::default()
        };
        raw.daddr[10] = 0xff;
        raw.daddr[11] = 0xff;
        raw.daddr[12..].copy_from_slice(&[198, 51, 100, 1]);
        let d = Denial::from_raw(&raw).unwrap();
        assert_eq!(d.ip, Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))));
        assert_eq!(d.pid, None);
        assert_eq!(d.comm, None);
        assert_eq!(d.hook.audit_kind(), "packet");
    }

    #[test]
    fn unknown_hook_is_rejected_and_indexes_match_the_c_enum() {
        assert!(Denial::from_raw(&RawEvent {
            hook: 0,
            ..RawEvent::default()
        })
        .is_none());
        assert!(Denial::from_raw(&RawEvent {
            hook: 8,
            ..RawEvent::default()
        })
        .is_none());
        assert_eq!(Hook::Connect4.index(), 1);
        assert_eq!(Hook::TcIngress.index(), 7);
        assert!(Hook::TcIngress.index() < maps::CNT_REDIRECT_TLS);
    }
}
