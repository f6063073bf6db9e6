//! The secret store: values of each environment's secrets, encrypted at rest under a key
//! of that environment, readable by root only (DESIGN.md 7, THREATS.md "Credentials").
//!
//! Layout under `state_dir` (every directory 0700, every file 0600, owned by the user
//! running runner-agent, which the CLI requires to be root):
//! ```text
//! secrets/
//!   keys/<env>.key             one random 256-bit key per environment (format.rs)
//!   values/<env>/<NAME>.secret one value: nonce + ChaCha20-Poly1305 ciphertext (format.rs)
//! ```
//! Keys and values sit in separate trees so that no environment name (`keys` is a valid
//! one) can collide with the key directory, and so a backup or a copy of `values/`
//! alone reveals nothing.
//!
//! Invariants:
//! - Values never touch the disk in plaintext: they are sealed in memory and written
//!   atomically (`files`), so a crash or a failed `set` leaves the previous value intact.
//! - A value file decrypts only at its own place: the AAD binds it to its environment
//!   and name, and each environment has its own key (`crypto`).
//! - An environment's key is created by its first `set` and never replaced: if values
//!   exist but the key is gone, `set` refuses rather than mint a key that would leave
//!   the old values undecryptable without anyone noticing. `remove` keeps the key, so
//!   fingerprints stay comparable when a secret is set again.
//! - Plaintext in memory lives in zeroed-on-drop buffers (`Zeroizing`): the decrypted
//!   value, the decryption buffer, key bytes, and the sealing buffer.
//! - Names are validated before they become paths: environment names as in the host
//!   config (`[a-z0-9][a-z0-9_-]{0,62}`), secret names `[A-Z_][A-Z0-9_]*`, so no `/`,
//!   `..` or leading `.` (temporaries) can appear. Listings skip any entry whose name
//!   the store could not have written.
//! - Errors name the file and what is wrong (`error`), and never contain a value.
//!
//! `cli` is the `runner-agent secrets` command on top of this.

pub mod cli;
mod crypto;
mod error;
mod files;
mod format;

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use zeroize::Zeroizing;

pub use crypto::FINGERPRINT_PREFIX;
pub use error::SecretError;

use crypto::EnvKeys;

/// Largest value accepted, in bytes (1 MiB: room for certificates and kubeconfigs).
pub const MAX_VALUE_LEN: usize = 1 << 20;

const KEY_SUFFIX: &str = ".key";
const VALUE_SUFFIX: &str = ".secret";

pub use crate::config::check_secret_name;

fn valid_env(env: &str) -> Result<(), SecretError> {
    crate::config::check_environment_name(env).map_err(|reason| SecretError::InvalidEnvironment {
        env: env.to_owned(),
        reason,
    })
}

fn valid_name(name: &str) -> Result<(), SecretError> {
    check_secret_name(name).map_err(|reason| SecretError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// A decrypted secret. The value is zeroed when this is dropped, and `Debug` does not
/// show it.
pub struct Secret {
    /// The secret's name.
    pub name: String,
    /// Its fingerprint in its environment (`hmac-sha256:` + 16 hex digits).
    pub fingerprint: String,
    value: Zeroizing<Vec<u8>>,
}

impl Secret {
    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The value as text, for delivery as an environment variable or header.
    pub fn value_str(&self) -> Result<&str, SecretError> {
        std::str::from_utf8(&self.value).map_err(|_| SecretError::NotUtf8 {
            name: self.name.clone(),
        })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// One stored secret as `list` sees it: never its value.
#[derive(Debug)]
pub struct SecretInfo {
    /// Environment.
    pub env: String,
    /// Secret name.
    pub name: String,
    /// Its fingerprint, or why it cannot be read (corrupted file, wrong key...): one
    /// bad file does not hide the others.
    pub fingerprint: Result<String, SecretError>,
}

/// The store under one `state_dir` (module docs).
pub struct SecretStore {
    root: PathBuf,
    rng: SystemRandom,
}

impl SecretStore {
    /// Opens the store under `state_dir`. Creates nothing (the first `set` does), but
    /// refuses store directories that exist and are not private.
    pub fn open(state_dir: &Path) -> Result<SecretStore, SecretError> {
        let store = SecretStore {
            root: state_dir.join("secrets"),
            rng: SystemRandom::new(),
        };
        for dir in [store.root.clone(), store.keys_dir(), store.values_root()] {
            files::check_dir(&dir)?;
        }
        Ok(store)
    }

    fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    fn values_root(&self) -> PathBuf {
        self.root.join("values")
    }

    fn values_dir(&self, env: &str) -> PathBuf {
        self.values_root().join(env)
    }

    /// Where environment `env`'s key lives.
    pub fn key_path(&self, env: &str) -> PathBuf {
        self.keys_dir().join(format!("{env}{KEY_SUFFIX}"))
    }

    /// Where the value of `env`/`name` lives.
    pub fn value_path(&self, env: &str, name: &str) -> PathBuf {
        self.values_dir(env).join(format!("{name}{VALUE_SUFFIX}"))
    }

    /// The keys of `env`, or `None` when it has no key file.
    fn load_keys(&self, env: &str) -> Result<Option<EnvKeys>, SecretError> {
        let path = self.key_path(env);
        let Some(bytes) =
            files::read_private(&path, format::KEY_FILE_LEN, |source| SecretError::ReadKey {
                path: path.clone(),
                source,
            })?
        else {
            return Ok(None);
        };
        let key = format::decode_key(&bytes).map_err(|reason| SecretError::CorruptKey {
            path: path.clone(),
            reason,
        })?;
        Ok(Some(EnvKeys::derive(&key)))
    }

    /// The keys of `env`, created if it has none yet (and no values that would need
    /// the lost one).
    fn keys_for_write(&self, env: &str) -> Result<EnvKeys, SecretError> {
        files::ensure_dir(&self.root)?;
        files::ensure_dir(&self.keys_dir())?;
        if let Some(keys) = self.load_keys(env)? {
            return Ok(keys);
        }
        let path = self.key_path(env);
        if !files::names_with_suffix(&self.values_dir(env), VALUE_SUFFIX)?.is_empty() {
            return Err(SecretError::MissingKey {
                env: env.to_owned(),
                path,
            });
        }
        let key = crypto::generate_key(&self.rng).ok_or(SecretError::Random {
            what: "generating an environment key",
        })?;
        files::create_exclusive(&path, &format::encode_key(&key)).map_err(|source| {
            SecretError::WriteKey {
                path: path.clone(),
                source,
            }
        })?;
        // Whether this call or a concurrent one created it, the key on disk is the one.
        self.load_keys(env)?.ok_or(SecretError::MissingKey {
            env: env.to_owned(),
            path,
        })
    }

    /// Stores `value` as `env`/`name`, replacing any previous value atomically.
    /// Returns the value's fingerprint.
    pub fn set(&self, env: &str, name: &str, value: &[u8]) -> Result<String, SecretError> {
        valid_env(env)?;
        valid_name(name)?;
        if value.is_empty() {
            return Err(SecretError::EmptyValue {
                env: env.to_owned(),
                name: name.to_owned(),
            });
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(SecretError::TooLarge {
                env: env.to_owned(),
                name: name.to_owned(),
                max: MAX_VALUE_LEN,
            });
        }
        let keys = self.keys_for_write(env)?;
        files::ensure_dir(&self.values_root())?;
        files::ensure_dir(&self.values_dir(env))?;
        let (nonce, sealed) = keys
            .seal(&self.rng, &crypto::aad(env, name), value)
            .map_err(|err| match err {
                crypto::SealError::Random => SecretError::Random {
                    what: "drawing a nonce",
                },
                crypto::SealError::Seal => SecretError::Encrypt {
                    env: env.to_owned(),
                    name: name.to_owned(),
                },
            })?;
        let path = self.value_path(env, name);
        let bytes = format::encode_value(&nonce, &sealed);
        crate::files::write_private(&path, &bytes)
            .map_err(|source| SecretError::WriteValue { path, source })?;
        Ok(keys.fingerprint(value))
    }

    /// Reads and decrypts `env`/`name`; [`SecretError::NotSet`] when it was never set.
    pub fn get(&self, env: &str, name: &str) -> Result<Secret, SecretError> {
        valid_env(env)?;
        valid_name(name)?;
        files::check_dir(&self.values_dir(env))?;
        self.decrypt(env, name, None)
    }

    /// [`SecretStore::get`] once `env`, `name` and the values directory are checked. Uses
    /// `keys` when given (already loaded for `env`), else loads them.
    fn decrypt(
        &self,
        env: &str,
        name: &str,
        keys: Option<&EnvKeys>,
    ) -> Result<Secret, SecretError> {
        let path = self.value_path(env, name);
        let read_error = |source| SecretError::ReadValue {
            path: path.clone(),
            source,
        };
        let not_set = || SecretError::NotSet {
            env: env.to_owned(),
            name: name.to_owned(),
            path: path.clone(),
        };
        let limit = MAX_VALUE_LEN + format::VALUE_OVERHEAD;
        let mut bytes = files::read_private(&path, limit, read_error)?.ok_or_else(not_set)?;
        if bytes.len() > limit {
            return Err(SecretError::CorruptValue {
                path,
                reason: format!("larger than {limit} bytes, the size of the largest value file"),
            });
        }
        let (nonce, sealed) =
            format::decode_value(&mut bytes).map_err(|reason| SecretError::CorruptValue {
                path: path.clone(),
                reason,
            })?;
        let key_path = self.key_path(env);
        let loaded;
        let keys = match keys {
            Some(keys) => keys,
            None => {
                loaded = self
                    .load_keys(env)?
                    .ok_or_else(|| SecretError::MissingKey {
                        env: env.to_owned(),
                        path: key_path.clone(),
                    })?;
                &loaded
            }
        };
        let plain = keys
            .open(nonce, &crypto::aad(env, name), sealed)
            .ok_or_else(|| SecretError::Decrypt {
                env: env.to_owned(),
                name: name.to_owned(),
                path: path.clone(),
                key_path,
            })?;
        // Exactly sized, so the copy never reallocates and leaves no stray plaintext.
        let mut value = Zeroizing::new(Vec::with_capacity(plain.len()));
        value.extend_from_slice(plain);
        Ok(Secret {
            name: name.to_owned(),
            fingerprint: keys.fingerprint(&value),
            value,
        })
    }

    /// The environments that have stored values, sorted.
    pub fn environments(&self) -> Result<Vec<String>, SecretError> {
        let mut envs = files::names_with_suffix(&self.values_root(), "")?;
        envs.retain(|env| valid_env(env).is_ok() && self.values_dir(env).is_dir());
        Ok(envs)
    }

    /// The stored secrets of `env` (or of every environment), sorted by environment and
    /// name, with fingerprints; values are decrypted only to fingerprint them.
    pub fn list(&self, env: Option<&str>) -> Result<Vec<SecretInfo>, SecretError> {
        let envs = match env {
            Some(env) => {
                valid_env(env)?;
                vec![env.to_owned()]
            }
            None => self.environments()?,
        };
        let mut infos = Vec::new();
        for env in envs {
            let dir = self.values_dir(&env);
            files::check_dir(&dir)?;
            // The key file is read once per environment. When it cannot be had, each
            // entry loads it again and so reports why in its own place.
            let keys = self.load_keys(&env).ok().flatten();
            for name in files::names_with_suffix(&dir, VALUE_SUFFIX)? {
                if valid_name(&name).is_err() {
                    continue;
                }
                let fingerprint = self
                    .decrypt(&env, &name, keys.as_ref())
                    .map(|secret| secret.fingerprint);
                infos.push(SecretInfo {
                    env: env.clone(),
                    name,
                    fingerprint,
                });
            }
        }
        Ok(infos)
    }

    /// Removes `env`/`name`; false when it was not set.
    pub fn remove(&self, env: &str, name: &str) -> Result<bool, SecretError> {
        valid_env(env)?;
        valid_name(name)?;
        let path = self.value_path(env, name);
        files::remove(&path).map_err(|source| SecretError::RemoveValue { path, source })
    }
}

#[cfg(test)]
mod tests;
