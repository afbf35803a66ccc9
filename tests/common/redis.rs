//! A `redis-server` of a test's own and the cluster boxes that share it, for the
//! cluster tests (tests/cluster.rs, tests/cluster_presence.rs).

use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Daemon;

/// A `redis-server` of the test's own, on a free port and in its own directory.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    persist: bool,
    extra: Vec<String>,
}

impl Redis {
    /// `None` when redis-server is missing and the run does not require it; the CI
    /// script sets CLUSTER_TOOLS=required, and there a missing tool fails.
    pub fn start(persist: bool) -> Option<Redis> {
        Self::start_with(persist, &[])
    }

    pub fn start_with(persist: bool, extra: &[&str]) -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("CLUSTER_TOOLS").as_deref() != Ok("required"),
                "redis-server is required (CLUSTER_TOOLS=required); install redis-server"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            persist,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        Some(r)
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persist {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra);
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        for _ in 0..200 {
            // A Redis with a password answers NOAUTH: it is up all the same.
            if self
                .try_cmd(&["PING"])
                .is_some_and(|r| r.contains("PONG") || r.contains("NOAUTH"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills Redis (SIGKILL: what was fsynced is all that survives) and starts it again
    /// on the same port and directory.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// One command over raw RESP; the reply's raw text.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).expect("redis answers")
    }

    pub fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = StdTcp::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes()).ok()?;
        let mut buf = vec![0u8; 1 << 16];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Kills the bus readers' connections (named `sb-reader-…` by the daemons).
    pub fn kill_readers(&self) -> usize {
        let list = self.cmd(&["CLIENT", "LIST"]);
        let mut killed = 0;
        for line in list.lines() {
            if !line.contains("name=sb-reader-") {
                continue;
            }
            if let Some(id) = line
                .split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
            {
                if self.cmd(&["CLIENT", "KILL", "ID", &id]).contains(":1") {
                    killed += 1;
                }
            }
        }
        killed
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A box of the cluster: history on `h/#`, the bus on `redis`.
pub fn node(redis: &str, name: &str) -> Daemon {
    node_with(redis, name, "")
}

/// [`node`] with more `[cluster]` keys.
pub fn node_with(redis: &str, name: &str, more: &str) -> Daemon {
    Daemon::start(&format!(
        r#"
[cluster]
enabled = true
redis = ["{redis}"]
node_id = "{name}"
partitions = 4
command_timeout = "500ms"
connect_timeout = "500ms"
probe_interval = "300ms"
{more}

[[history.topics]]
filter = "h/#"
keep = 10000
"#
    ))
}
