//! egress-ebpf: the cgroup and tc programs that force a runner's traffic through the proxy.
//!
//! The C sources live in `bpf/`; `build.rs` compiles them with clang and this crate loads
//! and attaches them with aya.
