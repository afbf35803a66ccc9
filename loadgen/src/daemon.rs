//! The daemon under test as a child process: a fresh process and data directory for
//! each point of a bench, pinned to core 0 when `taskset` is there.
//!
//! The benches pass the binary cargo built for them (`env!("CARGO_BIN_EXE_switchboard")`):
//! this crate does not depend on switchboard, so it cannot name the binary itself.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// A running `switchboard serve`, killed when dropped, with its data directory.
pub struct Daemon {
    /// Its HTTP (and WebSocket) listener.
    pub addr: SocketAddr,
    child: Child,
    _data: tempfile::TempDir,
}

impl Daemon {
    /// Starts `bin serve` with `config` (on core 0 when `pin` holds) and waits for its
    /// `listening http=ADDR` line. Every listener is on a free port; only errors from
    /// the daemon's log reach the bench's stderr.
    ///
    /// # Panics
    ///
    /// When the daemon cannot be started or reports no address within 20 s: a bench
    /// has nothing to measure then.
    pub fn start(bin: impl AsRef<Path>, config: &Path, pin: bool) -> Daemon {
        let data = tempfile::tempdir().expect("cannot create a temporary directory");
        let mut child = crate::host::core0_command(pin)
            .arg(bin.as_ref())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("SWITCHBOARD_DATA_DIR", data.path())
            .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
            // Thousands of clients from one machine: lift the per-address cap.
            .env("SWITCHBOARD_HTTP_MAX_CONNECTIONS_PER_IP", "1000000")
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
        let text = http_get(self.addr, "/metrics").await.ok()?;
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

/// The body of a `GET` of `path`, if the answer is 200. HTTP/1.0 on purpose: the body
/// then ends with the connection, never chunked, so reading to the end is the parser.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| crate::read_buf::invalid("no end of the response head"))?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(crate::read_buf::invalid(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_owned())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
