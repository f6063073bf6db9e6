//! The one error type of the configuration module.
//!
//! Invariant: whenever the offending place is known, the message Displays on one line as
//! `FILE:LINE:COLUMN: what was wrong, what was expected`, exactly like the strict loader
//! of `egress_proxy::yaml`, so that editors and terminals can jump to it. The CLI prints
//! the error as is and exits 64 (EX_USAGE-style "bad input", see sysexits(3)).
//!
//! There is one variant per failing operation: reading, parsing (including every rule
//! that concerns a single node), checks across several nodes of one file, and resolving a
//! job against a host config.

use std::path::{Path, PathBuf};

use egress_proxy::yaml::{InvalidFile, YamlError};

/// A job file or host config could not be read, was invalid, or does not fit together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read: {source}", path = path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid YAML or breaks a rule about one of its nodes.
    #[error("{0}")]
    Parse(InvalidFile),
    /// The file parsed, but two of its settings contradict each other.
    #[error("{0}")]
    Validate(InvalidFile),
    /// The job file does not fit the host config (e.g. it names an unknown environment).
    #[error("{0}")]
    Resolve(InvalidFile),
}

impl ConfigError {
    /// Where the error is, when known: file, 1-based line, 1-based column.
    pub fn location(&self) -> (&Path, Option<usize>, Option<usize>) {
        match self {
            ConfigError::Read { path, .. } => (path, None, None),
            ConfigError::Parse(f) | ConfigError::Validate(f) | ConfigError::Resolve(f) => {
                (&f.path, f.line, f.column)
            }
        }
    }

    /// The message without the location prefix.
    pub fn message(&self) -> String {
        match self {
            ConfigError::Read { source, .. } => format!("cannot read: {source}"),
            ConfigError::Parse(f) | ConfigError::Validate(f) | ConfigError::Resolve(f) => {
                f.message.clone()
            }
        }
    }
}

impl From<YamlError> for ConfigError {
    fn from(err: YamlError) -> Self {
        match err {
            YamlError::Read { path, source } => ConfigError::Read { path, source },
            YamlError::Invalid(file) => ConfigError::Parse(file),
        }
    }
}

/// Reads a whole user file of at most `max_bytes` (see `egress_proxy::yaml::read_text`):
/// failing to read is [`ConfigError::Read`], a longer file or one that is not UTF-8
/// [`ConfigError::Parse`].
pub(crate) fn read_file(path: &Path, max_bytes: u64) -> Result<String, ConfigError> {
    Ok(egress_proxy::yaml::read_text(path, max_bytes)?)
}

/// Builds an [`InvalidFile`] at an optional `(line, column)`.
pub(crate) fn invalid_at(
    path: &Path,
    at: Option<(usize, usize)>,
    message: impl Into<String>,
) -> InvalidFile {
    InvalidFile {
        path: path.to_owned(),
        line: at.map(|(line, _)| line),
        column: at.map(|(_, column)| column),
        message: message.into(),
    }
}
