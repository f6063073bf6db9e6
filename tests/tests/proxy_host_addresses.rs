//! The proxy is no relay to the host it runs on (DESIGN.md section 6: "the host's own
//! addresses" are refused unless a `cidr` rule allows them).
//!
//! The bed's host namespace has 198.51.100.1 and 2001:db8:100::1, both in documentation
//! ranges that the proxy otherwise dials (they play "the internet"). A service listens on
//! them in the host namespace; the test DNS answers names under the allowed
//! `*.allowed.test` with them. The proxy is started as the product starts it: the runner
//! link as the only extra internal range, no list of host addresses. Every path a job has
//! (explicit proxy, CONNECT, transparent HTTP and TLS, the DNS filter) must give the job
//! nothing and write a deny event; an address added to the host while the proxy runs is
//! refused too; a `cidr` rule for the address lets the same requests through (control);
//! and the full CLI (runner-agent with its proxy child) refuses the same.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_proxy::audit::{Kind, Source, Verdict};
use egress_proxy::origdst::Origin;
use egress_proxy::server::Proxy;
use hickory_proto::rr::RecordType;
use runner_agent_tests::agent::{describe, World as AgentWorld};
use runner_agent_tests::netbed::{self, read_response, NetBed, DNS_IP, HOST_INET_IP};
use runner_agent_tests::proxy_client::{
    answer_ips, closed, dns_query, exchange, udp_dns, ProxyWorld, PROXY_DNS,
};
use runner_agent_tests::{enforce_policy, require_privilege};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The host namespace's own IPv6 address on the internet link.
const HOST_INET6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
/// An address added to the host namespace while the proxy runs.
const LATE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

const POLICY: &str = enforce_policy!(
    r#"    - host: allowed.test
    - host: "*.allowed.test"
"#
);

/// The same, with `cidr` rules for the host's addresses on port 80.
const POLICY_WITH_CIDR: &str = enforce_policy!(
    r#"    - host: allowed.test
    - host: "*.allowed.test"
    - cidr: 198.51.100.1/32
      ports: [80]
    - cidr: 2001:db8:100::1/128
      ports: [80]
"#
);

const TLS: SocketAddr = netbed::PROXY_TLS;
const PLAIN: SocketAddr = netbed::PROXY_PLAIN;
const DNS: SocketAddr = PROXY_DNS;

/// Body of the host's service: the job must never read it.
const SECRET: &str = "HOST-SERVICE-SECRET";

/// Connections the host's service accepted: (its address, first request line).
type Hits = Arc<Mutex<Vec<(SocketAddr, String)>>>;

/// The bed and its proxy, with the connections the host's service accepted.
struct World {
    served: ProxyWorld,
    hits: Hits,
}

impl Deref for World {
    type Target = ProxyWorld;

    fn deref(&self) -> &ProxyWorld {
        &self.served
    }
}

/// A service on `addr` in the host namespace answering every connection with [`SECRET`].
fn host_service(bed: &NetBed, addr: SocketAddr, hits: Hits) {
    let listener = bed
        .host()
        .run(async move { TcpListener::bind(addr).await })
        .unwrap_or_else(|e| panic!("binding {addr} in the host namespace: {e}"));
    bed.host().spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or(0);
                let first = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                hits.lock().unwrap().push((addr, first));
                let body = format!("{SECRET}\n");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
}

/// The bed, the host's service on its own addresses (ports 80 and 443, IPv4 and IPv6),
/// names pointing at them, and a proxy started like the product starts it.
fn world(policy: &str) -> World {
    let bed = NetBed::new().expect("building the test bed");
    bed.set_name("self.allowed.test", vec![IpAddr::V4(HOST_INET_IP)]);
    bed.set_name("self6.allowed.test", vec![IpAddr::V6(HOST_INET6_IP)]);
    let hits: Hits = Arc::default();
    for ip in [IpAddr::V4(HOST_INET_IP), IpAddr::V6(HOST_INET6_IP)] {
        for port in [80, 443] {
            host_service(&bed, SocketAddr::new(ip, port), Arc::clone(&hits));
        }
    }
    // `netbed::start_proxy` lists no range for the host's addresses: runner-agent passes
    // only its runner pool, and the standalone binary nothing.
    let served = ProxyWorld::start(bed, Proxy::builder().dns_listen(DNS));
    served.set_runner_policy(policy);
    World { served, hits }
}

impl World {
    /// A deny event of `kind` for dialling `ip` ("internal address").
    fn internal_denied(&self, what: &str, kind: Kind, ip: IpAddr) {
        let e = self.deny_event(what, |e| e.kind == kind && e.ip == Some(ip));
        assert_eq!(
            e.reason.as_deref(),
            Some("internal address"),
            "{what}: {e:?}"
        );
        assert_eq!(e.source, Source::Proxy, "{what}");
    }

    fn assert_service_untouched(&self, what: &str) {
        std::thread::sleep(Duration::from_millis(100));
        let hits = self.hits.lock().unwrap().clone();
        assert!(
            hits.is_empty(),
            "{what}: the host's service was reached: {hits:?}"
        );
    }

    /// A DNS question from the runner to the proxy's filter; the addresses answered.
    fn dns(&self, id: u16, name: &str, rtype: RecordType) -> Vec<IpAddr> {
        let reply = self
            .runner(udp_dns(dns_query(id, name, rtype)))
            .unwrap_or_else(|| panic!("no DNS answer for {name}"));
        answer_ips(&reply)
    }

    /// Transparent HTTP from the runner toward `original`, naming `host`.
    fn transparent_get(&self, original: SocketAddr, host: &'static str) -> Option<(u16, String)> {
        let table = self.origdst.clone();
        self.runner(async move {
            let mut stream = netbed::connect_redirected(&table, PLAIN, original)
                .await
                .unwrap();
            let request = format!("GET /transparent HTTP/1.1\r\nHost: {host}\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            read_response(&mut stream).await
        })
    }

    /// Transparent TLS from the runner toward `original`:443 with SNI `name`; true when
    /// the proxy closes the connection.
    fn transparent_hello(&self, original: IpAddr, name: &'static str) -> bool {
        let table = self.origdst.clone();
        let hello = egress_proxy::tls::synthetic_client_hello(&[name], 16_384);
        self.runner(async move {
            let origin = Origin {
                destination: SocketAddr::new(original, 443),
                pid: Some(31337),
                comm: Some("exfil".into()),
            };
            let mut stream = netbed::connect_redirected(&table, TLS, origin)
                .await
                .unwrap();
            stream.write_all(&hello).await.unwrap();
            closed(&mut stream).await
        })
    }
}

fn get(name: &str) -> String {
    format!("GET http://{name}/explicit HTTP/1.1\r\nHost: {name}\r\n\r\n")
}

fn connect(target: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
}

#[test]
fn names_resolving_to_the_hosts_own_addresses_are_refused_on_every_path() {
    require_privilege!();
    let w = world(POLICY);
    let v4 = IpAddr::V4(HOST_INET_IP);
    let v6 = IpAddr::V6(HOST_INET6_IP);

    // Explicit proxy, absolute-form requests.
    for (name, ip) in [("self.allowed.test", v4), ("self6.allowed.test", v6)] {
        let got = w.runner(exchange(get(name)));
        assert_eq!(got.as_ref().map(|r| r.0), Some(403), "GET {name}: {got:?}");
        w.internal_denied(&format!("GET {name}"), Kind::Http, ip);
    }
    // CONNECT.
    for (target, ip) in [
        ("self.allowed.test:443", v4),
        ("self6.allowed.test:443", v6),
    ] {
        let got = w.runner(exchange(connect(target)));
        assert_eq!(
            got.as_ref().map(|r| r.0),
            Some(403),
            "CONNECT {target}: {got:?}"
        );
        w.internal_denied(&format!("CONNECT {target}"), Kind::Connect, ip);
    }
    // Transparent HTTP: a job that dials the address itself and names an allowed host.
    for (name, ip) in [("self.allowed.test", v4), ("self6.allowed.test", v6)] {
        let got = w.transparent_get(SocketAddr::new(ip, 80), name);
        assert!(
            got.as_ref()
                .is_none_or(|r| r.0 != 200 && !r.1.contains(SECRET)),
            "transparent {name}: {got:?}"
        );
        w.deny_event(&format!("transparent HTTP {name}"), |e| {
            e.kind == Kind::Http && e.host.as_deref() == Some(name) && e.ip == Some(ip)
        });
    }
    // Transparent TLS with an allowed SNI toward the host's address.
    for (name, ip) in [("self.allowed.test", v4), ("self6.allowed.test", v6)] {
        assert!(w.transparent_hello(ip, name), "transparent TLS {name}");
        w.deny_event(&format!("transparent TLS {name}"), |e| {
            e.kind == Kind::Tls && e.host.as_deref() == Some(name)
        });
    }
    // DNS: the answer is stripped, with the same event as a rebinding answer.
    for (id, name, rtype, ip) in [
        (1, "self.allowed.test.", RecordType::A, v4),
        (2, "self6.allowed.test.", RecordType::AAAA, v6),
    ] {
        let got = w.dns(id, name, rtype);
        assert!(got.is_empty(), "DNS {name} handed out {got:?}");
        let e = w.deny_event(&format!("DNS {name}"), |e| {
            e.kind == Kind::Dns && e.ip == Some(ip)
        });
        assert_eq!(
            e.reason.as_deref(),
            Some("answer points to an internal address")
        );
        assert_eq!(e.source, Source::Dns);
    }
    w.assert_service_untouched("host's own addresses");
    // Nothing of this reached the internet side either.
    assert!(w.bed.web_hits().is_empty(), "{:?}", w.bed.web_hits());
    assert!(w.bed.trap_hits().is_empty(), "{:?}", w.bed.trap_hits());
}

#[test]
fn an_address_added_to_the_host_while_the_proxy_runs_is_refused() {
    require_privilege!();
    let w = world(POLICY);
    let late = IpAddr::V4(LATE_IP);
    // The address is in no range the proxy knows and did not exist when it started: only
    // asking the kernel at decision time finds it.
    netbed::ip(&[
        "-n",
        w.bed.host_ns(),
        "addr",
        "add",
        &format!("{LATE_IP}/32"),
        "dev",
        "inet0",
    ])
    .expect("adding an address to the host namespace");
    host_service(&w.bed, SocketAddr::new(late, 80), Arc::clone(&w.hits));
    w.bed.set_name("late.allowed.test", vec![late]);
    let got = w.runner(exchange(get("late.allowed.test")));
    assert_eq!(got.as_ref().map(|r| r.0), Some(403), "{got:?}");
    w.internal_denied("GET late.allowed.test", Kind::Http, late);
    assert!(w.dns(3, "late.allowed.test.", RecordType::A).is_empty());
    w.deny_event("DNS late.allowed.test", |e| {
        e.kind == Kind::Dns && e.ip == Some(late)
    });
    w.assert_service_untouched("address added at run time");
}

#[test]
fn a_cidr_rule_for_the_hosts_address_allows_it() {
    require_privilege!();
    let w = world(POLICY_WITH_CIDR);
    for (name, ip) in [
        ("self.allowed.test", IpAddr::V4(HOST_INET_IP)),
        ("self6.allowed.test", IpAddr::V6(HOST_INET6_IP)),
    ] {
        let got = w.runner(exchange(get(name)));
        assert_eq!(got, Some((200, format!("{SECRET}\n"))), "GET {name}");
        let e = netbed::wait_for_event(&w.audit, name, |e| {
            e.verdict == Verdict::Allow && e.kind == Kind::Http && e.ip == Some(ip)
        });
        assert_eq!(e.host.as_deref(), Some(name));
    }
    assert_eq!(
        w.dns(4, "self.allowed.test.", RecordType::A),
        vec![IpAddr::V4(HOST_INET_IP)]
    );
    assert_eq!(
        w.dns(5, "self6.allowed.test.", RecordType::AAAA),
        vec![IpAddr::V6(HOST_INET6_IP)]
    );
    // The rule names port 80 only: 443 on the same address stays refused.
    let got = w.runner(exchange(connect("self.allowed.test:443")));
    assert_eq!(got.map(|r| r.0), Some(403));
    w.internal_denied(
        "CONNECT self.allowed.test:443",
        Kind::Connect,
        IpAddr::V4(HOST_INET_IP),
    );
    let hits = w.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(hits.iter().all(|(addr, _)| addr.port() == 80), "{hits:?}");
}

/// The product as a whole: runner-agent, its proxy child and the job's own DNS.
#[test]
fn the_agent_refuses_names_pointing_at_its_host() {
    require_privilege!();
    let bed = NetBed::new().expect("building the test bed");
    bed.set_name("self.allowed.test", vec![IpAddr::V4(HOST_INET_IP)]);
    bed.set_name("self6.allowed.test", vec![IpAddr::V6(HOST_INET6_IP)]);
    let hits: Hits = Arc::default();
    for ip in [IpAddr::V4(HOST_INET_IP), IpAddr::V6(HOST_INET6_IP)] {
        host_service(&bed, SocketAddr::new(ip, 80), Arc::clone(&hits));
    }
    let config = format!(
        "network:\n  upstream_dns: [{DNS_IP}]\nenvironments:\n  default:\n    egress:\n      mode: enforce\n      allow:\n        - host: allowed.test\n        - host: \"*.allowed.test\"\n"
    );
    let world = AgentWorld::in_netns(bed.host_ns(), "", &config);
    let job = world.job(
        "self.yaml",
        "name: self\nsteps:\n  - name: reach the host\n    run: |\n      set +e\n      echo \"resolved: $(getent ahosts self.allowed.test | head -n1)\"\n      curl -sS -m 10 http://self.allowed.test/self-explicit; echo\n      curl -sS -m 10 --noproxy '*' http://198.51.100.1/self-transparent -H 'Host: self.allowed.test'; echo\n      curl -sS -m 10 http://self6.allowed.test/self6-explicit; echo\n      true\n",
    );
    let (output, events) = world.run_audited(&job);
    std::thread::sleep(Duration::from_millis(300));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context = format!("{}\nevents: {events:#?}", describe(&output));
    assert!(!stdout.contains(SECRET), "{context}");
    assert!(
        !stdout.contains("resolved: 198.51.100.1"),
        "the DNS filter handed out the host's address\n{context}"
    );
    let hits = hits.lock().unwrap().clone();
    assert!(
        hits.is_empty(),
        "the host's service was reached: {hits:?}\n{context}"
    );
    for ip in ["198.51.100.1", "2001:db8:100::1"] {
        assert!(
            events.iter().any(|e| e["verdict"] == "deny"
                && e["ip"] == ip
                && e["reason"] == "internal address"),
            "no deny event for dialling {ip}\n{context}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["verdict"] == "deny" && e["source"] == "dns" && e["ip"] == "198.51.100.1"),
        "no deny event for the DNS answer\n{context}"
    );
    assert!(
        !events.iter().any(|e| e["verdict"] == "allow"
            && (e["ip"] == "198.51.100.1" || e["ip"] == "2001:db8:100::1")),
        "{context}"
    );
}
