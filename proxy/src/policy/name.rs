//! Host name normalisation and host-literal classification.
//!
//! Every name the proxy decides on — from a rule, a CONNECT authority, an absolute URI, a
//! Host header, a TLS SNI or a DNS question — goes through [`classify_host`] first, so a
//! rule and a request can only match when their *normalised* forms are equal:
//!
//! - one trailing dot is removed (`example.com.` is `example.com`, RFC 1034 section 3.1);
//! - case is folded and internationalised names are converted to their ASCII (punycode)
//!   form with UTS #46 processing (`idna` crate), so `BÜCHER.example` and
//!   `xn--bcher-kva.example` are the same name;
//! - the result must be a valid DNS host name: labels of 1..=63 bytes of `a-z 0-9 - _`,
//!   at most 253 bytes in all (RFC 1035 section 2.3.4). Anything else is not a name.
//!
//! Invariant: text that any common resolver or URL parser would read as an IPv4 address is
//! never classified as a name. `inet_aton(3)` accepts `127.1`, `0x7f.0.0.1`, `017700000001`
//! and `2130706433`; the WHATWG URL standard ("ends in a number") does the same. Such
//! spellings are decoded into the address they denote, so that address rules — not name
//! rules — decide them, and a name rule can never be satisfied by an address in disguise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a host string denotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A normalised DNS name (lowercase ASCII, no trailing dot).
    Name(String),
    /// An address literal in any accepted spelling, canonicalised (IPv4-mapped IPv6
    /// addresses become IPv4).
    Ip(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a host string is neither a name nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Empty input.
    #[error("empty host")]
    Empty,
    /// IDNA processing rejected the name.
    #[error("`{0}` is not a valid internationalised name")]
    Idna(String),
    /// A label is empty, too long or has a character that is not allowed.
    #[error("`{0}` is not a valid host name")]
    Invalid(String),
    /// Ends in a number but is not a valid IPv4 address in any spelling.
    #[error("`{0}` looks like an address but is not one")]
    BadNumeric(String),
}

/// Longest name in presentation form, without the trailing dot (RFC 1035 section 2.3.4).
const MAX_NAME: usize = 253;
/// Longest label (RFC 1035 section 2.3.4).
const MAX_LABEL: usize = 63;

/// Classifies and normalises a host as it appears in a request (no brackets, no port).
pub fn classify_host(raw: &str) -> Result<Host, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if let Ok(v6) = raw.parse::<Ipv6Addr>() {
        return Ok(Host::Ip(IpAddr::V6(v6).to_canonical()));
    }
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(HostError::Invalid(raw.to_owned()));
    }
    // Plain ASCII names skip IDNA processing: it is by far the common case and lowercasing
    // is all UTS #46 would do to them (after the character check below).
    let ascii = if trimmed.is_ascii() && !trimmed.contains("xn--") {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed).map_err(|_| HostError::Idna(raw.to_owned()))?
    };
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii).to_owned();
    if ends_in_number(&ascii) {
        return parse_ipv4_any(&ascii)
            .map(|v4| Host::Ip(IpAddr::V4(v4)))
            .ok_or(HostError::BadNumeric(raw.to_owned()));
    }
    validate_name(&ascii).map_err(|()| HostError::Invalid(raw.to_owned()))?;
    Ok(Host::Name(ascii))
}

/// Normalises a name that must be a name (a rule's host, a DNS question).
pub fn normalise_name(raw: &str) -> Result<String, HostError> {
    match classify_host(raw)? {
        Host::Name(name) => Ok(name),
        Host::Ip(_) => Err(HostError::Invalid(raw.to_owned())),
    }
}

fn validate_name(name: &str) -> Result<(), ()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(());
        }
    }
    Ok(())
}

/// WHATWG URL "ends in a number checker": the last label is decimal digits or `0x` hex.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or("");
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match last.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// One part of an `inet_aton(3)` address: decimal, `0` octal or `0x` hex.
fn parse_part(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        // "0x" alone is zero for inet_aton and for WHATWG.
        return Some(0);
    }
    if digits.len() > 32 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parses every IPv4 spelling `inet_aton(3)` accepts: 1 to 4 parts, the last part filling
/// the remaining bytes (`a`, `a.b` with b 24 bits, `a.b.c` with c 16 bits, `a.b.c.d`).
pub fn parse_ipv4_any(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(parse_part(part)?);
    }
    let (last, init) = values.split_last()?;
    if init.iter().any(|&v| v > 255) {
        return None;
    }
    let remaining_bits = 8 * (4 - init.len() as u32);
    if *last >= (1u64 << remaining_bits) {
        return None;
    }
    let mut addr: u64 = 0;
    for (i, v) in init.iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    addr |= last;
    Some(Ipv4Addr::from(u32::try_from(addr).ok()?))
}

/// Splits `host:port`, `[v6]:port`, or a bare host (port `None`) as found in a CONNECT
/// authority or a Host header.
pub fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        if after.is_empty() {
            return Some((host, None));
        }
        let port = after.strip_prefix(':')?;
        return Some((host, Some(parse_port(port)?)));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            if host.contains(':') {
                return None; // unbracketed IPv6 is ambiguous in an authority (RFC 3986 3.2.2)
            }
            Some((host, Some(parse_port(port)?)))
        }
        None => Some((authority, None)),
    }
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Host {
        Host::Ip(text.parse().unwrap())
    }

    #[test]
    fn names_are_normalised() {
        for (raw, want) in [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("EXAMPLE.com.", "example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("_acme.example.com", "_acme.example.com"),
            ("a-b.c1", "a-b.c1"),
        ] {
            assert_eq!(classify_host(raw), Ok(Host::Name(want.to_owned())), "{raw}");
        }
    }

    #[test]
    fn invalid_names_are_rejected() {
        for raw in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a/b",
            "a@b",
            "*.a",
            "a\0b",
            "exa%6dple.com",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            assert!(classify_host(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn ipv4_spellings_are_addresses() {
        for (raw, want) in [
            ("127.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("0x7f.0.0.1", "127.0.0.1"),
            ("0x7F000001", "127.0.0.1"),
            ("017700000001", "127.0.0.1"),
            ("0177.0.0.01", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("169.254.43518", "169.254.169.254"),
            ("0", "0.0.0.0"),
            ("203.0.113.7.", "203.0.113.7"),
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:7f00:1", "127.0.0.1"),
            ("::1", "::1"),
            ("2001:DB8::1", "2001:db8::1"),
        ] {
            assert_eq!(classify_host(raw), Ok(ip(want)), "{raw}");
        }
    }

    #[test]
    fn bad_numeric_hosts_are_not_names() {
        for raw in [
            "256.0.0.1",
            "1.2.3.4.5",
            "example.123",
            "4294967296",
            "1.2.3.256",
        ] {
            assert!(
                !matches!(classify_host(raw), Ok(Host::Name(_))),
                "{raw} became a name"
            );
        }
        // A label that merely starts with digits is an ordinary name.
        assert_eq!(
            classify_host("123.example"),
            Ok(Host::Name("123.example".into()))
        );
    }

    #[test]
    fn authorities_split() {
        assert_eq!(split_authority("a.com:443"), Some(("a.com", Some(443))));
        assert_eq!(split_authority("a.com"), Some(("a.com", None)));
        assert_eq!(split_authority("[::1]:80"), Some(("::1", Some(80))));
        assert_eq!(split_authority("[::1]"), Some(("::1", None)));
        assert_eq!(split_authority("::1:80"), None);
        assert_eq!(split_authority("a.com:0"), None);
        assert_eq!(split_authority("a.com:65536"), None);
        assert_eq!(split_authority("a.com:+80"), None);
        assert_eq!(split_authority("[::1]x"), None);
    }
}
