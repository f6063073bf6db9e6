//! Telling a plain-text HTTP request apart from other non-TLS first flights of a tunnel.
//!
//! Why: a CONNECT tunnel is decided for one host, but a server behind a shared address
//! picks its tenant from the HTTP Host header. An HTTP request inside a tunnel must
//! therefore be checked request by request (`crate::http`, mode `Tunnel`), while other
//! protocols (SSH, SMTP, database wire protocols) keep being spliced.
//!
//! The rule (fail closed for anything an HTTP server could read as a request):
//! - leading CR and LF are skipped, as servers skip them (RFC 9112 section 2.2);
//! - the first line must start with a token (the method's grammar, RFC 9110 section 5.6.2)
//!   followed by a space or tab to be a candidate at all; anything else is not HTTP;
//! - a candidate line is HTTP when it names an HTTP version (`HTTP/`) or an absolute URI
//!   (`://`, which an HTTP/0.9-tolerant server would route on), in any letter case; the
//!   HTTP/2 cleartext preface `PRI * HTTP/2.0` is reported on its own;
//! - while the bytes so far could still become a candidate line (only CR/LF, only token
//!   characters, or a candidate without its line end), the answer is "need more": the
//!   caller must wait (bounded in size and time) rather than guess, or a request line
//!   sent slowly would slip through.
//!
//! An SSH identification line (`SSH-2.0-OpenSSH_9.6p1 Ubuntu-3`) or an SMTP command
//! (`EHLO host`) is a candidate without `HTTP/` or `://`: not HTTP.

/// What a non-TLS first flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// An HTTP/1.x request line (possibly after empty lines).
    Http,
    /// The HTTP/2 cleartext connection preface (prior knowledge).
    Http2Preface,
    /// Something else.
    Other,
}

/// The request line of the HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// Whether `byte` may appear in a token (RFC 9110 section 5.6.2, `tchar`).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Whether `haystack` contains `needle`, ignoring ASCII case.
fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// Classifies the start of a non-TLS stream: `None` while the bytes so far could still
/// be an HTTP request line (see the module docs).
pub fn sniff_plain(buf: &[u8]) -> Option<Plain> {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    let method = rest.iter().take_while(|b| is_tchar(**b)).count();
    let Some(&after) = rest.get(method) else {
        return None; // only CR/LF or token characters so far
    };
    if method == 0 || (after != b' ' && after != b'\t') {
        return Some(Plain::Other);
    }
    let end = rest.iter().position(|b| *b == b'\n')?;
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    if line == H2_PREFACE_LINE {
        Some(Plain::Http2Preface)
    } else if contains_ignore_case(line, b"HTTP/") || line.windows(3).any(|w| w == b"://") {
        Some(Plain::Http)
    } else {
        Some(Plain::Other)
    }
}
