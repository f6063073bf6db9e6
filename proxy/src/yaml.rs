//! Strict YAML loading with precise error locations.
//!
//! Every user-facing file of the project (job file, host config, standalone policy) is
//! parsed through [`parse_str`] / [`parse_file`], so that an error always reads
//! `FILE:LINE:COLUMN: what was wrong`. Validation that needs the value's position is done
//! inside `Deserialize` impls (`try_from` on raw structs) rather than after parsing: only
//! then can serde_yaml attach the line and column of the offending node; [`checked_map`]
//! is the shared way of doing so for a mapping.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{self, value::MapAccessDeserializer, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A user file could not be read or did not have the expected form.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The file could not be read at all.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but its content is invalid.
    #[error("{0}")]
    Invalid(InvalidFile),
}

/// An invalid file: where, and what was expected.
#[derive(Debug)]
pub struct InvalidFile {
    /// The file (as given by the user).
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What was wrong, without the location.
    pub message: String,
}

impl fmt::Display for InvalidFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(
                    f,
                    "{}:{line}:{column}: {}",
                    self.path.display(),
                    self.message
                )
            }
            _ => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for InvalidFile {}

/// Parses `text` (read from `path`, which is used only in messages) into `T`.
pub fn parse_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, YamlError> {
    if text.trim().is_empty() {
        return Err(YamlError::Invalid(InvalidFile {
            path: path.to_owned(),
            line: None,
            column: None,
            message: "the file is empty".to_owned(),
        }));
    }
    serde_yaml::from_str(text).map_err(|err| {
        let location = err.location();
        YamlError::Invalid(InvalidFile {
            path: path.to_owned(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message: strip_location(&err.to_string()),
        })
    })
}

/// Reads and parses the file at `path`.
pub fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<T, YamlError> {
    let text = std::fs::read_to_string(path).map_err(|source| YamlError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_str(path, &text)
}

struct CheckedVisitor<R, T>(&'static str, PhantomData<(R, T)>);

impl<'de, R, T> Visitor<'de> for CheckedVisitor<R, T>
where
    R: Deserialize<'de>,
    T: TryFrom<R, Error = String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = R::deserialize(MapAccessDeserializer::new(map))?;
        T::try_from(raw).map_err(de::Error::custom)
    }
}

/// Deserializes a mapping into `R`, then converts it to `T`; a conversion error is
/// reported at the mapping's first key.
///
/// The conversion runs inside the mapping's visitor rather than through
/// `#[serde(try_from)]`: serde_yaml stamps an error with the mark of the node whose
/// `deserialize_*` call raised it, and a `try_from` error is raised after that call has
/// returned, so it would point at the enclosing node (for a list item, the list's start).
pub fn checked_map<'de, D, R, T>(d: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
    T: TryFrom<R, Error = String>,
{
    d.deserialize_map(CheckedVisitor::<R, T>(expecting, PhantomData))
}

/// serde_yaml appends " at line L column C" to its messages; the location is reported in
/// front instead, so it is removed from the text.
/// Syntax errors carry it in the middle too ("... at line 4 column 1, while scanning ..."):
/// every " at line L column C" is removed.
fn strip_location(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(index) = rest.find(" at line ") {
        out.push_str(&rest[..index]);
        let after = &rest[index + " at line ".len()..];
        let digits = |t: &str| t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line_len = digits(after);
        let tail = &after[line_len..];
        match tail.strip_prefix(" column ") {
            Some(col) if line_len > 0 && digits(col) > 0 => rest = &col[digits(col)..],
            _ => {
                // Not a location after all: keep the text and go on after it.
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // the fields exist to be parsed
    struct Sample {
        name: String,
        count: u32,
    }

    #[test]
    fn unknown_key_reports_line_and_column() {
        let err = parse_str::<Sample>(Path::new("f.yaml"), "name: a\ncount: 1\nextra: 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.yaml:3:1: "), "{err}");
        assert!(err.contains("unknown field `extra`"), "{err}");
        assert!(!err.contains(" at line "), "{err}");
    }

    #[test]
    fn locations_inside_messages_are_removed_too() {
        assert_eq!(
            strip_location(
                "found end of stream at line 4 column 1, while scanning a quoted scalar"
            ),
            "found end of stream, while scanning a quoted scalar"
        );
        assert_eq!(
            strip_location("unknown field `x` at line 3 column 1"),
            "unknown field `x`"
        );
        assert_eq!(strip_location("said at line one"), "said at line one");
    }

    #[test]
    fn empty_file_is_an_error() {
        let err = parse_str::<Sample>(Path::new("f.yaml"), "\n\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "f.yaml: the file is empty");
    }
}
