//! Scrubbing injected credentials out of responses (DESIGN.md 7: "the sandbox never sees
//! the value").
//!
//! What: on a request the proxy injected a credential into, the response may carry the
//! credential back (a server or debugging endpoint that echoes request headers, like
//! httpbin's `/headers`). Before the response reaches the client, every occurrence of
//! each injected credential's raw secret and of its complete header value is replaced by
//! as many `*` as it has bytes, in response header values (and trailers) and in the
//! body.
//!
//! Invariants:
//! - Same length: a scrubbed response has exactly the bytes of the original, so
//!   `Content-Length` stays right and nothing is re-framed.
//! - Streaming: [`BodyScrubber`] gives, for any split of the body into chunks, exactly
//!   what scrubbing the whole body at once gives. It holds back only the shortest tail
//!   that could still grow into a pattern (the longest suffix that is a proper prefix of
//!   one); everything before it is final, because an occurrence starting earlier would
//!   make an earlier suffix such a prefix. Overlapping occurrences are all covered.
//!   The matching is [`crate::secret_match`], shared with the agent's output masker.
//! - Only bodies the proxy can read are passed: a body is scrubbed as bytes, which is
//!   meaningful only for the identity coding. Requests to bound hosts therefore go
//!   upstream with `Accept-Encoding: identity` (RFC 9110 section 12.5.3; the job's own
//!   preference is replaced), and a response that still arrives with a
//!   `Content-Encoding` other than identity (RFC 9110 section 8.4) or a transfer coding
//!   besides chunked (RFC 9112 section 6.1) is refused: [`unreadable_coding`] says why,
//!   and the proxy answers 502 with a deny event instead of passing it.
//! - Range requests (RFC 9110 section 14) are not forwarded to bound hosts: a server
//!   could otherwise return the credential a few bytes per response, and no response
//!   would contain a whole occurrence to scrub. The cost: downloads from credential hosts
//!   cannot be resumed, they are fetched whole.
//! - Patterns and held-back bytes live in zeroed-on-drop buffers; audit events name the
//!   credential, never the value.
//!
//! Not covered: transformed forms of the value (base64 of the raw secret, JSON escaping,
//! case changes) and header names. The agent's output masker covers encoded forms of
//! what reaches step output; this layer is about what a server hands back verbatim.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use zeroize::Zeroizing;

use crate::secret_match::{PatternSet, Pending};

/// One byte string to scrub, and the credential it belongs to.
pub(crate) struct Pattern {
    /// The credential's name, for audit events.
    pub credential: Arc<str>,
    /// Never empty (an empty pattern would match everywhere).
    pub bytes: Zeroizing<Vec<u8>>,
}

/// The patterns of the credentials bound to one host; cheap to clone.
#[derive(Clone)]
pub(crate) struct Scrubber {
    /// The patterns' bytes, indexed for matching (shared with every body scrubber).
    set: Arc<PatternSet>,
    /// The credential of each pattern, by its index in `set`.
    credentials: Arc<[Arc<str>]>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("patterns", &self.credentials.len())
            .finish()
    }
}

/// What replaces every byte of an occurrence.
const STAR: u8 = b'*';

impl Scrubber {
    /// A scrubber for `patterns` (an empty one never matches).
    pub fn new(patterns: impl IntoIterator<Item = Arc<Pattern>>) -> Scrubber {
        let patterns: Vec<Arc<Pattern>> = patterns.into_iter().collect();
        Scrubber {
            set: Arc::new(PatternSet::new(
                patterns.iter().map(|p| p.bytes.clone()).collect(),
            )),
            credentials: patterns.iter().map(|p| Arc::clone(&p.credential)).collect(),
        }
    }

    /// Adds the credential of pattern `index` to `hits`, once.
    fn note_hit(&self, index: usize, hits: &mut Vec<Arc<str>>) {
        let credential = &self.credentials[index];
        if !hits.contains(credential) {
            hits.push(Arc::clone(credential));
        }
    }

    /// Scrubs every header value in `headers` in place; returns the credentials found.
    pub fn headers(&self, headers: &mut HeaderMap) -> Vec<Arc<str>> {
        let mut hits = Vec::new();
        self.scrub_headers(headers, &mut hits);
        hits
    }

    /// Scrubs every header value in `headers` in place, adding the credentials found to
    /// `hits` (each once).
    fn scrub_headers(&self, headers: &mut HeaderMap, hits: &mut Vec<Arc<str>>) {
        for value in headers.values_mut() {
            if !self.set.occurs_in(value.as_bytes()) {
                continue;
            }
            let mut covered = vec![false; value.len()];
            self.set
                .cover(value.as_bytes(), &mut covered, |i| self.note_hit(i, hits));
            let mut bytes = value.as_bytes().to_vec();
            star(&mut bytes, &covered);
            // Stars replace visible bytes: the result is a valid value whenever the
            // original was. Should that ever fail, the value goes whole.
            let replacement =
                HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| HeaderValue::from_static("*"));
            *value = replacement;
        }
    }

    /// A scrubber for one body.
    pub fn body(&self) -> BodyScrubber {
        BodyScrubber {
            scrubber: self.clone(),
            pending: Pending::new(),
            hits: Vec::new(),
            reported: 0,
        }
    }
}

/// Replaces every covered byte by [`STAR`].
fn star(bytes: &mut [u8], covered: &[bool]) {
    for (byte, &hidden) in bytes.iter_mut().zip(covered) {
        if hidden {
            *byte = STAR;
        }
    }
}

/// Scrubs a body chunk by chunk (module docs). Call [`BodyScrubber::finish`] at the end
/// of the body for the held-back rest.
pub(crate) struct BodyScrubber {
    scrubber: Scrubber,
    /// Bytes received but not yet passed on, with their coverage.
    pending: Pending,
    /// Credentials found so far, in the order found.
    hits: Vec<Arc<str>>,
    /// How many of `hits` [`BodyScrubber::new_hits`] has returned.
    reported: usize,
}

impl BodyScrubber {
    /// Takes the next chunk; returns the scrubbed bytes that are final now. A chunk that
    /// holds no credential and could not start one at its end, arriving when nothing is
    /// held back (nearly every chunk of nearly every body), is passed on as it is,
    /// without a copy.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.pending.passes(&self.scrubber.set, &chunk) {
            return chunk;
        }
        let (scrubber, hits) = (&self.scrubber, &mut self.hits);
        let ready = self
            .pending
            .push(&scrubber.set, &chunk, |i| scrubber.note_hit(i, hits));
        self.release(ready)
    }

    /// Ends the body: returns the held-back rest, scrubbed.
    pub fn finish(&mut self) -> Bytes {
        self.release(self.pending.len())
    }

    /// How many bytes are held back.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Credentials found since the last call.
    pub fn new_hits(&mut self) -> &[Arc<str>] {
        let from = self.reported;
        self.reported = self.hits.len();
        &self.hits[from..]
    }

    /// Scrubs trailers (the headers that may follow a chunked body) like headers.
    pub fn trailers(&mut self, trailers: &mut HeaderMap) {
        self.scrubber.scrub_headers(trailers, &mut self.hits);
    }

    fn release(&mut self, end: usize) -> Bytes {
        self.pending.release(end, |bytes, covered| {
            star(bytes, covered);
            Bytes::copy_from_slice(bytes)
        })
    }
}

/// Why a response from a bound host cannot be checked, if it cannot: a content coding
/// other than identity, or a transfer coding other than chunked (module docs).
pub(crate) fn unreadable_coding(headers: &HeaderMap) -> Option<String> {
    // The codings listed in `name` (comma-separated, any number of fields) that are not
    // `readable`, lower-cased.
    let unreadable = |name, readable: &str| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|c| String::from_utf8_lossy(c).trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty() && c != readable)
            .collect::<Vec<_>>()
    };
    let content = unreadable(header::CONTENT_ENCODING, "identity");
    let transfer = unreadable(header::TRANSFER_ENCODING, "chunked");
    if !content.is_empty() {
        Some(format!(
            "compressed response from a credential host cannot be checked (Content-Encoding: {})",
            content.join(", ")
        ))
    } else if !transfer.is_empty() {
        Some(format!(
            "encoded response from a credential host cannot be checked (Transfer-Encoding: {})",
            transfer.join(", ")
        ))
    } else {
        None
    }
}

/// Makes a request to a bound host ask for a response the proxy can scrub: identity
/// coding only, whole representations only (module docs).
pub(crate) fn request_scrubbable(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers.remove(header::RANGE);
    headers.remove(header::IF_RANGE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber(values: &[(&str, &str)]) -> Scrubber {
        Scrubber::new(values.iter().map(|(name, value)| {
            Arc::new(Pattern {
                credential: Arc::from(*name),
                bytes: Zeroizing::new(value.as_bytes().to_vec()),
            })
        }))
    }

    /// What a body scrubber gives for `chunks`, and the credentials it reported.
    fn streamed(scrubber: &Scrubber, chunks: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
        let mut body = scrubber.body();
        let mut out = Vec::new();
        let mut names = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&body.push(Bytes::copy_from_slice(chunk)));
            names.extend(body.new_hits().iter().map(|n| n.to_string()));
        }
        out.extend_from_slice(&body.finish());
        names.extend(body.new_hits().iter().map(|n| n.to_string()));
        assert_eq!(body.held(), 0);
        (out, names)
    }

    fn whole(scrubber: &Scrubber, input: &str) -> String {
        String::from_utf8(streamed(scrubber, &[input.as_bytes()]).0).unwrap()
    }

    #[test]
    fn a_value_split_at_every_point_across_two_chunks_is_replaced_by_as_many_stars() {
        let s = scrubber(&[("TOKEN", "s3cr3t-T0KEN")]);
        let input = "before s3cr3t-T0KEN after";
        let expected = "before ************ after";
        assert_eq!(expected.len(), input.len());
        let bytes = input.as_bytes();
        for split in 0..=bytes.len() {
            let (out, names) = streamed(&s, &[&bytes[..split], &bytes[split..]]);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "split {split}");
            assert_eq!(names, vec!["TOKEN"], "split {split}");
        }
    }

    #[test]
    fn values_at_the_start_and_the_end_and_several_values() {
        let s = scrubber(&[("A", "alpha"), ("B", "Bearer beta")]);
        assert_eq!(whole(&s, "alpha"), "*****");
        assert_eq!(whole(&s, "alpha and Bearer beta"), "***** and ***********");
        assert_eq!(whole(&s, "Bearer betaalpha"), "****************");
        // Each credential once, in the order of its first occurrence in the body.
        let (_, names) = streamed(&s, &[b"x Bearer beta y alpha alpha"]);
        assert_eq!(names, vec!["B", "A"]);
        assert_eq!(whole(&s, "nothing here"), "nothing here");
        assert!(streamed(&s, &[b"nothing", b" here"]).1.is_empty());
    }

    #[test]
    fn overlapping_occurrences_are_all_covered() {
        // The formatted value contains the raw secret: both are patterns.
        let s = scrubber(&[("T", "tok3n"), ("T", "Bearer tok3n")]);
        assert_eq!(whole(&s, "[Bearer tok3n]"), "[************]");
        let s = scrubber(&[("X", "abcd"), ("Y", "cdef")]);
        assert_eq!(whole(&s, "xabcdefx"), "x******x");
        let s = scrubber(&[("R", "aaa")]);
        assert_eq!(whole(&s, "baaaab"), "b****b");
        // Split inside the overlap, byte by byte.
        let s = scrubber(&[("X", "abcd"), ("Y", "cdef")]);
        let chunks: Vec<&[u8]> = b"xabcdefx".chunks(1).collect();
        assert_eq!(streamed(&s, &chunks).0, b"x******x");
    }

    #[test]
    fn only_a_possible_start_is_held_back() {
        let s = scrubber(&[("S", "SECRET")]);
        let mut body = s.body();
        assert_eq!(
            &body.push(Bytes::from_static(b"hello world\n"))[..],
            b"hello world\n"
        );
        assert_eq!(&body.push(Bytes::from_static(b"key=SEC"))[..], b"key=");
        assert_eq!(body.held(), 3);
        assert_eq!(&body.push(Bytes::from_static(b"RET!"))[..], b"******!");
        assert_eq!(&body.push(Bytes::from_static(b"SE"))[..], b"");
        assert_eq!(&body.push(Bytes::from_static(b"A"))[..], b"SEA");
        assert!(body.push(Bytes::from_static(b"S")).is_empty());
        assert_eq!(&body.finish()[..], b"S");
    }

    #[test]
    fn clean_chunks_pass_through_without_a_copy() {
        let s = scrubber(&[("TOKEN", "s3cr3t")]);
        let mut body = s.body();
        let clean = Bytes::from_static(b"nothing to see here\n");
        assert_eq!(body.push(clean.clone()).as_ptr(), clean.as_ptr());
        // A chunk that ends in a possible start is held back and copied...
        let risky = Bytes::from_static(b"almost s3c");
        assert_eq!(&body.push(risky)[..], b"almost ");
        // ...and so is the next one while bytes are held.
        let next = Bytes::from_static(b"r3t done");
        let out = body.push(next.clone());
        assert_ne!(out.as_ptr(), next.as_ptr());
        assert_eq!(&out[..], b"****** done");
        // A chunk with a whole occurrence is scrubbed, not passed on.
        let whole = Bytes::from_static(b"x s3cr3t y");
        assert_eq!(&body.push(whole)[..], b"x ****** y");
        assert_eq!(body.held(), 0);
    }

    #[test]
    fn every_chunking_gives_what_the_whole_body_gives() {
        let s = scrubber(&[("A", "to ken/+?"), ("B", "Basic dG86a2Vu"), ("C", "kk")]);
        let input = "to ken/+?to ken/+? Basic dG86a2Vu kkk to ken/+ plain Basic dG8 kk";
        let expected = whole(&s, input);
        assert_eq!(expected.len(), input.len());
        assert!(!expected.contains("to ken/+?"));
        // Every fixed chunk size, and every split into three pieces.
        let bytes = input.as_bytes();
        for size in 1..=bytes.len() {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            let out = String::from_utf8(streamed(&s, &chunks).0).unwrap();
            assert_eq!(out, expected, "chunks of {size}");
        }
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let chunks = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                let out = String::from_utf8(streamed(&s, &chunks).0).unwrap();
                assert_eq!(out, expected, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn header_values_are_scrubbed_in_place_and_others_left_alone() {
        let s = scrubber(&[("T", "s3cr3t"), ("T", "Bearer s3cr3t")]);
        let mut headers = HeaderMap::new();
        headers.insert("x-echo-authorization", "Bearer s3cr3t".parse().unwrap());
        headers.append("set-cookie", "a=s3cr3t; Path=/".parse().unwrap());
        headers.append("set-cookie", "b=plain".parse().unwrap());
        headers.insert("content-length", "42".parse().unwrap());
        let hits = s.headers(&mut headers);
        assert_eq!(hits.len(), 1);
        assert_eq!(&*hits[0], "T");
        assert_eq!(headers["x-echo-authorization"], "*************");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, vec!["a=******; Path=/", "b=plain"]);
        assert_eq!(headers["content-length"], "42");
        let mut clean = HeaderMap::new();
        clean.insert("server", "test".parse().unwrap());
        assert!(s.headers(&mut clean).is_empty());
    }

    #[test]
    fn empty_patterns_are_ignored() {
        let s = scrubber(&[("E", ""), ("T", "x1")]);
        assert_eq!(whole(&s, "ax1b"), "a**b");
        assert_eq!(whole(&scrubber(&[("E", "")]), "anything"), "anything");
    }

    #[test]
    fn compressed_or_transfer_coded_responses_are_unreadable() {
        let mut headers = HeaderMap::new();
        assert_eq!(unreadable_coding(&headers), None);
        headers.insert(header::CONTENT_ENCODING, "identity".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert_eq!(unreadable_coding(&headers), None);
        headers.insert(header::CONTENT_ENCODING, "GZIP".parse().unwrap());
        let reason = unreadable_coding(&headers).unwrap();
        assert!(
            reason.starts_with("compressed response from a credential host cannot be checked"),
            "{reason}"
        );
        assert!(reason.contains("gzip"), "{reason}");
        headers.remove(header::CONTENT_ENCODING);
        headers.insert(header::TRANSFER_ENCODING, "gzip, chunked".parse().unwrap());
        assert!(unreadable_coding(&headers).unwrap().contains("gzip"));
    }

    #[test]
    fn requests_ask_for_whole_identity_responses() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, "gzip, br".parse().unwrap());
        headers.append(header::ACCEPT_ENCODING, "zstd".parse().unwrap());
        headers.insert(header::RANGE, "bytes=10-20".parse().unwrap());
        headers.insert(header::IF_RANGE, "\"etag\"".parse().unwrap());
        request_scrubbable(&mut headers);
        let codings: Vec<_> = headers.get_all(header::ACCEPT_ENCODING).iter().collect();
        assert_eq!(codings, vec!["identity"]);
        assert!(!headers.contains_key(header::RANGE));
        assert!(!headers.contains_key(header::IF_RANGE));
    }
}
