//! Errors of the secret store: one variant per failing operation, each naming the file
//! (or the environment and secret) and what went wrong, so an operator can act on it
//! without reading the code.
//!
//! Messages never contain a secret value: only names, paths, sizes and modes.

use std::io;
use std::path::PathBuf;

/// What can go wrong in the secret store.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment name cannot name a store directory.
    #[error("{reason}")]
    InvalidEnvironment {
        /// The name given.
        env: String,
        /// Why it is refused.
        reason: String,
    },
    /// The secret name is not `[A-Z_][A-Z0-9_]*`.
    #[error("{reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// An empty value: it would deliver nothing and could not be masked.
    #[error("the value of {env}/{name} is empty; a secret needs at least one byte")]
    EmptyValue {
        /// Environment.
        env: String,
        /// Secret name.
        name: String,
    },
    /// The value exceeds [`super::MAX_VALUE_LEN`].
    #[error("the value of {env}/{name} is larger than {max} bytes")]
    TooLarge {
        /// Environment.
        env: String,
        /// Secret name.
        name: String,
        /// The limit.
        max: usize,
    },
    /// `get` of a secret that was never set.
    #[error("secret {env}/{name} is not set (no file {})", path.display())]
    NotSet {
        /// Environment.
        env: String,
        /// Secret name.
        name: String,
        /// Where it would be.
        path: PathBuf,
    },
    /// A store directory could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A store directory or file could not be inspected.
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A store directory or file is open to others, owned by someone else, or not of
    /// the expected type: its content cannot be trusted or is exposed.
    #[error("{} {problem}; the secret store must be {expected}", path.display())]
    InsecurePermissions {
        /// The path.
        path: PathBuf,
        /// What is wrong (mode, owner, type).
        problem: String,
        /// What it must be.
        expected: &'static str,
    },
    /// Values of an environment exist but its key file does not.
    #[error(
        "the key of environment {env} is missing ({}); the values stored for it cannot be \
         decrypted (restore the key file from backup, or remove the values and set them again)",
        path.display()
    )]
    MissingKey {
        /// Environment.
        env: String,
        /// Where the key should be.
        path: PathBuf,
    },
    /// The key file could not be read.
    #[error("cannot read key file {}: {source}", path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The key file is not a key file of this format.
    #[error("key file {} is corrupted: {reason}", path.display())]
    CorruptKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The system random generator failed (key or nonce generation).
    #[error("the system random generator failed while {what}")]
    Random {
        /// What was being generated.
        what: &'static str,
    },
    /// A new key file could not be written.
    #[error("cannot write key file {}: {source}", path.display())]
    WriteKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A value file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadValue {
        /// The value file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A value file is not in the store's format (bad magic, unknown version, truncated).
    #[error("secret file {} is corrupted: {reason}", path.display())]
    CorruptValue {
        /// The value file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Authentication failed: the wrong key, or the file was altered or moved from
    /// another environment or name (the AAD binds it to both).
    #[error(
        "the value of {env}/{name} ({}) cannot be decrypted with the key of environment {env} \
         ({}): wrong key or the file was altered",
        path.display(),
        key_path.display()
    )]
    Decrypt {
        /// Environment.
        env: String,
        /// Secret name.
        name: String,
        /// The value file.
        path: PathBuf,
        /// The key file used.
        key_path: PathBuf,
    },
    /// Sealing failed (ring reports no detail; only an oversized input can cause it).
    #[error("cannot encrypt the value of {env}/{name}")]
    Encrypt {
        /// Environment.
        env: String,
        /// Secret name.
        name: String,
    },
    /// A value file could not be written; the previous value, if any, is unchanged.
    #[error("cannot write {}: {source} (the previous value, if any, is unchanged)", path.display())]
    WriteValue {
        /// The value file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A value file could not be removed.
    #[error("cannot remove {}: {source}", path.display())]
    RemoveValue {
        /// The value file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A store directory could not be listed.
    #[error("cannot list {}: {source}", path.display())]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The value was asked for as text but is not UTF-8.
    #[error("the value of {name} is not UTF-8 text")]
    NotUtf8 {
        /// Secret name.
        name: String,
    },
}

impl SecretError {
    /// Whether the error is the caller's input (exit 64) rather than a failed
    /// operation (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SecretError::InvalidEnvironment { .. }
                | SecretError::InvalidName { .. }
                | SecretError::EmptyValue { .. }
                | SecretError::TooLarge { .. }
                | SecretError::NotSet { .. }
        )
    }
}
