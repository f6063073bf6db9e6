#!/usr/bin/env bash
# Set-up, build, and the first job: runner-agent run examples/hello.yaml (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p runner-agent
./target/release/runner-agent run examples/hello.yaml
