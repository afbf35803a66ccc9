//! The systems under test as child processes, each on free ports and pinned to core 0
//! when `taskset` works: switchboard (a binary cargo built), Mosquitto (Debian's), and
//! the Node `ws` and Socket.IO servers of `loadgen/peers/`. Also what the harness
//! needs before it can start each, and the versions that go into the results.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::{System, Target};
use crate::host;

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Set in the environment of the harness re-executed under `unshare -n`.
// Not `SWITCHBOARD_…`: switchboard refuses settings it does not know.
pub const NETNS_ENV: &str = "LOADGEN_NETNS";

/// What the harness starts systems with.
#[derive(Debug, Clone)]
pub struct Setup {
    pub switchboard_bin: PathBuf,
    pub peers_dir: PathBuf,
    pub pin: bool,
    /// permessage-deflate on (`--deflate`): switchboard with `ws.compression` and every
    /// frame compressed, the Node `ws` peer with `perMessageDeflate`, and their
    /// subscribers offering it. Mosquitto and Socket.IO run as always.
    pub deflate: bool,
    /// A configuration file for switchboard (`serve --config`), e.g. with `[cluster]`.
    pub switchboard_config: Option<PathBuf>,
    /// More arguments for the Node peers (the `cluster` scenario's `--adapter`, `--redis`).
    pub node_args: Vec<String>,
}

impl Setup {
    /// Why `system` cannot run here, or `None` when it can.
    pub fn missing(&self, system: System) -> Option<String> {
        match system {
            System::Switchboard => (!self.switchboard_bin.exists()).then(|| {
                format!(
                    "{} not found: run `cargo build --release -p switchboard` or pass --switchboard-bin",
                    self.switchboard_bin.display()
                )
            }),
            System::Mosquitto => {
                if !Path::new(MOSQUITTO).exists() {
                    Some("install mosquitto (apt-get install mosquitto)".into())
                } else if std::env::var_os(NETNS_ENV).is_none() {
                    Some("needs a private network namespace (`unshare -n`, as root): its websockets listener binds every interface".into())
                } else {
                    None
                }
            }
            System::NodeWs | System::Socketio => {
                let script = self.peers_dir.join(peer_script(system));
                if !script.exists() {
                    Some(format!("{} is missing", script.display()))
                } else if which("node").is_none() {
                    Some("install nodejs and npm".into())
                } else if !self.peers_dir.join("node_modules").exists() {
                    Some(format!(
                        "run `npm ci --prefix {}` (install nodejs and npm)",
                        self.peers_dir.display()
                    ))
                } else {
                    None
                }
            }
        }
    }

    /// Installs the Node peers' packages when they are missing and npm is there. Run
    /// before entering the private network namespace (npm needs the network).
    pub fn prepare_node(&self) {
        if self.peers_dir.join("package.json").exists()
            && !self.peers_dir.join("node_modules").exists()
            && which("npm").is_some()
        {
            eprintln!(
                "installing the Node peers: npm ci --prefix {}",
                self.peers_dir.display()
            );
            let ok = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&self.peers_dir)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("npm ci failed: the Node peers will be skipped");
            }
        }
    }
}

fn peer_script(system: System) -> &'static str {
    if system == System::Socketio {
        "socketio-server.js"
    } else {
        "ws-server.js"
    }
}

/// The full path of `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port")?
        .port())
}

/// A running system.
pub struct Server {
    pub target: Target,
    /// The HTTP listener, for the systems that have one (switchboard, Node `ws`).
    pub http: Option<SocketAddr>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(system: System, setup: &Setup) -> Result<Server> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let mut cmd = host::core0_command(setup.pin);
        // Mosquitto's ports, chosen here: it says nothing when it is ready.
        let mut mosquitto_ports = (0, 0);
        match system {
            System::Switchboard => {
                // Queues of 64 MiB: the payload scenario sends up to 1 MiB messages.
                host::switchboard_serve(
                    &mut cmd,
                    &setup.switchboard_bin,
                    &dir.path().join("data"),
                    64 << 20,
                );
                // Mosquitto takes packets up to 256 MiB: let switchboard take 1 MiB
                // payloads too (its default limit is 1 MiB per packet).
                cmd.env("SWITCHBOARD_MQTT_MAX_PACKET_SIZE", (4u32 << 20).to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                if let Some(config) = &setup.switchboard_config {
                    cmd.arg("--config").arg(config);
                }
                if setup.deflate {
                    cmd.env("SWITCHBOARD_WS_COMPRESSION", "true")
                        .env("SWITCHBOARD_WS_COMPRESSION_THRESHOLD", "0");
                }
            }
            System::Mosquitto => {
                let config = dir.path().join("mosquitto.conf");
                let (mqtt, ws) = (free_port()?, free_port()?);
                let text = format!(
                    "per_listener_settings false\nallow_anonymous true\npersistence false\n\
                     set_tcp_nodelay true\nmax_queued_messages 65536\n\
                     log_dest stderr\nlog_type error\n\
                     listener {mqtt} 127.0.0.1\nlistener {ws} 127.0.0.1\nprotocol websockets\n"
                );
                std::fs::write(&config, text).context("cannot write mosquitto.conf")?;
                cmd.arg(MOSQUITTO).arg("-c").arg(&config);
                cmd.stdout(Stdio::null()).stderr(Stdio::piped());
                mosquitto_ports = (mqtt, ws);
            }
            System::NodeWs | System::Socketio => {
                cmd.arg("node")
                    .arg(setup.peers_dir.join(peer_script(system)))
                    .args(["--port", "0"])
                    .args(&setup.node_args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                if setup.deflate && system == System::NodeWs {
                    cmd.arg("--deflate");
                }
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", system.name()))?;
        let server = |ws, mqtt, http, child| Server {
            target: Target {
                system,
                ws,
                mqtt,
                deflate: setup.deflate && matches!(system, System::Switchboard | System::NodeWs),
            },
            http,
            child,
            _dir: dir,
        };
        match system {
            System::Switchboard => {
                // What it said instead of `listening`, for the error.
                let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let log = seen.clone();
                let rx = host::watch_stderr(
                    &mut child,
                    |rest| {
                        let addr = |key| host::listening_addr(rest, key);
                        Some((addr("http=")?, addr("mqtt=")?))
                    },
                    move |line| {
                        if line.contains("ERROR") || line.contains("panicked") {
                            eprintln!("  [switchboard] {line}");
                        } else if !line.contains("anonymous clients are allowed") {
                            if let Ok(mut l) = log.lock() {
                                l.push(line);
                            }
                        }
                    },
                );
                match rx.recv_timeout(Duration::from_secs(20)) {
                    Ok((http, mqtt)) => Ok(server(http, Some(mqtt), Some(http), child)),
                    Err(_) => {
                        let _ = child.kill();
                        let said = seen.lock().map(|l| l.join(" | ")).unwrap_or_default();
                        bail!("switchboard did not report its addresses: {said}")
                    }
                }
            }
            System::Mosquitto => {
                drain_stderr(&mut child, "mosquitto");
                let (mqtt, ws) = mosquitto_ports;
                let (mqtt, ws) = (
                    SocketAddr::from(([127, 0, 0, 1], mqtt)),
                    SocketAddr::from(([127, 0, 0, 1], ws)),
                );
                // Mosquitto says nothing when ready: wait until both ports accept.
                let deadline = Instant::now() + Duration::from_secs(10);
                while [mqtt, ws]
                    .iter()
                    .any(|a| std::net::TcpStream::connect(a).is_err())
                {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("mosquitto did not start listening");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(server(ws, Some(mqtt), None, child))
            }
            System::NodeWs | System::Socketio => {
                drain_stderr(&mut child, system.name());
                let Some(stdout) = child.stdout.take() else {
                    bail!("no stdout from {}", system.name())
                };
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut sent = false;
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if !sent {
                            if let Some(addr) = line.strip_prefix("listening ") {
                                sent = tx.send(addr.trim().parse::<SocketAddr>()).is_ok();
                            }
                        }
                    }
                });
                match rx.recv_timeout(Duration::from_secs(20)) {
                    Ok(Ok(addr)) => {
                        let http = (system == System::NodeWs).then_some(addr);
                        Ok(server(addr, None, http, child))
                    }
                    _ => {
                        let _ = child.kill();
                        bail!("{} did not print `listening 127.0.0.1:PORT`", system.name())
                    }
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time so far (user + system, all threads).
    pub fn cpu(&self) -> Duration {
        host::cpu_time(&format!("/proc/{}/stat", self.pid()))
    }

    pub fn rss_kib(&self) -> u64 {
        host::rss_kib(self.pid()).unwrap_or(0)
    }

    pub fn peak_rss_kib(&self) -> u64 {
        host::peak_rss_kib(self.pid()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Passes a child's error lines on, so a crash is not silent, and keeps its pipe empty.
fn drain_stderr(child: &mut Child, name: &'static str) {
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                eprintln!("  [{name}] {line}");
            }
        });
    }
}

/// The first line of a command's output (stdout, else stderr), trimmed.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

/// The version of every system, for the record.
pub fn versions(setup: &Setup) -> serde_json::Value {
    let package_version = |name: &str| {
        let path = setup
            .peers_dir
            .join("node_modules")
            .join(name)
            .join("package.json");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
    };
    let switchboard = setup
        .switchboard_bin
        .to_str()
        .and_then(|bin| first_line(bin, &["--version"]));
    serde_json::json!({
        "switchboard": switchboard,
        "switchboard_commit": first_line("git", &["rev-parse", "--short", "HEAD"]),
        "switchboard_bin": setup.switchboard_bin,
        "mosquitto": first_line(MOSQUITTO, &["-h"]),
        "node": first_line("node", &["--version"]),
        "npm_ws": package_version("ws"),
        "npm_socket.io": package_version("socket.io"),
        "npm_socket.io_redis_adapter": package_version("@socket.io/redis-adapter"),
        "npm_socket.io_redis_streams_adapter": package_version("@socket.io/redis-streams-adapter"),
        "npm_ioredis": package_version("ioredis"),
        "redis_server": first_line("redis-server", &["--version"]),
        "rustc": first_line("rustc", &["--version"]),
    })
}
