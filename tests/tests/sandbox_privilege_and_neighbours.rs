//! Privilege, persistence and neighbour probes from inside real sandboxes as root, beyond
//! the other isolation tests: the job's own cgroup files (raise its limits, leave its
//! cgroup), core_pattern, OOM protection, fanotify, unix sockets, /proc of init; and a job
//! that scans everything it can read while a runner of another environment holds its
//! secrets. Each probe prints `HOLE name ...` when it got through, `OK name ...` when
//! refused.

use std::time::Duration;

use runner_agent_tests::agent::{describe, random_value, World};
use runner_agent_tests::require_privilege;

fn holes(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("HOLE "))
        .map(str::to_owned)
        .collect()
}

fn sandbox_config() -> String {
    r#"environments:
  ci:
    egress: { mode: enforce, allow: [] }
    secrets:
      CI_TOKEN: { deliver: env }
  release:
    approval: required
    approval_timeout: 2s
    egress: { mode: enforce, allow: [] }
    secrets:
      REL_TOKEN: { deliver: env }
"#
    .to_owned()
}

/// Privilege and persistence probes that the existing tests do not make: the job's own
/// cgroup files (raise its limits, leave its cgroup, kill a parent), core_pattern, OOM
/// protection, fanotify, every unix socket file visible, /proc of init.
#[test]
fn the_job_s_cgroup_core_dumps_oom_score_fanotify_and_sockets_are_out_of_reach() {
    require_privilege!();
    let world = World::new("limits: { memory: 256MiB, pids: 128 }", &sandbox_config());
    let ci = random_value("citok");
    let rel = random_value("reltok");
    world.set_secret("ci", "CI_TOKEN", &ci);
    world.set_secret("release", "REL_TOKEN", &rel);
    let job = world.job(
        "probe.yaml",
        r#"name: probe
environment: ci
steps:
  - name: probes
    run: |
      set +e
      echo "--- cgroup view"
      cat /proc/self/cgroup
      grep cgroup /proc/self/mountinfo
      ls -la /sys/fs/cgroup | head -30
      for f in memory.max pids.max cpu.max memory.swap.max memory.high; do
        before=$(cat /sys/fs/cgroup/$f 2>&1)
        if echo max > /sys/fs/cgroup/$f 2>/dev/null; then echo "HOLE cgroup-write $f (was $before, now $(cat /sys/fs/cgroup/$f))"; else echo "OK cgroup-write $f refused ($before)"; fi
      done
      if mkdir /sys/fs/cgroup/escape 2>/dev/null; then echo "HOLE cgroup-mkdir"; rmdir /sys/fs/cgroup/escape; else echo "OK cgroup-mkdir refused"; fi
      if echo $$ > /sys/fs/cgroup/cgroup.procs 2>/dev/null; then echo "OK?? cgroup.procs own write accepted"; fi
      if echo 1 > /sys/fs/cgroup/cgroup.kill 2>/dev/null; then echo "HOLE?? cgroup.kill"; fi
      if echo "+memory" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then echo "HOLE cgroup-subtree_control"; fi
      # mount a cgroup2 fs of our own to see the whole hierarchy
      mkdir -p /workspace/cg
      if mount -t cgroup2 none /workspace/cg 2>/dev/null; then echo "HOLE cgroup2-mount"; ls /workspace/cg; fi
      echo "--- core pattern"
      cat /proc/sys/kernel/core_pattern
      if echo '|/bin/sh -c id' > /proc/sys/kernel/core_pattern 2>/dev/null; then echo "HOLE core_pattern-write"; else echo "OK core_pattern refused"; fi
      echo "--- oom"
      cat /proc/self/oom_score_adj
      if echo -1000 > /proc/self/oom_score_adj 2>/dev/null; then echo "HOLE oom_score_adj-lowered to $(cat /proc/self/oom_score_adj)"; else echo "OK oom_score_adj refused"; fi
      if echo -1000 > /proc/1/oom_score_adj 2>/dev/null; then echo "HOLE init-oom_score_adj"; fi
      python3 - <<'PY'
      import ctypes, os, socket, errno
      libc = ctypes.CDLL(None, use_errno=True)
      libc.syscall.restype = ctypes.c_long
      # fanotify_init(FAN_CLASS_NOTIF, O_RDONLY): a watch on the whole mount would see
      # what other processes open.
      r = libc.syscall(300, 0, 0)
      e = ctypes.get_errno()
      print(("HOLE" if r >= 0 else "OK"), "fanotify_init", r, os.strerror(e), flush=True)
      if r >= 0:
          # FAN_MARK_ADD|FAN_MARK_FILESYSTEM on / for FAN_OPEN
          m = libc.syscall(301, r, 0x1 | 0x100, ctypes.c_uint64(0x20), -100, b"/")
          print("fanotify_mark", m, os.strerror(ctypes.get_errno()), flush=True)
      # ptrace init
      r = libc.ptrace(16, 1, 0, 0)  # PTRACE_ATTACH
      print(("HOLE" if r == 0 else "OK"), "ptrace-attach-init", os.strerror(ctypes.get_errno()), flush=True)
      for p in ("environ", "mem", "cmdline", "auxv", "stack", "syscall", "personality"):
          try:
              data = open("/proc/1/" + p, "rb").read(256)
              print("INFO /proc/1/" + p, "readable", len(data), flush=True)
          except OSError as ex:
              print("OK /proc/1/" + p, ex.strerror, flush=True)
      # Every unix socket file in the filesystem.
      seen = []
      for top, dirs, files in os.walk("/"):
          if top.startswith(("/proc", "/sys")):
              dirs[:] = []
              continue
          for f in files + dirs:
              p = os.path.join(top, f)
              try:
                  import stat
                  if stat.S_ISSOCK(os.lstat(p).st_mode):
                      seen.append(p)
              except OSError:
                  pass
      for p in seen:
          s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
          s.settimeout(1)
          try:
              s.connect(p)
              print("HOLE unix-connect", p, flush=True)
          except OSError as ex:
              print("OK unix-connect", p, ex.strerror, flush=True)
          s.close()
      print("SOCKETS", seen, flush=True)
      # abstract sockets visible in this netns
      print("ABSTRACT", [l.split()[-1] for l in open("/proc/net/unix").read().splitlines()[1:] if l.split()[-1].startswith("@")], flush=True)
      PY
      echo PROBES-DONE
"#,
    );
    let (output, events) = world.run_audited(&job);
    println!("{}", describe(&output));
    for e in &events {
        println!("EVENT {e}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(stdout.contains("PROBES-DONE"), "{}", describe(&output));
    world.assert_job_left_nothing(&output);
    let h = holes(&stdout);
    assert!(h.is_empty(), "holes:\n{}", h.join("\n"));
}

/// Two runners at once: while a `ci` job holds an env and a file secret, a `default` job
/// of another slot scans everything it can read (the whole filesystem, /proc, /sys) and
/// pokes at the other runner's address.
#[test]
fn a_concurrent_runner_cannot_read_another_environment_s_secrets() {
    require_privilege!();
    let world = World::new(
        "max_concurrent: 4",
        "environments:\n  default:\n    egress: { mode: enforce, allow: [] }\n  ci:\n    egress: { mode: enforce, allow: [] }\n    secrets:\n      CI_TOKEN: { deliver: env }\n      CI_KEY: { deliver: file }\n",
    );
    let tok = random_value("cctok");
    let key = random_value("cckey");
    world.set_secret("ci", "CI_TOKEN", &tok);
    world.set_secret("ci", "CI_KEY", &key);
    let holder = world.job(
        "holder.yaml",
        "name: holder\nenvironment: ci\ntimeout: 3m\nsteps:\n  - name: hold\n    run: |\n      cp \"$CI_KEY_FILE\" /dev/shm/k; cp \"$CI_KEY_FILE\" /workspace/k; echo \"$CI_TOKEN\" > /tmp/t\n      hostname -I; echo READY\n      python3 -c 'import time, os; x = os.environ[\"CI_TOKEN\"] * 1000; time.sleep(75)'\n",
    );
    let (t1, t2) = tok.split_at(tok.len() / 2);
    let (k1, k2) = key.split_at(key.len() / 2);
    let scanner = world.job(
        "scanner.yaml",
        &format!(
            r#"name: scanner
timeout: 2m
steps:
  - name: scan
    env: {{ T1: "{t1}", T2: "{t2}", K1: "{k1}", K2: "{k2}" }}
    run: |
      sleep 4
      python3 - <<'PY'
      import os, socket
      needles = [(os.environ["T1"] + os.environ["T2"]).encode(), (os.environ["K1"] + os.environ["K2"]).encode()]
      me = os.getpid()
      hits = []
      n = 0
      import stat
      for top, dirs, files in os.walk("/"):
          if top.startswith(("/proc", "/sys", "/dev")):
              dirs[:] = []
              continue
          for f in files:
              p = os.path.join(top, f)
              try:
                  st = os.lstat(p)
                  if not stat.S_ISREG(st.st_mode) or st.st_size > (32 << 20):
                      continue
                  with open(p, "rb") as fh:
                      data = fh.read()
                  n += 1
                  if any(x in data for x in needles):
                      hits.append(p)
              except (OSError, ValueError):
                  pass
      for pid in [x for x in os.listdir("/proc") if x.isdigit() and int(x) != me]:
          for part in ("environ", "cmdline"):
              try:
                  if any(x in open("/proc/%s/%s" % (pid, part), "rb").read() for x in needles):
                      hits.append("/proc/%s/%s" % (pid, part))
              except OSError:
                  pass
      for top, dirs, files in os.walk("/dev/shm"):
          for f in files:
              try:
                  if any(x in open(os.path.join(top, f), "rb").read() for x in needles):
                      hits.append(os.path.join(top, f))
              except OSError:
                  pass
      print("SCANNED", n, flush=True)
      for h in hits:
          print("HOLE secret found in", h, flush=True)
      PY
      # The other runner's address (runner pool /30s): try its common ports.
      python3 - <<'PY'
      import socket, ipaddress
      me = socket.gethostbyname(socket.gethostname()) if False else None
      for line in open("/proc/net/fib_trie").read().split("\n"):
          pass
      import subprocess
      out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
      print(out, flush=True)
      PY
      echo SCAN-DONE
"#
        ),
    );
    let mut a = world.spawn(&holder);
    std::thread::sleep(Duration::from_millis(500));
    let (out_b, events) = world.run_audited(&scanner);
    // Scanned while the holder still ran: it sleeps 75 s.
    let still_running = matches!(a.try_wait(), Ok(None));
    let out_a = a.wait_with_output().expect("holder");
    assert!(still_running, "the holder ended before the scan did");
    world.assert_job_left_nothing(&out_a);
    world.assert_job_left_nothing(&out_b);
    println!("A {}", describe(&out_a));
    println!("B {}", describe(&out_b));
    for e in &events {
        println!("EVENT {e}");
    }
    let stdout = String::from_utf8_lossy(&out_b.stdout).into_owned();
    assert!(stdout.contains("SCAN-DONE"), "{}", describe(&out_b));
    let h = holes(&stdout);
    assert!(h.is_empty(), "holes:\n{}", h.join("\n"));
}
