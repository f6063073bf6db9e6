//! Deciding whether a privileged test can run here.
//!
//! Tests that need root, namespaces, cgroups or eBPF are real tests. Where the privilege is
//! missing they skip with a printed reason, except when the environment variable `CI` is
//! set: CI runs as root, so a skip there means the test did not do its job, and it fails.

use std::path::Path;

/// Why a privileged test cannot run on this machine, or `None` when it can.
pub fn missing_privilege() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (namespaces, cgroups, eBPF)".to_owned());
    }
    if !Path::new("/proc/self/ns/user").exists() {
        return Some("kernel has no user namespaces".to_owned());
    }
    let v2 = [
        "/sys/fs/cgroup/cgroup.controllers",
        "/sys/fs/cgroup/unified/cgroup.procs",
    ];
    if !v2.iter().any(|p| Path::new(p).exists()) {
        return Some("no cgroup v2 hierarchy mounted".to_owned());
    }
    None
}

/// Returns true when the calling test may go on. Otherwise prints why it is skipped and
/// returns false, or panics when `CI` is set (a skip in CI is a failure).
pub fn privileged(test: &str) -> bool {
    match missing_privilege() {
        None => true,
        Some(reason) => {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: cannot run here ({reason}) and CI is set: a skip is a failure");
            }
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
    }
}

/// Early return from a test that cannot run here (see [`privileged`]).
#[macro_export]
macro_rules! require_privilege {
    () => {
        if !$crate::privilege::privileged(module_path!()) {
            return;
        }
    };
}
