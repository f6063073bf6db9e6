//! Live runner state under `run_dir`, so that a crashed agent's leftovers can be found and
//! reaped by the next agent that starts.
//!
//! ```text
//! run_dir/
//! ├── slots/<n>.lock      flock(2)ed by the agent that runs slot n, for the runner's life
//! ├── slots/queue.lock    flock(2)ed by the one agent looking for a free slot while all
//! │                       are busy; the others wait on it in the kernel
//! └── runners/
//!     ├── r-<n>.json      what runner r-<n> created (written *before* creating it)
//!     └── r-<n>/          empty on the host; the sandbox mounts its scratch tmpfs here
//!                         in its own mount namespace
//! ```
//!
//! A slot is owned by whoever holds its lock; the kernel drops the lock when the owner dies,
//! however it dies. So a record whose slot lock can be taken belongs to a dead agent and
//! everything it lists is reaped. Lock files stay (removing a lock file while another
//! process may be opening it would let two agents own one slot); they are empty.
//!
//! The slot also fixes the runner's name (`r-<n>`), its /30 of the pool, its veth name
//! and its host id range, so that concurrent runners never collide.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::network::RunnerAddresses;

/// First host uid/gid used for runners; slot n maps ids `0..ID_COUNT` inside to
/// `ID_BASE + n * ID_COUNT ..` on the host, a range no host account uses.
pub const ID_BASE: u32 = 0x4000_0000;
/// Ids mapped per runner (0..65535 inside, like a regular system).
pub const ID_COUNT: u32 = 65_536;

/// A failing state operation.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A directory or file of run_dir could not be made or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A record could not be parsed.
    #[error("{path}: corrupt runner record: {source}")]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a runner created, recorded before it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRecord {
    /// `r-<slot>`.
    pub runner: String,
    /// The slot.
    pub slot: u32,
    /// The job it runs.
    pub job_id: String,
    /// The agent process that created it.
    pub agent_pid: u32,
    /// Its cgroup directories, v2 first.
    pub cgroup_dirs: Vec<PathBuf>,
    /// The host side of its veth.
    pub host_if: String,
    /// Its addresses.
    pub addresses: RunnerAddresses,
    /// The (empty) host directory the sandbox mounts its scratch space on.
    pub scratch_dir: PathBuf,
    /// First host id of its id range.
    pub id_base: u32,
    /// Inode of its network namespace, once it exists (to verify that it is gone).
    #[serde(default)]
    pub netns_inode: Option<u64>,
    /// Where its eBPF fence is pinned.
    #[serde(default)]
    pub pin_dir: Option<PathBuf>,
    /// The cgroup directories of its proxy process, v2 first, once made (empty before).
    #[serde(default)]
    pub proxy_cgroup_dirs: Vec<PathBuf>,
}

impl RunnerRecord {
    /// The alias its veth's host side carries (`network::setup`'s owner): the runner's
    /// scratch directory, which no other runner of any agent on the host shares (it is in
    /// the agent's own run_dir), truncated to the kernel's 255 bytes.
    pub fn veth_owner(&self) -> String {
        let mut owner = format!("runner-agent {}", self.scratch_dir.display());
        while owner.len() > 255 {
            owner.pop();
        }
        owner
    }
}

/// The agent's live state directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// Ownership of one slot, held until dropped.
#[derive(Debug)]
pub struct SlotLease {
    /// The slot number.
    pub slot: u32,
    _lock: Flock<File>,
}

/// The turn to look for a free slot while every slot is busy, held until dropped.
#[derive(Debug)]
pub struct QueueTurn {
    _lock: Flock<File>,
}

/// Opens (creating, mode 0600) the lock file `path`.
fn open_lock_file(path: &Path) -> Result<File, StateError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))
}

impl RunDir {
    /// Opens (creating if needed, mode 0700) the state directory at `root`.
    pub fn open(root: &Path) -> Result<RunDir, StateError> {
        for dir in [root.to_owned(), root.join("slots"), root.join("runners")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_at(&dir))?;
        }
        Ok(RunDir {
            root: root.to_owned(),
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The record path of slot `slot`.
    pub fn record_path(&self, slot: u32) -> PathBuf {
        self.root.join("runners").join(format!("r-{slot}.json"))
    }

    /// The scratch mount point of slot `slot`.
    pub fn scratch_dir(&self, slot: u32) -> PathBuf {
        self.root.join("runners").join(format!("r-{slot}"))
    }

    /// Takes slot `slot` if no live agent holds it.
    pub fn try_lease(&self, slot: u32) -> Result<Option<SlotLease>, StateError> {
        let path = self.root.join("slots").join(format!("{slot}.lock"));
        let file = open_lock_file(&path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(SlotLease { slot, _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(StateError::Io {
                path,
                source: e.into(),
            }),
        }
    }

    /// Blocks until no other agent of this run_dir is looking for a free slot, then
    /// holds that turn until the result is dropped (the kernel drops it when its holder
    /// dies). Agents that find every slot busy queue here, so that one of them at a time
    /// polls the slots and the others wait without using the CPU.
    pub fn wait_turn(&self) -> Result<QueueTurn, StateError> {
        let path = self.root.join("slots").join("queue.lock");
        let mut file = open_lock_file(&path)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => return Ok(QueueTurn { _lock: lock }),
                Err((back, nix::errno::Errno::EINTR)) => file = back,
                Err((_, e)) => {
                    return Err(StateError::Io {
                        path,
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// The slots that have a record, whoever owns them.
    pub fn recorded_slots(&self) -> Result<Vec<u32>, StateError> {
        let dir = self.root.join("runners");
        let mut slots: Vec<u32> = fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("r-")?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        slots.sort_unstable();
        Ok(slots)
    }

    /// Reads the record of `slot`, if any.
    pub fn read_record(&self, slot: u32) -> Result<Option<RunnerRecord>, StateError> {
        let path = self.record_path(slot);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Writes `record` (atomically: temporary file, then rename) and creates its scratch
    /// mount point.
    pub fn write_record(&self, record: &RunnerRecord) -> Result<(), StateError> {
        let path = self.record_path(record.slot);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, bytes).map_err(io_at(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&record.scratch_dir)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(io_at(&record.scratch_dir))
    }

    /// Removes the record of `slot` (after everything it lists is gone).
    pub fn remove_record(&self, slot: u32) -> Result<(), StateError> {
        let path = self.record_path(slot);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_dir: &RunDir, slot: u32) -> RunnerRecord {
        RunnerRecord {
            runner: format!("r-{slot}"),
            slot,
            job_id: "j-1".into(),
            agent_pid: 1,
            cgroup_dirs: vec!["/sys/fs/cgroup/x".into()],
            host_if: format!("ra{slot}"),
            addresses: RunnerAddresses::for_slot("10.249.0.0/16".parse().unwrap(), slot).unwrap(),
            scratch_dir: run_dir.scratch_dir(slot),
            id_base: ID_BASE,
            netns_inode: None,
            pin_dir: None,
            proxy_cgroup_dirs: Vec::new(),
        }
    }

    #[test]
    fn a_held_slot_cannot_be_leased_twice() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::open(dir.path()).unwrap();
        let lease = run_dir.try_lease(0).unwrap().unwrap();
        // A second open file description: flock conflicts even within one process.
        assert!(run_dir.try_lease(0).unwrap().is_none());
        assert!(run_dir.try_lease(1).unwrap().is_some());
        drop(lease);
        assert!(run_dir.try_lease(0).unwrap().is_some());
    }

    #[test]
    fn records_round_trip_and_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::open(dir.path()).unwrap();
        let rec = record(&run_dir, 2);
        run_dir.write_record(&rec).unwrap();
        assert!(rec.scratch_dir.is_dir());
        assert_eq!(run_dir.recorded_slots().unwrap(), vec![2]);
        assert_eq!(run_dir.read_record(2).unwrap(), Some(rec));
        run_dir.remove_record(2).unwrap();
        assert!(run_dir.recorded_slots().unwrap().is_empty());
        assert_eq!(run_dir.read_record(2).unwrap(), None);
    }

    #[test]
    fn a_corrupt_record_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::open(dir.path()).unwrap();
        fs::write(run_dir.record_path(5), "{not json").unwrap();
        let err = run_dir.read_record(5).unwrap_err().to_string();
        assert!(err.contains("r-5.json") && err.contains("corrupt"), "{err}");
    }
}
