//! A real Mosquitto for the bridge bench and the root package's bridge tests: its own
//! generated config on a free port, with persistence in its own directory, so it can be
//! stopped and started again on the same port with its sessions and queued messages
//! kept. Unlike [`crate::peers`] (Mosquitto as a system raced, started once), this one
//! is an upstream broker that a test takes down and brings back.
//!
//! Test fixtures: a broker that does not start, or a subscription it does not
//! acknowledge, panics with what went wrong, since the test or bench cannot go on.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A running Mosquitto, killed when dropped.
pub struct Mosquitto {
    /// Its plain MQTT listener on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Runs on core 0, as the bridge bench's local broker under test does.
    core0: bool,
}

/// A port nothing listens on now, for a broker that must keep its port across restarts.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
}

impl Mosquitto {
    /// Starts Mosquitto with a plain listener on a free port; `listeners` is appended
    /// after it (more listeners, TLS files, `password_file`…), with `{dir}` replaced by
    /// the broker's directory. Returns once the port accepts connections.
    pub fn start(listeners: &str) -> Mosquitto {
        Self::start_on(free_port(), listeners)
    }

    /// The same, pinned to core 0 when `pin` holds (a bench's broker under test, where
    /// switchboard would run).
    pub fn start_pinned(listeners: &str, pin: bool) -> Mosquitto {
        Self::start_with(free_port(), listeners, pin)
    }

    /// The same on a chosen port.
    pub fn start_on(port: u16, listeners: &str) -> Mosquitto {
        Self::start_with(port, listeners, false)
    }

    fn start_with(port: u16, listeners: &str, core0: bool) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, Mosquitto drops to its own user, which must still write its
        // database (and read the files put here).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let d = dir.path().display().to_string();
        let config = format!(
            "per_listener_settings false\nallow_anonymous true\npersistence true\npersistence_location {d}/\nautosave_interval 0\nmax_queued_messages 0\nmax_inflight_messages 100\nlog_dest stderr\nlog_type all\nlistener {port} 127.0.0.1\n{}\n",
            listeners.replace("{dir}", &d)
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
            core0,
        };
        m.run();
        m
    }

    /// A file in the broker's directory (its config, database, log, and what tests put
    /// there).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file into the broker's directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.path(name), text).expect("write file");
        self.path(name).display().to_string()
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("mosquitto.log"))
            .expect("log file");
        let child = crate::host::core0_command(self.core0)
            .arg("mosquitto")
            .arg("-c")
            .arg(self.path("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run mosquitto (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (SIGTERM: it saves its sessions and queued messages) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same directory.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Its process id while it runs (a test pauses it with SIGSTOP to make it silent).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the broker has logged so far (`log_type all`), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("mosquitto.log")).unwrap_or_default()
    }

    /// Connections the broker has seen so far (every attempt, accepted or not).
    pub fn connection_attempts(&self) -> usize {
        self.log().matches("New connection from").count()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A QoS 1 subscriber with a persistent session that reconnects by itself, so it also
/// gets what the broker queued for it while the broker or it was down. Messages come
/// out of `rx` as (topic, payload).
pub struct Subscriber {
    pub rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes to `filter` and returns once the broker acknowledged it.
    pub async fn start(port: u16, filter: &str) -> Subscriber {
        let mut options = MqttOptions::new(format!("subscriber-{port}"), "127.0.0.1", port);
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_inflight(100);
        let (client, mut events) = AsyncClient::new(options, 100);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut ready = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .expect("no SUBACK from mosquitto")
            .expect("subscriber task");
        Subscriber { rx, task }
    }

    /// The next message, within 20 s.
    pub async fn next(&mut self) -> (String, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("nothing arrived in time")
            .expect("subscriber ended")
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
