//! Attacks from inside a fenced runner (THREATS.md, the socket and privilege families).
//!
//! Each test asserts both halves of the contract: nothing from the runner reached the
//! internet namespace (a packet recorder there sees every frame of every protocol), and
//! the fence reported the attempt as a denial naming the process and the destination.
//! `control_unfenced_runner_reaches_the_internet` shows that the same world, without
//! the fence, does let those packets through, so silence in the recorder means something.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use egress_ebpf::{Hook, OtherTcp, Reason};
use runner_agent_tests::fence::{
    find_denial, non_first_fragment, udp_frame, Fenced, Op, Placement, World, OTHER_DNS,
    PROXY_ADDR, RUNNER_ADDR, TARGET, TARGET6,
};
use runner_agent_tests::require_privilege;

#[test]
#[ignore = "entry point of the probe process started by the fence tests"]
fn fence_probe() {
    runner_agent_tests::fence::probe_main();
}

const EPERM: i32 = 1;
/// Another runner's address, as a job might forge it.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 3);

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn v4(ip: Ipv4Addr) -> Option<IpAddr> {
    Some(IpAddr::V4(ip))
}

/// Lets in-flight packets (forwarded by the host) reach the recorder before checking it.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// After in-flight packets had their chance, the internet-side recorder saw nothing.
fn assert_nothing_arrived(f: &Fenced) {
    settle();
    let seen = f.world.recorder.seen();
    assert!(seen.is_empty(), "{seen:?}");
}

#[test]
fn control_unfenced_runner_reaches_the_internet() {
    require_privilege!();
    let world = World::build().expect("world");
    let ops = [
        Op::Connect {
            to: sa(TARGET, 443),
            send: String::new(),
        },
        Op::Connect {
            to: sa(TARGET6, 443),
            send: String::new(),
        },
        Op::SendTo {
            to: sa(TARGET, 9999),
            data: "udp".into(),
            reply: false,
        },
    ];
    let report = world.probe(&ops, Placement::Unfenced).expect("probe");
    assert!(
        report.outcomes.iter().all(|o| o.ok),
        "{:?}",
        report.outcomes
    );
    settle();
    let seen = world.recorder.seen();
    assert!(
        seen.iter()
            .any(|s| s.dst == IpAddr::V4(TARGET) && s.protocol == 6),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.dst == IpAddr::V6(TARGET6) && s.protocol == 6),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.dst == IpAddr::V4(TARGET) && s.protocol == 17),
        "{seen:?}"
    );
}

#[test]
fn ip_literals_on_other_ports_and_the_host_side_address_are_denied() {
    require_privilege!();
    let mut f = Fenced::new(10, OtherTcp::Deny, false).expect("fenced world");
    let targets = [
        sa(TARGET, 22),
        sa(TARGET, 5432),
        sa(TARGET, 8080),
        sa(PROXY_ADDR, 22),
        sa(PROXY_ADDR, 9999),
    ];
    let ops: Vec<Op> = targets
        .iter()
        .map(|to| Op::Connect {
            to: *to,
            send: "x".into(),
        })
        .collect();
    let report = f.world.probe(&ops, Placement::UserNsRoot).expect("probe");
    for o in &report.outcomes {
        assert_eq!((o.ok, o.errno), (false, EPERM), "{o:?}");
    }
    let denials = f.denials(targets.len());
    for to in targets {
        let d = find_denial(
            &denials,
            Hook::Connect4,
            Some(to.ip()),
            Some(to.port()),
            Some(report.pid),
        );
        assert_eq!(d.comm.as_deref().map(|c| !c.is_empty()), Some(true));
        let want = if to.ip() == IpAddr::V4(PROXY_ADDR) {
            Reason::ProxyPort
        } else {
            Reason::Destination
        };
        assert_eq!(d.reason, want);
        assert_eq!(d.runner_id, 10);
        let age = std::time::SystemTime::now().duration_since(d.wall_clock());
        assert!(
            age.as_ref().is_ok_and(|a| *a < Duration::from_secs(60)),
            "{age:?}"
        );
    }
    assert_nothing_arrived(&f);
    assert!(
        f.world.proxy.arrivals().is_empty(),
        "{:?}",
        f.world.proxy.arrivals()
    );
    assert_eq!(
        f.fence()
            .counters()
            .expect("counters")
            .denied_by(Hook::Connect4),
        targets.len() as u64
    );
}

#[test]
fn ipv6_is_denied_at_every_hook_and_mapped_addresses_count_as_ipv4() {
    require_privilege!();
    let mut f = Fenced::new(11, OtherTcp::Deny, false).expect("fenced world");
    let mapped = SocketAddr::V6(SocketAddrV6::new(TARGET.to_ipv6_mapped(), 9999, 0, 0));
    let ops = [
        Op::Connect {
            to: sa(TARGET6, 443),
            send: String::new(),
        },
        Op::SendTo {
            to: sa(TARGET6, 53),
            data: "dns-over-v6".into(),
            reply: false,
        },
        Op::UdpConnect {
            to: sa(TARGET6, 123),
            reply: false,
        },
        Op::SendTo {
            to: mapped,
            data: "mapped-udp".into(),
            reply: false,
        },
        Op::Connect {
            to: SocketAddr::V6(SocketAddrV6::new(TARGET.to_ipv6_mapped(), 22, 0, 0)),
            send: String::new(),
        },
    ];
    let report = f.world.probe(&ops, Placement::UserNsRoot).expect("probe");
    for o in &report.outcomes {
        assert_eq!((o.ok, o.errno), (false, EPERM), "{o:?}");
    }
    let denials = f.denials(ops.len());
    let pid = Some(report.pid);
    let v6 = Some(IpAddr::V6(TARGET6));
    assert_eq!(
        find_denial(&denials, Hook::Connect6, v6, Some(443), pid).reason,
        Reason::Ipv6
    );
    assert_eq!(
        find_denial(&denials, Hook::Sendmsg6, v6, Some(53), pid).reason,
        Reason::Ipv6
    );
    assert_eq!(
        find_denial(&denials, Hook::Connect6, v6, Some(123), pid).reason,
        Reason::Ipv6
    );
    // The kernel hands a v4-mapped UDP send to the IPv4 path (udpv6_sendmsg), where
    // sendmsg4 sees the plain IPv4 address; either way the report names 203.0.113.7.
    let mapped_udp = denials
        .iter()
        .find(|d| d.port == Some(9999) && d.ip == v4(TARGET))
        .unwrap_or_else(|| panic!("no denial for the mapped UDP send: {denials:#?}"));
    assert!(matches!(mapped_udp.hook, Hook::Sendmsg4 | Hook::Sendmsg6));
    find_denial(&denials, Hook::Connect6, v4(TARGET), Some(22), pid);
    assert_nothing_arrived(&f);
}

#[test]
fn udp_other_than_dns_is_denied_for_sendto_sendmmsg_and_connect() {
    require_privilege!();
    let mut f = Fenced::new(12, OtherTcp::HttpListener, false).expect("fenced world");
    let ops = [
        Op::SendTo {
            to: sa(TARGET, 9999),
            data: "exfil".into(),
            reply: false,
        },
        Op::SendTo {
            to: sa(TARGET, 443),
            data: "quic".into(),
            reply: false,
        },
        Op::UdpConnect {
            to: sa(TARGET, 123),
            reply: false,
        },
        Op::Sendmmsg {
            to: vec![sa(OTHER_DNS, 5353), sa(TARGET, 9999)],
        },
        // The host-side address on a UDP port other than the DNS filter's.
        Op::SendTo {
            to: sa(PROXY_ADDR, 9999),
            data: "side".into(),
            reply: false,
        },
    ];
    let report = f.world.probe(&ops, Placement::UserNsRoot).expect("probe");
    for o in &report.outcomes {
        assert_eq!((o.ok, o.errno), (false, EPERM), "{o:?}");
    }
    let denials = f.denials(5);
    let pid = Some(report.pid);
    find_denial(&denials, Hook::Sendmsg4, v4(TARGET), Some(9999), pid);
    find_denial(&denials, Hook::Sendmsg4, v4(TARGET), Some(443), pid);
    find_denial(&denials, Hook::Connect4, v4(TARGET), Some(123), pid);
    // sendmmsg stops at the first refused message and reports the error.
    find_denial(&denials, Hook::Sendmsg4, v4(OTHER_DNS), Some(5353), pid);
    let side = find_denial(&denials, Hook::Sendmsg4, v4(PROXY_ADDR), Some(9999), pid);
    assert_eq!(side.reason, Reason::ProxyPort);
    assert_nothing_arrived(&f);
}

#[test]
fn raw_icmp_and_packet_sockets_get_nowhere() {
    require_privilege!();
    let mut f = Fenced::new(13, OtherTcp::HttpListener, true).expect("fenced world");
    let (af_inet, af_inet6, af_packet) = (libc::AF_INET, libc::AF_INET6, libc::AF_PACKET);
    let spoofed = udp_frame(
        f.world.host_mac,
        f.world.runner_mac,
        SPOOFED,
        PROXY_ADDR,
        runner_agent_tests::fence::DNS_PORT,
    );
    let fragment = non_first_fragment(udp_frame(
        f.world.host_mac,
        f.world.runner_mac,
        RUNNER_ADDR,
        PROXY_ADDR,
        runner_agent_tests::fence::DNS_PORT,
    ));
    let frame = udp_frame(
        f.world.host_mac,
        f.world.runner_mac,
        RUNNER_ADDR,
        TARGET,
        9999,
    );
    let ops = [
        Op::Socket {
            domain: af_inet,
            ty: libc::SOCK_RAW,
            protocol: libc::IPPROTO_ICMP,
            to: Some(sa(TARGET, 0)),
        },
        Op::Socket {
            domain: af_inet,
            ty: libc::SOCK_DGRAM,
            protocol: libc::IPPROTO_ICMP,
            to: Some(sa(TARGET, 0)),
        },
        Op::Socket {
            domain: af_inet6,
            ty: libc::SOCK_RAW,
            protocol: libc::IPPROTO_ICMPV6,
            to: Some(sa(TARGET6, 0)),
        },
        Op::Socket {
            domain: af_inet,
            ty: libc::SOCK_RAW,
            protocol: libc::IPPROTO_UDP,
            to: Some(sa(TARGET, 0)),
        },
        // Host root in the runner's netns may open a packet socket (the cgroup hooks never
        // see them); the frame it writes is dropped on the host by the tc program.
        Op::Frame {
            ifname: "eth0".into(),
            frame,
        },
        // A spoofed source to a port the host does serve: the proxy tells runners apart
        // by source address, so the tc program refuses any source but the runner's.
        Op::Frame {
            ifname: "eth0".into(),
            frame: spoofed,
        },
        // A non-first fragment carries no ports: refused whatever its address.
        Op::Frame {
            ifname: "eth0".into(),
            frame: fragment,
        },
    ];
    // As host root: the strongest socket privileges there are in the runner's netns.
    let report = f.world.probe(&ops, Placement::HostRoot).expect("probe");
    let o = &report.outcomes;
    for (i, o) in o[..4].iter().enumerate() {
        assert_eq!((o.ok, o.errno), (false, EPERM), "socket {i}: {o:?}");
    }
    for o in &o[4..] {
        assert!(o.ok, "the packet socket itself is not refused: {o:?}");
    }
    // The tc program also drops the runner kernel's IPv6 neighbour discovery, so wait
    // for what this test sent rather than for a count.
    let denials = f.denials_until(|d| {
        let tc = |reason| {
            d.iter()
                .any(|x| x.hook == Hook::TcIngress && x.reason == reason)
        };
        let creates = d.iter().filter(|x| x.hook == Hook::SockCreate).count();
        creates >= 4 && tc(Reason::Destination) && tc(Reason::Spoofed) && tc(Reason::Fragment)
    });
    let pid = Some(report.pid);
    let creates: Vec<_> = denials
        .iter()
        .filter(|d| d.hook == Hook::SockCreate)
        .collect();
    assert_eq!(creates.len(), 4, "{denials:#?}");
    assert!(creates
        .iter()
        .all(|d| d.pid == pid && d.reason == Reason::Protocol));
    assert!(creates
        .iter()
        .any(|d| d.sock_type == libc::SOCK_RAW as u16 && d.protocol == libc::IPPROTO_ICMP as u16));
    assert!(
        creates
            .iter()
            .any(|d| d.sock_type == libc::SOCK_DGRAM as u16
                && d.protocol == libc::IPPROTO_ICMP as u16)
    );
    let tc = find_denial(&denials, Hook::TcIngress, v4(TARGET), Some(9999), None);
    assert_eq!(tc.reason, Reason::Destination);
    let dns = Some(runner_agent_tests::fence::DNS_PORT);
    let spoof = find_denial(&denials, Hook::TcIngress, v4(PROXY_ADDR), dns, None);
    assert_eq!(spoof.reason, Reason::Spoofed);
    let fragment = denials.iter().find(|d| d.reason == Reason::Fragment);
    let fragment = fragment.unwrap_or_else(|| panic!("no fragment denial: {denials:#?}"));
    assert_eq!(
        (fragment.hook, fragment.ip, fragment.port),
        (Hook::TcIngress, v4(PROXY_ADDR), None)
    );
    let arrivals = f.world.proxy.arrivals();
    assert!(
        arrivals.iter().all(|a| a.peer.ip() != IpAddr::V4(SPOOFED)),
        "{arrivals:?}"
    );

    // Root of a user namespace (what a job is) cannot even open a packet socket there.
    let report = f.world.probe(
        &[Op::Socket {
            domain: af_packet,
            ty: libc::SOCK_RAW,
            protocol: 0,
            to: None,
        }],
        Placement::UserNsRoot,
    );
    let o = &report.expect("probe").outcomes[0];
    assert_eq!((o.ok, o.errno), (false, EPERM), "{o:?}");
    assert_nothing_arrived(&f);
}

#[test]
fn new_namespaces_and_bpf_from_inside_do_not_undo_the_fence() {
    require_privilege!();
    let mut f = Fenced::new(14, OtherTcp::Deny, false).expect("fenced world");
    let ops = [
        Op::Bpf,
        Op::NewNetns,
        // Root of its own user namespace owns this new netns, so the kernel would allow a
        // raw socket here; the fence still refuses it, and UDP still goes nowhere.
        Op::Socket {
            domain: libc::AF_INET,
            ty: libc::SOCK_RAW,
            protocol: libc::IPPROTO_ICMP,
            to: None,
        },
        Op::SendTo {
            to: sa(TARGET, 9999),
            data: "from-new-netns".into(),
            reply: false,
        },
    ];
    let report = f.world.probe(&ops, Placement::UserNsRoot).expect("probe");
    let o = &report.outcomes;
    assert_eq!((o[0].ok, o[0].errno), (false, EPERM), "bpf(): {:?}", o[0]);
    assert!(o[1].ok, "unshare: {:?}", o[1]);
    assert_eq!((o[2].ok, o[2].errno), (false, EPERM), "{:?}", o[2]);
    assert_eq!((o[3].ok, o[3].errno), (false, EPERM), "{:?}", o[3]);
    let denials = f.denials(2);
    let pid = Some(report.pid);
    assert!(
        denials
            .iter()
            .any(|d| d.hook == Hook::SockCreate && d.pid == pid),
        "{denials:#?}"
    );
    find_denial(&denials, Hook::Sendmsg4, v4(TARGET), Some(9999), pid);
    // The fence is still there, whole.
    let links = std::fs::read_dir(f.fence().pin_dir())
        .expect("pins")
        .count();
    assert_eq!(links, 11 + 5, "links and maps pinned");
    assert_nothing_arrived(&f);
}

#[test]
fn a_connection_opened_before_the_fence_is_cut_by_the_packet_backstop() {
    require_privilege!();
    let world = World::build().expect("world");
    let ops = [
        Op::Connect {
            to: sa(TARGET, 80),
            send: String::new(),
        },
        Op::WaitStdin,
        Op::Send {
            index: 0,
            data: "after-the-fence".into(),
        },
    ];
    let mut probe = world.spawn_probe(&ops, Placement::HostRoot).expect("probe");
    // Wait until the handshake reached the target: the connection exists unfenced.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !world
        .recorder
        .seen()
        .iter()
        .any(|s| s.dst == IpAddr::V4(TARGET))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "probe never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut fence = egress_ebpf::Fence::attach(
        &world.cgroup.path,
        world.fence_config(15, OtherTcp::Deny),
        &world.pin_dir(),
    )
    .expect("attach");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut denials = {
        let _guard = rt.enter();
        fence.denials().expect("denials")
    };
    settle();
    world.recorder.clear();
    probe.resume().expect("resume");
    let report = probe.finish().expect("report");
    // write() succeeds (the data is queued); the packets carrying it never leave.
    assert!(report.outcomes[2].ok, "{:?}", report.outcomes);
    let got = rt.block_on(runner_agent_tests::fence::collect_denials(
        &mut denials,
        Duration::from_secs(3),
        |d| !d.is_empty(),
    ));
    let d = find_denial(&got, Hook::SkbEgress, v4(TARGET), Some(80), None);
    assert_eq!(d.reason, Reason::Destination);
    settle();
    assert!(
        world.recorder.seen().is_empty(),
        "{:?}",
        world.recorder.seen()
    );
    drop(denials);
    fence.detach().expect("detach");
}

#[test]
fn fail_closed_when_the_proxy_dies_mid_job() {
    require_privilege!();
    let f = Fenced::new(16, OtherTcp::HttpListener, true).expect("fenced world");
    let before = f.world.probe(
        &[Op::Connect {
            to: sa(TARGET, 443),
            send: "one".into(),
        }],
        Placement::UserNsRoot,
    );
    assert!(
        before.expect("probe").outcomes[0].ok,
        "the proxy was serving"
    );
    f.world
        .proxy
        .kill_listener(runner_agent_tests::fence::TLS_PORT);
    let ops = [
        Op::Connect {
            to: sa(TARGET, 443),
            send: "two".into(),
        },
        Op::Connect {
            to: sa("198.51.100.10".parse::<Ipv4Addr>().expect("ip"), 443),
            send: String::new(),
        },
    ];
    let report = f.world.probe(&ops, Placement::UserNsRoot).expect("probe");
    for o in &report.outcomes {
        assert_eq!((o.ok, o.errno), (false, libc::ECONNREFUSED), "{o:?}");
    }
    assert_nothing_arrived(&f);
}

#[test]
fn a_job_in_a_child_cgroup_is_fenced_all_the_same() {
    require_privilege!();
    let mut f = Fenced::new(17, OtherTcp::Deny, false).expect("fenced world");
    let child = f.world.cgroup.child("job").expect("child cgroup");
    let ops = [
        Op::Connect {
            to: sa(TARGET, 22),
            send: String::new(),
        },
        Op::SendTo {
            to: sa(TARGET, 9999),
            data: "x".into(),
            reply: false,
        },
    ];
    let probe = f
        .world
        .spawn_probe_in(&ops, Placement::UserNsRoot, &child.path)
        .expect("probe");
    let report = probe.finish().expect("report");
    for o in &report.outcomes {
        assert_eq!((o.ok, o.errno), (false, EPERM), "{o:?}");
    }
    let denials = f.denials(2);
    let pid = Some(report.pid);
    find_denial(&denials, Hook::Connect4, v4(TARGET), Some(22), pid);
    find_denial(&denials, Hook::Sendmsg4, v4(TARGET), Some(9999), pid);
    drop(child);
    assert_nothing_arrived(&f);
}
