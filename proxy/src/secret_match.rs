//! Finding secret values in bytes that arrive whole or in chunks: the one matcher behind
//! the agent's output masker (runner-agent `mask`) and the proxy's response scrubber
//! ([`crate::intercept`]). Each decides what replaces a match; this module only says
//! which bytes are covered and which must wait for the next chunk.
//!
//! Invariants:
//! - Coverage is a union: every byte inside any occurrence of any pattern is covered,
//!   overlapping and adjacent occurrences included, whatever the patterns' order.
//! - [`Pending`] covers, for any split of a stream into chunks, exactly the bytes that
//!   covering the whole stream at once covers. It holds back only the shortest tail that
//!   could still grow into a pattern (the longest suffix that is a proper prefix of
//!   one); everything before it is final, because an occurrence starting earlier would
//!   make an earlier suffix such a prefix.
//! - Patterns, the tables built from them and held-back bytes live in zeroed-on-drop
//!   buffers. (An Aho-Corasick automaton or a `memchr::memmem` searcher would keep
//!   copies or tables of the patterns that are never zeroed; that is why neither is
//!   used.)
//!
//! How: the patterns are indexed by their first two bytes, so one pass over the input
//! finds every occurrence of every pattern. At each position a bit lookup says whether
//! any pattern starts with the next two bytes, and only those patterns are compared. A
//! pass per pattern would cost as many scans as there are patterns, and the masker has
//! about fifteen forms of each secret.

use std::ops::ControlFlow;

use zeroize::Zeroizing;

/// A set of non-empty byte patterns, indexed for [`PatternSet::cover`].
pub struct PatternSet {
    list: Vec<Zeroizing<Vec<u8>>>,
    longest: usize,
    /// Bit `b`: some pattern is the single byte `b`.
    single: Zeroizing<[u64; 4]>,
    /// The one-byte patterns, sorted...
    singles: Zeroizing<Vec<u8>>,
    /// ...and each one's index in `list`.
    single_indices: Vec<usize>,
    /// Bit `b`: some pattern of two bytes or more starts with `b`.
    first: Zeroizing<[u64; 4]>,
    /// Bit `a << 8 | b`: some pattern of two bytes or more starts with `a b`.
    pairs: Zeroizing<Vec<u64>>,
    /// The first two bytes of each pattern of two bytes or more, sorted...
    prefixes: Zeroizing<Vec<u16>>,
    /// ...and that pattern's index in `list`.
    indices: Vec<usize>,
}

impl std::fmt::Debug for PatternSet {
    /// Never prints a pattern.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatternSet")
            .field("patterns", &self.list.len())
            .finish()
    }
}

fn bit(set: &[u64], index: usize) -> bool {
    (set[index / 64] >> (index % 64)) & 1 == 1
}

fn set_bit(set: &mut [u64], index: usize) {
    set[index / 64] |= 1 << (index % 64);
}

fn pair(a: u8, b: u8) -> u16 {
    (u16::from(a) << 8) | u16::from(b)
}

/// The entries of `indices` whose key in the sorted `keys` (same length) is `key`.
fn run_of<'a, K: Ord + Copy + 'a>(
    keys: &'a [K],
    indices: &'a [usize],
    key: K,
) -> impl Iterator<Item = usize> + 'a {
    let start = keys.partition_point(|&k| k < key);
    keys[start..]
        .iter()
        .take_while(move |&&k| k == key)
        .zip(&indices[start..])
        .map(|(_, &i)| i)
}

impl PatternSet {
    /// Indexes `list`. Empty patterns are kept in the numbering but never match (an
    /// empty pattern would match everywhere).
    pub fn new(list: Vec<Zeroizing<Vec<u8>>>) -> PatternSet {
        let mut single = Zeroizing::new([0u64; 4]);
        let mut first = Zeroizing::new([0u64; 4]);
        let mut pairs = Zeroizing::new(vec![0u64; (1 << 16) / 64]);
        let mut indices: Vec<usize> = Vec::with_capacity(list.len());
        let mut single_indices: Vec<usize> = Vec::new();
        for (index, pattern) in list.iter().enumerate() {
            match pattern[..] {
                [only] => {
                    set_bit(&mut *single, usize::from(only));
                    single_indices.push(index);
                }
                [a, b, ..] => {
                    set_bit(&mut *first, usize::from(a));
                    set_bit(&mut pairs, usize::from(pair(a, b)));
                    indices.push(index);
                }
                [] => {}
            }
        }
        single_indices.sort_by_key(|&i| (list[i][0], i));
        let mut singles = Zeroizing::new(Vec::with_capacity(single_indices.len()));
        singles.extend(single_indices.iter().map(|&i| list[i][0]));
        indices.sort_by_key(|&i| (pair(list[i][0], list[i][1]), i));
        let mut prefixes = Zeroizing::new(Vec::with_capacity(indices.len()));
        prefixes.extend(indices.iter().map(|&i| pair(list[i][0], list[i][1])));
        let longest = list.iter().map(|p| p.len()).max().unwrap_or(0);
        PatternSet {
            list,
            longest,
            single,
            singles,
            single_indices,
            first,
            pairs,
            prefixes,
            indices,
        }
    }

    /// Whether no pattern can ever match.
    pub fn is_empty(&self) -> bool {
        self.longest == 0
    }

    /// How many patterns were given (empty ones included).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The indices of the patterns of two bytes or more that start with `key`.
    fn starting_with(&self, key: u16) -> impl Iterator<Item = usize> + '_ {
        run_of(&self.prefixes, &self.indices, key)
    }

    /// Calls `found(at, index)` for each occurrence of a pattern in `input`, by start
    /// position (`index` into the patterns as given), until it returns `Break`.
    fn occurrences(
        &self,
        input: &[u8],
        mut found: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if self.is_empty() {
            return ControlFlow::Continue(());
        }
        for at in 0..input.len() {
            let a = input[at];
            if bit(&*self.single, usize::from(a)) {
                for i in run_of(&self.singles, &self.single_indices, a) {
                    found(at, i)?;
                }
            }
            let Some(&b) = input.get(at + 1) else {
                break;
            };
            let key = pair(a, b);
            if !bit(&self.pairs, usize::from(key)) {
                continue;
            }
            for i in self.starting_with(key) {
                if input[at..].starts_with(&self.list[i]) {
                    found(at, i)?;
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Marks in `covered` (as long as `input`) every byte of `input` inside an
    /// occurrence of a pattern, and calls `found` with the index of the pattern of each
    /// occurrence (once per occurrence, in input order).
    pub fn cover(&self, input: &[u8], covered: &mut [bool], mut found: impl FnMut(usize)) {
        let _ = self.occurrences(input, |at, i| {
            covered[at..at + self.list[i].len()].fill(true);
            found(i);
            ControlFlow::Continue(())
        });
    }

    /// Whether any pattern occurs in `input`.
    pub fn occurs_in(&self, input: &[u8]) -> bool {
        self.occurrences(input, |_, _| ControlFlow::Break(()))
            .is_break()
    }

    /// Where the held-back tail of `input` starts: the earliest position whose suffix is
    /// a proper prefix of a pattern, or `input.len()`.
    pub fn hold_from(&self, input: &[u8]) -> usize {
        let earliest = input.len().saturating_sub(self.longest.saturating_sub(1));
        (earliest..input.len())
            .find(|&at| match input[at..] {
                [only] => bit(&*self.first, usize::from(only)),
                [a, b, ..] => {
                    let tail = &input[at..];
                    let key = pair(a, b);
                    bit(&self.pairs, usize::from(key))
                        && self.starting_with(key).any(|i| {
                            let pattern = &self.list[i];
                            pattern.len() > tail.len() && pattern.starts_with(tail)
                        })
                }
                [] => false,
            })
            .unwrap_or(input.len())
    }
}

/// The bytes of a stream received but not yet released, with their coverage.
#[derive(Default)]
pub struct Pending {
    /// Bytes received but not yet released: they could still start a pattern.
    bytes: Zeroizing<Vec<u8>>,
    /// For each of them, whether an occurrence found so far covers it.
    covered: Vec<bool>,
}

impl Pending {
    /// Nothing held.
    pub fn new() -> Pending {
        Pending::default()
    }

    /// Adds `chunk`, covers what `patterns` find (calling `found` as
    /// [`PatternSet::cover`] does; an occurrence that lies wholly in bytes held from an
    /// earlier chunk is reported again) and returns how many bytes are final now.
    pub fn push(&mut self, patterns: &PatternSet, chunk: &[u8], found: impl FnMut(usize)) -> usize {
        let needed = self.bytes.len() + chunk.len();
        if needed > self.bytes.capacity() {
            // Growing in place would free the old block, held-back secret bytes and all,
            // without zeroing it: move to a new buffer and let the old one be zeroed.
            let mut grown = Zeroizing::new(Vec::with_capacity(needed.max(2 * self.bytes.len())));
            grown.extend_from_slice(&self.bytes);
            self.bytes = grown;
        }
        self.bytes.extend_from_slice(chunk);
        self.covered.resize(self.bytes.len(), false);
        patterns.cover(&self.bytes, &mut self.covered, found);
        patterns.hold_from(&self.bytes)
    }

    /// Whether `chunk`, arriving now, is final as it is: nothing is held, no pattern
    /// occurs in it and none could start in its tail. Such a chunk can be passed on
    /// unchanged without going through [`Pending::push`] (no copy).
    pub fn passes(&self, patterns: &PatternSet, chunk: &[u8]) -> bool {
        self.is_empty()
            && (patterns.is_empty()
                || (patterns.hold_from(chunk) == chunk.len() && !patterns.occurs_in(chunk)))
    }

    /// How many bytes are held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Hands the first `end` bytes and their coverage to `release` (which may rewrite
    /// the bytes, e.g. star the covered ones) and drops them.
    pub fn release<R>(&mut self, end: usize, release: impl FnOnce(&mut [u8], &[bool]) -> R) -> R {
        let out = release(&mut self.bytes[..end], &self.covered[..end]);
        self.bytes.drain(..end);
        self.covered.drain(..end);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> PatternSet {
        PatternSet::new(
            patterns
                .iter()
                .map(|p| Zeroizing::new(p.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// The covered bytes of `input` as `#`, and the patterns found in order.
    fn covered(set: &PatternSet, input: &str) -> (String, Vec<usize>) {
        let mut covered = vec![false; input.len()];
        let mut found = Vec::new();
        set.cover(input.as_bytes(), &mut covered, |i| found.push(i));
        let marked = input
            .chars()
            .zip(&covered)
            .map(|(c, &hit)| if hit { '#' } else { c })
            .collect();
        (marked, found)
    }

    #[test]
    fn every_occurrence_overlapping_or_not_is_covered_and_reported() {
        let s = set(&["aba", "b", "xyz", ""]);
        assert_eq!(
            covered(&s, "ababa-xyzxyz-c"),
            ("#####-######-c".to_owned(), vec![0, 1, 0, 1, 2, 2])
        );
        assert_eq!(s.len(), 4);
        assert!(!s.is_empty());
        assert!(s.occurs_in(b"--xyz") && s.occurs_in(b"b") && !s.occurs_in(b"axyaz"));
        assert!(set(&["", ""]).is_empty());
    }

    #[test]
    fn equal_patterns_are_each_reported_one_byte_ones_too() {
        let s = set(&["x", "x", "xy", "xy"]);
        assert_eq!(
            covered(&s, "x-xy"),
            ("#-##".to_owned(), vec![0, 1, 0, 1, 2, 3])
        );
    }

    #[test]
    fn a_chunk_passes_only_when_nothing_is_held_and_nothing_could_match() {
        let s = set(&["secret"]);
        let mut pending = Pending::new();
        assert!(pending.passes(&s, b"plain text"));
        assert!(!pending.passes(&s, b"a secret here"));
        assert!(!pending.passes(&s, b"ends with sec"));
        assert_eq!(pending.push(&s, b"ends with sec", |_| {}), 10);
        assert!(!pending.passes(&s, b"plain text"), "bytes are held");
        assert!(Pending::new().passes(&set(&[]), b"secret"));
    }

    #[test]
    fn only_a_possible_start_is_held_back() {
        let s = set(&["secret", "sea"]);
        assert_eq!(s.hold_from(b"hello se"), 6);
        assert_eq!(s.hold_from(b"hello sec"), 6);
        assert_eq!(s.hold_from(b"hello s"), 6);
        assert_eq!(s.hold_from(b"hello"), 5);
        // A whole pattern at the end is not a proper prefix: nothing held.
        assert_eq!(s.hold_from(b"a sea"), 5);
    }

    #[test]
    fn a_stream_split_anywhere_covers_what_the_whole_covers() {
        let s = set(&["token123", "oken", "3t", "k"]);
        let input = "xtoken123token123tokentoken1233txk";
        let (whole, _) = covered(&s, input);
        for split in 0..=input.len() {
            for split2 in split..=input.len() {
                let mut pending = Pending::new();
                let mut out = String::new();
                for chunk in [&input[..split], &input[split..split2], &input[split2..]] {
                    let ready = pending.push(&s, chunk.as_bytes(), |_| {});
                    pending.release(ready, |bytes, covered| {
                        out.extend(bytes.iter().zip(covered).map(|(&b, &hit)| {
                            if hit {
                                '#'
                            } else {
                                char::from(b)
                            }
                        }))
                    });
                }
                let rest = pending.len();
                pending.release(rest, |bytes, covered| {
                    out.extend(
                        bytes
                            .iter()
                            .zip(covered)
                            .map(|(&b, &hit)| if hit { '#' } else { char::from(b) }),
                    )
                });
                assert!(pending.is_empty());
                assert_eq!(out, whole, "split at {split} and {split2}");
            }
        }
    }

    #[test]
    fn debug_never_shows_a_pattern() {
        assert_eq!(
            format!("{:?}", set(&["hunter2"])),
            "PatternSet { patterns: 1 }"
        );
    }
}
