//! The in-kernel tunnel relay: a SOCKHASH and an `sk_skb` stream verdict program
//! (`bpf/relay.bpf.c`) that move an allowed tunnel's bytes between its two TCP sockets
//! without waking the proxy.
//!
//! Two owners, two privilege levels:
//! - [`RelayProgram::load`] (root: map creation and program loading) creates the maps
//!   and attaches the verdict program to the SOCKHASH. It must stay alive as long as any
//!   process uses the maps: dropping it detaches the program (the sockets then fall back
//!   to their normal receive path, and the proxy's idle timeout ends the stalled tunnels).
//! - [`RelayMaps`] (any user holding the map fds, see [`crate::origdst`] on
//!   `unprivileged_bpf_disabled`) puts a pair of connected sockets into the relay with
//!   [`RelayMaps::relay`] and gets a [`RelayedPair`], whose drop takes them out again.
//!
//! Keys are socket cookies (socket(7) SO_COOKIE): stable for a socket's life and never
//! reused, so a stale entry can never redirect into a different connection.
//!
//! Byte counts come from the program (payload bytes redirected per direction); whether
//! the destination socket has taken all of them is read from its `TCP_INFO`
//! ([`RelayedPair::delivered`]), because a redirect to a full socket is queued by the
//! kernel and sent later from a work queue: a half-close must wait for that queue.

use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError, SockHash};
use aya::programs::{ProgramError, SkSkb};
use aya::Ebpf;

use crate::sys::{kick_data_ready, socket_cookie, tcp_bytes_written};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));

/// `relay_peers` value (C `struct relay_peer` in `bpf/relay.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawRelayPeer {
    /// Cookie of the socket this one's bytes are redirected to.
    pub peer_cookie: u64,
    /// Payload bytes received on this socket and redirected.
    pub bytes: u64,
}

const _: () = {
    assert!(size_of::<RawRelayPeer>() == 16);
    assert!(offset_of!(RawRelayPeer, bytes) == 8);
};

/// Failures loading the relay or relaying a pair of sockets.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The embedded object did not load (no privilege, old kernel).
    #[error("loading the relay object: {0}")]
    Object(#[source] Box<aya::EbpfError>),
    /// The object lacks a map or program it must have.
    #[error("the relay object has no `{0}`")]
    Missing(&'static str),
    /// Loading or attaching the verdict program failed.
    #[error("loading or attaching the relay verdict program: {0}")]
    Program(#[source] ProgramError),
    /// A map fd is not the map expected, or duplicating its fd failed.
    #[error("opening the relay map `{map}`: {source}")]
    Map {
        /// `relay_socks` or `relay_peers`.
        map: &'static str,
        /// What aya said.
        #[source]
        source: MapError,
    },
    /// Duplicating a map fd to hand it over failed.
    #[error("duplicating the relay map fds: {0}")]
    Dup(#[source] std::io::Error),
    /// getsockopt(SO_COOKIE) failed on a socket to relay.
    #[error("reading the socket cookie: {0}")]
    Cookie(#[source] std::io::Error),
    /// getsockopt(TCP_INFO) failed on a socket to relay.
    #[error("reading TCP_INFO: {0}")]
    TcpInfo(#[source] std::io::Error),
    /// setsockopt(SO_RCVLOWAT) failed (see [`RelayMaps::relay`]).
    #[error("relaying the bytes queued before the relay began: {0}")]
    Kick(#[source] std::io::Error),
    /// A map update failed (full map, socket not in a relayable state).
    #[error("adding the sockets to `{map}`: {source}")]
    Insert {
        /// `relay_socks` or `relay_peers`.
        map: &'static str,
        /// What the kernel said.
        #[source]
        source: MapError,
    },
}

/// The loaded relay: maps plus the attached verdict program. Root only.
pub struct RelayProgram {
    // Keeps the program attached to `relay_socks` (aya detaches on drop).
    _ebpf: Ebpf,
    maps: RelayMaps,
}

impl std::fmt::Debug for RelayProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayProgram").finish_non_exhaustive()
    }
}

impl RelayProgram {
    /// Creates the maps and attaches the stream verdict program to the SOCKHASH.
    pub fn load() -> Result<Self, RelayError> {
        // No CO-RE relocations (context fields and own maps only): skip the kernel BTF.
        let mut ebpf = aya::EbpfLoader::new()
            .btf(None)
            .load(OBJECT)
            .map_err(|e| RelayError::Object(Box::new(e)))?;
        let socks_map = ebpf
            .take_map("relay_socks")
            .ok_or(RelayError::Missing("relay_socks"))?;
        let peers_map = ebpf
            .take_map("relay_peers")
            .ok_or(RelayError::Missing("relay_peers"))?;
        let socks: SockHash<MapData, u64> =
            SockHash::try_from(socks_map).map_err(|source| RelayError::Map {
                map: "relay_socks",
                source,
            })?;
        let peers: HashMap<MapData, u64, RawRelayPeer> =
            HashMap::try_from(peers_map).map_err(|source| RelayError::Map {
                map: "relay_peers",
                source,
            })?;
        let program: &mut SkSkb = ebpf
            .program_mut("relay_verdict")
            .ok_or(RelayError::Missing("relay_verdict"))?
            .try_into()
            .map_err(RelayError::Program)?;
        program.load().map_err(RelayError::Program)?;
        program.attach(socks.fd()).map_err(RelayError::Program)?;
        Ok(RelayProgram {
            _ebpf: ebpf,
            maps: RelayMaps::new(socks, peers),
        })
    }

    /// The maps, for relaying sockets in this process.
    pub fn maps(&self) -> &RelayMaps {
        &self.maps
    }

    /// Duplicates of the two map fds (`relay_socks`, `relay_peers`), to hand to the
    /// process that relays sockets ([`RelayMaps::from_fds`]).
    pub fn map_fds(&self) -> Result<(OwnedFd, OwnedFd), RelayError> {
        let maps = self.maps.lock();
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(RelayError::Dup);
        Ok((
            dup(maps.socks.fd().as_fd())?,
            dup(maps.peers.map().fd().as_fd())?,
        ))
    }
}

struct Maps {
    socks: SockHash<MapData, u64>,
    peers: HashMap<MapData, u64, RawRelayPeer>,
}

/// Access to the relay maps: puts socket pairs into the relay. Cheap to clone.
#[derive(Clone)]
pub struct RelayMaps {
    // aya's map updates take `&mut self`; the kernel serializes them anyway.
    inner: Arc<Mutex<Maps>>,
}

impl std::fmt::Debug for RelayMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayMaps").finish_non_exhaustive()
    }
}

impl RelayMaps {
    fn new(socks: SockHash<MapData, u64>, peers: HashMap<MapData, u64, RawRelayPeer>) -> Self {
        RelayMaps {
            inner: Arc::new(Mutex::new(Maps { socks, peers })),
        }
    }

    /// Opens the maps from fds handed over by the loader ([`RelayProgram::map_fds`]).
    pub fn from_fds(socks: OwnedFd, peers: OwnedFd) -> Result<Self, RelayError> {
        let open = |fd: OwnedFd, map: &'static str| {
            MapData::from_fd(fd).map_err(|source| RelayError::Map { map, source })
        };
        let socks =
            SockHash::try_from(Map::SockHash(open(socks, "relay_socks")?)).map_err(|source| {
                RelayError::Map {
                    map: "relay_socks",
                    source,
                }
            })?;
        let peers =
            HashMap::try_from(Map::HashMap(open(peers, "relay_peers")?)).map_err(|source| {
                RelayError::Map {
                    map: "relay_peers",
                    source,
                }
            })?;
        Ok(Self::new(socks, peers))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Relays two connected TCP sockets into each other from now on, starting with the
    /// bytes already in their receive queues (which the caller must not have read
    /// partially: nothing may read from the sockets while they are relayed).
    pub fn relay(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> Result<RelayedPair, RelayError> {
        let cookie_a = socket_cookie(a).map_err(RelayError::Cookie)?;
        let cookie_b = socket_cookie(b).map_err(RelayError::Cookie)?;
        let base_a = tcp_bytes_written(a).map_err(RelayError::TcpInfo)?;
        let base_b = tcp_bytes_written(b).map_err(RelayError::TcpInfo)?;
        let pair = RelayedPair {
            maps: self.clone(),
            cookie_a,
            cookie_b,
            base_a,
            base_b,
        };
        {
            let mut maps = self.lock();
            let insert_err = |map| move |source| RelayError::Insert { map, source };
            // Peers first: the program passes (never drops) bytes of a socket it has no
            // peer for, and a socket must never be relayed toward a missing key.
            for (from, to) in [(cookie_a, cookie_b), (cookie_b, cookie_a)] {
                let peer = RawRelayPeer {
                    peer_cookie: to,
                    bytes: 0,
                };
                maps.peers
                    .insert(from, peer, 0)
                    .map_err(insert_err("relay_peers"))?;
            }
            maps.socks
                .insert(cookie_a, a.as_raw_fd(), 0)
                .map_err(insert_err("relay_socks"))?;
            maps.socks
                .insert(cookie_b, b.as_raw_fd(), 0)
                .map_err(insert_err("relay_socks"))?;
        }
        // The verdict runs from the sockets' data-ready callback, so bytes queued before
        // the insertion would wait for the next segment (forever, for a server that
        // spoke first and now waits for an answer): run the callback once now.
        kick_data_ready(a).map_err(RelayError::Kick)?;
        kick_data_ready(b).map_err(RelayError::Kick)?;
        Ok(pair)
    }
}

/// Two sockets relayed into each other; dropping it takes them out of the relay (the
/// sockets themselves stay open and usable).
pub struct RelayedPair {
    maps: RelayMaps,
    cookie_a: u64,
    cookie_b: u64,
    base_a: u64,
    base_b: u64,
}

impl std::fmt::Debug for RelayedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayedPair")
            .field("cookie_a", &self.cookie_a)
            .field("cookie_b", &self.cookie_b)
            .finish_non_exhaustive()
    }
}

impl RelayedPair {
    /// Payload bytes redirected so far: (received on a → sent to b, received on b → a).
    pub fn relayed(&self) -> (u64, u64) {
        let maps = self.maps.lock();
        let read = |cookie| maps.peers.get(&cookie, 0).map(|p| p.bytes).unwrap_or(0);
        (read(self.cookie_a), read(self.cookie_b))
    }

    /// Bytes the kernel has handed to each socket's TCP send path since the relay began:
    /// (into b, into a). Once equal to [`Self::relayed`], nothing is left queued.
    ///
    /// `a` and `b` are the sockets given to [`RelayMaps::relay`], in the same order.
    pub fn delivered(
        &self,
        a: BorrowedFd<'_>,
        b: BorrowedFd<'_>,
    ) -> Result<(u64, u64), RelayError> {
        let b = tcp_bytes_written(b).map_err(RelayError::TcpInfo)?;
        let a = tcp_bytes_written(a).map_err(RelayError::TcpInfo)?;
        Ok((b.saturating_sub(self.base_b), a.saturating_sub(self.base_a)))
    }
}

impl Drop for RelayedPair {
    fn drop(&mut self) {
        let mut maps = self.maps.lock();
        // Sockets first, peers last (the invariant of bpf/relay.bpf.c). A socket that
        // was already closed has left the SOCKHASH by itself: ignore "not found".
        for cookie in [self.cookie_a, self.cookie_b] {
            let _ = maps.socks.remove(&cookie);
        }
        for cookie in [self.cookie_a, self.cookie_b] {
            let _ = maps.peers.remove(&cookie);
        }
    }
}
