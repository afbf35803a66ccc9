#!/usr/bin/env bash
# How many nodes × readings/s a broker takes from fleet.py with zero loss and p99 under
# 50 ms: switchboard and Mosquitto, one after the other in the same run, each fresh on a
# free port, the broker pinned to core 0 and the fleet to core 1 when taskset exists.
#
#   firmware-examples/fleet/reach.sh target/release/switchboard "1000x1 1000x2 1000x5 2000x5"
#
# A point NxR runs N nodes at R readings/s for DURATION seconds (default 10), split over
# ceil(N×R/4000) fleet.py processes (one Python process tops out near 5,000 readings/s here),
# each with its own topic prefix and its own measuring subscriber.
set -euo pipefail
bin=${1:?usage: reach.sh SWITCHBOARD_BINARY "NxR ..."}
points=${2:-"1000x1 1000x2 1000x5"}
duration=${DURATION:-10}
here=$(cd "$(dirname "$0")" && pwd)
scratch=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$scratch"' EXIT
# Always run in the background: exec, so that $! is the program itself and kill reaches it.
pin() { if command -v taskset >/dev/null; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }
port=$((20000 + RANDOM % 20000))

start_broker() {
    port=$((port + 1))  # a fresh port each time: the last broker's may linger
    case $1 in
    switchboard)
        : >"$scratch/sb.toml"
        SWITCHBOARD_DATA_DIR=$scratch/data.$port SWITCHBOARD_HTTP_LISTEN=127.0.0.1:0 \
            SWITCHBOARD_MQTT_LISTEN=127.0.0.1:$port SWITCHBOARD_MQTT_WS_LISTEN= \
            SWITCHBOARD_LOG_LEVEL=warn pin 0 "$bin" serve --config "$scratch/sb.toml" >/dev/null 2>"$scratch/switchboard.log" &
        ;;
    mosquitto)
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' "$port" >"$scratch/m.conf"
        pin 0 mosquitto -c "$scratch/m.conf" >/dev/null 2>"$scratch/mosquitto.log" &
        ;;
    esac
    broker=$!
    for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.1; done
    echo "$1 did not start:" >&2
    cat "$scratch"/*.log >&2
    exit 1
}

echo "| broker | nodes | readings/s per node | total/s | sent | lost | p50 ms | p99 ms | ok |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for broker_name in switchboard mosquitto; do
    if [ "$broker_name" = switchboard ]; then have=$([ -x "$bin" ] && echo y || true); else have=$(command -v mosquitto || true); fi
    [ -n "$have" ] || { echo "| $broker_name | skipped: not installed |"; continue; }
    for point in $points; do
        nodes=${point%x*} rate=${point#*x}
        start_broker "$broker_name"
        procs=$(((nodes * rate + 3999) / 4000))
        fleet=()
        for p in $(seq "$procs"); do
            n=$((nodes / procs))
            pin 1 python3 "$here/fleet.py" --port "$port" --nodes "$n" --rate "$rate" --duration "$duration" \
                --prefix "p$p" --id-prefix "p$p-" --measure >"$scratch/out.$p" 2>/dev/null &
            fleet+=($!)
        done
        wait "${fleet[@]}" || true
        kill "$broker" 2>/dev/null || true
        wait "$broker" 2>/dev/null || true
        python3 - "$broker_name" "$nodes" "$rate" "$scratch"/out.* <<'PY'
import json, sys
name, nodes, rate, *files = sys.argv[1:]
runs = [json.loads(open(f).read().strip().splitlines()[-1]) for f in files]
sent = sum(r["sent"] for r in runs)
lost = sum(r["lost"] for r in runs)
p50 = max(r["p50_ms"] or 0 for r in runs)
p99 = max(r["p99_ms"] or 0 for r in runs)
total = int(nodes) * float(rate)
ok = "yes" if lost == 0 and p99 < 50 else "no"
print(f"| {name} | {nodes} | {rate} | {total:g} | {sent} | {lost} | {p50} | {p99} | {ok} |")
PY
        rm -f "$scratch"/out.*
    done
done
