//! The private entries of the scanned trees (see `super::lower`), found by the agent and
//! kept current with inotify, so that a runner's start does not walk the host's trees
//! again when nothing in them changed.
//!
//! Walking `/etc`, `/var`, `/opt` and `/usr/local` for entries the host's other users
//! cannot read costs a few milliseconds per runner, more than everything else in a
//! runner's root filesystem together, and its answer almost never changes. So the agent
//! walks each tree once, through a clone of the mount that forms its layer (what the job
//! will see: no other mount in it, see `super::lower`), and puts an inotify watch on every
//! directory before listing it and on every other entry but symlinks before judging it. The
//! next runner's start reads the queued events first: a tree in which anything was
//! created, deleted, renamed, chmod'ed, chown'ed or touched is walked again; the others
//! give their remembered answer. init is handed the list in its spec and masks what it
//! names.
//!
//! Why this is as strict as a walk per runner:
//!
//! - inotify queues an event in the system call that made the change, before that call
//!   returns. A change made before a runner's start is therefore in the queue when the
//!   start drains it, and a tree it touched is walked again for that runner. A change
//!   made later is seen by the next runner, as with a walk per runner (the walk happens
//!   at the start either way; the README says what that leaves open).
//! - a watch is put on a directory *before* it is listed, so nothing can change between
//!   what the walk read and what is watched.
//! - a mode is changed through one of the entry's names, and inotify tells the directory
//!   of *that* name, which may be one nobody watches: a hard link can be made in `/srv`
//!   at any time (and making it tells only the file's own watchers), then a chmod
//!   through it. So every file gets a watch of its own, which hears every change of its
//!   inode whatever name was used; a directory cannot have other links.
//! - inotify hears what the local kernel does. A filesystem changed behind the kernel's
//!   back (a network filesystem changed by another machine, the lower layer of a host
//!   whose own root is an overlay) is not seen until its tree is walked again.
//! - a tree's answer is tied to the mount it was read from (the device and inode of the
//!   cloned mount's root): a filesystem mounted over a writable tree after the walk
//!   changes them, and the tree is walked again. Mounts *inside* a tree do not matter:
//!   the clone, like the layer, shows what lies under them.
//! - a lost event (queue overflow) forgets every answer, and a watch the kernel dropped
//!   (its directory deleted) forgets its tree's. An error while walking leaves the tree
//!   unanswered, to be walked again; a watch that cannot be added (the inotify limits,
//!   or the agent's own budget of a quarter of them: other services of the host's root
//!   need theirs) leaves the tree to be walked at every start, as before.
//!
//! The instance lives as long as the agent process ([`host_private_entries`]), so a
//! long-running agent walks once; `runner-agent run`, one job per process, walks once per
//! job, overlapped with init's start (`Sandbox::create`). Watches are not removed when a
//! tree is walked again (the kernel gives an inode already watched the same descriptor
//! back, and drops the watch of a deleted inode itself): at most one per directory and
//! file of the trees (about 4,000 on the development machine; each holds its inode in
//! memory). Past `fs.inotify.max_user_watches` a tree is walked at every start instead.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::lower;
use crate::sys;

/// What invalidates a walk: anything that adds, removes or renames an entry, or changes
/// its metadata (`IN_ATTRIB`: mode, owner, extended attributes such as ACLs, link count,
/// timestamps). Content writes (`IN_MODIFY`) do not change who may read a file.
fn watched_events() -> AddWatchFlags {
    AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_DONT_FOLLOW
}

/// A scanned tree and the writable tree whose layer shows it (`/usr/local` is seen through
/// `/usr`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedTree {
    /// The scanned tree (a host path).
    pub tree: PathBuf,
    /// The writable tree holding it, whose mount is cloned for the walk.
    pub layer: PathBuf,
}

/// The remembered answer for one tree.
#[derive(Debug)]
struct Answer {
    /// Device and inode of the root of the mount that was walked.
    mount_root: (u64, u64),
    /// Whether the scanned tree existed in it.
    present: bool,
    /// Its private entries, as host paths.
    found: Vec<PathBuf>,
}

/// The private entries of a set of scanned trees, remembered between runners and
/// forgotten tree by tree when inotify reports a change (module docs).
#[derive(Debug)]
pub struct PrivateEntries {
    inotify: Inotify,
    trees: Vec<ScannedTree>,
    skip: Vec<PathBuf>,
    answers: Vec<Option<Answer>>,
    /// Which trees (bit i for `trees[i]`) each watch serves: a linked file may be in two.
    owners: HashMap<WatchDescriptor, u64>,
    walks: u64,
    /// At most this many watches ([`default_watch_budget`]).
    watch_budget: usize,
}

/// How many inotify watches the agent allows itself: a quarter of the per-user limit
/// (`fs.inotify.max_user_watches`, shared with every other process of the host's root,
/// some of which depend on theirs), and no more than 65,536.
pub fn default_watch_budget() -> usize {
    let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .unwrap_or(8192);
    (limit / 4).min(65_536)
}

impl PrivateEntries {
    /// Watches nothing yet: the first [`PrivateEntries::current`] walks every tree. At most
    /// 64 trees.
    pub fn new(trees: Vec<ScannedTree>, skip: Vec<PathBuf>) -> io::Result<PrivateEntries> {
        if trees.len() > 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more than 64 scanned trees",
            ));
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io::Error::other(format!("inotify_init: {e}")))?;
        let answers = trees.iter().map(|_| None).collect();
        Ok(PrivateEntries {
            inotify,
            trees,
            skip,
            answers,
            owners: HashMap::new(),
            walks: 0,
            watch_budget: default_watch_budget(),
        })
    }

    /// Sets how many watches this instance may add (see [`default_watch_budget`]).
    pub fn with_watch_budget(mut self, budget: usize) -> PrivateEntries {
        self.watch_budget = budget;
        self
    }

    /// The trees and skipped paths this instance answers for.
    pub fn answers_for(&self, trees: &[ScannedTree], skip: &[PathBuf]) -> bool {
        self.trees == trees && self.skip == skip
    }

    /// How many tree walks this instance has made (each tree counts once per walk).
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// The private entries of every tree as of now: remembered answers for trees in which
    /// nothing changed, a new walk for the others.
    pub fn current(&mut self) -> io::Result<Vec<PathBuf>> {
        self.forget_changed()?;
        let mut all = Vec::new();
        for index in 0..self.trees.len() {
            let still_valid = match &self.answers[index] {
                Some(answer) => self.still_valid(index, answer)?,
                None => false,
            };
            if !still_valid {
                self.answers[index] = None;
                let (answer, watched) = self.walk(index)?;
                all.extend(answer.found.iter().cloned());
                // A tree not watched whole must be walked again next time.
                if watched {
                    self.answers[index] = Some(answer);
                }
                continue;
            }
            if let Some(answer) = &self.answers[index] {
                all.extend(answer.found.iter().cloned());
            }
        }
        Ok(all)
    }

    /// Reads every queued event and forgets the answers they touch.
    fn forget_changed(&mut self) -> io::Result<()> {
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(io::Error::other(format!("reading inotify events: {e}"))),
            };
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    self.answers.iter_mut().for_each(|a| *a = None);
                    continue;
                }
                let trees = self.owners.get(&event.wd).copied().unwrap_or(0);
                for (index, answer) in self.answers.iter_mut().enumerate() {
                    if trees & (1 << index) != 0 {
                        *answer = None;
                    }
                }
                if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.owners.remove(&event.wd);
                }
            }
        }
    }

    /// Whether `answer` still describes tree `index`: the same mount at its writable tree,
    /// and the scanned tree as present or absent as it was.
    fn still_valid(&self, index: usize, answer: &Answer) -> io::Result<bool> {
        let scanned = &self.trees[index];
        let live = match std::fs::metadata(&scanned.layer) {
            Ok(meta) => (meta.dev(), meta.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        // An absent tree has no watch that would tell of its creation.
        Ok(live == answer.mount_root && (answer.present || !is_real_dir(&scanned.tree)))
    }

    /// Walks tree `index` through a fresh clone of its layer's mount, watching what it
    /// reads. Returns the answer and whether every watch could be added.
    fn walk(&mut self, index: usize) -> io::Result<(Answer, bool)> {
        self.walks += 1;
        let scanned = self.trees[index].clone();
        let clone: OwnedFd = sys::open_tree_clone(&scanned.layer)
            .map_err(|e| io::Error::other(format!("open_tree {}: {e}", scanned.layer.display())))?;
        let base = PathBuf::from(format!("/proc/self/fd/{}", clone.as_raw_fd()));
        let root_meta = std::fs::metadata(&base)?;
        let in_clone = |host: &Path| base.join(host.strip_prefix(&scanned.layer).unwrap_or(host));
        let root = in_clone(&scanned.tree);
        let mut answer = Answer {
            mount_root: (root_meta.dev(), root_meta.ino()),
            present: is_real_dir(&root),
            found: Vec::new(),
        };
        if !answer.present {
            return Ok((answer, true));
        }
        let skip: Vec<PathBuf> = self
            .skip
            .iter()
            .filter(|s| s.starts_with(&scanned.layer))
            .map(|s| in_clone(s))
            .collect();
        let mut watched = true;
        let (inotify, owners, budget) = (&self.inotify, &mut self.owners, self.watch_budget);
        let found = lower::private_entries(&root, &skip, &mut |path: &Path| -> io::Result<()> {
            if !watched {
                return Ok(());
            }
            if owners.len() >= budget {
                tracing::warn!(tree = %scanned.tree.display(), budget, "the private-file watches reached their budget; the tree will be walked at every runner's start");
                watched = false;
                return Ok(());
            }
            match inotify.add_watch(path, watched_events()) {
                Ok(wd) => {
                    *owners.entry(wd).or_insert(0) |= 1 << index;
                    Ok(())
                }
                // The per-user watch limit (fs.inotify.max_user_watches): walk this tree
                // at every start instead.
                Err(Errno::ENOSPC) => {
                    tracing::warn!(tree = %scanned.tree.display(), "inotify watch limit reached; the tree will be walked at every runner's start");
                    watched = false;
                    Ok(())
                }
                Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(io::Error::other(format!("inotify_add_watch: {e}"))),
            }
        })?;
        answer.found = found
            .iter()
            .map(|f| scanned.layer.join(f.strip_prefix(&base).unwrap_or(f)))
            .collect();
        Ok((answer, watched))
    }
}

/// The scanned trees of this host that get a layer of their own, each with the writable
/// tree whose layer shows it, given the configured masks: a scanned tree under a masked
/// path, or in no open writable tree (absent, or private as a whole and hidden by init),
/// has none.
pub fn host_trees(masked: &[PathBuf]) -> Vec<ScannedTree> {
    let (open, _closed) = lower::writable_trees(masked);
    lower::SCANNED_TREES
        .iter()
        .map(PathBuf::from)
        .filter(|tree| !masked.iter().any(|mask| tree.starts_with(mask)))
        .filter_map(|tree| {
            let layer = open
                .iter()
                .filter(|w| tree.starts_with(w))
                .max_by_key(|w| w.components().count())?
                .clone();
            Some(ScannedTree { tree, layer })
        })
        .collect()
}

/// What the walk skips: the configured masks that are directories (hidden whole anyway,
/// and often busy: `/var/log`, `/var/tmp`), and the package managers' directories
/// (`lower::PACKAGE_DIRS`). Masks of files are not skipped: a file is no walk, and
/// `runner-agent run` masks each job's own audit log, which would otherwise make every
/// job's skip list, and so the remembered answers, different.
pub fn skipped(masked: &[PathBuf]) -> Vec<PathBuf> {
    masked
        .iter()
        .filter(|mask| mask.symlink_metadata().is_ok_and(|m| m.is_dir()))
        .cloned()
        .chain(lower::PACKAGE_DIRS.iter().map(PathBuf::from))
        .collect()
}

/// The agent's one instance (module docs): rebuilt when the masks or the set of trees
/// change.
static HOST: Mutex<Option<PrivateEntries>> = Mutex::new(None);

/// The private entries of this host's scanned trees as of now, given the configured
/// masks `masked` (module docs).
pub fn host_private_entries(masked: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let trees = host_trees(masked);
    let skip = skipped(masked);
    // A panic while walking leaves nothing half-updated that matters: answers are only
    // stored whole.
    let mut host = HOST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let entries = match host.take() {
        Some(kept) if kept.answers_for(&trees, &skip) => host.insert(kept),
        _ => host.insert(PrivateEntries::new(trees, skip)?),
    };
    entries.current()
}

/// Whether `path` is a directory and not a symlink (a scanned tree that is a symlink
/// leads elsewhere, into what the job reads as an "other" user; nothing to walk).
fn is_real_dir(path: &Path) -> bool {
    path.symlink_metadata().is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// These tests clone mounts (`open_tree`), which needs root: they skip without it,
    /// except under CI, where a skip is a failure.
    fn privileged() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root (open_tree) and CI is set: a skip is a failure"
        );
        eprintln!("SKIPPED: needs root (open_tree)");
        false
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn write(path: &Path, mode: u32) {
        std::fs::write(path, "x").unwrap();
        chmod(path, mode);
    }

    /// A layer directory holding scanned trees `a` and `b`, each with a public file and
    /// directory, and a directory outside both.
    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        /// A new host layout, or `None` (the test returns) where the tests cannot run.
        fn if_privileged() -> Option<Host> {
            privileged().then(Host::new)
        }

        fn new() -> Host {
            let dir = tempfile::tempdir().unwrap();
            chmod(dir.path(), 0o755);
            for tree in ["layer/a/sub", "layer/b", "outside"] {
                std::fs::create_dir_all(dir.path().join(tree)).unwrap();
            }
            write(&dir.path().join("layer/a/public"), 0o644);
            write(&dir.path().join("layer/a/sub/public"), 0o644);
            write(&dir.path().join("layer/b/public"), 0o644);
            Host { dir }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn entries(&self) -> PrivateEntries {
            let trees = ["a", "b"]
                .iter()
                .map(|t| ScannedTree {
                    tree: self.path("layer").join(t),
                    layer: self.path("layer"),
                })
                .collect();
            PrivateEntries::new(trees, vec![self.path("layer/a/skipped")]).unwrap()
        }
    }

    /// A tmpfs mounted at a path, unmounted when dropped (a failing test leaves none).
    struct Mounted(PathBuf);

    impl Mounted {
        fn tmpfs(at: &Path) -> Mounted {
            use nix::mount::{mount, MsFlags};
            mount(
                Some("tmpfs"),
                at,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            )
            .unwrap();
            Mounted(at.to_owned())
        }
    }

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount(&self.0);
        }
    }

    fn sorted(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
        paths.sort();
        paths
    }

    #[test]
    fn an_unchanged_tree_is_not_walked_again() {
        let Some(host) = Host::if_privileged() else {
            return;
        };
        write(&host.path("layer/a/key"), 0o600);
        let mut entries = host.entries();
        assert_eq!(entries.current().unwrap(), vec![host.path("layer/a/key")]);
        assert_eq!(entries.walks(), 2);
        // Reading and writing contents changes nobody's access.
        std::fs::write(host.path("layer/a/public"), "more").unwrap();
        let _ = std::fs::read(host.path("layer/b/public")).unwrap();
        assert_eq!(entries.current().unwrap(), vec![host.path("layer/a/key")]);
        assert_eq!(entries.walks(), 2, "walked again without a change");
    }

    #[test]
    fn a_change_is_seen_by_the_next_call_and_only_its_tree_is_walked_again() {
        let Some(host) = Host::if_privileged() else {
            return;
        };
        let mut entries = host.entries();
        assert!(entries.current().unwrap().is_empty());
        let walks = entries.walks();

        chmod(&host.path("layer/a/sub/public"), 0o600);
        assert_eq!(
            entries.current().unwrap(),
            vec![host.path("layer/a/sub/public")]
        );
        assert_eq!(entries.walks(), walks + 1, "only tree a is walked again");

        chmod(&host.path("layer/a/sub/public"), 0o644);
        write(&host.path("layer/b/new-key"), 0o640);
        assert_eq!(
            entries.current().unwrap(),
            vec![host.path("layer/b/new-key")]
        );

        // A directory made private is hidden whole; its contents are not listed.
        chmod(&host.path("layer/a/sub"), 0o700);
        assert_eq!(
            sorted(entries.current().unwrap()),
            vec![host.path("layer/a/sub"), host.path("layer/b/new-key")]
        );
        chmod(&host.path("layer/a/sub"), 0o711);
        assert_eq!(
            sorted(entries.current().unwrap()),
            vec![host.path("layer/a/sub"), host.path("layer/b/new-key")]
        );
        chmod(&host.path("layer/a/sub"), 0o755);
        std::fs::remove_file(host.path("layer/b/new-key")).unwrap();
        assert!(entries.current().unwrap().is_empty());
    }

    #[test]
    fn private_files_moved_or_linked_in_and_changed_through_other_links_are_seen() {
        let Some(host) = Host::if_privileged() else {
            return;
        };
        let mut entries = host.entries();
        assert!(entries.current().unwrap().is_empty());

        // Renamed in from outside the trees.
        write(&host.path("outside/moved"), 0o600);
        std::fs::rename(host.path("outside/moved"), host.path("layer/a/sub/moved")).unwrap();
        assert_eq!(
            entries.current().unwrap(),
            vec![host.path("layer/a/sub/moved")]
        );
        std::fs::remove_file(host.path("layer/a/sub/moved")).unwrap();

        // A public file with a second name outside the trees, made private through that
        // name: the tree's directory hears nothing, the file's own watch does.
        write(&host.path("outside/linked"), 0o644);
        std::fs::hard_link(host.path("outside/linked"), host.path("layer/b/linked")).unwrap();
        assert!(entries.current().unwrap().is_empty());
        chmod(&host.path("outside/linked"), 0o600);
        assert_eq!(
            entries.current().unwrap(),
            vec![host.path("layer/b/linked")]
        );

        // A second name made after the walk (which only the file itself hears), then a
        // chmod through it.
        write(&host.path("layer/a/single"), 0o644);
        assert_eq!(
            entries.current().unwrap(),
            vec![host.path("layer/b/linked")]
        );
        std::fs::hard_link(host.path("layer/a/single"), host.path("outside/late")).unwrap();
        chmod(&host.path("outside/late"), 0o600);
        assert_eq!(
            sorted(entries.current().unwrap()),
            vec![host.path("layer/a/single"), host.path("layer/b/linked")]
        );
        std::fs::remove_file(host.path("layer/a/single")).unwrap();

        // A new directory is watched too.
        std::fs::create_dir(host.path("layer/a/new")).unwrap();
        assert!(entries.current().unwrap().len() == 1);
        write(&host.path("layer/a/new/key"), 0o600);
        assert_eq!(
            sorted(entries.current().unwrap()),
            vec![host.path("layer/a/new/key"), host.path("layer/b/linked")]
        );
    }

    #[test]
    fn masked_directories_are_skipped_and_masked_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (file, missing) = (dir.path().join("audit.jsonl"), dir.path().join("missing"));
        std::fs::write(&file, "").unwrap();
        let skip = skipped(&[dir.path().to_owned(), file, missing]);
        assert_eq!(skip[0], dir.path());
        assert_eq!(
            &skip[1..],
            &lower::PACKAGE_DIRS
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn past_the_watch_budget_a_tree_is_walked_at_every_call_and_still_right() {
        let Some(host) = Host::if_privileged() else {
            return;
        };
        // Tree a needs four watches (two directories, two files), tree b two: with five,
        // a is covered and b is not.
        let mut entries = host.entries().with_watch_budget(5);
        assert!(entries.current().unwrap().is_empty());
        let walks = entries.walks();
        assert!(entries.current().unwrap().is_empty());
        assert_eq!(entries.walks(), walks + 1, "b is walked again, a is not");
        // Changed through a name nobody watches, in the tree without a watch on the file.
        std::fs::hard_link(host.path("layer/b/public"), host.path("outside/l")).unwrap();
        chmod(&host.path("outside/l"), 0o600);
        assert_eq!(
            entries.current().unwrap(),
            vec![host.path("layer/b/public")]
        );
    }

    #[test]
    fn skipped_paths_are_not_walked() {
        let Some(host) = Host::if_privileged() else {
            return;
        };
        std::fs::create_dir(host.path("layer/a/skipped")).unwrap();
        write(&host.path("layer/a/skipped/key"), 0o600);
        let mut entries = host.entries();
        assert!(entries.current().unwrap().is_empty());
    }

    #[test]
    fn a_filesystem_mounted_over_the_layer_is_walked_and_its_removal_seen() {
        let Some(host) = Host::if_privileged() else {
            return;
        };
        let mut entries = host.entries();
        assert!(entries.current().unwrap().is_empty());
        let walks = entries.walks();

        let layer = host.path("layer");
        let mounted = Mounted::tmpfs(&layer);
        std::fs::create_dir(layer.join("a")).unwrap();
        write(&layer.join("a/mounted-key"), 0o600);
        assert_eq!(
            entries.current().unwrap(),
            vec![host.path("layer/a/mounted-key")]
        );
        assert_eq!(entries.walks(), walks + 2, "both trees walked again");
        drop(mounted);

        assert!(entries.current().unwrap().is_empty());
        assert_eq!(entries.walks(), walks + 4);
    }

    #[test]
    fn what_lies_under_a_mount_inside_a_tree_is_what_is_walked() {
        let Some(host) = Host::if_privileged() else {
            return;
        };
        write(&host.path("layer/a/sub/under"), 0o600);
        let sub = host.path("layer/a/sub");
        let _mounted = Mounted::tmpfs(&sub);
        let found = host.entries().current();
        assert_eq!(found.unwrap(), vec![host.path("layer/a/sub/under")]);
    }
}
