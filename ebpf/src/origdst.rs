//! Where a transparently redirected connection was meant to go.
//!
//! connect4/6 keep the destination the job asked for in socket storage; the sockops
//! program publishes it, once the source port is chosen, in the `orig_dst` LRU map keyed
//! by the runner-side (address, port), which is exactly the peer address the proxy sees
//! on the accepted socket. [`OriginalDestinations`] reads that map.
//!
//! Privileges: only the loader needs them. Since Linux 6.5 `unprivileged_bpf_disabled`
//! gates map creation and program loading, not operations on an fd one was handed, so an
//! unprivileged proxy that received the map fd (inherited, or over SCM_RIGHTS) can look
//! entries up; the privileged test `ebpf_origdst` checks this on the running kernel.
//! Entries are evicted least-recently-used (16384 per runner); look up right after accept.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError};

use crate::maps::{comm_str, RawOrigDst, RawOrigKey};

/// The destination a redirected connection asked for, and who asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginalDestination {
    /// Address and port the job connected to.
    pub destination: SocketAddr,
    /// Process id (host pid namespace) that called connect().
    pub pid: u32,
    /// Its thread name.
    pub comm: String,
}

/// Failures opening or reading the original-destination map.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The fd or pin is not a usable map.
    #[error("opening the original-destination map: {0}")]
    Open(#[source] MapError),
    /// The map has another type or layout.
    #[error("the map is not an original-destination map: {0}")]
    WrongMap(#[source] MapError),
    /// The lookup syscall failed for a reason other than "no such key".
    #[error("looking up {peer}: {source}")]
    Lookup {
        /// The peer looked up.
        peer: SocketAddr,
        /// What the kernel said.
        #[source]
        source: MapError,
    },
}

/// Read access to a runner's `orig_dst` map.
pub struct OriginalDestinations {
    map: HashMap<MapData, RawOrigKey, RawOrigDst>,
}

impl std::fmt::Debug for OriginalDestinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginalDestinations")
            .finish_non_exhaustive()
    }
}

impl OriginalDestinations {
    /// Opens the map from an fd handed over by the agent ([`crate::Fence::orig_dst_fd`]).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, OrigDstError> {
        Self::from_data(MapData::from_fd(fd).map_err(OrigDstError::Open)?)
    }

    /// Opens the map from its pin (`<pin_dir>/orig_dst`).
    pub fn from_pin(path: &Path) -> Result<Self, OrigDstError> {
        Self::from_data(MapData::from_pin(path).map_err(OrigDstError::Open)?)
    }

    pub(crate) fn from_data(data: MapData) -> Result<Self, OrigDstError> {
        let map = HashMap::try_from(Map::LruHashMap(data)).map_err(OrigDstError::WrongMap)?;
        Ok(Self { map })
    }

    /// The map's fd, to hand to another process.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.map().fd().as_fd()
    }

    /// The original destination of the connection whose runner-side end is `peer`.
    /// IPv4-mapped IPv6 peers (a dual-stack listener) are looked up as IPv4.
    pub fn lookup(&self, peer: SocketAddr) -> Result<Option<SocketAddr>, OrigDstError> {
        Ok(self.lookup_entry(peer)?.map(|e| e.destination))
    }

    /// Like [`Self::lookup`], with the connecting process.
    pub fn lookup_entry(
        &self,
        peer: SocketAddr,
    ) -> Result<Option<OriginalDestination>, OrigDstError> {
        let v4: Ipv4Addr = match peer.ip() {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => a,
                None => return Ok(None),
            },
        };
        let key = RawOrigKey {
            addr: u32::from_ne_bytes(v4.octets()),
            port: peer.port(),
            pad: 0,
        };
        match self.map.get(&key, 0) {
            Ok(v) => Ok(Some(OriginalDestination {
                destination: SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(v.addr.to_ne_bytes()),
                    v.port,
                )),
                pid: v.tgid,
                comm: comm_str(&v.comm),
            })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(OrigDstError::Lookup { peer, source }),
        }
    }
}
