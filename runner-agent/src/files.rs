//! Private files of the agent under `state_dir`: directories only root can enter, files
//! only root can read, written so that a crash never leaves half a file.
//!
//! A write goes to a fresh temporary file in the same directory (`O_CREAT|O_EXCL`,
//! `O_NOFOLLOW`, mode 0600), is fsync'ed, then renamed over the final name, and the
//! directory is fsync'ed (rename(2) is atomic within one file system; the directory fsync
//! makes the rename itself durable, see fsync(2)). A reader sees either the old content or
//! the new one, never a mix; on error the old content stays and the temporary file is
//! removed. Temporary names start with `.` and end in `.tmp-` plus random hex, so
//! listings can tell them from real entries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of private directories.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of private files.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with mode 0700 and makes sure `dir` itself is
/// 0700 even if it already existed (an operator may have created it by hand).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// A temporary name in the directory of `final_path`, unique to this write.
fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.tmp-{:016x}", rand::random::<u64>()))
}

/// Writes what `fill` writes to a new private temporary file next to `final_path`, and
/// syncs it. Returns the temporary file's path.
pub(crate) fn write_temp(
    final_path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let temp = temp_path(final_path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)?;
    let written = fill(&mut file).and_then(|()| file.sync_all());
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    Ok(temp)
}

/// fsync(2) on the directory holding `path`, so a rename or unlink in it is durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Atomically replaces `final_path` with what `fill` writes (module docs). On error the
/// previous file is unchanged and no temporary file is left.
pub fn write_atomically(
    final_path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let temp = write_temp(final_path, fill)?;
    if let Err(err) = fs::rename(&temp, final_path) {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    sync_parent(final_path)
}

/// Writes `bytes` to `path` atomically with mode 0600 (see the module doc). The parent
/// directory must exist.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically(path, |file| file.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_replace_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).unwrap();
        assert_eq!(
            fs::metadata(&sub).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        let file = sub.join("x.json");
        write_private(&file, b"one").unwrap();
        write_private(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1);
    }

    #[test]
    fn a_fill_that_fails_half_way_keeps_the_old_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.secret");
        write_private(&target, b"second").unwrap();
        let err = write_atomically(&target, |f| {
            f.write_all(b"thi")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&target).unwrap(), b"second");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x");
        write_private(&file, b"old").unwrap();
        // A non-empty directory where the file should be renamed to makes the rename fail.
        let blocked = dir.path().join("d");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("inside"), b"").unwrap();
        assert!(write_private(&blocked, b"new").is_err());
        assert_eq!(fs::read(&file).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
