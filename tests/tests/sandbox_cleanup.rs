//! Nothing survives a runner: files in every writable place, a background process that
//! ignores SIGTERM, the runner's mounts, veth, cgroup and state are all gone after the
//! job, and the next job sees none of it. Also: a killed agent's runner is reaped by the
//! next start.

use std::path::Path;
use std::time::Duration;

use runner_agent_tests::agent::{describe, job_id, processes_with, wait_until, World};
use runner_agent_tests::require_privilege;

const PLACES: &[&str] = &[
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/root",
    "/usr",
    "/workspace",
    "/etc",
];

#[test]
fn nothing_of_a_job_survives_it() {
    require_privilege!();
    let world = World::new("", "");
    let marker = format!("leftover{}x", std::process::id());
    let places = PLACES.join(" ");
    let first = world.job(
        "first.yaml",
        &format!(
            r#"name: litter
steps:
  - name: litter everywhere
    run: |
      for d in {places} $HOME; do echo {marker} > $d/{marker}; done
      setsid bash -c "trap '' TERM HUP INT; exec -a {marker}-sleeper sleep 1000" >/dev/null 2>&1 < /dev/null &
      sleep 0.3
      pgrep -f {marker}-sleeper
      echo litter done
"#
        ),
    );
    let output = world.run(&first);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("litter done"));
    let first_id = job_id(&String::from_utf8_lossy(&output.stderr)).expect("job id");

    assert!(
        processes_with(&format!("{marker}-sleeper")).is_empty(),
        "the SIGTERM-proof process survived"
    );
    for place in PLACES {
        assert!(
            !Path::new(place).join(&marker).exists(),
            "{place}/{marker} reached the host"
        );
    }
    let left = world.leftovers(std::slice::from_ref(&first_id));
    assert!(left.is_empty(), "left behind: {left:?}");

    // The marker comes in through the environment, so that it is not part of the
    // script's own command line (which pgrep -f would find).
    let second = world.job(
        "second.yaml",
        &format!(
            r#"name: inspect
env: {{ MARK: {marker} }}
steps:
  - name: look for the previous job
    run: |
      for d in {places} $HOME; do test ! -e "$d/$MARK" || {{ echo "found $d/$MARK"; exit 1; }}; done
      if pgrep -f "$MARK-sleeper"; then echo "found a process"; exit 1; fi
      echo clean
"#
        ),
    );
    let output = world.run(&second);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("clean"));
}

#[test]
fn a_killed_agents_runner_is_reaped_by_the_next_start() {
    require_privilege!();
    let world = World::new("", "");
    let marker = format!("orphan{}x", std::process::id());
    let job = world.job(
        "long.yaml",
        &format!("name: long\nsteps:\n  - name: wait\n    run: exec -a {marker} sleep 1000\n"),
    );
    let mut agent = world.spawn(&job);
    assert!(
        wait_until(Duration::from_secs(20), || !processes_with(&marker)
            .is_empty()),
        "the job never started"
    );
    let records = world.runner_records();
    assert!(!records.is_empty(), "no runner record while the job runs");
    agent.kill().expect("SIGKILL the agent");
    let _ = agent.wait();
    // The agent is gone; its runner's record, cgroup and veth are still there.
    let record = std::fs::read_to_string(world.run_dir.join("runners/r-0.json"))
        .expect("record stays after a crash");
    let job_ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&record)
        .ok()
        .and_then(|v| v["job_id"].as_str().map(str::to_owned))
        .into_iter()
        .collect();
    assert!(
        !world.leftovers(&job_ids).is_empty(),
        "nothing was left to reap"
    );

    let next = world.job(
        "next.yaml",
        "name: next\nsteps:\n  - run: echo next job ran\n",
    );
    let output = world.run(&next);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("reaped leftovers of r-0"),
        "{}",
        describe(&output)
    );
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&marker)
            .is_empty()),
        "the dead agent's job is still running"
    );
    let left = world.leftovers(&job_ids);
    assert!(left.is_empty(), "left behind: {left:?}");
}
