#!/usr/bin/env bash
# Set-up, lint, build and the whole test suite. Run as root: the privileged tests build
# real sandboxes, namespaces and eBPF programs. With CI set, a test that cannot get its
# privileges fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# A build from a clean clone needs about 3 GiB under target/. A linker that runs out of disk
# dies of SIGBUS in the middle of a test binary, which reads like a toolchain bug, so say
# how much room there is first. CI builds once: incremental state would only take space.
echo "test: $(df -h --output=avail . | tail -1 | tr -d ' ') free on the build's file system"
if [[ -n "${CI:-}" ]]; then
  export CARGO_INCREMENTAL=0
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the runner-agent binary, so build every binary first.
cargo build --workspace --bins
cargo test --workspace
