//! Test harness: the real `switchboard` binary as a child process, and a raw
//! WebSocket client for frame-level tests.
#![allow(dead_code)]

pub mod certs;
pub mod creds;
pub mod http;
pub mod notify;
pub mod redis;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A running daemon. Killed when dropped.
pub struct Daemon {
    child: Child,
    pub http: SocketAddr,
    /// MQTT over TCP and over WebSocket, unless turned off.
    pub mqtt: Option<SocketAddr>,
    pub mqtt_ws: Option<SocketAddr>,
    logs: Logs,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

type Logs = Arc<Mutex<Vec<String>>>;

/// `switchboard serve` as the tests run it: this configuration and data directory,
/// every listener on a free port, stderr piped.
fn command(
    config_path: &std::path::Path,
    data_dir: &std::path::Path,
    env: &[(String, String)],
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(config_path)
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env_remove("RUST_LOG")
        // A test run under systemd must not have its daemons talk to the real manager
        // (tests/systemd.rs passes its own).
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Info, unless the test's file chooses (an environment variable would win over it).
    let text = std::fs::read_to_string(config_path).unwrap_or_default();
    if !text
        .lines()
        .any(|l| l.trim_start().starts_with("log_level"))
    {
        cmd.env("SWITCHBOARD_LOG_LEVEL", "info");
    }
    // Every listener on a free port, so tests run in parallel.
    for var in [
        "SWITCHBOARD_HTTP_LISTEN",
        "SWITCHBOARD_MQTT_LISTEN",
        "SWITCHBOARD_MQTT_WS_LISTEN",
    ] {
        if !env.iter().any(|(k, _)| k == var) {
            cmd.env(var, "127.0.0.1:0");
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the binary and waits for its `listening` line; returns the line's addresses.
fn spawn(
    config_path: &std::path::Path,
    data_dir: &std::path::Path,
    env: &[(String, String)],
) -> (Child, Logs, String) {
    let mut child = command(config_path, data_dir, env)
        .spawn()
        .expect("spawn switchboard");
    let stderr = child.stderr.take().expect("stderr");
    let logs: Logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addrs) = line.split("listening ").nth(1) {
                let _ = tx.send(addrs.to_owned());
            }
            sink.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addrs) => (child, logs, addrs),
        Err(_) => {
            let _ = child.kill();
            panic!(
                "daemon did not report listening; logs:\n{}",
                logs.lock().unwrap().join("\n")
            );
        }
    }
}

impl Daemon {
    /// Starts the daemon with this configuration text on a free port and a fresh data
    /// directory, and waits for its `listening` line.
    pub fn start(config: &str) -> Daemon {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("switchboard.toml");
        std::fs::write(&config_path, config).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, logs, addrs) = spawn(&config_path, &dir.path().join("data"), &env);
        let http = parse_listening(&addrs, "http").expect("http address in listening line");
        Daemon {
            child,
            http,
            mqtt: parse_listening(&addrs, "mqtt"),
            mqtt_ws: parse_listening(&addrs, "mqtt_ws"),
            logs,
            config_path,
            env,
            _dir: dir,
        }
    }

    /// The data directory, kept across [`Daemon::restart`].
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Stops the daemon gracefully (SIGTERM) and starts it again with the same
    /// configuration file, environment and data directory. Listeners on port 0 get new
    /// ports; the fields are updated.
    pub fn restart(&mut self) {
        self.signal("TERM");
        if self.wait_exit(Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.respawn();
    }

    /// Kills the daemon with SIGKILL (no shutdown at all) and starts it again, as
    /// [`Daemon::restart`] does.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn();
    }

    /// Stops the daemon gracefully (SIGTERM) and leaves it stopped; [`Daemon::respawn`]
    /// starts it again.
    pub fn stop(&mut self) {
        self.signal("TERM");
        if self.wait_exit(Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts the daemon again with the same configuration file, environment and data
    /// directory (after [`Daemon::stop`]).
    pub fn respawn(&mut self) {
        let (child, logs, addrs) = spawn(&self.config_path, &self.data_dir(), &self.env);
        self.child = child;
        self.logs = logs;
        self.http = parse_listening(&addrs, "http").expect("http address in listening line");
        self.mqtt = parse_listening(&addrs, "mqtt");
        self.mqtt_ws = parse_listening(&addrs, "mqtt_ws");
    }

    /// Runs the daemon again on the same configuration and data directory (after
    /// [`Daemon::stop`]) when it may refuse to start: its exit status, or `None` when it
    /// started (logged its `listening` line; it is then stopped with SIGTERM, cleanly),
    /// and its stderr.
    pub fn run_to_exit(&self) -> (Option<ExitStatus>, String) {
        let mut child = command(&self.config_path, &self.data_dir(), &self.env)
            .spawn()
            .expect("spawn switchboard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut logs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let started = line.contains("listening ");
                    logs.push(line);
                    if started {
                        let _ = Command::new("kill")
                            .arg("-TERM")
                            .arg(child.id().to_string())
                            .status();
                        let _ = child.wait();
                        break None;
                    }
                }
                // stderr closed: the process is exiting.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    break Some(child.wait().expect("wait for switchboard"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    assert!(
                        Instant::now() < deadline,
                        "switchboard neither started nor exited"
                    );
                }
            }
        };
        (status, logs.join("\n"))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The address of any listener named in the `listening` line (`mqtts`, `mqtt_wss`, …).
    pub fn listening(&self, name: &str) -> Option<SocketAddr> {
        // The reader thread reports the line before it stores it: wait for it to land.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs.lock().unwrap();
            if let Some(line) = logs.iter().find_map(|l| l.split("listening ").nth(1)) {
                return parse_listening(line, name);
            }
            drop(logs);
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits up to 10 s for the daemon to log a line containing `needle`: the reader
    /// thread stores lines a moment after the daemon writes them.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{needle}` in the log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to 10 s until the daemon has logged `needle` at least `n` times.
    pub async fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.logs().matches(needle).count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{needle}` not logged {n} times:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of an unlabelled counter or gauge at /metrics.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    pub async fn healthz(&self) -> Value {
        http_get_json(self.http, "/healthz").await
    }

    /// Waits up to `wait` for the daemon to count `n` connections; returns the last count.
    pub async fn wait_for_connections(&self, n: u64, wait: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let count = self.healthz().await["connections"].as_u64().unwrap_or(0);
            if count == n || tokio::time::Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `name=addr` from the listening line.
pub fn parse_listening(line: &str, name: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|a| a.parse().ok())
}

/// A tiny HTTP/1.1 GET, enough for health checks without another dependency.
pub async fn http_get_json(addr: SocketAddr, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("bad JSON from {path}: {e}: {text}"))
}

/// A WebSocket client that speaks raw frames, for tests of the wire itself.
pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub client_id: String,
}

impl Raw {
    /// Connects and consumes the `welcome` frame.
    pub async fn connect(url: &str) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let mut raw = Raw {
            ws,
            client_id: String::new(),
        };
        let welcome = raw.recv().await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        raw.client_id = welcome["client"].as_str().expect("client id").to_owned();
        raw
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next JSON text frame (pings are answered by tungstenite while we read).
    pub async fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(10))
            .await
            .expect("expected a frame within 10 s")
    }

    /// The next JSON text frame, or None if nothing came within `wait` or the
    /// connection ended.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match next {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("JSON frame"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Publishes `count` messages `{"i": n, "pad": …}` of about `pad` bytes without
    /// waiting for acks, then one ping so that all of them have been processed.
    pub async fn flood(&mut self, topic: &str, count: u64, pad: usize) {
        self.flood_from(topic, 0, count, pad).await
    }

    /// [`Raw::flood`] with `i` running from `start` to `end` (excluded).
    pub async fn flood_from(&mut self, topic: &str, start: u64, end: u64, pad: usize) {
        let pad = "p".repeat(pad);
        for i in start..end {
            self.send(serde_json::json!({"op":"pub","topic":topic,"data":{"i":i,"pad":pad}}))
                .await;
        }
        self.request(serde_json::json!({"op":"ping"})).await;
    }

    /// Connects and subscribes to `topic`.
    pub async fn subscribed(url: &str, topic: &str) -> Raw {
        let mut c = Raw::connect(url).await;
        let r = c
            .request(serde_json::json!({"op":"sub","topic":topic}))
            .await;
        assert_eq!(r["op"], "ok", "sub {topic}: {r}");
        c
    }

    /// The next `msg` push, skipping anything else.
    pub async fn next_msg(&mut self) -> Value {
        loop {
            let f = self.recv().await;
            if f["op"] == "msg" {
                return f;
            }
        }
    }

    /// Sends a request and returns its reply, skipping pushes that arrive first.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = format!("r{}", rand::random::<u32>());
        frame["id"] = Value::String(id.clone());
        self.send(frame).await;
        loop {
            let f = self.recv().await;
            if f["id"] == Value::String(id.clone()) {
                return f;
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn close_code(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => return Some(f.code.into()),
                Ok(Some(Ok(Message::Close(None)))) => return Some(1005),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Another device is still served after `what`: a `mosquitto_pub` message reaches a
/// WebSocket subscriber through the daemon's MQTT listener.
pub async fn mqtt_still_serves(d: &Daemon, what: &str) {
    let topic = format!("alive/{}", rand::random::<u32>());
    let mut ws = Raw::subscribed(&d.ws_url(), &topic).await;
    let port = d.mqtt.expect("MQTT listener").port();
    assert!(
        mosquitto_pub(port, &["-i", "alive-check", "-t", &topic, "-m", "ok"]).await,
        "after {what}: mosquitto_pub failed"
    );
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next_msg())
        .await
        .unwrap_or_else(|_| panic!("after {what}: message did not reach the hub"));
    assert_eq!(m["data"], "ok", "after {what}");
}

/// Runs `mosquitto_pub` against a local port to completion; whether it succeeded.
pub async fn mosquitto_pub<S: AsRef<std::ffi::OsStr>>(port: u16, args: &[S]) -> bool {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || cmd.status().expect("run mosquitto_pub")),
    )
    .await
    .expect("mosquitto_pub hung")
    .expect("mosquitto_pub task")
    .success()
}

/// Runs `switchboard serve` with each configuration and checks that it refuses to
/// start with an error containing the paired text.
pub fn assert_startup_errors(cases: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (config, needle) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, config).expect("write config");
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
            .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
            .output()
            .expect("run switchboard");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config}: started anyway");
        assert!(err.contains(needle), "{config}: {err}");
    }
}

/// Runs a client process and hands its stdout lines over a channel, read by a thread.
pub fn spawn_lines(mut cmd: Command) -> (Child, UnboundedReceiver<String>) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn client");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// A running `mosquitto_sub -d` against a local port, subscribed once `start` returns.
pub struct MosquittoSub {
    child: Child,
    rx: UnboundedReceiver<String>,
}

impl MosquittoSub {
    /// `args` carry the topic (`-t`) and anything else (`-i`, `--cafile`…).
    pub async fn start<S: AsRef<std::ffi::OsStr>>(port: u16, args: &[S]) -> MosquittoSub {
        // Line-buffered, so the SUBACK debug line is seen while it runs.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-d", "-F", "MSG %t %x"])
            .args(args);
        let (child, rx) = spawn_lines(cmd);
        let mut sub = MosquittoSub { child, rx };
        sub.line_where(Duration::from_secs(10), |l| l.contains("received SUBACK"))
            .await
            .expect("mosquitto_sub got no SUBACK");
        sub
    }

    pub async fn line_where(
        &mut self,
        wait: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// The next message: (topic, payload).
    pub async fn message(&mut self, wait: Duration) -> Option<(String, Vec<u8>)> {
        let line = self.line_where(wait, |l| l.starts_with("MSG ")).await?;
        let mut parts = line.splitn(3, ' ').skip(1);
        let topic = parts.next()?.to_owned();
        Some((topic, unhex(parts.next().unwrap_or(""))))
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
