#!/usr/bin/env bash
# Set-up, lint, build and the whole test suite. Run as root: the privileged tests build
# real sandboxes, namespaces and eBPF programs. With CI set, a test that cannot get its
# privileges fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the runner-agent binary, so build every binary first.
cargo build --workspace --bins
cargo test --workspace
