//! What a fenced runner may do: reach the proxy's listeners directly, and have every
//! other TCP connection and every DNS query redirected to them, with the original
//! destination recorded for the proxy and shown back to the job.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};

use egress_ebpf::{Fence, OtherTcp};
use runner_agent_tests::fence::{
    Op, Placement, World, DNS_PORT, EXPLICIT_PORT, HTTP_PORT, OTHER_DNS, PROXY_ADDR, TARGET,
    TLS_PORT,
};
use runner_agent_tests::require_privilege;

#[test]
#[ignore = "entry point of the probe process started by the fence tests"]
fn fence_probe() {
    runner_agent_tests::fence::probe_main();
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// The runner-side address of a probe connection, parsed from its `local=` detail.
fn local_of(detail: &str) -> SocketAddr {
    let local = detail
        .split(' ')
        .find_map(|w| w.strip_prefix("local="))
        .expect("local= in detail");
    local.parse().expect("socket address")
}

#[test]
fn proxy_ports_are_reachable_and_tcp_is_redirected_with_its_original_destination() {
    require_privilege!();
    let world = World::build().expect("world");
    let fence = Fence::attach(
        &world.cgroup.path,
        world.fence_config(1, OtherTcp::HttpListener),
        &world.pin_dir(),
    )
    .expect("attach");
    let ops = [
        Op::Connect {
            to: sa(PROXY_ADDR, EXPLICIT_PORT),
            send: "explicit".into(),
        },
        Op::Connect {
            to: sa(TARGET, 443),
            send: "tls-literal".into(),
        },
        Op::Connect {
            to: sa(TARGET, 8080),
            send: "http-literal".into(),
        },
        Op::Connect {
            to: sa(OTHER_DNS, 53),
            send: "tcp-dns".into(),
        },
        // An IPv6 socket to an IPv4-mapped address is the same as IPv4.
        Op::Connect {
            to: SocketAddr::V6(SocketAddrV6::new(TARGET.to_ipv6_mapped(), 443, 0, 0)),
            send: "mapped".into(),
        },
        // DNS over TCP to the resolver of the runner's resolv.conf (the host side), as the
        // C library does after a truncated UDP answer: to the DNS filter too.
        Op::Connect {
            to: sa(PROXY_ADDR, 53),
            send: "tcp-dns-resolver".into(),
        },
    ];
    let report = world.probe(&ops, Placement::UserNsRoot).expect("probe");
    let o = &report.outcomes;
    assert!(o.iter().all(|x| x.ok), "{o:?}");
    // Each connection reached the listener it was meant for, and getpeername() shows
    // the job the address it asked for.
    assert!(
        o[0].detail
            .contains(&format!("peer={PROXY_ADDR}:{EXPLICIT_PORT}")),
        "{}",
        o[0].detail
    );
    assert!(
        o[0].detail
            .contains(&format!("reply=proxy:{EXPLICIT_PORT}")),
        "{}",
        o[0].detail
    );
    assert!(
        o[1].detail
            .contains(&format!("peer={TARGET}:443 reply=proxy:{TLS_PORT}")),
        "{}",
        o[1].detail
    );
    assert!(
        o[2].detail
            .contains(&format!("peer={TARGET}:8080 reply=proxy:{HTTP_PORT}")),
        "{}",
        o[2].detail
    );
    assert!(
        o[3].detail
            .contains(&format!("peer={OTHER_DNS}:53 reply=proxy:{DNS_PORT}")),
        "{}",
        o[3].detail
    );
    assert!(
        o[5].detail
            .contains(&format!("peer={PROXY_ADDR}:53 reply=proxy:{DNS_PORT}")),
        "{}",
        o[5].detail
    );
    assert!(
        o[4].detail.contains(&format!("reply=proxy:{TLS_PORT}")),
        "{}",
        o[4].detail
    );

    // The proxy side learns where each redirected connection was meant to go, and who.
    let orig = fence.original_destinations().expect("orig dst");
    let expect = [
        (1, sa(TARGET, 443)),
        (2, sa(TARGET, 8080)),
        (3, sa(OTHER_DNS, 53)),
        (4, sa(TARGET, 443)),
        (5, sa(PROXY_ADDR, 53)),
    ];
    for (i, want) in expect {
        let peer = local_of(&o[i].detail);
        let peer = match peer {
            SocketAddr::V6(v6) => {
                SocketAddr::from((v6.ip().to_ipv4_mapped().expect("mapped"), v6.port()))
            }
            v4 => v4,
        };
        let entry = orig
            .lookup_entry(peer)
            .expect("lookup")
            .expect("entry recorded");
        assert_eq!(entry.destination, want, "op {i}");
        assert_eq!(entry.pid, report.pid, "op {i}");
        assert!(!entry.comm.is_empty());
        let arrived = world
            .proxy
            .arrivals_until(|a| a.iter().any(|a| a.peer == peer));
        assert!(
            arrived.iter().any(|a| a.peer == peer),
            "arrived at the stand-in: {peer}"
        );
    }
    // A direct connection to the explicit proxy is recorded too, so that the proxy can
    // name the process: its destination is the proxy itself.
    let direct = orig
        .lookup_entry(local_of(&o[0].detail))
        .expect("lookup")
        .expect("the explicit proxy's connection recorded");
    assert_eq!(direct.destination, sa(PROXY_ADDR, EXPLICIT_PORT));
    assert_eq!(direct.pid, report.pid);
    assert!(
        world.recorder.seen().is_empty(),
        "reached the internet: {:?}",
        world.recorder.seen()
    );
    let counters = fence.counters().expect("counters");
    assert_eq!(counters.redirected_tls, 2);
    assert_eq!(counters.redirected_http, 1);
    assert_eq!(counters.redirected_dns, 2);
    assert_eq!(counters.denied_total(), 0);
    fence.detach().expect("detach");
}

#[test]
fn dns_over_udp_goes_to_the_filter_and_the_reply_comes_from_the_server_asked() {
    require_privilege!();
    let world = World::build().expect("world");
    let fence = Fence::attach(
        &world.cgroup.path,
        world.fence_config(2, OtherTcp::HttpListener),
        &world.pin_dir(),
    )
    .expect("attach");
    let ops = [
        Op::SendTo {
            to: sa(OTHER_DNS, 53),
            data: "query-a".into(),
            reply: true,
        },
        Op::SendTo {
            to: sa(TARGET, 53),
            data: "query-b".into(),
            reply: true,
        },
        Op::SendTo {
            to: sa(PROXY_ADDR, DNS_PORT),
            data: "query-c".into(),
            reply: true,
        },
    ];
    let report = world.probe(&ops, Placement::UserNsRoot).expect("probe");
    let o = &report.outcomes;
    assert!(o.iter().all(|x| x.ok), "{o:?}");
    assert_eq!(
        o[0].detail,
        format!("from={OTHER_DNS}:53 reply=dns-reply:query-a")
    );
    assert_eq!(
        o[1].detail,
        format!("from={TARGET}:53 reply=dns-reply:query-b")
    );
    assert_eq!(
        o[2].detail,
        format!("from={PROXY_ADDR}:{DNS_PORT} reply=dns-reply:query-c")
    );
    // The stand-in records a query just after answering it.
    let queries: Vec<_> = world
        .proxy
        .arrivals_until(|a| a.iter().filter(|a| a.udp).count() >= 3)
        .into_iter()
        .filter(|a| a.udp)
        .map(|a| a.data)
        .collect();
    assert_eq!(queries.len(), 3, "{queries:?}");
    assert!(
        world.recorder.seen().is_empty(),
        "reached the internet: {:?}",
        world.recorder.seen()
    );
    assert_eq!(fence.counters().expect("counters").redirected_dns, 2);
    fence.detach().expect("detach");
}

#[test]
fn loopback_stays_reachable_and_connected_udp_dns_and_sendmmsg_go_to_the_filter() {
    require_privilege!();
    let world = World::build().expect("world");
    let fence = Fence::attach(
        &world.cgroup.path,
        world.fence_config(3, OtherTcp::Deny),
        &world.pin_dir(),
    )
    .expect("attach");
    // A service of the job's own, on the runner's loopback.
    let local = world
        .runner
        .run(|| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("netns")
        .expect("bind");
    let local_addr = local.local_addr().expect("addr");
    let accepting = std::thread::spawn(move || local.accept().map(|(_, peer)| peer));
    let ops = [
        Op::Connect {
            to: local_addr,
            send: String::new(),
        },
        // glibc's resolver connects its UDP socket and checks where answers come from.
        Op::UdpConnect {
            to: sa(OTHER_DNS, 53),
            reply: true,
        },
        Op::Sendmmsg {
            to: vec![sa(OTHER_DNS, 53), sa(TARGET, 53)],
        },
    ];
    let report = world.probe(&ops, Placement::UserNsRoot).expect("probe");
    let o = &report.outcomes;
    assert!(o.iter().all(|x| x.ok), "{o:?}");
    assert!(
        o[0].detail.contains(&format!("peer={local_addr}")),
        "{}",
        o[0].detail
    );
    assert!(accepting.join().expect("join").is_ok());
    assert_eq!(
        o[1].detail,
        format!("from={OTHER_DNS}:53 peer={OTHER_DNS}:53 reply=dns-reply:udp-connect")
    );
    assert_eq!(o[2].detail, "sent=2");
    let queries: Vec<_> = world
        .proxy
        .arrivals_until(|a| a.iter().filter(|a| a.udp).count() >= 3)
        .into_iter()
        .filter(|a| a.udp)
        .map(|a| String::from_utf8_lossy(&a.data).into_owned())
        .collect();
    assert_eq!(queries, ["udp-connect", "sendmmsg", "sendmmsg"]);
    assert!(
        world.recorder.seen().is_empty(),
        "{:?}",
        world.recorder.seen()
    );
    let counters = fence.counters().expect("counters");
    assert_eq!(counters.redirected_dns, 3);
    assert_eq!(counters.denied_total(), 0);
    fence.detach().expect("detach");
}
