//! A runner's network: one veth pair between the agent's network namespace ("the host")
//! and the runner's, configured over rtnetlink.
//!
//! ```text
//!  host namespace                          runner namespace
//!  ra<slot>  10.249.x.1/30  ◀── veth ──▶  eth0  10.249.x.2/30   (+ lo)
//! ```
//!
//! The runner gets no default route and no other route: the only address it can reach is
//! the host side of its veth, where the proxy and the DNS filter listen. Its namespace is
//! owned by the host's user namespace, so root inside cannot add a route, an address or a
//! raw socket. IPv6 is disabled on both ends (no link-local address, so nothing is
//! reachable over IPv6 at all), and forwarding is disabled on the host side so that even a
//! host that routes (docker hosts do) never forwards a runner's packet.
//!
//! The host side carries an alias naming the runner that made it ([`setup`]'s `owner`,
//! `ip link` shows it): two agents on one host have their own run directories but may
//! name their veths alike, and an agent removes or reports only a veth with its own alias
//! (or with none: made by an older version, or left between creation and naming). Before
//! a veth is made, no interface of the host may have an address in the runner's subnet:
//! two agents sharing a pool would otherwise route each other's runners away.
//!
//! The peer is created directly inside the runner's namespace (IFLA_NET_NS_FD in the
//! peer's attributes), so it never exists on the host under a name that could clash.
//! Configuring the inside needs a netlink socket opened in that namespace: the short-lived
//! thread that does the whole set-up enters it with setns(2) (network namespaces are per
//! thread) once the host side is done, and opens a second socket there.
//!
//! Both ends of the pair have an MTU of [`RUNNER_LINK_MTU`] (65535, the most a veth
//! takes; loopback has 65536), set in the request that creates them: the peer's MTU goes
//! in its own attributes, nested in the link info, since the peer is a device of its own.
//! Ethernet's 1500 would buy nothing here: the link never meets a real network's path MTU,
//! as the runner's only peer is the host side and nothing is routed anywhere else, and the
//! proxy terminates every TCP connection and talks to destinations with the host's own
//! MTU. A 64 KiB MTU lets a runner's TCP to the proxy use 64 KiB segments, far fewer
//! packets and ACKs per byte: with it, and with the proxy's receive batching, a job's
//! CONNECT tunnel runs as fast as a direct routed connection or faster (figures in
//! proxy/README.md, "CONNECT tunnel throughput"). A side effect: a UDP datagram
//! (65,507 bytes at most) never needs fragmenting on this link, so the fence's drop of IP
//! fragments no longer meets anything the runner's own stack sends, and the DNS filter
//! gets a large query whole (it decides on the header and question at its start).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, LinkVeth};
use tokio::io::AsyncReadExt;

/// The interface name of the runner's side.
pub const RUNNER_IF: &str = "eth0";

/// The MTU of both ends of a runner's veth: the largest a veth accepts (`ETH_MAX_MTU`).
/// Why not Ethernet's 1500: see the module docs.
pub const RUNNER_LINK_MTU: u32 = 65535;

/// A failing network operation.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The netlink socket could not be opened.
    #[error("open netlink socket: {0}")]
    Socket(std::io::Error),
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// A sysctl could not be written.
    #[error("write {path}: {source}")]
    Sysctl {
        /// The /proc/sys file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The veth could not be deleted.
    #[error("delete {name}: {source}")]
    Delete {
        /// The host side's name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The runner's namespace could not be entered.
    #[error("enter the runner's network namespace: {0}")]
    Enter(std::io::Error),
    /// Another interface on the host already has an address in the runner's subnet:
    /// another runner-agent (or anything else) uses the same part of the pool, and a second
    /// route to it would take traffic away from whoever had it first.
    #[error(
        "{interface} already has {address}, in runner subnet {subnet}: another runner-agent on \
         this host uses the same network.runner_pool (give each agent a pool of its own)"
    )]
    SubnetInUse {
        /// The runner's /30.
        subnet: Ipv4Net,
        /// The interface holding an address in it.
        interface: String,
        /// That address.
        address: Ipv4Addr,
    },
    /// The pool has no subnet for this slot.
    #[error("runner pool {pool} has no /30 number {slot}")]
    PoolExhausted {
        /// The configured pool.
        pool: Ipv4Net,
        /// The slot asked for.
        slot: u32,
    },
}

/// The addresses of one runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunnerAddresses {
    /// The runner's /30.
    pub subnet: Ipv4Net,
    /// Host side: where the proxy and DNS filter listen for this runner.
    pub host: Ipv4Addr,
    /// Runner side.
    pub runner: Ipv4Addr,
}

impl RunnerAddresses {
    /// The addresses of runner slot `slot` in `pool`: its `slot`-th /30, host side first.
    pub fn for_slot(pool: Ipv4Net, slot: u32) -> Result<RunnerAddresses, NetworkError> {
        let subnet = pool
            .subnets(30)
            .ok()
            .and_then(|mut subnets| subnets.nth(slot as usize))
            .ok_or(NetworkError::PoolExhausted { pool, slot })?;
        let base = u32::from(subnet.network());
        Ok(RunnerAddresses {
            subnet,
            host: Ipv4Addr::from(base + 1),
            runner: Ipv4Addr::from(base + 2),
        })
    }
}

fn write_sysctl(path: &Path, value: &str) -> Result<(), NetworkError> {
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        // No IPv6 in this kernel: nothing to disable.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path.starts_with("/proc/sys/net/ipv6") =>
        {
            Ok(())
        }
        Err(source) => Err(NetworkError::Sysctl {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Turns off IPv6 on `interface` of the calling thread's namespace, and IPv4 forwarding
/// when asked.
fn harden_interface(interface: &str, no_forwarding: bool) -> Result<(), NetworkError> {
    write_sysctl(
        &Path::new("/proc/sys/net/ipv6/conf")
            .join(interface)
            .join("disable_ipv6"),
        "1",
    )?;
    if no_forwarding {
        write_sysctl(
            &Path::new("/proc/sys/net/ipv4/conf")
                .join(interface)
                .join("forwarding"),
            "0",
        )?;
    }
    Ok(())
}

/// Creates and configures the veth pair of a runner whose network namespace is that of
/// process `netns_pid`. `host_if` is the host side's name (at most 15 bytes). Returns the
/// host side's interface index.
///
/// All of it runs on one short-lived thread of its own, with synchronous netlink
/// requests ([`RouteSocket`]): first in the agent's namespace (create the pair with the
/// peer already in the runner's namespace, address the host side, bring it up), then,
/// after setns(2), in the runner's (bring up lo, address and bring up eth0). Network
/// namespaces are per thread, so the thread must be one that nothing else ever uses
/// (not one of tokio's pools), and it ends right after. One thread and plain system
/// calls cost about half of what an rtnetlink connection per namespace on a runtime of
/// its own did (1.3 ms, most of it the inside's runtime and thread hops), and a runner's
/// start waits for this.
pub async fn setup(
    host_if: &str,
    addrs: RunnerAddresses,
    netns_pid: u32,
    owner: &str,
) -> Result<u32, NetworkError> {
    // Opened here, before the thread: the pair's peer moves into the namespace by this
    // descriptor, so a pid reused meanwhile could not send it elsewhere.
    let netns =
        std::fs::File::open(format!("/proc/{netns_pid}/ns/net")).map_err(NetworkError::Enter)?;
    subnet_free(addrs.subnet)?;
    let host_if = host_if.to_owned();
    let owner = owner.to_owned();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("runner-network".to_owned())
        .spawn(move || {
            let _ = done.send(setup_on_this_thread(&host_if, addrs, netns, &owner));
        })
        .map_err(NetworkError::Enter)?;
    result
        .await
        .map_err(|_| NetworkError::Enter(std::io::Error::other("network set-up thread panicked")))?
}

/// [`setup`]'s work. Leaves the calling thread in the runner's network namespace: it must
/// be a thread that ends right after.
fn setup_on_this_thread(
    host_if: &str,
    addrs: RunnerAddresses,
    netns: std::fs::File,
    owner: &str,
) -> Result<u32, NetworkError> {
    use std::os::fd::AsRawFd;

    let mut host = RouteSocket::open()?;
    let veth = new_veth(host_if, netns.as_raw_fd());
    host.request(RouteNetlinkMessage::NewLink(veth), CREATE, || {
        format!("create veth {host_if}")
    })?;
    let index = existing_index(host_if, "after creating it")?;
    // IPv6 off and forwarding off before the link is up, so that it never has a
    // link-local address nor forwards a frame.
    harden_interface(host_if, true)?;
    host.request(
        RouteNetlinkMessage::NewAddress(address(index, addrs.host, addrs.subnet.prefix_len())),
        CREATE,
        || format!("address {host_if}"),
    )?;
    host.request(
        RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(index)
                .up()
                .alias(owner.to_owned())
                .build(),
        ),
        0,
        || format!("bring up {host_if}"),
    )?;

    nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetworkError::Enter(e.into()))?;
    // Opened after setns: a netlink socket belongs to the namespace it was made in.
    let mut inside = RouteSocket::open()?;
    for name in ["lo", RUNNER_IF] {
        // if_nametoindex and /proc/sys/net answer for this thread's namespace: the
        // runner's, after setns.
        let index = existing_index(name, "in the runner's namespace")?;
        if name == RUNNER_IF {
            harden_interface(name, false)?;
            inside.request(
                RouteNetlinkMessage::NewAddress(address(
                    index,
                    addrs.runner,
                    addrs.subnet.prefix_len(),
                )),
                CREATE,
                || "address eth0".to_owned(),
            )?;
        }
        inside.request(
            RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build()),
            0,
            || format!("bring up {name}"),
        )?;
    }
    Ok(index)
}

/// The `RTM_NEWLINK` body that creates a runner's veth pair: `host_if` here, its peer
/// [`RUNNER_IF`] in the network namespace of descriptor `netns_fd`, both with an MTU of
/// [`RUNNER_LINK_MTU`]. The peer's attributes are its own (`VETH_INFO_PEER` carries an
/// ifinfomsg and attributes, nested in `IFLA_LINKINFO` / `IFLA_INFO_DATA`): without an
/// `IFLA_MTU` there, the kernel would give the peer the default 1500.
fn new_veth(host_if: &str, netns_fd: std::os::fd::RawFd) -> LinkMessage {
    let peer: LinkMessage = LinkMessageBuilder::<LinkUnspec>::new()
        .name(RUNNER_IF.to_owned())
        .mtu(RUNNER_LINK_MTU)
        .setns_by_fd(netns_fd)
        .build();
    LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_if.to_owned())
        .mtu(RUNNER_LINK_MTU)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build()
}

/// Fails if an interface of the calling thread's namespace has an IPv4 address in
/// `subnet` (see the module docs).
fn subnet_free(subnet: Ipv4Net) -> Result<(), NetworkError> {
    let addresses =
        nix::ifaddrs::getifaddrs().map_err(|e| NetworkError::Socket(std::io::Error::from(e)))?;
    for entry in addresses {
        let Some(address) = entry.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let address = address.ip();
        if subnet.contains(&address) {
            return Err(NetworkError::SubnetInUse {
                subnet,
                interface: entry.interface_name,
                address,
            });
        }
    }
    Ok(())
}

/// The index of the link `name` of the calling thread's namespace when it is `owner`'s
/// (see the module docs); `None` when there is no such link or it is another owner's.
fn owned_link(name: &str, owner: &str) -> Result<Option<u32>, NetworkError> {
    let mut socket = RouteSocket::open()?;
    let Some(link) = socket.link(name)? else {
        return Ok(None);
    };
    let alias = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    });
    let ours = alias.is_none_or(|a| a.is_empty() || a == owner);
    Ok(ours.then_some(link.header.index))
}

/// `NLM_F_CREATE | NLM_F_EXCL`: make it, and fail if it exists.
const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;

/// An `RTM_NEWADDR` body: `address/prefix_len` on interface `index`.
fn address(index: u32, address: Ipv4Addr, prefix_len: u8) -> AddressMessage {
    AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(address, prefix_len)
        .build()
}

/// A synchronous `NETLINK_ROUTE` socket of the namespace of the thread that opened it.
///
/// The kernel carries out an rtnetlink request inside sendmsg(2), so its acknowledgement
/// is already queued when the send returns: a request is one send and one receive, with
/// no event loop (the async rtnetlink connection needs a task and a runtime, which a
/// thread inside another namespace would have to build for itself).
struct RouteSocket {
    socket: rtnetlink::sys::Socket,
    sequence: u32,
    answer: Vec<u8>,
}

impl RouteSocket {
    fn open() -> Result<RouteSocket, NetworkError> {
        let mut socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
            .map_err(NetworkError::Socket)?;
        socket.bind_auto().map_err(NetworkError::Socket)?;
        socket
            .connect(&rtnetlink::sys::SocketAddr::new(0, 0))
            .map_err(NetworkError::Socket)?;
        Ok(RouteSocket {
            socket,
            sequence: 0,
            // Big enough for an acknowledgement that echoes a whole request.
            answer: Vec::with_capacity(16 * 1024),
        })
    }

    /// The link called `name`, or `None` when there is none (`RTM_GETLINK`).
    fn link(&mut self, name: &str) -> Result<Option<LinkMessage>, NetworkError> {
        let request = LinkUnspec::new_with_name(name).build();
        let mut found = None;
        let answer = self.exchange(
            RouteNetlinkMessage::GetLink(request),
            0,
            || format!("look up {name}"),
            |reply| {
                if let RouteNetlinkMessage::NewLink(link) = reply {
                    found = Some(link);
                }
            },
        );
        match answer {
            Ok(()) => Ok(found),
            Err(NetworkError::Netlink {
                source: rtnetlink::Error::NetlinkError(e),
                ..
            }) if e.code.map(|c| -c.get()) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends `message` with `NLM_F_REQUEST | NLM_F_ACK | flags` and waits for its
    /// acknowledgement; a refusal becomes an error naming `op`.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<(), NetworkError> {
        self.exchange(message, flags, op, |_| {})
    }

    /// [`RouteSocket::request`], handing every answer of the request that is not its
    /// acknowledgement (what a `GET` request returns) to `on_reply`.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
        mut on_reply: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), NetworkError> {
        self.sequence += 1;
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        request.header.sequence_number = self.sequence;
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(NetworkError::Socket)?;
        loop {
            self.answer.clear();
            self.socket
                .recv(&mut self.answer, 0)
                .map_err(NetworkError::Socket)?;
            let mut rest = &self.answer[..];
            while !rest.is_empty() {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).map_err(|e| {
                        NetworkError::Socket(std::io::Error::other(format!(
                            "malformed netlink answer: {e}"
                        )))
                    })?;
                let length = (reply.header.length as usize).max(1);
                rest = rest.get(length.next_multiple_of(4)..).unwrap_or_default();
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(()),
                            Some(_) => Err(NetworkError::Netlink {
                                op: op(),
                                source: rtnetlink::Error::NetlinkError(error),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => on_reply(inner),
                    _ => {}
                }
            }
        }
    }
}

/// Deletes the host side of a runner's veth (which deletes the pair) and returns once the
/// pair has left the host's tables, so that no lookup, `ip link` or new device of the same
/// name sees it any more. A link that is already gone is not an error, and one that
/// `owner` did not make is left alone (module docs).
///
/// Why not simply await the netlink request: the kernel takes the device out of its
/// tables at the start of the request, then, before it answers, waits for RCU grace
/// periods until the last reference to the devices' memory is dropped (20 to 30 ms here,
/// most of a runner's teardown). Nothing can observe or reuse the device during that wait,
/// and the kernel finishes it whatever happens to the caller. So the request is sent by a
/// child process of its own ([`crate::sys::detached`]: a thread would hold this process's
/// exit until the kernel answers), and this function watches the device's name instead:
/// it returns when the name no longer resolves to the device, or with the request's error
/// if it fails first. The device is named by its index, taken before the child starts: a
/// late request must never delete a new device that took the name (indexes are not
/// reused soon; names are, by the next runner of the slot).
pub async fn remove(host_if: &str, owner: &str) -> Result<(), NetworkError> {
    // Another agent's veth of the same name is not ours to delete (module docs).
    let Some(index) = owned_link(host_if, owner)? else {
        return Ok(());
    };
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::DelLink({
        let mut message = LinkMessage::default();
        message.header.index = index;
        message
    }));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    let failed = |source: std::io::Error| NetworkError::Delete {
        name: host_if.to_owned(),
        source,
    };
    let (child, report) =
        crate::sys::detached::netlink_request(&bytes).map_err(|e| failed(e.into()))?;
    // Reaped whenever it ends; if this process ends first, the system reaps it.
    tokio::spawn(async move { child.reap().await });
    let mut report =
        tokio::net::unix::pipe::Receiver::from_owned_fd(report).map_err(NetworkError::Socket)?;
    let mut answer = [0u8; 4];
    // One read for the whole wait: a read_exact future dropped half-way would lose bytes.
    let read = report.read_exact(&mut answer);
    tokio::pin!(read);
    let mut pause = std::time::Duration::from_micros(50);
    loop {
        tokio::select! {
            read = &mut read => {
                return match read.map(|_| i32::from_ne_bytes(answer)) {
                    Ok(0) | Ok(libc::ENODEV) => Ok(()),
                    Ok(errno) => Err(failed(std::io::Error::from_raw_os_error(errno))),
                    Err(e) => Err(failed(std::io::Error::other(format!(
                        "the deleting process ended without an answer: {e}"
                    )))),
                };
            }
            () = tokio::time::sleep(pause) => {
                if index_of(host_if)? != Some(index) {
                    return Ok(());
                }
                pause = (pause * 2).min(std::time::Duration::from_millis(2));
            }
        }
    }
}

/// The index of device `name` in the calling thread's network namespace, if there is one
/// (the kernel's name table, as `if_nametoindex(3)` reads it; no netlink round trip).
fn index_of(name: &str) -> Result<Option<u32>, NetworkError> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(index) => Ok(Some(index)),
        Err(nix::errno::Errno::ENODEV) => Ok(None),
        Err(e) => Err(NetworkError::Socket(e.into())),
    }
}

/// The index of device `name`, which must exist (`context` says where it was looked for).
fn existing_index(name: &str, context: &str) -> Result<u32, NetworkError> {
    index_of(name)?.ok_or_else(|| NetworkError::Netlink {
        op: format!("find {name} {context}"),
        source: rtnetlink::Error::RequestFailed,
    })
}

/// Whether a link called `host_if` and made by `owner` (see the module docs) exists in the
/// agent's namespace.
pub fn exists(host_if: &str, owner: &str) -> Result<bool, NetworkError> {
    Ok(owned_link(host_if, owner)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_take_consecutive_slash_30s() {
        let pool: Ipv4Net = "10.249.0.0/16".parse().unwrap();
        let a = RunnerAddresses::for_slot(pool, 0).unwrap();
        assert_eq!(a.host, Ipv4Addr::new(10, 249, 0, 1));
        assert_eq!(a.runner, Ipv4Addr::new(10, 249, 0, 2));
        let b = RunnerAddresses::for_slot(pool, 3).unwrap();
        assert_eq!(b.subnet, "10.249.0.12/30".parse().unwrap());
        assert!(RunnerAddresses::for_slot("10.0.0.0/29".parse().unwrap(), 2).is_err());
    }

    /// Both devices of the pair carry `IFLA_MTU`: the host side's among its own
    /// attributes, the peer's in `IFLA_LINKINFO` / `IFLA_INFO_DATA` / `VETH_INFO_PEER`.
    #[test]
    fn the_veth_request_gives_both_ends_the_runner_link_mtu() {
        use rtnetlink::packet_route::link::LinkInfo;

        let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewLink(new_veth("ra7", 9)));
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        // On the wire: IFLA_MTU (type 4) is a u32 attribute, 8 bytes with its header, in
        // host byte order; one for each device.
        let mut mtu_attribute = vec![8, 0, 4, 0];
        mtu_attribute.extend_from_slice(&RUNNER_LINK_MTU.to_ne_bytes());
        let encoded = bytes
            .windows(mtu_attribute.len())
            .filter(|w| *w == mtu_attribute.as_slice())
            .count();
        assert_eq!(encoded, 2, "IFLA_MTU attributes in {bytes:02x?}");

        // And each where the kernel looks for it.
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = parsed.payload
        else {
            panic!("not a new link: {parsed:?}");
        };
        let mtu = |attributes: &[LinkAttribute]| {
            attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
        };
        assert_eq!(mtu(&link.attributes), Some(RUNNER_LINK_MTU));
        let peer = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) => Some(peer),
                    _ => None,
                }),
                _ => None,
            })
            .expect("the peer's attributes");
        assert_eq!(mtu(&peer.attributes), Some(RUNNER_LINK_MTU));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName(RUNNER_IF.to_owned())));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(9)));
        assert_eq!(RUNNER_LINK_MTU, 65535);
    }
}
