//! Building the sandbox's root filesystem and switching into it.
//!
//! Runs in the sandbox init (pid 1 of the new pid namespace) while it is still root in the
//! host's user namespace, inside a mount namespace of its own whose propagation is
//! private, so nothing here is visible on the host and everything dies with the sandbox.
//!
//! ```text
//! scratch_dir (tmpfs, size = disk limit)
//! ├── lower   host root, read-only, nosuid, nodev, NOT idmapped (host files: nobody)
//! ├── upper   the writable layer: masks, generated files, /workspace, the job's writes
//! ├── work    overlayfs work dir
//! ├── trees/N/{lower,upper,work}
//! │           one per writable tree (/usr, /etc, /var, /opt...): that tree of the host,
//! │           read-only and idmapped (host 0 → sandbox 0), with its own upper layer
//! ├── shm     bound at /dev/shm (mode 1777)
//! └── merged  overlay(lower, upper), each tree's overlay on top at its place,
//!             + /proc, /sys, /dev → becomes "/" by pivot_root
//! ```
//!
//! Why the host root is not idmapped as a whole, and how the private entries of the
//! writable trees are found and hidden: [`super::lower`].
//!
//! Everything a job can write lives on that one tmpfs, so `limits.disk` bounds all of it
//! together: the writable layer (which holds /tmp, /var/tmp, $HOME and /workspace) and
//! /dev/shm. A /dev/shm of its own size would have doubled what a job can store. tmpfs
//! pages are memory and are charged to the runner's memory cgroup, so `limits.memory`
//! bounds them too: whichever limit is lower stops a job that fills its disk (ENOSPC at
//! the disk limit, the OOM killer at the memory limit).
//!
//! Masking is done *inside* the overlay, not with mounts on top of it: a masked directory
//! is an opaque directory of the upper layer and a masked file a whiteout, so there is no
//! mount the job could remove to reveal what is under it (it could not anyway: the mount
//! namespace belongs to the host's user namespace, see `init`).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};

use super::protocol::SandboxSpec;
use super::SECRETS_DIR;
use crate::sys;

/// A failing step of the root filesystem set-up.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A mount failed.
    #[error("mount {what} on {target}: {source}")]
    Mount {
        /// What was being mounted.
        what: &'static str,
        /// Where.
        target: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// A file or directory of the writable layer could not be made.
    #[error("prepare {path}: {source}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The lower layer could not be cloned or attached.
    #[error("lower layer: {op}: {source}")]
    Lower {
        /// The failing call.
        op: &'static str,
        /// Why.
        source: nix::Error,
    },
    /// A path cannot be used in overlayfs options (they are comma and colon separated).
    #[error("path {0} contains ',' or ':' and cannot be used for the overlay")]
    BadPath(PathBuf),
    /// The root switch failed.
    #[error("pivot_root into {root}: {op}: {source}")]
    Pivot {
        /// The new root.
        root: PathBuf,
        /// The failing call.
        op: &'static str,
        /// Why.
        source: nix::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Prepare {
        path: path.to_owned(),
        source,
    }
}

fn nix_io(path: &Path) -> impl FnOnce(nix::Error) -> RootfsError + '_ {
    move |e| RootfsError::Prepare {
        path: path.to_owned(),
        source: io::Error::from(e),
    }
}

fn do_mount(
    what: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mount(source, target, fstype, flags, data).map_err(|source| RootfsError::Mount {
        what,
        target: target.to_owned(),
        source,
    })
}

/// Maps host ids to the ids that stand for them inside (used to own the writable layer's
/// entries the way their lower counterparts appear through the idmapped mount).
#[derive(Debug, Clone, Copy)]
struct IdMap {
    base: u32,
    count: u32,
}

impl IdMap {
    /// The host id that appears as `inside` in the sandbox; ids beyond the mapping fall
    /// back to the sandbox's root.
    fn host(self, inside: u32) -> u32 {
        if inside < self.count {
            self.base + inside
        } else {
            self.base
        }
    }
}

/// The paths of the scratch area.
struct Scratch {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    trees: PathBuf,
    shm: PathBuf,
    merged: PathBuf,
}

/// One overlay of the root filesystem: the main one (the whole host root, at "/") or one
/// writable tree's (at the tree's path).
struct Layer {
    /// Where it appears inside, which is also the host path its lower layer shows.
    host: PathBuf,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    /// Whether its lower layer is idmapped (host-owned files belong to the job's ids).
    idmapped: bool,
}

impl Layer {
    /// `inside` (absolute, under [`Layer::host`]) relative to the layer's top.
    fn relative<'p>(&self, inside: &'p Path) -> &'p Path {
        inside.strip_prefix(&self.host).unwrap_or(inside)
    }

    /// `inside` (absolute, under [`Layer::host`]) in this layer's upper directory.
    fn upper_path(&self, inside: &Path) -> PathBuf {
        under(&self.upper, self.relative(inside))
    }

    /// `inside` (absolute, under [`Layer::host`]) in this layer's lower directory: the
    /// clone of the host's tree that the job sees, which is what masks must be made from.
    /// Not the live host path: there, a filesystem mounted inside the tree shows its own
    /// content, while the clone (which holds no other mount) shows what lies under it.
    fn lower_path(&self, inside: &Path) -> PathBuf {
        under(&self.lower, self.relative(inside))
    }

    /// Metadata of `inside` as this layer's lower directory shows it (not following a
    /// final symlink), or `None` when it has no such entry or the way to it goes through
    /// a symlink (whose target is judged where it lives).
    fn lower_entry(&self, inside: &Path) -> Option<fs::Metadata> {
        let mut ancestor = self.lower.clone();
        let mut components = self.relative(inside).components().peekable();
        while let Some(component) = components.next() {
            ancestor.push(component);
            let meta = fs::symlink_metadata(&ancestor).ok()?;
            if components.peek().is_none() {
                return Some(meta);
            }
            if meta.file_type().is_symlink() {
                return None;
            }
        }
        None
    }
}

/// The layer that shows `inside`: the deepest whose tree holds it, else the main one
/// (which is first).
fn layer_for<'a>(layers: &'a [Layer], inside: &Path) -> &'a Layer {
    layers
        .iter()
        .filter(|l| inside.starts_with(&l.host))
        .max_by_key(|l| l.host.components().count())
        .unwrap_or(&layers[0])
}

/// The outcome of [`build`].
pub struct BuiltRoot {
    /// The directory to pivot into.
    pub root: PathBuf,
    /// Whether the lower layer is idmapped.
    pub idmapped: bool,
}

/// Builds the root filesystem described by `spec` and returns where it is. `userns` is a
/// user namespace carrying the sandbox's id mapping (used for the idmapped trees).
pub fn build(spec: &SandboxSpec, userns: BorrowedFd<'_>) -> Result<BuiltRoot, RootfsError> {
    let ids = IdMap {
        base: spec.id_base,
        count: spec.id_count,
    };
    let scratch = mount_scratch(spec)?;
    // The whole host root as its "other" users see it (see `super::lower`).
    attach_lower(Path::new("/"), &scratch.lower, None)?;
    let mut layers = vec![Layer {
        host: PathBuf::from("/"),
        lower: scratch.lower.clone(),
        upper: scratch.upper.clone(),
        work: scratch.work.clone(),
        idmapped: false,
    }];
    let (open_trees, closed_trees) = super::lower::writable_trees(&spec.masked_paths);
    for (index, tree) in open_trees.into_iter().enumerate() {
        let dir = scratch.trees.join(index.to_string());
        let layer = Layer {
            lower: dir.join("lower"),
            upper: dir.join("upper"),
            work: dir.join("work"),
            idmapped: false,
            host: tree,
        };
        for d in [&dir, &layer.lower, &layer.upper, &layer.work] {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(d)
                .map_err(io_err(d))?;
        }
        let idmapped = attach_lower(&layer.host, &layer.lower, Some(userns))?;
        layers.push(Layer { idmapped, ..layer });
    }
    let masks = masks_for(spec, closed_trees);
    prepare_upper(spec, &layers, &masks, ids)?;
    for layer in &layers {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            layer.lower.display(),
            layer.upper.display(),
            layer.work.display()
        );
        do_mount(
            "overlay",
            Some(Path::new("overlay")),
            &under(&scratch.merged, &layer.host),
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(&options),
        )?;
    }
    mount_pseudo_filesystems(&scratch.merged, ids, &scratch.shm)?;
    if !spec.secret_files.is_empty() {
        mount_secrets(&scratch.merged, spec, ids)?;
    }
    Ok(BuiltRoot {
        root: scratch.merged,
        idmapped: layers.iter().any(|l| l.idmapped),
    })
}

/// The configured masks, the private entries of the scanned trees the agent found
/// (`super::private`), and the writable trees that are private as a whole,
/// `closed_trees` (they get no layer of their own; see `super::lower::writable_trees`).
fn masks_for(spec: &SandboxSpec, closed_trees: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut masks = spec.masked_paths.clone();
    masks.extend(closed_trees);
    masks.extend(spec.private_entries.iter().cloned());
    masks
}

fn mount_scratch(spec: &SandboxSpec) -> Result<Scratch, RootfsError> {
    let dir = &spec.scratch_dir;
    let text = dir.to_string_lossy();
    if text.contains(',') || text.contains(':') {
        return Err(RootfsError::BadPath(dir.clone()));
    }
    do_mount(
        "scratch tmpfs",
        Some(Path::new("runner-scratch")),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!(
            "size={},mode=0700",
            spec.scratch_bytes.max(1 << 20)
        )),
    )?;
    let scratch = Scratch {
        lower: dir.join("lower"),
        upper: dir.join("upper"),
        work: dir.join("work"),
        trees: dir.join("trees"),
        shm: dir.join("shm"),
        merged: dir.join("merged"),
    };
    for d in [
        &scratch.lower,
        &scratch.upper,
        &scratch.work,
        &scratch.trees,
        &scratch.shm,
        &scratch.merged,
    ] {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(d)
            .map_err(io_err(d))?;
    }
    // Sticky and writable by everyone, as /dev/shm is (the umask took bits off above).
    fs::set_permissions(&scratch.shm, fs::Permissions::from_mode(0o1777))
        .map_err(io_err(&scratch.shm))?;
    Ok(scratch)
}

/// Attaches a read-only clone of the host's `tree` at `target`, idmapped through `userns`
/// when given and the filesystem supports it. Returns whether it is idmapped.
fn attach_lower(
    tree: &Path,
    target: &Path,
    userns: Option<BorrowedFd<'_>>,
) -> Result<bool, RootfsError> {
    let clone = sys::open_tree_clone(tree).map_err(|source| RootfsError::Lower {
        op: "open_tree",
        source,
    })?;
    let idmapped = match userns.map(|userns| sys::idmap_read_only(clone.as_fd(), userns)) {
        Some(Ok(())) => true,
        other => {
            if let Some(Err(err)) = other {
                // Filesystems without idmap support (for example a host whose root is
                // itself an overlay) still work, but the job cannot change the tree.
                tracing::warn!(tree = %tree.display(), error = %err, "cannot be idmapped; the job will not be able to change it");
            }
            sys::read_only(clone.as_fd()).map_err(|source| RootfsError::Lower {
                op: "mount_setattr",
                source,
            })?;
            false
        }
    };
    sys::move_mount_to(clone.as_fd(), target).map_err(|source| RootfsError::Lower {
        op: "move_mount",
        source,
    })?;
    Ok(idmapped)
}

/// Gives the existing `path` mode `mode` and owner `uid`:`gid` (the mode is set apart
/// from the creation, which the umask trims).
fn set_mode_owner(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), RootfsError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(nix_io(path))
}

/// Creates the directory `path` with mode `mode`, owned by `uid`:`gid`.
fn make_dir(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), RootfsError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(io_err(path))?;
    set_mode_owner(path, mode, uid, gid)
}

/// The path of `inside` (absolute, inside the sandbox) below `base`.
fn under(base: &Path, inside: &Path) -> PathBuf {
    let relative: PathBuf = inside
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    base.join(relative)
}

/// Fills the writable layers before the overlays are mounted (writing to an upper layer
/// under a mounted overlay is undefined, see the kernel's overlayfs documentation).
fn prepare_upper(
    spec: &SandboxSpec,
    layers: &[Layer],
    masks: &[PathBuf],
    ids: IdMap,
) -> Result<(), RootfsError> {
    let root = ids.host(0);
    // "/" belongs to the job's root, so that it can make directories at the top; a tree's
    // top looks like the host's.
    let main = &layers[0];
    chown(
        &main.upper,
        Some(Uid::from_raw(root)),
        Some(Gid::from_raw(root)),
    )
    .map_err(nix_io(&main.upper))?;
    for layer in &layers[1..] {
        let meta = fs::symlink_metadata(&layer.lower).map_err(io_err(&layer.lower))?;
        set_mode_owner(&layer.upper, meta.mode() & 0o7777, meta.uid(), meta.gid())?;
    }
    for masked in masks {
        mask(layer_for(layers, masked), masked, ids)?;
    }
    for (inside, content) in &spec.files {
        let layer = layer_for(layers, inside);
        ensure_parents(layer, inside)?;
        let path = layer.upper_path(inside);
        // A regular file replaces whatever the host has there, symlinks included.
        let _ = fs::remove_file(&path);
        fs::write(&path, content).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(io_err(&path))?;
        chown(&path, Some(Uid::from_raw(root)), Some(Gid::from_raw(root)))
            .map_err(nix_io(&path))?;
    }
    if !spec.secret_files.is_empty() {
        // The mount point of the secrets tmpfs (/run is masked, so this is the only
        // entry of the job's /run).
        make_root_dir(layers, Path::new(SECRETS_DIR), 0o500, ids)?;
    }
    make_root_dir(layers, &spec.workspace, 0o755, ids)
}

/// Creates `inside` in the upper layer that shows it, with its parents as on the host,
/// mode `mode` and owned by the job's root.
fn make_root_dir(
    layers: &[Layer],
    inside: &Path,
    mode: u32,
    ids: IdMap,
) -> Result<(), RootfsError> {
    let layer = layer_for(layers, inside);
    ensure_parents(layer, inside)?;
    let root = ids.host(0);
    make_dir(&layer.upper_path(inside), mode, root, root)
}

/// Creates, in `layer`'s upper directory, the directories leading to `inside`, each with
/// the mode and owner its counterpart has in the layer's lower directory (ids as that
/// shows them: mapped where it is idmapped, the host's own where not), so that the merged
/// view looks unchanged.
fn ensure_parents(layer: &Layer, inside: &Path) -> Result<(), RootfsError> {
    let mut host = layer.host.clone();
    let mut parents: Vec<&std::ffi::OsStr> = layer
        .relative(inside)
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    parents.pop();
    for name in parents {
        host.push(name);
        let target = layer.upper_path(&host);
        if target.exists() {
            continue;
        }
        let (mode, uid, gid) = match fs::symlink_metadata(layer.lower_path(&host)) {
            Ok(meta) if meta.is_dir() => (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            _ => (0o755, 0, 0),
        };
        make_dir(&target, mode, uid, gid)?;
    }
    Ok(())
}

/// Hides `inside`: an existing host directory becomes an empty opaque directory with the
/// same mode and owner; anything else a whiteout. A path that does not exist on the host,
/// or that goes through a symlink, needs no mask (the symlink's target is masked itself
/// when it matters).
///
/// A masked entry belongs to the job's ids (mapped from its host owner) in every layer, so
/// that masked homes and scratch directories (/root, /tmp, /run) are the job's to use.
fn mask(layer: &Layer, inside: &Path, ids: IdMap) -> Result<(), RootfsError> {
    let Some(meta) = layer.lower_entry(inside) else {
        return Ok(());
    };
    ensure_parents(layer, inside)?;
    let target = layer.upper_path(inside);
    if target.symlink_metadata().is_ok() {
        return Ok(()); // masked already (listed twice)
    }
    if meta.is_dir() {
        // An idmapped lower shows host ids already mapped to the job's; through the
        // plain one they are the host's own, mapped here.
        let (uid, gid) = if layer.idmapped {
            (meta.uid(), meta.gid())
        } else {
            (ids.host(meta.uid()), ids.host(meta.gid()))
        };
        make_dir(&target, meta.mode() & 0o7777, uid, gid)?;
        sys::set_xattr(&target, c"trusted.overlay.opaque", b"y").map_err(nix_io(&target))?;
    } else {
        // A whiteout is a character device 0:0 (overlayfs documentation, "whiteouts").
        nix::sys::stat::mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(nix_io(&target))?;
    }
    Ok(())
}

const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus"];
const PROC_HIDDEN: &[&str] = &["kcore", "keys", "timer_list"];
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Mounts /proc, /sys and /dev in `root`; `shm` (on the scratch tmpfs) becomes /dev/shm.
fn mount_pseudo_filesystems(root: &Path, ids: IdMap, shm: &Path) -> Result<(), RootfsError> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    // /proc: a fresh instance, so only the sandbox's processes appear. Parts that reach
    // the kernel are read-only or hidden, as container runtimes do.
    let proc_dir = root.join("proc");
    do_mount(
        "proc",
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        hardened,
        None,
    )?;
    for name in PROC_READ_ONLY {
        let path = proc_dir.join(name);
        if path.exists() {
            bind(&path, &path, true)?;
        }
    }
    for name in PROC_HIDDEN {
        let path = proc_dir.join(name);
        if path.exists() {
            bind(Path::new("/dev/null"), &path, true)?;
        }
    }

    // /sys: read-only, showing the sandbox's own network devices; the cgroup tree
    // (read-only) shows the runner's cgroup as its root thanks to the cgroup namespace.
    let sys_dir = root.join("sys");
    do_mount(
        "sysfs",
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        hardened | MsFlags::MS_RDONLY,
        None,
    )?;
    let cgroup_dir = sys_dir.join("fs/cgroup");
    if cgroup_dir.is_dir() {
        do_mount(
            "cgroup2",
            Some(Path::new("cgroup2")),
            &cgroup_dir,
            Some("cgroup2"),
            hardened | MsFlags::MS_RDONLY,
            None,
        )?;
    }

    // /dev: a small tmpfs with the usual devices bound from the host, a private devpts
    // instance, and /dev/shm on the scratch tmpfs (see the module docs).
    let dev = root.join("dev");
    do_mount(
        "dev tmpfs",
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=65536"),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        fs::write(&target, b"").map_err(io_err(&target))?;
        bind(&Path::new("/dev").join(name), &target, false)?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(io_err(&pts))?;
    do_mount(
        "devpts",
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={}",
            ids.host(5)
        )),
    )?;
    let dev_shm = dev.join("shm");
    fs::create_dir(&dev_shm).map_err(io_err(&dev_shm))?;
    // The bind keeps the scratch mount's nosuid and nodev (a bind mount copies the
    // source mount's flags).
    bind(shm, &dev_shm, false)?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        std::os::unix::fs::symlink(target, &path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Secrets delivered as files: a tmpfs of their own at [`SECRETS_DIR`], owned by the job's
/// root (mapped), each file 0400, then remounted read-only. The mount belongs to the
/// sandbox's mount namespace, which is owned by the host's user namespace, so the job can
/// neither unmount nor remount it, and it dies with the sandbox: the values never touch a
/// disk and never reach the host's filesystem.
fn mount_secrets(root: &Path, spec: &SandboxSpec, ids: IdMap) -> Result<(), RootfsError> {
    let dir = under(root, Path::new(SECRETS_DIR));
    let owner = ids.host(0);
    let bytes: usize = spec.secret_files.iter().map(|f| f.content.len()).sum();
    // Room for the values plus one page per file; tmpfs rounds up to pages anyway.
    let size = bytes + (spec.secret_files.len() + 1) * 4096;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount(
        "secrets tmpfs",
        Some(Path::new("tmpfs")),
        &dir,
        Some("tmpfs"),
        flags,
        Some(&format!(
            "mode=0500,uid={owner},gid={owner},size={size},nr_inodes={}",
            spec.secret_files.len() + 16
        )),
    )?;
    for secret in &spec.secret_files {
        let path = dir.join(&secret.name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(io_err(&path))?;
        io::Write::write_all(&mut file, &secret.content).map_err(io_err(&path))?;
        chown(
            &path,
            Some(Uid::from_raw(owner)),
            Some(Gid::from_raw(owner)),
        )
        .map_err(nix_io(&path))?;
    }
    do_mount(
        "secrets read-only",
        None,
        &dir,
        None,
        flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None,
    )
}

/// Bind-mounts `source` on `target`, read-only and without suid/dev/exec when asked.
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), RootfsError> {
    do_mount("bind", Some(source), target, None, MsFlags::MS_BIND, None)?;
    if read_only {
        // MS_RDONLY only takes effect on a bind mount through a remount (mount(2)).
        do_mount(
            "read-only remount",
            None,
            target,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    Ok(())
}

/// Makes `new_root` the root of the mount namespace and detaches the old root entirely,
/// so no path leads back to the host's filesystem.
pub fn pivot_into(new_root: &Path) -> Result<(), RootfsError> {
    let err = |op: &'static str| {
        move |source| RootfsError::Pivot {
            root: new_root.to_owned(),
            op,
            source,
        }
    };
    // The sequence below is the one runc uses (see pivot_root(2), "pivot_root(".", ".")"):
    // 1. enter the new root, which is a mount point (the overlay);
    nix::unistd::chdir(new_root).map_err(err("chdir"))?;
    // 2. put the new root at "/" and stack the old root on top of it, at the same place;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    // 3. detach the old root (the top of the stack at "."), with everything under it;
    //    MNT_DETACH because the host's mounts are busy by definition;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("umount old root"))?;
    // 4. settle at the new "/".
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_strips_the_root() {
        assert_eq!(
            under(Path::new("/s/upper"), Path::new("/etc/hosts")),
            PathBuf::from("/s/upper/etc/hosts")
        );
        assert_eq!(under(Path::new("/u"), Path::new("/")), PathBuf::from("/u"));
    }

    #[test]
    fn ids_beyond_the_mapping_fall_back_to_root() {
        let ids = IdMap {
            base: 1000,
            count: 10,
        };
        assert_eq!(ids.host(0), 1000);
        assert_eq!(ids.host(9), 1009);
        assert_eq!(ids.host(65534), 1000);
    }
}
