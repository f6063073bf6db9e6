//! Deleting a runner's veth (`runner_agent::network::remove`), whose netlink request is
//! sent by a child process of its own: the pair is gone when it returns, a refusal by the
//! kernel comes back as an error naming the device, and a device already gone is not an
//! error. A veth whose alias names another owner (another agent's runner of the same
//! name) is neither deleted nor reported as left behind. Everything happens in a network
//! namespace made for the test.

use runner_agent::network::{self, NetworkError};
use runner_agent_tests::fence::Netns;
use runner_agent_tests::netbed::NsRuntime;
use runner_agent_tests::require_privilege;

fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// The owner the test's calls act for.
const MINE: &str = "runner-agent /run/test/scratch/0";

#[test]
fn remove_deletes_the_pair_reports_refusals_and_ignores_what_is_gone() {
    require_privilege!();
    let ns = Netns::create("netrm-").unwrap();
    for (name, peer, alias) in [
        ("rmtest0", "rmtest1", None),
        ("mine0", "mine1", Some(MINE)),
        (
            "other0",
            "other1",
            Some("runner-agent /elsewhere/scratch/0"),
        ),
    ] {
        ns.ip(&["link", "add", name, "type", "veth", "peer", "name", peer])
            .unwrap();
        if let Some(alias) = alias {
            ns.ip(&["link", "set", name, "alias", alias]).unwrap();
        }
    }
    let runtime = NsRuntime::start(&ns.name).expect("runtime in the namespace");
    let (removed, left, again, refused) = runtime.run(async {
        assert!(exists("rmtest0") && exists("rmtest1"), "no veth to delete");
        // Without an alias (an older agent's, or one never named): ours.
        let removed = network::remove("rmtest0", MINE).await;
        let left = (exists("rmtest0"), exists("rmtest1"));
        let again = network::remove("rmtest0", MINE).await;
        // The kernel does not delete a namespace's loopback: the child's answer is the
        // only way this error can come back.
        let refused = network::remove("lo", MINE).await;
        (removed, left, again, refused)
    });
    removed.expect("removing the veth");
    assert_eq!(left, (false, false), "the pair is still there");
    again.expect("removing a veth that is gone");
    match refused {
        Err(NetworkError::Delete { name, source }) => {
            assert_eq!(name, "lo");
            assert_eq!(
                source.raw_os_error(),
                Some(libc::EOPNOTSUPP),
                "unexpected refusal: {source}"
            );
        }
        other => panic!("deleting lo: {other:?}"),
    }

    // Another owner's veth of the same name stays, and is not reported as ours.
    let (other_seen, other_removed, other_left, mine_seen, mine_removed, mine_left) =
        runtime.run(async {
            let other_seen = network::exists("other0", MINE).unwrap();
            let other_removed = network::remove("other0", MINE).await;
            let other_left = exists("other0");
            let mine_seen = network::exists("mine0", MINE).unwrap();
            let mine_removed = network::remove("mine0", MINE).await;
            let mine_left = exists("mine0");
            (
                other_seen,
                other_removed,
                other_left,
                mine_seen,
                mine_removed,
                mine_left,
            )
        });
    assert!(!other_seen, "another owner's veth was reported as ours");
    other_removed.expect("leaving another owner's veth");
    assert!(other_left, "another owner's veth was deleted");
    assert!(mine_seen, "our own veth was not seen");
    mine_removed.expect("removing our veth");
    assert!(!mine_left, "our veth is still there");
}
