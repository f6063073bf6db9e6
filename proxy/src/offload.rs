//! Handing an allowed tunnel's data phase to the kernel.
//!
//! After every check of a tunnel has passed, [`crate::tunnel::relay`] may ask a
//! [`TunnelOffload`] to relay the two sockets into each other inside the kernel (the
//! eBPF sockmap relay of `egress_ebpf::relay`), so the payload never wakes the proxy. The
//! proxy then only watches both sockets for their end, polls the byte counters for the
//! idle timeout, and propagates half-closes. When no offload is configured, or it fails
//! for a tunnel, the tunnel is spliced in user space as before ([`crate::tunnel`]).
//!
//! Like [`crate::origdst::OriginalDestination`], this is a trait so that the proxy needs
//! no privilege and no unsafe code: the map operations live in `egress-ebpf`, whose map
//! fds the privileged agent creates and hands to the proxy.

use std::os::fd::AsFd;

use tokio::net::TcpStream;

/// Starts kernel relays for tunnels.
pub trait TunnelOffload: Send + Sync {
    /// Relays `client` and `server` into each other from now on, or says why not.
    fn start(
        &self,
        client: &TcpStream,
        server: &TcpStream,
    ) -> Result<Box<dyn OffloadedTunnel>, String>;
}

/// A tunnel relayed by the kernel; dropping it ends the relay (the sockets stay open).
pub trait OffloadedTunnel: Send + Sync {
    /// Bytes relayed so far: (client to server, server to client).
    fn relayed(&self) -> (u64, u64);
    /// Bytes handed to the sending side of (server, client) so far. A direction is
    /// drained when this equals its [`Self::relayed`] figure.
    fn delivered(&self, client: &TcpStream, server: &TcpStream) -> Result<(u64, u64), String>;
}

impl TunnelOffload for egress_ebpf::RelayMaps {
    fn start(
        &self,
        client: &TcpStream,
        server: &TcpStream,
    ) -> Result<Box<dyn OffloadedTunnel>, String> {
        let pair = self
            .relay(client.as_fd(), server.as_fd())
            .map_err(|e| e.to_string())?;
        Ok(Box::new(pair))
    }
}

impl OffloadedTunnel for egress_ebpf::RelayedPair {
    fn relayed(&self) -> (u64, u64) {
        egress_ebpf::RelayedPair::relayed(self)
    }

    fn delivered(&self, client: &TcpStream, server: &TcpStream) -> Result<(u64, u64), String> {
        egress_ebpf::RelayedPair::delivered(self, client.as_fd(), server.as_fd())
            .map_err(|e| e.to_string())
    }
}
