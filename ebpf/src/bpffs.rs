//! The BPF filesystem where a fence's links and maps are pinned.
//!
//! Pins are what let a fence outlive the agent: a link lives while something refers to
//! it, and a pin on bpffs is such a reference that no process holds. Many hosts (this
//! project's CI machine among them) do not mount bpffs, so [`ensure_mounted`] mounts it
//! at its conventional place, /sys/fs/bpf, when a pin directory lies below it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

/// The conventional mount point of bpffs.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Failures finding or mounting bpffs.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// statfs(2) failed on the mount point.
    #[error("statfs {path}: {source}")]
    Statfs {
        /// Path examined.
        path: PathBuf,
        /// Errno.
        #[source]
        source: nix::Error,
    },
    /// mount(2) of bpffs failed.
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        /// Mount point.
        path: PathBuf,
        /// Errno.
        #[source]
        source: nix::Error,
    },
    /// The pin directory is not on a bpffs and is not below /sys/fs/bpf.
    #[error("{0} is not on a BPF filesystem")]
    NotBpffs(PathBuf),
}

/// Whether `path` (which must exist) is on a bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let st = statfs(path).map_err(|source| BpffsError::Statfs {
        path: path.to_owned(),
        source,
    })?;
    Ok(st.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `pin_dir` can hold pins: mounts bpffs at /sys/fs/bpf (mode 0700, root only)
/// when `pin_dir` is below it and it is not mounted; otherwise the nearest existing
/// ancestor of `pin_dir` must already be on bpffs. Serialized within the process; another
/// process mounting at the same moment is not guarded against.
pub fn ensure_mounted(pin_dir: &Path) -> Result<(), BpffsError> {
    // Two threads that both find bpffs missing would otherwise both mount it, and the
    // second mount would hide the pins made under the first.
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _serialized = MOUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = Path::new(DEFAULT_BPFFS);
    if pin_dir.starts_with(root) && root.is_dir() && !is_bpffs(root)? {
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|source| BpffsError::Mount {
            path: root.to_owned(),
            source,
        })?;
        tracing::info!(path = %root.display(), "mounted bpffs");
    }
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(root);
    if !is_bpffs(existing)? {
        return Err(BpffsError::NotBpffs(pin_dir.to_owned()));
    }
    Ok(())
}
