//! Strict YAML loading with precise error locations.
//!
//! Every user-facing file of the project (job file, host config, standalone policy) is
//! parsed through [`parse_str`] / [`parse_file`], so that an error always reads
//! `FILE:LINE:COLUMN: what was wrong`. Validation that needs the value's position is done
//! inside `Deserialize` impls (`try_from` on raw structs) rather than after parsing: only
//! then can serde_yaml attach the line and column of the offending node.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

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

/// serde_yaml appends " at line L column C" to its messages; the location is reported in
/// front instead, so it is removed from the text.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) if message[index..].contains(" column ") => message[..index].to_owned(),
        _ => message.to_owned(),
    }
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
    fn empty_file_is_an_error() {
        let err = parse_str::<Sample>(Path::new("f.yaml"), "\n\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "f.yaml: the file is empty");
    }
}
