#!/usr/bin/env bash
# Set-up, build, and the first job (as root): a local web server on 127.0.0.1:8081 that
# the job is allowed to reach, then
#   runner-agent run examples/hello.yaml --config examples/hello-host.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p runner-agent
python3 -m http.server 8081 --bind 127.0.0.1 --directory examples/site >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  (exec 3<>/dev/tcp/127.0.0.1/8081) 2>/dev/null && break
  sleep 0.1
done
./target/release/runner-agent run examples/hello.yaml --config examples/hello-host.yaml
