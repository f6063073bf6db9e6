//! [`Fence`]: load the programs for one runner, attach them, pin them, take them away.
//!
//! One object is loaded per runner, so its maps (config, original destinations, events,
//! counters) belong to that runner alone and are freed with its programs. Every cgroup
//! attachment is a BPF link pinned under the runner's pin directory:
//!
//! ```text
//! <pin_dir>/link_fence_connect4 ... link_fence_skb_egress   links (cgroup)
//! <pin_dir>/map_orig_dst, map_events, map_counters, map_fence_config, map_sock_orig
//! ```
//!
//! The tc program on the host-side veth is a classic tc filter (a `clsact` qdisc with a
//! direct-action BPF filter, set up over netlink), not a TCX link: attaching a TCX link
//! waits for an RCU grace period (10 to 20 ms, most of a runner's start on a host with
//! normal RCU), the filter does not. It depends on no file descriptor either, so it
//! stays in force when the agent dies, and it goes with the veth: deleting the veth is
//! what removes it, for live runners and reaped ones alike.
//!
//! Invariants:
//! - The config map is written before any program is attached, and programs deny when
//!   it is missing, so there is no moment where a half-attached fence lets more through.
//! - Dropping a [`Fence`] leaves it in place (the pins and the veth hold it): a crashed or
//!   killed agent leaves its runners fenced, never open. Only [`Fence::detach`] or [`reap`]
//!   (and deleting the veth, for the tc filter) removes it.
//! - After [`Fence::detach`]/[`reap`] nothing refers to the programs and maps except fds
//!   still held elsewhere (a [`crate::DenialStream`], an exported map fd); when those close
//!   the kernel frees them.
//! - Detach after the runner's processes are gone. Links are removed one by one, the
//!   rewriting hooks first and the packet backstops (cgroup_skb, tc) last, so a process
//!   still alive meanwhile is dropped rather than let out; but a connection to the
//!   proxy could then succeed un-redirected, so do not rely on it.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError, PerCpuArray};
use aya::pin::PinError;
use aya::programs::links::{FdLink, Link, LinkError, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError};
use aya::programs::{
    CgroupAttachMode, CgroupSkbAttachType, Program, ProgramError, SchedClassifier, TcAttachType,
};
use aya::{Ebpf, EbpfError};

use crate::bpffs::{self, BpffsError};
use crate::config::{ConfigError, FenceConfig};
use crate::events::{Counters, DenialStream, EventError};
use crate::maps::RawConfig;
use crate::origdst::{OrigDstError, OriginalDestinations};

/// The compiled programs (build.rs), embedded.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fence.bpf.o"));

/// Programs attached to the runner's cgroup, in attach order: packet and socket backstops
/// first, then the address hooks that rewrite.
const CGROUP_PROGRAMS: [&str; 11] = [
    "fence_skb_egress",
    "fence_sock_create",
    "fence_sockops",
    "fence_recvmsg4",
    "fence_recvmsg6",
    "fence_getpeername4",
    "fence_getpeername6",
    "fence_sendmsg4",
    "fence_sendmsg6",
    "fence_connect4",
    "fence_connect6",
];

/// The tc program for the host-side veth.
const TC_PROGRAM: &str = "fence_tc_ingress";

/// Maps pinned next to the links, for a restarted agent or a debugging operator.
const PINNED_MAPS: [&str; 5] = [
    "fence_config",
    "orig_dst",
    "events",
    "counters",
    "sock_orig",
];

/// Failures of attaching, reading or removing a fence; one variant per operation.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The configuration is not enforceable.
    #[error("invalid fence configuration: {0}")]
    Config(#[from] ConfigError),
    /// bpffs is missing and could not be mounted.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    /// The pin directory could not be created or read.
    #[error("pin directory {path}: {source}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pin directory already holds pins (another fence, or leftovers to reap).
    #[error("pin directory {0} is not empty: reap it first")]
    PinDirInUse(PathBuf),
    /// The cgroup v2 directory could not be opened.
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The embedded object could not be parsed or its maps created.
    #[error("loading the fence object: {0}")]
    Object(#[source] Box<EbpfError>),
    /// A program or map the object must contain is missing (build mismatch).
    #[error("the fence object has no {0}")]
    Missing(&'static str),
    /// Writing the config map failed.
    #[error("writing the fence config: {0}")]
    WriteConfig(#[source] MapError),
    /// The verifier or the kernel refused a program.
    #[error("loading program {name}: {source}")]
    LoadProgram {
        /// Program name.
        name: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// Attaching a program failed.
    #[error("attaching program {name}: {source}")]
    AttachProgram {
        /// Program name.
        name: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// An attachment is not a pinnable link.
    #[error("program {name} did not attach as a link: {source}")]
    NotALink {
        /// Program name.
        name: &'static str,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// Pinning a link or a map failed.
    #[error("pinning {name}: {source}")]
    Pin {
        /// Link or map name.
        name: &'static str,
        /// Why.
        #[source]
        source: PinError,
    },
    /// The host-side interface index has no name in this network namespace.
    #[error("interface index {ifindex}: {source}")]
    Interface {
        /// The index.
        ifindex: u32,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The tc program is already attached for this fence.
    #[error("the tc program is already attached")]
    TcAlreadyAttached,
    /// Removing the tc filter from a live veth failed.
    #[error("removing the tc filter: {source}")]
    DetachTc {
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// The `clsact` qdisc for the tc program could not be added.
    #[error("adding the clsact qdisc to {ifname}: {source}")]
    Qdisc {
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: TcError,
    },
    /// Removing a pin failed.
    #[error("removing pin {path}: {source}")]
    Unpin {
        /// The pin.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Duplicating a map fd failed.
    #[error("duplicating a map fd: {0}")]
    DupFd(#[source] std::io::Error),
    /// The events ring buffer was already taken by a [`DenialStream`].
    #[error("the denial events were already taken")]
    EventsTaken,
    /// Reading events or counters failed.
    #[error(transparent)]
    Events(#[from] EventError),
    /// Opening the original destinations failed.
    #[error(transparent)]
    OrigDst(#[from] OrigDstError),
    /// Reading a program or map id failed.
    #[error("reading object ids: {0}")]
    Info(String),
}

/// The enforcement of one runner: programs attached to its cgroup (and optionally the
/// tc program on its host-side veth), links pinned under its pin directory.
pub struct Fence {
    ebpf: Ebpf,
    config: FenceConfig,
    pin_dir: PathBuf,
    links: Vec<PinnedLink>,
    tc: Option<TcFilter>,
}

/// The tc filter on the host-side veth. aya detaches a link it drops, so the link is
/// never dropped (`ManuallyDrop`; it holds no fd, only the interface index, priority and
/// handle): the filter stays until it is removed or the veth is deleted.
struct TcFilter {
    link: std::mem::ManuallyDrop<SchedClassifierLink>,
    ifname: String,
    ifindex: u32,
}

impl TcFilter {
    /// Removes the filter if the veth is in the calling thread's namespace. An interface
    /// index means nothing in another namespace, so the name must still resolve to the
    /// same index; otherwise the veth is gone (and the filter with it) or out of reach,
    /// and nothing is touched.
    fn remove(self) -> Result<(), FenceError> {
        if nix::net::if_::if_nametoindex(self.ifname.as_str()) != Ok(self.ifindex) {
            return Ok(());
        }
        match std::mem::ManuallyDrop::into_inner(self.link).detach() {
            Ok(()) => Ok(()),
            // Deleted between the check and the request.
            Err(ProgramError::NetlinkError(e))
                if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) =>
            {
                Ok(())
            }
            Err(source) => Err(FenceError::DetachTc { source }),
        }
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("runner_id", &self.config.runner_id)
            .field("pin_dir", &self.pin_dir)
            .field("links", &self.links.len())
            .finish()
    }
}

fn pin_name(kind: &str, name: &str) -> String {
    format!("{kind}_{name}")
}

fn pin_link(link: FdLink, path: &Path, name: &'static str) -> Result<PinnedLink, FenceError> {
    link.pin(path)
        .map_err(|source| FenceError::Pin { name, source })
}

/// Loads and attaches one cgroup program, returning its link (not yet pinned).
fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, FenceError> {
    let load = |source| FenceError::LoadProgram { name, source };
    let attach = |source| FenceError::AttachProgram { name, source };
    let single = CgroupAttachMode::Single;
    let program = ebpf.program_mut(name).ok_or(FenceError::Missing(name))?;
    match program {
        Program::CgroupSockAddr(p) => {
            p.load().map_err(load)?;
            let id = p.attach(cgroup.as_fd(), single).map_err(attach)?;
            fd_link(name, p.take_link(id))
        }
        Program::CgroupSock(p) => {
            p.load().map_err(load)?;
            let id = p.attach(cgroup.as_fd(), single).map_err(attach)?;
            fd_link(name, p.take_link(id))
        }
        Program::SockOps(p) => {
            p.load().map_err(load)?;
            let id = p.attach(cgroup.as_fd(), single).map_err(attach)?;
            fd_link(name, p.take_link(id))
        }
        Program::CgroupSkb(p) => {
            p.load().map_err(load)?;
            let egress = CgroupSkbAttachType::Egress;
            let id = p.attach(cgroup.as_fd(), egress, single).map_err(attach)?;
            fd_link(name, p.take_link(id))
        }
        _ => Err(FenceError::Missing(name)),
    }
}

/// The object's tc program.
fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, FenceError> {
    match ebpf.program_mut(TC_PROGRAM) {
        Some(Program::SchedClassifier(p)) => Ok(p),
        _ => Err(FenceError::Missing(TC_PROGRAM)),
    }
}

/// Turns a freshly taken attachment into a pinnable link.
fn fd_link<L>(name: &'static str, link: Result<L, ProgramError>) -> Result<FdLink, FenceError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let link = link.map_err(|source| FenceError::AttachProgram { name, source })?;
    FdLink::try_from(link).map_err(|source| FenceError::NotALink { name, source })
}

/// Creates `pin_dir` (and bpffs if needed) and checks that it holds no pins.
fn prepare_pin_dir(pin_dir: &Path) -> Result<(), FenceError> {
    bpffs::ensure_mounted(pin_dir)?;
    let io = |source| FenceError::PinDir {
        path: pin_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(pin_dir).map_err(io)?;
    if std::fs::read_dir(pin_dir).map_err(io)?.next().is_some() {
        return Err(FenceError::PinDirInUse(pin_dir.to_owned()));
    }
    Ok(())
}

impl Fence {
    /// Loads the programs, writes `cfg`, attaches every cgroup program to `cgroup_v2_dir`
    /// and pins the links and maps under `pin_dir` (created; it must be empty). bpffs is
    /// mounted at /sys/fs/bpf when `pin_dir` is below it and it is not mounted yet.
    ///
    /// On error, whatever was attached is removed again (the partial pins are reaped).
    pub fn attach(
        cgroup_v2_dir: &Path,
        cfg: FenceConfig,
        pin_dir: &Path,
    ) -> Result<Self, FenceError> {
        cfg.validate()?;
        prepare_pin_dir(pin_dir)?;
        let result = Self::attach_inner(cgroup_v2_dir, cfg, pin_dir);
        if result.is_err() {
            // Best effort: the error that matters is the one being returned.
            if let Err(error) = reap(pin_dir) {
                tracing::warn!(pin_dir = %pin_dir.display(), %error, "cleanup after failed attach");
            }
        }
        result
    }

    fn attach_inner(
        cgroup_v2_dir: &Path,
        cfg: FenceConfig,
        pin_dir: &Path,
    ) -> Result<Self, FenceError> {
        let cgroup = File::open(cgroup_v2_dir).map_err(|source| FenceError::OpenCgroup {
            path: cgroup_v2_dir.to_owned(),
            source,
        })?;
        // The programs use no CO-RE relocations (they read only context fields and their
        // own maps), so the kernel's BTF is not needed: parsing /sys/kernel/btf/vmlinux
        // (several MiB) on every attach would be most of a runner's start-up time. (aya
        // 0.14 parsed it in `EbpfLoader::new()` regardless; vendor/README.md.)
        let mut ebpf = aya::EbpfLoader::new()
            .btf(None)
            .load(OBJECT)
            .map_err(|e| FenceError::Object(Box::new(e)))?;
        {
            let map = ebpf
                .map_mut("fence_config")
                .ok_or(FenceError::Missing("fence_config"))?;
            let mut array: Array<&mut MapData, RawConfig> =
                Array::try_from(map).map_err(FenceError::WriteConfig)?;
            array
                .set(0, cfg.to_raw(), 0)
                .map_err(FenceError::WriteConfig)?;
        }
        let mut fence = Fence {
            ebpf,
            config: cfg,
            pin_dir: pin_dir.to_owned(),
            links: Vec::new(),
            tc: None,
        };
        for name in PINNED_MAPS {
            let map = fence.ebpf.map(name).ok_or(FenceError::Missing(name))?;
            map.pin(pin_dir.join(pin_name("map", name)))
                .map_err(|source| FenceError::Pin { name, source })?;
        }
        for name in CGROUP_PROGRAMS {
            let link = attach_cgroup_program(&mut fence.ebpf, name, &cgroup)?;
            let pinned = pin_link(link, &pin_dir.join(pin_name("link", name)), name)?;
            fence.links.push(pinned);
        }
        // The tc program is verified now with the others, while the runner's init starts;
        // `attach_tc` only puts it on the veth once that exists.
        tc_program(&mut fence.ebpf)?
            .load()
            .map_err(|source| FenceError::LoadProgram {
                name: TC_PROGRAM,
                source,
            })?;
        tracing::info!(
            runner_id = fence.config.runner_id,
            cgroup = %cgroup_v2_dir.display(),
            pin_dir = %pin_dir.display(),
            programs = CGROUP_PROGRAMS.len(),
            "fence attached"
        );
        Ok(fence)
    }

    /// Attaches the tc ingress program to the host-side veth `ifindex` (resolved in the
    /// calling thread's network namespace, which must be the one holding that veth) as a
    /// direct-action filter under a `clsact` qdisc (see the module header for why not
    /// TCX). It drops every frame from the runner that is not ARP or IPv4 from the
    /// runner's address to a proxy listener. The filter lives as long as the veth.
    pub fn attach_tc(&mut self, ifindex: u32) -> Result<(), FenceError> {
        if self.tc.is_some() {
            return Err(FenceError::TcAlreadyAttached);
        }
        let name = TC_PROGRAM;
        let ifname = nix::net::if_::if_indextoname(ifindex)
            .map_err(|source| FenceError::Interface { ifindex, source })?;
        let ifname = ifname.to_string_lossy().into_owned();
        let p = tc_program(&mut self.ebpf)?;
        match aya::programs::tc::qdisc_add_clsact(&ifname) {
            Ok(()) => {}
            // A veth of ours is new, but a clsact qdisc someone added is as good as ours.
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => return Err(FenceError::Qdisc { ifname, source }),
        }
        let netlink = TcAttachOptions::Netlink(NlOptions::default());
        let id = p
            .attach_with_options(&ifname, TcAttachType::Ingress, netlink)
            .map_err(|source| FenceError::AttachProgram { name, source })?;
        let link = p
            .take_link(id)
            .map_err(|source| FenceError::AttachProgram { name, source })?;
        self.tc = Some(TcFilter {
            link: std::mem::ManuallyDrop::new(link),
            ifname: ifname.clone(),
            ifindex,
        });
        tracing::info!(
            runner_id = self.config.runner_id,
            ifindex,
            ifname,
            "fence tc attached"
        );
        Ok(())
    }

    /// The configuration this fence enforces.
    pub fn config(&self) -> &FenceConfig {
        &self.config
    }

    /// Where the links and maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn map(&self, name: &'static str) -> Result<&Map, FenceError> {
        self.ebpf.map(name).ok_or(FenceError::Missing(name))
    }

    /// A new fd for the `orig_dst` map, to hand to the proxy (inherit it or send it over
    /// SCM_RIGHTS); the receiver opens it with [`OriginalDestinations::from_fd`] and needs
    /// no privilege.
    pub fn orig_dst_fd(&self) -> Result<OwnedFd, FenceError> {
        let Map::LruHashMap(data) = self.map("orig_dst")? else {
            return Err(FenceError::Missing("orig_dst"));
        };
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(FenceError::DupFd)
    }

    /// Reader of the original destinations, for an in-process proxy or tests.
    pub fn original_destinations(&self) -> Result<OriginalDestinations, FenceError> {
        Ok(OriginalDestinations::from_fd(self.orig_dst_fd()?)?)
    }

    /// The asynchronous reader of this runner's denials; can be taken once and must be
    /// called inside a tokio runtime.
    pub fn denials(&mut self) -> Result<DenialStream, FenceError> {
        match self.ebpf.take_map("events") {
            Some(Map::RingBuf(data)) => {
                // The pinned counters map, opened anew: the stream owns its handle.
                let counters = pin_name("map", "counters");
                let counters = MapData::from_pin(self.pin_dir.join(&counters))
                    .map_err(|source| FenceError::Events(EventError::ReadCounters(source)))?;
                Ok(DenialStream::new(data)?.with_counters(counters)?)
            }
            Some(_) => Err(FenceError::Missing("events")),
            None => Err(FenceError::EventsTaken),
        }
    }

    /// The runner's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, FenceError> {
        let map = self.map("counters")?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)
            .map_err(|e| FenceError::Events(EventError::ReadCounters(e)))?;
        Ok(Counters::read(&array)?)
    }

    /// Kernel ids of this fence's programs, maps and links, to verify they are freed.
    pub fn object_ids(&self) -> Result<ObjectIds, FenceError> {
        let mut ids = pinned_ids(&self.pin_dir)?;
        // The tc filter has no pin (and no link id): its program is listed on its own.
        if self.tc.is_some() {
            if let Some(Program::SchedClassifier(p)) = self.ebpf.program(TC_PROGRAM) {
                let info = p.info().map_err(|e| FenceError::Info(e.to_string()))?;
                ids.programs.push(info.id());
            }
        }
        Ok(ids)
    }

    /// Detaches every program and removes the pins. The kernel frees programs and maps
    /// when the last fd (a [`DenialStream`], an exported map fd) is closed. The tc filter
    /// is removed too when the calling thread is in the namespace holding the veth (as
    /// for [`Fence::attach_tc`]); otherwise it goes when the veth is deleted.
    pub fn detach(mut self) -> Result<(), FenceError> {
        // Closing our fds first: the pins are then the last references to the links.
        self.links.clear();
        let pin_dir = std::mem::take(&mut self.pin_dir);
        let tc = self.tc.take();
        drop(self);
        reap(&pin_dir)?;
        // The packet backstop last, as in `reap`.
        if let Some(tc) = tc {
            tc.remove()?;
        }
        tracing::info!(pin_dir = %pin_dir.display(), "fence detached");
        Ok(())
    }
}

/// Kernel ids of a fence's objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectIds {
    /// Program ids.
    pub programs: Vec<u32>,
    /// Map ids.
    pub maps: Vec<u32>,
    /// Link ids.
    pub links: Vec<u32>,
}

impl ObjectIds {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }
}

/// Ids of the links pinned under `pin_dir`, of the programs they hold, and of the pinned
/// maps: what a restarted agent can check before and after [`reap`]. The sockops,
/// recvmsg and getpeername programs hold no map beyond the pinned ones.
pub fn pinned_ids(pin_dir: &Path) -> Result<ObjectIds, FenceError> {
    let io = |source| FenceError::PinDir {
        path: pin_dir.to_owned(),
        source,
    };
    let info = |e: &dyn std::fmt::Display| FenceError::Info(e.to_string());
    let mut ids = ObjectIds::default();
    for entry in std::fs::read_dir(pin_dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("link_") {
            let link = FdLink::from(PinnedLink::from_pin(&path).map_err(|e| info(&e))?);
            let link_info = link.info().map_err(|e| info(&e))?;
            ids.links.push(link_info.id());
            ids.programs.push(link_info.program_id());
            // Dropping the FdLink closes our fd only; the pin keeps the link.
        } else if name.starts_with("map_") {
            ids.maps.push(
                aya::maps::MapInfo::from_pin(&path)
                    .map_err(|e| info(&e))?
                    .id(),
            );
        }
    }
    Ok(ids)
}

/// Which of `ids` the kernel still has (freeing is asynchronous: poll).
pub fn still_loaded(ids: &ObjectIds) -> ObjectIds {
    let programs: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let maps: Vec<u32> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.id())
        .collect();
    let links: Vec<u32> = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.id())
        .collect();
    ObjectIds {
        programs: ids
            .programs
            .iter()
            .copied()
            .filter(|id| programs.contains(id))
            .collect(),
        maps: ids
            .maps
            .iter()
            .copied()
            .filter(|id| maps.contains(id))
            .collect(),
        links: ids
            .links
            .iter()
            .copied()
            .filter(|id| links.contains(id))
            .collect(),
    }
}

/// Order in which [`reap`] removes pins (lowest first).
fn removal_rank(path: &Path) -> u8 {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match name {
        "link_fence_sock_create" => 1,
        "link_fence_skb_egress" => 2,
        n if n.starts_with("link_") => 0,
        _ => 3, // maps: nothing is enforced by their pins
    }
}

/// Removes a fence from its pins alone: what a restarted agent calls for each runner it
/// finds left over by its crashed predecessor, and what [`Fence::detach`] ends with.
/// Unlinking a pin drops its reference; a link with no reference left is detached.
/// A missing `pin_dir` is not an error (nothing to reap).
pub fn reap(pin_dir: &Path) -> Result<(), FenceError> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(FenceError::PinDir {
                path: pin_dir.to_owned(),
                source,
            })
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| FenceError::PinDir {
            path: pin_dir.to_owned(),
            source,
        })?;
        paths.push(entry.path());
    }
    // Fail closed while going: the rewriting hooks go first, the backstops last, so a
    // process still running meanwhile meets a packet filter rather than an open door.
    paths.sort_by_key(|p| removal_rank(p));
    for path in paths {
        std::fs::remove_file(&path).map_err(|source| FenceError::Unpin {
            path: path.clone(),
            source,
        })?;
    }
    std::fs::remove_dir(pin_dir).map_err(|source| FenceError::Unpin {
        path: pin_dir.to_owned(),
        source,
    })?;
    tracing::debug!(pin_dir = %pin_dir.display(), "fence pins removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reap_removes_rewriting_hooks_before_the_backstops() {
        let mut names = [
            "map_events",
            "link_fence_skb_egress",
            "link_fence_connect4",
            "link_fence_sock_create",
            "link_fence_sendmsg6",
        ];
        names.sort_by_key(|n| removal_rank(Path::new(n)));
        assert_eq!(names[4], "map_events");
        assert_eq!(names[3], "link_fence_skb_egress");
        assert_eq!(names[2], "link_fence_sock_create");
    }

    #[test]
    fn reap_of_a_missing_directory_is_a_no_op() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(reap(&dir.path().join("absent")).is_ok());
    }

    #[test]
    fn every_program_and_map_named_here_is_in_the_object() {
        // Loading would create maps (root only); the names are in the ELF symbol table.
        let text = String::from_utf8_lossy(OBJECT);
        for name in CGROUP_PROGRAMS.iter().chain([&TC_PROGRAM]) {
            assert!(text.contains(name), "{name} missing from the object");
        }
        for name in PINNED_MAPS {
            assert!(text.contains(name), "{name} missing from the object");
        }
    }
}
