#!/usr/bin/env bash
# Installs what runner-agent needs to build and test on Debian 12 (run as root), beyond
# the Rust toolchain: clang and libbpf headers for the eBPF programs, iproute2 for the
# tests' network namespaces, bubblewrap and crun for the benchmark, btrfs-progs for the
# test of a btrfs host tree, time (/usr/bin/time) for the test that measures the agent's
# peak memory on hostile job files, and the ordinary tools the example jobs use inside
# the sandbox (perl, procps).
set -euo pipefail

packages=(clang llvm libbpf-dev libc6-dev iproute2 bubblewrap crun btrfs-progs perl procps python3 curl ca-certificates time)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
