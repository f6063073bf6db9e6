//! TLS termination with a per-job CA, and proxy-side credential injection (DESIGN.md 6
//! and 7).
//!
//! Without an [`Interception`] the proxy never terminates TLS: CONNECT and the
//! transparent TLS listener decide on the SNI and splice bytes (`crate::gate`). A client
//! registered with one gets two things:
//!
//! - **termination** of TLS toward (a) every host a [`Credential`] is bound to, and (b)
//!   every host whose allowing rule restricts `methods` or `paths` (without termination
//!   such HTTPS is denied, because the request is invisible). The proxy answers the
//!   ClientHello with a leaf signed by the job's [`JobCa`], serves HTTP/1.1 inside, and
//!   decides *every request* like plain HTTP: the Host header must equal the TLS server
//!   name (domain fronting becomes visible and is denied), the policy sees method and
//!   path, and each request goes to the upstream over TLS (rustls, SNI = the host,
//!   verified against the roots given to [`Interception::new`], ALPN `http/1.1`) to
//!   exactly an address already checked; an upstream connection is reused only for the
//!   same client, host, port, address and TLS-or-not (`crate::http::UpstreamPool`).
//!   Everything else keeps the splice path, untouched (`plan`).
//! - **injection**: on every request to a bound host, plain HTTP included, every instance
//!   of the credential's header that the job sent is removed and the credential's value
//!   set. Binding a credential to a host therefore means it is sent on plain HTTP to that
//!   host too. The value is never logged: audit events say `credential NAME added`.
//! - **scrubbing** (`scrub`): the response to a request that got a credential has every
//!   occurrence of the credential's raw secret and complete header value replaced by
//!   `*`s of the same length, in headers and body, so a server that echoes request
//!   headers cannot hand the value to the job; responses it cannot read (compressed) are
//!   refused. Audit events say `credential NAME scrubbed from the response ...`.
//!
//! Host matching: a credential's hosts and the request's host are both normalised by the
//! proxy's one name normaliser (`crate::policy::name`: case, trailing dot, IDNA) and must
//! be *equal*; there are no patterns, so `registry.example.com.evil.test`,
//! `xregistry.example.com` and `registry-example.com` get nothing.
//!
//! Fail closed: a leaf that cannot be issued, a client that refuses the leaf, an upstream
//! whose certificate does not verify: each closes that connection with a deny event.

mod ca;
pub(crate) mod scrub;
mod serve;
pub(crate) use serve::replayed;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use zeroize::Zeroizing;

pub use ca::{JobCa, CA_LIFETIME};
pub(crate) use scrub::Scrubber;
pub(crate) use serve::{connect_upstream, terminate, Terminated};

use crate::clients::ClientEntry;
use crate::config::{EgressConfig, RuleTarget};
use crate::policy::{classify_host, Decision, Host};

/// A secret the proxy adds to requests toward its hosts. It is also the form in which the
/// agent hands credentials to a runner's proxy process (serialised over a pipe).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The secret's name (the only thing audit events show).
    pub name: String,
    /// Host names it is bound to (exact names; normalised before comparison).
    pub hosts: Vec<String>,
    /// Header to set, e.g. `Authorization`.
    pub header: String,
    /// The complete header value (the configured `format` already applied).
    pub value: Zeroizing<String>,
    /// The raw secret the value was formatted from: with the value, what responses are
    /// scrubbed of (`scrub`). Never sent anywhere.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why an interception could not be set up or a certificate issued. No variant carries a
/// credential's value.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// Generating the CA key or certificate failed.
    #[error("cannot mint the job CA: {0}")]
    MintCa(rcgen::Error),
    /// The CA certificate PEM does not parse.
    #[error("cannot read the job CA certificate: {0}")]
    ReadCaCert(rcgen::Error),
    /// The CA key PEM does not parse or does not fit the certificate.
    #[error("cannot read the job CA key: {0}")]
    ReadCaKey(rcgen::Error),
    /// A leaf signed with the key does not verify against the certificate.
    #[error("the job CA key does not belong to its certificate: {0}")]
    CaMismatch(String),
    /// A host the CA is to be constrained to is not a valid host pattern.
    #[error("CA host `{host}`: {reason}")]
    PermittedHost {
        /// As given.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA may not sign for this host (name constraints).
    #[error("the job CA may not sign for `{host}`")]
    OutsideConstraints {
        /// The host asked for.
        host: String,
    },
    /// Signing a leaf failed.
    #[error("cannot issue a certificate for `{host}`: {source}")]
    MintLeaf {
        /// The host asked for.
        host: String,
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// rustls refused the leaf or a configuration.
    #[error("TLS configuration for `{host}`: {source}")]
    TlsConfig {
        /// The host (or `upstream`).
        host: String,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The upstream roots bundle has no usable certificate or does not parse.
    #[error("upstream roots: {0}")]
    UpstreamRoots(String),
    /// A credential has no host.
    #[error("credential {credential}: no host to bind it to")]
    NoHosts {
        /// Credential name.
        credential: String,
    },
    /// A credential's host is not a host name.
    #[error("credential {credential}: host `{host}`: {reason}")]
    CredentialHost {
        /// Credential name.
        credential: String,
        /// As given.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// A credential's header name is invalid or one the proxy owns.
    #[error("credential {credential}: header `{header}`: {reason}")]
    CredentialHeader {
        /// Credential name.
        credential: String,
        /// As given.
        header: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A credential's value cannot be a header value (the value itself is not shown).
    #[error("credential {credential}: the value is not a valid header value (control characters or non-text bytes)")]
    CredentialValue {
        /// Credential name.
        credential: String,
    },
    /// Two credentials set the same header on the same host.
    #[error("credentials {first} and {second} both set `{header}` on `{host}`")]
    Conflict {
        /// First credential.
        first: String,
        /// Second credential.
        second: String,
        /// The header.
        header: String,
        /// The host.
        host: String,
    },
}

/// Headers a credential may not set besides the hop-by-hop ones
/// (`crate::http::HOP_BY_HOP`, which the proxy strips): the proxy owns routing and
/// message framing, and rewrites these.
const FRAMING_HEADERS: &[&str] = &["host", "content-length"];

/// One credential as bound to one host.
struct Injection {
    name: String,
    header: HeaderName,
    /// Shares one zeroizing buffer across every request (see [`secret_header_value`]).
    value: HeaderValue,
}

/// What is bound to one host: the credentials set on requests to it, and what the
/// responses to those requests are scrubbed of.
pub(crate) struct Bound {
    injections: Vec<Injection>,
    pub scrubber: Scrubber,
}

impl Bound {
    /// Replaces, in `headers`, every header a credential bound to the host sets: all
    /// instances the job sent go (header names compare case-insensitively), the
    /// credential's value is set. The job's own `Authorization` goes too, whatever
    /// header the credentials use: a request to a credential host carries the operator's
    /// credentials and no authentication of the job's choosing. Returns the names of the
    /// credentials added.
    pub fn inject(&self, headers: &mut HeaderMap) -> Vec<&str> {
        headers.remove(http::header::AUTHORIZATION);
        self.injections
            .iter()
            .map(|injection| {
                // `insert` removes every existing value of the name first.
                headers.insert(injection.header.clone(), injection.value.clone());
                injection.name.as_str()
            })
            .collect()
    }
}

/// What the proxy needs to terminate TLS and inject credentials for one client.
pub struct Interception {
    ca: JobCa,
    /// Normalised host → what is bound to it.
    bound: HashMap<String, Bound>,
    /// TLS server configurations per host, leaf included (minted on first use).
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    upstream: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Interception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut bound: Vec<_> = self
            .bound
            .iter()
            .map(|(host, bound)| {
                let names = bound.injections.iter().map(|i| &i.name);
                (host, names.collect::<Vec<_>>())
            })
            .collect();
        bound.sort();
        f.debug_struct("Interception")
            .field("ca", &self.ca)
            .field("bound", &bound)
            .finish_non_exhaustive()
    }
}

/// Most leaves kept per interception (one per host the job reached); past it the cache
/// is emptied and leaves are minted again.
const MAX_LEAVES: usize = 1024;

impl Interception {
    /// Sets up termination with `ca` and injection of `credentials`; `upstream_roots_pem`
    /// is the PEM bundle of roots the proxy trusts for its own TLS connections upstream.
    pub fn new(
        ca: JobCa,
        credentials: Vec<Credential>,
        upstream_roots_pem: &[u8],
    ) -> Result<Interception, InterceptError> {
        // Normalised host → its injections and the patterns its responses are scrubbed of.
        type Collected = (Vec<Injection>, Vec<Arc<scrub::Pattern>>);
        let mut collected: HashMap<String, Collected> = HashMap::new();
        for credential in credentials {
            let header = check_header(&credential)?;
            let value = secret_header_value(&credential.value).ok_or_else(|| {
                InterceptError::CredentialValue {
                    credential: credential.name.clone(),
                }
            })?;
            if credential.hosts.is_empty() {
                return Err(InterceptError::NoHosts {
                    credential: credential.name,
                });
            }
            let scrubbed: Vec<Arc<scrub::Pattern>> = [&credential.secret, &credential.value]
                .into_iter()
                .map(|text| {
                    Arc::new(scrub::Pattern {
                        credential: Arc::from(credential.name.as_str()),
                        bytes: Zeroizing::new(text.as_bytes().to_vec()),
                    })
                })
                .collect();
            for raw in &credential.hosts {
                let host_error = |reason: String| InterceptError::CredentialHost {
                    credential: credential.name.clone(),
                    host: raw.clone(),
                    reason,
                };
                let name = match classify_host(raw) {
                    Ok(Host::Name(name)) => name,
                    Ok(Host::Ip(_)) => {
                        return Err(host_error(
                            "an address: credentials are bound to names".to_owned(),
                        ))
                    }
                    Err(err) => return Err(host_error(err.to_string())),
                };
                if !ca.permits(&name) {
                    return Err(host_error(
                        "outside the names the job CA may sign for".to_owned(),
                    ));
                }
                let (list, patterns) = collected.entry(name.clone()).or_default();
                if let Some(other) = list.iter().find(|i| i.header == header) {
                    return Err(InterceptError::Conflict {
                        first: other.name.clone(),
                        second: credential.name.clone(),
                        header: header.to_string(),
                        host: name,
                    });
                }
                list.push(Injection {
                    name: credential.name.clone(),
                    header: header.clone(),
                    value: value.clone(),
                });
                patterns.extend(scrubbed.iter().cloned());
            }
        }
        let bound = collected
            .into_iter()
            .map(|(host, (injections, patterns))| {
                let scrubber = Scrubber::new(patterns);
                (
                    host,
                    Bound {
                        injections,
                        scrubber,
                    },
                )
            })
            .collect();
        Ok(Interception {
            ca,
            bound,
            leaves: Mutex::default(),
            upstream: Arc::new(upstream_config(upstream_roots_pem)?),
        })
    }

    /// Whether a credential is bound to `name` (a normalised name).
    pub fn binds(&self, name: &str) -> bool {
        self.bound.contains_key(name)
    }

    /// What is bound to `host`, when a credential is: credentials go to names only.
    pub(crate) fn bound(&self, host: &Host) -> Option<&Bound> {
        let Host::Name(name) = host else {
            return None;
        };
        self.bound.get(name)
    }

    /// The TLS server configuration presenting a leaf for `name`, minted on first use.
    pub(crate) fn server_config(
        &self,
        name: &str,
    ) -> Result<Arc<rustls::ServerConfig>, InterceptError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = leaves.get(name) {
            return Ok(Arc::clone(config));
        }
        let (chain, key) = self.ca.issue_leaf(name)?;
        let tls_error = |source| InterceptError::TlsConfig {
            host: name.to_owned(),
            source,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(tls_error)?;
        // HTTP/1.1 only: the proxy's request handling is hyper's HTTP/1 server. A client
        // that offers only h2 fails the handshake (RFC 7301 section 3.2).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(name.to_owned(), Arc::clone(&config));
        Ok(config)
    }

    /// The client configuration for upstream connections.
    pub(crate) fn upstream_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.upstream)
    }
}

/// Validates a credential's header name.
fn check_header(credential: &Credential) -> Result<HeaderName, InterceptError> {
    let error = |reason| InterceptError::CredentialHeader {
        credential: credential.name.clone(),
        header: credential.header.clone(),
        reason,
    };
    let header = HeaderName::from_bytes(credential.header.as_bytes())
        .map_err(|_| error("not a valid header name"))?;
    let mut reserved = crate::http::HOP_BY_HOP.iter().chain(FRAMING_HEADERS);
    if reserved.any(|name| *name == header.as_str()) {
        return Err(error(
            "the proxy owns this header (framing, routing or hop-by-hop)",
        ));
    }
    Ok(header)
}

/// A header value over one zeroizing buffer: every request clones the `Bytes` handle
/// (a reference count), never the secret, and the buffer is wiped when the last handle
/// goes. Marked sensitive so that encoders that honour it (HPACK) never index it.
fn secret_header_value(value: &Zeroizing<String>) -> Option<HeaderValue> {
    struct Wiped(Zeroizing<Vec<u8>>);
    impl AsRef<[u8]> for Wiped {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    let bytes = Bytes::from_owner(Wiped(Zeroizing::new(value.as_bytes().to_vec())));
    let mut header = HeaderValue::from_maybe_shared(bytes).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// rustls client configuration trusting exactly the roots in `pem`.
fn upstream_config(pem: &[u8]) -> Result<rustls::ClientConfig, InterceptError> {
    let mut roots = rustls::RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| {
            InterceptError::UpstreamRoots(format!("certificate {}: {e}", index + 1))
        })?;
        roots.add(cert).map_err(|e| {
            InterceptError::UpstreamRoots(format!("certificate {}: {e}", index + 1))
        })?;
    }
    if roots.is_empty() {
        return Err(InterceptError::UpstreamRoots(
            "no certificate in the bundle".to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| InterceptError::TlsConfig {
            host: "upstream".to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The host patterns a job CA should be constrained to for `egress` and `credentials`:
/// every host of a rule that restricts `methods` or `paths`, and every host a credential
/// is bound to, each once. Pass the result to [`JobCa::mint`].
pub fn hosts_to_terminate(egress: &EgressConfig, credentials: &[Credential]) -> Vec<String> {
    let restricted = egress.allow.iter().filter_map(|rule| match &rule.target {
        RuleTarget::Host(host) if rule.methods.is_some() || rule.paths.is_some() => {
            Some(host.clone())
        }
        _ => None,
    });
    let bound = credentials.iter().flat_map(|c| c.hosts.iter().cloned());
    let mut hosts: Vec<String> = Vec::new();
    for host in restricted.chain(bound) {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

/// How a tunnel (CONNECT or transparent TLS) to `host:port` is carried: returns the
/// decision and, when the tunnel is to be terminated, the interception to use.
///
/// Terminated: hosts a credential is bound to (when the policy allows them at all), and
/// hosts that only a `methods`/`paths` rule allows (the per-request check then decides).
/// Everything else, and every client without an interception, gets the opaque decision
/// and the splice path. A host the job CA may not sign for is never terminated.
pub(crate) fn plan(
    client: &ClientEntry,
    host: &Host,
    port: u16,
) -> (Decision, Option<Arc<Interception>>) {
    let opaque = || client.policy.check(host, port, None);
    let (Some(interception), Host::Name(name)) = (&client.interception, host) else {
        return (opaque(), None);
    };
    if !interception.ca.permits(name) {
        return (opaque(), None);
    }
    if interception.binds(name) {
        let deferred = client.policy.check_deferred(host, port);
        let terminate = deferred.allowed.then(|| Arc::clone(interception));
        return (deferred, terminate);
    }
    let clean = |d: &Decision| d.allowed && d.reason.is_none();
    let opaque = opaque();
    if !clean(&opaque) {
        let deferred = client.policy.check_deferred(host, port);
        if clean(&deferred) {
            return (deferred, Some(Arc::clone(interception)));
        }
    }
    (opaque, None)
}
