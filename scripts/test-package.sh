#!/usr/bin/env bash
# The package on a real systemd: builds the .deb with cargo-deb, lints it, boots a
# Debian bookworm root (debootstrap, systemd-nspawn --boot) and, inside, installs the
# package and checks what an operator relies on: the service runs and answers on
# WebSocket and MQTT, reloads a changed config and refuses a broken one, the watchdog
# restarts a stuck daemon, an upgrade keeps an edited conffile and recorded data,
# remove stops it and purge leaves nothing. Also prints the figures docs/benchmarks.md
# reports (package size, installed size, idle memory, start to READY).
#
# Needs root. Installs what is missing (debootstrap, systemd-container, lintian,
# cargo-deb). The Debian mirror is the host's (apt sources), or $PACKAGE_TEST_MIRROR.
# (Not SWITCHBOARD_*: the daemon takes those as settings and refuses unknown ones.)
# The pristine root is kept in $PACKAGE_TEST_CACHE (default
# /var/tmp/switchboard-nspawn) and copied for each run.
#
# `scripts/test-package.sh --boot-loop N` only boots the root N times (no build, no
# package) and checks each boot: finding the container's leader and entering it is
# what used to flake, so this reproduces it (docs/packaging.md).
set -euo pipefail
cd "$(dirname "$0")/.."

boot_loop=0
case "${1:-}" in
"") ;;
--boot-loop)
    boot_loop=${2:-}
    [[ "$boot_loop" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [--boot-loop N]" >&2; exit 2; }
    ;;
*) echo "usage: $0 [--boot-loop N]" >&2; exit 2 ;;
esac

say() { printf '\n== %s\n' "$*"; }
leader=
console_log=
# Set once a failure has printed what the container said, so the exit trap does not
# print it twice.
reported=
# The container's own console (systemd's boot messages, failed units): whatever went
# wrong, this is the first thing to read.
print_console() {
    [ -z "$reported" ] && [ -n "$console_log" ] && [ -f "$console_log" ] || return 0
    reported=1
    echo "--- the container's console ($console_log), last lines:" >&2
    tail -n 60 "$console_log" >&2 || true
}
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    if [ -n "$leader" ] && [ "$boot_loop" = 0 ]; then
        echo "--- the service's journal, last lines:" >&2
        ct journalctl -u switchboard --no-pager -n 40 >&2 || true
    fi
    print_console
    exit 1
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2
    shift 2
    for _ in $(seq $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "$what (after ${secs}s)"
}

[ "$(id -u)" = 0 ] || fail "the package test needs root (debootstrap, systemd-nspawn)"

need_apt=()
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)
command -v lintian >/dev/null || need_apt+=(lintian)
command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v xz >/dev/null || need_apt+=(xz-utils)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------------
build_package() {
    # cargo-deb without its default features: the .deb is still xz-compressed, by the
    # system's `xz` (xz-utils) instead of a liblzma compiled from C. A debug build of
    # the tool itself: it only copies files and runs xz, and builds in a fraction of
    # the time of its release build (docs/packaging.md has the figures).
    local cargo_deb_version=3.8.0
    if [[ "$(cargo deb --version 2>/dev/null || true)" != *"$cargo_deb_version"* ]]; then
        cargo install --quiet --locked --debug --no-default-features cargo-deb --version "$cargo_deb_version"
    fi

    say "build: cargo build --release, cargo deb --no-build"
    version=$(cargo metadata --no-deps --format-version 1 \
        | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="switchboard"))')
    # cargo-deb takes the binary from target/release: where the build put it,
    # whatever CARGO_TARGET_DIR says.
    target_dir=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    # Outside target/debian: cargo-deb clears older builds of the package from there.
    out=target/package-test
    rm -rf "$out"
    mkdir -p "$out/first" "$out/upgrade"
    deb1="$out/first/switchboard_${version}-1_amd64.deb"
    deb2="$out/upgrade/switchboard_${version}-2_amd64.deb"
    cargo build --release --locked --bin switchboard
    [ -x "$target_dir/release/switchboard" ] || fail "no release binary in $target_dir/release"
    cargo deb --no-build --output "$deb1"
    # The upgrade: a newer revision of the same build, as a rebuilt package would be.
    # --fast: lighter xz (2 s instead of 20 here); only the first is measured and linted.
    cargo deb --no-build --fast --deb-revision 2 --output "$deb2"
    # The declared libc6 must cover the newest glibc symbol version the binary uses.
    unpacked="$out/unpacked"
    dpkg-deb -x "$deb1" "$unpacked"
    glibc_needed=$(objdump -T "$unpacked/usr/bin/switchboard" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)
    glibc_declared=$(dpkg-deb -f "$deb1" Depends | sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p')
    dpkg --compare-versions "$glibc_needed" le "$glibc_declared" \
        || fail "the binary needs glibc $glibc_needed but the package depends on libc6 >= $glibc_declared"
    package_size=$(stat -c %s "$deb1")
    installed_kib=$(dpkg-deb -f "$deb1" Installed-Size)

    say "lintian"
    # Errors and warnings fail; `lintian` itself only warns that it runs as root.
    lint=$(lintian --fail-on none "$deb1" 2>&1 | grep -v 'running with root privileges' || true)
    [ -z "$lint" ] || fail "lintian: $lint"
    echo "clean"
}
[ "$boot_loop" != 0 ] || build_package

# ---------------------------------------------------------------------------------
say "a Debian bookworm root"
mirror=${PACKAGE_TEST_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(grep -h -A3 '^Types: deb' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}')
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1=="deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}
cache=${PACKAGE_TEST_CACHE:-/var/tmp/switchboard-nspawn}
pristine="$cache/bookworm"
if [ ! -f "$pristine/.complete" ]; then
    rm -rf "$pristine"
    mkdir -p "$cache"
    echo "debootstrap from $mirror"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,mosquitto-clients \
        bookworm "$pristine" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || fail "debootstrap failed; see $cache/debootstrap.log"
    touch "$pristine/.complete"
fi
root="$cache/run"
rm -rf "$root"
cp -a "$pristine" "$root"
rm -f "$root/.complete"
[ "$boot_loop" != 0 ] || cp "$deb1" "$deb2" "$root/root/"
echo "switchboard-test" >"$root/etc/hostname"

# ---------------------------------------------------------------------------------
# On a host whose PID 1 is not systemd (a CI container), nspawn needs these two: no
# machine registration, and a tmpfs for its runtime state.
mkdir -p /run/systemd/nspawn
mountpoint -q /run/systemd/nspawn || mount -t tmpfs tmpfs /run/systemd/nspawn
console_log="$cache/console.log"
nspawn_pid=

# Powers the container off (nspawn turns SIGTERM into a clean poweroff) and waits
# for nspawn to exit.
stop_container() {
    [ -n "$nspawn_pid" ] || return 0
    if kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=
    leader=
}
cleanup() {
    local rc=$?
    # A failure that did not go through `fail` (a command under `set -e`): still show
    # what the container said.
    [ "$rc" = 0 ] || print_console
    stop_container
}
trap cleanup EXIT

# The container's PID 1, as a host PID: the process below nspawn that is PID 1 in a
# PID namespace of its own. nspawn first forks a short-lived helper in the host's
# namespace (it sets up mounts, then starts the real init and exits); entering that
# helper's namespaces fails once it is gone, so it must never be taken for the leader.
find_leader() {
    local own_ns pid ns nspid
    own_ns=$(readlink "/proc/$nspawn_pid/ns/pid") || return 1
    # Descendants, breadth first: the init may be a child or a grandchild of nspawn.
    local queue=("$nspawn_pid")
    while [ ${#queue[@]} -gt 0 ]; do
        local parent=${queue[0]}
        queue=("${queue[@]:1}")
        for pid in $(pgrep -P "$parent" || true); do
            queue+=("$pid")
            ns=$(readlink "/proc/$pid/ns/pid" 2>/dev/null) || continue
            [ "$ns" != "$own_ns" ] || continue
            # NSpid: the host PID, then the PID in each nested namespace: 1 innermost.
            nspid=$(awk '/^NSpid:/ {print $NF}' "/proc/$pid/status" 2>/dev/null) || continue
            [ "$nspid" = 1 ] || continue
            echo "$pid"
            return 0
        done
    done
    return 1
}

# Runs a command inside the container, as root, with the container's root and PATH.
ct() {
    nsenter -t "$leader" -m -u -i -n -p -r -w -- \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}
ct_sh() { ct /bin/sh -c "$1"; }

# Boots the root and waits until systemd inside says it is up; sets nspawn_pid and
# leader. Every failure prints the container's console.
boot_container() {
    systemd-nspawn -D "$root" --boot --register=no --keep-unit --private-network \
        --console=read-only -M switchboard-test >"$console_log" 2>&1 &
    nspawn_pid=$!
    leader=
    for _ in $(seq 300); do
        leader=$(find_leader || true)
        [ -n "$leader" ] && break
        kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited before the container's init started"
        sleep 0.1
    done
    [ -n "$leader" ] || fail "no process below systemd-nspawn is PID 1 of its own namespace (after 30s)"
    wait_for 30 "systemd in the container answers" ct test -S /run/systemd/private
    local state
    state=$(ct timeout 60 systemctl is-system-running --wait || true)
    case "$state" in
    running | degraded) ;;
    *) fail "the container did not boot ($state)" ;;
    esac
    # The leader is still the one we entered: the boot did not replace it.
    [ "$(ct cat /proc/1/comm)" = systemd ] || fail "PID 1 in the container is not systemd"
    container_state=$state
}

if [ "$boot_loop" != 0 ]; then
    say "boot loop: systemd-nspawn --boot, $boot_loop times"
    for i in $(seq "$boot_loop"); do
        started=$(date +%s%N)
        boot_container
        stop_container
        printf 'boot %d/%d: %s, leader found and entered, %d ms\n' "$i" "$boot_loop" \
            "$container_state" "$((($(date +%s%N) - started) / 1000000))"
    done
    say "$boot_loop boots, no failure"
    exit 0
fi

say "boot it: systemd-nspawn --boot"
boot_container
echo "container: $container_state"

# What the root holds before the package, to compare after purge. dpkg's and apt's
# own records, logs and caches change by design; /root is this test's scratch space.
snapshot() {
    ct_sh 'find / -xdev \( -path /proc -o -path /sys -o -path /run -o -path /tmp -o -path /dev -o -path /root \
        -o -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/cache -o -path /var/log \
        -o -path /var/lib/systemd/deb-systemd-helper-enabled -o -path /var/lib/systemd/deb-systemd-helper-masked \
        -o -path /var/lib/systemd/timers -o -path /var/lib/systemd/catalog \) -prune -o -print | sort'
    ct getent passwd switchboard || true
    ct getent group switchboard || true
}
snapshot >"$cache/before.txt"

prop() { ct systemctl show -P "$1" switchboard; }

# ---------------------------------------------------------------------------------
say "install: apt install ./$(basename "$deb1")"
install_log=$(ct_sh "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./$(basename "$deb1") 2>&1") \
    || fail "install failed: $install_log"
echo "$install_log" | grep -q "the admin token is in /etc/switchboard/admin.token" \
    || fail "the install message does not name the admin token file: $install_log"
[ "$(ct systemctl is-active switchboard)" = active ] || fail "not active after install: $(ct systemctl status switchboard --no-pager)"
[ "$(ct systemctl is-enabled switchboard)" = enabled ] || fail "not enabled after install"
[ "$(prop Type)" = notify ] || fail "Type is $(prop Type)"
case "$(prop StatusText)" in listening*) ;; *) fail "STATUS is '$(prop StatusText)'" ;; esac
ct getent passwd switchboard | grep -q ':/var/lib/switchboard:' || fail "no switchboard system user"
for f in admin.token passwd; do
    perms=$(ct stat -c '%A %U %G' "/etc/switchboard/$f")
    [ "$perms" = "-rw-r----- root switchboard" ] || fail "/etc/switchboard/$f is $perms"
done
[ "$(ct stat -c '%U %a' /var/lib/switchboard)" = "switchboard 750" ] || fail "state directory: $(ct stat -c '%U %a' /var/lib/switchboard)"
main_pid=$(prop MainPID)
[ "$(ct stat -c %U "/proc/$main_pid")" = switchboard ] || fail "the daemon does not run as switchboard"

# Figures for docs/benchmarks.md. Start to READY: from the exec to the unit's becoming
# active, which Type=notify ties to READY=1; the median of five starts.
ready_times=()
for _ in 1 2 3 4 5; do
    # Deliberate restarts are not the crash loop StartLimitBurst= guards against.
    ct systemctl reset-failed switchboard
    ct systemctl restart switchboard
    started=$(prop ExecMainStartTimestampMonotonic)
    ready=$(prop ActiveEnterTimestampMonotonic)
    ready_times+=($(((ready - started) / 1000)))
done
ready_ms=$(printf '%s\n' "${ready_times[@]}" | sort -n | sed -n 3p)
sleep 2
idle_kib=$(ct awk '/^VmRSS:/ {print $2}' "/proc/$(prop MainPID)/status")

say "it answers on WebSocket and MQTT"
token=$(ct cat /etc/switchboard/admin.token)
ct switchboard passwd -b /etc/switchboard/passwd node-7 s3cret-pass
# A new device needs a reload, not a restart.
status_is() { case "$(prop StatusText)" in "$1"*) return 0 ;; *) return 1 ;; esac; }
ct systemctl reload switchboard || fail "systemctl reload: the job failed"
wait_for 10 "STATUS 'reload applied' after adding a device (it is '$(prop StatusText)')" status_is "reload applied"
# A WebSocket subscriber (our client, from the package) gets what a device publishes.
ct_sh "SWITCHBOARD_TOKEN=$token timeout 20 switchboard sub -v -C 1 'sensors/#' > /root/got.txt 2>/root/sub.err &"
# Publishes again until it arrives: the subscriber connects in the background.
publish_until_received() { # topic, payload, file
    for _ in $(seq 50); do
        ct mosquitto_pub -h 127.0.0.1 -p 1883 -u node-7 -P s3cret-pass -t "$1" -m "$2" || true
        ct grep -q "$2" "$3" && return 0
        sleep 0.2
    done
    return 1
}
publish_until_received sensors/hall/t 21.5 /root/got.txt \
    || fail "MQTT → WebSocket: nothing arrived ($(ct cat /root/sub.err))"
ct grep -q '^sensors/hall/t 21.5$' /root/got.txt || fail "WebSocket got: $(ct cat /root/got.txt)"
# MQTT subscribers hear WebSocket publishers, and a wrong password is refused.
ct_sh "timeout 20 mosquitto_sub -h 127.0.0.1 -u node-7 -P s3cret-pass -t 'commands/#' -C 1 > /root/cmd.txt &"
for _ in $(seq 50); do
    ct_sh "SWITCHBOARD_TOKEN=$token switchboard pub commands/node-7 '\"open\"'" >/dev/null
    ct grep -q open /root/cmd.txt && break
    sleep 0.2
done
ct grep -q '"open"\|open' /root/cmd.txt || fail "WebSocket → MQTT: nothing arrived"
if ct mosquitto_pub -h 127.0.0.1 -u node-7 -P wrong -t sensors/x -m 1 2>/dev/null; then
    fail "a wrong MQTT password was accepted"
fi
echo "ok"

say "data to keep: a recording"
rec=$(ct_sh "SWITCHBOARD_TOKEN=$token switchboard record start --name kept 'sensors/#'" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') || fail "no recording started"
for i in $(seq 20); do ct mosquitto_pub -h 127.0.0.1 -u node-7 -P s3cret-pass -q 1 -t sensors/kept -m "m$i"; done
ct_sh "SWITCHBOARD_TOKEN=$token switchboard record stop $rec" >/dev/null
recorded() { ct_sh "SWITCHBOARD_TOKEN=$token switchboard record list" | awk -v id="$rec" '$1 == id {print $3}'; }
recorded_is() { [ "$(recorded)" = "$1" ]; }
wait_for 10 "20 messages recorded" recorded_is 20
before_count=$(recorded)

say "reload: a changed config, then a broken one"
pid_before=$(prop MainPID)
ct_sh "SWITCHBOARD_TOKEN=$token timeout 60 switchboard sub -v 'reload/#' > /root/reload.txt 2>&1 &"
sleep 1
ct sed -i 's/^log_level = "info"/log_level = "debug"/' /etc/switchboard/switchboard.toml
ct systemctl reload switchboard || fail "systemctl reload: the job failed"
wait_for 10 "STATUS 'reload applied' (it is '$(prop StatusText)')" status_is "reload applied"
# The new log level is in force: debug lines (priority 7) from the same process.
ct_sh "SWITCHBOARD_TOKEN=$token switchboard pub reload/debug 1" >/dev/null
debug_lines() { [ "$(ct journalctl -u switchboard --no-pager _PID="$pid_before" PRIORITY=7 -o cat | wc -l)" -gt 0 ]; }
wait_for 10 "debug lines in the journal after raising log_level" debug_lines
[ "$(prop MainPID)" = "$pid_before" ] || fail "reload restarted the daemon"
echo 'this is not [ toml' | ct_sh 'cat >> /etc/switchboard/switchboard.toml'
ct systemctl reload switchboard || fail "systemctl reload: the job failed"
wait_for 10 "STATUS 'reload refused' for a broken config" status_is "reload refused"
# The journal says why, in the message itself.
refusal=$(ct journalctl -u switchboard --no-pager -p err -o cat | grep "reload refused" || true)
case "$refusal" in
*"error="*) ;;
*) fail "the refusal in the journal does not say why: '$refusal'" ;;
esac
[ "$(ct systemctl is-active switchboard)" = active ] || fail "a broken config stopped the service"
ct sed -i '$d' /etc/switchboard/switchboard.toml
ct sed -i 's/^log_level = "debug"/log_level = "info"/' /etc/switchboard/switchboard.toml
# The subscriber that was connected all along still receives.
ct_sh "SWITCHBOARD_TOKEN=$token switchboard pub reload/after still-here" >/dev/null
wait_for 10 "the connection opened before the reloads still receives" ct grep -q still-here /root/reload.txt
echo "ok"

say "the watchdog restarts a stuck daemon"
ct mkdir -p /run/systemd/system/switchboard.service.d
printf '[Service]\nWatchdogSec=2s\n' | ct_sh 'cat > /run/systemd/system/switchboard.service.d/watchdog.conf'
ct systemctl daemon-reload
ct systemctl restart switchboard
restarts=$(prop NRestarts)
stuck=$(prop MainPID)
ct_sh "kill -STOP $stuck"
restarted() { [ "$(prop NRestarts)" -gt "$restarts" ] && [ "$(ct systemctl is-active switchboard)" = active ]; }
wait_for 40 "active again after the watchdog fired" restarted
[ "$(prop MainPID)" != "$stuck" ] || fail "the same process after the watchdog"
ct journalctl -u switchboard --no-pager | grep -c -i "watchdog timeout" >/dev/null || fail "the journal does not show the watchdog"
ct rm -rf /run/systemd/system/switchboard.service.d
ct systemctl daemon-reload
echo "ok"

say "upgrade: apt install ./$(basename "$deb2")"
ct_sh "printf '\n# edited by the operator\n' >> /etc/switchboard/switchboard.toml"
ct sed -i 's/^leeway = "30s"/leeway = "45s"/' /etc/switchboard/switchboard.toml
token_before=$token
pid_before=$(prop MainPID)
ct_sh "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./$(basename "$deb2") >/root/upgrade.log 2>&1" \
    || fail "upgrade failed: $(ct cat /root/upgrade.log)"
[ "$(ct dpkg-query -W -f '${Version}' switchboard)" = "${version}-2" ] || fail "not upgraded"
ct grep -q '^# edited by the operator' /etc/switchboard/switchboard.toml || fail "the upgrade lost the operator's edit"
ct grep -q '^leeway = "45s"' /etc/switchboard/switchboard.toml || fail "the upgrade reverted an edited value"
[ "$(ct cat /etc/switchboard/admin.token)" = "$token_before" ] || fail "the upgrade changed the admin token"
[ "$(ct systemctl is-active switchboard)" = active ] || fail "not active after upgrade"
[ "$(prop MainPID)" != "$pid_before" ] || fail "the upgrade did not restart the service"
[ "$(recorded)" = "$before_count" ] || fail "the upgrade lost recorded data"
echo "ok"

say "remove keeps config and data; purge leaves nothing"
ct_sh "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q switchboard >/root/remove.log 2>&1" \
    || fail "remove failed: $(ct cat /root/remove.log)"
[ "$(ct systemctl is-active switchboard || true)" != active ] || fail "still running after remove"
ct test ! -e /usr/bin/switchboard || fail "the binary is still there after remove"
ct test -f /etc/switchboard/admin.token || fail "remove deleted the admin token"
ct test -d /var/lib/switchboard || fail "remove deleted the data"
ct_sh "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q switchboard >/root/purge.log 2>&1" \
    || fail "purge failed: $(ct cat /root/purge.log)"
snapshot >"$cache/after.txt"
if ! diff -u "$cache/before.txt" "$cache/after.txt"; then
    fail "purge left files or the user behind (diff above)"
fi
echo "ok"

say "figures"
printf 'package size: %s bytes (%s KiB)\n' "$package_size" "$((package_size / 1024))"
printf 'installed size: %s KiB\n' "$installed_kib"
printf 'idle memory (VmRSS, after start): %s KiB\n' "$idle_kib"
printf 'start to READY: %s ms (median of 5: %s)\n' "$ready_ms" "${ready_times[*]}"
say "the package works"
