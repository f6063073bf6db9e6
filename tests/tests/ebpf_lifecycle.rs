//! A fence's life: attached for the runner's lifetime, still there when the loader is
//! SIGKILLed (its links are pinned, its tc filter belongs to the veth), and gone,
//! programs, maps and links freed, after detach or reap. Also: the original-destination map is usable by an unprivileged
//! process that was handed its fd (the proxy runs without privileges).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use egress_ebpf::{pinned_ids, reap, still_loaded, Fence, ObjectIds, OtherTcp};
use runner_agent_tests::fence::{FenceConfigJson, Fenced, Op, Placement, World, TARGET};
use runner_agent_tests::require_privilege;

#[test]
#[ignore = "entry point of the probe process started by the fence tests"]
fn fence_probe() {
    runner_agent_tests::fence::probe_main();
}

/// 11 cgroup links, 5 maps. The tc program is a netlink filter on the veth: no pin.
const PINS: usize = 16;

/// `tc -n <host> filter <verb> dev vrun ingress` on the world's host-side veth; its stdout.
fn tc_filter(world: &World, verb: &str) -> String {
    let out = std::process::Command::new("tc")
        .args([
            "-n",
            &world.host.name,
            "filter",
            verb,
            "dev",
            "vrun",
            "ingress",
        ])
        .output()
        .expect("run tc");
    assert!(out.status.success(), "tc filter {verb}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// BPF filters on the ingress of the world's host-side veth, as `tc` lists them.
fn tc_filters(world: &World) -> usize {
    tc_filter(world, "show")
        .lines()
        // One header line per priority, then one line per filter, with its handle.
        .filter(|line| line.contains(" bpf ") && line.contains(" handle "))
        .count()
}

/// Removes every filter from the ingress of the world's host-side veth.
fn remove_tc_filters(world: &World) {
    tc_filter(world, "del");
}

fn wait_freed(ids: &ObjectIds) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = still_loaded(ids);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still in the kernel after 10 s: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn detach_removes_every_program_map_and_link() {
    require_privilege!();
    let world = World::build().expect("world");
    let pin_dir = world.pin_dir();
    let mut fence = Fence::attach(
        &world.cgroup.path,
        world.fence_config(20, OtherTcp::Deny),
        &pin_dir,
    )
    .expect("attach");
    let ifindex = world.host_ifindex;
    fence = world
        .host
        .run(move || fence.attach_tc(ifindex).map(|()| fence))
        .expect("netns")
        .expect("tc");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let denials = {
        let _guard = rt.enter();
        fence.denials().expect("denials")
    };
    let orig = fence.original_destinations().expect("orig");
    let ids = fence.object_ids().expect("ids");
    assert_eq!(ids.links.len(), 11, "{ids:?}");
    assert_eq!(
        ids.programs.len(),
        12,
        "11 cgroup programs and the tc one: {ids:?}"
    );
    assert_eq!(ids.maps.len(), 5, "{ids:?}");
    assert_eq!(still_loaded(&ids), ids, "all live while attached");
    assert_eq!(std::fs::read_dir(&pin_dir).expect("pins").count(), PINS);
    assert_eq!(
        tc_filters(&world),
        1,
        "one BPF filter on the host-side veth"
    );

    // From the namespace holding the veth, as attach_tc: detach removes the filter too.
    world
        .host
        .run(move || fence.detach())
        .expect("netns")
        .expect("detach");
    assert!(!pin_dir.exists(), "pin dir removed");
    assert_eq!(tc_filters(&world), 0, "tc filter removed");
    // Links go at once; programs and maps when the last fd (the readers) is closed.
    let links_only = ObjectIds {
        links: ids.links.clone(),
        ..ObjectIds::default()
    };
    wait_freed(&links_only);
    drop((denials, orig));
    wait_freed(&ids);
    // And the cgroup is open again: the runner reaches the internet unfenced.
    let o = world
        .connect(SocketAddr::from((TARGET, 5432)), Placement::HostRoot)
        .expect("probe");
    assert!(o.ok, "{o:?}");
}

#[test]
fn the_fence_outlives_a_killed_loader_and_reap_removes_it() {
    require_privilege!();
    let world = World::build().expect("world");
    let pin_dir = world.pin_dir();
    let config = FenceConfigJson {
        runner_id: 21,
        deny_other_tcp: true,
    };
    let ops = [
        Op::AttachFence {
            cgroup: world.cgroup.path.clone(),
            pin_dir: pin_dir.clone(),
            config,
            tc: Some((world.host.name.clone(), world.host_ifindex)),
        },
        Op::WaitStdin,
    ];
    let mut loader = world
        .spawn_probe(&ops, Placement::Unfenced)
        .expect("loader");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&pin_dir).map(|d| d.count()).unwrap_or(0) < PINS
        || tc_filters(&world) < 1
    {
        assert!(Instant::now() < deadline, "loader never attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    loader.kill().expect("SIGKILL the loader");
    assert_eq!(tc_filters(&world), 1, "the tc filter outlives its loader");
    let ids = pinned_ids(&pin_dir).expect("ids");
    assert_eq!(
        still_loaded(&ids),
        ids,
        "everything still loaded after the loader died"
    );

    let to = SocketAddr::from((TARGET, 5432));
    let o = world.connect(to, Placement::UserNsRoot).expect("probe");
    assert_eq!((o.ok, o.errno), (false, libc::EPERM), "still fenced: {o:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        world.recorder.seen().is_empty(),
        "{:?}",
        world.recorder.seen()
    );

    reap(&pin_dir).expect("reap");
    assert!(!pin_dir.exists());
    // The agent's reaper deletes the veth, and the tc filter with it; this world keeps
    // its veth, so the filter is removed by hand.
    assert_eq!(
        tc_filters(&world),
        1,
        "reap leaves the veth's filter to the veth"
    );
    remove_tc_filters(&world);
    wait_freed(&ids);
    let o = world.connect(to, Placement::UserNsRoot).expect("probe");
    assert!(o.ok, "open again after reap: {o:?}");
    assert!(world
        .recorder
        .seen()
        .iter()
        .any(|s| s.dst == IpAddr::V4(TARGET)));
    // Reaping what is already gone is not an error.
    reap(&pin_dir).expect("second reap");
}

#[test]
fn original_destinations_are_readable_by_an_unprivileged_process_holding_the_fd() {
    require_privilege!();
    let f = Fenced::new(22, OtherTcp::HttpListener, false).expect("fenced world");
    let o = f
        .world
        .connect(SocketAddr::from((TARGET, 443)), Placement::UserNsRoot)
        .expect("probe");
    let detail = &o.detail;
    let peer: SocketAddr = detail
        .split(' ')
        .find_map(|w| w.strip_prefix("local="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no local address in {detail}"));
    let fd = f.fence().orig_dst_fd().expect("fd");
    // Inherited across exec on purpose (the agent would pass it the same way).
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clear CLOEXEC");
    let ops = [
        Op::Bpf,
        Op::LookupOrigDst {
            fd: fd.as_raw_fd(),
            peer,
        },
    ];
    let report = f
        .world
        .probe(&ops, Placement::Unprivileged)
        .expect("unprivileged probe");
    let o = &report.outcomes;
    // The process is really unprivileged for bpf(): it cannot create maps or walk ids.
    assert_eq!((o[0].ok, o[0].errno), (false, libc::EPERM), "{:?}", o[0]);
    assert_eq!(
        o[1].detail,
        format!("uid=65534 orig=Some({TARGET}:443)"),
        "{:?}",
        o[1]
    );
}
