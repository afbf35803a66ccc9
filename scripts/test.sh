#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests need
# and is missing, then runs every test against the real daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use. (None yet beyond a Rust toolchain and a C linker;
# tests that need mosquitto, redis-server or chromium add them here.)
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
fi

# Fan-out tests open a few thousand sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo test --workspace
