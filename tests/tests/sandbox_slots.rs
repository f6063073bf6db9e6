//! More jobs than runner slots (`runner.max_concurrent`): the jobs beyond the slots wait
//! for one (behind the other waiting agents, see `sandbox::wait_for_slot`) and all of them
//! run; no two ever run at the same time in one slot, and nothing of any is left.

use runner_agent_tests::agent::{describe, job_id, World};
use runner_agent_tests::require_privilege;

/// The (start, end) seconds each job's step printed.
fn interval(stdout: &str) -> (f64, f64) {
    let times: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("AT "))
        .map(|t| t.trim().parse().expect("a time"))
        .collect();
    assert_eq!(times.len(), 2, "no start and end in:\n{stdout}");
    (times[0], times[1])
}

#[test]
fn jobs_beyond_the_slots_wait_for_one_and_all_run() {
    require_privilege!();
    let world = World::new("max_concurrent: 1", "");
    // Each job holds its slot for a while, printing the host clock (CLOCK_REALTIME is
    // the same inside) when its step starts and ends.
    let job = world.job(
        "hold.yaml",
        "name: hold\nsteps:\n  - name: hold\n    run: |\n      echo \"AT $(date +%s.%N)\"\n      sleep 0.3\n      echo \"AT $(date +%s.%N)\"\n",
    );
    let children: Vec<_> = (0..4).map(|_| world.spawn(&job)).collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait for runner-agent"))
        .collect();
    let mut intervals = Vec::new();
    let mut ids = Vec::new();
    for output in &outputs {
        assert_eq!(output.status.code(), Some(0), "{}", describe(output));
        intervals.push(interval(&String::from_utf8_lossy(&output.stdout)));
        ids.push(job_id(&String::from_utf8_lossy(&output.stderr)).expect("job id"));
    }
    // One slot: the steps ran one after the other, never overlapping.
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in intervals.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two jobs ran at once in one slot: {intervals:?}"
        );
    }
    world.assert_left_nothing(&ids);
    // At least one agent found the slot taken and queued (only waiting makes the file).
    assert!(
        world.run_dir.join("slots/queue.lock").exists(),
        "no agent waited for a slot"
    );
}
