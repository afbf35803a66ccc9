//! The daemon under test as a child process: a fresh process and data directory for
//! each point of a bench, pinned to core 0 when `taskset` is there.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

pub struct Daemon {
    pub addr: SocketAddr,
    child: Child,
    _data: tempfile::TempDir,
}

impl Daemon {
    /// Starts `switchboard serve` with `config` (on core 0 when `pin` holds) and waits
    /// for its `listening http=ADDR` line. Every listener is on a free port; only
    /// errors from the daemon's log reach the bench's stderr.
    pub fn start(config: &Path, pin: bool) -> Daemon {
        let data = tempfile::tempdir().expect("cannot create a temporary directory");
        let mut child = crate::host::core0_command(pin)
            .arg(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("SWITCHBOARD_DATA_DIR", data.path())
            .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
            // Nothing per connection on stderr: a log line per connect would be
            // part of what the setup rate measures.
            .env("SWITCHBOARD_LOG_LEVEL", "warn,switchboard::listening=info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start switchboard");
        let rx = crate::host::watch_stderr(
            &mut child,
            |rest| crate::host::listening_addr(rest, "http="),
            |line| {
                if line.contains("ERROR") || line.contains("panicked") {
                    eprintln!("  [switchboard] {line}");
                }
            },
        );
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("switchboard did not report its address");
        Daemon {
            addr,
            child,
            _data: data,
        }
    }

    /// One unlabelled figure from the daemon's `/metrics`, if it is there.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// A reader of the CPU time the daemon's threads have run so far, for tasks that
    /// outlive a borrow of the daemon.
    ///
    /// From each thread's `schedstat` (nanoseconds) rather than `/proc/PID/stat`
    /// (clock ticks, 10 ms here): a point of 2,000 connections costs the daemon only
    /// a few ticks. Threads that have ended are not counted; the daemon's runtime
    /// threads live as long as it does.
    pub fn cpu_clock(&self) -> impl Fn() -> Duration + 'static {
        let tasks = format!("/proc/{}/task", self.child.id());
        move || {
            let Ok(dir) = std::fs::read_dir(&tasks) else {
                return Duration::ZERO;
            };
            let ns: u64 = dir
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            Duration::from_nanos(ns)
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
