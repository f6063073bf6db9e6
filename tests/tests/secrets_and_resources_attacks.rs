//! Credentials across environments, resources that could hurt other runners or the
//! host, and persistence, attacked from inside real sandboxes as root through the
//! product's contracts only: delivered secrets cannot be overridden or reached by
//! another environment, masking holds on every channel and documented encoding, secrets
//! copied anywhere do not reach the next job of the slot, /proc of init leads nowhere,
//! endless output, millions of files, descriptor exhaustion and job-chosen names stay the
//! job's own problem, and timeouts cannot be stretched.

use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_agent_tests::agent::{describe, job_id, random_value, sha256_hex, World};
use runner_agent_tests::require_privilege;

/// Environments of these tests: `ci` with an env and a file secret, `release` gated by
/// claims and approval with an env secret (so that a leak would be visible), `plain` with
/// nothing.
fn envs() -> String {
    r#"environments:
  default:
    egress: { mode: enforce, allow: [] }
  ci:
    secrets:
      CI_TOKEN: { deliver: env }
      CI_KEY: { deliver: file }
  release:
    match:
      repositories: [acme/app]
      refs: ["refs/tags/v*"]
      events: [push]
    approval: required
    approval_timeout: 3s
    secrets:
      REL_TOKEN: { deliver: env }
"#
    .to_owned()
}

struct Values {
    ci_token: String,
    ci_key: String,
    rel_token: String,
}

fn world(runner_yaml: &str) -> (World, Values) {
    let world = World::new(runner_yaml, &envs());
    let v = Values {
        ci_token: random_value("CiTok"),
        ci_key: random_value("cikey"),
        rel_token: random_value("reltok"),
    };
    world.set_secret("ci", "CI_TOKEN", &v.ci_token);
    world.set_secret("ci", "CI_KEY", &v.ci_key);
    world.set_secret("release", "REL_TOKEN", &v.rel_token);
    (world, v)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every form the masker promises to hide, of every value.
fn masked_forms(values: &[&str]) -> Vec<Vec<u8>> {
    values
        .iter()
        .flat_map(|v| runner_agent::mask::forms(v.as_bytes()))
        .map(|f| f.to_vec())
        .collect()
}

fn leaks(output: &Output, forms: &[Vec<u8>]) -> Vec<String> {
    let mut found = Vec::new();
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        for form in forms {
            if contains(bytes, form) {
                found.push(format!("{stream}: {}", String::from_utf8_lossy(form)));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// 1. Credentials across environments
// ---------------------------------------------------------------------------------------

/// The job's `env` and a step's `env` try to replace the delivered secrets and the path of
/// the file secret; a `release` name set in the job's env must not conjure release's value.
#[test]
fn job_and_step_env_cannot_override_delivered_secrets() {
    require_privilege!();
    let (world, v) = world("");
    let job = world.job(
        "override.yaml",
        r#"name: override
environment: ci
env:
  CI_TOKEN: job-chosen
  CI_KEY_FILE: /workspace/fake
  REL_TOKEN: job-rel
  RUNNER_ENVIRONMENT: release
steps:
  - name: step env too
    env: { CI_TOKEN: step-chosen, CI_KEY_FILE: /workspace/fake2, BASH_ENV: /workspace/benv }
    run: |
      echo fake > /workspace/fake; echo fake > /workspace/fake2
      printf %s "$CI_TOKEN" | sha256sum | cut -c1-64 | sed 's/^/TOKEN-SHA=/'
      echo "KEYFILE=$CI_KEY_FILE"
      echo "REL=$REL_TOKEN"
      echo "ENVNAME=$RUNNER_ENVIRONMENT"
  - name: export in one step does not reach the next's secret
    run: |
      export CI_TOKEN=nope
      echo 'CI_TOKEN=persisted' >> /workspace/.env
  - name: next
    run: printf %s "$CI_TOKEN" | sha256sum | cut -c1-64 | sed 's/^/TOKEN2-SHA=/'
"#,
    );
    let (out, events) = world.run_audited(&job);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let real = sha256_hex(&v.ci_token);
    assert!(
        stdout.contains(&format!("TOKEN-SHA={real}")),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains(&format!("TOKEN2-SHA={real}")),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains("KEYFILE=/run/secrets/CI_KEY"),
        "{}",
        describe(&out)
    );
    assert!(stdout.contains("REL=job-rel"), "{}", describe(&out));
    for val in [&v.rel_token, &v.ci_token, &v.ci_key] {
        assert!(!stdout.contains(val.as_str()));
        for e in &events {
            assert!(!e.to_string().contains(val.as_str()));
        }
    }
}

/// A job file cannot carry claims of its own, and claims given on the command line that
/// only look like a tag ref are refused (as bad input, or as not matching) before
/// anything runs or any secret is read.
#[test]
fn job_file_claim_fields_and_lookalike_refs_get_nothing() {
    require_privilege!();
    let (world, v) = world("");
    let marker = random_value("RAN");
    for extra in [
        "ref: refs/tags/v1",
        "claims: { ref: refs/tags/v1 }",
        "repository: acme/app",
        "approval: none",
        "match: {}",
    ] {
        let job = world.job(
            "claim.yaml",
            &format!(
                "name: claim\nenvironment: release\n{extra}\nsteps:\n  - run: echo {marker} $REL_TOKEN\n"
            ),
        );
        let out = world.run(&job);
        assert_eq!(out.status.code(), Some(64), "{extra}\n{}", describe(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&marker));
    }
    let job = world.job(
        "rel.yaml",
        &format!("name: rel\nenvironment: release\nsteps:\n  - run: echo {marker} $REL_TOKEN\n"),
    );
    for claims in [
        vec![
            "--repository",
            "acme/app",
            "--ref",
            "refs/heads/v1",
            "--event",
            "push",
        ],
        vec![
            "--repository",
            "acme/app/",
            "--ref",
            "refs/tags/v1",
            "--event",
            "push",
        ],
        vec![
            "--repository",
            "acme/app",
            "--ref",
            "refs/tags/v1/../../heads/x",
            "--event",
            "push",
        ],
        vec![
            "--repository",
            "acme/app",
            "--ref",
            "refs/tags/../tags/v1",
            "--event",
            "push",
        ],
        vec![
            "--repository",
            "acme/app",
            "--ref",
            "refs/tags/v1",
            "--event",
            "pull_request",
        ],
        vec![
            "--repository",
            "acme/app",
            "--ref",
            "refs/tags/v1",
            "--event",
            "push ",
        ],
        vec![
            "--repository",
            "acme/app",
            "--ref",
            "refs/tags/v1",
            "--event",
            "",
        ],
        vec![
            "--repository",
            " acme/app",
            "--ref",
            "refs/tags/v1",
            "--event",
            "push",
        ],
    ] {
        let child = world.spawn_with(&job, &claims);
        let out = child.wait_with_output().expect("run");
        // A claim without the form of what it names is bad input (64); a well-formed one
        // that does not match is refused by the environment (2).
        let well_formed = runner_agent::config::repository_claim(claims[1]).is_ok()
            && runner_agent::config::ref_claim(claims[3]).is_ok()
            && runner_agent::config::event_claim(claims[5]).is_ok();
        let expected = if well_formed { 2 } else { 64 };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{claims:?}\n{}",
            describe(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&marker),
            "{claims:?}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&v.rel_token));
    }
    // The matching claims, but nobody approves: refused after 3 s, nothing ran.
    let child = world.spawn_with(
        &job,
        &[
            "--repository",
            "acme/app",
            "--ref",
            "refs/tags/v1",
            "--event",
            "push",
        ],
    );
    let out = child.wait_with_output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&marker));
    assert!(world.runner_records().is_empty());
}

/// A step tries to bypass the masker: the secret to stderr, to every descriptor of other
/// processes it can find (init's stdio included), to /dev/console, /dev/tty and
/// /dev/kmsg, in every documented encoding, one byte per write with pauses, from a
/// background writer straddling the step's end, and in the exit status. None of the
/// documented forms may reach the agent's stdout or stderr.
#[test]
fn masking_cannot_be_bypassed_by_channel_or_documented_encoding() {
    require_privilege!();
    let (world, v) = world("");
    let job = world.job(
        "mask.yaml",
        r#"name: mask
environment: ci
steps:
  - name: channels
    run: |
      set +e
      printf 'STDERR=%s\n' "$CI_TOKEN" >&2
      for f in /proc/[0-9]*/fd/*; do
        case "$f" in /proc/$$/*|/proc/self/*) continue;; esac
        if printf 'FD(%s)=%s\n' "$f" "$CI_TOKEN" > "$f" 2>/dev/null; then echo "WROTE-TO $f -> $(readlink $f)"; fi
      done
      for d in /dev/console /dev/tty /dev/kmsg /dev/stderr /proc/1/fd/1 /proc/1/fd/2; do
        if printf 'DEV(%s)=%s\n' "$d" "$CI_TOKEN" > "$d" 2>/dev/null; then echo "WROTE-TO $d"; fi
      done
      true
  - name: documented encodings
    run: |
      python3 - <<'PY'
      import os, sys, base64, json, urllib.parse, time
      t = os.environ["CI_TOKEN"].encode()
      k = open(os.environ["CI_KEY_FILE"], "rb").read()
      for v in (t, k):
          print("RAW", v.decode())
          for enc in (base64.b64encode, base64.urlsafe_b64encode):
              print("B64", enc(v).decode(), enc(v).decode().rstrip("="))
              for pre in (b"u:", b"us:", b"use:"):
                  print("BASIC", enc(pre + v + b"\n").decode())
          print("PCT", urllib.parse.quote(v.decode(), safe=""), urllib.parse.quote(v.decode(), safe="").lower())
          print("JSON", json.dumps(v.decode()))
          print("LOWER", v.decode().lower())
          sys.stdout.flush()
          for b in v:
              os.write(1, bytes([b]))
              time.sleep(0.003)
          os.write(1, b"\n")
          for b in v:
              os.write(2, bytes([b]))
          os.write(2, b"\n")
      PY
  - name: straddle the step's end
    run: |
      ( sleep 0.5; printf %s "${CI_TOKEN:16}"; echo ) &
      printf %s "${CI_TOKEN:0:16}"
  - name: after
    run: sleep 1; echo after
"#,
    );
    let (out, audit) = world.run_audited_to(&job);
    println!("{}", describe(&out));
    let forms = masked_forms(&[&v.ci_token, &v.ci_key]);
    let found = leaks(&out, &forms);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("RAW ***"), "{}", describe(&out));
    // The audit log and everything under state_dir and run_dir too.
    let audit_bytes = std::fs::read(&audit).unwrap_or_default();
    let mut more: Vec<String> = forms
        .iter()
        .filter(|f| contains(&audit_bytes, f))
        .map(|f| format!("audit: {}", String::from_utf8_lossy(f)))
        .collect();
    for dir in [&world.state_dir, &world.run_dir] {
        for (path, bytes) in runner_agent_tests::agent::files_under(dir) {
            for f in &forms {
                if contains(&bytes, f) {
                    more.push(format!(
                        "{}: {}",
                        path.display(),
                        String::from_utf8_lossy(f)
                    ));
                }
            }
        }
    }
    let wrote: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("WROTE-TO"))
        .collect();
    assert!(
        found.is_empty() && more.is_empty(),
        "leaked forms: {found:?} {more:?}\nwrote to: {wrote:?}\n{}",
        describe(&out)
    );
}

/// The file and env secrets of a `ci` job, copied by it into every writable place it can
/// find (the overlay's trees, /dev/shm, tool caches, $HOME), are met by no later job of the
/// same slot, and no process of the first job (its proxy included) outlives it.
#[test]
fn secrets_copied_everywhere_do_not_reach_the_next_job_of_the_slot() {
    require_privilege!();
    let (world, v) = world("max_concurrent: 1");
    let first = world.job(
        "first.yaml",
        r#"name: stash
environment: ci
steps:
  - name: stash
    run: |
      set +e
      for d in /tmp /var/tmp /dev/shm /root /root/.cache /root/.cargo /root/.npm /usr/local/share /usr/local/bin \
               /etc /etc/profile.d /var/cache /var/lib /opt /workspace /var/log /var/spool /usr/lib /lib \
               /var/lib/dpkg /var/cache/apt /run /run/lock /home /srv /mnt /media; do
        mkdir -p "$d" 2>/dev/null
        { echo "$CI_TOKEN"; cat "$CI_KEY_FILE"; } > "$d/ra-stash" 2>/dev/null && echo "STASHED $d"
      done
      echo "export LEAK=$CI_TOKEN" >> /etc/bash.bashrc
      echo "export LEAK=$CI_TOKEN" > /etc/profile.d/zz-leak.sh
      ln -s /run/secrets/CI_KEY /workspace/key-link
      setsid bash -c 'trap "" TERM HUP INT; while :; do sleep 1; done' </dev/null >/dev/null 2>&1 &
      true
"#,
    );
    let out1 = world.run(&first);
    assert_eq!(out1.status.code(), Some(0), "{}", describe(&out1));
    let id1 = world.assert_job_left_nothing(&out1);
    let (p1, p2) = v.ci_token.split_at(v.ci_token.len() / 2);
    let (k1, k2) = v.ci_key.split_at(v.ci_key.len() / 2);
    let second = world.job(
        "second.yaml",
        &format!(
            r#"name: look
steps:
  - name: look
    env: {{ P1: "{p1}", P2: "{p2}", K1: "{k1}", K2: "{k2}" }}
    run: |
      echo "LEAKVAR=${{LEAK:-unset}}" | sed "s/$P1$P2/FOUND-TOKEN/"
      python3 - <<'PY'
      import os
      needles = [(os.environ["P1"] + os.environ["P2"]).encode(), (os.environ["K1"] + os.environ["K2"]).encode()]
      hits = []
      for root in ["/"]:
          for top, dirs, files in os.walk(root):
              if top.startswith(("/proc", "/sys", "/dev/pts")):
                  dirs[:] = []
                  continue
              for f in files:
                  p = os.path.join(top, f)
                  try:
                      if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) > (8 << 20):
                          continue
                      data = open(p, "rb").read()
                      if any(n in data for n in needles):
                          hits.append(p)
                  except OSError:
                      pass
      print("SCAN:", "FOUND", hits) if hits else print("SCAN: CLEAN")
      PY
      bash -lc 'echo "LOGIN-LEAK=${{LEAK:-unset}}"' | sed "s/$P1$P2/FOUND-TOKEN/"
"#
        ),
    );
    let out2 = world.run(&second);
    println!("{}", describe(&out2));
    let stdout2 = String::from_utf8_lossy(&out2.stdout);
    assert_eq!(out2.status.code(), Some(0), "{}", describe(&out2));
    assert!(stdout2.contains("SCAN: CLEAN"), "{}", describe(&out2));
    assert!(stdout2.contains("LEAKVAR=unset"), "{}", describe(&out2));
    assert!(stdout2.contains("LOGIN-LEAK=unset"), "{}", describe(&out2));
    let id2 = world.assert_job_left_nothing(&out2);
    assert_ne!(id1, id2);
    for p in [
        "/tmp/ra-stash",
        "/var/tmp/ra-stash",
        "/dev/shm/ra-stash",
        "/etc/profile.d/zz-leak.sh",
    ] {
        assert!(!Path::new(p).exists(), "{p} reached the host");
    }
}

/// A job looks through /proc of every process it can see (init included) for a way out of
/// its root: cwd, root and fd links that lead to the host's state_dir or run_dir, where the
/// secret store and other jobs' records live.
#[test]
fn proc_links_of_init_lead_nowhere() {
    require_privilege!();
    let (world, _v) = world("");
    let job = world.job(
        "proc.yaml",
        &format!(
            r#"name: proc
environment: ci
env: {{ STATE: "{}", RUN: "{}" }}
steps:
  - name: walk proc
    run: |
      python3 - <<'PY'
      import os
      me = os.getpid()
      found = []
      for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
          if int(pid) == me:
              continue
          for link in ("root", "cwd", "exe"):
              try:
                  t = os.readlink(f"/proc/{{pid}}/{{link}}")
                  found.append(f"{{pid}}/{{link}}->{{t}}")
              except OSError:
                  pass
          for base in ("root", "cwd"):
              for target in (os.environ["STATE"], os.environ["RUN"], "/root", "/etc/shadow"):
                  p = f"/proc/{{pid}}/{{base}}" + target
                  if os.path.isfile(p):
                      print("REACHED-FILE", p, flush=True)
                  for top, dirs, files in os.walk(p):
                      for f in files:
                          print("REACHED-FILE", os.path.join(top, f), flush=True)
          try:
              for fd in os.listdir(f"/proc/{{pid}}/fd"):
                  try:
                      found.append(f"{{pid}}/fd/{{fd}}->" + os.readlink(f"/proc/{{pid}}/fd/{{fd}}"))
                  except OSError:
                      pass
          except OSError:
              pass
      print("LINKS", found)
      PY
      ls -la /run /run/secrets 2>&1 | head -20
      d="$STATE"; while [ "$d" != / ]; do ls -lad "$d"; d=$(dirname "$d"); done
      ls -laR "$STATE" "$RUN" 2>&1 | head -40
"#,
            world.state_dir.display(),
            world.run_dir.display()
        ),
    );
    let out = world.run(&job);
    println!("{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("REACHED-FILE"), "{}", describe(&out));
}

// ---------------------------------------------------------------------------------------
// 2. Resources
// ---------------------------------------------------------------------------------------

/// Starts `runner-agent run JOB`, drains its stdout (counting bytes, keeping the last
/// 64 KiB) and samples the agent's VmHWM; returns (exit code, bytes, tail, stderr, max
/// VmHWM in KiB, elapsed).
fn run_measured(world: &World, job: &Path) -> (Option<i32>, u64, String, String, u64, Duration) {
    let config = world.config.to_string_lossy().into_owned();
    let job_s = job.to_string_lossy().into_owned();
    let mut child = world
        .command(&["run", &job_s, "--config", &config])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let started = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let mut so = child.stdout.take().unwrap();
    let c2 = Arc::clone(&count);
    let reader = std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match so.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    c2.fetch_add(n as u64, Ordering::Relaxed);
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > (1 << 17) {
                        tail.drain(..tail.len() - (1 << 16));
                    }
                }
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    let mut se = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let mut hwm = 0u64;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for l in status.lines() {
                if let Some(rest) = l.strip_prefix("VmHWM:") {
                    if let Some(kb) = rest.split_whitespace().next().and_then(|x| x.parse().ok()) {
                        hwm = hwm.max(kb);
                    }
                }
            }
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let tail = reader.join().unwrap();
    let stderr = errs.join().unwrap();
    (
        status.code(),
        count.load(Ordering::Relaxed),
        tail,
        stderr,
        hwm,
        started.elapsed(),
    )
}

/// A step prints a gigabyte without a newline as fast as it can, with secrets in the
/// masker (so the masker is active), then long runs of a proper prefix of the secret (the
/// bytes the masker must hold back). The agent's peak memory stays small.
#[test]
fn endless_output_without_newline_keeps_the_agent_small() {
    require_privilege!();
    let (world, v) = world("");
    let baseline_job = world.job(
        "base.yaml",
        "name: base\nsteps:\n  - run: echo small; sleep 1\n",
    );
    let (code, _, _, _, base_hwm, _) = run_measured(&world, &baseline_job);
    assert_eq!(code, Some(0));
    let job = world.job(
        "flood.yaml",
        r#"name: flood
environment: ci
steps:
  - name: a gigabyte, no newline
    timeout: 120s
    run: head -c 1073741824 /dev/zero | tr '\0' a
  - name: prefixes of the secret, no newline
    timeout: 120s
    run: |
      python3 - <<'PY'
      import os
      t = os.environ["CI_TOKEN"].encode()
      chunk = (t[:-1]) * (65536 // len(t))
      for _ in range(3000):
          os.write(1, chunk)
      os.write(1, b"\nDONE-PREFIX\n")
      PY
"#,
    );
    let (code, bytes, tail, stderr, hwm, took) = run_measured(&world, &job);
    println!(
        "flood: code {code:?}, {bytes} bytes in {took:?}, agent VmHWM {hwm} KiB (baseline {base_hwm} KiB)\n{stderr}\n{}",
        &tail[tail.len().saturating_sub(2000)..]
    );
    assert_eq!(code, Some(0), "{stderr}\n{tail}");
    assert!(bytes > 1 << 30, "output was cut: {bytes}");
    assert!(tail.contains("DONE-PREFIX"));
    assert!(!tail.contains(&v.ci_token));
    assert!(
        hwm < base_hwm + 64 * 1024,
        "the agent grew to {hwm} KiB while a step printed (baseline {base_hwm} KiB)"
    );
}

/// A job creates files until it cannot: the limit stops it, the host keeps its inodes
/// and memory, and the runner is removed in reasonable time.
#[test]
fn millions_of_files_are_contained() {
    require_privilege!();
    let world = World::new("limits: { memory: 192MiB, disk: 4GiB }", "");
    let job = world.job(
        "inodes.yaml",
        r#"name: inodes
steps:
  - name: create files
    timeout: 90s
    continue-on-error: true
    run: |
      python3 - <<'PY'
      import os, sys
      n = 0
      os.makedirs("/workspace/f", exist_ok=True)
      try:
          for d in range(10000):
              dp = f"/workspace/f/{d}"
              os.mkdir(dp)
              for i in range(1000):
                  os.close(os.open(f"{dp}/{i}", os.O_CREAT | os.O_WRONLY, 0o644))
                  n += 1
      except OSError as e:
          print("STOPPED-AT", n, e, flush=True)
      print("CREATED", n, flush=True)
      PY
  - name: after
    run: echo AFTER-RAN; df -i /workspace | tail -1
"#,
    );
    let started = Instant::now();
    let out = world.run(&job);
    let took = started.elapsed();
    println!("took {took:?}\n{}", describe(&out));
    assert!(took < Duration::from_secs(180), "took {took:?}");
    world.assert_job_left_nothing(&out);
}

/// A step opens descriptors until it cannot, and connections to its proxy until it cannot;
/// the job keeps control of its own later step and the agent ends cleanly.
#[test]
fn descriptor_exhaustion_is_the_jobs_own_problem() {
    require_privilege!();
    let world = World::new("limits: { memory: 512MiB }", "");
    let job = world.job(
        "fds.yaml",
        r#"name: fds
steps:
  - name: descriptors
    continue-on-error: true
    timeout: 60s
    run: |
      ulimit -n 1048576 2>/dev/null || ulimit -n $(ulimit -Hn)
      echo "NOFILE $(ulimit -n)"
      python3 - <<'PY'
      import os, socket
      fds = []
      try:
          while True:
              fds.append(os.open("/dev/null", os.O_RDONLY))
      except OSError as e:
          print("FILES", len(fds), e, flush=True)
      for fd in fds[:-200]:
          os.close(fd)
      host = os.environ["HTTP_PROXY"].split("//")[1].split(":")[0]
      socks = []
      try:
          for i in range(3000):
              s = socket.socket()
              s.settimeout(2)
              s.connect((host, 3128))
              socks.append(s)
      except OSError as e:
          print("CONNS", len(socks), e, flush=True)
      print("CONNS-END", len(socks), flush=True)
      PY
  - name: after
    run: echo AFTER-RAN
"#,
    );
    let started = Instant::now();
    let (out, events) = world.run_audited(&job);
    println!("took {:?}\n{}", started.elapsed(), describe(&out));
    println!("{} audit events", events.len());
    let mut reasons = std::collections::BTreeMap::new();
    for e in &events {
        *reasons
            .entry(format!(
                "{} {} {} {}",
                e["source"], e["kind"], e["verdict"], e["reason"]
            ))
            .or_insert(0) += 1;
    }
    println!("{reasons:#?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("AFTER-RAN"),
        "{}",
        describe(&out)
    );
    // Connections past the per-client cap are refused, each recorded.
    let capped = events
        .iter()
        .filter(|e| {
            e["verdict"] == "deny"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("too many connections"))
        })
        .count();
    assert!(capped > 0, "{reasons:#?}");
    world.assert_job_left_nothing(&out);
}

// ---------------------------------------------------------------------------------------
// 3. Persistence
// ---------------------------------------------------------------------------------------

/// The state the agent keeps about a job (state_dir/jobs, the audit log, the record) is
/// out of the next job's reach, and a job cannot write into it through names it chooses
/// (job name, step names, host names with path separators).
#[test]
fn job_chosen_names_do_not_write_into_agent_state() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "names.yaml",
        r#"name: "../../../../tmp/ra-names-escape"
steps:
  - name: "../../record.json"
    run: |
      set +e
      curl -s -m 3 -o /dev/null "http://..%2f..%2fra-names.example/" 
      getent hosts '../../ra-names-dns' >/dev/null
      echo done
"#,
    );
    let (out, _events) = world.run_audited(&job);
    println!("{}", describe(&out));
    assert!(!Path::new("/tmp/ra-names-escape").exists());
    let stray: Vec<_> = runner_agent_tests::agent::files_under(world.dir.path())
        .into_keys()
        .filter(|p| p.to_string_lossy().contains("ra-names"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    let _ = job_id(&String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------------------
// 4. More
// ---------------------------------------------------------------------------------------

/// A job's `timeout` (and a step's) cannot take it past the environment's
/// `limits.timeout`.
#[test]
fn job_and_step_timeouts_cannot_exceed_the_limit() {
    require_privilege!();
    let world = World::new("limits: { timeout: 3s }", "");
    let job = world.job(
        "long.yaml",
        "name: long\ntimeout: 30d\nsteps:\n  - name: s\n    timeout: 30d\n    run: trap '' TERM INT HUP; sleep 60; echo SHOULD-NOT-PRINT\n",
    );
    let started = Instant::now();
    let out = world.run(&job);
    let took = started.elapsed();
    println!("took {took:?}\n{}", describe(&out));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("SHOULD-NOT-PRINT\n"));
    world.assert_job_left_nothing(&out);
}
