//! Limits that keep a hostile file from holding the process that parses it. A job file
//! may come from the repository being built, and the agent parses it as root, outside
//! every runner's limits, before anything else happens:
//!
//! - [`read_text`] reads at most the caller's limit and refuses a longer file, so that a
//!   path like `/dev/zero` or a multi-gigabyte file ends in an error, not in the agent
//!   growing until the host kills something.
//! - [`too_deep`] finds more than [`MAX_FLOW_NESTING`] `[` or `{` open at once, before
//!   the text reaches the YAML scanner, whose time grows with the square of the flow
//!   nesting (libyaml re-checks every open level at each token: 200 KB of `[` took 36 s).
//!   The count is deliberately naive: it does not skip quoted text or comments, and a
//!   closing bracket never brings it below zero, so text can only make it higher, never
//!   hide a real nesting. serde_yaml refuses nesting deeper than 128 anyway, so a file it
//!   would accept is refused only if its strings hold more than 256 unclosed brackets.
//! - [`check_expansion`] walks the document as serde_yaml presents it, with every alias
//!   (`*name`) replayed, and stops once its values add up to more than the caller allows
//!   ([`expansion_limit`]). serde_yaml only caps the number of alias jumps, so a 1 MiB
//!   job file naming a 1 MiB anchor hundreds of times grew the agent by hundreds of MiB
//!   before any check of ours ran. The walk borrows each value from the parser's events
//!   and keeps nothing, so it costs at most the limit in time and nothing in memory.

use std::cell::Cell;
use std::fmt;
use std::path::Path;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use super::{invalid, YamlError};

/// How many `[` or `{` may be open at once in a file (see the module header).
pub const MAX_FLOW_NESTING: usize = 256;

/// The limit [`super::parse_file`] reads a file up to (a standalone policy can hold a very large
/// allow-list).
pub const MAX_POLICY_BYTES: u64 = 64 << 20;

/// Reads the text of the file at `path`, refusing one longer than `max_bytes` (without
/// reading past the limit) or one that is not UTF-8 (with the place of the first bad
/// byte).
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String, YamlError> {
    use std::io::Read;

    let read_error = |source| YamlError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max_bytes {
        return Err(invalid(
            path,
            None,
            format!("the file is larger than {}", size_text(max_bytes)),
        ));
    }
    String::from_utf8(bytes).map_err(|err| {
        let good = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        // Valid up to there, so this cannot fail.
        let before = std::str::from_utf8(good).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        invalid(
            path,
            Some((line, column)),
            "the file is not UTF-8 text".to_owned(),
        )
    })
}

/// `bytes` as the largest whole binary unit (`1 MiB`), or in bytes.
fn size_text(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// The place of the first `[` or `{` beyond [`MAX_FLOW_NESTING`] open ones, if any.
pub(super) fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut open = 0usize;
    for (line_index, line) in text.lines().enumerate() {
        for (column_index, c) in line.chars().enumerate() {
            match c {
                '[' | '{' => {
                    open += 1;
                    if open > MAX_FLOW_NESTING {
                        return Some((line_index + 1, column_index + 1));
                    }
                }
                ']' | '}' => open = open.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}

/// What each value or collection is charged on top of its text: about what one costs
/// in memory once deserialized.
const NODE_CHARGE: usize = 16;

/// The expansion allowed for files whose caller names none: room for large allow-lists
/// shared between environments by anchors.
pub const DEFAULT_EXPANSION: usize = 64 << 20;

/// What the values of `text` may add up to once aliases are replayed: `floor`, or twenty
/// times the text when that is more. Without aliases a document never comes near the
/// latter: every value takes at least two characters to write, and is charged its
/// characters plus [`NODE_CHARGE`].
pub(super) fn expansion_limit(text: &str, floor: usize) -> usize {
    floor.max(text.len().saturating_mul(20))
}

/// Fails, at the value where the limit is passed, once the document's values, aliases
/// replayed, add up to more than [`expansion_limit`]. Syntax errors come out as the
/// real parse would give them.
pub(super) fn check_expansion(text: &str, floor: usize) -> Result<(), serde_yaml::Error> {
    let limit = expansion_limit(text, floor);
    let left = Cell::new(limit);
    Walk { left: &left, limit }.deserialize(serde_yaml::Deserializer::from_str(text))
}

/// Visits any YAML value, charging what it holds against `left`.
#[derive(Clone, Copy)]
struct Walk<'a> {
    left: &'a Cell<usize>,
    limit: usize,
}

impl Walk<'_> {
    /// Charges a value of `bytes` characters.
    fn charge<E: de::Error>(self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes + NODE_CHARGE) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(format!(
                "aliases (`*name`) repeat the file's values beyond {} MiB",
                self.limit >> 20
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.charge(value.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.charge(0)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.charge(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.charge(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    // A tagged value (`!tag value`).
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}
