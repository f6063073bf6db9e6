//! The system call filter every process of a sandbox runs under.
//!
//! A deny-list, not an allow-list: jobs run arbitrary build tools, and the sandbox's real
//! walls are the namespaces (owned by the host's user namespace, so root inside holds no
//! capability over them), the cgroup and the eBPF programs. The filter removes the calls
//! that reach the kernel or the host in ways a build never needs, following Docker's and
//! Firecracker's defaults:
//!
//! - kernel code and state: `bpf`, `perf_event_open`, `kexec_*`, `init_module`,
//!   `finit_module`, `delete_module`, `reboot`, `swapon`/`swapoff`, `syslog`, `acct`,
//!   `iopl`/`ioperm`, clock setting, `lookup_dcookie`, `quotactl`;
//! - the kernel keyring (`keyctl`, `add_key`, `request_key`), which is not namespaced;
//! - handle-based opens (`open_by_handle_at`, the "shocker" escape) and `name_to_handle_at`;
//! - mounts and new namespaces (`mount`, `umount2`, `pivot_root`, the new mount API,
//!   `unshare`, `setns`, and `clone` with any `CLONE_NEW*` flag): a job cannot build a
//!   namespace of its own to hide in;
//! - `userfaultfd` and `io_uring_*` (large attack surface, and io_uring operations are
//!   not seen by seccomp at all).
//!
//! Denied calls fail with `EPERM`; `clone3` fails with `ENOSYS` because its flags live in
//! memory a filter cannot read, and C libraries fall back to `clone` on `ENOSYS`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules did not compile to BPF.
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    /// This architecture is not supported.
    #[error("seccomp filter not available for this architecture")]
    Arch,
}

/// Calls that fail with `EPERM` whatever their arguments.
const DENIED: &[libc::c_long] = &[
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_lookup_dcookie,
    libc::SYS_quotactl,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// Every `CLONE_NEW*` flag: `clone` with any of them is denied.
const CLONE_NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::Arch)
    }
}

/// Builds the two programs: the `EPERM` deny-list and the `clone3` → `ENOSYS` rule.
pub fn build() -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .map(|&nr| (i64::from(nr), Vec::new()))
        .collect();
    // On x86_64 the flags are clone's first argument (see clone(2), "C library/kernel
    // differences"); a rule per flag, any one matching denies the call.
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag as u64),
                flag as u64,
            )?;
            SeccompRule::new(vec![cond])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(i64::from(libc::SYS_clone), clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(i64::from(libc::SYS_clone3), Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(vec![deny.try_into()?, clone3.try_into()?])
}

/// Installs the filters on the calling thread; they are inherited by every child and
/// cannot be removed. `no_new_privs` must be set first.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter(program)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let programs = build().unwrap();
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn deny_list_has_no_duplicates() {
        let mut seen = std::collections::BTreeSet::new();
        for nr in DENIED {
            assert!(seen.insert(nr), "syscall {nr} listed twice");
        }
    }
}
