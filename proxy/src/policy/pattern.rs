//! Path patterns of `paths:` rules: `*` matches within one segment, `**` across segments.
//!
//! The pattern `/rust-lang/*` matches `/rust-lang/cargo` but not `/rust-lang/cargo/pulls`;
//! `/rust-lang/**` matches both (and `/rust-lang/` itself). The query string is not part of
//! the path (RFC 3986 section 3.3) and is ignored.
//!
//! Invariant: a request path that could mean something else to the server than it means
//! here never matches. Dot segments (`.`/`..`, RFC 3986 section 5.2.4), their
//! percent-encoded forms, encoded slashes and backslashes are ambiguous between servers
//! (path-normalisation confusion is a classic allow-list bypass), so
//! [`PathPattern::matches`] refuses such paths outright instead of guessing. So are:
//! path parameters (`;`: Tomcat, Jetty and Spring read `/a/..;/b` as `/b`), an encoded
//! `%` (`%252e` is `.` to a server that decodes twice), malformed escapes, escapes that
//! do not decode to UTF-8 (the overlong `%c0%ae` is `.` to a lenient decoder),
//! control characters, and characters that stand for one of `. / \\ % ; ? #` once a
//! server normalises Unicode: every character whose NFKC form holds one (the fullwidth
//! `．．／` is `../` to a server that applies NFKC, as frameworks and some filesystems
//! do), and the look-alikes that Windows' "best fit" conversion maps onto them (the
//! division slash U+2215, the set minus U+2216, ...).
//!
//! Matching is the classic greedy wildcard algorithm with one backtrack point, applied
//! twice: to segments (with `**` as the star) and within a segment (with `*`). It runs in
//! O(pattern × path) time at worst, never exponential.

/// One compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of whole segments, including none.
    Any,
    /// A segment with optional `*` wildcards.
    Glob(String),
}

impl PathPattern {
    /// Compiles a pattern; it must start with `/` (checked when the file is read).
    pub fn new(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path pattern `{text}` must start with `/`"));
        };
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            if seg == "**" {
                segments.push(Segment::Any);
            } else if seg.contains("**") {
                return Err(format!(
                    "path pattern `{text}`: `**` must be a whole segment"
                ));
            } else {
                segments.push(Segment::Glob(seg.to_owned()));
            }
        }
        Ok(PathPattern {
            text: text.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the request target's path (query ignored) matches.
    pub fn matches(&self, target: &str) -> bool {
        let path = target.split(['?', '#']).next().unwrap_or("");
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        if is_ambiguous(path) {
            return false;
        }
        let segs: Vec<&str> = rest.split('/').collect();
        match_segments(&self.segments, &segs)
    }
}

/// Paths that servers may read differently: see the module documentation.
pub fn is_ambiguous(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    // Encoded `;`, `?` and `#` too: a server that decodes before it splits the path reads
    // `/ok/admin%3F.json` as `/ok/admin` (found by an attack run).
    if ["%2f", "%5c", "%2e", "%25", "%3b", "%3f", "%23", "\\", ";"]
        .iter()
        .any(|bad| lower.contains(bad))
    {
        return true;
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return true;
    }
    match percent_decode(path).map(String::from_utf8) {
        Some(Ok(text)) => text
            .chars()
            .any(|c| c.is_control() || stands_for_a_delimiter(c)),
        // A malformed escape, or bytes that are not UTF-8.
        _ => true,
    }
}

/// ASCII characters that change what a path means (module documentation).
const PATH_DELIMITERS: &[char] = &['.', '/', '\\', '%', ';', '?', '#'];

/// Look-alikes of [`PATH_DELIMITERS`] that are not NFKC-equivalent to them but that
/// Windows' best-fit mapping, a legacy code page or IDNA turn into one: division slash,
/// fraction slash, big solidus, set minus, reverse solidus operator, big reverse solidus,
/// ideographic full stop; the yen sign and the won sign, which are `\\` in code pages 932
/// and 949 (a Japanese or Korean Windows server reads `..¥..¥` as `..\\..\\`; found by an
/// attack run). Their compatibility forms (fullwidth ¥ and ₩, the halfwidth ideographic
/// full stop) decompose to them and are caught too.
const BEST_FIT_DELIMITERS: &[char] = &[
    '\u{2215}', '\u{2044}', '\u{29f8}', '\u{2216}', '\u{29f5}', '\u{29f9}', '\u{3002}', '\u{a5}',
    '\u{20a9}',
];

/// Whether the non-ASCII `c` may become one of [`PATH_DELIMITERS`] on a server.
fn stands_for_a_delimiter(c: char) -> bool {
    use unicode_normalization::char::decompose_compatible;

    if c.is_ascii() {
        return false;
    }
    if BEST_FIT_DELIMITERS.contains(&c) {
        return true;
    }
    let mut found = false;
    decompose_compatible(c, |part| {
        found |= PATH_DELIMITERS.contains(&part) || BEST_FIT_DELIMITERS.contains(&part)
    });
    found
}

/// `path` with every `%XX` escape decoded; `None` when a `%` does not start two hex
/// digits.
pub(crate) fn percent_decode(path: &str) -> Option<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn match_segments(pattern: &[Segment], segs: &[&str]) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while s < segs.len() {
        match pattern.get(p) {
            Some(Segment::Any) => {
                backtrack = Some((p, s));
                p += 1;
            }
            Some(Segment::Glob(g)) if glob(g.as_bytes(), segs[s].as_bytes()) => {
                p += 1;
                s += 1;
            }
            _ => match backtrack {
                Some((bp, bs)) => {
                    p = bp + 1;
                    s = bs + 1;
                    backtrack = Some((bp, bs + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|seg| *seg == Segment::Any)
}

/// `*` matches any run of bytes (a segment holds no `/`).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((bp, bt)) => {
                    p = bp + 1;
                    t = bt + 1;
                    backtrack = Some((bp, bt + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (pattern, path, want) in [
            ("/rust-lang/*", "/rust-lang/cargo", true),
            ("/rust-lang/*", "/rust-lang/cargo?x=1", true),
            ("/rust-lang/*", "/rust-lang/cargo/pulls", false),
            ("/rust-lang/*", "/rust-lang", false),
            ("/rust-lang/*", "/rust-lang/", true),
            ("/rust-lang/**", "/rust-lang/cargo/pulls", true),
            ("/rust-lang/**", "/rust-lang/", true),
            ("/rust-lang/**", "/rust-lang", true),
            ("/rust-lang/**", "/rust-langx/a", false),
            ("/a/**/z", "/a/z", true),
            ("/a/**/z", "/a/b/c/z", true),
            ("/a/**/z", "/a/b/c/y", false),
            ("/a/*.tar.gz", "/a/x.tar.gz", true),
            ("/a/*.tar.gz", "/a/x/y.tar.gz", false),
            ("/a/*-*", "/a/b-c-d", true),
            ("/exact", "/exact", true),
            ("/exact", "/exact/", false),
            ("/exact", "/Exact", false),
            ("/**", "/anything/at/all", true),
            ("/rust-lang/**", "/rust-lang/../evil", false),
            ("/rust-lang/**", "/rust-lang/%2e%2e/evil", false),
            ("/rust-lang/**", "/rust-lang%2fevil", false),
            ("/rust-lang/**", "/rust-lang/./x", false),
            ("/rust-lang/**", "/rust-lang\\..\\evil", false),
            ("/rust-lang/**", "rust-lang/x", false),
            ("/rust-lang/**", "http://evil/rust-lang/x", false),
            // Path parameters, double and overlong encodings, bad escapes, controls.
            ("/rust-lang/**", "/rust-lang/..;/evil/one", false),
            ("/rust-lang/**", "/rust-lang/x/..;/..;/evil/two", false),
            ("/rust-lang/**", "/rust-lang/.;/evil/eight", false),
            ("/rust-lang/**", "/rust-lang/a;jsessionid=1", false),
            ("/rust-lang/**", "/rust-lang/%c0%ae%c0%ae/evil/four", false),
            ("/rust-lang/**", "/rust-lang/%252e%252e/evil/seven", false),
            ("/rust-lang/**", "/rust-lang/%zz", false),
            ("/rust-lang/**", "/rust-lang/%4", false),
            ("/rust-lang/**", "/rust-lang/a%00b", false),
            ("/rust-lang/**", "/rust-lang/%u002e%u002e/evil", false),
            // Characters a normalising server reads as `.`, `/`, `\\`, `%` or `;` (found
            // by an attack run: the fullwidth `．．／` passed `/ok/*` as written).
            ("/ok/*", "/ok/%ef%bc%8e%ef%bc%8e%ef%bc%8fevil", false),
            ("/ok/*", "/ok/\u{ff0e}\u{ff0e}\u{ff0f}evil", false),
            ("/ok/**", "/ok/\u{2024}\u{2024}/evil", false),
            ("/ok/**", "/ok/\u{2025}/evil", false),
            ("/ok/**", "/ok/x\u{ff3c}..\u{ff3c}evil", false),
            ("/ok/**", "/ok/a\u{2215}b", false),
            ("/ok/**", "/ok/a\u{2216}b", false),
            ("/ok/**", "/ok/%e3%80%82%e3%80%82/evil", false),
            ("/ok/**", "/ok/\u{ff05}2e\u{ff05}2e/evil", false),
            ("/ok/**", "/ok/a\u{37e}b", false),
            ("/ok/**", "/ok/a\u{ff1f}b", false),
            ("/ok/*", "/ok/..\u{a5}..\u{a5}evil", false),
            ("/ok/*", "/ok/..%C2%A5..%C2%A5evil", false),
            ("/ok/*", "/ok/..\u{20a9}evil", false),
            ("/ok/*", "/ok/\u{ff61}\u{ff61}\u{a5}evil", false),
            ("/ok/*", "/ok/..\u{ffe5}evil", false),
            ("/ok/*", "/ok/..\u{ffe6}evil", false),
            ("/ok/*", "/ok/admin%3F.json", false),
            ("/ok/*", "/ok/admin%23.json", false),
            ("/ok/*", "/ok/x%3b_method=DELETE", false),
            // Legitimate escapes and other non-ASCII text still match.
            ("/rust-lang/**", "/rust-lang/caf%C3%A9", true),
            ("/rust-lang/**", "/rust-lang/a%20b", true),
            ("/rust-lang/**", "/rust-lang/\u{65e5}\u{672c}", true),
            ("/rust-lang/**", "/rust-lang/%EF%BD%81", true),
        ] {
            let p = PathPattern::new(pattern).unwrap();
            assert_eq!(p.matches(path), want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn bad_patterns() {
        assert!(PathPattern::new("x").is_err());
        assert!(PathPattern::new("/a**").is_err());
    }

    #[test]
    fn no_exponential_blowup() {
        let p = PathPattern::new(&format!("/{}b", "*a".repeat(40))).unwrap();
        let path = format!("/{}", "a".repeat(5000));
        let start = std::time::Instant::now();
        assert!(!p.matches(&path));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}
