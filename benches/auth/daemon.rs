//! The daemon under test as a child process: one configuration file shared by every
//! point of the run, a fresh process and data directory for each point.
//!
//! One configuration serves every credential the bench presents (anonymous clients
//! allowed, an admin token, an HS256 and an RS256 key told apart by `kid`, an API key
//! file), so the only thing that changes between the points of a table is what the
//! client presents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The benches' `[ws]` settings and an `[auth]` section naming the files in `dir`.
pub fn config(dir: &Path) -> String {
    format!(
        r#"{ws}
[auth]
allow_anonymous = true
admin_token_file = "{admin}"
api_keys_file = "{keys}"

[[auth.jwt]]
kid = "hs"
algorithm = "HS256"
secret_file = "{secret}"

[[auth.jwt]]
kid = "rs"
algorithm = "RS256"
public_key_file = "{public}"
"#,
        ws = crate::host::SWITCHBOARD_WS_CONFIG,
        admin = dir.join("admin.token").display(),
        keys = dir.join("api_keys.json").display(),
        secret = dir.join("jwt.secret").display(),
        public = dir.join("rs256.pub.pem").display(),
    )
}

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

/// Creates an API key in the configuration's key file with `switchboard apikey
/// create`, as an operator would, and returns the key the command prints.
pub fn create_api_key(config: &Path, data_dir: PathBuf, publish: &str, subscribe: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["apikey", "create", "auth-bench", "--publish", publish])
        .args(["--subscribe", subscribe, "--config"])
        .arg(config)
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("cannot run `switchboard apikey create`");
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && key.starts_with("sbk_"),
        "`switchboard apikey create` failed ({})",
        out.status
    );
    key
}
