//! An agent process that runs runner after runner remembers which host files are private
//! (`sandbox::private`) instead of walking the host's trees for each runner. What changes
//! between two runners must still count for the second: a file made private, created
//! private, or made private through a hard link elsewhere (also one made after the
//! walk) is not readable in the next runner, and a file made public again is.
//!
//! Drives the library (`Sandbox::create`, `run_step`, `destroy`) in one process, as a
//! long-running agent would; `runner-agent run` walks once per job. The sandboxes are
//! made inside a network namespace of the test's own.

use std::path::PathBuf;

use runner_agent::sandbox::protocol::{StepEnd, StepRequest};
use runner_agent::sandbox::{Sandbox, SandboxConfig};
use runner_agent_tests::agent::agent_binary;
use runner_agent_tests::host_files::{chmod, RemoveOnDrop};
use runner_agent_tests::require_privilege;

/// Runs `script` as root in a fresh sandbox and returns what it printed.
async fn run_in_fresh_sandbox(config: &SandboxConfig, job: &str, script: &str) -> String {
    let mut sandbox = Sandbox::create(config, job).await.expect("create sandbox");
    let mut output = Vec::new();
    let end = sandbox
        .run_step(
            StepRequest {
                script: script.to_owned(),
                env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
                cwd: PathBuf::from("/"),
                timeout_ms: 30_000,
            },
            &mut output,
        )
        .await
        .expect("run step");
    sandbox.destroy().await.expect("destroy sandbox");
    let output = String::from_utf8_lossy(&output).into_owned();
    assert!(
        matches!(end, StepEnd::Exited { code: 0 }),
        "{end:?}: {output}"
    );
    output
}

#[test]
fn changes_between_runners_of_one_agent_count_for_the_next_runner() {
    require_privilege!();
    let tag = format!("ra-private-{}", std::process::id());
    let dir = PathBuf::from(format!("/etc/{tag}"));
    // A second name for `linked`, outside every scanned tree but on the same filesystem.
    let other_name = PathBuf::from(format!("/srv/{tag}-link"));
    // A second name for `single`, made only after the third runner.
    let late_name = PathBuf::from(format!("/srv/{tag}-late-link"));
    let _cleanup = RemoveOnDrop(vec![dir.clone(), other_name.clone(), late_name.clone()]);
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    for name in ["later", "linked", "public", "single"] {
        std::fs::write(dir.join(name), format!("CONTENT-{name}-{tag}\n")).unwrap();
        chmod(&dir.join(name), 0o644);
    }
    std::fs::hard_link(dir.join("linked"), &other_name).unwrap();
    let state = tempfile::tempdir().unwrap();
    let run_dir = state.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let config = SandboxConfig::builtin(&run_dir, &state.path().join("state"), agent_binary());
    let script = format!(
        "set +e\nid -u\nfor f in later linked public new single; do cat /etc/{tag}/$f 2>&1; done\ntrue\n"
    );

    // One thread in a network namespace of its own, with a runtime on it (threads it
    // starts inherit the namespace).
    let outputs = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let before = run_in_fresh_sandbox(&config, "j-private-1", &script).await;

            // Made private, created private, made private through its other name.
            chmod(&dir.join("later"), 0o600);
            std::fs::write(dir.join("new"), format!("CONTENT-new-{tag}\n")).unwrap();
            chmod(&dir.join("new"), 0o600);
            chmod(&other_name, 0o640);
            let private = run_in_fresh_sandbox(&config, "j-private-2", &script).await;

            // Public again.
            chmod(&dir.join("later"), 0o644);
            chmod(&other_name, 0o644);
            let public_again = run_in_fresh_sandbox(&config, "j-private-3", &script).await;

            // A second name made now (only the file itself hears of that), then a chmod
            // through it, outside every scanned tree.
            std::fs::hard_link(dir.join("single"), &late_name).unwrap();
            chmod(&late_name, 0o600);
            let late_link = run_in_fresh_sandbox(&config, "j-private-4", &script).await;
            (before, private, public_again, late_link)
        })
    })
    .join()
    .expect("sandbox thread");
    let (before, private, public_again, late_link) = outputs;

    for name in ["later", "linked", "public"] {
        assert!(
            before.contains(&format!("CONTENT-{name}-")),
            "{name} not readable at first:\n{before}"
        );
    }
    assert!(
        private.starts_with("0\n"),
        "the step is not root inside:\n{private}"
    );
    for name in ["later", "linked", "new"] {
        assert!(
            !private.contains(&format!("CONTENT-{name}-")),
            "{name}, private on the host, was read in the next runner:\n{private}"
        );
    }
    assert!(private.contains("CONTENT-public-"), "{private}");
    for name in ["later", "linked", "public"] {
        assert!(
            public_again.contains(&format!("CONTENT-{name}-")),
            "{name}, public again, is not readable in the next runner:\n{public_again}"
        );
    }
    assert!(!public_again.contains("CONTENT-new-"), "{public_again}");
    assert!(
        !late_link.contains("CONTENT-single-"),
        "single, made private through a hard link made after the walk, was read:\n{late_link}"
    );
    assert!(late_link.contains("CONTENT-public-"), "{late_link}");
}
