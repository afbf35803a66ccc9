//! The machine a benchmark runs on, seen from user space: core pinning with `taskset`,
//! CPU time and memory of a process from `/proc`, the open-file limit, a description of
//! the machine for the record, and the `listening …` line a server child prints.
//!
//! Shared by `switchboard-bench` and the `cargo bench` benches; each uses a subset.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Whether `taskset` works here; without it the bench runs unpinned and says so.
pub fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins every thread of this process to `core`. Call before spawning threads.
pub fn pin_self(core: u32) -> bool {
    Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command whose program and arguments are still to be added, run on core 0 when
/// `pin` holds.
pub fn core0_command(pin: bool) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]);
        c
    } else {
        // `env` is a no-op wrapper so both branches build the same argument list.
        Command::new("env")
    }
}

/// Drains a child's piped stderr on a thread until it ends, so the child never blocks
/// on a full pipe. The first line holding `listening ` whose rest `listening` turns
/// into a value sends that value on the returned channel; every other line goes to
/// `other`.
pub fn watch_stderr<T: Send + 'static>(
    child: &mut Child,
    listening: impl Fn(&str) -> Option<T> + Send + 'static,
    mut other: impl FnMut(String) + Send + 'static,
) -> mpsc::Receiver<T> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(rest) = line.split("listening ").nth(1) {
                    if let Some(value) = listening(rest) {
                        sent = tx.send(value).is_ok();
                        continue;
                    }
                }
            }
            other(line);
        }
    });
    rx
}

/// The address after `key` (e.g. `http=`) in the rest of a `listening` line.
pub fn listening_addr(rest: &str, key: &str) -> Option<SocketAddr> {
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|a| a.parse().ok())
}

/// Clock ticks per second for `/proc/*/stat`.
pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime from a `/proc/.../stat` file.
pub fn cpu_time(stat_path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// Resident memory of process `pid` now, in KiB (`None` if `/proc` does not say).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The soft and hard open-file limits of this process.
fn open_file_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut n = line.split_whitespace().skip(3).map(|v| v.parse().ok());
    Some((n.next()??, n.next()??))
}

/// Raises the soft open-file limit to the hard one (the benches hold thousands of
/// sockets), with util-linux `prlimit` since the benches have no libc binding.
/// Returns the soft limit in force.
pub fn raise_open_file_limit() -> u64 {
    let Some((soft, hard)) = open_file_limits() else {
        return 1024;
    };
    if soft < hard {
        let _ = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    open_file_limits().map_or(soft, |(soft, _)| soft)
}

/// CPU model, core count and kernel, for the record. Read it before pinning, which
/// narrows what this process may use to one core.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// Peak resident memory (`VmHWM`) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `kB` figure from `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Adds `switchboard serve` with what racing it needs: every listener (HTTP, MQTT,
/// MQTT over WebSocket) on a free port of loopback, data under `data_dir`, only the
/// `listening` line and warnings on stderr, outbound queues as deep as Mosquitto's
/// `max_queued_messages 65536` with `queue_bytes` per connection, and no publish rate
/// limit (the publishers are the load generator).
pub fn switchboard_serve(cmd: &mut Command, bin: &Path, data_dir: &Path, queue_bytes: u64) {
    cmd.arg(bin)
        .arg("serve")
        .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
        // Thousands of clients from one machine: lift the per-address cap.
        .env("SWITCHBOARD_HTTP_MAX_CONNECTIONS_PER_IP", "1000000")
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env("SWITCHBOARD_LOG_LEVEL", "warn,switchboard::listening=info")
        .env("SWITCHBOARD_WS_OUTBOUND_QUEUE_MESSAGES", "65536")
        .env(
            "SWITCHBOARD_WS_OUTBOUND_QUEUE_BYTES",
            queue_bytes.to_string(),
        )
        .env("SWITCHBOARD_WS_PUBLISH_RATE", "4000000000")
        .env("SWITCHBOARD_WS_PUBLISH_BURST", "4000000000")
        .env_remove("RUST_LOG");
}

/// CPU time every core of the machine has spent busy (not idle or waiting for I/O).
/// With the server's and the bench's own time subtracted, what remains is other work
/// (other processes, interrupt time not charged to either) that may have disturbed
/// the measurement.
pub fn machine_busy() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Duration::from_secs_f64(busy as f64 / clock_ticks() as f64)
}
