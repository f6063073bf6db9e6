//! Internal and special-purpose addresses the proxy refuses to dial unless a `cidr` rule
//! names them (DESIGN.md section 6).
//!
//! The list: "this network", loopback, private (RFC 1918), CGNAT (RFC 6598), link-local
//! and with it the cloud metadata address 169.254.169.254 (RFC 3927), IETF protocol
//! assignments, benchmarking (RFC 2544), multicast, reserved and broadcast; for IPv6 the
//! unspecified and loopback addresses, ULA (RFC 4193), link- and site-local, multicast,
//! discard-only (RFC 6666), and every form that embeds an IPv4 address and so could lead
//! to one of the above: IPv4-compatible (RFC 4291 2.5.5.1), NAT64 (RFC 6052, RFC 8215),
//! 6to4 (RFC 3056) and Teredo (RFC 4380). IPv4-mapped addresses are judged as the IPv4
//! address they carry (callers canonicalise first; [`is_special`] does it again).
//!
//! Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are
//! deliberately *not* special: they are not internal to anyone, and the test bed of
//! DESIGN.md section 8 plays "the internet" with them.
//!
//! Deployment-specific ranges (the runner pool, the host's own addresses) are added by the
//! caller through [`SpecialNets::with_extra`].

use std::net::IpAddr;

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

/// The set of address ranges that need an explicit `cidr` rule.
#[derive(Debug, Clone)]
pub struct SpecialNets {
    nets: Vec<IpNet>,
}

impl Default for SpecialNets {
    fn default() -> Self {
        SpecialNets {
            nets: BUILTIN
                .iter()
                .map(|n| n.parse().expect("built-in ranges are valid"))
                .collect(),
        }
    }
}

impl SpecialNets {
    /// The built-in ranges plus deployment ranges (runner pool, host addresses).
    pub fn with_extra(extra: impl IntoIterator<Item = IpNet>) -> Self {
        let mut set = SpecialNets::default();
        set.nets.extend(extra);
        set
    }

    /// Whether `ip` lies in a special range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
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
            ("::ffff:198.51.100.10", false),
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
    fn extra_ranges() {
        let set = SpecialNets::with_extra(["198.51.100.0/24".parse().unwrap()]);
        assert!(set.contains("198.51.100.7".parse().unwrap()));
        assert!(set.contains("::ffff:198.51.100.7".parse().unwrap()));
        assert!(!set.contains("203.0.113.7".parse().unwrap()));
    }
}
