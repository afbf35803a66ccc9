//! The brokers under test as child processes: switchboard (the release binary cargo
//! built for this bench) and Mosquitto, both pinned to core 0 when `taskset` works.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Switchboard,
    Mosquitto,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Switchboard => "switchboard",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

pub struct Broker {
    pub kind: Kind,
    /// MQTT over TCP.
    pub mqtt: SocketAddr,
    /// Where WebSocket subscribers connect: switchboard's `/ws`, Mosquitto's
    /// `protocol websockets` listener.
    pub ws: SocketAddr,
    child: Child,
    /// Error lines from the broker's log, collected for the report.
    pub errors: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
}

impl Broker {
    pub fn start(kind: Kind, pin: bool) -> Broker {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let mut cmd = switchboard_bench::host::core0_command(pin);
        let mut fixed = None;
        match kind {
            Kind::Switchboard => {
                switchboard_bench::host::switchboard_serve(
                    &mut cmd,
                    std::path::Path::new(env!("CARGO_BIN_EXE_switchboard")),
                    &dir.path().join("data"),
                    16 << 20,
                );
            }
            Kind::Mosquitto => {
                let (mqtt, ws) = (free_port(), free_port());
                let config = dir.path().join("mosquitto.conf");
                // Tuned to match switchboard: TCP_NODELAY, and a QoS 0 queue per
                // client as deep as switchboard's WebSocket outbound queue.
                let text = format!(
                    "per_listener_settings false\nallow_anonymous true\npersistence false\n\
                     set_tcp_nodelay true\nmax_queued_messages 65536\n\
                     log_dest stderr\nlog_type error\nlog_type warning\n\
                     listener {mqtt} 127.0.0.1\nlistener {ws} 127.0.0.1\nprotocol websockets\n"
                );
                std::fs::write(&config, text).expect("cannot write mosquitto.conf");
                cmd.arg(MOSQUITTO).arg("-c").arg(&config);
                fixed = Some((
                    SocketAddr::from(([127, 0, 0, 1], mqtt)),
                    SocketAddr::from(([127, 0, 0, 1], ws)),
                ));
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", kind.name()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let errs = errors.clone();
        let rx = switchboard_bench::host::watch_stderr(
            &mut child,
            |rest| {
                let addr = |key| switchboard_bench::host::listening_addr(rest, key);
                Some((addr("mqtt=")?, addr("http=")?))
            },
            move |line| {
                // Switchboard warns at start that anonymous clients are allowed: expected.
                if line.contains("anonymous clients are allowed") {
                    return;
                }
                if let Ok(mut e) = errs.lock() {
                    if e.len() < 50 {
                        e.push(line);
                    }
                }
            },
        );
        let (mqtt, ws) = match fixed {
            Some(addrs) => {
                // Mosquitto says nothing when ready: wait until both ports accept.
                let deadline = Instant::now() + Duration::from_secs(10);
                while [addrs.0, addrs.1]
                    .iter()
                    .any(|a| std::net::TcpStream::connect(a).is_err())
                {
                    assert!(
                        Instant::now() < deadline,
                        "mosquitto did not start listening"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                addrs
            }
            None => rx
                .recv_timeout(Duration::from_secs(20))
                .expect("switchboard did not report its addresses"),
        };
        Broker {
            kind,
            mqtt,
            ws,
            child,
            errors,
            _dir: dir,
        }
    }

    /// CPU time used so far (user + system, all threads).
    pub fn cpu(&self) -> Duration {
        switchboard_bench::host::cpu_time(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> u64 {
        switchboard_bench::host::rss_kib(self.child.id()).map_or(0, |k| k / 1024)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
