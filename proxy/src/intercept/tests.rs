//! Unit tests: the job CA and its leaves, credential binding and host matching, header
//! overwrite, and which tunnels are terminated.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose};
use zeroize::Zeroizing;

use super::*;
use crate::config::{EgressConfig, Mode, RuleConfig, RuleTarget, DEFAULT_PORTS};
use crate::policy::Policy;

const SECRET: &str = "Bearer s3cr3t-value-0123456789";

/// What the proxy does for a request to `host`: the credentials bound to it replace the
/// headers they set (nothing when none is). Returns the names of the credentials added.
fn inject<'a>(i: &'a Interception, host: &Host, headers: &mut HeaderMap) -> Vec<&'a str> {
    i.bound(host)
        .map_or_else(Vec::new, |bound| bound.inject(headers))
}

fn ca_for(hosts: &[&str]) -> JobCa {
    let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    JobCa::mint("j-01TEST", &hosts).unwrap()
}

fn credential(name: &str, hosts: &[&str], header: &str, value: &str) -> Credential {
    Credential {
        name: name.to_owned(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        header: header.to_owned(),
        value: Zeroizing::new(value.to_owned()),
        secret: Zeroizing::new(value.trim_start_matches("Bearer ").to_owned()),
    }
}

/// A PEM bundle with one (unrelated) root, enough for the upstream configuration.
fn some_roots() -> String {
    ca_for(&[]).cert_pem().to_owned()
}

fn registry() -> Interception {
    Interception::new(
        ca_for(&["registry.example.com", "*.api.example.com"]),
        vec![credential(
            "PROD_REGISTRY_TOKEN",
            &["registry.example.com"],
            "Authorization",
            SECRET,
        )],
        some_roots().as_bytes(),
    )
    .unwrap()
}

fn name(raw: &str) -> Host {
    classify_host(raw).unwrap()
}

#[test]
fn the_ca_is_a_short_lived_leaf_only_ca_naming_the_job() {
    let ca = ca_for(&["registry.example.com"]);
    let params = CertificateParams::from_ca_cert_pem(ca.cert_pem()).unwrap();
    assert_eq!(params.is_ca, IsCa::Ca(BasicConstraints::Constrained(0)));
    assert!(params.key_usages.contains(&KeyUsagePurpose::KeyCertSign));
    let life = params.not_after - params.not_before;
    assert!(
        life <= CA_LIFETIME + time::Duration::hours(1) && life >= CA_LIFETIME,
        "{life}"
    );
    assert!(params.not_before < time::OffsetDateTime::now_utc());
    let cn = format!("{:?}", params.distinguished_name);
    assert!(cn.contains("j-01TEST"), "{cn}");
    let constraints = params.name_constraints.expect("name constraints");
    assert_eq!(
        constraints.permitted_subtrees,
        vec![rcgen::GeneralSubtree::DnsName(
            "registry.example.com".into()
        )]
    );
    assert_eq!(constraints.excluded_subtrees.len(), 2, "all IPv4 and IPv6");
    assert!(ca.key_pem().contains("PRIVATE KEY"));
}

#[test]
fn leaves_chain_to_the_ca_for_their_host_only() {
    let ca = ca_for(&["registry.example.com", "*.Example.ORG."]);
    for host in ["registry.example.com", "a.b.example.org", "example.org"] {
        let (chain, _) = ca.issue_leaf(host).unwrap();
        ca.verify_leaf(&chain[0], host)
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    let (chain, _) = ca.issue_leaf("registry.example.com").unwrap();
    assert!(ca.verify_leaf(&chain[0], "other.example.com").is_err());
    // Another job's CA does not vouch for this CA's leaves.
    let other = ca_for(&["registry.example.com"]);
    assert!(other
        .verify_leaf(&chain[0], "registry.example.com")
        .is_err());
}

#[test]
fn the_ca_refuses_and_clients_reject_names_outside_its_constraints() {
    let ca = ca_for(&["registry.example.com"]);
    for outside in [
        "example.com",
        "registry.example.com.evil.test",
        "xregistry.example.com",
    ] {
        assert!(!ca.permits(outside), "{outside}");
        assert!(matches!(
            ca.issue_leaf(outside),
            Err(InterceptError::OutsideConstraints { .. })
        ));
        // Signed anyway (as a stolen key could): a client enforcing RFC 5280 name
        // constraints refuses it.
        let (chain, _) = ca.sign_leaf(outside).unwrap();
        let err = ca.verify_leaf(&chain[0], outside).unwrap_err();
        assert!(format!("{err}").to_lowercase().contains("name"), "{err}");
    }
    assert!(ca.permits("sub.registry.example.com"));
    // Without hosts the CA is unconstrained.
    let open = ca_for(&[]);
    let (chain, _) = open.issue_leaf("anything.test").unwrap();
    open.verify_leaf(&chain[0], "anything.test").unwrap();
}

#[test]
fn a_ca_reloaded_from_pem_signs_leaves_its_original_certificate_vouches_for() {
    let ca = ca_for(&["registry.example.com"]);
    let reloaded = JobCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(reloaded.permitted(), ["registry.example.com".to_owned()]);
    assert_eq!(reloaded.cert_der(), ca.cert_der());
    let (chain, _) = reloaded.issue_leaf("registry.example.com").unwrap();
    ca.verify_leaf(&chain[0], "registry.example.com").unwrap();
    assert!(reloaded.issue_leaf("evil.test").is_err());
    // A key from another CA is refused.
    let other = ca_for(&["registry.example.com"]);
    assert!(matches!(
        JobCa::from_pem(ca.cert_pem(), &other.key_pem()),
        Err(InterceptError::CaMismatch(_))
    ));
    assert!(matches!(
        JobCa::from_pem("not a pem", &ca.key_pem()),
        Err(InterceptError::ReadCaCert(_))
    ));
}

#[test]
fn bad_ca_hosts_are_refused_with_the_host_named() {
    let err = JobCa::mint("j", &["*.com".to_owned()]).unwrap_err();
    assert!(err.to_string().contains("`*.com`"), "{err}");
    let err = JobCa::mint("j", &["10.0.0.1".to_owned()]).unwrap_err();
    assert!(err.to_string().contains("10.0.0.1"), "{err}");
}

#[test]
fn credentials_bind_to_exactly_equal_normalised_names() {
    let i = registry();
    for same in [
        "registry.example.com",
        "REGISTRY.Example.COM",
        "registry.example.com.",
    ] {
        let mut headers = HeaderMap::new();
        assert_eq!(
            inject(&i, &name(same), &mut headers),
            vec!["PROD_REGISTRY_TOKEN"],
            "{same}"
        );
        assert_eq!(headers.get(AUTHORIZATION).unwrap(), SECRET);
    }
    for resembling in [
        "registry.example.com.evil.test",
        "xregistry.example.com",
        "registry-example.com",
        "sub.registry.example.com",
        "example.com",
        "registry.example.co",
    ] {
        let mut headers = HeaderMap::new();
        assert!(
            inject(&i, &name(resembling), &mut headers).is_empty(),
            "{resembling}"
        );
        assert!(headers.is_empty(), "{resembling}");
    }
    let mut headers = HeaderMap::new();
    assert!(inject(
        &i,
        &Host::Ip("198.51.100.10".parse().unwrap()),
        &mut headers
    )
    .is_empty());
}

#[test]
fn the_jobs_own_header_is_replaced_however_often_and_however_spelled() {
    let i = registry();
    let shouted = HeaderName::from_bytes(b"AUTHORIZATION").unwrap();
    let cases: Vec<Vec<(HeaderName, &str)>> = vec![
        vec![],
        vec![(AUTHORIZATION, "Bearer job-own")],
        vec![
            (AUTHORIZATION, "Bearer job-one"),
            (AUTHORIZATION, "Bearer job-two"),
        ],
        vec![
            (shouted.clone(), "Basic am9iOm93bg=="),
            (HeaderName::from_bytes(b"Authorization").unwrap(), "x"),
        ],
    ];
    for sent in cases {
        let mut headers = HeaderMap::new();
        for (header, value) in &sent {
            headers.append(header.clone(), HeaderValue::from_str(value).unwrap());
        }
        headers.insert("x-other", HeaderValue::from_static("kept"));
        inject(&i, &name("registry.example.com"), &mut headers);
        let values: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
        assert_eq!(values, vec![SECRET], "sent {sent:?}");
        assert_eq!(headers.get("x-other").unwrap(), "kept");
    }
}

#[test]
fn the_jobs_own_authorization_goes_even_when_the_credential_uses_another_header() {
    let i = Interception::new(
        ca_for(&["registry.example.com"]),
        vec![credential(
            "KEY",
            &["registry.example.com"],
            "X-Api-Key",
            "k3y-value",
        )],
        some_roots().as_bytes(),
    )
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer job-own"));
    headers.insert("x-api-key", HeaderValue::from_static("job-key"));
    assert_eq!(
        inject(&i, &name("registry.example.com"), &mut headers),
        vec!["KEY"]
    );
    assert!(headers.get(AUTHORIZATION).is_none());
    assert_eq!(headers.get("x-api-key").unwrap(), "k3y-value");
    // Hosts without a credential keep what the job sent.
    let mut other = HeaderMap::new();
    other.insert(AUTHORIZATION, HeaderValue::from_static("Bearer job-own"));
    assert!(inject(&i, &name("other.example.com"), &mut other).is_empty());
    assert_eq!(other.get(AUTHORIZATION).unwrap(), "Bearer job-own");
}

#[test]
fn the_value_shows_nowhere_but_in_the_header() {
    let i = registry();
    assert!(!format!("{i:?}").contains("s3cr3t"));
    let c = credential("T", &["registry.example.com"], "Authorization", SECRET);
    assert!(!format!("{c:?}").contains("s3cr3t"));
    // A value that cannot be a header value is refused without being shown.
    let bad = credential("T", &["registry.example.com"], "Authorization", "s3cr3t\nx");
    let err = Interception::new(
        ca_for(&["registry.example.com"]),
        vec![bad],
        some_roots().as_bytes(),
    )
    .unwrap_err();
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    assert!(err.to_string().contains("credential T"), "{err}");
}

#[test]
fn bad_bindings_are_refused_naming_credential_and_what() {
    let ca = || ca_for(&["registry.example.com"]);
    let roots = some_roots();
    let refuse = |credentials: Vec<Credential>, ca: JobCa| {
        Interception::new(ca, credentials, roots.as_bytes())
            .unwrap_err()
            .to_string()
    };
    let err = refuse(
        vec![credential("T", &["registry.example.com"], "Host", "x")],
        ca(),
    );
    assert!(err.contains("`Host`") && err.contains("owns"), "{err}");
    let err = refuse(
        vec![credential(
            "T",
            &["registry.example.com"],
            "bad header",
            "x",
        )],
        ca(),
    );
    assert!(err.contains("not a valid header name"), "{err}");
    let err = refuse(
        vec![credential("T", &["198.51.100.10"], "Authorization", "x")],
        ca_for(&[]),
    );
    assert!(err.contains("address"), "{err}");
    let err = refuse(
        vec![credential("T", &["evil.test"], "Authorization", "x")],
        ca(),
    );
    assert!(err.contains("job CA"), "{err}");
    let err = refuse(vec![credential("T", &[], "Authorization", "x")], ca());
    assert!(err.contains("no host"), "{err}");
    let err = refuse(
        vec![
            credential("A", &["registry.example.com"], "Authorization", "x"),
            credential("B", &["Registry.Example.com"], "authorization", "y"),
        ],
        ca(),
    );
    assert!(err.contains("A and B"), "{err}");
    let err = Interception::new(ca(), Vec::new(), b"no certificates here").unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
}

fn rule(host: &str, methods: Option<&[&str]>) -> RuleConfig {
    RuleConfig {
        target: RuleTarget::Host(host.to_owned()),
        ports: DEFAULT_PORTS.to_vec(),
        methods: methods.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
        paths: None,
    }
}

fn client(mode: Mode, interception: Option<Interception>) -> ClientEntry {
    let policy = Policy::new(&EgressConfig {
        mode,
        allow: vec![
            rule("registry.example.com", None),
            rule("open.example.com", None),
            rule("v.api.example.com", Some(&["GET"])),
            rule("unsigned.example.net", Some(&["GET"])),
        ],
    })
    .unwrap();
    ClientEntry::new(None, None, Arc::new(policy)).with_interception(interception.map(Arc::new))
}

#[test]
fn bound_and_method_restricted_hosts_are_terminated_and_nothing_else() {
    let c = client(Mode::Enforce, Some(registry()));
    let plan_for = |host: &str| {
        let (decision, terminate) = plan(&c, &name(host), 443);
        (decision.allowed, terminate.is_some())
    };
    assert_eq!(plan_for("registry.example.com"), (true, true), "bound");
    assert_eq!(plan_for("v.api.example.com"), (true, true), "methods rule");
    assert_eq!(plan_for("open.example.com"), (true, false), "spliced");
    assert_eq!(plan_for("evil.test"), (false, false), "denied");
    // The CA may not sign for it: denied as an opaque tunnel, as without interception.
    assert_eq!(plan_for("unsigned.example.net"), (false, false));
    // Not an allowed port: no termination either.
    assert!(!plan(&c, &name("registry.example.com"), 8443).0.allowed);
    // Without an interception, the methods rule denies the tunnel.
    let plain = client(Mode::Enforce, None);
    let (decision, terminate) = plan(&plain, &name("v.api.example.com"), 443);
    assert!(!decision.allowed && terminate.is_none());
    let (decision, terminate) = plan(&plain, &name("registry.example.com"), 443);
    assert!(decision.allowed && terminate.is_none());
}

#[test]
fn audit_mode_terminates_restricted_hosts_and_splices_unknown_ones() {
    let c = client(Mode::Audit, Some(registry()));
    let (decision, terminate) = plan(&c, &name("v.api.example.com"), 443);
    assert!(decision.allowed && decision.reason.is_none() && terminate.is_some());
    let (decision, terminate) = plan(&c, &name("evil.test"), 443);
    assert!(decision.allowed && decision.reason.is_some() && terminate.is_none());
}

#[test]
fn server_configs_are_cached_per_host_and_speak_http1_only() {
    let i = registry();
    let a = i.server_config("registry.example.com").unwrap();
    let b = i.server_config("registry.example.com").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert!(i.server_config("evil.test").is_err());
}

#[test]
fn the_ca_is_constrained_to_restricted_rule_hosts_and_bound_hosts() {
    let egress = EgressConfig {
        mode: Mode::Enforce,
        allow: vec![
            rule("open.example.com", None),
            rule("*.api.example.com", Some(&["GET"])),
            rule("registry.example.com", Some(&["GET"])),
        ],
    };
    let credentials = vec![
        credential("A", &["registry.example.com"], "Authorization", "x"),
        credential("B", &["upload.example.net"], "X-Token", "y"),
    ];
    let hosts = hosts_to_terminate(&egress, &credentials);
    assert_eq!(
        hosts,
        [
            "*.api.example.com",
            "registry.example.com",
            "upload.example.net"
        ]
    );
    let ca = JobCa::mint("j", &hosts).unwrap();
    assert!(ca.permits("v1.api.example.com") && ca.permits("upload.example.net"));
    assert!(!ca.permits("open.example.com"));
}

#[test]
fn responses_from_bound_hosts_only_are_scrubbed_of_secret_and_value() {
    let i = registry();
    assert!(i.bound(&name("api.example.com")).is_none());
    assert!(i
        .bound(&Host::Ip("198.51.100.10".parse().unwrap()))
        .is_none());
    let scrubber = &i
        .bound(&name("Registry.Example.COM."))
        .expect("a bound host")
        .scrubber;
    let mut body = scrubber.body();
    let mut out = body
        .push(Bytes::from_static(
            b"{\"auth\": \"Bearer s3cr3t-value-0123456789\", ",
        ))
        .to_vec();
    out.extend_from_slice(&body.push(Bytes::from_static(b"\"raw\": \"s3cr3t-value-0123456789\"}")));
    out.extend_from_slice(&body.finish());
    let expected = format!(
        "{{\"auth\": \"{}\", \"raw\": \"{}\"}}",
        "*".repeat(SECRET.len()),
        "*".repeat("s3cr3t-value-0123456789".len())
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    let hits: Vec<String> = body.new_hits().iter().map(|n| n.to_string()).collect();
    assert_eq!(hits, vec!["PROD_REGISTRY_TOKEN"]);
}
