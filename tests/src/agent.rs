//! Running the `runner-agent` binary in a throwaway world of its own.
//!
//! A [`World`] is a temporary directory (host config, job files, state_dir, run_dir) and a
//! named network namespace that stands for "the host": the agent runs inside it, so its
//! veths, addresses and anything it might send stay there. The namespace has only a
//! loopback and a marker interface (so tests can prove the runner does not see host
//! interfaces), and no route anywhere. Dropping the world removes the namespace and the
//! directory; the tests themselves assert that the agent left nothing behind before that.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The name of the dummy interface every world's host namespace has.
pub const HOST_MARKER_IF: &str = "hostmark0";

/// The `runner-agent` binary under test: `RUNNER_AGENT_BIN`, or the one cargo built next
/// to this test executable (`target/<profile>/runner-agent`).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RUNNER_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/runner-agent
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let binary = profile_dir.join("runner-agent");
    assert!(
        binary.is_file(),
        "{} is missing: build it first (cargo build -p runner-agent) or set RUNNER_AGENT_BIN",
        binary.display()
    );
    binary
}

fn ip(args: &[&str]) {
    crate::netbed::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
}

/// A temporary host for the agent.
pub struct World {
    /// Scratch directory holding everything below.
    pub dir: tempfile::TempDir,
    /// Name of the network namespace the agent runs in.
    pub netns: String,
    /// The host config file.
    pub config: PathBuf,
    /// The agent's state_dir.
    pub state_dir: PathBuf,
    /// The agent's run_dir.
    pub run_dir: PathBuf,
    /// Whether the namespace was made for this world (and is removed with it).
    owns_netns: bool,
    /// Environment variables every agent command of this world gets.
    agent_env: Vec<(String, String)>,
}

static WORLDS: AtomicU32 = AtomicU32::new(0);

impl World {
    /// A world whose host config is the defaults plus `runner_yaml`, a YAML fragment
    /// placed under `runner:` (e.g. `"limits: { pids: 64 }"`), and `extra_yaml` at the
    /// top level (e.g. environments).
    pub fn new(runner_yaml: &str, extra_yaml: &str) -> World {
        let n = WORLDS.fetch_add(1, Ordering::SeqCst);
        let netns = format!("ra-t{}-{n}", std::process::id());
        ip(&["netns", "add", &netns]);
        World::build(netns, true, runner_yaml, extra_yaml)
    }

    /// A world whose agent runs in an existing namespace `netns` (for example the host
    /// namespace of a [`crate::netbed::NetBed`]); the namespace is not removed with it.
    pub fn in_netns(netns: &str, runner_yaml: &str, extra_yaml: &str) -> World {
        World::build(netns.to_owned(), false, runner_yaml, extra_yaml)
    }

    fn build(netns: String, owns_netns: bool, runner_yaml: &str, extra_yaml: &str) -> World {
        let dir = tempfile::Builder::new()
            .prefix("ra-world-")
            .tempdir()
            .expect("tempdir");
        let state_dir = dir.path().join("state");
        let run_dir = dir.path().join("run");
        let config = dir.path().join("host.yaml");
        let runner_block = if runner_yaml.trim().is_empty() {
            String::new()
        } else {
            let indented: Vec<String> = runner_yaml.lines().map(|l| format!("  {l}")).collect();
            format!("runner:\n{}\n", indented.join("\n"))
        };
        let extra = if extra_yaml.trim().is_empty() {
            "environments:\n  default:\n    egress: { mode: enforce, allow: [] }\n".to_owned()
        } else {
            format!("{extra_yaml}\n")
        };
        fs::write(
            &config,
            format!(
                "state_dir: {}\nrun_dir: {}\n{runner_block}{extra}",
                state_dir.display(),
                run_dir.display()
            ),
        )
        .expect("write host config");
        // From here on, dropping the world removes the namespace, even if a step fails.
        let world = World {
            dir,
            netns,
            config,
            state_dir,
            run_dir,
            owns_netns,
            agent_env: Vec::new(),
        };
        if !owns_netns {
            return world;
        }
        ip(&["-n", &world.netns, "link", "set", "lo", "up"]);
        // A veth pair rather than a dummy: it needs no extra kernel module.
        ip(&[
            "-n",
            &world.netns,
            "link",
            "add",
            HOST_MARKER_IF,
            "type",
            "veth",
            "peer",
            "name",
            "hostmark1",
        ]);
        world
    }

    /// Gives every agent command of this world the variable `key` (e.g. `SSL_CERT_FILE`).
    pub fn with_agent_env(mut self, key: &str, value: &str) -> World {
        self.agent_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes a job file into the world and returns its path.
    pub fn job(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, yaml).expect("write job");
        path
    }

    /// A `runner-agent` command that runs in the world's network namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let netns = fs::File::open(format!("/run/netns/{}", self.netns)).expect("open netns");
        let mut cmd = Command::new(agent_binary());
        cmd.args(args).env("CI", "true");
        cmd.envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        // SAFETY: the closure only calls setns(2) on a descriptor opened before fork,
        // which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// `runner-agent run JOB --config HOST` plus `extra` arguments.
    fn run_command(&self, job: &Path, extra: &[&str]) -> Command {
        let (job, config) = (job.to_string_lossy(), self.config.to_string_lossy());
        let mut args = vec!["run", &job, "--config", &config];
        args.extend_from_slice(extra);
        let mut cmd = self.command(&args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `runner-agent run JOB --config HOST` in a private mount namespace in which the
    /// shell snippet `setup` ran first (`unshare -m --propagation private`): a host with
    /// other mounts than this one (a filesystem mounted inside /var, a btrfs /opt), without
    /// touching this host's own.
    pub fn run_with_mounts(&self, setup: &str, job: &Path) -> Output {
        let netns = fs::File::open(format!("/run/netns/{}", self.netns)).expect("open netns");
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!("set -e\n{setup}\nexec \"$0\" \"$@\""))
            .arg(agent_binary())
            .args(["run", &job.to_string_lossy(), "--config"])
            .arg(&self.config)
            .env("CI", "true")
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        // SAFETY: the closure only calls setns(2) on a descriptor opened before fork,
        // which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().expect("run runner-agent under unshare")
    }

    /// Runs `runner-agent run JOB --config HOST` and waits for it.
    pub fn run(&self, job: &Path) -> Output {
        self.run_command(job, &[])
            .output()
            .expect("run runner-agent")
    }

    /// Like [`World::run`], with the audit log written into the world (returned parsed).
    pub fn run_audited(&self, job: &Path) -> (Output, Vec<serde_json::Value>) {
        let (output, audit) = self.run_audited_to(job);
        (output, read_audit(&audit))
    }

    /// Like [`World::run`], with the audit log written into the world; returns where.
    pub fn run_audited_to(&self, job: &Path) -> (Output, PathBuf) {
        let n = WORLDS.fetch_add(1, Ordering::SeqCst);
        let audit = self.dir.path().join(format!("audit-{n}.jsonl"));
        let output = self
            .run_command(job, &["--audit-log", &audit.to_string_lossy()])
            .output()
            .expect("run runner-agent");
        (output, audit)
    }

    /// Starts `runner-agent run JOB --config HOST` without waiting.
    pub fn spawn(&self, job: &Path) -> Child {
        self.spawn_with(job, &[])
    }

    /// Like [`World::spawn`], with `extra` arguments (claims, for example); stdout and
    /// stderr are piped.
    pub fn spawn_with(&self, job: &Path, extra: &[&str]) -> Child {
        self.run_command(job, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runner-agent")
    }

    /// Names of the links in the world's host namespace.
    pub fn host_links(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "-o", "link", "show"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect()
    }

    /// Runner records currently under run_dir.
    pub fn runner_records(&self) -> Vec<PathBuf> {
        match fs::read_dir(self.run_dir.join("runners")) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Everything the world's runners could have left: records and scratch dirs under
    /// run_dir, veths in the host namespace, cgroup dirs naming `job_ids`, mounts under
    /// run_dir. Empty when the agent cleaned up.
    pub fn leftovers(&self, job_ids: &[String]) -> Vec<String> {
        let mut left: Vec<String> = self
            .runner_records()
            .into_iter()
            .map(|p| format!("run_dir entry {}", p.display()))
            .collect();
        left.extend(
            self.host_links()
                .into_iter()
                .filter(|l| l.starts_with("ra"))
                .map(|l| format!("veth {l}")),
        );
        for cg in cgroup_dirs_of(job_ids) {
            left.push(format!("cgroup {}", cg.display()));
        }
        if let Ok(entries) = fs::read_dir("/sys/fs/bpf/runner-agent") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if job_ids.iter().any(|id| name.contains(id.as_str())) {
                    left.push(format!("eBPF pins {}", entry.path().display()));
                }
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let run_dir = self.run_dir.to_string_lossy();
        for line in mountinfo.lines() {
            if line
                .split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(run_dir.as_ref()))
            {
                left.push(format!("mount {line}"));
            }
        }
        left
    }

    /// Asserts that the jobs `job_ids` of this world left nothing ([`World::leftovers`]).
    pub fn assert_left_nothing(&self, job_ids: &[String]) {
        let left = self.leftovers(job_ids);
        assert!(left.is_empty(), "jobs {job_ids:?} left {left:#?}");
    }

    /// Asserts that the job `output` announced left nothing; returns its id.
    pub fn assert_job_left_nothing(&self, output: &Output) -> String {
        let id = job_id(&String::from_utf8_lossy(&output.stderr))
            .unwrap_or_else(|| panic!("no job id announced\n{}", describe(output)));
        self.assert_left_nothing(std::slice::from_ref(&id));
        id
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.owns_netns {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

/// Parses an audit log (JSON lines); a line that is not a JSON object fails the test.
pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad audit line {line:?}: {e}"));
            assert!(value.is_object(), "audit line is not an object: {line}");
            value
        })
        .collect()
}

/// The deny events of `events` whose field `field` equals `value` (a string or number).
pub fn denials_where<'a>(
    events: &'a [serde_json::Value],
    field: &str,
    value: serde_json::Value,
) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["verdict"] == "deny" && e[field] == value)
        .collect()
}

/// Every cgroup directory (v2 and v1) whose name contains one of `job_ids`.
pub fn cgroup_dirs_of(job_ids: &[String]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/cpu",
    ] {
        let parent = Path::new(root).join("runner-agent");
        if let Ok(entries) = fs::read_dir(&parent) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if job_ids.iter().any(|id| name.contains(id.as_str())) {
                    found.push(entry.path());
                }
            }
        }
    }
    found
}

/// The job id the agent announced on stderr (`... (j-XXXX) on runner ...`).
pub fn job_id(stderr: &str) -> Option<String> {
    let start = stderr.find("(j-")? + 1;
    let end = stderr[start..].find(')')? + start;
    Some(stderr[start..end].to_owned())
}

/// Host processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
                if String::from_utf8_lossy(&cmdline).contains(marker) {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

/// What /proc/PID/stat says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Its command name (a thread's name for a child that has not exec'd yet).
    pub comm: String,
    /// Its state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Its parent's pid.
    pub ppid: u32,
}

/// /proc/PID/stat of `pid`, if it exists. The command name is in parentheses and may
/// itself hold spaces or parentheses, so the fields after it are found from the last `)`.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (")?.1.to_owned();
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(ProcStat { comm, state, ppid })
}

/// The parent pid of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    proc_stat(pid).map(|s| s.ppid)
}

/// The children of `parent` whose command line contains `needle`.
pub fn children_with(parent: u32, needle: &str) -> Vec<u32> {
    processes_with(needle)
        .into_iter()
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// Runs `cmd` with `input` on its stdin and its stdout and stderr captured. The input is
/// written from a thread of its own, so a command that answers before it has read
/// everything cannot block on a full pipe. A command that exits without reading all of
/// its input (a refusal, say) closes the pipe early: that broken pipe is not an error
/// here, the command's status and output say what happened.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || match stdin.write_all(input) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        });
        let output = child.wait_with_output();
        writer.join().expect("stdin writer")?;
        output
    })
}

/// Every regular file below `dir` (recursively) with its content. Symbolic links are
/// not followed, so a link cannot lead the walk out of `dir` or round in a loop; other
/// non-regular files (sockets, fifos) have no content to read and are left out. A file
/// that vanishes while the walk runs is skipped; any other failure to read fails the
/// test, as a file that cannot be read cannot be shown to be clean either.
pub fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if gone(&e) => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        if meta.is_dir() {
            match fs::read_dir(&path) {
                Ok(entries) => {
                    for entry in entries {
                        let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                        stack.push(entry.path());
                    }
                }
                Err(e) if gone(&e) => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
        } else if meta.is_file() {
            match fs::read(&path) {
                Ok(bytes) => {
                    files.insert(path, bytes);
                }
                Err(e) if gone(&e) => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
    files
}

/// Polls `check` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Stdout and stderr of an agent run, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A fresh random value with a readable tag (a secret no test could guess).
pub fn random_value(tag: &str) -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{tag}-{hex}")
}

impl World {
    /// `runner-agent secrets set ENV NAME`, the value on stdin.
    pub fn set_secret(&self, env: &str, name: &str, value: &str) {
        let config = self.config.to_string_lossy().into_owned();
        let output = output_with_stdin(
            &mut self.command(&["secrets", "set", env, name, "--config", &config]),
            value.as_bytes(),
        )
        .expect("secrets set");
        assert!(output.status.success(), "{}", describe(&output));
    }
}

/// The SHA-256 of `text`, in hex (as `sha256sum` prints it).
pub fn sha256_hex(text: &str) -> String {
    let out = output_with_stdin(
        &mut std::process::Command::new("sha256sum"),
        text.as_bytes(),
    )
    .expect("sha256sum");
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The deny events of system calls the sandbox's seccomp filter refused whose reason
/// starts with `seccomp: {call}` (a call as the filter names it, or a prefix of one).
pub fn seccomp_denials<'a>(
    events: &'a [serde_json::Value],
    call: &str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    let prefix = format!("seccomp: {call}");
    events.iter().filter(move |e| {
        e["verdict"] == "deny" && e["reason"].as_str().is_some_and(|r| r.starts_with(&prefix))
    })
}

/// `text` with every line indented by `n` spaces (a script inside a job file's `run: |`).
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A job named `name` whose one step, `step`, runs `script` with `python3 - ARGS`,
/// after the shell line `before` (if not empty). `args` are shell words.
pub fn python_job(name: &str, step: &str, before: &str, args: &str, script: &str) -> String {
    let before = if before.is_empty() {
        String::new()
    } else {
        format!("      {before}\n")
    };
    format!(
        "name: {name}\nsteps:\n  - name: {step}\n    run: |\n{before}      python3 - {args} <<'PY'\n{}\n      PY\n",
        indent(script, 6)
    )
}

/// A job step `name` that runs the Python `script` (after [`PY_ATTACK_PRELUDE`] and
/// `prelude`) with `args`: the script is written into the workspace base64-encoded, so
/// that no YAML or shell quoting can change it.
pub fn python_step(name: &str, prelude: &str, script: &str, args: &str) -> String {
    use base64::Engine;

    let full = format!("{PY_ATTACK_PRELUDE}\n{prelude}\n{script}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(full);
    format!(
        "  - name: {name}\n    run: |\n      echo '{b64}' | base64 -d > /workspace/attack.py\n      python3 /workspace/attack.py {args}\n"
    )
}

impl World {
    /// Runs the [`python_job`] `name` (its one step `step`, `before`, `args`, `script`)
    /// with an audit log, and returns its output and audit events once packets still in
    /// flight have been recorded ([`crate::netbed::settle`]).
    pub fn run_python_audited(
        &self,
        name: &str,
        step: &str,
        before: &str,
        args: &str,
        script: &str,
    ) -> (Output, Vec<serde_json::Value>) {
        let job = self.job(
            &format!("{name}.yaml"),
            &python_job(name, step, before, args, script),
        );
        let audited = self.run_audited(&job);
        crate::netbed::settle();
        audited
    }
}

/// The shell line that sets `$host_side` to the host side of the runner's veth (its DNS
/// filter's address), for [`python_job`]'s `before`.
pub const HOST_SIDE: &str = "host_side=$(awk '/^nameserver/ {print $2}' /etc/resolv.conf)";

/// The start of a Python attack script run in a job: imports, the explicit proxy's
/// address (`PH`, `PP`, `E`) from `HTTP_PROXY`, `u16(n)`, `client_hello(names, ext_extra,
/// record)` (a TLS ClientHello with an SNI list, in records of `record` bytes), and
/// `raw(addr, data)`, which connects over TCP (from `bind_port`, if given), sends `data` (a
/// list is sent in parts, `pause` seconds apart) and returns what came back until the
/// peer closed or was quiet for `wait` seconds, with an error appended (`ERR ...` alone if
/// the connect failed). Also: `statuses(out)` (the HTTP status codes in a reply),
/// `read_all(sock, wait)`, `connect_tunnel(authority)` (a CONNECT through the explicit
/// proxy: the socket and the reply's head), `setcomm(name)` (the process name the
/// fence reports), `wire_name(labels)` and `q(labels, ...)` (a DNS query), and
/// `udp(label, data, addr, ...)` (one datagram, the reply's rcode printed).
pub const PY_ATTACK_PRELUDE: &str = r#"
import os, socket, ssl, struct, sys, time, ctypes
PROXY = os.environ["HTTP_PROXY"].split("://", 1)[1].rstrip("/")
PH, PP = PROXY.rsplit(":", 1)
PP = int(PP)
E = (PH, PP)
def u16(n):
    return struct.pack("!H", n)
def client_hello(names, ext_extra=b"", record=16384):
    body = b"\x03\x03" + b"\x07" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    exts = b""
    if names is not None:
        lst = b""
        for n in names:
            lst += b"\x00" + u16(len(n)) + n
        sni = u16(len(lst)) + lst
        exts += b"\x00\x00" + u16(len(sni)) + sni
    exts += ext_extra
    body += u16(len(exts)) + exts
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    out = b""
    for i in range(0, len(hs), record):
        c = hs[i:i+record]
        out += b"\x16\x03\x01" + u16(len(c)) + c
    return out
def raw(addr, data, wait=1.5, family=socket.AF_INET, pause=0.05, bind_port=None):
    out = b""
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        if bind_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", bind_port))
        s.settimeout(5)
        s.connect(addr)
    except OSError as e:
        return ("ERR %s" % e).encode()
    try:
        for part in (data if isinstance(data, list) else [data]):
            s.sendall(part)
            time.sleep(pause)
        s.settimeout(wait)
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except OSError as e:
        out += (" <%s>" % e).encode()
    finally:
        s.close()
    return out
libc = ctypes.CDLL(None, use_errno=True)
def setcomm(name):
    if isinstance(name, str):
        name = name.encode("latin1")
    libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)
def wire_name(labels):
    return b"".join(bytes([len(l)]) + l for l in labels) + b"\x00"
def q(labels, qtype=1, qclass=1, flags=0x0100, qid=0x4242, an=0, ns=0, ar=0, extra=b""):
    return struct.pack("!HHHHHH", qid, flags, 1, an, ns, ar) + wire_name(labels) + struct.pack("!HH", qtype, qclass) + extra
def statuses(out):
    res = []
    for l in out.split(b"\r\n"):
        if l.startswith(b"HTTP/1.") and len(l.split(b" ")) > 1:
            res.append(l.split(b" ")[1].decode("latin1"))
    return " ".join(res)
def read_all(t, wait):
    out = b""
    t.settimeout(wait)
    try:
        while True:
            b = t.recv(65536)
            if not b:
                break
            out += b
    except (OSError, ssl.SSLError) as e:
        out += (" <%s>" % e).encode()
    return out
def connect_tunnel(authority):
    s = socket.create_connection(E, timeout=5)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            break
        head += b
    return s, head
def udp(label, data, addr, wait=1.0, opts=None, bind_port=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for (lvl, opt, val) in (opts or []):
        s.setsockopt(lvl, opt, val)
    if bind_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", bind_port))
    s.settimeout(wait)
    try:
        s.sendto(data, addr)
        try:
            r, src = s.recvfrom(65535)
            print("ATTEMPT", label, "-> reply rcode", r[3] & 15, "ancount", struct.unpack("!H", r[6:8])[0], "len", len(r), "from", src, flush=True)
        except OSError as e:
            print("ATTEMPT", label, "-> no reply", e, flush=True)
    except OSError as e:
        print("ATTEMPT", label, "-> refused", e, flush=True)
    finally:
        s.close()
"#;
