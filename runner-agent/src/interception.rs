//! The agent's side of TLS interception: when a job's proxy must see inside TLS, mint the
//! job's CA, make the sandbox trust it, and hand its key to the proxy process.
//!
//! The proxy terminates TLS only where it must (see `egress_proxy::intercept`): for hosts a
//! `deliver: proxy` credential is bound to, and for hosts whose allow rule has `methods` or
//! `paths`. A job with neither gets no CA at all and keeps plain SNI splicing.
//!
//! Where the pieces go:
//! - the CA certificate is added to the sandbox's system trust store (Debian's bundle at
//!   [`BUNDLE_PATH`] becomes the host's bundle plus the job CA, in the sandbox's writable
//!   layer) and written alone at [`JOB_CA_PATH`]; the steps get `SSL_CERT_FILE`,
//!   `REQUESTS_CA_BUNDLE` and `NODE_EXTRA_CA_CERTS` so tools with stores of their own
//!   (Python requests, Node) trust it too. Nothing outside this one sandbox trusts it;
//! - the CA key goes to the proxy process over its stdin pipe, is never written to a file,
//!   and dies with that process at the end of the job. The agent gives its [`Interception`]
//!   up to build the proxy's configuration ([`Interception::into_proxy_config`]): the PEM
//!   copy sent is zeroed once sent, and rcgen's own copy of the key is freed (rcgen does
//!   not zero it) before the job's first step;
//! - the proxy's own TLS connections upstream are verified against the host's roots:
//!   the file named by `SSL_CERT_FILE` in the agent's environment when set (the OpenSSL
//!   convention; how an operator adds a private CA), else Debian's bundle.
//!
//! The CA carries X.509 name constraints for exactly the names it will sign for.

use std::path::PathBuf;

use egress_proxy::config::EgressConfig;
use egress_proxy::intercept::{hosts_to_terminate, InterceptError, JobCa};

use crate::credentials::ProxyCredential;
use crate::egress::proxy_child::InterceptConfig;

/// The system trust bundle on Debian (and where the sandbox's tools look by default).
pub const BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The job CA alone, inside the sandbox.
pub const JOB_CA_PATH: &str = "/usr/local/share/ca-certificates/runner-agent-job-ca.crt";

/// Interception could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum InterceptionError {
    /// The CA could not be minted.
    #[error(transparent)]
    Mint(#[from] InterceptError),
    /// The roots for upstream connections could not be read.
    #[error("cannot read the trusted roots for upstream TLS from {path}: {source}")]
    Roots {
        /// The bundle.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A job's CA and what the proxy needs besides it.
pub struct Interception {
    ca: JobCa,
    /// The host's bundle (PEM), read once: the sandbox's store is built from it.
    host_bundle: String,
    /// Roots the proxy trusts upstream (PEM).
    upstream_roots: String,
}

impl Interception {
    /// Mints the job's CA if the job needs interception (see the module doc).
    pub fn prepare(
        job_id: &str,
        egress: &EgressConfig,
        credentials: &[ProxyCredential],
    ) -> Result<Option<Interception>, InterceptionError> {
        let names = hosts_to_terminate(egress, credentials);
        if names.is_empty() {
            return Ok(None);
        }
        let ca = JobCa::mint(job_id, &names)?;
        let host_bundle = std::fs::read_to_string(BUNDLE_PATH).unwrap_or_default();
        let upstream_roots = match std::env::var_os("SSL_CERT_FILE") {
            Some(path) => {
                let path = PathBuf::from(path);
                std::fs::read_to_string(&path)
                    .map_err(|source| InterceptionError::Roots { path, source })?
            }
            None => host_bundle.clone(),
        };
        Ok(Some(Interception {
            ca,
            host_bundle,
            upstream_roots,
        }))
    }

    /// The files that make the sandbox trust the job CA (path inside, content).
    pub fn sandbox_files(&self) -> Vec<(PathBuf, String)> {
        let ca = self.ca.cert_pem();
        let mut bundle = self.host_bundle.clone();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(ca);
        vec![
            (PathBuf::from(BUNDLE_PATH), bundle),
            (PathBuf::from(JOB_CA_PATH), ca.to_owned()),
        ]
    }

    /// What the proxy process receives: the CA with its key, the credentials, the roots.
    pub fn into_proxy_config(self, credentials: Vec<ProxyCredential>) -> InterceptConfig {
        InterceptConfig {
            ca_cert_pem: self.ca.cert_pem().to_owned(),
            ca_key_pem: self.ca.key_pem(),
            credentials,
            upstream_roots_pem: self.upstream_roots,
        }
    }
}

/// The variables that point the job's tools at the trust store holding its CA.
pub fn trust_env() -> Vec<(String, String)> {
    vec![
        ("SSL_CERT_FILE".into(), BUNDLE_PATH.into()),
        ("REQUESTS_CA_BUNDLE".into(), BUNDLE_PATH.into()),
        ("NODE_EXTRA_CA_CERTS".into(), JOB_CA_PATH.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn credential(hosts: &[&str]) -> ProxyCredential {
        ProxyCredential {
            name: "T".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            header: "Authorization".into(),
            value: Zeroizing::new("Bearer x".into()),
            secret: Zeroizing::new("x".into()),
        }
    }

    fn egress(yaml: &str) -> EgressConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn only_credentials_and_request_rules_need_interception() {
        let plain = egress("allow: [ { host: a.example.com }, { cidr: 192.0.2.0/24 } ]");
        assert!(Interception::prepare("j-1", &plain, &[]).unwrap().is_none());
        let rules = egress(
            "allow: [ { host: a.example.com }, { host: b.example.com, paths: [\"/x/*\"] } ]",
        );
        let ca = Interception::prepare("j-1", &rules, &[])
            .unwrap()
            .expect("a path rule needs interception");
        assert_eq!(ca.ca.permitted(), ["b.example.com"]);
    }

    #[test]
    fn the_sandbox_trusts_the_job_ca_and_the_proxy_gets_its_key() {
        let rules = egress("allow: [ { host: r.example.com } ]");
        let creds = [credential(&["r.example.com"])];
        let interception = Interception::prepare("j-1", &rules, &creds)
            .unwrap()
            .expect("a credential needs interception");
        let files = interception.sandbox_files();
        let ca = interception.ca.cert_pem();
        assert!(files.iter().all(|(_, content)| content.ends_with(ca)));
        assert!(files
            .iter()
            .all(|(_, content)| !content.contains("PRIVATE KEY")));
        let config = interception.into_proxy_config(creds.to_vec());
        assert!(config.ca_key_pem.contains("PRIVATE KEY"));
        assert_eq!(config.credentials[0].hosts, vec!["r.example.com"]);
        assert_eq!(config.credentials[0].value.as_str(), "Bearer x");
        assert_eq!(config.credentials[0].secret.as_str(), "x");
        let debug = format!("{config:?}");
        assert!(!debug.contains("Bearer"), "{debug}");
    }
}
