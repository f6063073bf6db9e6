//! Fail-open when host-side components die or stop mid-job, approval and claims as a
//! credential boundary, and where a job's names end up. From inside real sandboxes as
//! root, through the product's contracts (CLI, job file, host config, audit log, signals
//! to the agent and proxy processes as a crash or an operator would send them).
//!
//! What an agent killed with SIGKILL had not yet written (a tunnel still open, events
//! still in the proxy's pipe) is lost, as the README says; these tests check what must
//! hold even then: the job dies with its agent, nothing gets out, every decision written
//! before is complete, and the next start reaps everything.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runner_agent_tests::agent::{
    children_with, describe, job_id, processes_with, python_step, random_value, read_audit,
    wait_until, World,
};
use runner_agent_tests::netbed::{allowed_test_config, settle, NetBed, TRAP_IPS};
use runner_agent_tests::require_privilege;

/// A background looper: up to `sys.argv[2]` seconds of allowed HTTP requests through the
/// explicit proxy (`/loop-N`), denied CONNECTs, direct connections to a trap, DNS lookups
/// of a denied name (`dq-N.evil.test`) and of an allowed one (`a-N.allowed.test`), and
/// an allowed CONNECT tunnel to allowed.test:443 that streams keep-alive requests
/// (`/tunnel-N`) for as long as it lives. `sys.argv[1]` is a marker (in the command line).
const LOOPER: &str = r#"
import threading
NS = open("/etc/resolv.conf").read().split("nameserver")[1].split()[0]
stop_at = time.time() + float(sys.argv[2])
TRAP = sys.argv[3]
def read_response(t):
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = t.recv(4096)
        if not b:
            raise OSError("closed")
        buf += b
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for l in head.split(b"\r\n"):
        if l.lower().startswith(b"content-length:"):
            length = int(l.split(b":")[1])
    while len(body) < length:
        b = t.recv(4096)
        if not b:
            raise OSError("closed")
        body += b
    return head.split(b"\r\n")[0]
def tunnel():
    n = 0
    while time.time() < stop_at:
        try:
            s, head = connect_tunnel("allowed.test:443")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            t = ctx.wrap_socket(s, server_hostname="allowed.test")
            t.settimeout(5)
            print("TUNNEL-OPEN", head[:20], flush=True)
            while time.time() < stop_at:
                n += 1
                t.sendall(b"GET /tunnel-%d HTTP/1.1\r\nHost: allowed.test\r\n\r\n" % n)
                read_response(t)
                time.sleep(0.05)
        except Exception as e:
            print("TUNNEL-ERR", e, flush=True)
            time.sleep(0.2)
def dns(name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        s.sendto(q(name), (NS, 53))
        s.recvfrom(4096)
    except OSError:
        pass
    finally:
        s.close()
def loop():
    n = 0
    while time.time() < stop_at:
        n += 1
        raw(E, b"GET http://allowed.test/loop-%d HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n" % n, wait=1)
        raw(E, b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n", wait=0.2)
        raw((TRAP, 8080), b"GET /trap-%d HTTP/1.1\r\nHost: evil.test\r\n\r\n" % n, wait=0.2)
        dns([b"dq-%d" % n, b"evil", b"test"])
        dns([b"a-%d" % n, b"allowed", b"test"])
        print("LOOP", n, flush=True)
threads = [threading.Thread(target=tunnel, daemon=True), threading.Thread(target=loop, daemon=True)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("LOOPER-DONE", flush=True)
"#;

/// Collects a child's pipe into a shared string from a thread of its own.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

fn text(shared: &Arc<Mutex<String>>) -> String {
    shared.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A spawned agent with its output collected.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    audit: PathBuf,
}

fn spawn(world: &World, job: &Path, extra: &[&str]) -> Running {
    let audit = world
        .dir
        .path()
        .join(format!("audit-{}.jsonl", random_value("a")));
    let audit_s = audit.to_string_lossy().into_owned();
    let mut args = vec!["--audit-log", audit_s.as_str()];
    args.extend_from_slice(extra);
    let mut child = world.spawn_with(job, &args);
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    Running {
        child,
        stdout,
        stderr,
        audit,
    }
}

impl Running {
    fn job_id(&self, within: Duration) -> String {
        let mut id = None;
        wait_until(within, || {
            id = job_id(&text(&self.stderr));
            id.is_some()
        });
        id.unwrap_or_else(|| panic!("no job id: {}", text(&self.stderr)))
    }
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
    fn proxy(&self) -> Option<u32> {
        children_with(self.child.id(), "__egress-proxy")
            .into_iter()
            .next()
    }
    /// Waits at most `within` for the agent to end; kills it otherwise.
    fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

fn looper_job(name: &str, marker: &str, seconds: u32, timeout: &str, extra_steps: &str) -> String {
    format!(
        "name: {name}\ntimeout: {timeout}\nsteps:\n{}{extra_steps}",
        python_step(
            "loop",
            "",
            LOOPER,
            &format!("{marker} {seconds} {}", TRAP_IPS[0])
        )
    )
}

fn paths_with(bed: &NetBed, prefix: &str) -> BTreeSet<String> {
    bed.web_hits()
        .into_iter()
        .map(|h| h.path)
        .filter(|p| p.starts_with(prefix))
        .collect()
}

fn event_paths(events: &[serde_json::Value], prefix: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e["path"].as_str())
        .filter(|p| p.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

fn dns_names(bed: &NetBed, prefix: &str) -> BTreeSet<String> {
    bed.dns_hits()
        .into_iter()
        .map(|h| h.name)
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn event_hosts(events: &[serde_json::Value], prefix: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "dns")
        .filter_map(|e| e["host"].as_str())
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .filter(|h| h.starts_with(prefix))
        .collect()
}

fn tunnel_events(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events
        .iter()
        .filter(|e| {
            e["kind"] == "connect" && e["host"] == "allowed.test" && e["verdict"] == "allow"
        })
        .collect()
}

/// Runs a job on `world` and returns its output: the next start, which reaps.
fn next_start(world: &World) -> Output {
    let next = world.job(
        "next.yaml",
        "name: next\nsteps:\n  - run: echo next job ran\n",
    );
    world.run(&next)
}

/// A looper job running under its agent, in a bed of its own.
struct Looping {
    bed: NetBed,
    world: World,
    /// In the looper's command line, to find its processes.
    marker: String,
    agent: Running,
    id: String,
}

/// Starts the job that `job` writes for a looper marked `marker` (named after `name`),
/// and waits until the bed has seen each of the paths `going`.
fn start_looping(name: &str, going: &[&str], job: impl FnOnce(&str) -> String) -> Looping {
    let bed = NetBed::new().expect("bed");
    let world = World::in_netns(bed.host_ns(), "", &allowed_test_config("", ""));
    let marker = random_value(name);
    let job = world.job(&format!("{name}.yaml"), &job(&marker));
    let agent = spawn(&world, &job, &[]);
    let id = agent.job_id(Duration::from_secs(30));
    let started = wait_until(Duration::from_secs(30), || {
        let web = paths_with(&bed, "/");
        going.iter().all(|path| web.contains(*path))
    });
    assert!(
        started,
        "the looper never got going: {}",
        text(&agent.stdout)
    );
    Looping {
        bed,
        world,
        marker,
        agent,
        id,
    }
}

impl Looping {
    /// The proxy process's pid.
    fn proxy(&self) -> Pid {
        Pid::from_raw(self.agent.proxy().expect("proxy") as i32)
    }

    /// The job's audit events, once packets still in flight have been recorded.
    fn events(&self) -> Vec<serde_json::Value> {
        settle();
        read_audit(&self.agent.audit)
    }

    /// Allowed requests (`/loop-*`) and lookups (`a-*`) the bed saw without an event.
    fn unaudited(&self, events: &[serde_json::Value]) -> (Vec<String>, Vec<String>) {
        let requests = paths_with(&self.bed, "/loop-")
            .difference(&event_paths(events, "/loop-"))
            .cloned()
            .collect();
        let lookups = dns_names(&self.bed, "a-")
            .difference(&event_hosts(events, "a-"))
            .cloned()
            .collect();
        (requests, lookups)
    }

    /// Checks that nothing of the looper got out: no trap hit, no denied name upstream,
    /// and no process of it left.
    fn assert_nothing_got_out(&self) {
        assert!(
            self.bed.trap_hits().is_empty(),
            "{:?}",
            self.bed.trap_hits()
        );
        let denied = dns_names(&self.bed, "dq-");
        assert!(denied.is_empty(), "denied names upstream: {denied:?}");
        assert!(
            processes_with(&self.marker).is_empty(),
            "the looper lives on"
        );
    }

    /// Checks that the next start on the same run_dir reaps everything of this job.
    fn assert_next_start_reaps(&self) {
        let output = next_start(&self.world);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        let left = self.world.leftovers(std::slice::from_ref(&self.id));
        assert!(left.is_empty(), "left after the next start: {left:#?}");
    }

    /// SIGKILLs the agent, then watches (at most 20 s) for the looper's processes and
    /// the proxy to end, and reports what happened after the kill.
    fn kill_agent(&mut self) -> AfterKill {
        let proxy = self.proxy();
        kill(self.agent.pid(), Signal::SIGKILL).expect("kill the agent");
        let killed = Instant::now();
        let _ = self.agent.child.wait();
        let (mut job_gone_after, mut proxy_gone_after) = (None, None);
        while killed.elapsed() < Duration::from_secs(20) {
            if job_gone_after.is_none() && processes_with(&self.marker).is_empty() {
                job_gone_after = Some(killed.elapsed());
            }
            if proxy_gone_after.is_none() && !Path::new(&format!("/proc/{proxy}")).exists() {
                proxy_gone_after = Some(killed.elapsed());
            }
            if job_gone_after.is_some() && proxy_gone_after.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let events = self.events();
        let (unaudited_loop, unaudited_dns) = self.unaudited(&events);
        // Nothing reaches the bed once the job is gone.
        let hits_then = self.bed.web_hits().len();
        std::thread::sleep(Duration::from_secs(1));
        let after = AfterKill {
            job_gone_after,
            proxy_gone_after,
            unaudited_loop,
            unaudited_dns,
            hits_after: self.bed.web_hits().len() - hits_then,
        };
        println!(
            "after SIGKILL: {after:?}; tunnel hits {}, tunnel events {}",
            paths_with(&self.bed, "/tunnel-").len(),
            tunnel_events(&events).len()
        );
        after
    }
}

/// What a killed agent's job did after the kill, and what of it the log holds.
#[derive(Debug)]
struct AfterKill {
    job_gone_after: Option<Duration>,
    proxy_gone_after: Option<Duration>,
    unaudited_loop: Vec<String>,
    unaudited_dns: Vec<String>,
    /// Web requests that arrived in the second after the job was gone.
    hits_after: usize,
}

impl AfterKill {
    /// The job and its proxy died with the agent, nothing arrived afterwards, and every
    /// decision written before the kill is complete.
    fn assert_fenced_and_complete(&self) {
        assert!(
            self.job_gone_after
                .is_some_and(|d| d < Duration::from_secs(2)),
            "the job ran on without its agent: {:?}",
            self.job_gone_after
        );
        assert!(
            self.proxy_gone_after
                .is_some_and(|d| d < Duration::from_secs(3)),
            "the proxy ran on without its agent: {:?}",
            self.proxy_gone_after
        );
        assert_eq!(self.hits_after, 0, "traffic after the job died");
        assert!(
            self.unaudited_loop.is_empty(),
            "allowed requests without an event: {:?}",
            self.unaudited_loop
        );
        assert!(
            self.unaudited_dns.is_empty(),
            "allowed lookups without an event: {:?}",
            self.unaudited_dns
        );
    }
}

/// SIGKILL of the agent while a step loops over allowed, denied and DNS traffic and
/// holds an allowed CONNECT tunnel that streams requests.
#[test]
fn killed_agent_mid_step_with_an_open_tunnel() {
    require_privilege!();
    let mut looping = start_looping("looper", &["/tunnel-10", "/loop-5"], |marker| {
        looper_job("looper", marker, 60, "90s", "")
    });
    std::thread::sleep(Duration::from_millis(700));
    looping.kill_agent().assert_fenced_and_complete();
    looping.assert_nothing_got_out();
    looping.assert_next_start_reaps();
}

/// The looper runs in the background of the first step and the job goes on through many
/// short steps; the agent is killed while it moves between them.
#[test]
fn killed_agent_between_steps() {
    require_privilege!();
    let mut steps = String::new();
    for i in 0..400 {
        steps.push_str(&format!("  - name: s{i}\n    run: sleep 0.02\n"));
    }
    let mut looping = start_looping("between", &["/tunnel-10", "/loop-5"], |marker| {
        let args = format!("{marker} 60 {}", TRAP_IPS[0]);
        // The first step starts the looper detached (setsid) and returns.
        let step = python_step("loop", "", LOOPER, &args).replace(
            &format!("      python3 /workspace/attack.py {args}\n"),
            &format!(
                "      setsid nohup python3 /workspace/attack.py {args} >/dev/null 2>&1 </dev/null &\n      sleep 0.5\n"
            ),
        );
        format!("name: between\ntimeout: 90s\nsteps:\n{step}{steps}")
    });
    // Kill right after a step trailer appears.
    let seen = text(&looping.agent.stdout).matches("<== ").count();
    wait_until(Duration::from_secs(10), || {
        text(&looping.agent.stdout).matches("<== ").count() > seen + 2
    });
    looping.kill_agent().assert_fenced_and_complete();
    looping.assert_nothing_got_out();
    looping.assert_next_start_reaps();
}

/// A SIGSTOPped proxy: egress does not open, the job timeout still ends the job, and the
/// agent kills the stopped proxy, recording that its open connections are not logged.
#[test]
fn a_stopped_proxy_opens_nothing_and_the_job_timeout_still_applies() {
    require_privilege!();
    let mut looping = start_looping("stopped", &["/loop-3"], |marker| {
        looper_job("stopped", marker, 60, "10s", "")
    });
    let proxy = looping.proxy();
    kill(proxy, Signal::SIGSTOP).expect("stop proxy");
    std::thread::sleep(Duration::from_millis(300));
    let hits_at_stop = looping.bed.web_hits().len();
    let status = looping.agent.wait(Duration::from_secs(40));
    let events = looping.events();
    let after_stop = looping.bed.web_hits().len() - hits_at_stop;
    println!("agent ended {status:?}; {after_stop} web hits after the stop");
    // Whatever happened, leave nothing running.
    let _ = kill(proxy, Signal::SIGCONT);
    let proxy_alive = Path::new(&format!("/proc/{proxy}")).exists();
    let left = looping.world.leftovers(std::slice::from_ref(&looping.id));
    if status.is_none() || proxy_alive || !left.is_empty() {
        let _ = kill(proxy, Signal::SIGKILL);
        println!("cleanup run: {}", describe(&next_start(&looping.world)));
    }
    assert!(status.is_some(), "the agent hung with its proxy stopped");
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert!(!proxy_alive, "the stopped proxy outlived its agent");
    assert!(left.is_empty(), "{left:#?}");
    assert_eq!(after_stop, 0);
    assert_killed_proxy_recorded(&events);
    looping.assert_nothing_got_out();
}

/// The agent SIGSTOPped for a few seconds, then SIGCONT: no decision of that time is
/// missing from the log, and nothing gets out unfenced.
#[test]
fn a_briefly_stopped_agent_loses_no_event() {
    require_privilege!();
    let mut looping = start_looping("paused", &["/loop-3"], |marker| {
        looper_job("paused", marker, 9, "60s", "")
    });
    kill(looping.agent.pid(), Signal::SIGSTOP).expect("stop agent");
    std::thread::sleep(Duration::from_secs(3));
    kill(looping.agent.pid(), Signal::SIGCONT).expect("cont agent");
    let status = looping.agent.wait(Duration::from_secs(60));
    let events = looping.events();
    let (requests, lookups) = looping.unaudited(&events);
    assert!(status.is_some());
    assert!(
        requests.is_empty(),
        "allowed requests without an event: {requests:?}"
    );
    assert!(
        lookups.is_empty(),
        "allowed lookups without an event: {lookups:?}"
    );
    let tunnel_hits = paths_with(&looping.bed, "/tunnel-").len();
    assert!(tunnel_hits == 0 || !tunnel_events(&events).is_empty());
    looping.assert_nothing_got_out();
}

// ---------------------------------------------------------------------------------------
// Family 2: claims and approval.

const GATED_CONFIG: &str = r#"environments:
  default:
    egress: { mode: enforce, allow: [] }
  ci:
    egress: { mode: enforce, allow: [] }
    secrets:
      CI_TOKEN: { deliver: env }
  release:
    match:
      repositories: [acme/app]
      refs: ["refs/tags/v*"]
      events: [push]
    approval: required
    approval_timeout: 25s
    egress: { mode: enforce, allow: [] }
    secrets:
      REL_TOKEN: { deliver: env }
      REL_FILE: { deliver: file }
"#;

fn approve(world: &World, args: &[&str]) -> Output {
    let config = world.config.to_string_lossy().into_owned();
    let mut all = vec!["approve"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", &config]);
    world.command(&all).output().expect("approve")
}

const RELEASE_CLAIMS: &[&str] = &[
    "--repository",
    "acme/app",
    "--ref",
    "refs/tags/v1.0",
    "--event",
    "push",
];

/// Odd claim spellings against `match`: each is refused (as bad input, or as not
/// matching) before anything is created.
#[test]
fn odd_claims_are_refused_before_anything_exists() {
    require_privilege!();
    let world = World::new("", GATED_CONFIG);
    let rel = random_value("rel");
    world.set_secret("release", "REL_TOKEN", &rel);
    world.set_secret("release", "REL_FILE", &rel);
    let job = world.job(
        "rel.yaml",
        "name: rel\nenvironment: release\nsteps:\n  - run: env; cat /run/secrets/* || true\n",
    );
    let cases: &[(&str, &str)] = &[
        ("--repository", "ACME/app"),
        ("--repository", "acme/app/"),
        ("--repository", "acme/app/../app"),
        ("--repository", "acme/*"),
        ("--repository", "acme/app "),
        ("--repository", ""),
        ("--repository", "acme//app"),
        ("--repository", "./acme/app"),
        ("--ref", "refs/tags/v1/../../heads/main"),
        // Pattern characters in a claim once matched the same pattern as text.
        ("--ref", "refs/tags/v*"),
        ("--ref", "refs/tags/v**"),
        ("--ref", "refs/tags/../heads/x"),
        ("--repository", "acme/ap?"),
        ("--ref", "refs/heads/../tags/v1"),
        ("--ref", "REFS/TAGS/V1"),
        ("--ref", ""),
        ("--event", "Push"),
        ("--event", "push "),
        ("--event", "pull_request"),
    ];
    for (flag, value) in cases {
        let mut args: Vec<&str> = RELEASE_CLAIMS.to_vec();
        let at = args.iter().position(|a| a == flag).expect("flag") + 1;
        args[at] = value;
        let (job_s, config) = (
            job.to_string_lossy().into_owned(),
            world.config.to_string_lossy().into_owned(),
        );
        let mut all = vec!["run", job_s.as_str(), "--config", config.as_str()];
        all.extend_from_slice(&args);
        let mut cmd = world.command(&all);
        let output = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run");
        let out = describe(&output);
        println!(
            "{flag} {value:?} -> {:?}: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
        assert_ne!(output.status.code(), Some(0), "{flag} {value:?} ran: {out}");
        assert!(!out.contains(&rel), "{flag} {value:?} leaked: {out}");
        assert!(
            !out.contains("waits for approval"),
            "{flag} {value:?} reached approval: {out}"
        );
    }
    assert!(world.runner_records().is_empty());
    assert!(
        !world.state_dir.join("approvals").exists()
            || std::fs::read_dir(world.state_dir.join("approvals"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
    );
}

/// Approval names one job: approving another id, approving twice, rejecting, and a
/// sandboxed job looking for the approvals directory.
#[test]
fn approval_answers_bind_one_job_and_stay_out_of_the_sandbox() {
    require_privilege!();
    let world = World::new("", GATED_CONFIG);
    let rel = random_value("rel");
    let ci = random_value("ci");
    world.set_secret("release", "REL_TOKEN", &rel);
    world.set_secret("release", "REL_FILE", &rel);
    world.set_secret("ci", "CI_TOKEN", &ci);
    let state = world.state_dir.to_string_lossy().into_owned();
    // A job of `ci` looks for the approvals directory and for release's secrets.
    let probe = format!(
        r#"name: probe
environment: ci
env: {{ STATE: "{state}" }}
steps:
  - name: look
    run: |
      set +e
      ls -la "$STATE" "$STATE/approvals" 2>&1 | head -5
      touch "$STATE/approvals/x.approved" 2>&1 && echo WROTE-APPROVAL
      mkdir -p "$STATE/approvals" 2>&1 && touch "$STATE/approvals/y.approved" && echo WROTE-IN-UPPER
      cat /proc/1/environ 2>&1 | tr '\0' '\n' | head -3
      grep -rl REL_ / 2>/dev/null --include=*.secret | head
      env | grep -c TOKEN
      echo PROBE-DONE
"#
    );
    let mut first = spawn(
        &world,
        &world.job(
            "a.yaml",
            "name: a\nenvironment: release\nsteps:\n  - run: echo A-RAN; env | grep -c REL_TOKEN\n",
        ),
        RELEASE_CLAIMS,
    );
    let mut second = spawn(
        &world,
        &world.job(
            "b.yaml",
            "name: b\nenvironment: release\nsteps:\n  - run: echo B-RAN\n",
        ),
        RELEASE_CLAIMS,
    );
    let a = first.job_id(Duration::from_secs(20));
    let b = second.job_id(Duration::from_secs(20));
    assert!(wait_until(Duration::from_secs(10), || {
        String::from_utf8_lossy(&approve(&world, &[]).stdout)
            .matches("j-")
            .count()
            >= 2
    }));
    let listing = approve(&world, &[]);
    println!("{}", describe(&listing));

    // The probe of another environment runs while both wait.
    let (probe_out, probe_events) = world.run_audited(&world.job("probe.yaml", &probe));
    let probe_text = describe(&probe_out);
    println!("{probe_text}");
    assert!(probe_text.contains("PROBE-DONE"));
    assert!(!probe_text.contains("WROTE-APPROVAL"));
    assert!(!probe_text.contains(&rel));
    assert!(!serde_json::to_string(&probe_events)
        .unwrap_or_default()
        .contains(&rel));
    // Whatever the probe wrote inside stays there.
    for entry in std::fs::read_dir(world.state_dir.join("approvals"))
        .expect("approvals")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&a) || name.starts_with(&b),
            "unexpected approval file {name}"
        );
    }

    // Approve b; a must keep waiting.
    let out = approve(&world, &[&b]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let again = approve(&world, &[&b]);
    println!("approve b twice: {}", describe(&again));
    assert_ne!(again.status.code(), Some(0));
    let rej = approve(&world, &[&b, "--reject"]);
    println!("reject b after approval: {}", describe(&rej));
    let b_status = second.wait(Duration::from_secs(30));
    println!("b: {:?}\n{}", b_status, text(&second.stdout));
    assert_eq!(b_status.and_then(|s| s.code()), Some(0));
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        first.child.try_wait().expect("try_wait").is_none(),
        "a ran on b's approval"
    );
    assert!(!text(&first.stdout).contains("A-RAN"));
    // Reject a, then try to approve it.
    let rej = approve(&world, &[&a, "--reject"]);
    assert_eq!(rej.status.code(), Some(0), "{}", describe(&rej));
    let late = approve(&world, &[&a]);
    println!("approve after reject: {}", describe(&late));
    assert_ne!(late.status.code(), Some(0));
    let a_status = first.wait(Duration::from_secs(10));
    assert_eq!(a_status.and_then(|s| s.code()), Some(2));
    assert!(!text(&first.stdout).contains("A-RAN"));
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(world.state_dir.join("jobs").join(&a).join("record.json")).expect("record"),
    )
    .expect("json");
    println!("a's record: {record}");
    assert_eq!(record["approval"]["outcome"], "rejected");
    assert_eq!(record["secrets"], serde_json::json!([]));
    let left: Vec<_> = std::fs::read_dir(world.state_dir.join("approvals"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "approval files left: {left:?}");
}

/// A killed agent that waited for approval: its request is not approvable, and a stale
/// answer cannot be used by any other job.
#[test]
fn an_agent_killed_while_waiting_for_approval_leaves_nothing_approvable() {
    require_privilege!();
    let world = World::new("", GATED_CONFIG);
    world.set_secret("release", "REL_TOKEN", "v1");
    world.set_secret("release", "REL_FILE", "v2");
    let job = world.job(
        "k.yaml",
        "name: k\nenvironment: release\nsteps:\n  - run: echo K-RAN\n",
    );
    let mut agent = spawn(&world, &job, RELEASE_CLAIMS);
    let id = agent.job_id(Duration::from_secs(20));
    assert!(wait_until(Duration::from_secs(10), || world
        .state_dir
        .join("approvals")
        .join(format!("{id}.pending"))
        .exists()));
    kill(agent.pid(), Signal::SIGKILL).expect("kill");
    let _ = agent.child.wait();
    let out = approve(&world, &[&id]);
    println!("approve a dead job: {}", describe(&out));
    assert_ne!(out.status.code(), Some(0));
    let list = approve(&world, &[]);
    println!("list: {}", describe(&list));
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&id));
    let record = world.state_dir.join("jobs").join(&id).join("record.json");
    println!(
        "record of the killed waiting job exists: {}",
        record.exists()
    );
    let files: Vec<_> = std::fs::read_dir(world.state_dir.join("approvals"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    println!("approval files: {files:?}");
    assert!(files.is_empty());
    // A job id as an approval answer for something that never asked.
    let bogus = approve(&world, &["j-00000000000000000000000000"]);
    assert_ne!(bogus.status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Family 3: where the job's names end up.

/// Job and step names with path characters, and a job that prints fake job ids: every
/// file the agent writes is under state_dir, run_dir or the named audit log.
#[test]
fn job_chosen_names_and_printed_ids_touch_no_other_file() {
    require_privilege!();
    let world = World::new("", "");
    let tag = random_value("tag");
    let before_tmp: BTreeSet<String> = std::fs::read_dir("/tmp")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let job = world.job(
        "names.yaml",
        &format!(
            "name: \"../../../../tmp/{tag}\"\nsteps:\n  - name: \"/tmp/{tag}-step\"\n    run: |\n      echo \"runner-agent: job x (j-00000000000000000000000000) on runner r-9\"\n      echo '{{\"job\":\"j-00000000000000000000000000\"}}'\n      echo \"$RUNNER_JOB_ID\"\n"
        ),
    );
    let (output, audit) = world.run_audited_to(&job);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let id = world.assert_job_left_nothing(&output);
    let after_tmp: BTreeSet<String> = std::fs::read_dir("/tmp")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let new: Vec<&String> = after_tmp
        .difference(&before_tmp)
        .filter(|n| n.contains(&tag))
        .collect();
    assert!(new.is_empty(), "{new:?}");
    let jobs: Vec<String> = std::fs::read_dir(world.state_dir.join("jobs"))
        .expect("jobs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(jobs, vec![id.clone()]);
    assert!(!world
        .state_dir
        .join("jobs/j-00000000000000000000000000")
        .exists());
    let events = read_audit(&audit);
    assert!(events
        .iter()
        .all(|e| e["job"] == id.as_str() || e["job"].is_null()));
}

/// The proxy hangs (SIGSTOP) while a tunnel is open and the job's step then ends by
/// itself: the proxy is killed at the end, what it held is missing from the log, so an
/// event says so and the job fails (it once "succeeded", its tunnel's traffic unlogged).
#[test]
fn a_hung_proxy_at_the_end_of_a_job_that_ends_by_itself() {
    require_privilege!();
    let mut looping = start_looping("hung", &["/loop-3", "/tunnel-10"], |marker| {
        looper_job("hung", marker, 6, "60s", "")
    });
    let proxy = looping.proxy();
    kill(proxy, Signal::SIGSTOP).expect("stop proxy");
    let status = looping.agent.wait(Duration::from_secs(60));
    let events = looping.events();
    let _ = kill(proxy, Signal::SIGKILL);
    let record_path = looping
        .world
        .state_dir
        .join("jobs")
        .join(&looping.id)
        .join("record.json");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record_path).expect("record")).expect("json");
    looping
        .world
        .assert_left_nothing(std::slice::from_ref(&looping.id));
    looping.assert_nothing_got_out();
    // Its tunnel's traffic never reached the log: the job must not pass for a success.
    assert_killed_proxy_recorded(&events);
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert_eq!(record["status"], "failed", "{record}");
}

/// The event that says a proxy had to be killed at the job's end, leaving its open
/// connections out of the log.
fn assert_killed_proxy_recorded(events: &[serde_json::Value]) {
    assert!(
        events.iter().any(|e| e["source"] == "proxy"
            && e["verdict"] == "deny"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("did not stop") && r.contains("not in the log"))),
        "no event says the proxy was killed with connections unrecorded"
    );
}

/// SIGTERM to the agent with a tunnel open: the job is cancelled and the tunnel is
/// recorded, with what it carried.
#[test]
fn sigterm_to_the_agent_records_the_open_tunnel() {
    require_privilege!();
    let mut looping = start_looping("term", &["/tunnel-10"], |marker| {
        looper_job("term", marker, 60, "90s", "")
    });
    kill(looping.agent.pid(), Signal::SIGTERM).expect("term");
    let status = looping.agent.wait(Duration::from_secs(30));
    let events = looping.events();
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert!(
        !tunnel_events(&events).is_empty(),
        "the open tunnel left no event"
    );
    looping
        .world
        .assert_left_nothing(std::slice::from_ref(&looping.id));
    looping.assert_nothing_got_out();
}

/// The proxy hangs (SIGSTOP), then the agent is SIGKILLed: the stopped proxy cannot read
/// its closed stdin, and the next start reaps it with the rest.
#[test]
fn a_hung_proxy_of_a_killed_agent_is_reaped_by_the_next_start() {
    require_privilege!();
    let mut looping = start_looping("hungkill", &["/loop-2"], |marker| {
        looper_job("hk", marker, 60, "90s", "")
    });
    let proxy = looping.proxy();
    kill(proxy, Signal::SIGSTOP).expect("stop proxy");
    kill(looping.agent.pid(), Signal::SIGKILL).expect("kill agent");
    let _ = looping.agent.child.wait();
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&looping.marker)
            .is_empty()),
        "the job ran on"
    );
    looping.assert_next_start_reaps();
    let gone = wait_until(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{proxy}")).exists()
    });
    if !gone {
        let _ = kill(proxy, Signal::SIGKILL);
        let _ = kill(proxy, Signal::SIGCONT);
    }
    assert!(
        gone,
        "the next start left the stopped proxy {proxy} running"
    );
    looping.assert_nothing_got_out();
}

/// A ref claim with an invisible TAG character (U+E0001) is bad input; it once waited
/// for approval and was listed to the approver as the release tag `refs/tags/v1.0`.
#[test]
fn a_ref_claim_with_an_invisible_character_never_reaches_the_approver() {
    require_privilege!();
    let world = World::new("", GATED_CONFIG);
    let job = world.job(
        "rel.yaml",
        "name: rel\nenvironment: release\nsteps:\n  - run: echo REL-RAN\n",
    );
    // `refs/tags/v1.0` and an invisible TAG character: it once waited for approval and
    // was listed as the release tag `refs/tags/v1.0`.
    let forged = "refs/tags/v1.0\u{E0001}";
    let output = world
        .command(&[
            "run",
            &job.to_string_lossy(),
            "--config",
            &world.config.to_string_lossy(),
            "--repository",
            "acme/app",
            "--ref",
            forged,
            "--event",
            "push",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    println!("{}", describe(&output));
    assert_eq!(output.status.code(), Some(64), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("U+E0001"));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("REL-RAN"));
    let listing = world
        .command(&["approve", "--config", &world.config.to_string_lossy()])
        .output()
        .expect("approve");
    assert!(
        !String::from_utf8_lossy(&listing.stdout).contains("j-"),
        "a job waits for approval: {}",
        describe(&listing)
    );
}
