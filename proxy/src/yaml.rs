//! Strict YAML loading with precise error locations.
//!
//! Every user-facing file of the project (job file, host config, standalone policy) is
//! parsed through [`parse_str`] / [`parse_file`], so that an error always reads
//! `FILE:LINE:COLUMN: what was wrong`. Validation that needs the value's position is done
//! inside `Deserialize` impls (`try_from` on raw structs) rather than after parsing: only
//! then can serde_yaml attach the line and column of the offending node; [`checked_map`]
//! is the shared way of doing so for a mapping.
//!
//! A file is read and scanned within the limits of [`limits`]: at most a size the caller
//! names, at most [`MAX_FLOW_NESTING`] open `[` or `{`, and values that aliases cannot
//! multiply beyond twice the text; a hostile job file ends in an error, not in the agent
//! spending the host's memory or minutes of CPU.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{self, value::MapAccessDeserializer, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

mod limits;

pub use limits::{read_text, DEFAULT_EXPANSION, MAX_FLOW_NESTING, MAX_POLICY_BYTES};

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

fn invalid(path: &Path, at: Option<(usize, usize)>, message: String) -> YamlError {
    YamlError::Invalid(InvalidFile {
        path: path.to_owned(),
        line: at.map(|(line, _)| line),
        column: at.map(|(_, column)| column),
        message,
    })
}

/// Parses `text` (read from `path`, which is used only in messages) into `T`, with the
/// default limit on what aliases may expand it to ([`DEFAULT_EXPANSION`]).
pub fn parse_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, YamlError> {
    parse_str_within(path, text, DEFAULT_EXPANSION)
}

/// [`parse_str`] for a file whose values, aliases replayed, may add up to `expansion`
/// bytes (or twenty times the text, when that is more; see [`limits`]).
pub fn parse_str_within<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    expansion: usize,
) -> Result<T, YamlError> {
    if text.trim().is_empty() {
        return Err(invalid(path, None, "the file is empty".to_owned()));
    }
    if let Some(at) = limits::too_deep(text) {
        return Err(invalid(
            path,
            Some(at),
            format!("more than {MAX_FLOW_NESTING} `[` or `{{` open at once (nested too deep)"),
        ));
    }
    limits::check_expansion(text, expansion).map_err(|err| from_serde(path, err))?;
    serde_yaml::from_str(text).map_err(|err| from_serde(path, err))
}

/// A serde_yaml error as an [`InvalidFile`] at its place in `path`.
fn from_serde(path: &Path, err: serde_yaml::Error) -> YamlError {
    let location = err.location();
    YamlError::Invalid(InvalidFile {
        path: path.to_owned(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message: strip_location(&err.to_string()),
    })
}

/// Reads (up to [`MAX_POLICY_BYTES`]) and parses the file at `path`.
pub fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<T, YamlError> {
    parse_str(path, &read_text(path, MAX_POLICY_BYTES)?)
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
    fn nesting_beyond_the_limit_is_refused_at_the_bracket_quickly() {
        let deep = format!(
            "name: a\ncount: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let started = std::time::Instant::now();
        let err = parse_str::<Sample>(Path::new("f.yaml"), &deep)
            .unwrap_err()
            .to_string();
        // Column of the 257th `[`: "count: " is 7 characters.
        assert_eq!(
            err,
            format!(
                "f.yaml:2:{}: more than 256 `[` or `{{` open at once (nested too deep)",
                7 + MAX_FLOW_NESTING + 1
            )
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn closing_brackets_cannot_hide_an_opening_one() {
        let text = format!(
            "# {}\nname: a\ncount: {}\n",
            "]".repeat(10_000),
            "{".repeat(MAX_FLOW_NESTING + 1)
        );
        let err = parse_str::<Sample>(Path::new("f.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.yaml:3:"), "{err}");
        assert!(err.contains("nested too deep"), "{err}");
    }

    #[test]
    fn nesting_within_the_limit_reaches_the_parser() {
        // Brackets in text count too, but a few hundred are allowed.
        let text = format!("name: \"{}\"\ncount: 1\n", "[".repeat(MAX_FLOW_NESTING));
        let sample = parse_str::<Sample>(Path::new("f.yaml"), &text).unwrap();
        assert_eq!(sample.name.len(), MAX_FLOW_NESTING);
    }

    /// A 1 MiB anchor named hundreds of times grew the agent by hundreds of MiB (found by
    /// an attack run); now the walk stops at the limit.
    #[test]
    fn aliases_cannot_multiply_a_file_beyond_its_limit() {
        let value = "x".repeat(100 << 10);
        let aliases = vec!["*b"; 300].join(", ");
        let text = format!("name: &b \"{value}\"\ncount: 1\nmore: [{aliases}]\n");
        let expansion = 8 << 20;
        let err = parse_str_within::<serde_yaml::Value>(Path::new("f.yaml"), &text, expansion)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.yaml:1:")
                && err.ends_with(": aliases (`*name`) repeat the file's values beyond 8 MiB"),
            "{err}"
        );
        // Well within: what anchors are for.
        let aliases = vec!["*b"; 40].join(", ");
        let text = format!("name: &b \"{value}\"\ncount: 1\nmore: [{aliases}]\n");
        parse_str_within::<serde_yaml::Value>(Path::new("f.yaml"), &text, expansion).unwrap();
        // A big file without aliases is never near its limit: every value is charged
        // its characters and 16 bytes, and takes at least two characters to write.
        let text = format!("more: [{}]\n", vec!["1"; 500_000].join(","));
        parse_str_within::<serde_yaml::Value>(Path::new("f.yaml"), &text, 0).unwrap();
    }

    #[test]
    fn syntax_errors_read_as_before_the_walk() {
        let err = parse_str::<Sample>(Path::new("f.yaml"), "name: a\n count: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.yaml:2:"), "{err}");
        assert!(err.contains("mapping values are not allowed"), "{err}");
    }

    #[test]
    fn a_file_longer_than_the_limit_is_refused_without_reading_it_all() {
        // /dev/zero never ends: only a bounded read can return.
        let err = read_text(Path::new("/dev/zero"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/dev/zero: the file is larger than 1 MiB");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, "name: a\ncount: 1\n").unwrap();
        // 17 bytes: exactly the limit is read, one more is refused.
        assert_eq!(read_text(&path, 17).unwrap(), "name: a\ncount: 1\n");
        assert!(read_text(&path, 16)
            .unwrap_err()
            .to_string()
            .ends_with("the file is larger than 16 bytes"));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, b"name: a\ncount: \xff1\n").unwrap();
        let err = read_text(&path, 1 << 20).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{}:2:8: the file is not UTF-8 text", path.display())
        );
    }

    #[test]
    fn empty_file_is_an_error() {
        let err = parse_str::<Sample>(Path::new("f.yaml"), "\n\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "f.yaml: the file is empty");
    }
}
