//! Where a transparently redirected connection was originally going.
//!
//! The transparent listeners receive connections that the kernel redirected (eBPF
//! connect4/6 hooks rewrite the destination to the proxy). The decision is made on the
//! name the client sent (SNI, Host), but the address the client asked for is what gets
//! checked and dialled: the proxy only connects to it when it is one of the addresses the
//! proxy itself resolved for that name. This trait is how the proxy learns that address;
//! the eBPF layer implements it over its map, tests use [`FixedTable`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use tokio::net::TcpStream;

/// Where a redirected connection was going, and which process opened it when known
/// (the eBPF layer records it at connect time; it goes into the audit events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The destination the client asked for.
    pub destination: SocketAddr,
    /// Process id (host pid namespace) that called connect().
    pub pid: Option<u32>,
    /// Its command name.
    pub comm: Option<String>,
}

impl From<SocketAddr> for Origin {
    fn from(destination: SocketAddr) -> Self {
        Origin {
            destination,
            pid: None,
            comm: None,
        }
    }
}

/// Looks up the original destination of an accepted, redirected connection.
pub trait OriginalDestination: Send + Sync {
    /// Where the socket of `peer` (a connection's or a datagram's source) was headed, with
    /// the process that opened it when the implementation knows; `None` when unknown (a
    /// transparent connection is then denied).
    fn lookup_peer(&self, peer: SocketAddr) -> Option<Origin>;

    /// [`OriginalDestination::lookup_peer`] for an accepted connection.
    fn lookup(&self, stream: &TcpStream) -> Option<Origin> {
        self.lookup_peer(stream.peer_addr().ok()?)
    }
}

/// A table keyed by the client's source address and port.
#[derive(Debug, Default)]
pub struct FixedTable {
    map: RwLock<HashMap<SocketAddr, Origin>>,
    any: RwLock<Option<SocketAddr>>,
}

impl FixedTable {
    /// Records that the connection from `client` was headed for `original`.
    pub fn insert(&self, client: SocketAddr, original: SocketAddr) {
        self.insert_origin(client, original.into());
    }

    /// Records the original destination and the process of the connection from `client`.
    pub fn insert_origin(&self, client: SocketAddr, origin: Origin) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, origin);
    }

    /// Answers `original` for every connection not in the table.
    pub fn set_fallback(&self, original: Option<SocketAddr>) {
        *self.any.write().unwrap_or_else(|e| e.into_inner()) = original;
    }
}

impl OriginalDestination for FixedTable {
    fn lookup_peer(&self, peer: SocketAddr) -> Option<Origin> {
        if let Some(found) = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
        {
            return Some(found.clone());
        }
        self.any
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map(Origin::from)
    }
}
