//! Attacks on the defences added against earlier attack runs, by an attacker who knows
//! their code.
//!
//! 1. Job file limits (`proxy/src/yaml/limits.rs`): memory and time of `runner-agent
//!    check` on hostile job files that stay under the size and expansion limits.
//! 2. Step output filtering (`runner-agent/src/output/controls.rs`): what of the job's
//!    output reaches the operator's terminal around the agent's own lines.
//! 3. Method and path rules (`proxy/src/policy`): requests allowed by `methods: [GET,
//!    HEAD]`, `paths: ["/ok/*"]` that servers may read as another method, path or host.
//! 4. Claims (`runner-agent/src/config/claims.rs`): claims that pass the validators and
//!    read as something else to an approver.
//!
//! Each bypass found was fixed; the tests that showed them now check the fix.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use egress_proxy::policy::{asks_for_another_method_or_path, pattern::is_ambiguous};
use runner_agent::config::MAX_JOB_FILE_BYTES;
use runner_agent_tests::agent::{agent_binary, describe, python_step, World};
use runner_agent_tests::netbed::{allowed_test_config, settle, NetBed};
use runner_agent_tests::require_privilege;

// ------------------------------------------------------------------ 1. job file limits

/// Peak RSS (KiB), wall time and output of `runner-agent check --config CFG JOB` on
/// `text`, measured by `/usr/bin/time`.
fn check_cost(dir: &Path, name: &str, text: &str) -> (u64, f64, Output) {
    let config = dir.join("host.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {0}/state\nrun_dir: {0}/run\nenvironments:\n  default:\n    egress: {{ mode: enforce, allow: [] }}\n",
            dir.display()
        ),
    )
    .expect("config");
    let job = dir.join(format!("{name}.yaml"));
    std::fs::write(&job, text).expect("job");
    let times = dir.join(format!("{name}.time"));
    let output = Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&times)
        .args(["-f", "%M %e"])
        .arg(agent_binary())
        .args(["check", "--config"])
        .arg(&config)
        .arg(&job)
        .stdin(Stdio::null())
        .output()
        .expect("time runner-agent check");
    let measured = std::fs::read_to_string(&times).unwrap_or_default();
    let last = measured.lines().last().unwrap_or("0 0").to_owned();
    let mut parts = last.split_whitespace();
    let rss = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let secs = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (rss, secs, output)
}

/// `unit` repeated so that `head + units + tail` stays within the job file limit.
fn fill(head: &str, unit: &str, tail: &str) -> String {
    let room = MAX_JOB_FILE_BYTES as usize - head.len() - tail.len();
    format!("{head}{}{tail}", unit.repeat(room / unit.len()))
}

/// Hostile job files at the size limit. The loader (serde_yaml) turns the whole document
/// into events before the expansion walk runs, so a file of tiny nodes costs about a
/// hundred bytes an event whatever the walk decides afterwards: the size limit is what
/// bounds it.
fn hostile_job_files() -> Vec<(&'static str, String)> {
    vec![
        // Control: an ordinary job file.
        ("control", "steps:\n  - run: echo hi\n".to_owned()),
        // Flow sequence of explicit empty keys: `?` makes a one-pair mapping, four
        // events (start, empty key, empty value, end) for two bytes.
        ("flow_qmark", fill("steps: [", "?,", "]\n")),
        // Flow mapping of empty keys.
        ("flow_map_qmark", fill("steps: {", "?,", "}\n")),
        // Flow sequence of one-letter scalars.
        ("flow_scalars", fill("steps: [", "a,", "]\n")),
        // Block nesting by indentation: no `[` or `{` for the nesting check to count.
        ("block_dash", fill("steps:\n", "- ", "x\n")),
        ("block_qmark", fill("steps:\n", "? ", "x\n")),
        // The flow nesting limit reached, then a million tokens inside it.
        (
            "flow256_wide",
            fill(
                &format!("steps: {}", "[".repeat(256)),
                "a,",
                &format!("{}\n", "]".repeat(256)),
            ),
        ),
        // A second document after a valid first one.
        (
            "multi_doc",
            fill("steps: [ { run: x } ]\n---\n[", "?,", "]\n"),
        ),
        // Tags on every node.
        ("tags", fill("steps: [", "!a ,", "]\n")),
        // Anchors on every node.
        ("anchors", fill("steps: [", "&a x,", "]\n")),
    ]
}

/// A job file of tiny nodes at the size limit keeps `check` (and `run`, which parses the
/// same way as root before any limit applies) under 100 MB and 10 s; at 1 MiB such a
/// file once took 220 MB.
#[test]
fn hostile_job_files_at_the_limit_cost_the_agent_little() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut over = Vec::new();
    for (name, text) in hostile_job_files() {
        let started = Instant::now();
        let (rss_kib, secs, output) = check_cost(dir.path(), name, &text);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(160)
            .collect::<String>();
        println!(
            "YAML {name:<16} bytes={:>8} rss={:>7} KiB time={secs:>5.2}s wall={:.2}s exit={:?} :: {first}",
            text.len(),
            rss_kib,
            started.elapsed().as_secs_f64(),
            output.status.code()
        );
        assert!(text.len() as u64 <= MAX_JOB_FILE_BYTES);
        if rss_kib > 100 * 1024 || secs > 10.0 {
            over.push(format!("{name}: {rss_kib} KiB, {secs} s"));
        }
    }
    assert!(over.is_empty(), "over 100 MB or 10 s: {over:#?}");
}

// ------------------------------------------------------------------ 2. step output

/// What the agent's stdout holds of `bytes` written by a job, through the product's
/// writer (masking and control filter), followed by an agent line.
fn through_writer(chunks: &[&[u8]]) -> Vec<u8> {
    use runner_agent::mask::Masker;
    use runner_agent::output::MaskedWriter;
    use tokio::io::AsyncWriteExt;

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (sink, mut read_end) = tokio::io::duplex(1 << 20);
        let masker = Masker::new(std::iter::empty::<&[u8]>());
        let mut out = MaskedWriter::new(sink, &masker);
        for chunk in chunks {
            out.write_all(chunk).await.expect("write");
        }
        out.end_line().await.expect("end line");
        out.write_all(b"<== AGENT-LINE\n").await.expect("agent");
        out.end_line().await.expect("end line");
        drop(out);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut read_end, &mut got)
            .await
            .expect("read");
        got
    })
}

/// Held: every ESC other than an SGR's is shown, C1 controls are replaced, a style is
/// reset and a line ended before the agent's line, whatever the split.
#[test]
fn output_escapes_that_could_hide_the_agent_line_are_defused() {
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("conceal", vec![b"x\x1b[8m"]),
        ("conceal-split", vec![b"x\x1b", b"[", b"8", b"m"]),
        ("unterminated-sgr", vec![b"x\x1b[38;2;0;0"]),
        ("sgr-then-cursor", vec![b"\x1b[8m\x1b[1A\x1b[2K"]),
        ("osc-title", vec![b"\x1b]0;title\x07"]),
        ("dcs", vec![b"\x1bP1$r\x1b\\"]),
        ("csi-c1", vec!["\u{9b}1A\u{9d}0;x\u{7}".as_bytes()]),
        ("cr-bs", vec![b"xxxxxxxxxxxx\r\x08\x08"]),
        ("rlo-no-newline", vec!["\u{202e}enil-TNEGA ==<".as_bytes()]),
        (
            "huge-sgr",
            vec![format!("\x1b[{}m", "9;".repeat(200)).leak().as_bytes()],
        ),
        ("colon-sgr", vec![b"\x1b[38:2::255:0:0:8m"]),
    ];
    let mut bad = Vec::new();
    for (name, chunks) in cases {
        let got = through_writer(&chunks);
        let text = String::from_utf8_lossy(&got).into_owned();
        println!("OUT {name:<18} {text:?}");
        let at = text.find("<== AGENT-LINE").expect("agent line");
        let before = &text[..at];
        // The agent line starts a line, and no style or non-SGR sequence is live there.
        if !before.is_empty() && !before.ends_with('\n') {
            bad.push(format!(
                "{name}: agent line does not start a line: {text:?}"
            ));
        }
        let live_esc = before.matches('\u{1b}').count();
        let sgrs = before.matches("\u{1b}[").count();
        if live_esc != sgrs {
            bad.push(format!("{name}: a non-SGR ESC passed: {text:?}"));
        }
        if sgrs > 0 && !before.trim_end_matches('\n').ends_with("\u{1b}[0m") {
            bad.push(format!("{name}: no reset before the agent line: {text:?}"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Once a finding (now fixed): C0 shift-out (SO, 0x0E) passes and nothing shifts back in
/// before the agent's lines; on the Linux console (G1 is the DEC graphics set) the
/// trailer and summary then print as line-drawing glyphs. xterm and VTE start with G1 =
/// ASCII, so they are not affected.
#[test]
fn shift_out_never_reaches_the_terminal_before_the_agent_line() {
    let got = through_writer(&[b"job output\x0e"]);
    println!("OUT {:?}", String::from_utf8_lossy(&got));
    let at = got
        .windows(14)
        .position(|w| w == b"<== AGENT-LINE")
        .expect("agent line");
    let before = &got[..at];
    let so = before.iter().rposition(|&b| b == 0x0e);
    let si = before.iter().rposition(|&b| b == 0x0f);
    assert!(
        so.is_none() || si > so,
        "SO reaches the terminal with no SI before the agent line"
    );
}

/// Held (end to end, real sandbox): a job's output, background writers and escapes do
/// not land after its step's trailer or after the summary.
#[test]
fn output_in_a_real_sandbox_keeps_the_agent_lines_last() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "rt7out.yaml",
        r#"name: rt7out
steps:
  - name: first
    run: |
      (sleep 1; printf 'BG-FROM-FIRST\033[8m\033]0;x') &
      printf 'one\033[30;40m\033[8m\016\342\200\256\033'
  - name: second
    run: |
      sleep 3
      printf 'two\033[38;2;1;2;3'
  - name: third
    run: |
      (trap '' HUP TERM; for i in 1 2 3 4 5 6 7 8 9 10; do printf 'AFTER-TRAILER\n'; sleep 0.3; done) &
      printf 'three\n'
"#,
    );
    let output = world.run(&job);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{}", describe(&output));
    println!("RAW {stdout:?}");
    world.assert_job_left_nothing(&output);
    // Every agent line starts a line, with no live non-SGR ESC before it.
    for marker in [
        "==> [2/3]",
        "<== [1/3]",
        "<== [2/3]",
        "<== [3/3]",
        "\nJob rt7out",
    ] {
        let at = stdout
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} missing"));
        let before = &stdout[..at];
        assert!(
            before.ends_with('\n') || marker.starts_with('\n'),
            "{marker} does not start a line"
        );
        assert_eq!(
            before.matches('\u{1b}').count(),
            before.matches("\u{1b}[").count(),
            "non-SGR ESC before {marker}"
        );
    }
    let summary = stdout.find("\nJob rt7out").expect("summary");
    assert!(
        !stdout[summary..].contains("AFTER-TRAILER"),
        "a background writer printed after the summary"
    );
    let third = stdout.find("<== [3/3]").expect("trailer 3");
    assert!(!stdout[third..summary].contains("AFTER-TRAILER"));
}

// ------------------------------------------------------------------ 3. methods and paths

/// Once a finding (now fixed): characters that Windows code pages map onto `\` (the yen sign
/// U+00A5 in code page 932, the won sign U+20A9 in 949, and their fullwidth forms, which
/// NFKC maps to them) and the halfwidth ideographic full stop U+FF61 (a label dot for
/// IDNA, like U+3002, which is listed) are not "ambiguous": `/ok/..¥..¥x` matches
/// `/ok/*`, and an ANSI-API server on a Japanese Windows reads it as `/ok/../../x`.
#[test]
fn best_fit_backslashes_are_ambiguous() {
    let pattern = egress_proxy::policy::pattern::PathPattern::new("/ok/*").expect("pattern");
    let mut passed = Vec::new();
    for path in [
        "/ok/..\u{a5}..\u{a5}admin",
        "/ok/..%C2%A5..%C2%A5admin",
        "/ok/..\u{20a9}..\u{20a9}admin",
        "/ok/..\u{ffe5}..\u{ffe5}admin",
        "/ok/..\u{ffe6}admin",
        "/ok/\u{ff61}\u{ff61}\u{a5}admin",
        "/ok/%EF%BD%A1%EF%BD%A1%E2%88%95admin",
    ] {
        let ambiguous = is_ambiguous(path);
        let matched = pattern.matches(path);
        println!("PATH {path:<40} ambiguous={ambiguous} matches /ok/*={matched}");
        if matched {
            passed.push(path);
        }
    }
    // Controls: what the defence lists is refused.
    assert!(is_ambiguous("/ok/..\u{ff3c}admin"));
    assert!(is_ambiguous("/ok/..\u{2216}admin"));
    assert!(passed.is_empty(), "allowed by /ok/*: {passed:#?}");
}

/// Once a finding (now fixed): override spellings that frameworks honour and the check misses.
#[test]
fn override_spellings_frameworks_honour_are_flagged() {
    let mut missed = Vec::new();
    let header_cases: &[&str] = &[
        // RFC 7239: the standard form of X-Forwarded-Host (Rack 3, Spring, ASP.NET).
        "forwarded",
        "x-forwarded-server",
        "x-original-method",
        "x-forwarded-prefix",
        "x-forwarded-uri",
        "x-original-uri",
        "x-envoy-original-path",
        // Control, listed.
        "X_Http_Method_Override",
    ];
    for name in header_cases {
        let seen = asks_for_another_method_or_path([*name].into_iter(), "/ok/x");
        println!("HEADER {name:<24} flagged={seen}");
        if !seen {
            missed.push((*name).to_owned());
        }
    }
    let query_cases: &[&str] = &[
        // PHP decodes names, turns a leading `.`/space/`[` into `_`, drops leading spaces.
        "/ok/x?_%6Dethod=DELETE",
        "/ok/x?%5F%6D%65%74%68%6F%64=DELETE",
        "/ok/x?.method=DELETE",
        "/ok/x?+_method=DELETE",
        "/ok/x?%20_method=DELETE",
        "/ok/x?[method=DELETE",
        // `;` separates parameters for Go < 1.17, Python < 3.9.2 and others.
        "/ok/x?a=1;_method=DELETE",
        // Control, listed.
        "/ok/x?_METHOD=DELETE",
    ];
    for path in query_cases {
        let seen = asks_for_another_method_or_path(std::iter::empty(), path);
        println!("QUERY {path:<40} flagged={seen}");
        if !seen {
            missed.push((*path).to_owned());
        }
    }
    // The two controls are flagged; everything else is missed.
    assert!(missed.is_empty(), "not flagged: {missed:#?}");
}

const RESTRICTED: &str = "        - host: second.test\n          methods: [GET, HEAD]\n          paths: [\"/ok/*\"]\n        - host: second.test\n          methods: [POST]\n          paths: [\"/post/*\"]\n";

const OVERRIDES: &str = r#"
R = "second.test"
C = "Connection: close\r\n"
def req(chan, method, path, headers=""):
    target = ("http://" + R + path) if chan == "e" else path
    return ("%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n" % (method, target, R, headers, C)).encode("utf-8")
W2 = ("198.51.100.11", 80)
CASES = [
    ("GET", "/ok/..\u00a5..\u00a5rt7-yen", ""),
    ("GET", "/ok/..%C2%A5..%C2%A5rt7-yenpct", ""),
    ("GET", "/ok/..\u20a9rt7-won", ""),
    ("GET", "/ok/\uff61\uff61\u00a5rt7-ff61", ""),
    ("GET", "/ok/rt7-q1?_%6Dethod=DELETE", ""),
    ("GET", "/ok/rt7-q2?.method=DELETE", ""),
    ("GET", "/ok/rt7-q3?a=1;_method=DELETE", ""),
    ("POST", "/post/rt7-q4?.method=DELETE", "Content-Length: 0\r\n"),
    ("POST", "/post/rt7-q5?_%6Dethod=DELETE", "Content-Length: 0\r\n"),
    ("GET", "/ok/rt7-h1", "Forwarded: host=evil.test;proto=https\r\n"),
    ("GET", "/ok/rt7-h2", "X-Original-Method: DELETE\r\n"),
    ("GET", "/ok/rt7-h3", "X-Forwarded-Prefix: /admin\r\n"),
    ("GET", "/ok/rt7-h4", "X-Original-URI: /admin\r\n"),
    ("GET", "/ok/rt7-h5", "X-Foo: a\r\n X-HTTP-Method-Override: DELETE\r\n"),
    ("GET", "/ok/rt7-h6", "X.HTTP.Method.Override: DELETE\r\n"),
    ("GET", "/ok/rt7-h7", "X-HTTP-Method-Override : DELETE\r\n"),
    ("POST", "/post/rt7-h8", "Content-Length: 0\r\nX-HTTP-Method-Override: DELETE\r\n"),
    ("GET", "/ok/rt7-ctl", ""),
]
for chan in ("e", "t"):
    for method, path, headers in CASES:
        data = req(chan, method, path, headers)
        out = raw(E if chan == "e" else W2, data, wait=1.0)
        print("ATTEMPT", chan, method, repr(path), repr(headers), "->", statuses(out) or repr(out[:80]), flush=True)
print("DONE-RT7", flush=True)
"#;

/// [`OVERRIDES`] through the explicit proxy and transparent HTTP: only the control GET
/// reaches the bed's server, and every refusal is recorded.
#[test]
fn override_and_lookalike_requests_never_reach_the_server() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let world = World::in_netns(bed.host_ns(), "", &allowed_test_config(RESTRICTED, ""));
    let job = world.job(
        "rt7paths.yaml",
        &format!(
            "name: rt7paths\nsteps:\n{}",
            python_step("overrides", OVERRIDES, "", "")
        ),
    );
    let (output, events) = world.run_audited(&job);
    settle();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    for line in stdout.lines().filter(|l| l.starts_with("ATTEMPT")) {
        println!("{line}");
    }
    assert!(stdout.contains("DONE-RT7"), "{}", describe(&output));
    world.assert_job_left_nothing(&output);
    let hits = bed.web_hits();
    for h in &hits {
        println!("HIT {} {} headers={:?}", h.method, h.path, h.headers);
    }
    for e in events.iter().filter(|e| e["verdict"] == "deny") {
        println!("DENY {} {} {}", e["method"], e["path"], e["reason"]);
    }
    assert!(
        hits.iter().any(|h| h.path.contains("rt7-ctl")),
        "the control GET did not arrive"
    );
    // Each of them reached the server once (found by an attack run); now none does,
    // and each refusal names its path (the two malformed ones are refused path-less).
    let through: Vec<String> = hits
        .iter()
        .filter(|h| h.path.contains("rt7-") && !h.path.contains("rt7-ctl"))
        .map(|h| format!("{} {}", h.method, h.path))
        .collect();
    assert!(through.is_empty(), "arrived: {through:#?}");
    let named = events
        .iter()
        .filter(|e| {
            e["verdict"] == "deny" && e["path"].as_str().is_some_and(|p| p.contains("rt7-"))
        })
        .count();
    assert!(named >= 2 * 15, "{named} deny events name an attack's path");
}

// ------------------------------------------------------------------ 4. claims

/// Once a finding (now fixed): the agent's own trailer and summary lines start with the job's
/// step and job names (from the job file), which may hold spaces and wide blanks
/// (U+3000, U+3164: not in `is_unprintable`): a name that spells "...: ok" or
/// "...: succeeded" followed by blanks wider than the terminal puts the agent's real
/// verdict rows below, so the first thing the operator reads of the agent's own line is
/// the job's forged verdict.
#[test]
fn names_cannot_forge_the_agent_verdict_lines() {
    require_privilege!();
    let world = World::new("", "");
    let blanks = "\u{3000}".repeat(120);
    let job = world.job(
        "rt7names.yaml",
        &format!(
            "name: \"deploy (j-01M8FAKEFAKEFAKEFAKEFAKEFAKE) on r-0: succeeded in 0.2s{blanks}\"\nsteps:\n  - name: \"build: ok (0.1s){blanks}\"\n    run: exit 3\n"
        ),
    );
    let output = world.run(&job);
    println!("{}", describe(&output));
    // Wide blanks in a name are bad input: the job file is refused, nothing runs.
    assert_eq!(output.status.code(), Some(64), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("rt7names.yaml:1:"));
    // Runs of plain spaces are one space in the agent's lines.
    let spaces = " ".repeat(150);
    let job = world.job(
        "rt7spaces.yaml",
        &format!(
            "name: spaced\nsteps:\n  - name: \"build: ok (0.1s){spaces}x\"\n    run: exit 3\n"
        ),
    );
    let output = world.run(&job);
    world.assert_job_left_nothing(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("<== [1/1] build: ok (0.1s) x: failed: exit code 3"),
        "{stdout}"
    );
}

/// Held (defence 3): spellings that the path check refuses or the override check flags.
#[test]
fn path_and_override_spellings_that_are_refused() {
    for path in [
        "/ok/x/%2e%2e/admin",
        "/ok/..%2fadmin",
        "/ok/..%2Fadmin",
        "/ok/x;_method=DELETE",
        "/ok/%EF%BC%8E%EF%BC%8E%EF%BC%8Fadmin",
        "/ok/\u{2024}\u{2024}\u{2215}admin",
        "/ok/\u{fe52}\u{fe52}\u{fe68}admin",
        "/ok/\u{2025}\u{ff3c}admin",
        "/ok/%c0%ae%c0%aeadmin",
        "/ok/%ff",
        "/ok/%u002e",
        "/ok/..",
        "/ok/x%00",
        "/ok/\u{3002}\u{3002}\u{29f8}admin",
    ] {
        println!("PATH {path:<40} ambiguous={}", is_ambiguous(path));
        assert!(is_ambiguous(path), "{path} passed");
    }
    for (headers, path) in [
        (vec!["X-HTTP-Method-Override"], "/ok/x"),
        (vec!["x_http_method"], "/ok/x"),
        (vec!["X-Forwarded-Host"], "/ok/x"),
        (vec!["x-host"], "/ok/x"),
        (vec![], "/ok/x?a=1&_method=PUT"),
        (vec![], "/ok/x?%5fmethod=PUT"),
        (vec![], "/ok/x?%5Fmethod=PUT"),
    ] {
        assert!(
            asks_for_another_method_or_path(headers.iter().copied(), path),
            "{headers:?} {path} not flagged"
        );
    }
}

/// Once a finding (now fixed): `;`, `?` and `#` are refused raw (and as Unicode look-alikes) but
/// pass percent-encoded: `is_ambiguous` checks decoded characters only when they are not
/// ASCII. A server that decodes before splitting (Apache mod_rewrite's `%3F`, Orange
/// Tsai's "Confusion Attacks"; servlet filters that decode, then strip `;` parameters)
/// reads `/ok/admin%3F.json` as `/ok/admin`, outside a `/ok/*.json` rule.
#[test]
fn encoded_delimiters_are_ambiguous() {
    let pattern = egress_proxy::policy::pattern::PathPattern::new("/ok/*.json").expect("pattern");
    let mut passed = Vec::new();
    for path in [
        "/ok/admin%3F.json",
        "/ok/admin%3f.json",
        "/ok/admin%23.json",
        "/ok/admin%3B.json",
        "/ok/x%3b_method=DELETE",
    ] {
        let matched = pattern.matches(path);
        println!(
            "PATH {path:<28} ambiguous={} matches /ok/*.json={matched}",
            is_ambiguous(path)
        );
        if !is_ambiguous(path) {
            passed.push(path);
        }
    }
    // Controls: the raw forms are refused.
    assert!(!pattern.matches("/ok/admin;.json"));
    assert!(is_ambiguous("/ok/admin;.json"));
    assert!(passed.is_empty(), "not ambiguous: {passed:?}");
}
