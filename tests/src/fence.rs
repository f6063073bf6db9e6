//! Helpers for the eBPF enforcement tests: cgroups and processes to attach to.
