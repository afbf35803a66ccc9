//! The servers under test as child processes, and what `/proc` says about them.
//!
//! Each case gets a fresh server process pinned to core 0, so one case's allocations
//! and connections never colour the next, and its CPU time and resident memory can be
//! read from `/proc/PID` alone.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Env var that turns this binary into the baseline server; its value is the address.
pub const BASELINE_ENV: &str = "FANOUT_BENCH_BASELINE";

/// Env var naming a shell command run beside every switchboard server (with `SB_HTTP`
/// and `SB_PID` set), for load the bench does not make itself: the case starts once the
/// command prints a line, and the command is told to finish by its stdin closing.
/// `clients/js/bench/dashboards.mjs` opens dashboards this way.
pub const ATTACH_ENV: &str = "FANOUT_BENCH_ATTACH";

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

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    /// Dropped before `child`: what `ATTACH_ENV` started finishes while the server runs.
    attached: Option<Attached>,
    _dir: tempfile::TempDir,
}

/// The command of [`ATTACH_ENV`], running.
struct Attached(Child);

impl Attached {
    fn start(command: &str, addr: SocketAddr, pid: u32) -> Attached {
        use std::io::BufRead;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("SB_HTTP", addr.to_string())
            .env("SB_PID", pid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the FANOUT_BENCH_ATTACH command");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        assert!(
            matches!(read, Ok(n) if n > 0),
            "the FANOUT_BENCH_ATTACH command ended before it was ready"
        );
        eprintln!("  attached: {}", line.trim());
        Attached(child)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        for _ in 0..200 {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Starts a server and waits for its `listening http=ADDR` line.
    /// With `deflate`, switchboard compresses every frame (`compression_threshold = 0`)
    /// for the clients that offer it.
    pub fn start(kind: Kind, pin: bool, deflate: bool) -> Server {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let mut cmd = switchboard_bench::host::core0_command(pin);
        match kind {
            Kind::Switchboard => {
                let config = dir.path().join("switchboard.toml");
                std::fs::write(
                    &config,
                    format!(
                        "log_level = \"info\"\n{}{}",
                        switchboard_bench::daemon::SWITCHBOARD_WS_CONFIG,
                        if deflate {
                            "compression = true\ncompression_threshold = 0\n"
                        } else {
                            ""
                        }
                    ),
                )
                .expect("cannot write the config");
                cmd.arg(env!("CARGO_BIN_EXE_switchboard"))
                    .arg("serve")
                    .arg("--config")
                    .arg(&config)
                    .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
                    // Thousands of clients from one machine: lift the per-address cap.
                    .env("SWITCHBOARD_HTTP_MAX_CONNECTIONS_PER_IP", "1000000")
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
        let attached = match (kind, std::env::var(ATTACH_ENV)) {
            (Kind::Switchboard, Ok(command)) => Some(Attached::start(&command, addr, child.id())),
            _ => None,
        };
        Server {
            kind,
            addr,
            child,
            attached,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        switchboard_bench::host::rss_kib(self.pid()).expect("no VmRSS in the server's /proc status")
    }

    /// CPU time used so far (user + system, all threads).
    pub fn cpu(&self) -> Duration {
        switchboard_bench::host::cpu_time(&format!("/proc/{}/stat", self.pid()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.attached.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_listening(child: &mut Child, kind: Kind, dir: &Path) -> SocketAddr {
    // Errors are passed through, routine logs dropped.
    let rx = switchboard_bench::host::watch_stderr(
        child,
        |rest| switchboard_bench::host::listening_addr(rest, "http="),
        move |line| {
            if line.contains("ERROR") || line.contains("panicked") {
                eprintln!("  [{}] {line}", kind.name());
            }
        },
    );
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "{} did not report its address (data dir {})",
                kind.name(),
                dir.display()
            )
        })
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
    let body = switchboard_bench::read_buf::find(&response, b"\r\n\r\n")
        .map(|p| &response[p + 4..])
        .ok_or_else(|| switchboard_bench::read_buf::invalid("healthz: no body"))?;
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| switchboard_bench::read_buf::invalid(e.to_string()))?;
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(Health {
        connections: n("connections"),
        subscriptions: n("subscriptions"),
        dropped: n("dropped"),
    })
}
