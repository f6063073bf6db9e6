//! The certificate authority minted for one job, and the leaf certificates it signs.
//!
//! What the CA is (DESIGN.md 6): a key and a self-signed certificate made when the job
//! starts, trusted only inside that job's sandbox (the agent adds [`JobCa::cert_pem`] to
//! the sandbox's trust store), whose key stays in the proxy and dies with the runner. The
//! proxy signs one leaf per host it terminates TLS for, on demand.
//!
//! Invariants, and why:
//! - short life: valid from one hour ago (clocks inside sandboxes and on CI hosts drift)
//!   for [`CA_LIFETIME`]; a leaked CA certificate is worthless a week later, and its key
//!   never left the proxy anyway;
//! - `basicConstraints: CA, pathlen 0` and `keyUsage: keyCertSign, cRLSign`: the CA signs
//!   leaves only, never another CA (RFC 5280 sections 4.2.1.9 and 4.2.1.3);
//! - X.509 name constraints (RFC 5280 section 4.2.1.10) when the CA is minted for a list
//!   of hosts: the DNS subtrees of those hosts are permitted and every IPv4 and IPv6
//!   address is excluded, so even a stolen key could not mint a certificate that a
//!   constraint-checking client (rustls/webpki, OpenSSL, Go, browsers) accepts for any
//!   other name. A DNS subtree covers the name and every name below it (RFC 5280 gives
//!   DNS constraints no "exact" form), so `registry.example.com` also permits
//!   `a.registry.example.com`, and a `*.example.com` pattern permits `example.com`. The
//!   proxy itself refuses to sign outside the list ([`JobCa::permits`]); the constraint
//!   is the second wall. A CA minted with an empty list has no constraints.
//! - leaves carry the one host as their only subjectAltName (RFC 6125), `serverAuth`
//!   extended key usage, a fresh P-256 key, and never outlive the CA.
//!
//! Key material: [`JobCa::key_pem`] returns a `Zeroizing` string so copies handed out are
//! wiped when dropped. The copies inside `rcgen` and `ring` are freed without wiping
//! (neither crate offers it); they only ever live in the proxy's memory.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::InterceptError;
use crate::policy::{HostPattern, HostPattern::Below, HostPattern::Exact};

/// How long a job CA is valid (jobs are capped far below this).
pub const CA_LIFETIME: Duration = Duration::days(7);
/// How far in the past validity starts, for clocks that lag.
const BACKDATE: Duration = Duration::hours(1);
/// Upper bound of an X.520 common name (RFC 5280 appendix A, ub-common-name).
const MAX_CN: usize = 64;

/// A CA for one job.
pub struct JobCa {
    /// The certificate as handed out (PEM), exactly as trusted inside the sandbox.
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// The signing identity: the CA's parameters re-signed with its key. Only its subject
    /// name, key identifier and key are used, so leaves chain to `cert_der`.
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// Normalised DNS subtrees the CA may sign for; empty means unconstrained.
    permitted: Vec<String>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for JobCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCa")
            .field("permitted", &self.permitted)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl JobCa {
    /// Mints a CA for `job_id` that may sign for `hosts` (policy host patterns:
    /// `name` or `*.name`; empty: no name constraints).
    pub fn mint(job_id: &str, hosts: &[String]) -> Result<JobCa, InterceptError> {
        let permitted = permitted_subtrees(hosts)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        let cn: String = format!("runner-agent job {job_id} CA")
            .chars()
            .take(MAX_CN)
            .collect();
        name.push(DnType::CommonName, cn);
        name.push(DnType::OrganizationName, "runner-agent");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        if !permitted.is_empty() {
            params.name_constraints = Some(NameConstraints {
                permitted_subtrees: permitted
                    .iter()
                    .map(|n| GeneralSubtree::DnsName(n.clone()))
                    .collect(),
                excluded_subtrees: vec![
                    GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([0; 4], 0)),
                    GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix([0; 16], 0)),
                ],
            });
        }
        let key = KeyPair::generate().map_err(InterceptError::MintCa)?;
        let issuer = params.self_signed(&key).map_err(InterceptError::MintCa)?;
        Ok(JobCa {
            cert_pem: issuer.pem(),
            cert_der: issuer.der().clone(),
            not_after: now + CA_LIFETIME,
            issuer,
            key,
            permitted,
        })
    }

    /// Loads a CA minted earlier (by [`JobCa::mint`], possibly in another process). The
    /// key must belong to the certificate: a probe leaf is signed and verified against
    /// `cert_pem` before the CA is accepted.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<JobCa, InterceptError> {
        let params =
            CertificateParams::from_ca_cert_pem(cert_pem).map_err(InterceptError::ReadCaCert)?;
        let cert_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| InterceptError::ReadCaCert(rcgen::Error::PemError(e.to_string())))?;
        let key = KeyPair::from_pem(key_pem).map_err(InterceptError::ReadCaKey)?;
        let permitted = params
            .name_constraints
            .iter()
            .flat_map(|c| c.permitted_subtrees.iter())
            .filter_map(|s| match s {
                GeneralSubtree::DnsName(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        let not_after = params.not_after;
        let issuer = params
            .self_signed(&key)
            .map_err(InterceptError::ReadCaKey)?;
        let ca = JobCa {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
            key,
            permitted,
            not_after,
        };
        let probe = ca
            .permitted
            .first()
            .cloned()
            .unwrap_or_else(|| "probe.invalid".to_owned());
        let (chain, _) = ca.sign_leaf(&probe)?;
        ca.verify_leaf(&chain[0], &probe)
            .map_err(|e| InterceptError::CaMismatch(e.to_string()))?;
        Ok(ca)
    }

    /// The CA certificate, PEM (what the sandbox trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key, PKCS#8 PEM, wiped from memory when dropped.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// The DNS subtrees the CA may sign for (empty: any name).
    pub fn permitted(&self) -> &[String] {
        &self.permitted
    }

    /// Whether the CA may sign a leaf for `host` (a normalised name).
    pub fn permits(&self, host: &str) -> bool {
        self.permitted.is_empty()
            || self.permitted.iter().any(|subtree| {
                host == subtree
                    || host
                        .strip_suffix(subtree.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            })
    }

    /// A leaf for `host` (a normalised name): the chain (leaf only; the client has the
    /// CA) and the leaf's key.
    pub fn issue_leaf(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), InterceptError> {
        if !self.permits(host) {
            return Err(InterceptError::OutsideConstraints {
                host: host.to_owned(),
            });
        }
        self.sign_leaf(host)
    }

    /// Signs without the constraint check (the check is [`JobCa::issue_leaf`]'s; tests
    /// use this to show that clients enforce the constraints too).
    pub(crate) fn sign_leaf(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), InterceptError> {
        let leaf_error = |source| InterceptError::MintLeaf {
            host: host.to_owned(),
            source,
        };
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::DnsName(
            host.to_owned().try_into().map_err(leaf_error)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = (now + CA_LIFETIME).min(self.not_after);
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().map_err(leaf_error)?;
        let leaf = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(leaf_error)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![leaf.der().clone()], key_der))
    }

    /// Verifies `leaf` for `host` against this CA alone, as a TLS client would.
    pub fn verify_leaf(&self, leaf: &CertificateDer<'_>, host: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            leaf,
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
    }
}

/// Policy host patterns → normalised DNS subtrees (`*.example.com` → `example.com`),
/// without duplicates.
fn permitted_subtrees(hosts: &[String]) -> Result<Vec<String>, InterceptError> {
    let mut out: Vec<String> = Vec::new();
    for raw in hosts {
        let subtree = match HostPattern::parse(raw) {
            Ok(Exact(name) | Below(name)) => name,
            Err(reason) => {
                return Err(InterceptError::PermittedHost {
                    host: raw.clone(),
                    reason,
                })
            }
        };
        if !out.contains(&subtree) {
            out.push(subtree);
        }
    }
    Ok(out)
}

/// 16 random bytes with the top bit clear (a positive INTEGER, RFC 5280 section 4.1.2.2).
fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}
