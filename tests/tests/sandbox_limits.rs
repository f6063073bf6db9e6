//! Resource limits: a fork bomb, a memory hog and a job filling its disk end in a failed
//! job and a healthy host; step and job timeouts kill the work and clean up.

use std::time::{Duration, Instant};

use runner_agent_tests::agent::{describe, job_id, World};
use runner_agent_tests::require_privilege;

fn host_can_fork() -> bool {
    std::process::Command::new("true")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The checks every limit test ends with: the job failed (exit 1) at `failed_step` (its
/// footer, e.g. "[1/2] fork bomb"), no later step printed `SHOULD-NOT-RUN`, the host can
/// still start a process, and nothing of the job is left. Returns the job's stdout.
fn assert_failed_cleanly(
    world: &World,
    output: &std::process::Output,
    failed_step: &str,
) -> String {
    assert_eq!(output.status.code(), Some(1), "{}", describe(output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        stdout.contains(&format!("{failed_step}: failed")),
        "{}",
        describe(output)
    );
    assert!(!stdout.contains("SHOULD-NOT-RUN\n"), "{}", describe(output));
    assert!(host_can_fork());
    world.assert_job_left_nothing(output);
    stdout
}

#[test]
fn a_fork_bomb_fails_the_job_and_not_the_host() {
    require_privilege!();
    let world = World::new("limits: { pids: 64, memory: 256MiB }", "");
    let job = world.job(
        "bomb.yaml",
        // A foreground bomb: every level waits for its two children, so the step stays
        // busy forking until the pids limit stops it or the step timeout kills it.
        "name: bomb\nsteps:\n  - name: fork bomb\n    timeout: 5s\n    run: |\n      bomb() { bomb | bomb; }; bomb\n  - name: never runs\n    run: echo SHOULD-NOT-RUN\n",
    );
    let started = Instant::now();
    let output = world.run(&job);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let stdout = assert_failed_cleanly(&world, &output, "[1/2] fork bomb");
    // The footer names the limit the kernel enforced (pids.events).
    assert!(
        stdout.contains("limits.pids (64) refused"),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_memory_hog_is_stopped_at_the_limit() {
    require_privilege!();
    let world = World::new("limits: { memory: 64MiB }", "");
    let job = world.job(
        "hog.yaml",
        "name: hog\nsteps:\n  - name: eat memory\n    run: perl -e '$x = \"a\" x (512*1024*1024); print \"SURVIVED\\n\"'\n",
    );
    let output = world.run(&job);
    let stdout = assert_failed_cleanly(&world, &output, "[1/1] eat memory");
    assert!(!stdout.contains("SURVIVED"), "{}", describe(&output));
    // The footer says the OOM killer ended the step (the cgroup's OOM kill counters) and
    // names the limit ("at limits.memory (64MiB)" on pure v2 hosts, which can tell the
    // runner's own OOM from the host's; "(limits.memory 64MiB)" on hybrid ones).
    assert!(
        stdout.contains(
            "[1/1] eat memory: failed: killed by signal 9; out of memory: the kernel killed"
        ) && stdout.contains("limits.memory")
            && stdout.contains("64MiB"),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_job_filling_its_disk_fails_and_dev_shm_counts_against_the_same_limit() {
    require_privilege!();
    let world = World::new("limits: { disk: 32MiB, memory: 512MiB }", "");
    // 20 MiB in /dev/shm, then 20 MiB in the workspace: together more than the 32 MiB
    // disk limit, each alone less. With a /dev/shm of its own both would fit.
    let job = world.job(
        "fill.yaml",
        "name: fill\nsteps:\n  - name: fill shm\n    run: dd if=/dev/zero of=/dev/shm/a bs=1M count=20 status=none && echo SHM-FILLED\n  - name: fill workspace\n    run: dd if=/dev/zero of=/workspace/b bs=1M count=20 status=none && echo WORKSPACE-FILLED\n  - name: never runs\n    run: echo SHOULD-NOT-RUN\n",
    );
    let output = world.run(&job);
    let stdout = assert_failed_cleanly(&world, &output, "[2/3] fill workspace");
    assert!(stdout.contains("SHM-FILLED"), "{}", describe(&output));
    assert!(
        !stdout.contains("WORKSPACE-FILLED"),
        "{}",
        describe(&output)
    );
    assert!(
        stdout.contains("No space left on device"),
        "{}",
        describe(&output)
    );
}

#[test]
fn memory_filled_with_files_costs_the_step_not_the_sandbox() {
    require_privilege!();
    let world = World::new("limits: { memory: 128MiB, disk: 1GiB }", "");
    // Filling the tmpfs puts the memory in files, which count for no process: the OOM
    // killer must still take the step's processes (oom_score_adj 1000) and leave init
    // (0), so the next step runs. The writer holds 32 MiB of its own while it writes, so
    // that its death leaves the next step room to start (a writer holding nothing left
    // the cgroup at its limit, and the next step's shell was killed too, now and then).
    let job = world.job(
        "files.yaml",
        "name: files\nsteps:\n  - name: fill memory with a file\n    continue-on-error: true\n    run: |\n      echo \"step score $(cat /proc/self/oom_score_adj)\"\n      exec perl -e 'my $hold = \"h\" x (32 << 20); open(my $f, \">\", \"/workspace/big\") or die; my $chunk = \"z\" x (1 << 20); while (1) { print $f $chunk or die } print \"SURVIVED\\n\"'\n  - name: after\n    run: rm -f /workspace/big; echo \"AFTER init score $(cat /proc/1/oom_score_adj)\"\n",
    );
    let output = world.run(&job);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("step score 1000"), "{}", describe(&output));
    assert!(!stdout.contains("SURVIVED"), "{}", describe(&output));
    assert!(
        stdout.contains("[1/2] fill memory with a file: failed: killed by signal 9; out of memory: the kernel killed"),
        "{}",
        describe(&output)
    );
    assert!(
        stdout.contains("AFTER init score 0"),
        "{}",
        describe(&output)
    );
    assert!(host_can_fork());
    world.assert_job_left_nothing(&output);
}

#[test]
fn a_job_over_its_timeout_is_killed_and_cleaned_up() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "slow.yaml",
        "name: slow\ntimeout: 2s\nsteps:\n  - name: sleep\n    run: setsid sleep 300 & sleep 300\n",
    );
    let started = Instant::now();
    let output = world.run(&job);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("job timed out after 2s"),
        "{}",
        describe(&output)
    );
    let id = job_id(&String::from_utf8_lossy(&output.stderr)).expect("job id");
    world.assert_left_nothing(&[id]);
}

#[test]
fn step_timeout_env_directory_and_continue_on_error_are_honoured() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "steps.yaml",
        r#"name: steps
env: { JOB_VAR: job, SHARED: from-job }
steps:
  - name: allowed to fail
    continue-on-error: true
    run: exit 3
  - name: make a directory
    run: mkdir -p sub
  - name: env and directory
    working-directory: sub
    env: { STEP_VAR: step, SHARED: from-step }
    run: echo "vars=$JOB_VAR,$STEP_VAR,$SHARED pwd=$(pwd) agent-env=${RUNNER_AGENT_LOG:-unset}"
  - name: slow step
    timeout: 1s
    run: sleep 60
  - name: skipped
    run: echo SHOULD-NOT-RUN
"#,
    );
    let started = Instant::now();
    let output = world.run(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        stdout.contains("[1/5] allowed to fail: failed: exit code 3 (continue-on-error)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("vars=job,step,from-step pwd=/workspace/sub agent-env=unset"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[4/5] slow step: failed: timed out after 1s"),
        "{stdout}"
    );
    assert!(!stdout.contains("SHOULD-NOT-RUN\n"), "{stdout}");
    let id = job_id(&String::from_utf8_lossy(&output.stderr)).expect("job id");
    world.assert_left_nothing(&[id]);
}
