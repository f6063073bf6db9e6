//! egress-ebpf: the cgroup and tc programs that force a runner's traffic through the proxy.
//!
//! The C sources live in `bpf/` (`fence.bpf.c`, and `maps.h`, the single definition of
//! every map struct, mirrored in [`maps`]); `build.rs` compiles them with clang and
//! [`Fence`] loads and attaches them with aya. Requires Linux 6.6+, BTF, cgroup
//! v2, and root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN).
//!
//! # What a fenced runner can reach
//!
//! | what the job does | result |
//! | --- | --- |
//! | TCP to the proxy address on a listener port | allowed as is |
//! | TCP to port 53, any address (the proxy address, the runner's resolver, included) | redirected to the DNS filter (TCP) |
//! | TCP to the proxy address, any other port | EPERM + denial |
//! | TCP to anything else, port 443 | redirected to the transparent TLS listener |
//! | TCP to anything else, other ports | redirected to the transparent HTTP listener ([`OtherTcp::HttpListener`], default) or EPERM + denial ([`OtherTcp::Deny`]) |
//! | UDP to port 53 anywhere (connect, sendto, sendmsg, sendmmsg) | redirected to the DNS filter; replies appear to come from the server asked |
//! | any other UDP | EPERM + denial |
//! | IPv4-mapped IPv6 (`::ffff:a.b.c.d`) | treated exactly as `a.b.c.d` |
//! | any other IPv6 destination | EPERM + denial |
//! | loopback of the runner's own netns | allowed ([`FenceConfig::allow_loopback`]) |
//! | raw, ICMP (ping), SCTP or other non TCP/UDP inet sockets | socket() fails with EPERM + denial |
//! | packet sockets | refused by the kernel in the runner's netns (CAP_NET_RAW over it, owned by the host's user namespace, is not the job's); in a netns the job made itself they reach no link; whatever a packet socket does send is dropped by tc |
//! | bpf() | refused by the kernel: needs CAP_BPF in the host's user namespace (and `unprivileged_bpf_disabled`) |
//! | any packet leaving the runner's sockets not to a listener | dropped by cgroup_skb egress + denial |
//! | any frame reaching the host-side veth that is not ARP or IPv4 from the runner's address to a listener (spoofed sources, IP fragments, IPv6) | dropped by tc + denial |
//!
//! Not covered here: socket families other than inet (vsock, packet, alg, ...) and bpf()
//! attempts are not seen by cgroup hooks. The sandbox's seccomp filter refuses and
//! records them: every family but unix, inet, inet6 and netlink (vsock needs no
//! capability and leaves through the hypervisor, outside every network namespace, so
//! capability checks alone would not do). A `lsm_cgroup/socket_create` program would cover them,
//! but tracing-class programs (LSM, fentry) cannot be loaded on every kernel this runs on
//! (the CI kernel refuses them with EPERM), so the fence does not depend on them.
//!
//! The fence always enforces: the `audit` egress mode (allow and record) is the proxy's
//! business; there is nothing beyond the proxy a runner could be let through to anyway.
//!
//! Each row is exercised by the privileged tests in `tests/tests/ebpf_*.rs`.
//!
//! Redirected TCP connections keep their original destination, which the proxy reads
//! with [`OriginalDestinations::lookup`] using the peer address of the accepted socket,
//! with the process that connected. Connections straight to the explicit proxy port are
//! recorded the same way (their destination is the proxy itself), and so is every
//! datagram leaving for the DNS filter (published by the cgroup egress program, where the
//! socket's source port is known), so that the explicit proxy's and the DNS filter's
//! events name the process too.
//!
//! # Use from the agent
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use egress_ebpf::{Fence, FenceConfig, OtherTcp};
//! let cfg = FenceConfig {
//!     proxy_addr_v4: "10.249.0.1".parse()?, runner_addr_v4: "10.249.0.2".parse()?,
//!     explicit_proxy_port: 3128, transparent_tls_port: 3129, transparent_http_port: 3130,
//!     dns_port: 53, runner_id: 3, other_tcp: OtherTcp::HttpListener, allow_loopback: true,
//! };
//! let pins = std::path::Path::new("/sys/fs/bpf/runner-agent/r-3");
//! // Before the job's first process enters the cgroup:
//! let mut fence = Fence::attach("/sys/fs/cgroup/unified/runner-agent/r-3".as_ref(), cfg, pins)?;
//! fence.attach_tc(7)?;                        // host-side veth ifindex, in the agent's netns
//! let proxy_fd = fence.orig_dst_fd()?;        // hand to the proxy process
//! let mut denials = fence.denials()?;          // audit events with source "ebpf"
//! tokio::spawn(async move { while let Ok(d) = denials.next().await { println!("{d:?}"); } });
//! // ... job runs; after its processes are killed:
//! let counters = fence.counters()?;
//! fence.detach()?;
//! // At start-up, for each runner left by a crashed agent:
//! egress_ebpf::reap(pins)?;
//! # drop((proxy_fd, counters)); Ok(()) }
//! ```

pub mod bpffs;
pub mod config;
pub mod events;
pub mod loader;
pub mod maps;
pub mod origdst;
mod sys;

pub use config::{ConfigError, FenceConfig, OtherTcp};
pub use events::{Counters, Denial, DenialStream, EventError, Hook, Reason};
pub use loader::{pinned_ids, reap, still_loaded, Fence, FenceError, ObjectIds};
pub use origdst::{OrigDstError, OriginalDestination, OriginalDestinations};
