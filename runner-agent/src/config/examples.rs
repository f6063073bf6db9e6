//! Tests over the repository's example files: `examples/host.yaml` must validate, and
//! every file of `examples/bad/` must fail with the location and message of the table
//! below (and the table must cover every file, so no example goes unchecked).

use std::path::{Path, PathBuf};

use super::{ConfigError, HostConfig, JobFile};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// File name in examples/bad → `LINE:COLUMN: message` (a prefix of it).
const BAD: &[(&str, &str)] = &[
    ("host-relative-state-dir.yaml", "2:12: state_dir: `var/lib/runner-agent` is not an absolute path"),
    ("host-nested-dirs.yaml", "3:10: state_dir /var/lib/runner-agent and run_dir /var/lib/runner-agent/run are nested"),
    ("host-ipv6-pool.yaml", "2:16: network.runner_pool: `fd00:249::/64` is an IPv6 network; the runner pool must be IPv4"),
    ("host-pool-too-small.yaml", "2:16: network.runner_pool: `10.249.0.0/30` has prefix length /30; use /8 to /28"),
    ("host-pool-too-full.yaml", "5:19: max_concurrent 5 does not fit in runner_pool 10.249.0.0/28, which has room for 4 runners"),
    ("host-bad-size.yaml", "3:13: runner.limits.memory: `4GB` is not a size; a size is a number of bytes or a whole number with a unit: 64KiB, 512MiB, 4GiB, 1TiB"),
    ("host-bare-timeout.yaml", "2:22: runner.limits.timeout: `3600` has no unit; write a duration such as `30m`"),
    ("host-unknown-image.yaml", "3:12: environments.ci.image: unknown image `ubuntu-latest` (available: host)"),
    ("host-bad-environment-name.yaml", "2:3: environments: `Release` is not a valid environment name"),
    ("host-proxy-secret-without-header.yaml", "7:9: environments.release.secrets.TOKEN: `deliver: proxy` needs `header`"),
    ("host-env-secret-with-hosts.yaml", "4:14: environments.ci.secrets.TOKEN: `hosts`, `header` and `format` belong to `deliver: proxy` only"),
    ("host-bad-pattern.yaml", "4:14: environments.release.match.refs[0]: pattern `refs/tags/v[0-9]*`: `[` is not supported"),
    ("host-unknown-key.yaml", "3:3: runner: unknown field `max_concurent`, expected one of `image`, `max_concurrent`, `limits`"),
    ("job-empty-steps.yaml", "2:8: steps: the list is empty; a job needs at least one step with `run`"),
    ("job-step-without-run.yaml", "3:5: steps[0]: unknown field `uses`"),
    ("job-bad-env-name.yaml", "4:7: steps[0].env: `CC-VERSION` is not a valid variable name"),
    ("job-escaping-working-directory.yaml", "3:24: steps[0].working-directory: `../../etc` leaves the workspace"),
    ("job-zero-timeout.yaml", "1:10: timeout: `0s` is zero; a timeout must be positive, e.g. `30m`"),
    ("job-snake-case-key.yaml", "3:5: steps[0]: unknown field `continue_on_error`, expected one of"),
    ("job-unknown-environment.yaml", "3:14: unknown environment `staging`: the host config does not define it (defined: ci, default, explore, release)"),
];

/// Host configs are loaded alone; job files are loaded and resolved against
/// `examples/host.yaml`.
fn check_bad(path: &Path) -> Result<(), ConfigError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("host-") {
        HostConfig::load(path).map(drop)
    } else {
        let host = HostConfig::load(&examples().join("host.yaml"))?;
        let text = JobFile::read(path)?;
        let job = JobFile::parse(path, &text)?;
        host.resolve(&job, path, &text).map(drop)
    }
}

#[test]
fn example_host_config_validates() {
    let host = HostConfig::load(&examples().join("host.yaml")).unwrap();
    assert_eq!(
        host.environments.keys().collect::<Vec<_>>(),
        ["ci", "default", "explore", "release"]
    );
    // The documented defaults are what the file spells out.
    let builtin = HostConfig::builtin_default();
    assert_eq!(host.state_dir, builtin.state_dir);
    assert_eq!(host.run_dir, builtin.run_dir);
    assert_eq!(host.network.runner_pool, builtin.network.runner_pool);
    assert_eq!(host.runner, builtin.runner);
    assert_eq!(
        host.environments["default"],
        builtin.environments["default"]
    );
}

#[test]
fn the_deploy_example_needs_release_claims_and_approval() {
    let host = HostConfig::load(&examples().join("host.yaml")).unwrap();
    let path = examples().join("deploy.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let job = JobFile::parse(&path, &text).unwrap();
    let resolved = host.resolve(&job, &path, &text).unwrap();
    assert_eq!(resolved.environment_name, "release");
    assert_eq!(resolved.environment.approval, super::Approval::Required);
    let rule = resolved.environment.match_.as_ref().unwrap();
    let claims = super::Claims {
        repository: Some("acme/app".into()),
        git_ref: Some("refs/tags/v1.4.0".into()),
        workflow: Some(".github/workflows/release.yaml".into()),
        event: Some("push".into()),
    };
    assert_eq!(rule.mismatch(&claims), None);
}

#[test]
fn every_bad_example_fails_where_the_table_says() {
    let dir = examples().join("bad");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = BAD.iter().map(|(name, _)| (*name).to_owned()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "examples/bad and the table must list the same files"
    );
    let mut failures = Vec::new();
    for (name, want) in BAD {
        let path = dir.join(name);
        let got = match check_bad(&path) {
            Ok(()) => format!("{name} was accepted"),
            Err(err) => err.to_string(),
        };
        let prefix = format!("{}:", path.display());
        match got.strip_prefix(&prefix) {
            Some(rest) if rest.starts_with(want) => {}
            _ => failures.push(format!("{name}\n got  {got}\n want {want}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every prefix of the example files (a file cut short by a full disk or a bad paste)
/// is either valid or rejected with a one-line message; nothing panics, including the
/// text scan that locates cross-field errors.
#[test]
fn every_prefix_of_the_examples_is_handled() {
    let host_text = std::fs::read_to_string(examples().join("host.yaml")).unwrap();
    let job_text = "name: build\nenvironment: ci\ntimeout: 30m\nenv:\n  A: 1\nsteps:\n  - name: x\n    run: |\n      make\n    working-directory: src\n";
    let host = HostConfig::load(&examples().join("host.yaml")).unwrap();
    let path = Path::new("p.yaml");
    let mut rejected = 0;
    for text in [host_text.as_str(), job_text] {
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let prefix = &text[..end];
            let results = [
                HostConfig::parse(path, prefix).map(drop),
                JobFile::parse(path, prefix)
                    .and_then(|job| host.resolve(&job, path, prefix).map(drop)),
            ];
            for result in results {
                if let Err(err) = result {
                    rejected += 1;
                    let message = err.to_string();
                    assert!(!message.contains('\n'), "{prefix:?}: {message}");
                    assert!(message.starts_with("p.yaml:"), "{prefix:?}: {message}");
                }
            }
            for key in [
                &["environment"][..],
                &["network", "runner_pool"],
                &["runner", "limits", "memory"],
            ] {
                let _ = super::locate::value_position(prefix, key);
            }
        }
    }
    assert!(rejected > 0);
}
