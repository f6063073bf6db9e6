//! Messages between the agent and the sandbox init, one JSON object per line over the
//! init's stdin (a unix socket pair).
//!
//! Neither side ever has more than one message in flight. The agent starts init already
//! in its own network namespace and the runner's v2 cgroup (`crate::sys::spawn`), so it
//! builds the veth while init starts and builds the sandbox, without waiting for a
//! message.
//!
//! ```text
//! agent                          init (host pid ns)        init (pid 1 inside)
//!   clone3 (netns, v2 cgroup) ──▶ starts
//!   Spec ───────────────────────▶ joins the v1 cgroups,
//!   (veth into its netns,         unshares the rest,
//!    tc program on the host side) forks ─────────────────▶ builds the root, drops to
//!   NetworkReady ──────────────────────────────────────────▶ the userns, then waits
//!        ◀──────────────────────────────────────────────── SandboxReady   for this
//!   RunStep ───────────────────────────────────────────────▶
//!        ◀──────────────────────────────────────────────── StepExited
//!   (close) ───────────────────────────────────────────────▶ exits; the pid ns dies
//! ```
//!
//! Any failure inside is reported as `Failed` with the stage and the reason, and init
//! exits. Step output never goes through this channel: it has a pipe of its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `msg` as one JSON line in a buffer that is zeroed when dropped: the messages to init
/// and to the proxy process may carry secrets (file and env values, the job CA's key,
/// credentials). The message is serialised twice, first only to count its bytes, so that
/// the buffer never grows: growing would free earlier copies without zeroing them.
pub fn json_line<T: Serialize>(msg: &T) -> serde_json::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut counted = ByteCount(0);
    serde_json::to_writer(&mut counted, msg)?;
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(counted.0 + 1));
    serde_json::to_writer(&mut *line, msg)?;
    line.push(b'\n');
    Ok(line)
}

/// Reads one line (with its newline, if any) that may carry secrets into a buffer that is
/// zeroed when dropped; empty at end of input. When the buffer must grow, the bytes move
/// to a new zeroizing buffer and the old one is zeroed as it goes, so no freed copy of the
/// line is left behind (`read_line` would let `Vec` reallocate without zeroing). The
/// reader's own buffer (a `BufReader`'s 8 KiB) still holds the end of the line until it
/// is overwritten or freed.
pub fn read_secret_line(
    reader: &mut impl std::io::BufRead,
) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut line = zeroize::Zeroizing::new(Vec::new());
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(line);
        }
        let (chunk, ends) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..=at], true),
            None => (available, false),
        };
        let needed = line.len() + chunk.len();
        if needed > line.capacity() {
            let mut bigger = Vec::with_capacity(needed.max(2 * line.capacity()).max(4096));
            bigger.extend_from_slice(&line);
            line = zeroize::Zeroizing::new(bigger);
        }
        line.extend_from_slice(chunk);
        let taken = chunk.len();
        reader.consume(taken);
        if ends {
            return Ok(line);
        }
    }
}

/// A writer that only counts what it is given.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A secret delivered as a file (`deliver: file`): `SECRETS_DIR/name` inside the sandbox.
/// The content is zeroed when the value is dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    /// The secret's name, also the file name.
    pub name: String,
    /// The value.
    pub content: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SecretFile {
    /// Never prints the value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({}, {} bytes)", self.name, self.content.len())
    }
}

/// Everything init needs to build the sandbox. Its only secrets are the `deliver: file`
/// values in `secret_files`, which init writes to a tmpfs of their own and then zeroes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The runner's name, also its hostname.
    pub runner: String,
    /// The host uid and gid that are uid/gid 0 inside.
    pub id_base: u32,
    /// How many ids are mapped (0..count inside).
    pub id_count: u32,
    /// v1 `tasks` files init joins, as a single thread, before creating its namespaces
    /// (empty on pure v2 hosts). It is born in the v2 cgroup.
    pub v1_tasks: Vec<PathBuf>,
    /// An empty host directory; inside the sandbox's mount namespace, the scratch tmpfs
    /// is mounted on it (the host never sees that mount).
    pub scratch_dir: PathBuf,
    /// Size of the scratch tmpfs (the writable layer), bytes.
    pub scratch_bytes: u64,
    /// Host paths hidden in the sandbox: directories appear empty, files absent.
    #[serde(with = "byte_paths")]
    pub masked_paths: Vec<PathBuf>,
    /// The private entries of the scanned trees, found by the agent
    /// (`super::private`), hidden like `masked_paths`.
    #[serde(with = "byte_paths")]
    pub private_entries: Vec<PathBuf>,
    /// Files written into the writable layer (path inside, content).
    pub files: Vec<(PathBuf, String)>,
    /// The job's workspace directory inside, created empty.
    pub workspace: PathBuf,
    /// Secrets delivered as files, on a read-only tmpfs at `SECRETS_DIR`.
    #[serde(default)]
    pub secret_files: Vec<SecretFile>,
}

/// Paths as byte strings (JSON arrays of numbers): a host's file names need not be UTF-8,
/// which JSON strings must be, and one private file with such a name anywhere in a
/// scanned tree must not stop every runner.
mod byte_paths {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(paths: &[PathBuf], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(paths.iter().map(|p| p.as_os_str().as_bytes()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<PathBuf>, D::Error> {
        let raw: Vec<Vec<u8>> = Vec::deserialize(deserializer)?;
        Ok(raw
            .into_iter()
            .map(|bytes| PathBuf::from(OsString::from_vec(bytes)))
            .collect())
    }
}

/// One step to run.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequest {
    /// The script, given to `bash -e`.
    pub script: String,
    /// The complete environment of the step (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Directory to run in (absolute, inside).
    pub cwd: PathBuf,
    /// Milliseconds before the step's process group is killed; 0 for none.
    pub timeout_ms: u64,
}

impl Drop for StepRequest {
    /// The environment may hold `deliver: env` secrets: zeroed, not just freed.
    fn drop(&mut self) {
        for (_, value) in &mut self.env {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

impl std::fmt::Debug for StepRequest {
    /// The environment's names only: its values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("StepRequest")
            .field("script", &self.script)
            .field("env", &names)
            .field("cwd", &self.cwd)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Agent → init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToInit {
    /// First message.
    Spec(SandboxSpec),
    /// The veth is in place and fenced; the sandbox may report ready.
    NetworkReady,
    /// Run one step and report when it ends.
    RunStep(StepRequest),
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum StepEnd {
    /// Exited with this code.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// Killed by this signal.
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// Ran past its timeout and was killed.
    TimedOut,
}

impl StepEnd {
    /// True for exit code 0.
    pub fn success(self) -> bool {
        matches!(self, StepEnd::Exited { code: 0 })
    }
}

/// Init → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromInit {
    /// The sandbox is built and locked; steps may run.
    SandboxReady {
        /// Whether the lower layer is idmapped (false: the host's filesystem could not be
        /// idmapped, so host-owned files appear as nobody inside).
        idmapped: bool,
    },
    /// A step finished.
    StepExited(StepEnd),
    /// A process of the job made a system call the sandbox refuses (seccomp); it failed
    /// with EPERM without running.
    Denied {
        /// The caller, as numbered inside the sandbox.
        pid: u32,
        /// The caller's host pid, when init could tell it.
        #[serde(default)]
        host_pid: Option<u32>,
        /// Its command name.
        comm: String,
        /// The call, e.g. `bpf()` or `socket(AF_PACKET, SOCK_RAW)`.
        call: String,
    },
    /// Something failed; init exits after sending this.
    Failed {
        /// Which part of the set-up failed.
        stage: String,
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_utf8_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/var/lib/closed-\xfe-dir"));
        let spec = SandboxSpec {
            runner: "r-0".into(),
            id_base: 1,
            id_count: 2,
            v1_tasks: Vec::new(),
            scratch_dir: "/run/s".into(),
            scratch_bytes: 3,
            masked_paths: vec![odd.clone(), "/etc/ssh".into()],
            private_entries: vec!["/etc/new\nline".into(), odd.clone()],
            files: Vec::new(),
            workspace: "/workspace".into(),
            secret_files: Vec::new(),
        };
        let line = serde_json::to_string(&ToInit::Spec(spec)).unwrap();
        let Ok(ToInit::Spec(back)) = serde_json::from_str::<ToInit>(&line) else {
            panic!("no spec back from {line}");
        };
        assert_eq!(
            back.masked_paths,
            vec![odd.clone(), PathBuf::from("/etc/ssh")]
        );
        assert_eq!(
            back.private_entries,
            vec![PathBuf::from("/etc/new\nline"), odd]
        );
    }

    #[test]
    fn messages_round_trip_as_single_lines() {
        let msgs = vec![
            ToInit::NetworkReady,
            ToInit::RunStep(StepRequest {
                script: "echo a\necho b".into(),
                env: vec![("A".into(), "1".into())],
                cwd: "/workspace".into(),
                timeout_ms: 5,
            }),
        ];
        for msg in msgs {
            let line = serde_json::to_string(&msg).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<ToInit>(&line).unwrap(), msg);
        }
        let step = ToInit::RunStep(StepRequest {
            script: "true".into(),
            env: vec![("TOKEN".into(), "x".repeat(100_000))],
            cwd: "/workspace".into(),
            timeout_ms: 5,
        });
        let line = json_line(&step).unwrap();
        let mut expected = serde_json::to_vec(&step).unwrap();
        expected.push(b'\n');
        assert_eq!(*line, expected);
        // Sized once: no reallocation left an unzeroed copy of the value behind.
        assert_eq!(line.capacity(), line.len());
        // Read back through a small reader buffer, so the line arrives in many pieces.
        let mut input = std::io::BufReader::with_capacity(1000, &line[..]);
        let read = read_secret_line(&mut input).unwrap();
        assert_eq!(*read, *line);
        assert!(read_secret_line(&mut input).unwrap().is_empty());
        let end = FromInit::StepExited(StepEnd::Signaled { signal: 9 });
        let line = serde_json::to_string(&end).unwrap();
        assert_eq!(serde_json::from_str::<FromInit>(&line).unwrap(), end);
    }
}
