//! Deleting a runner's veth (`runner_agent::network::remove`), whose netlink request is
//! sent by a child process of its own: the pair is gone when it returns, a refusal by the
//! kernel comes back as an error naming the device, and a device already gone is not an
//! error. Everything happens in a network namespace made for the test.

use runner_agent::network::{self, NetworkError};
use runner_agent_tests::fence::Netns;
use runner_agent_tests::netbed::NsRuntime;
use runner_agent_tests::require_privilege;

fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

#[test]
fn remove_deletes_the_pair_reports_refusals_and_ignores_what_is_gone() {
    require_privilege!();
    let ns = Netns::create("netrm-").unwrap();
    ns.ip(&[
        "link", "add", "rmtest0", "type", "veth", "peer", "name", "rmtest1",
    ])
    .unwrap();
    let runtime = NsRuntime::start(&ns.name).expect("runtime in the namespace");
    let (removed, left, again, refused) = runtime.run(async {
        assert!(exists("rmtest0") && exists("rmtest1"), "no veth to delete");
        let removed = network::remove("rmtest0").await;
        let left = (exists("rmtest0"), exists("rmtest1"));
        let again = network::remove("rmtest0").await;
        // The kernel does not delete a namespace's loopback: the child's answer is the
        // only way this error can come back.
        let refused = network::remove("lo").await;
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
}
