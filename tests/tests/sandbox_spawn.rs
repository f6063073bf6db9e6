//! How the sandbox init is started (`runner_agent::sys::spawn`): born in the runner's v2
//! cgroup and in a network namespace of its own, with the descriptors it was given and
//! nothing of the agent's signal state; an exec failure is reported as the exec's error
//! and leaves no process behind.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sys::wait::WaitStatus;
use runner_agent::sys::spawn::{spawn, SpawnError, SpawnRequest};
use runner_agent_tests::agent::proc_stat;
use runner_agent_tests::fence::TestCgroup;
use runner_agent_tests::require_privilege;

/// Runs `script` with `sh -c` as the sandbox init would be started, in `cgroup`; returns
/// what it printed and how it ended.
///
/// The script first waits for its stdin to close, which happens once `spawn` has
/// returned: `spawn` treats a child that is already gone when exec has closed the report
/// pipe as one that never ran (the programs it starts wait for input first), so a script
/// that could end before that check would make the test race.
fn run_in(cgroup: &TestCgroup, new_netns: bool, script: &str) -> (String, WaitStatus) {
    let (mut out_read, out_write) = std::io::pipe().unwrap();
    let (stdin, hold) = std::io::pipe().unwrap();
    let dir = std::fs::File::open(&cgroup.path).unwrap();
    let script = format!("read _held; {script}");
    let child = spawn(&SpawnRequest {
        program: Path::new("/bin/sh"),
        args: &["-c", &script],
        stdio: [stdin.as_fd(), out_write.as_fd(), out_write.as_fd()],
        cgroup: dir.as_fd(),
        new_netns,
    })
    .expect("spawn /bin/sh");
    drop(hold);
    drop(stdin);
    drop(out_write);
    let mut output = String::new();
    out_read.read_to_string(&mut output).unwrap();
    let status = loop {
        if let Some(status) = child.try_reap().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    (output, status)
}

#[test]
fn the_child_is_born_in_the_cgroup_and_its_own_network_namespace() {
    require_privilege!();
    let cgroup = TestCgroup::create().unwrap();
    let name = cgroup
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let (output, status) = run_in(
        &cgroup,
        true,
        "grep '^0::' /proc/self/cgroup; readlink /proc/self/ns/net; \
         grep -E '^(SigBlk|SigIgn)' /proc/self/status; \
         awk -F: 'NR > 2 { gsub(/ /, \"\", $1); print $1 }' /proc/self/net/dev; exit 7",
    );
    assert_eq!(
        status,
        WaitStatus::Exited(status.pid().unwrap(), 7),
        "{output}"
    );
    let lines: Vec<&str> = output.lines().collect();
    assert!(
        lines[0].starts_with("0::/") && lines[0].ends_with(&format!("/{name}")),
        "not in the test cgroup: {output}"
    );
    assert_ne!(
        lines[1],
        ours.to_string_lossy(),
        "same network namespace: {output}"
    );
    // No signal blocked, none ignored: Rust ignores SIGPIPE, and the test harness others,
    // which exec would keep.
    assert!(lines.contains(&"SigBlk:\t0000000000000000"), "{output}");
    assert!(lines.contains(&"SigIgn:\t0000000000000000"), "{output}");
    // A new network namespace has only its loopback.
    assert_eq!(lines[4..], ["lo"], "{output}");
    assert!(cgroup.pids().is_empty());
}

#[test]
fn without_a_new_netns_the_child_shares_ours() {
    require_privilege!();
    let cgroup = TestCgroup::create().unwrap();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let (output, _) = run_in(&cgroup, false, "readlink /proc/self/ns/net");
    assert_eq!(output.trim(), ours.to_string_lossy());
}

#[test]
fn a_program_that_cannot_be_executed_is_an_error_and_leaves_nothing() {
    require_privilege!();
    let cgroup = TestCgroup::create().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let dir = std::fs::File::open(&cgroup.path).unwrap();
    for (program, errno) in [
        ("/nonexistent/runner-agent", nix::errno::Errno::ENOENT),
        ("/etc", nix::errno::Errno::EACCES),
    ] {
        let err = spawn(&SpawnRequest {
            program: Path::new(program),
            args: &[],
            stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
            cgroup: dir.as_fd(),
            new_netns: true,
        })
        .expect_err(program);
        assert_eq!(err, SpawnError::Exec(errno), "{program}");
    }
    // The failed children were reaped inside spawn: the cgroup is empty, and no zombie
    // child of ours is left. A child cloned by this thread keeps this thread's name until
    // it execs, so a failed one is named like it (the other tests' children are `sh`,
    // and their threads have other names).
    assert!(cgroup.pids().is_empty());
    assert_eq!(zombie_children_named_like_this_thread(), Vec::<u32>::new());
}

/// Zombie children of this process named like the calling thread: children it cloned
/// that never exec'd and were never reaped.
fn zombie_children_named_like_this_thread() -> Vec<u32> {
    let me = std::process::id();
    let thread = std::fs::read_to_string("/proc/thread-self/comm").expect("thread name");
    let thread = thread.trim_end();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|s| s.ppid == me && s.state == 'Z' && s.comm == thread)
        })
        .collect()
}

#[test]
fn a_directory_that_is_not_a_cgroup_is_refused() {
    require_privilege!();
    let null = std::fs::File::open("/dev/null").unwrap();
    let not_a_cgroup = std::fs::File::open("/tmp").unwrap();
    let err = spawn(&SpawnRequest {
        program: Path::new("/bin/true"),
        args: &[],
        stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
        cgroup: not_a_cgroup.as_fd(),
        new_netns: false,
    })
    .expect_err("spawned into /tmp");
    assert_eq!(err, SpawnError::Clone(nix::errno::Errno::EBADF));
}
