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

/// Looks up the original destination of an accepted, redirected connection.
pub trait OriginalDestination: Send + Sync {
    /// The destination the client asked for, or `None` when unknown (the connection is
    /// then denied).
    fn lookup(&self, stream: &TcpStream) -> Option<SocketAddr>;
}

/// A table keyed by the client's source address and port.
#[derive(Debug, Default)]
pub struct FixedTable {
    map: RwLock<HashMap<SocketAddr, SocketAddr>>,
    any: RwLock<Option<SocketAddr>>,
}

impl FixedTable {
    /// Records that the connection from `client` was headed for `original`.
    pub fn insert(&self, client: SocketAddr, original: SocketAddr) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, original);
    }

    /// Answers `original` for every connection not in the table.
    pub fn set_fallback(&self, original: Option<SocketAddr>) {
        *self.any.write().unwrap_or_else(|e| e.into_inner()) = original;
    }
}

impl OriginalDestination for FixedTable {
    fn lookup(&self, stream: &TcpStream) -> Option<SocketAddr> {
        let peer = stream.peer_addr().ok()?;
        if let Some(found) = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
        {
            return Some(*found);
        }
        *self.any.read().unwrap_or_else(|e| e.into_inner())
    }
}
