//! Releasing an environment's secrets to one job (DESIGN.md 7).
//!
//! Called only after the job was admitted: its claims matched the environment and, where
//! `approval: required`, an operator approved it. Every secret the environment declares is
//! read from the store and split by delivery:
//! - `env`: an environment variable of every step (the value must be text without NUL);
//! - `file`: a file under `/run/secrets` on a tmpfs of its own inside the sandbox;
//! - `proxy`: the complete header value (`format` with `{secret}` replaced) handed to the
//!   runner's proxy process, which adds it to requests for the bound hosts; the sandbox
//!   never sees it. The raw secret goes along too, only so that the proxy can scrub both
//!   forms out of the responses of those hosts (`egress_proxy::intercept`).
//!
//! A declared secret that is not in the store stops the job before anything is created:
//! running with a credential silently missing would fail later in a less clear way.
//!
//! Every value, and the formatted header values, go into one [`Masker`] that the agent
//! applies to step output and audit events. Values are held in zeroizing buffers from the
//! moment they are decrypted; what is handed on (the sandbox spec, a step's environment,
//! the proxy's configuration) is zeroed by its own holder after use.

use zeroize::Zeroizing;

use crate::config::{Delivery, Environment};
use crate::mask::Masker;
use crate::record::ReleasedSecret;
use crate::sandbox::protocol::SecretFile;
use crate::secrets::{SecretError, SecretStore};

/// A credential the proxy adds to requests (the proxy's own type: it is what the proxy
/// process receives).
pub use egress_proxy::intercept::Credential as ProxyCredential;

/// What a job receives of its environment's secrets.
pub struct Released {
    /// `deliver: env` secrets, as (name, value).
    pub env: Vec<(String, Zeroizing<String>)>,
    /// `deliver: file` secrets.
    pub files: Vec<SecretFile>,
    /// `deliver: proxy` secrets.
    pub proxy: Vec<ProxyCredential>,
    /// What the job record says was released.
    pub record: Vec<ReleasedSecret>,
    /// Masks every value (and its encoded forms) in output and logs.
    pub masker: Masker,
}

impl Released {
    /// Nothing released (an environment without secrets).
    pub fn none() -> Released {
        Released {
            env: Vec::new(),
            files: Vec::new(),
            proxy: Vec::new(),
            record: Vec::new(),
            masker: Masker::new(std::iter::empty::<&[u8]>()),
        }
    }
}

/// A secret could not be released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The store could not give the value.
    #[error("secret `{name}` of environment `{environment}`: {source}")]
    Store {
        /// The environment.
        environment: String,
        /// The secret.
        name: String,
        /// Why (boxed: the store's errors are large and this one is rare).
        source: Box<SecretError>,
    },
    /// The value cannot be delivered the way the environment asks.
    #[error("secret `{name}` of environment `{environment}` cannot be delivered as `{deliver}`: {reason}")]
    Unfit {
        /// The environment.
        environment: String,
        /// The secret.
        name: String,
        /// The delivery.
        deliver: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// Reads and splits the secrets `environment` declares (see the module doc).
pub fn release(
    store: &SecretStore,
    environment_name: &str,
    environment: &Environment,
) -> Result<Released, ReleaseError> {
    let mut released = Released::none();
    let mut mask_values: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    for (name, spec) in &environment.secrets {
        let secret = store
            .get(environment_name, name)
            .map_err(|source| ReleaseError::Store {
                environment: environment_name.to_owned(),
                name: name.clone(),
                source: Box::new(source),
            })?;
        let unfit = |reason| ReleaseError::Unfit {
            environment: environment_name.to_owned(),
            name: name.clone(),
            deliver: spec.delivery_name(),
            reason,
        };
        let value = secret.value();
        mask_values.push(Zeroizing::new(value.to_vec()));
        let mut hosts = Vec::new();
        match &spec.deliver {
            Delivery::Env => {
                let text = secret
                    .value_str()
                    .map_err(|_| unfit("an environment variable must be text (UTF-8)"))?;
                if text.contains('\0') {
                    return Err(unfit("an environment variable cannot contain NUL"));
                }
                released
                    .env
                    .push((name.clone(), Zeroizing::new(text.to_owned())));
            }
            Delivery::File => released.files.push(SecretFile {
                name: name.clone(),
                content: Zeroizing::new(value.to_vec()),
            }),
            Delivery::Proxy {
                hosts: bound,
                header,
                format,
            } => {
                let text = secret
                    .value_str()
                    .map_err(|_| unfit("a header value must be text (UTF-8)"))?;
                // RFC 9110 §5.5: no CR, LF or NUL in a field value (header injection).
                if text.contains(['\r', '\n', '\0']) {
                    return Err(unfit("a header value cannot contain CR, LF or NUL"));
                }
                let formatted = Zeroizing::new(format.replace("{secret}", text));
                mask_values.push(Zeroizing::new(formatted.as_bytes().to_vec()));
                hosts.clone_from(bound);
                released.proxy.push(ProxyCredential {
                    name: name.clone(),
                    hosts: bound.clone(),
                    header: header.clone(),
                    value: formatted,
                    secret: Zeroizing::new(text.to_owned()),
                });
            }
        }
        released.record.push(ReleasedSecret {
            name: name.clone(),
            deliver: spec.delivery_name().to_owned(),
            fingerprint: secret.fingerprint.clone(),
            hosts,
        });
    }
    released.masker = Masker::new(mask_values.iter().map(|v| v.as_slice()));
    Ok(released)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::SecretSpec;

    fn environment(deliver: Delivery) -> Environment {
        let mut environment = Environment::no_egress();
        environment.secrets = BTreeMap::from([("TOKEN".to_owned(), SecretSpec { deliver })]);
        environment
    }

    fn proxy() -> Delivery {
        Delivery::Proxy {
            hosts: vec!["registry.example.com".into()],
            header: "Authorization".into(),
            format: "Bearer {secret}".into(),
        }
    }

    /// Stores `value` as `ci`'s TOKEN and releases it the way `deliver` says.
    fn release_value(value: &[u8], deliver: Delivery) -> Result<Released, ReleaseError> {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::open(tmp.path()).unwrap();
        store.set("ci", "TOKEN", value).unwrap();
        release(&store, "ci", &environment(deliver))
    }

    fn unfit_reason(result: Result<Released, ReleaseError>) -> &'static str {
        match result {
            Err(ReleaseError::Unfit { reason, .. }) => reason,
            Err(other) => panic!("expected Unfit, got {other}"),
            Ok(_) => panic!("expected Unfit, got a release"),
        }
    }

    #[test]
    fn header_injection_and_nul_are_refused_before_anything_runs() {
        for value in [
            &b"t0k\r\nX-Evil: 1"[..],
            b"t0k\nX-Evil: 1",
            b"t0k\rx",
            b"t0k\0x",
        ] {
            let reason = unfit_reason(release_value(value, proxy()));
            assert!(reason.contains("CR, LF or NUL"), "{value:?}: {reason}");
        }
        let reason = unfit_reason(release_value(b"a\0b", Delivery::Env));
        assert!(reason.contains("NUL"), "{reason}");
        for deliver in [Delivery::Env, proxy()] {
            let reason = unfit_reason(release_value(&[0xff, 0xfe, b'a'], deliver));
            assert!(reason.contains("UTF-8"), "{reason}");
        }
        // A file may hold anything.
        let released = release_value(b"a\0b\r\n\xff", Delivery::File).unwrap();
        assert_eq!(*released.files[0].content, b"a\0b\r\n\xff");
    }

    #[test]
    fn the_record_has_the_fingerprint_and_the_masker_both_forms() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::open(tmp.path()).unwrap();
        let fingerprint = store.set("ci", "TOKEN", b"s3cr3t-t0ken").unwrap();
        let released = release(&store, "ci", &environment(proxy())).unwrap();
        assert_eq!(released.record.len(), 1);
        assert_eq!(released.record[0].fingerprint, fingerprint);
        assert_eq!(released.record[0].hosts, ["registry.example.com"]);
        assert_eq!(released.proxy[0].value.as_str(), "Bearer s3cr3t-t0ken");
        assert!(released.env.is_empty() && released.files.is_empty());
        let masked = released
            .masker
            .mask(b"raw s3cr3t-t0ken, header Bearer s3cr3t-t0ken.");
        assert!(!masked.windows(6).any(|w| w == b"s3cr3t"), "{masked:?}");
    }
}
