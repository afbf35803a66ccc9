//! The servers under test as child processes, and what `/proc` says about them.
//!
//! Each case gets a fresh server process pinned to core 0, so one case's allocations
//! and connections never colour the next, and its CPU time and resident memory can be
//! read from `/proc/PID` alone.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Env var that turns this binary into the baseline server; its value is the address.
pub const BASELINE_ENV: &str = "FANOUT_BENCH_BASELINE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Switchboard,
    Baseline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Switchboard => "switchboard",
            Kind::Baseline => "baseline",
        }
    }
}

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

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server and waits for its `listening http=ADDR` line.
    pub fn start(kind: Kind, pin: bool) -> Server {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]);
            c
        } else {
            // `env` is a no-op wrapper so both branches build the same argument list.
            Command::new("env")
        };
        match kind {
            Kind::Switchboard => {
                let config = dir.path().join("switchboard.toml");
                std::fs::write(&config, SWITCHBOARD_CONFIG).expect("cannot write the config");
                cmd.arg(env!("CARGO_BIN_EXE_switchboard"))
                    .arg("serve")
                    .arg("--config")
                    .arg(&config)
                    .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
                    .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
                    .env_remove("RUST_LOG");
            }
            Kind::Baseline => {
                let exe = std::env::current_exe().expect("cannot find the bench executable");
                cmd.arg(exe).env(BASELINE_ENV, "127.0.0.1:0");
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the server");
        let addr = read_listening(&mut child, kind, dir.path());
        Server {
            kind,
            addr,
            child,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("cannot read the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmRSS in /proc status")
    }

    /// CPU time used so far (user + system, all threads).
    pub fn cpu(&self) -> Duration {
        cpu_time(&format!("/proc/{}/stat", self.pid()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Defaults spelled out so the figures say what they were measured with.
const SWITCHBOARD_CONFIG: &str = r#"
log_level = "info"

[ws]
outbound_queue_messages = 1024
outbound_queue_bytes = 1048576
slow_consumer = "drop_oldest"
read_buffer_size = 1024
write_buffer_size = 16384
"#;

fn read_listening(child: &mut Child, kind: Kind, dir: &Path) -> SocketAddr {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    // Keeps draining stderr after the line so the server never blocks on a full pipe;
    // errors are passed through, routine logs dropped.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(rest) = line.split("listening ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("http="))
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    if let Some(addr) = addr {
                        sent = tx.send(addr).is_ok();
                        continue;
                    }
                }
            }
            if line.contains("ERROR") || line.contains("panicked") {
                eprintln!("  [{}] {line}", kind.name());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "{} did not report its address (data dir {})",
                kind.name(),
                dir.display()
            )
        })
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

/// Counters from switchboard's `GET /healthz`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Health {
    pub connections: u64,
    pub subscriptions: u64,
    pub dropped: u64,
}

pub async fn healthz(addr: SocketAddr) -> std::io::Result<Health> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).await?;
    let body = crate::wire::find(&response, b"\r\n\r\n")
        .map(|p| &response[p + 4..])
        .ok_or_else(|| crate::wire::invalid("healthz: no body"))?;
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| crate::wire::invalid(e.to_string()))?;
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(Health {
        connections: n("connections"),
        subscriptions: n("subscriptions"),
        dropped: n("dropped"),
    })
}
