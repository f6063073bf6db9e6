//! The runner topology's world (program docs in main.rs, "The two tunnel topologies"): a
//! runner namespace and an internet namespace, each held by a helper process
//! ([`NsHelper`]), their veth links to the host namespace, their addresses and routes.
//! The loopback topology needs none of it: it runs in the host namespace alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use anyhow::Context;

use crate::netns::{run, NsHelper};

/// Runner topology addresses (see the program docs in main.rs).
pub(crate) const RUNNER_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub(crate) const RUNNER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const INTERNET_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub(crate) const INTERNET_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The bulk server's name in the runner topology.
pub(crate) const BULK_NAME: &str = "bulk.internet.test";
/// MTU of both ends of a runner's veth pair, as runner-agent configures it
/// (`RUNNER_LINK_MTU` in runner-agent/src/network.rs: the most a veth takes).
pub(crate) const RUNNER_LINK_MTU: u32 = 65535;

/// Runs `ip ARGS` in this (the host) namespace.
fn host_ip(args: &str) -> anyhow::Result<()> {
    run(Command::new("ip").args(args.split_whitespace()))
}

/// The runner topology (program docs): a runner namespace held by the client helper, an
/// internet namespace held by the bulk server helper, and their links to this one, the
/// host. Dropping it kills the helpers, which removes both namespaces and both veth
/// pairs; what it set in this namespace (addresses, `ip_forward`) goes with the bench's
/// private namespace.
pub(crate) struct RunnerWorld {
    /// The tunnel client, in the runner namespace.
    pub(crate) client: NsHelper,
    /// The bulk server, in the internet namespace.
    pub(crate) server: NsHelper,
    /// Where the bulk server listens (198.51.100.10:PORT).
    pub(crate) bulk: SocketAddr,
}

impl RunnerWorld {
    pub(crate) fn build(bulk_mib: u64) -> anyhow::Result<RunnerWorld> {
        let client = NsHelper::spawn("runner-client")?;
        let server = NsHelper::spawn("internet-bulk")?;
        // Runner link: MTU 65535 on both ends, as runner-agent gives a runner's veth
        // pair (RUNNER_LINK_MTU in runner-agent/src/network.rs).
        host_ip(&format!(
            "link add pb-runner mtu {RUNNER_LINK_MTU} type veth peer name eth0 mtu {RUNNER_LINK_MTU} netns {}",
            client.pid
        ))?;
        // Internet link: the default MTU of 1500, a real network's.
        host_ip(&format!(
            "link add pb-internet type veth peer name eth0 netns {}",
            server.pid
        ))?;
        host_ip(&format!("addr add {RUNNER_HOST_SIDE}/30 dev pb-runner"))?;
        host_ip("link set pb-runner up")?;
        host_ip(&format!("addr add {INTERNET_HOST_SIDE}/24 dev pb-internet"))?;
        host_ip("link set pb-internet up")?;
        // The host routes between its links. This is the bench's private namespace,
        // not the machine's.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
            .context("setting net.ipv4.ip_forward in the bench's namespace")?;
        // Each side reaches only the other's subnet, through the host: no default routes.
        client.ip("link set lo up")?;
        client.ip(&format!("addr add {RUNNER_SIDE}/30 dev eth0"))?;
        client.ip("link set eth0 up")?;
        client.ip(&format!("route add 198.51.100.0/24 via {RUNNER_HOST_SIDE}"))?;
        server.ip("link set lo up")?;
        server.ip(&format!("addr add {INTERNET_SERVER}/24 dev eth0"))?;
        server.ip("link set eth0 up")?;
        server.ip(&format!("route add 10.250.0.0/30 via {INTERNET_HOST_SIDE}"))?;
        let mut world = RunnerWorld {
            client,
            server,
            bulk: (INTERNET_SERVER, 0).into(),
        };
        let port = world
            .server
            .request(&format!("serve {INTERNET_SERVER} {bulk_mib}"))?;
        let port: u16 = port
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("bulk helper said `{port}`"))?;
        world.bulk.set_port(port);
        Ok(world)
    }
}
