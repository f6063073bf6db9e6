//! Internal and special-purpose addresses the proxy refuses to dial unless a `cidr` rule
//! names them (DESIGN.md section 6).
//!
//! The list: "this network", loopback, private (RFC 1918), CGNAT (RFC 6598), link-local
//! and with it the cloud metadata address 169.254.169.254 (RFC 3927), IETF protocol
//! assignments, benchmarking (RFC 2544), multicast, reserved and broadcast; for IPv6 the
//! unspecified and loopback addresses, ULA (RFC 4193), link- and site-local, multicast,
//! discard-only (RFC 6666), and every form that embeds an IPv4 address and so could lead
//! to one of the above: IPv4-compatible (RFC 4291 2.5.5.1), NAT64 (RFC 6052, RFC 8215),
//! 6to4 (RFC 3056) and Teredo (RFC 4380), and IPv4-mapped addresses (RFC 4291 2.5.5.2)
//! as they come, whatever IPv4 address they carry: an AAAA record has no business
//! holding one, and DESIGN.md lists every embedding form. (An address literal the job
//! writes in mapped form is canonicalised to IPv4 by the caller before it gets here, and
//! a `cidr` rule that covers the IPv4 address still allows its mapped form.)
//!
//! Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are
//! deliberately *not* special: they are not internal to anyone, and the test bed of
//! DESIGN.md section 8 plays "the internet" with them.
//!
//! Deployment-specific ranges (the runner pool) are added by the caller through
//! [`SpecialNets::with_extra`].
//!
//! The host's own addresses are special too, whatever range they lie in: a name of an
//! allowed domain resolving to an address of the proxy's own network namespace would
//! otherwise turn the proxy into a relay to the host's services (an address of the host
//! is often public, so no range list catches it). They are not a list fixed at start:
//! addresses come and go while the proxy runs (DHCP, SLAAC, an operator's `ip addr add`).
//! So [`SpecialNets::with_local`] adds a [`LocalAddresses`] check that is asked on every
//! decision, after the ranges, and the proxy uses [`KernelLocalAddresses`]: it asks the
//! kernel by binding a UDP socket of the address's family to (address, port 0), which
//! succeeds exactly for addresses configured on some interface of the namespace (and
//! those routed to it as `local`, and IPv4 broadcast addresses, which are not to be
//! dialled either), and fails with `EADDRNOTAVAIL` for every other address. No privilege is needed and nothing is sent.
//! A probe costs one socket and one bind (a few microseconds); its answer is not cached,
//! so an address added a moment ago is refused at once. IPv4-mapped IPv6 is probed as the
//! IPv4 address it carries. Where bind cannot tell (a namespace with
//! `net.ipv4.ip_nonlocal_bind` or `net.ipv6.ip_nonlocal_bind` set, where bind accepts any
//! address), the check falls back to routing: a UDP socket connected to the address gets
//! the address itself as its source only when it is configured here. An unexpected error
//! counts the address as local (fail closed).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

const BUILTIN: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/96",
    "::1/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// Answers "is this address one of this network namespace's own?" (module docs).
pub trait LocalAddresses: Send + Sync {
    /// Whether `ip` (already canonical: never IPv4-mapped) is local.
    fn is_local(&self, ip: IpAddr) -> bool;
}

/// Any `Fn(IpAddr) -> bool` is a check (tests inject fixed answers this way).
impl<F: Fn(IpAddr) -> bool + Send + Sync> LocalAddresses for F {
    fn is_local(&self, ip: IpAddr) -> bool {
        self(ip)
    }
}

/// The kernel's answer for the calling thread's network namespace (module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelLocalAddresses;

impl LocalAddresses for KernelLocalAddresses {
    fn is_local(&self, ip: IpAddr) -> bool {
        is_local_address(ip)
    }
}

/// Whether `ip` is configured in (or routed as `local` to) the calling thread's network
/// namespace, asked of the kernel now (module docs). IPv4-mapped addresses are judged as
/// the IPv4 address they carry.
pub fn is_local_address(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => !nonlocal_bind(ip) || routes_to_itself(ip),
        Err(err) if err.kind() == std::io::ErrorKind::AddrNotAvailable => false,
        // No socket of this family can exist here, so no address of it is local.
        Err(err) if err.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => false,
        Err(err) => {
            tracing::warn!(%ip, error = %err, "cannot tell whether the address is local; refusing it");
            true
        }
    }
}

/// Whether bind(2) accepts addresses that are not local in this namespace (sysctl
/// `ip_nonlocal_bind` of the address's family); unreadable counts as off, so bind's
/// answer stands and the address is refused.
fn nonlocal_bind(ip: IpAddr) -> bool {
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    std::fs::read_to_string(format!("/proc/sys/net/{family}/ip_nonlocal_bind"))
        .is_ok_and(|v| v.trim() != "0")
}

/// Whether the kernel picks `ip` itself as the source toward `ip`, which it does only for
/// an address configured here. Nothing is sent: connect(2) on UDP only routes.
fn routes_to_itself(ip: IpAddr) -> bool {
    let any: IpAddr = match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let Ok(socket) = std::net::UdpSocket::bind(SocketAddr::new(any, 0)) else {
        return true; // cannot tell: fail closed
    };
    match socket.connect(SocketAddr::new(ip, 9)) {
        Ok(()) => socket.local_addr().map_or(true, |a| a.ip() == ip),
        Err(_) => false, // no route: nothing here answers to it
    }
}

/// The set of address ranges that need an explicit `cidr` rule, and optionally the check
/// for the namespace's own addresses.
#[derive(Clone)]
pub struct SpecialNets {
    nets: Vec<IpNet>,
    local: Option<Arc<dyn LocalAddresses>>,
}

impl std::fmt::Debug for SpecialNets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpecialNets")
            .field("nets", &self.nets)
            .field("local", &self.local.is_some())
            .finish()
    }
}

impl Default for SpecialNets {
    /// The built-in ranges only, without the local-address check.
    fn default() -> Self {
        SpecialNets {
            nets: BUILTIN
                .iter()
                .map(|n| n.parse().expect("built-in ranges are valid"))
                .collect(),
            local: None,
        }
    }
}

impl SpecialNets {
    /// The built-in ranges plus deployment ranges (the runner pool).
    pub fn with_extra(extra: impl IntoIterator<Item = IpNet>) -> Self {
        let mut set = SpecialNets::default();
        set.nets.extend(extra);
        set
    }

    /// Also counts every address `local` says is local as special (the proxy passes
    /// [`KernelLocalAddresses`]).
    pub fn with_local(mut self, local: Arc<dyn LocalAddresses>) -> Self {
        self.local = Some(local);
        self
    }

    /// Whether `ip` lies in a special range or is one of the namespace's own addresses.
    /// The ranges are looked at first, so the local check runs only for addresses that
    /// are otherwise dialable.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if let IpAddr::V6(v6) = ip {
            if v6.to_ipv4_mapped().is_some() {
                return true;
            }
        }
        self.nets.iter().any(|n| n.contains(&ip))
            || self.local.as_ref().is_some_and(|l| l.is_local(ip))
    }
}

/// Whether `ip` is in one of the built-in special ranges.
pub fn is_special(ip: IpAddr) -> bool {
    thread_local! {
        static BUILTIN_SET: SpecialNets = SpecialNets::default();
    }
    BUILTIN_SET.with(|s| s.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (ip, want) in [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.31.0.1", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("0.0.0.0", true),
            ("224.0.0.251", true),
            ("255.255.255.255", true),
            ("198.51.100.10", false),
            ("203.0.113.10", false),
            ("8.8.8.8", false),
            ("::1", true),
            ("::", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:198.51.100.10", true),
            ("::127.0.0.1", true),
            ("64:ff9b::7f00:1", true),
            ("2002:7f00:1::", true),
            ("2001:0:4136:e378::1", true),
            ("fd00:ec2::254", true),
            ("fe80::1", true),
            ("ff02::1", true),
            ("2001:db8::1", false),
            ("2606:4700::1", false),
        ] {
            assert_eq!(is_special(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn local_check_is_asked_after_the_ranges_with_the_canonical_address() {
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&asked);
        let set = SpecialNets::with_extra(["10.249.0.0/16".parse().unwrap()]).with_local(Arc::new(
            move |ip: IpAddr| {
                log.lock().unwrap().push(ip);
                ip == "198.51.100.1".parse::<IpAddr>().unwrap()
                    || ip == "2001:db8:100::1".parse::<IpAddr>().unwrap()
            },
        ));
        assert!(set.contains("198.51.100.1".parse().unwrap()));
        assert!(set.contains("::ffff:198.51.100.1".parse().unwrap()));
        assert!(set.contains("2001:db8:100::1".parse().unwrap()));
        assert!(!set.contains("198.51.100.2".parse().unwrap()));
        assert!(!set.contains("2001:db8:100::2".parse().unwrap()));
        assert!(set.contains("10.249.0.9".parse().unwrap()));
        assert!(set.contains("127.0.0.1".parse().unwrap()));
        let asked = asked.lock().unwrap().clone();
        // Mapped addresses are refused before it (any mapped address is special); ranges
        // never reach it either.
        assert!(
            !asked
                .iter()
                .any(|ip| matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())),
            "{asked:?}"
        );
        assert!(!asked.contains(&"10.249.0.9".parse().unwrap()));
        assert!(!asked.contains(&"127.0.0.1".parse().unwrap()));
        // Without the check, an address outside the ranges is not special.
        let plain = SpecialNets::with_extra(["10.249.0.0/16".parse().unwrap()]);
        assert!(!plain.contains("198.51.100.1".parse().unwrap()));
    }

    /// Addresses this namespace has, read from procfs: IPv4 `LOCAL` host entries of
    /// `/proc/net/fib_trie`, IPv6 entries of `/proc/net/if_inet6` that are not tentative.
    fn configured_addresses() -> Vec<IpAddr> {
        let mut out = Vec::new();
        if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
            let mut last: Option<Ipv4Addr> = None;
            for line in trie.lines() {
                let line = line.trim();
                if let Ok(ip) = line.trim_start_matches(['|', '+', '-', ' ']).parse() {
                    last = Some(ip);
                    continue;
                }
                if line.contains("/32 host LOCAL") {
                    if let Some(ip) = last {
                        out.push(IpAddr::V4(ip));
                    }
                }
            }
        }
        if let Ok(list) = std::fs::read_to_string("/proc/net/if_inet6") {
            for line in list.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(hex), Some(flags)) = (fields.first(), fields.get(4)) else {
                    continue;
                };
                let (Ok(bits), Ok(flags)) = (
                    u128::from_str_radix(hex, 16),
                    u32::from_str_radix(flags, 16),
                ) else {
                    continue;
                };
                // IFA_F_TENTATIVE and IFA_F_DADFAILED: not bindable yet (or ever).
                if flags & (0x40 | 0x08) == 0 {
                    out.push(IpAddr::V6(Ipv6Addr::from(bits)));
                }
            }
        }
        out
    }

    #[test]
    fn the_kernel_knows_its_own_addresses() {
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(is_local_address("::ffff:127.0.0.1".parse().unwrap()));
        assert!(KernelLocalAddresses.is_local("127.0.0.1".parse().unwrap()));
        // Documentation addresses nobody configures on a build machine.
        assert!(!is_local_address("203.0.113.254".parse().unwrap()));
        assert!(!is_local_address("::ffff:203.0.113.254".parse().unwrap()));
        assert!(!is_local_address("2001:db8:ffff::fe".parse().unwrap()));
        let mine = configured_addresses();
        assert!(mine.contains(&"127.0.0.1".parse().unwrap()), "{mine:?}");
        for ip in mine {
            // Link-local IPv6 needs a scope to bind; it is in a special range anyway.
            if matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
                continue;
            }
            assert!(is_local_address(ip), "{ip} is configured here");
        }
        // The proxy's set: a non-special address of this machine is refused like a range.
        let set = SpecialNets::default().with_local(Arc::new(KernelLocalAddresses));
        assert!(!set.contains("203.0.113.254".parse().unwrap()));
    }

    #[test]
    fn extra_ranges() {
        let set = SpecialNets::with_extra(["198.51.100.0/24".parse().unwrap()]);
        assert!(set.contains("198.51.100.7".parse().unwrap()));
        assert!(set.contains("::ffff:198.51.100.7".parse().unwrap()));
        assert!(!set.contains("203.0.113.7".parse().unwrap()));
    }
}
