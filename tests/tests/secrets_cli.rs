//! `runner-agent secrets` end to end: the real binary on a store of its own.
//!
//! Each test writes a host config into a fresh temporary directory whose `state_dir`
//! lies inside it, and runs `runner-agent secrets --config` on it. They check what an
//! operator sees (output, errors, exit codes), that values never reach the disk or the
//! output in any recognisable form, and that failures lose nothing: after every
//! refused or failed command the store's files are byte for byte what they were.
//!
//! The command requires root, so these tests do too.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use runner_agent_tests::agent::{agent_binary, files_under, output_with_stdin};
use runner_agent_tests::require_privilege;

/// A host config and its store in a temporary directory.
struct Store {
    dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::Builder::new()
            .prefix("ra-secrets-")
            .tempdir()
            .unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("host.yaml");
        fs::write(
            &config,
            format!(
                "state_dir: {}\nrun_dir: {}\nenvironments:\n  ci:\n    secrets:\n      \
                 DEV_TOKEN: {{ deliver: env }}\n      KEY: {{ deliver: file }}\n  release:\n    \
                 egress: {{ mode: enforce, allow: [ {{ host: registry.example.com }} ] }}\n    \
                 secrets:\n      PROD_TOKEN: {{ deliver: proxy, hosts: [registry.example.com], \
                 header: Authorization, format: \"Bearer {{secret}}\" }}\n",
                state.display(),
                dir.path().join("run").display()
            ),
        )
        .unwrap();
        Store { dir, config, state }
    }

    /// Runs `runner-agent secrets ARGS --config HOST.yaml` with `stdin`.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_secrets(&self.config, args, stdin, None)
    }

    /// `secrets set ENV NAME` with `value` on stdin; returns the printed fingerprint.
    fn set(&self, env: &str, name: &str, value: &[u8]) -> String {
        let out = self.run(&["set", env, name], value);
        assert_ok(&out);
        fingerprint_in(&stdout(&out), &format!("set {env}/{name} (fingerprint "))
    }

    fn value_file(&self, env: &str, name: &str) -> PathBuf {
        self.state
            .join(format!("secrets/values/{env}/{name}.secret"))
    }

    fn key_file(&self, env: &str) -> PathBuf {
        self.state.join(format!("secrets/keys/{env}.key"))
    }

    /// Every file under state_dir with its content.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        files_under(&self.state)
    }
}

fn run_secrets(config: &Path, args: &[&str], stdin: &[u8], uid: Option<u32>) -> Output {
    let mut command = Command::new(agent_binary());
    command
        .arg("secrets")
        .args(args)
        .arg("--config")
        .arg(config);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    // A refused command may exit before reading: output_with_stdin does not count the
    // broken pipe as a failure.
    output_with_stdin(&mut command, stdin).expect("runner-agent starts")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

fn assert_exit(out: &Output, code: i32, says: &[&str]) {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
    let err = stderr(out);
    for fragment in says {
        assert!(err.contains(fragment), "expected {fragment:?} in: {err}");
    }
}

/// The `hmac-sha256:…` fingerprint following `after` in `text`.
fn fingerprint_in(text: &str, after: &str) -> String {
    let start = text
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} in {text}"))
        + after.len();
    let fingerprint: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ':')
        .collect();
    assert!(fingerprint.starts_with("hmac-sha256:"), "{text}");
    assert_eq!(fingerprint.len(), "hmac-sha256:".len() + 16, "{text}");
    fingerprint
}

/// The `list` line of `env` `name`, split into columns.
fn list_row(listing: &str, env: &str, name: &str) -> Vec<String> {
    listing
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|cols| cols.len() >= 3 && cols[0] == env && cols[1] == name)
        .unwrap_or_else(|| panic!("no row {env} {name} in:\n{listing}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn set_from_stdin_and_file_list_and_remove() {
    require_privilege!();
    let store = Store::new();
    let token = store.set("ci", "DEV_TOKEN", b"dev-token-value\n");
    // One trailing newline is not part of the value: the same value without it has the
    // same fingerprint (another name, same environment, same key).
    assert_eq!(store.set("ci", "OTHER", b"dev-token-value"), token);

    let file = store.dir.path().join("key.pem");
    fs::write(&file, b"-----BEGIN KEY-----\nabc\n-----END KEY-----\r\n").unwrap();
    let out = store.run(
        &["set", "ci", "KEY", "--from-file", file.to_str().unwrap()],
        b"",
    );
    assert_ok(&out);
    let key = fingerprint_in(&stdout(&out), "set ci/KEY (fingerprint ");
    assert_ne!(key, token);

    let out = store.run(&["list"], b"");
    assert_ok(&out);
    let listing = stdout(&out);
    assert_eq!(
        list_row(&listing, "ci", "DEV_TOKEN"),
        ["ci", "DEV_TOKEN", "env", &token]
    );
    assert_eq!(list_row(&listing, "ci", "KEY"), ["ci", "KEY", "file", &key]);
    assert_eq!(
        list_row(&listing, "release", "PROD_TOKEN"),
        ["release", "PROD_TOKEN", "proxy", "not", "set"]
    );
    // Set but not declared in the config: listed with a note, delivery unknown.
    let other = list_row(&listing, "ci", "OTHER");
    assert_eq!(other[..4], ["ci", "OTHER", "-", &token]);
    assert!(listing.contains("not declared"), "{listing}");
    for value in ["dev-token-value", "BEGIN KEY"] {
        assert!(!listing.contains(value), "{listing}");
        assert!(!stderr(&out).contains(value));
    }

    let out = store.run(&["list", "release"], b"");
    assert_ok(&out);
    assert!(!stdout(&out).contains("DEV_TOKEN"), "{}", stdout(&out));

    let out = store.run(&["rm", "ci", "DEV_TOKEN"], b"");
    assert_ok(&out);
    assert_eq!(stdout(&out), "removed ci/DEV_TOKEN\n");
    assert!(!store.value_file("ci", "DEV_TOKEN").exists());
    let listing = stdout(&store.run(&["list", "ci"], b""));
    assert_eq!(
        list_row(&listing, "ci", "DEV_TOKEN"),
        ["ci", "DEV_TOKEN", "env", "not", "set"]
    );
    assert_eq!(list_row(&listing, "ci", "KEY")[3], key);
}

#[test]
fn set_replaces_the_value() {
    require_privilege!();
    let store = Store::new();
    let first = store.set("ci", "DEV_TOKEN", b"first-value");
    let second = store.set("ci", "DEV_TOKEN", b"second-value");
    assert_ne!(first, second);
    let listing = stdout(&store.run(&["list", "ci"], b""));
    assert_eq!(list_row(&listing, "ci", "DEV_TOKEN")[3], second);
    // The same value again gives the same fingerprint: it is keyed, not random.
    assert_eq!(store.set("ci", "DEV_TOKEN", b"first-value"), first);
}

#[test]
fn no_form_of_the_value_reaches_the_disk() {
    require_privilege!();
    let store = Store::new();
    let value = b"Plaintext Canary/4711+x?";
    store.set("ci", "DEV_TOKEN", value);
    store.set("ci", "DEV_TOKEN", value);
    store.set("release", "PROD_TOKEN", value);
    // The raw value, its base64 (both alphabets, every alignment), percent-encoded and
    // JSON forms: none appears in any file.
    let forms = runner_agent::mask::forms(value);
    assert!(forms.len() > 5);
    let files = store.snapshot();
    assert_eq!(files.len(), 4, "{:?}", files.keys());
    for (path, bytes) in &files {
        for form in &forms {
            assert!(
                !contains(bytes, form),
                "{} contains {:?}",
                path.display(),
                form
            );
        }
    }
}

#[test]
fn unknown_environment_is_refused_and_changes_nothing() {
    require_privilege!();
    let store = Store::new();
    store.set("ci", "DEV_TOKEN", b"value");
    let before = store.snapshot();
    let config = store.config.display().to_string();
    let defined = "(defined: ci, release)";
    for args in [
        &["set", "staging", "DEV_TOKEN"][..],
        &["rm", "staging", "DEV_TOKEN"],
        &["list", "staging"],
    ] {
        let out = store.run(args, b"value\n");
        assert_exit(
            &out,
            64,
            &["environment `staging` is not defined in", &config, defined],
        );
    }
    assert_eq!(store.snapshot(), before);
    assert!(!store.state.join("secrets/values/staging").exists());
}

#[test]
fn secrets_of_environments_missing_from_the_config() {
    require_privilege!();
    let store = Store::new();
    // A name the environment does not declare: stored, with a warning.
    let out = store.run(&["set", "release", "EXTRA"], b"extra-value");
    assert_ok(&out);
    assert!(
        stderr(&out).contains("warning: environment release in")
            && stderr(&out).contains("does not declare EXTRA"),
        "{}",
        stderr(&out)
    );
    let extra = fingerprint_in(&stdout(&out), "(fingerprint ");
    // The environment then disappears from the config: its values are still listed
    // (and can be removed), marked as such; nothing is lost.
    let text = fs::read_to_string(&store.config).unwrap();
    let release_at = text.find("  release:").unwrap();
    fs::write(&store.config, &text[..release_at]).unwrap();
    let out = store.run(&["list"], b"");
    assert_ok(&out);
    let row = list_row(&stdout(&out), "release", "EXTRA");
    assert_eq!(row[..4], ["release", "EXTRA", "-", &extra]);
    assert!(
        stdout(&out).contains("(environment not in"),
        "{}",
        stdout(&out)
    );
    // Setting a value for it is refused (jobs could never receive it).
    let before = store.snapshot();
    let out = store.run(&["set", "release", "EXTRA"], b"new");
    assert_exit(
        &out,
        64,
        &["environment `release` is not defined", "(defined: ci)"],
    );
    assert_eq!(store.snapshot(), before);
    assert_ok(&store.run(&["rm", "release", "EXTRA"], b""));
    assert!(!store.value_file("release", "EXTRA").exists());
}

#[test]
fn bad_names_and_values_are_refused_and_change_nothing() {
    require_privilege!();
    let store = Store::new();
    store.set("ci", "DEV_TOKEN", b"value");
    let before = store.snapshot();
    let cases: [(&[&str], &[u8], &str); 6] = [
        (
            &["set", "ci", "dev_token"],
            b"v",
            "`dev_token` is not a valid secret name",
        ),
        (&["set", "ci", "../KEY"], b"v", "is not a valid secret name"),
        (
            &["set", "ci", "KEY"],
            b"",
            "the value read from stdin is empty",
        ),
        (
            &["set", "ci", "KEY"],
            b"\r\n",
            "the value read from stdin is empty",
        ),
        (&["rm", "ci", "KEY"], b"", "secret ci/KEY is not set"),
        (
            &["set", "ci", "KEY", "argv-secret-value"],
            b"v",
            "never taken from the command line",
        ),
    ];
    for (args, stdin, says) in cases {
        let out = store.run(args, stdin);
        assert_exit(&out, 64, &[says]);
        // A value given on the command line is not echoed back.
        assert!(
            !stderr(&out).contains("argv-secret-value"),
            "{}",
            stderr(&out)
        );
    }
    let empty_file = store.dir.path().join("empty");
    fs::write(&empty_file, b"\n").unwrap();
    let out = store.run(
        &[
            "set",
            "ci",
            "KEY",
            "--from-file",
            empty_file.to_str().unwrap(),
        ],
        b"",
    );
    assert_exit(&out, 64, &["the value read from", "empty"]);
    let missing = store.dir.path().join("missing");
    let out = store.run(
        &["set", "ci", "KEY", "--from-file", missing.to_str().unwrap()],
        b"",
    );
    assert_exit(&out, 1, &["cannot read", "missing"]);
    assert_eq!(store.snapshot(), before);
}

#[test]
fn a_corrupted_value_file_is_reported_and_nothing_else_is_lost() {
    require_privilege!();
    let store = Store::new();
    store.set("ci", "DEV_TOKEN", b"dev-value");
    let key = store.set("ci", "KEY", b"key-value");
    let prod = store.set("release", "PROD_TOKEN", b"prod-value");
    let path = store.value_file("ci", "DEV_TOKEN");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let before = store.snapshot();

    let out = store.run(&["list"], b"");
    assert_exit(
        &out,
        1,
        &[&path.display().to_string(), "is corrupted", "truncated"],
    );
    let listing = stdout(&out);
    assert_eq!(list_row(&listing, "ci", "DEV_TOKEN")[3], "unreadable");
    assert_eq!(list_row(&listing, "ci", "KEY")[3], key);
    assert_eq!(list_row(&listing, "release", "PROD_TOKEN")[3], prod);
    assert_eq!(store.snapshot(), before, "list changed the store");

    // Bad magic is named as such.
    fs::write(&path, b"not a secret file at all, but long enough").unwrap();
    let out = store.run(&["list", "ci"], b"");
    assert_exit(&out, 1, &["bad magic"]);
    // Setting the value again repairs it; the other values are untouched.
    store.set("ci", "DEV_TOKEN", b"dev-value");
    assert_ok(&store.run(&["list"], b""));
    assert_eq!(
        fs::read(store.value_file("release", "PROD_TOKEN")).unwrap(),
        before[&store.value_file("release", "PROD_TOKEN")]
    );
}

#[test]
fn a_wrong_key_fails_authentication_and_loses_nothing() {
    require_privilege!();
    let store = Store::new();
    let dev = store.set("ci", "DEV_TOKEN", b"dev-value");
    let prod = store.set("release", "PROD_TOKEN", b"prod-value");
    let ci_key = fs::read(store.key_file("ci")).unwrap();
    // Swap in the release environment's key.
    fs::copy(store.key_file("release"), store.key_file("ci")).unwrap();
    let before = store.snapshot();

    let out = store.run(&["list"], b"");
    assert_exit(
        &out,
        1,
        &[
            "the value of ci/DEV_TOKEN",
            "cannot be decrypted with the key of environment ci",
            "wrong key or the file was altered",
            &store.key_file("ci").display().to_string(),
        ],
    );
    assert_eq!(list_row(&stdout(&out), "ci", "DEV_TOKEN")[3], "unreadable");
    assert_eq!(list_row(&stdout(&out), "release", "PROD_TOKEN")[3], prod);
    assert_eq!(store.snapshot(), before);

    // Restoring the right key brings everything back, fingerprints included.
    fs::write(store.key_file("ci"), &ci_key).unwrap();
    let out = store.run(&["list"], b"");
    assert_ok(&out);
    assert_eq!(list_row(&stdout(&out), "ci", "DEV_TOKEN")[3], dev);
    assert_eq!(list_row(&stdout(&out), "release", "PROD_TOKEN")[3], prod);
}

#[test]
fn a_value_file_moved_to_another_name_does_not_decrypt() {
    require_privilege!();
    let store = Store::new();
    store.set("ci", "DEV_TOKEN", b"dev-value");
    store.set("ci", "KEY", b"key-value");
    fs::copy(
        store.value_file("ci", "DEV_TOKEN"),
        store.value_file("ci", "KEY"),
    )
    .unwrap();
    let out = store.run(&["list", "ci"], b"");
    assert_exit(
        &out,
        1,
        &["the value of ci/KEY", "wrong key or the file was altered"],
    );
}

#[test]
fn the_store_is_private() {
    require_privilege!();
    use std::os::unix::fs::MetadataExt;
    let store = Store::new();
    store.set("ci", "DEV_TOKEN", b"v");
    let secrets = store.state.join("secrets");
    for dir in [
        secrets.clone(),
        secrets.join("keys"),
        secrets.join("values"),
        secrets.join("values/ci"),
    ] {
        let meta = fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
        assert_eq!(meta.uid(), 0, "{}", dir.display());
    }
    for file in store.snapshot().keys() {
        let meta = fs::metadata(file).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600, "{}", file.display());
        assert_eq!(meta.uid(), 0, "{}", file.display());
    }
    // A store opened up to others is refused, not used.
    fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = store.run(&["list"], b"");
    assert_exit(&out, 1, &["has mode 0755", "chmod 700"]);
}

#[test]
fn only_root_may_use_it() {
    require_privilege!();
    let store = Store::new();
    let out = run_secrets(&store.config, &["list"], b"", Some(65534));
    assert_exit(&out, 1, &["needs root"]);
    assert!(!store.state.exists());
}

/// What `set_on_a_terminal` saw.
struct TerminalRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Everything the terminal displayed, up to and including the echo of
    /// `TYPED_AFTER_EXIT`.
    screen: Vec<u8>,
    /// The terminal's local modes once the prompt was shown, and after the process
    /// exited.
    at_prompt: nix::sys::termios::LocalFlags,
    after_exit: nix::sys::termios::LocalFlags,
}

/// Typed on the terminal after the process exited. Echo is back on by then, so it
/// shows on the screen, after anything displayed while the process ran.
const TYPED_AFTER_EXIT: &[u8] = b"typed-after-exit";

/// Runs `secrets set ci DEV_TOKEN` with a pseudo-terminal as stdin, types `typed` once
/// the prompt is shown, then `TYPED_AFTER_EXIT` once the process exited.
///
/// The screen is read until the echo of `TYPED_AFTER_EXIT` appears (or 10 s pass):
/// the terminal displays things in order, so by then anything echoed while the
/// process ran has been read too. A copy of the terminal's slave side stays open
/// here so that reading the master side neither fails nor ends once the process
/// exited.
fn set_on_a_terminal(store: &Store, typed: &[u8]) -> TerminalRun {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::termios::tcgetattr;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut master = fs::File::from(pty.master);
    let _slave = pty.slave.try_clone().expect("dup the terminal");
    let mut child = Command::new(agent_binary())
        .args(["secrets", "set", "ci", "DEV_TOKEN", "--config"])
        .arg(&store.config)
        .stdin(Stdio::from(pty.slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runner-agent starts");
    // Wait for the prompt: it is printed once echo is off.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("input hidden") {
        let mut byte = [0u8; 1];
        assert_eq!(stderr.read(&mut byte).unwrap(), 1, "prompt: {seen:?}");
        seen.push(byte[0]);
    }
    // The master side reports the slave side's settings.
    let at_prompt = tcgetattr(&master).expect("terminal settings").local_flags;
    master.write_all(typed).unwrap();
    let status = child.wait().unwrap();
    let after_exit = tcgetattr(&master).expect("terminal settings").local_flags;
    master.write_all(TYPED_AFTER_EXIT).unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    stderr.read_to_end(&mut seen).unwrap();
    let mut screen = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains(&screen, TYPED_AFTER_EXIT) {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll") == 0 {
            break;
        }
        let n = master.read(&mut buf).expect("read the screen");
        assert_ne!(n, 0, "the terminal closed: {screen:?}");
        screen.extend_from_slice(&buf[..n]);
    }
    TerminalRun {
        code: status.code(),
        stdout: out,
        stderr: String::from_utf8_lossy(&seen).into_owned(),
        screen,
        at_prompt,
        after_exit,
    }
}

#[test]
fn a_value_typed_on_a_terminal_is_not_echoed() {
    require_privilege!();
    let store = Store::new();
    let run = set_on_a_terminal(&store, b"typed-secret-value\n");
    let err = &run.stderr;
    assert_eq!(run.code, Some(0), "{err}");
    assert!(err.contains("value of ci/DEV_TOKEN (input hidden"), "{err}");
    assert_hidden_then_restored(&run, b"typed-secret");
    // The same value through a pipe gives the same fingerprint: the line end was
    // stripped and nothing else was added.
    let typed = fingerprint_in(&run.stdout, "(fingerprint ");
    assert_eq!(store.set("ci", "OTHER", b"typed-secret-value"), typed);

    // Ctrl-C cancels without storing anything (and without leaving echo off: the
    // process restores the terminal rather than dying of SIGINT).
    let before = store.snapshot();
    let run = set_on_a_terminal(&store, b"half\x03");
    let err = &run.stderr;
    assert_eq!(run.code, Some(1), "{err}");
    assert!(
        err.contains("cancelled with Ctrl-C; nothing was stored"),
        "{err}"
    );
    assert_eq!(store.snapshot(), before);
    assert_hidden_then_restored(&run, b"half");
}

/// Echo was off at the prompt and on again after the command, and `typed` never showed
/// on the screen. The screen shows what is typed with echo on (the line typed after the
/// command exits is there: the positive control), so not seeing `typed` there means it
/// was not echoed.
fn assert_hidden_then_restored(run: &TerminalRun, typed: &[u8]) {
    use nix::sys::termios::LocalFlags;
    assert!(
        !run.at_prompt.contains(LocalFlags::ECHO),
        "echo on at the prompt: {:?}",
        run.at_prompt
    );
    assert!(
        run.after_exit.contains(LocalFlags::ECHO),
        "echo left off: {:?}",
        run.after_exit
    );
    assert!(
        contains(&run.screen, TYPED_AFTER_EXIT),
        "typed text not seen: {:?}",
        run.screen
    );
    assert!(!contains(&run.screen, typed), "echoed: {:?}", run.screen);
}
