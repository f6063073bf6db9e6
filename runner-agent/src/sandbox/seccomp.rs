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
//!   not seen by seccomp at all);
//! - the sandbox init's limits and scheduling: `prlimit64`, `sched_setscheduler`,
//!   `sched_setparam`, `sched_setattr` and `sched_setaffinity` on pid 1, and
//!   `setpriority` and `ioprio_set` on pid 1, process group 1 or a whole user. Init has
//!   the job's credentials inside its user namespace, which is all these calls ask: a
//!   job that lowered init's descriptor limit had its next step start with init's
//!   control socket as stdin (it forged init's messages and made the agent read one
//!   endless line), and one that made init SCHED_IDLE at nice 19 stretched a 2 s step
//!   timeout (which init enforces) to 20 s. A job may still set its own limits and
//!   priorities and those of its other processes.
//!
//! Denied calls never run: the filter hands them to the sandbox init as seccomp user
//! notifications (seccomp_unotify(2)), and init answers each with `EPERM` and reports it
//! to the agent, so every attempt lands in the audit log with the process that made it.
//! Raw internet sockets are intercepted the same way (the kernel would refuse them
//! anyway, for want of CAP_NET_RAW, but silently), and so is every socket family other
//! than AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (see [`ALLOWED_SOCKET_FAMILIES`]:
//! AF_VSOCK needs no capability and bypasses the network namespace altogether), and every
//! netlink protocol but route, sock_diag and generic ([`ALLOWED_NETLINK_PROTOCOLS`]). `clone3` fails with `ENOSYS` because
//! its flags live in memory a filter cannot read, and C libraries fall back to `clone` on
//! `ENOSYS`. If init is gone, intercepted calls fail with `ENOSYS`: never run.
//!
//! The rules are written in the native ABI's numbers, so every call made through another
//! ABI is intercepted whole, before them ([`foreign_abi_prefix`]): 32-bit calls (`int
//! 0x80` on x86_64, AArch32 on arm64), whose numbers mean other calls, and on x86_64 the
//! x32 ABI, whose numbers are the native ones plus `__X32_SYSCALL_BIT` and which kernels
//! built with x32 support accept under the native architecture tag (seccompiler's rules
//! would match none of them, so `bpf`, `mount` or `socket(AF_VSOCK)` would pass).
//! Before, seccompiler's architecture check killed a 32-bit caller outright, which left
//! no audit record; x32 calls were not checked at all.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
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
    /// The notifying filter could not be installed.
    #[error("cannot install the notifying seccomp filter: {0}")]
    Listener(std::io::Error),
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

/// seccompiler has no `SECCOMP_RET_USER_NOTIF` action: the filter is built with this
/// otherwise unused `SECCOMP_RET_TRACE` value as a stand-in, and every `ret` of it is
/// rewritten afterwards (see [`to_user_notif`]).
const NOTIFY_STAND_IN: SeccompAction = SeccompAction::Trace(0x5eed);

/// `BPF_RET | BPF_K`: a classic BPF "return constant" instruction.
const BPF_RET_K: u16 = 0x06;

/// The two programs, in install order: the notifying deny-list (its listener reports
/// every attempt) and the `clone3` → `ENOSYS` rule.
pub struct Filters {
    /// Deny-list; answered by the supervisor with `EPERM`.
    pub notify: BpfProgram,
    /// `clone3` fails with `ENOSYS`.
    pub clone3: BpfProgram,
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

/// A condition on an `int` argument: only its low 32 bits, which are all the kernel
/// reads. (A 64-bit comparison could be dodged by setting the register's upper half.)
fn int_condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// The sandbox init's pid inside.
const INIT_PID: u64 = 1;
/// Calls whose first argument is a pid, refused on [`INIT_PID`] (see the module docs).
const ON_INIT_BY_PID: [i64; 5] = [
    libc::SYS_prlimit64,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setaffinity,
];
/// setpriority(2)'s `which`.
const PRIO_PROCESS: u64 = 0;
const PRIO_PGRP: u64 = 1;
const PRIO_USER: u64 = 2;
/// ioprio_set(2)'s `which`.
const IOPRIO_WHO_PROCESS: u64 = 1;
const IOPRIO_WHO_PGRP: u64 = 2;
const IOPRIO_WHO_USER: u64 = 3;

/// socket(2)'s type argument without SOCK_NONBLOCK / SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u64 = 0xf;

/// The socket families a job may create: AF_UNIX (local), AF_INET and AF_INET6 (which
/// the eBPF fence sees and sends to the proxy) and AF_NETLINK (getaddrinfo, `ip` and
/// `ss` use it; in the runner's network namespace it shows only the runner's own
/// interfaces, and changing anything needs CAP_NET_ADMIN over that namespace, which the
/// job does not hold). Every other family is refused and recorded: the fence's hooks see
/// only internet sockets, and some families need no capability at all. AF_VSOCK, for
/// one, talks to the hypervisor on a VM host, outside every network namespace and
/// every egress rule; AF_ALG, AF_XDP, AF_PACKET, Bluetooth, CAN, TIPC, RDS and the rest
/// are kernel surface no build needs.
const ALLOWED_SOCKET_FAMILIES: [i32; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// The netlink protocols a job may open: NETLINK_ROUTE (addresses and routes of the
/// runner's own namespace: getaddrinfo, `ip`), NETLINK_SOCK_DIAG (`ss`) and
/// NETLINK_GENERIC. Others are refused and recorded: NETLINK_KOBJECT_UEVENT would hand
/// the job the host's device events (the runner's network namespace belongs to the
/// host's user namespace, so the kernel's filter lets them through), and audit, xfrm,
/// connector, netfilter and the rest are kernel surface a build does not need.
const ALLOWED_NETLINK_PROTOCOLS: [i32; 3] = [
    libc::NETLINK_ROUTE,
    libc::NETLINK_SOCK_DIAG,
    libc::NETLINK_GENERIC,
];

/// `socket(family, SOCK_RAW, _)`, whatever the type flags.
fn raw_rule(family: i32) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(vec![
        int_condition(0, SeccompCmpOp::Eq, family as u64)?,
        int_condition(
            1,
            SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK),
            libc::SOCK_RAW as u64,
        )?,
    ])?)
}

/// `socket(family, SOCK_DGRAM, protocol)`, whatever the type flags.
fn icmp_rule(family: i32, protocol: i32) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(vec![
        int_condition(0, SeccompCmpOp::Eq, family as u64)?,
        int_condition(
            1,
            SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK),
            libc::SOCK_DGRAM as u64,
        )?,
        int_condition(2, SeccompCmpOp::Eq, protocol as u64)?,
    ])?)
}

/// Builds the filters.
pub fn build() -> Result<Filters, SeccompError> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    // On x86_64 the flags are clone's first argument (see clone(2), "C library/kernel
    // differences"); a rule per flag, any one matching denies the call.
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            SeccompRule::new(vec![condition(0, SeccompCmpOp::MaskedEq(flag), flag)?])
                .map_err(SeccompError::from)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    // Init's limits and scheduling (see the module docs). pid_t and id_t are ints.
    for nr in ON_INIT_BY_PID {
        let pid_is_init = int_condition(0, SeccompCmpOp::Eq, INIT_PID)?;
        rules.insert(nr, vec![SeccompRule::new(vec![pid_is_init])?]);
    }
    // setpriority(which, who, ...) and ioprio_set(which, who, ...): pid 1, process
    // group 1, or every process of a user (init has the job's uid).
    for (nr, process, group, user) in [
        (libc::SYS_setpriority, PRIO_PROCESS, PRIO_PGRP, PRIO_USER),
        (
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            IOPRIO_WHO_PGRP,
            IOPRIO_WHO_USER,
        ),
    ] {
        let mut on_init_or_user = Vec::new();
        for which in [process, group] {
            on_init_or_user.push(SeccompRule::new(vec![
                int_condition(0, SeccompCmpOp::Eq, which)?,
                int_condition(1, SeccompCmpOp::Eq, INIT_PID)?,
            ])?);
        }
        on_init_or_user.push(SeccompRule::new(vec![int_condition(
            0,
            SeccompCmpOp::Eq,
            user,
        )?])?);
        rules.insert(nr, on_init_or_user);
    }
    rules.insert(
        libc::SYS_socket,
        vec![
            // Any family outside ALLOWED_SOCKET_FAMILIES (see there for why).
            SeccompRule::new(
                ALLOWED_SOCKET_FAMILIES
                    .iter()
                    .map(|&family| int_condition(0, SeccompCmpOp::Ne, family as u64))
                    .collect::<Result<Vec<_>, _>>()?,
            )?,
            // Raw internet sockets: the kernel refuses them anyway (root inside holds no
            // CAP_NET_RAW over the runner's network namespace); intercepting them here is
            // what puts the attempt in the audit log. (Netlink is always SOCK_RAW or
            // SOCK_DGRAM, hence the family in the rule.)
            raw_rule(libc::AF_INET)?,
            raw_rule(libc::AF_INET6)?,
            // Netlink protocols outside ALLOWED_NETLINK_PROTOCOLS (see there).
            SeccompRule::new(
                std::iter::once(int_condition(0, SeccompCmpOp::Eq, libc::AF_NETLINK as u64))
                    .chain(
                        ALLOWED_NETLINK_PROTOCOLS
                            .iter()
                            .map(|&protocol| int_condition(2, SeccompCmpOp::Ne, protocol as u64)),
                    )
                    .collect::<Result<Vec<_>, _>>()?,
            )?,
            // ICMP "ping" sockets (datagram ICMP): ping_group_range keeps them from the
            // job already; intercepted for the record, like raw sockets.
            icmp_rule(libc::AF_INET, libc::IPPROTO_ICMP)?,
            icmp_rule(libc::AF_INET6, libc::IPPROTO_ICMPV6)?,
        ],
    );
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, NOTIFY_STAND_IN, arch)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(Filters {
        notify: prefixed(
            foreign_abi_prefix(libc::SECCOMP_RET_USER_NOTIF),
            to_user_notif(deny.try_into()?),
        ),
        clone3: prefixed(
            foreign_abi_prefix(libc::SECCOMP_RET_ALLOW),
            clone3.try_into()?,
        ),
    })
}

/// `offsetof(struct seccomp_data, nr)`.
const DATA_NR: u32 = 0;
/// `offsetof(struct seccomp_data, arch)`.
const DATA_ARCH: u32 = 4;
/// `__AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE | EM_X86_64` from `<linux/audit.h>`.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
/// `__AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE | EM_AARCH64`.
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;
/// The 32-bit ABI this architecture also runs: `__AUDIT_ARCH_LE | EM_386` (`int 0x80`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_COMPAT: u32 = 0x4000_0003;
/// `__AUDIT_ARCH_LE | EM_ARM` (AArch32 processes on arm64).
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_COMPAT: u32 = 0x4000_0028;
/// `__X32_SYSCALL_BIT` from `<asm/unistd.h>`: set in the number of every x32 call.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `BPF_LD | BPF_W | BPF_ABS`: load a word of `seccomp_data`.
const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const BPF_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K` (unsigned).
const BPF_JGE_K: u16 = 0x35;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Instructions to put in front of a filter built from native rules: a call made through
/// the 32-bit ABI, or on x86_64 through x32, returns `foreign` at once; every other call
/// goes on to the filter, which still checks the architecture itself. The notifying
/// filter uses `SECCOMP_RET_USER_NOTIF` (refused and reported); the other filters
/// `SECCOMP_RET_ALLOW`, so that their own architecture check (kill) cannot override that
/// report (the kernel applies the strictest answer of all the filters).
fn foreign_abi_prefix(foreign: u32) -> Vec<sock_filter> {
    vec![
        insn(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
        // 32-bit ABI: answer. Otherwise skip the return.
        insn(BPF_JEQ_K, 0, 1, AUDIT_ARCH_COMPAT),
        insn(BPF_RET_K, 0, 0, foreign),
        // Not the native architecture either: on to the filter (which kills it).
        insn(BPF_JEQ_K, 0, 3, AUDIT_ARCH_NATIVE),
        insn(BPF_LD_W_ABS, 0, 0, DATA_NR),
        // x32 numbers (and any other number with that bit, none of them a native call).
        // On arm64 no native number reaches the bit either.
        insn(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, foreign),
    ]
}

/// `prefix` followed by `program`. Classic BPF jumps are relative and forward only, so
/// the program's own jumps are unchanged.
fn prefixed(prefix: Vec<sock_filter>, program: BpfProgram) -> BpfProgram {
    prefix.into_iter().chain(program).collect()
}

/// Rewrites every `ret NOTIFY_STAND_IN` into `ret SECCOMP_RET_USER_NOTIF`.
fn to_user_notif(mut program: BpfProgram) -> BpfProgram {
    let stand_in = u32::from(NOTIFY_STAND_IN);
    for insn in &mut program {
        if insn.code == BPF_RET_K && insn.k == stand_in {
            insn.k = libc::SECCOMP_RET_USER_NOTIF;
        }
    }
    program
}

/// Installs the filters on the calling thread (inherited by every child, irremovable)
/// and returns the listener of the notifying one. `no_new_privs` must be set first.
pub fn install(filters: &Filters) -> Result<std::os::fd::OwnedFd, SeccompError> {
    seccompiler::apply_filter(&filters.clone3)?;
    crate::sys::install_notifying_filter(&filters.notify)
        .map_err(|e| SeccompError::Listener(e.into()))
}

/// What an intercepted call was, for the audit log: `bpf()`, `socket(AF_PACKET)`,
/// `clone(CLONE_NEWUSER)`, `x32 socket(AF_VSOCK)`, `32-bit system call 102`... `arch` is
/// the `AUDIT_ARCH_*` value the kernel gave with the call.
pub fn describe(arch: u32, nr: i64, args: &[u64; 6]) -> String {
    if arch == AUDIT_ARCH_COMPAT {
        // Another numbering altogether; the number is what the record can give.
        return format!("32-bit system call {nr}");
    }
    if arch != AUDIT_ARCH_NATIVE {
        return format!("system call {nr} of architecture {arch:#x}");
    }
    if nr >= 0 && nr as u64 & u64::from(X32_SYSCALL_BIT) != 0 {
        return format!(
            "x32 {}",
            describe_native(nr & !i64::from(X32_SYSCALL_BIT), args)
        );
    }
    describe_native(nr, args)
}

/// [`describe`] for a call of the native ABI.
fn describe_native(nr: i64, args: &[u64; 6]) -> String {
    let Some(name) = syscall_name(nr) else {
        // Not one the rules name: only a call through another ABI gets here.
        return format!("system call {nr}");
    };
    if nr == libc::SYS_socket {
        const FAMILIES: &[(i32, &str)] = &[
            (libc::AF_UNIX, "AF_UNIX"),
            (libc::AF_INET, "AF_INET"),
            (libc::AF_INET6, "AF_INET6"),
            (libc::AF_NETLINK, "AF_NETLINK"),
            (libc::AF_PACKET, "AF_PACKET"),
            (libc::AF_VSOCK, "AF_VSOCK"),
            (libc::AF_ALG, "AF_ALG"),
            (libc::AF_XDP, "AF_XDP"),
            (libc::AF_BLUETOOTH, "AF_BLUETOOTH"),
            (libc::AF_CAN, "AF_CAN"),
            (libc::AF_TIPC, "AF_TIPC"),
            (libc::AF_RDS, "AF_RDS"),
            (libc::AF_KEY, "AF_KEY"),
        ];
        // The kernel reads the int's low 32 bits; so does the filter.
        let number = args[0] as u32 as i32;
        let family = FAMILIES.iter().find(|(f, _)| *f == number).map_or_else(
            || format!("family {number}"),
            |(_, name)| (*name).to_owned(),
        );
        let kind = match ((args[1] & SOCK_TYPE_MASK) as i32, args[2] as i32) {
            (libc::SOCK_RAW, _) => ", SOCK_RAW",
            (libc::SOCK_DGRAM, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => ", ICMP",
            _ => "",
        };
        if number == libc::AF_NETLINK {
            return format!("socket({family}{kind}, protocol {})", args[2] as u32);
        }
        return format!("socket({family}{kind})");
    }
    if ON_INIT_BY_PID.contains(&nr) {
        return format!("{name}(pid {})", args[0] as u32 as i32);
    }
    if nr == libc::SYS_setpriority || nr == libc::SYS_ioprio_set {
        return format!("{name}(which {}, who {})", args[0] as u32, args[1] as u32);
    }
    if nr == libc::SYS_clone || nr == libc::SYS_unshare {
        let flags: Vec<&str> = [
            (libc::CLONE_NEWUSER, "CLONE_NEWUSER"),
            (libc::CLONE_NEWNS, "CLONE_NEWNS"),
            (libc::CLONE_NEWPID, "CLONE_NEWPID"),
            (libc::CLONE_NEWNET, "CLONE_NEWNET"),
            (libc::CLONE_NEWUTS, "CLONE_NEWUTS"),
            (libc::CLONE_NEWIPC, "CLONE_NEWIPC"),
            (libc::CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
        ]
        .iter()
        .filter(|(flag, _)| args[0] & (*flag as u64) != 0)
        .map(|(_, name)| *name)
        .collect();
        return format!("{name}({})", flags.join("|"));
    }
    format!("{name}()")
}

fn syscall_name(nr: i64) -> Option<&'static str> {
    const NAMES: &[(libc::c_long, &str)] = &[
        (libc::SYS_bpf, "bpf"),
        (libc::SYS_perf_event_open, "perf_event_open"),
        (libc::SYS_kexec_load, "kexec_load"),
        (libc::SYS_kexec_file_load, "kexec_file_load"),
        (libc::SYS_init_module, "init_module"),
        (libc::SYS_finit_module, "finit_module"),
        (libc::SYS_delete_module, "delete_module"),
        (libc::SYS_reboot, "reboot"),
        (libc::SYS_swapon, "swapon"),
        (libc::SYS_swapoff, "swapoff"),
        (libc::SYS_syslog, "syslog"),
        (libc::SYS_acct, "acct"),
        (libc::SYS_settimeofday, "settimeofday"),
        (libc::SYS_clock_settime, "clock_settime"),
        (libc::SYS_clock_adjtime, "clock_adjtime"),
        (libc::SYS_adjtimex, "adjtimex"),
        (libc::SYS_lookup_dcookie, "lookup_dcookie"),
        (libc::SYS_quotactl, "quotactl"),
        (libc::SYS_keyctl, "keyctl"),
        (libc::SYS_add_key, "add_key"),
        (libc::SYS_request_key, "request_key"),
        (libc::SYS_open_by_handle_at, "open_by_handle_at"),
        (libc::SYS_name_to_handle_at, "name_to_handle_at"),
        (libc::SYS_mount, "mount"),
        (libc::SYS_umount2, "umount2"),
        (libc::SYS_pivot_root, "pivot_root"),
        (libc::SYS_open_tree, "open_tree"),
        (libc::SYS_move_mount, "move_mount"),
        (libc::SYS_fsopen, "fsopen"),
        (libc::SYS_fsconfig, "fsconfig"),
        (libc::SYS_fsmount, "fsmount"),
        (libc::SYS_fspick, "fspick"),
        (libc::SYS_mount_setattr, "mount_setattr"),
        (libc::SYS_unshare, "unshare"),
        (libc::SYS_setns, "setns"),
        (libc::SYS_userfaultfd, "userfaultfd"),
        (libc::SYS_io_uring_setup, "io_uring_setup"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_io_uring_register, "io_uring_register"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_socket, "socket"),
        (libc::SYS_prlimit64, "prlimit64"),
        (libc::SYS_sched_setscheduler, "sched_setscheduler"),
        (libc::SYS_sched_setparam, "sched_setparam"),
        (libc::SYS_sched_setattr, "sched_setattr"),
        (libc::SYS_sched_setaffinity, "sched_setaffinity"),
        (libc::SYS_setpriority, "setpriority"),
        (libc::SYS_ioprio_set, "ioprio_set"),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_iopl, "iopl"),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_ioperm, "ioperm"),
    ];
    NAMES.iter().find(|(n, _)| *n == nr).map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_notify_instead_of_tracing() {
        let filters = build().unwrap();
        assert!(!filters.notify.is_empty() && !filters.clone3.is_empty());
        let stand_in = u32::from(NOTIFY_STAND_IN);
        assert!(filters
            .notify
            .iter()
            .all(|i| !(i.code == BPF_RET_K && i.k == stand_in)));
        assert!(filters
            .notify
            .iter()
            .any(|i| i.code == BPF_RET_K && i.k == libc::SECCOMP_RET_USER_NOTIF));
    }

    #[test]
    fn intercepted_calls_are_described() {
        let mut args = [0u64; 6];
        args[0] = libc::AF_PACKET as u64;
        args[1] = libc::SOCK_RAW as u64;
        assert_eq!(
            describe(AUDIT_ARCH_NATIVE, libc::SYS_socket, &args),
            "socket(AF_PACKET, SOCK_RAW)"
        );
        args[0] = (libc::CLONE_NEWUSER | libc::CLONE_NEWNET) as u64;
        assert_eq!(
            describe(AUDIT_ARCH_NATIVE, libc::SYS_unshare, &args),
            "unshare(CLONE_NEWUSER|CLONE_NEWNET)"
        );
        assert_eq!(describe(AUDIT_ARCH_NATIVE, libc::SYS_bpf, &args), "bpf()");
        assert_eq!(
            describe(AUDIT_ARCH_NATIVE, libc::SYS_prlimit64, &[1, 7, 0, 0, 0, 0]),
            "prlimit64(pid 1)"
        );
        assert_eq!(
            describe(
                AUDIT_ARCH_NATIVE,
                libc::SYS_setpriority,
                &[2, 0, 19, 0, 0, 0]
            ),
            "setpriority(which 2, who 0)"
        );
        // Families are named by the int's low half, as the kernel reads it.
        args[0] = (1u64 << 32) | libc::AF_VSOCK as u64;
        args[1] = libc::SOCK_STREAM as u64;
        assert_eq!(
            describe(AUDIT_ARCH_NATIVE, libc::SYS_socket, &args),
            "socket(AF_VSOCK)"
        );
        args[0] = 99;
        assert_eq!(
            describe(AUDIT_ARCH_NATIVE, libc::SYS_socket, &args),
            "socket(family 99)"
        );
        args[0] = libc::AF_NETLINK as u64;
        args[1] = libc::SOCK_RAW as u64;
        args[2] = libc::NETLINK_KOBJECT_UEVENT as u64;
        assert_eq!(
            describe(AUDIT_ARCH_NATIVE, libc::SYS_socket, &args),
            "socket(AF_NETLINK, SOCK_RAW, protocol 15)"
        );
    }

    #[test]
    fn calls_through_other_abis_are_described_as_such() {
        let mut args = [0u64; 6];
        args[0] = libc::AF_VSOCK as u64;
        let x32 = i64::from(X32_SYSCALL_BIT);
        assert_eq!(
            describe(AUDIT_ARCH_NATIVE, x32 | libc::SYS_socket, &args),
            "x32 socket(AF_VSOCK)"
        );
        assert_eq!(
            describe(AUDIT_ARCH_NATIVE, x32 | 7, &args),
            "x32 system call 7"
        );
        assert_eq!(
            describe(AUDIT_ARCH_COMPAT, 359, &args),
            "32-bit system call 359"
        );
        assert_eq!(
            describe(0x1234, 1, &args),
            "system call 1 of architecture 0x1234"
        );
    }

    #[test]
    fn the_foreign_abi_prefix_keeps_the_filters_jumps_in_range() {
        // Every jump of the prefix lands inside the prefix or on the filter's first
        // instruction, and the prefix ends in a return, so nothing falls through wrongly.
        let prefix = foreign_abi_prefix(libc::SECCOMP_RET_USER_NOTIF);
        for (at, insn) in prefix.iter().enumerate() {
            if insn.code & 0x07 == 0x05 {
                for offset in [insn.jt, insn.jf] {
                    assert!(at + 1 + offset as usize <= prefix.len(), "jump at {at}");
                }
            }
        }
        assert_eq!(prefix.last().map(|i| i.code), Some(BPF_RET_K));
        let filters = build().unwrap();
        assert_eq!(filters.notify[..prefix.len()], prefix[..]);
        assert_eq!(
            filters.clone3[..prefix.len()],
            foreign_abi_prefix(libc::SECCOMP_RET_ALLOW)[..]
        );
    }

    #[test]
    fn deny_list_has_no_duplicates() {
        let mut seen = std::collections::BTreeSet::new();
        for nr in DENIED {
            assert!(seen.insert(nr), "syscall {nr} listed twice");
        }
    }
}
