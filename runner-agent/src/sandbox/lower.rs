//! Which parts of the host's root a job may change, and which of their entries it must
//! not see.
//!
//! A job is root inside its user namespace and expects to `apt-get install` or write to
//! `/usr`: its writes land in the runner's own upper layer, but to be allowed at all the
//! host's files must belong to the job's root, which is what an idmapped lower layer does
//! (host uid 0 appears as the job's uid 0). The same ownership lets the job's root read
//! every root-only host file: an idmapped view of the whole host root handed a job TLS
//! keys, other services' state and another agent's secret store, everything no mask
//! happened to name.
//!
//! So the sandbox takes the host root twice:
//!
//! - all of it **without** an id mapping: host-owned files appear as `nobody`, and the
//!   job, root or not, has exactly the access the host gives its "other" users: it reads
//!   what anyone may read, and changes nothing;
//! - the trees packages install into ([`WRITABLE_TREES`]: `/usr`, `/etc`, `/var`, `/opt`
//!   and the top-level library and binary directories where they are not symlinks into
//!   `/usr`) **with** the mapping, each as an overlay of its own on top, so that the job
//!   can change them.
//!
//! In the trees that hold host configuration and state ([`SCANNED_TREES`]: `/etc`,
//! `/var`, `/opt`, `/usr/local`), every entry the host's "other" users could not read is
//! hidden as if masked ([`private_entries`]): files without the other-read bit,
//! directories without other-read or other-search (hidden whole, not entered). `/usr`
//! outside `/usr/local`, and the library and binary directories, are taken to hold only
//! what packages put there, which is public; they are not walked (they hold most of a
//! system's files, and a walk is paid whenever a tree changed).
//!
//! The walk goes through the clone that forms the layer, not the live host tree: the clone
//! holds no other mount, so where the host has a filesystem mounted inside a tree, the
//! job sees (and the walk judges) what lies under it, and a btrfs subvolume, part of the
//! same mount with a device number of its own, is walked like any directory. A tree whose
//! top is itself private (`/opt` at 0700) gets no layer and is hidden whole. The walk
//! skips the configured masks and the package managers' own directories
//! ([`PACKAGE_DIRS`]). Its cost is one `lstat` per visible entry of the scanned trees:
//! about 3,000 entries, 3 to 4 ms, on the development machine. The agent walks (in
//! `super::private`, which remembers each tree's answer until inotify reports a change in
//! it) and hands init the list; init masks what it names.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The trees of the host's root a job may change (through an idmapped layer of their own),
/// where they are directories of their own: on merged-/usr systems `/bin`, `/sbin` and
/// `/lib*` are symlinks into `/usr` and need no layer.
pub const WRITABLE_TREES: &[&str] = &[
    "/usr", "/etc", "/var", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// The trees whose private entries are hidden (see the module docs).
pub const SCANNED_TREES: &[&str] = &["/etc", "/var", "/opt", "/usr/local"];

/// Package managers' own directories inside the scanned trees, public by construction and
/// large (`/var/lib/dpkg/info` alone is about 3,000 files, half of a Debian host's
/// walk): not walked, like `/usr`.
pub const PACKAGE_DIRS: &[&str] = &[
    "/var/lib/dpkg/info",
    "/var/lib/apt/lists",
    "/var/cache/apt/archives",
    "/var/cache/man",
    "/var/lib/flatpak",
];

/// `S_IROTH | S_IXOTH`.
const OTHER_READ: u32 = 0o004;
const OTHER_SEARCH: u32 = 0o001;

/// The writable trees present here, as real directories (not symlinks) not hidden whole
/// by a mask in `masked` (the tree itself or one of its ancestors): those open to the
/// host's other users, which get a layer of their own, and those private as a whole (say
/// `/opt` at mode 0700), which get none and are hidden like any private directory.
pub fn writable_trees(masked: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut open = Vec::new();
    let mut closed = Vec::new();
    for tree in WRITABLE_TREES.iter().map(PathBuf::from) {
        if masked.iter().any(|mask| tree.starts_with(mask)) {
            continue;
        }
        match std::fs::symlink_metadata(&tree) {
            Ok(meta) if meta.is_dir() && private(&meta) => closed.push(tree),
            Ok(meta) if meta.is_dir() => open.push(tree),
            _ => {}
        }
    }
    (open, closed)
}

/// Whether the host's "other" users could not read `meta`'s entry: a directory they can
/// neither list nor enter (either bit missing), anything else they cannot read.
fn private(meta: &std::fs::Metadata) -> bool {
    let mode = meta.permissions().mode();
    if meta.is_dir() {
        mode & OTHER_READ == 0 || mode & OTHER_SEARCH == 0
    } else if meta.file_type().is_symlink() {
        // A symlink's own mode means nothing; its target is judged where it lives.
        false
    } else {
        mode & OTHER_READ == 0
    }
}

/// The entries at and under `root` that the host's "other" users could not read, in walk
/// order: `root` alone when it is private itself. Directories among them are not entered;
/// nor are the paths in `skip` and below. `root` should be a mount that holds no other
/// (the clone that forms a layer): every entry is judged, whatever its device, since a
/// btrfs subvolume reports a device of its own while being part of the same mount. An
/// entry that vanishes during the walk is ignored; any other error fails the walk, since a
/// tree that could not be read whole must not be shown.
///
/// `watch` is called for every directory before it is listed (`root` included) and for
/// every other entry but symlinks before it is judged, so that a watcher it installs
/// sees any later change of what the walk concluded (see `super::private`).
pub fn private_entries(
    root: &Path,
    skip: &[PathBuf],
    watch: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> io::Result<Vec<PathBuf>> {
    let top = std::fs::symlink_metadata(root)?;
    if private(&top) {
        return Ok(vec![root.to_owned()]);
    }
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let context = |e: io::Error, path: &Path| {
            io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        };
        watch(&dir).map_err(|e| context(e, &dir))?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(context(e, &dir)),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            // The type from the directory entry itself where the filesystem gives it.
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(context(e, &path)),
            };
            if !kind.is_dir() && !kind.is_symlink() {
                // Its mode may be changed through another link, made at any time in a
                // directory nobody watches: watch the file itself before judging it.
                watch(&path).map_err(|e| context(e, &path))?;
            }
            // Relative to the open directory (fstatat), not a walk from "/" per entry.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(context(e, &path)),
            };
            if private(&meta) {
                found.push(path);
            } else if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_entries_are_found_and_not_entered() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        chmod(r, 0o755);
        std::fs::create_dir_all(r.join("public/deeper")).unwrap();
        std::fs::write(r.join("public/readable"), "x").unwrap();
        std::fs::write(r.join("public/deeper/key"), "x").unwrap();
        chmod(&r.join("public/deeper/key"), 0o600);
        std::fs::write(r.join("public/group-only"), "x").unwrap();
        chmod(&r.join("public/group-only"), 0o640);
        std::fs::create_dir_all(r.join("closed/inner")).unwrap();
        std::fs::write(r.join("closed/inner/file"), "x").unwrap();
        chmod(&r.join("closed"), 0o700);
        std::fs::create_dir(r.join("listless")).unwrap();
        chmod(&r.join("listless"), 0o711);
        std::fs::create_dir_all(r.join("skipped")).unwrap();
        std::fs::write(r.join("skipped/key"), "x").unwrap();
        chmod(&r.join("skipped/key"), 0o600);
        std::os::unix::fs::symlink("/nonexistent", r.join("public/link")).unwrap();

        let mut found = private_entries(r, &[r.join("skipped")], &mut |_| Ok(())).unwrap();
        found.sort();
        let mut expected = vec![
            r.join("closed"),
            r.join("listless"),
            r.join("public/deeper/key"),
            r.join("public/group-only"),
        ];
        expected.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_private_root_is_hidden_whole() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("public"), "x").unwrap();
        chmod(root.path(), 0o700);
        assert_eq!(
            private_entries(root.path(), &[], &mut |_| Ok(())).unwrap(),
            vec![root.path().to_owned()]
        );
    }

    #[test]
    fn masked_and_symlinked_trees_get_no_layer() {
        let trees = writable_trees(&[PathBuf::from("/opt"), PathBuf::from("/")]);
        assert_eq!(
            trees,
            (vec![], vec![]),
            "a mask of / hides every tree: {trees:?}"
        );
        let (trees, _) = writable_trees(&[PathBuf::from("/opt")]);
        assert!(!trees.contains(&PathBuf::from("/opt")));
        for tree in &trees {
            let meta = std::fs::symlink_metadata(tree).unwrap();
            assert!(meta.is_dir() && !meta.file_type().is_symlink(), "{tree:?}");
        }
    }
}
