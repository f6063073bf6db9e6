//! The store's files on disk: private directories, private files read without following
//! links, and writes that are atomic.
//!
//! Invariants:
//! - Directories are mode 0700 and files mode 0600, owned by the effective user (root
//!   when the CLI runs): anything looser, owned by someone else, or of another type
//!   (a symlink where a file belongs) is refused, never "fixed" silently, because a
//!   store someone else could write to cannot be trusted and one others can read has
//!   already leaked.
//! - A write is atomic (see `crate::files`): a crash or an error leaves either the old
//!   file or the new one, never a half-written one, and no temporary file.
//! - Files that must never be replaced once they exist (environment keys) are published
//!   with link(2), which fails with EEXIST instead of replacing: two concurrent first
//!   writes cannot leave values encrypted under a key that was overwritten.
//!
//! Temporary names start with `.` and never end in the store's suffixes, so listings
//! ignore leftovers of a crash.

use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use super::error::SecretError;

use crate::files::{sync_parent, write_temp};

const EXPECTED_DIR: &str = "a directory of mode 0700 owned by the user running runner-agent";
const EXPECTED_FILE: &str = "a regular file of mode 0600 owned by the user running runner-agent";

/// Checks that `meta` (of `path`, not followed) is a private directory or file.
fn check_private(path: &Path, meta: &Metadata, want_dir: bool) -> Result<(), SecretError> {
    let expected = if want_dir {
        EXPECTED_DIR
    } else {
        EXPECTED_FILE
    };
    let insecure = |problem: String| SecretError::InsecurePermissions {
        path: path.to_owned(),
        problem,
        expected,
    };
    let file_type = meta.file_type();
    if want_dir && !file_type.is_dir() {
        return Err(insecure("is not a directory".to_owned()));
    }
    if !want_dir && !file_type.is_file() {
        let what = if file_type.is_symlink() {
            "is a symbolic link"
        } else {
            "is not a regular file"
        };
        return Err(insecure(what.to_owned()));
    }
    let owner = nix::unistd::geteuid().as_raw();
    if meta.uid() != owner {
        return Err(insecure(format!(
            "is owned by uid {}, not by uid {owner}",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(insecure(format!(
            "has mode {mode:04o}, open to group or others (fix: chmod {} {})",
            if want_dir { "700" } else { "600" },
            path.display()
        )));
    }
    Ok(())
}

/// Whether the private directory `path` exists; refuses one that is not private.
pub(super) fn check_dir(path: &Path) -> Result<bool, SecretError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => check_private(path, &meta, true).map(|()| true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SecretError::Inspect {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates the private directory `path` (and missing parents, also 0700) unless it
/// exists, then checks it.
pub(super) fn ensure_dir(path: &Path) -> Result<(), SecretError> {
    if check_dir(path)? {
        return Ok(());
    }
    crate::files::create_private_dir(path).map_err(|source| SecretError::CreateDir {
        path: path.to_owned(),
        source,
    })?;
    check_dir(path).map(|_| ())
}

/// Reads the private file `path` (at most `limit` bytes; one more means "too large")
/// into a buffer zeroed on drop. `None` when it does not exist. `on_io` turns an I/O
/// error into the caller's variant.
pub(super) fn read_private(
    path: &Path,
    limit: usize,
    on_io: impl Fn(io::Error) -> SecretError,
) -> Result<Option<Zeroizing<Vec<u8>>>, SecretError> {
    // O_NOFOLLOW: a symlink planted at a store path is refused (ELOOP) rather than
    // followed to a file of the attacker's choosing (open(2)).
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            let meta = fs::symlink_metadata(path).map_err(&on_io)?;
            check_private(path, &meta, false)?;
            return Err(on_io(err));
        }
        Err(err) => return Err(on_io(err)),
    };
    let meta = file.metadata().map_err(&on_io)?;
    check_private(path, &meta, false)?;
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX).min(limit) + 1;
    read_bounded(&mut file, size).map(Some).map_err(on_io)
}

/// Reads `reader` to its end or until `capacity` bytes, into a buffer zeroed on drop.
/// The buffer is allocated once at full size and filled in place: growing a Vec would
/// leave copies of its content in freed memory that no one zeroes.
pub(super) fn read_bounded(
    reader: &mut dyn Read,
    capacity: usize,
) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut buffer = Zeroizing::new(vec![0u8; capacity]);
    let mut filled = 0;
    while filled < capacity {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buffer.truncate(filled);
    Ok(buffer)
}

/// Publishes `bytes` at `final_path` only if nothing is there yet. Returns false (and
/// writes nothing) when the file already exists.
pub(super) fn create_exclusive(final_path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let temp = write_temp(final_path, |file| file.write_all(bytes))?;
    // link(2) never replaces an existing name: EEXIST tells us someone was first.
    let linked = fs::hard_link(&temp, final_path);
    let removed = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            removed?;
            sync_parent(final_path)?;
            Ok(true)
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

/// Removes `path`; false when it did not exist.
pub(super) fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => sync_parent(path).map(|()| true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// The names in directory `dir` that end in `suffix` and do not start with `.`, with
/// the suffix removed, sorted. An absent directory has none.
pub(super) fn names_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<String>, SecretError> {
    let list_error = |source| SecretError::ListDir {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(list_error(err)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_error)?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        if let Some(stem) = file_name.strip_suffix(suffix) {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn ensure_dir_creates_private_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b");
        ensure_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        // Idempotent on an existing private directory.
        ensure_dir(&deep).unwrap();
    }

    #[test]
    fn loose_or_foreign_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("has mode 0755"), "{err}");
        assert!(err.contains("chmod 700"), "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_dir(&dir).unwrap());
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let err = check_dir(&dir).unwrap_err().to_string();
            assert!(err.contains("is owned by uid 65534"), "{err}");
        }
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        let err = check_dir(&file).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
        assert!(!check_dir(&tmp.path().join("absent")).unwrap());
    }

    #[test]
    fn read_private_refuses_loose_files_and_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let io = |source| SecretError::ReadValue {
            path: PathBuf::from("x"),
            source,
        };
        let file = tmp.path().join("f");
        fs::write(&file, b"abc").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private(&file, 10, io).unwrap_err().to_string();
        assert!(err.contains("has mode 0644"), "{err}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_private(&file, 10, io).unwrap().unwrap().as_slice(),
            b"abc"
        );
        // One byte over the limit is read, so the caller sees the file is too large.
        assert_eq!(
            read_private(&file, 2, io).unwrap().unwrap().as_slice(),
            b"abc"
        );
        assert_eq!(
            read_private(&file, 1, io).unwrap().unwrap().as_slice(),
            b"ab"
        );
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = read_private(&link, 10, io).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert!(read_private(&tmp.path().join("absent"), 10, io)
            .unwrap()
            .is_none());
    }

    #[test]
    fn create_exclusive_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("k.key");
        assert!(create_exclusive(&key, b"one").unwrap());
        assert!(!create_exclusive(&key, b"two").unwrap());
        assert_eq!(fs::read(&key).unwrap(), b"one");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(entries(tmp.path()), ["k.key"]);
    }

    #[test]
    fn listing_ignores_temporaries_and_other_suffixes() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "B.secret",
            "A.secret",
            ".A.secret.tmp-1",
            "x.key",
            ".hidden.secret",
        ] {
            fs::write(tmp.path().join(name), b"").unwrap();
        }
        assert_eq!(
            names_with_suffix(tmp.path(), ".secret").unwrap(),
            ["A", "B"]
        );
        assert!(names_with_suffix(&tmp.path().join("absent"), ".secret")
            .unwrap()
            .is_empty());
        assert!(remove(&tmp.path().join("A.secret")).unwrap());
        assert!(!remove(&tmp.path().join("A.secret")).unwrap());
    }
}
