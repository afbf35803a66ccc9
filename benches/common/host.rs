//! The machine the benches run on: core pinning, CPU time and memory from `/proc`, the open-file limit, a description for the record, and number formatting for the reports.

// Shared by two benches; each uses a subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
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
fn clock_ticks() -> u64 {
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

/// Resident memory of process `pid` now, in KiB (`None` if `/proc` does not say).
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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

/// Today's date (UTC) as `YYYY-MM-DD`, empty if `date` fails.
pub fn utc_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
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

/// `1,234,567`: a number rounded to a whole one, with thousands separators.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes a bench's results as pretty JSON to `target/<file name>`, next to the
/// other build outputs, and says where; a failure is reported, not fatal.
pub fn write_results(file_name: &str, results: &serde_json::Value) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(file_name);
    match serde_json::to_string_pretty(results) {
        Ok(text) => match std::fs::write(&path, text) {
            Ok(()) => println!("written: {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        },
        Err(e) => eprintln!("cannot encode the results: {e}"),
    }
}

/// A single-threaded runtime and a local set: the load generator runs on one core.
pub fn local_runtime() -> (tokio::runtime::Runtime, tokio::task::LocalSet) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the bench runtime");
    (rt, tokio::task::LocalSet::new())
}

/// The `[ws]` settings switchboard is benchmarked with, spelled out so the figures say
/// what they were measured with: the defaults, with the publish rate limit lifted (the
/// publisher is the load generator).
pub const SWITCHBOARD_WS_CONFIG: &str = r#"
[ws]
outbound_queue_messages = 1024
outbound_queue_bytes = 1048576
slow_consumer = "drop_oldest"
read_buffer_size = 1024
write_buffer_size = 16384
publish_rate = 4000000000
publish_burst = 4000000000
"#;

/// The line that says where the processes run: `placement` when pinned, a warning
/// otherwise.
pub fn pinning_line(pinned: bool, placement: &str) -> String {
    if pinned {
        placement.to_owned()
    } else {
        "NOT PINNED: taskset unavailable; figures are indicative only".to_owned()
    }
}

/// The value of a numeric option (`--rounds 3`): a number of 1 or more, or a panic that
/// names the option.
pub fn number_arg(name: &str, value: Option<String>) -> u64 {
    value
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| panic!("{name} takes a number (1 or more)"))
}
