//! Masking of secret values in step output and audit logs (DESIGN.md 7).
//!
//! What: a [`Masker`] is built from the values a job received. [`Masker::mask`] replaces
//! every occurrence of any form of any value in a buffer with [`MASK`];
//! [`Masker::stream`] does the same for output that arrives in chunks.
//!
//! Forms masked for each value (see [`forms`]):
//! - the raw bytes;
//! - base64 (RFC 4648 §4 standard and §5 URL-safe alphabets), with and without padding,
//!   of the value alone; and, so that the value is caught inside a longer base64 blob
//!   (HTTP Basic `user:TOKEN`, a JSON config, a kubeconfig), the characters that depend
//!   only on the value for each of the three alignments it can have in the blob: for
//!   k = 0, 1, 2, encode k zero bytes + value, drop the first ⌈8k/6⌉ characters (they
//!   mix in the bytes before it) and keep only the characters whose 6 bits lie inside
//!   the value (the last partial group mixes in the bytes after it). The few characters
//!   at the edges stay visible: they carry at most 4 bits of the value each;
//! - percent-encoding (RFC 3986 §2.1: everything but unreserved `A-Z a-z 0-9 - . _ ~`
//!   as `%XX`), with upper- and lower-case hex digits, and space as `%20` or as `+`
//!   (the HTML form encoding, where a literal `+` becomes `%2B`);
//! - the JSON string escaping of the value (RFC 8259 §7, as serde_json writes it), since
//!   audit lines are JSON;
//! - the value in ASCII lower case: the proxy and the DNS filter normalise names to lower
//!   case before they decide and record, so a value a job puts into a host name or DNS
//!   label (`$TOKEN.allowed.example`) reaches the audit log and the egress summary lower
//!   cased;
//! - the value as a DNS label in presentation form (RFC 1035 §5.1, as hickory writes
//!   it: a backslash before every character but letters, digits, `-` and `_`, and
//!   `\DDD` in octal for the unprintable ones), since the DNS filter quotes a refused
//!   name that way: `Tk!/+=` sent as one label was logged as `Tk\!\/\+\=` (found by
//!   an attack run).
//!
//! Tiny values: the raw form is always masked, whatever its length, because the
//! operator declared it secret. Derived forms shorter than 4 characters are skipped:
//! strings like `YQ` or `%41` occur all the time in ordinary output, so masking them
//! would garble logs while protecting a value that short enough to be guessed anyway.
//! Empty values are ignored (an empty pattern would match everywhere).
//!
//! Invariants:
//! - Every byte covered by any occurrence of any pattern is masked, overlapping and
//!   adjacent occurrences included; each maximal run of covered bytes becomes one
//!   [`MASK`]. Coverage is a union: the result does not depend on the patterns' order.
//! - [`StreamMasker`] emits exactly what [`Masker::mask`] would emit for the
//!   concatenation of the chunks, however they are split. It holds back only the
//!   shortest tail that could still grow into a pattern (the longest suffix that is a
//!   proper prefix of some pattern); everything before it is final, because an
//!   occurrence that starts earlier would make that earlier suffix a prefix too.
//! - Patterns and held-back bytes live in zeroed-on-drop buffers. Patterns are shared
//!   (`Arc`) between a masker's clones and streams and zeroed when the last one goes.
//!
//! The matching itself (which bytes are covered, what a stream holds back) is
//! `egress_proxy::secret_match`, shared with the proxy's response scrubber.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::engine::GeneralPurpose;
use base64::Engine as _;
use egress_proxy::secret_match::{PatternSet, Pending};
use zeroize::Zeroizing;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Derived forms shorter than this are not masked (module docs).
pub const MIN_DERIVED_LEN: usize = 4;

/// Appends `input` to `out`, each maximal run of covered bytes as one [`MASK`].
/// `in_mask` says whether the last byte emitted before was masked (a run continues).
fn emit(input: &[u8], covered: &[bool], in_mask: &mut bool, out: &mut Vec<u8>) {
    for (&byte, &hidden) in input.iter().zip(covered) {
        if hidden {
            if !*in_mask {
                out.extend_from_slice(MASK.as_bytes());
            }
        } else {
            out.push(byte);
        }
        *in_mask = hidden;
    }
}

/// Masks secret values in output (module docs).
#[derive(Clone)]
pub struct Masker {
    patterns: Arc<PatternSet>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl Masker {
    /// A masker for `values` and all their forms.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Masker {
        let mut list: Vec<Zeroizing<Vec<u8>>> = values.into_iter().flat_map(forms).collect();
        // Sorted only so that equal forms (of different values) become one pattern.
        list.sort_unstable_by(|a, b| a[..].cmp(&b[..]));
        list.dedup();
        Masker {
            patterns: Arc::new(PatternSet::new(list)),
        }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `input` with every form of every value replaced by [`MASK`].
    pub fn mask(&self, input: &[u8]) -> Vec<u8> {
        // Most jobs have no secret, and most output holds none: it passes as it is.
        if !self.patterns.occurs_in(input) {
            return input.to_vec();
        }
        let mut covered = vec![false; input.len()];
        self.patterns.cover(input, &mut covered, |_| {});
        let mut out = Vec::with_capacity(input.len());
        emit(input, &covered, &mut false, &mut out);
        out
    }

    /// [`Masker::mask`] on text. Masking only removes whole runs of bytes and inserts
    /// ASCII, so a run that split a character leaves invalid UTF-8 only at its edges;
    /// such bytes are replaced by U+FFFD.
    pub fn mask_str(&self, input: &str) -> String {
        match String::from_utf8(self.mask(input.as_bytes())) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        }
    }

    /// A masker for output that arrives in chunks.
    pub fn stream(&self) -> StreamMasker {
        StreamMasker {
            patterns: Arc::clone(&self.patterns),
            pending: Pending::new(),
            in_mask: false,
        }
    }
}

/// Masks a stream chunk by chunk (module docs). Call [`StreamMasker::finish`] at the
/// end of the stream to get the held-back rest.
pub struct StreamMasker {
    patterns: Arc<PatternSet>,
    /// Bytes received but not yet emitted, with their coverage.
    pending: Pending,
    /// Whether the last emitted byte was masked.
    in_mask: bool,
}

impl StreamMasker {
    /// Takes the next chunk; returns the masked bytes that are final now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        // The usual chunk: nothing held, nothing to mask, nothing to hold back.
        if self.pending.passes(&self.patterns, chunk) {
            if !chunk.is_empty() {
                self.in_mask = false;
            }
            return chunk.to_vec();
        }
        let ready = self.pending.push(&self.patterns, chunk, |_| {});
        self.emit_until(ready)
    }

    /// Ends the stream: returns the held-back rest, masked, and starts afresh.
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.emit_until(self.pending.len());
        self.in_mask = false;
        out
    }

    fn emit_until(&mut self, end: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(end);
        let in_mask = &mut self.in_mask;
        self.pending.release(end, |bytes, covered| {
            emit(bytes, covered, in_mask, &mut out)
        });
        out
    }
}

/// Every form of `value` that is masked (module docs), unsorted, possibly repeated.
pub fn forms(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    if value.is_empty() {
        return Vec::new();
    }
    let mut derived = base64_forms(value);
    derived.extend(percent_forms(value));
    derived.extend(json_form(value));
    derived.push(dns_label_form(value));
    derived.push(Zeroizing::new(value.to_ascii_lowercase()));
    derived.retain(|form| form.len() >= MIN_DERIVED_LEN && form[..] != *value);
    derived.push(Zeroizing::new(value.to_vec()));
    derived
}

/// `engine`'s encoding of `input`, in a buffer sized up front (no reallocation leaves
/// copies behind).
fn encode(engine: &GeneralPurpose, input: &[u8]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(input.len().div_ceil(3) * 4));
    engine.encode_string(input, &mut text);
    text
}

fn base64_forms(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = Vec::new();
    for engine in [&STANDARD, &URL_SAFE] {
        out.push(Zeroizing::new(encode(engine, value).as_bytes().to_vec()));
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3usize {
            let mut shifted = Zeroizing::new(Vec::with_capacity(offset + value.len()));
            shifted.resize(offset, 0);
            shifted.extend_from_slice(value);
            let text = encode(engine, &shifted);
            if offset == 0 {
                out.push(Zeroizing::new(text.as_bytes().to_vec()));
            }
            // Characters i with 6i >= 8·offset and 6(i+1) <= 8·(offset+len) depend on
            // the value's bits only.
            let start = (8 * offset).div_ceil(6);
            let end = 8 * (offset + value.len()) / 6;
            if end > start {
                out.push(Zeroizing::new(text.as_bytes()[start..end].to_vec()));
            }
        }
    }
    out
}

fn percent_forms(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    const LOWER: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::new();
    for digits in [UPPER, LOWER] {
        for plus_for_space in [false, true] {
            let mut text = Zeroizing::new(Vec::with_capacity(value.len() * 3));
            for &byte in value {
                let unreserved =
                    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
                if unreserved {
                    text.push(byte);
                } else if byte == b' ' && plus_for_space {
                    text.push(b'+');
                } else {
                    text.extend_from_slice(&[
                        b'%',
                        digits[usize::from(byte >> 4)],
                        digits[usize::from(byte & 0xf)],
                    ]);
                }
            }
            out.push(text);
        }
    }
    out
}

/// The value as one DNS label in presentation form (module documentation).
fn dns_label_form(value: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(value.len() * 4));
    for &byte in value {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => out.push(byte),
            0x21..=0x7e => out.extend_from_slice(&[b'\\', byte]),
            _ => out.extend_from_slice(format!("\\{byte:03o}").as_bytes()),
        }
    }
    out
}

/// The value as it appears inside a JSON string (RFC 8259 §7, serde_json's choices:
/// the short escapes where they exist, `\u00XX` for other control characters,
/// everything else as is). `None` when the value is not UTF-8: it cannot appear in a
/// JSON string then.
fn json_form(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut out = Zeroizing::new(Vec::with_capacity(value.len() * 6));
    for ch in text.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if u32::from(c) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[&str]) -> Masker {
        Masker::new(values.iter().map(|v| v.as_bytes()))
    }

    fn masked(values: &[&str], input: &str) -> String {
        masker(values).mask_str(input)
    }

    /// The DNS filter quotes a refused name in presentation form: a value sent as one
    /// label came out escaped and unmasked (found by an attack run).
    #[test]
    fn a_value_written_as_a_dns_label_is_masked() {
        let value = r#"Tk!/+=$"\~.19fb"#;
        let quoted = r#"`Tk\!\/\+\=\$\"\\\~\.19fb.allowed.test.` is not a valid host name"#;
        assert_eq!(
            masked(&[value], quoted),
            "`***.allowed.test.` is not a valid host name"
        );
        // Unprintable bytes are written as octal triples.
        let m = Masker::new([b"ab\ncd\xffef".as_slice()]);
        assert_eq!(m.mask(b"x ab\\012cd\\377ef y"), b"x *** y");
    }

    /// What a stream gives for `chunks`.
    fn streamed(masker: &Masker, chunks: &[&[u8]]) -> Vec<u8> {
        let mut stream = masker.stream();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(stream.push(chunk));
        }
        out.extend(stream.finish());
        out
    }

    #[test]
    fn raw_values_are_masked_everywhere() {
        assert_eq!(
            masked(&["hunter2"], "pw=hunter2, again hunter2."),
            "pw=***, again ***."
        );
        // Adjacent occurrences are one run.
        assert_eq!(masked(&["ab1"], "xab1ab1y"), "x***y");
        assert_eq!(masked(&["hunter2"], "nothing here"), "nothing here");
    }

    #[test]
    fn overlapping_matches_are_all_masked() {
        assert_eq!(masked(&["abcd", "cdef"], "xabcdefx"), "x***x");
        assert_eq!(masked(&["aaa"], "baaaab"), "b***b");
        assert_eq!(
            masked(&["secret", "secretlonger"], "<secretlonger>"),
            "<***>"
        );
        assert_eq!(
            masked(&["secretlonger", "secret"], "<secretlong>"),
            "<***long>"
        );
    }

    #[test]
    fn base64_of_the_value_alone_in_every_alphabet() {
        // Chosen so the standard and URL-safe alphabets differ (+/ versus -_), and the
        // length leaves padding.
        let value = "tok>>>???~";
        let engines: [&GeneralPurpose; 4] =
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD];
        for engine in engines {
            let encoded = engine.encode(value);
            assert_eq!(
                masked(&[value], &format!("v={encoded};")),
                "v=***;",
                "{encoded}"
            );
        }
        assert_ne!(STANDARD.encode(value), URL_SAFE.encode(value));
    }

    #[test]
    fn base64_inside_a_longer_blob_at_every_alignment() {
        let token = "ghp_0123456789abcdefXYZ";
        for prefix_len in 0..7 {
            let prefix = &"usernam"[..prefix_len];
            for suffix in ["", "!", "!?", "!?#"] {
                let plain = format!("{prefix}{token}{suffix}");
                for engine in [&STANDARD, &URL_SAFE] {
                    let blob = engine.encode(&plain);
                    let out = masked(&[token], &blob);
                    // One mask covers at least the characters that depend only on the
                    // token, and at most the partial character on each side of them
                    // (which can match the token's own encoding by chance) and padding.
                    let start = (8 * prefix_len).div_ceil(6);
                    let end = 8 * (prefix_len + token.len()) / 6;
                    let context = format!("prefix {prefix_len}, suffix {suffix:?}: {out}");
                    let (before, after) = out.split_once(MASK).expect(&context);
                    assert!(!after.contains(MASK), "{context}");
                    let (a, b) = (before.len(), blob.len() - after.len());
                    assert_eq!(before, &blob[..a], "{context}");
                    assert_eq!(after, &blob[b..], "{context}");
                    assert!(a <= start && start - a <= 1, "{context}");
                    assert!(b >= end, "{context}");
                    assert!(blob[end..b].trim_end_matches('=').len() <= 1, "{context}");
                }
            }
        }
    }

    #[test]
    fn percent_encoded_forms() {
        let value = "a b+c/d";
        for form in [
            "a%20b%2Bc%2Fd",
            "a+b%2Bc%2Fd",
            "a%20b%2bc%2fd",
            "a+b%2bc%2fd",
        ] {
            assert_eq!(
                masked(&[value], &format!("GET /?token={form}&x=1")),
                "GET /?token=***&x=1",
                "{form}"
            );
        }
        // Unreserved characters stay as they are, so the raw form covers them (the DNS
        // label form, which escapes `.` and `~`, is another matter).
        let forms: Vec<Vec<u8>> = forms(b"A-z.0_~").iter().map(|f| f.to_vec()).collect();
        assert!(forms
            .iter()
            .all(|f| f == b"A-z.0_~" || f == br"A-z\.0_\~" || !f.starts_with(b"A")));
    }

    #[test]
    fn a_lower_cased_value_is_masked_as_names_are_recorded() {
        let masker = Masker::new([b"SeCrEt-ToKeN-42".as_slice()]);
        let line = r#"{"host":"secret-token-42.allowed.test","verdict":"deny"}"#;
        let masked = String::from_utf8(masker.mask(line.as_bytes()).to_vec()).unwrap();
        assert_eq!(
            masked,
            format!(r#"{{"host":"{MASK}.allowed.test","verdict":"deny"}}"#)
        );
        // A value without upper case is not listed twice, and a short one gets no
        // lower-case form (derived forms under 4 bytes are skipped).
        let lower = forms(b"lower-only-value");
        assert_eq!(
            lower
                .iter()
                .filter(|f| &f[..] == b"lower-only-value")
                .count(),
            1
        );
        assert!(!forms(b"AB").iter().any(|f| &f[..] == b"ab"));
    }

    #[test]
    fn json_escaped_form_in_an_audit_line() {
        let value = "pa\"ss\\w\nrd\u{1}é";
        let line = serde_json::json!({ "path": format!("/x?{value}"), "n": 1 }).to_string();
        assert!(!line.contains(value));
        let out = masked(&[value], &line);
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["path"], "/x?***");
        // Not UTF-8: no JSON form, the raw form is still masked.
        let binary = Masker::new([&b"\xff\xfeabc"[..]]);
        assert_eq!(binary.mask(b"<\xff\xfeabc>"), b"<***>");
    }

    #[test]
    fn tiny_values_mask_raw_but_skip_short_derived_forms() {
        for form in forms(b"/") {
            assert!(*form == *b"/" || form.len() >= MIN_DERIVED_LEN, "{form:?}");
        }
        // `%2F` (3 characters) is left alone; the raw `/` is masked.
        assert_eq!(masked(&["/"], "a%2Fb/"), "a%2Fb***");
        assert_eq!(masked(&["x"], "axb"), "a***b");
        // A 2-byte value's padded base64 (4 characters) is still masked.
        assert_eq!(masked(&["ab"], "YWI="), "***");
    }

    #[test]
    fn empty_maskers_change_nothing() {
        let none = Masker::new(std::iter::empty());
        assert!(none.is_empty());
        assert!(Masker::new([&b""[..]]).is_empty());
        assert!(!masker(&["x"]).is_empty());
        assert_eq!(none.mask(b"anything"), b"anything");
        assert_eq!(streamed(&none, &[b"any", b"thing"]), b"anything");
    }

    #[test]
    fn masker_is_clone_send_sync_and_debug_hides_patterns() {
        fn check<T: Clone + Send + Sync>() {}
        check::<Masker>();
        let debug = format!("{:?}", masker(&["hunter2"]));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn a_secret_split_at_every_point_across_two_and_three_chunks() {
        let secret = "s3cr3t-T0KEN";
        let masker = masker(&[secret]);
        let input = format!("before {secret} after {secret}");
        let whole = masker.mask(input.as_bytes());
        assert_eq!(whole, b"before *** after ***");
        let bytes = input.as_bytes();
        for i in 0..=bytes.len() {
            assert_eq!(
                streamed(&masker, &[&bytes[..i], &bytes[i..]]),
                whole,
                "split {i}"
            );
            for j in i..=bytes.len() {
                let chunks = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                assert_eq!(streamed(&masker, &chunks), whole, "split {i},{j}");
            }
        }
    }

    #[test]
    fn one_and_two_byte_patterns_at_every_split() {
        let masker = masker(&["q", "zz", "zzz!"]);
        let input = b"aqzzzz!zq";
        let whole = masker.mask(input);
        assert_eq!(whole, b"a***z***");
        for i in 0..=input.len() {
            assert_eq!(
                streamed(&masker, &[&input[..i], &input[i..]]),
                whole,
                "split {i}"
            );
        }
    }

    #[test]
    fn streams_match_whole_buffers_for_every_form_and_chunking() {
        let value = "to ken/+?\"x";
        let masker = masker(&[value, "other-secret"]);
        let mut input = String::new();
        for form in forms(value.as_bytes()) {
            input.push_str("line: ");
            input.push_str(std::str::from_utf8(&form).unwrap());
            input.push('\n');
        }
        input.push_str(&format!(
            "basic {}\n",
            STANDARD.encode(format!("me:{value}"))
        ));
        input.push_str("other-secretother-secret and plain text\n");
        let whole = masker.mask(input.as_bytes());
        assert!(!String::from_utf8_lossy(&whole).contains("to ken"));
        // Deterministic pseudo-random chunk sizes (a 64-bit LCG, Knuth's MMIX constants).
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..200 {
            let mut chunks = Vec::new();
            let mut rest = input.as_bytes();
            while !rest.is_empty() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let size = 1 + (seed >> 33) as usize % 9;
                let (head, tail) = rest.split_at(size.min(rest.len()));
                chunks.push(head);
                rest = tail;
            }
            assert_eq!(streamed(&masker, &chunks), whole);
        }
    }

    #[test]
    fn streams_hold_back_only_a_possible_start() {
        let masker = masker(&["SECRET"]);
        let mut stream = masker.stream();
        // Nothing here can start a pattern: emitted at once.
        assert_eq!(stream.push(b"hello world\n"), b"hello world\n");
        // "SEC" could become "SECRET": held; "key=" is not.
        assert_eq!(stream.push(b"key=SEC"), b"key=");
        assert_eq!(stream.push(b"RET!"), b"***!");
        // A false start is released as soon as it cannot match any more.
        assert_eq!(stream.push(b"SE"), b"");
        assert_eq!(stream.push(b"A"), b"SEA");
        assert_eq!(stream.push(b"S"), b"");
        assert_eq!(stream.finish(), b"S");
        // After finish the stream starts afresh.
        assert_eq!(stream.push(b"SECRET"), b"***");
        assert_eq!(stream.finish(), b"");
    }
}
