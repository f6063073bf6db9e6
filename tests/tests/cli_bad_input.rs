//! Bad input to `runner-agent run` and `check`: each gives a precise `FILE:LINE:COLUMN`
//! error, exit code 64, and creates nothing (no state_dir, no run_dir, no runner).
//!
//! Validation happens before anything is created, so these tests need no privilege.

use std::path::Path;
use std::process::Command;

use runner_agent_tests::agent::agent_binary;

struct Case {
    what: &'static str,
    job: &'static str,
    /// `LINE:COLUMN` expected right after the file name.
    at: &'static str,
    /// A fragment of the message.
    says: &'static str,
}

const JOB_CASES: &[Case] = &[
    Case {
        what: "malformed YAML",
        job: "name: x\nsteps:\n  - run: echo\n name: bad indentation\n",
        at: "4:2",
        says: "did not find expected key",
    },
    Case {
        what: "unknown top-level key",
        job: "name: x\nstepz:\n  - run: echo\n",
        at: "2:1",
        says: "unknown field `stepz`",
    },
    Case {
        what: "unknown step key",
        job: "name: x\nsteps:\n  - run: echo\n    shell: zsh\n",
        at: "4:5",
        says: "unknown field `shell`",
    },
    Case {
        what: "bad duration",
        job: "name: x\ntimeout: soon\nsteps:\n  - run: echo\n",
        at: "2:",
        says: "30m",
    },
    Case {
        what: "bare number as duration",
        job: "name: x\nsteps:\n  - run: echo\n    timeout: 30\n",
        at: "4:",
        says: "30m",
    },
    Case {
        what: "empty steps",
        job: "name: x\nsteps: []\n",
        at: "2:",
        says: "step",
    },
    Case {
        what: "step without run",
        job: "name: x\nsteps:\n  - name: nothing\n",
        at: "3:",
        says: "run",
    },
];

fn run_agent(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(agent_binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run runner-agent")
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("host.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}/state\nrun_dir: {}/run\nenvironments:\n  default: {{}}\n",
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn bad_job_files_are_rejected_precisely_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    for case in JOB_CASES {
        let job = dir.path().join("job.yaml");
        std::fs::write(&job, case.job).unwrap();
        for args in [
            vec!["run", "job.yaml", "--config", config.to_str().unwrap()],
            vec!["check", "--config", config.to_str().unwrap(), "job.yaml"],
        ] {
            let out = run_agent(dir.path(), &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(64),
                "{}: {args:?}: {stderr}",
                case.what
            );
            let expected = format!("job.yaml:{}", case.at);
            assert!(
                stderr.contains(&expected),
                "{}: expected {expected} in {stderr}",
                case.what
            );
            assert!(
                stderr.contains(case.says),
                "{}: expected {:?} in {stderr}",
                case.what,
                case.says
            );
            assert!(
                !dir.path().join("state").exists(),
                "{}: state_dir was created",
                case.what
            );
            assert!(
                !dir.path().join("run").exists(),
                "{}: run_dir was created",
                case.what
            );
        }
    }
}

#[test]
fn bad_host_configs_are_rejected_precisely() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        "name: x\nsteps:\n  - run: echo\n",
    )
    .unwrap();
    for (what, config, at, says) in [
        (
            "unknown key",
            "state_dir: /var/lib/ra\nnetwork:\n  pool: 10.0.0.0/16\n",
            "3:3",
            "unknown field `pool`",
        ),
        (
            "bad size",
            "runner:\n  limits: { memory: 4 gigs }\n",
            "2:",
            "memory",
        ),
        (
            "bad timeout",
            "runner:\n  limits:\n    timeout: forever\n",
            "3:",
            "30m",
        ),
        (
            "unknown mode",
            "environments:\n  default:\n    egress: { mode: open }\n",
            "3:",
            "unknown variant `open`",
        ),
    ] {
        let path = dir.path().join("host.yaml");
        std::fs::write(&path, config).unwrap();
        let out = run_agent(dir.path(), &["run", "job.yaml", "--config", "host.yaml"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("host.yaml:{at}")),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains(says),
            "{what}: expected {says:?} in {stderr}"
        );
    }
}

#[test]
fn unknown_environment_points_at_the_job_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    std::fs::write(
        dir.path().join("job.yaml"),
        "name: x\nenvironment: release\nsteps:\n  - run: echo\n",
    )
    .unwrap();
    let out = run_agent(
        dir.path(),
        &["run", "job.yaml", "--config", config.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("job.yaml:2:14"), "{stderr}");
    assert!(stderr.contains("release"), "{stderr}");
    assert!(!dir.path().join("run").exists());
}

/// Runs the agent in `dir`, failing the test if it has not ended after a minute (a parse
/// that never ends is the bug these cases guard against).
fn run_agent_bounded(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(agent_binary())
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run runner-agent");
    let ended = wait_for_exit(&mut child);
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("runner-agent {args:?} did not end within a minute");
    }
    child.wait_with_output().expect("collect output")
}

fn wait_for_exit(child: &mut std::process::Child) -> bool {
    runner_agent_tests::agent::wait_until(std::time::Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
}

/// A job file may come from the repository being built: one that never ends, is huge, is
/// not text, nests flow collections thousands deep (the YAML scanner's time grows with
/// the square of that depth: 200 KB of `[` once took 36 s) or names a large anchor
/// hundreds of times (the agent grew by hundreds of MiB) is refused with its place,
/// without reading, scanning or expanding it all, and creates nothing.
#[test]
fn hostile_job_files_are_refused_without_being_read_or_scanned_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config = config.to_str().unwrap();
    let deep = dir.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!(
            "name: x\nsteps:\n  - run: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    )
    .unwrap();
    let big = dir.path().join("big.yaml");
    let mut text = "name: x\nsteps:\n  - run: \"true\"\n".to_owned();
    text.push_str(&"# padding\n".repeat(120_000));
    std::fs::write(&big, text).unwrap();
    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, b"name: x\nsteps:\n  - run: echo \xc3\x28\n").unwrap();
    // 300 names for a 100 KiB value: 30 MiB once replayed, from a 0.1 MiB file.
    let aliases = dir.path().join("aliases.yaml");
    let mut text = format!("name: x\nenv:\n  BIG: &b \"{}\"\n", "x".repeat(100 << 10));
    for i in 0..300 {
        text.push_str(&format!("  E{i}: *b\n"));
    }
    text.push_str("steps:\n  - run: \"true\"\n");
    std::fs::write(&aliases, text).unwrap();
    let cases = [
        (
            "/dev/zero",
            "/dev/zero: the file is larger than 256 KiB".to_owned(),
        ),
        (
            "aliases.yaml",
            "aliases.yaml:3:8: env.E80: aliases (`*name`) repeat the file's values beyond 8 MiB"
                .to_owned(),
        ),
        (
            "deep.yaml",
            "deep.yaml:3:266: more than 256 `[` or `{` open at once (nested too deep)".to_owned(),
        ),
        (
            "big.yaml",
            "big.yaml: the file is larger than 256 KiB".to_owned(),
        ),
        (
            "binary.yaml",
            "binary.yaml:3:15: the file is not UTF-8 text".to_owned(),
        ),
    ];
    for (job, expected) in cases {
        for args in [
            vec!["run", job, "--config", config],
            vec!["check", "--config", config, job],
        ] {
            let out = run_agent_bounded(dir.path(), &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
            assert!(
                stderr.contains(&expected),
                "{args:?}: expected {expected:?} in {stderr}"
            );
            assert!(
                !dir.path().join("state").exists(),
                "{job}: state_dir created"
            );
            assert!(!dir.path().join("run").exists(), "{job}: run_dir created");
        }
    }
}

#[test]
fn missing_files_and_bad_arguments_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_agent(dir.path(), &["run", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.yaml"));
    let out = run_agent(dir.path(), &["run"]);
    assert_eq!(out.status.code(), Some(64));
    let out = run_agent(dir.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(64));
}

/// Claims are names and paths: one with a control character (which could rewrite what
/// the operator approving the job sees) is bad input, refused before anything is made.
#[test]
fn claims_with_control_characters_exit_64_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let job = dir.path().join("job.yaml");
    std::fs::write(&job, "name: j\nsteps:\n  - run: echo ran\n").unwrap();
    let (job, config) = (job.to_string_lossy(), config.to_string_lossy());
    for (flag, value) in [
        ("--ref", "refs/tags/v1\r\u{1b}[2K"),
        ("--workflow", ".github/workflows/x\n.yaml"),
        ("--repository", "acme/app\u{7}"),
        ("--event", "push\u{9b}"),
        // Reordering and invisible characters (Trojan Source) would mislead the approver
        // just as well.
        ("--ref", "refs/heads/main\u{202e}\u{2066}v1.0"),
        ("--repository", "acme/app\u{200b}"),
        ("--workflow", ".github/workflows/x\u{2028}.yaml"),
    ] {
        let out = run_agent(dir.path(), &["run", &job, "--config", &config, flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag)
                && (stderr.contains("control character")
                    || stderr.contains("invisible formatting character")),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    }
    assert!(!dir.path().join("state").exists() && !dir.path().join("run").exists());
}

/// `text` for a double-quoted YAML scalar, every character outside printable ASCII (and
/// `"`, `\`) as `\uXXXX`.
fn yaml_escaped(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c.to_string(),
            _ => format!("\\u{:04X}", c as u32),
        })
        .collect()
}

#[test]
fn job_names_with_invisible_formatting_characters_exit_64_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config = config.to_string_lossy();
    for name in [
        "harmless\u{2028}  j-01AAAA  docs-only",
        "deploy\u{202e}dorp-on",
        "a\u{2066}b",
        "zero\u{200b}width",
    ] {
        let job = dir.path().join("job.yaml");
        std::fs::write(
            &job,
            format!(
                "name: \"{}\"\nsteps:\n  - run: echo ran\n",
                yaml_escaped(name)
            ),
        )
        .unwrap();
        let out = run_agent(
            dir.path(),
            &["run", &job.to_string_lossy(), "--config", &config],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name:?}: {stderr}");
        assert!(
            stderr.contains("job.yaml:1:") && stderr.contains("invisible formatting"),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    }
    assert!(!dir.path().join("state").exists() && !dir.path().join("run").exists());
}

#[test]
fn check_prints_the_effective_policy() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_agent(dir.path(), &["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("default"), "{stdout}");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/host.yaml");
    let out = run_agent(
        dir.path(),
        &["check", "--config", examples.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
