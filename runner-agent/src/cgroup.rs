//! Per-runner control groups, on pure cgroup v2 hosts and on hybrid hosts.
//!
//! Every runner gets a directory in the v2 hierarchy: the eBPF programs attach there,
//! `cgroup.kill` ends every process of the runner at once, and `cgroup.events` tells when
//! none is left. Resource limits go wherever the controller lives:
//!
//! - pure v2 (`/sys/fs/cgroup/cgroup.controllers` exists): `memory.max`, `memory.swap.max`,
//!   `pids.max`, `cpu.max` in the same directory, after enabling the controllers in the
//!   parents' `cgroup.subtree_control`;
//! - hybrid (v2 at `/sys/fs/cgroup/unified`, controllers on v1): the same limits through the
//!   v1 `memory`, `pids` and `cpu` hierarchies, each in its own directory for the runner.
//!
//! A controller that does not exist on the host is skipped (and logged), so that the
//! runner still starts on minimal hosts. All paths derive from one injectable root so the
//! logic is tested against a fake tree.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The default mount point of the cgroup filesystems.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The directory, below each hierarchy's root, that holds every runner's cgroup.
pub const PARENT: &str = "runner-agent";

/// A failing cgroup operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a pure v2 nor a hybrid layout was found.
    #[error("no cgroup v2 hierarchy under {0} (looked for cgroup.controllers and unified/)")]
    NoV2(PathBuf),
    /// A directory could not be created.
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A control file could not be written.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        source: io::Error,
    },
    /// A control file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The control file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Processes were still alive after the kill deadline.
    #[error("processes still alive in {path} after {waited:?}")]
    StillPopulated {
        /// The cgroup.
        path: PathBuf,
        /// How long it was watched.
        waited: Duration,
    },
    /// A directory could not be removed.
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Which hierarchies the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The root of the v2 hierarchy (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
    pub v2_root: PathBuf,
    /// True when memory, pids and cpu are v2 controllers.
    pub pure_v2: bool,
    /// On hybrid hosts: the v1 hierarchies found for memory, pids and cpu.
    pub v1_roots: Vec<(V1Controller, PathBuf)>,
}

/// The v1 controllers runner-agent sets limits through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1Controller {
    /// `memory.limit_in_bytes`
    Memory,
    /// `pids.max`
    Pids,
    /// `cpu.cfs_quota_us`
    Cpu,
}

impl V1Controller {
    const ALL: [V1Controller; 3] = [V1Controller::Memory, V1Controller::Pids, V1Controller::Cpu];

    fn dir_name(self) -> &'static str {
        match self {
            V1Controller::Memory => "memory",
            V1Controller::Pids => "pids",
            V1Controller::Cpu => "cpu",
        }
    }
}

/// Limits applied to a runner's cgroup; `None` leaves the host default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CgroupLimits {
    /// Bytes of memory (swap is not allowed on top of it where the host can say so).
    pub memory: Option<u64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
    /// CPU bandwidth in cores (1.5 = one and a half cores).
    pub cpus: Option<f64>,
}

/// The CFS period used for `cpus`: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;

impl CgroupLayout {
    /// Finds the layout below `root` (normally [`CGROUP_ROOT`]).
    pub fn detect(root: &Path) -> Result<CgroupLayout, CgroupError> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(CgroupLayout {
                v2_root: root.to_owned(),
                pure_v2: true,
                v1_roots: Vec::new(),
            });
        }
        let unified = root.join("unified");
        if !unified.join("cgroup.procs").is_file() {
            return Err(CgroupError::NoV2(root.to_owned()));
        }
        let v1_roots = V1Controller::ALL
            .into_iter()
            .map(|c| (c, root.join(c.dir_name())))
            .filter(|(_, dir)| dir.join("cgroup.procs").is_file())
            .collect();
        Ok(CgroupLayout {
            v2_root: unified,
            pure_v2: false,
            v1_roots,
        })
    }

    /// The directories a runner called `name` uses: the v2 one first.
    pub fn runner_dirs(&self, name: &str) -> Vec<PathBuf> {
        let mut dirs = vec![self.v2_root.join(PARENT).join(name)];
        dirs.extend(
            self.v1_roots
                .iter()
                .map(|(_, root)| root.join(PARENT).join(name)),
        );
        dirs
    }

    /// Creates the runner's cgroup directories and applies `limits`.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<RunnerCgroup, CgroupError> {
        let v2_dir = self.v2_root.join(PARENT).join(name);
        let cgroup = RunnerCgroup {
            v2_dir: v2_dir.clone(),
            v1_dirs: self
                .v1_roots
                .iter()
                .map(|(c, root)| (*c, root.join(PARENT).join(name)))
                .collect(),
        };
        if self.pure_v2 {
            self.enable_v2_controllers()?;
        }
        make_dir(&v2_dir)?;
        for (_, dir) in &cgroup.v1_dirs {
            make_dir(dir)?;
        }
        if self.pure_v2 {
            cgroup.apply_v2_limits(limits)?;
        } else {
            cgroup.apply_v1_limits(limits)?;
        }
        Ok(cgroup)
    }

    /// On pure v2, a child only gets the controllers its parent delegates in
    /// `cgroup.subtree_control`; enable those that exist on the root and on our parent.
    fn enable_v2_controllers(&self) -> Result<(), CgroupError> {
        let available = read(&self.v2_root.join("cgroup.controllers"))?;
        let wanted: Vec<&str> = available
            .split_whitespace()
            .filter(|c| matches!(*c, "memory" | "pids" | "cpu"))
            .collect();
        let parent = self.v2_root.join(PARENT);
        make_dir(&parent)?;
        for dir in [&self.v2_root, &parent] {
            for controller in &wanted {
                write(
                    &dir.join("cgroup.subtree_control"),
                    &format!("+{controller}"),
                )?;
            }
        }
        Ok(())
    }
}

/// How often the kernel has enforced a runner's limits so far, read from the counters
/// the cgroup controllers keep: what turns "killed by signal 9" into "out of memory".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitEvents {
    /// Processes of the runner the OOM killer ended (`oom_kill` in v2 `memory.events`
    /// or v1 `memory.oom_control`), whichever OOM it was: the runner's own limit or the
    /// whole host running out.
    pub oom_kills: u64,
    /// Times the runner's memory reached its limit with an allocation about to fail
    /// (`oom` in v2 `memory.events`). Tells the runner's own OOM from the host's. v1 has
    /// no such counter (`memory.failcnt` stays 0 on this kernel even at an OOM kill), so
    /// on hybrid hosts the two are not told apart.
    pub memory_limit_hits: u64,
    /// Whether a v2 `memory.events` was found, i.e. `memory_limit_hits` means something.
    pub memory_events_v2: bool,
    /// Forks refused at the pids limit (`max` in `pids.events`, v1 and v2).
    pub pids_max: u64,
}

impl LimitEvents {
    /// Reads the counters in a runner's directories (v2 and v1 alike: each counter is
    /// looked for in every directory, and a file that does not exist counts 0, so the
    /// same call serves hybrid and pure v2 hosts).
    pub fn read(dirs: &[PathBuf]) -> LimitEvents {
        let mut events = LimitEvents::default();
        for dir in dirs {
            if let Ok(memory) = fs::read_to_string(dir.join("memory.events")) {
                events.memory_events_v2 = true;
                events.oom_kills += counter(&memory, "oom_kill");
                events.memory_limit_hits += counter(&memory, "oom");
            }
            events.oom_kills += counter_in(&dir.join("memory.oom_control"), "oom_kill");
            events.pids_max += counter_in(&dir.join("pids.events"), "max");
        }
        events
    }

    /// What happened between `before` and `self`, for a step's footer: `None` when no
    /// limit was enforced.
    pub fn since(&self, before: &LimitEvents, limits: &CgroupLimits) -> Option<String> {
        let plural = |n: u64, one: &str, many: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        let mut notes = Vec::new();
        let oom = self.oom_kills.saturating_sub(before.oom_kills);
        if oom > 0 {
            let killed = plural(oom, "process", "processes");
            let limit = limits.memory.map(crate::config::format_size);
            let note = match (self.memory_events_v2, limit) {
                (true, _) if self.memory_limit_hits == before.memory_limit_hits => {
                    // The runner never reached its own limit: the host ran out.
                    format!("the host ran out of memory: the kernel killed {killed} of the job")
                }
                (true, Some(limit)) => {
                    format!("out of memory: the kernel killed {killed} at limits.memory ({limit})")
                }
                // v1: whose OOM it was cannot be told; name the limit as context only.
                (false, Some(limit)) => {
                    format!("out of memory: the kernel killed {killed} (limits.memory {limit})")
                }
                (_, None) => format!("out of memory: the kernel killed {killed}"),
            };
            notes.push(note);
        }
        let refused = self.pids_max.saturating_sub(before.pids_max);
        if refused > 0 {
            let limit = limits.pids.map(|p| format!(" ({p})")).unwrap_or_default();
            notes.push(format!(
                "limits.pids{limit} refused {}",
                plural(refused, "fork", "forks")
            ));
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// The value of `key` in a flat keyed file (`key value` lines); 0 when the file or the
/// key is missing.
fn counter_in(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path).map_or(0, |text| counter(&text, key))
}

/// The value of `key` in the text of a flat keyed file; 0 when the key is missing.
fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// The cgroup directories of one runner.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerCgroup {
    /// The v2 directory: eBPF attachment point, `cgroup.kill`, `cgroup.events`.
    pub v2_dir: PathBuf,
    /// Hybrid hosts: the v1 directories that carry the limits.
    pub v1_dirs: Vec<(V1Controller, PathBuf)>,
}

impl RunnerCgroup {
    /// Rebuilds the handle from recorded paths (used by the reaper).
    pub fn from_dirs(dirs: &[PathBuf]) -> Option<RunnerCgroup> {
        let (v2_dir, rest) = dirs.split_first()?;
        Some(RunnerCgroup {
            v2_dir: v2_dir.clone(),
            // The controller of a recorded v1 directory only matters for limits, which the
            // reaper does not touch; memory is a placeholder.
            v1_dirs: rest
                .iter()
                .map(|d| (V1Controller::Memory, d.clone()))
                .collect(),
        })
    }

    /// Every directory, v2 first.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.v2_dir.clone()];
        dirs.extend(self.v1_dirs.iter().map(|(_, d)| d.clone()));
        dirs
    }

    /// The `cgroup.procs` files a process's pid is written to in order to move it into
    /// the cgroup. The runner's own processes are never moved (see
    /// [`Self::v1_task_files`]); the proxy is, into its cgroup, off the runner's start, and
    /// the benchmark uses these to show what a move costs.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The v1 `tasks` files (hybrid hosts; none on pure v2 hosts) that the sandbox init
    /// writes "0" to in order to join the runner's v1 cgroups. It is born in the v2
    /// directory (`clone3` with `CLONE_INTO_CGROUP`, see [`crate::sys::spawn`]), which
    /// has no equivalent for v1 hierarchies. Writing "0" to `tasks` moves only the
    /// calling thread, the one kind of move that takes no global lock (a `cgroup.procs`
    /// write waits for an RCU grace period, several milliseconds); for a process with a
    /// single thread it moves the whole process, and its children are born there.
    pub fn v1_task_files(&self) -> Vec<PathBuf> {
        self.v1_dirs.iter().map(|(_, d)| d.join("tasks")).collect()
    }

    fn apply_v2_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let dir = &self.v2_dir;
        if let Some(memory) = limits.memory {
            write_if_present(&dir.join("memory.max"), &memory.to_string())?;
            // Without this, a job over its memory limit would push into swap instead of
            // being stopped.
            write_if_present(&dir.join("memory.swap.max"), "0")?;
        }
        if let Some(pids) = limits.pids {
            write_if_present(&dir.join("pids.max"), &pids.to_string())?;
        }
        if let Some(cpus) = limits.cpus {
            let quota = cpu_quota(cpus);
            write_if_present(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        Ok(())
    }

    fn apply_v1_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        for (controller, dir) in &self.v1_dirs {
            match controller {
                V1Controller::Memory => {
                    if let Some(memory) = limits.memory {
                        write(&dir.join("memory.limit_in_bytes"), &memory.to_string())?;
                        // memsw exists only with swap accounting; where it does, memory +
                        // swap is held to the same figure, so no swap is used.
                        write_if_present(
                            &dir.join("memory.memsw.limit_in_bytes"),
                            &memory.to_string(),
                        )?;
                    }
                }
                V1Controller::Pids => {
                    if let Some(pids) = limits.pids {
                        write(&dir.join("pids.max"), &pids.to_string())?;
                    }
                }
                V1Controller::Cpu => {
                    if let Some(cpus) = limits.cpus {
                        write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&dir.join("cpu.cfs_quota_us"), &cpu_quota(cpus).to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Kills every process of the runner and waits until none is left.
    ///
    /// `cgroup.kill` (Linux 5.14+) sends SIGKILL to every process of the cgroup and its
    /// descendants atomically, so a fork bomb cannot outrun it; on older kernels the
    /// processes listed in `cgroup.procs` are killed in rounds until none is left.
    pub fn kill_all(&self, deadline: Duration) -> Result<(), CgroupError> {
        if !self.v2_dir.exists() {
            return Ok(());
        }
        let kill_file = self.v2_dir.join("cgroup.kill");
        let use_kill_file = kill_file.exists();
        let start = Instant::now();
        // Processes die within a few hundred microseconds of SIGKILL: look again soon,
        // backing off so that a slow death does not spin. (An inotify watch on
        // cgroup.events would wake us at the exact moment, but freeing the inotify
        // instance waits for an SRCU grace period: destroy took 19 ms instead of 1.)
        let mut pause = Duration::from_micros(50);
        loop {
            if use_kill_file {
                write(&kill_file, "1")?;
            } else {
                for pid in self.pids()? {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if !self.populated()? {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(CgroupError::StillPopulated {
                    path: self.v2_dir.clone(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Whether any process is left in the runner's v2 cgroup or below it.
    pub fn populated(&self) -> Result<bool, CgroupError> {
        let events_path = self.v2_dir.join("cgroup.events");
        match fs::read_to_string(&events_path) {
            Ok(events) => Ok(events.lines().any(|line| line.trim() == "populated 1")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CgroupError::Read {
                path: events_path,
                source,
            }),
        }
    }

    /// The pids in the runner's v2 cgroup itself.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let procs = self.v2_dir.join("cgroup.procs");
        match fs::read_to_string(&procs) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(CgroupError::Read {
                path: procs,
                source,
            }),
        }
    }

    /// Removes the runner's directories (children first). Directories that are already
    /// gone are fine; a directory that cannot be removed is an error.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

/// CFS quota for `cpus` cores, at least 1 ms (the kernel's minimum).
fn cpu_quota(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000)
}

/// Removes a cgroup directory and any child cgroups a job may have made (cgroupfs only
/// allows `rmdir`, deepest first). A busy directory is retried briefly: the kernel
/// releases a cgroup a moment after its last process is reaped.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Remove {
                path: dir.to_owned(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_owned(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Writes a control file that only exists when its controller is enabled.
fn write_if_present(path: &Path, value: &str) -> Result<(), CgroupError> {
    if path.exists() {
        write(path, value)
    } else {
        tracing::debug!(file = %path.display(), "controller file absent, limit not applied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_events_are_read_from_v1_and_v2_counters_and_described() {
        let root = tempfile::tempdir().unwrap();
        let (v2, memory, pids) = (
            root.path().join("v2"),
            root.path().join("memory"),
            root.path().join("pids"),
        );
        for d in [&v2, &memory, &pids] {
            fs::create_dir(d).unwrap();
        }
        let dirs = [v2.clone(), memory.clone(), pids.clone()];
        let limits = CgroupLimits {
            memory: Some(64 << 20),
            pids: Some(64),
            cpus: None,
        };
        // No counter files at all (a controller that is not there): all zero.
        let none = LimitEvents::read(&dirs);
        assert_eq!(none, LimitEvents::default());
        assert_eq!(none.since(&none, &limits), None);
        // Hybrid: v1 memory.oom_control and pids.events; v2 without memory.events. v1
        // cannot say whose OOM it was: the limit is named as context.
        fs::write(
            memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        fs::write(pids.join("pids.events"), "max 1\n").unwrap();
        let after = LimitEvents::read(&dirs);
        assert_eq!(
            after,
            LimitEvents {
                oom_kills: 2,
                memory_limit_hits: 0,
                memory_events_v2: false,
                pids_max: 1
            }
        );
        assert_eq!(
            after.since(&none, &limits).unwrap(),
            "out of memory: the kernel killed 2 processes (limits.memory 64MiB); \
             limits.pids (64) refused 1 fork"
        );
        // Pure v2: memory.events, whose `oom` says the runner's own limit was reached.
        fs::remove_file(memory.join("memory.oom_control")).unwrap();
        fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 0\noom_kill 0\noom_group_kill 0\n",
        )
        .unwrap();
        let v2_before = LimitEvents::read(&dirs);
        fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let v2_after = LimitEvents::read(&dirs);
        assert!(v2_after.memory_events_v2);
        assert_eq!(
            v2_after.since(&v2_before, &limits).unwrap(),
            "out of memory: the kernel killed 1 process at limits.memory (64MiB)"
        );
        // A kill while the runner never reached its limit: the host's OOM.
        fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        let host_oom = LimitEvents::read(&dirs);
        assert_eq!(
            host_oom.since(&v2_after, &limits).unwrap(),
            "the host ran out of memory: the kernel killed 1 process of the job"
        );
    }

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }

    #[test]
    fn detects_pure_v2() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpu memory pids io\n",
        )
        .unwrap();
        let layout = CgroupLayout::detect(root.path()).unwrap();
        assert!(layout.pure_v2);
        assert_eq!(layout.v2_root, root.path());
        assert!(layout.v1_roots.is_empty());
    }

    #[test]
    fn detects_hybrid_with_the_v1_controllers_present() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("unified/cgroup.procs"));
        touch(&root.path().join("memory/cgroup.procs"));
        touch(&root.path().join("pids/cgroup.procs"));
        let layout = CgroupLayout::detect(root.path()).unwrap();
        assert!(!layout.pure_v2);
        assert_eq!(layout.v2_root, root.path().join("unified"));
        let controllers: Vec<_> = layout.v1_roots.iter().map(|(c, _)| *c).collect();
        assert_eq!(controllers, vec![V1Controller::Memory, V1Controller::Pids]);
    }

    #[test]
    fn no_v2_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("memory/cgroup.procs"));
        assert!(matches!(
            CgroupLayout::detect(root.path()),
            Err(CgroupError::NoV2(_))
        ));
    }

    #[test]
    fn pure_v2_limits_and_delegation_are_written() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpu memory pids io\n",
        )
        .unwrap();
        touch(&root.path().join("cgroup.subtree_control"));
        let layout = CgroupLayout::detect(root.path()).unwrap();
        // A fake tree does not create control files on mkdir; pre-create the ones the
        // kernel would, so that the writes can be observed.
        let dir = root.path().join(PARENT).join("r-0");
        for f in ["memory.max", "memory.swap.max", "pids.max", "cpu.max"] {
            touch(&dir.join(f));
        }
        let limits = CgroupLimits {
            memory: Some(256 << 20),
            pids: Some(100),
            cpus: Some(1.5),
        };
        let cg = layout.create("r-0", &limits).unwrap();
        assert_eq!(cg.v2_dir, dir);
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "100");
        assert_eq!(read("cpu.max"), "150000 100000");
        // The last controller written wins in a plain file; the point is that delegation
        // was attempted on both the root and our parent.
        assert!(
            fs::read_to_string(root.path().join("cgroup.subtree_control"))
                .unwrap()
                .starts_with('+')
        );
        assert!(root
            .path()
            .join(PARENT)
            .join("cgroup.subtree_control")
            .exists());
    }

    #[test]
    fn hybrid_limits_go_to_v1_and_the_v2_dir_is_made() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("unified/cgroup.procs"));
        for c in ["memory", "pids", "cpu"] {
            touch(&root.path().join(c).join("cgroup.procs"));
        }
        let layout = CgroupLayout::detect(root.path()).unwrap();
        let limits = CgroupLimits {
            memory: Some(64 << 20),
            pids: Some(32),
            cpus: Some(0.5),
        };
        let cg = layout.create("r-1", &limits).unwrap();
        assert!(root
            .path()
            .join("unified")
            .join(PARENT)
            .join("r-1")
            .is_dir());
        let v1 = |c: &str, f: &str| {
            fs::read_to_string(root.path().join(c).join(PARENT).join("r-1").join(f)).unwrap()
        };
        assert_eq!(v1("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(v1("pids", "pids.max"), "32");
        assert_eq!(v1("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(v1("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(cg.dirs().len(), 4);
        assert_eq!(cg.procs_files()[0], cg.v2_dir.join("cgroup.procs"));
    }

    #[test]
    fn cpu_quota_has_a_floor() {
        assert_eq!(cpu_quota(0.001), 1_000);
        assert_eq!(cpu_quota(2.0), 200_000);
    }
}
