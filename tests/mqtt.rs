//! The embedded MQTT broker, exercised with clients nobody here wrote: Debian's
//! `mosquitto_pub`/`mosquitto_sub` and Python paho-mqtt 2.x (driven through
//! `tests/mqtt/paho_client.py`), against the real daemon and its WebSocket hub.

mod common;

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command};
use std::time::Duration;

use common::creds::{password_file, user_token, Secrets, ADMIN};
use common::http::{api, call, code, get, subscribed_as};
use common::{mosquitto_pub, spawn_lines, unhex, Daemon, MosquittoSub, Raw};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message;

/// How long "nothing else arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// How long anything that should happen may take.
const WAIT: Duration = Duration::from_secs(5);

const PAHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt/paho_client.py");

// ---------------------------------------------------------------------------------------
// Helpers: child processes whose stdout lines arrive on a channel.
// ---------------------------------------------------------------------------------------

/// Spawns `cmd` with piped stdin/stdout; each stdout line is sent on the channel.
/// A paho-mqtt device: commands in as JSON lines, events out as JSON lines.
struct Paho {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: UnboundedReceiver<String>,
    pending: VecDeque<Value>,
    id: String,
}

struct PahoOpts<'a> {
    version: &'a str,
    client_id: &'a str,
    websocket: bool,
    login: Option<(&'a str, &'a str)>,
    /// topic, payload, retain
    will: Option<(&'a str, &'a [u8], bool)>,
    /// 3.1.1 clean session off.
    persistent: bool,
}

impl<'a> PahoOpts<'a> {
    fn new(version: &'a str, client_id: &'a str) -> Self {
        PahoOpts {
            version,
            client_id,
            websocket: false,
            login: None,
            will: None,
            persistent: false,
        }
    }
}

impl Paho {
    /// Starts the device and returns it with its CONNACK event (whatever it says).
    async fn start(port: u16, o: PahoOpts<'_>) -> (Paho, Value) {
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(PAHO)
            .args(["--port", &port.to_string()])
            .args(["--version", o.version])
            .args(["--client-id", o.client_id]);
        if o.websocket {
            cmd.args(["--transport", "websockets"]);
        }
        if o.persistent {
            cmd.arg("--persistent");
        }
        if let Some((user, pass)) = o.login {
            cmd.args(["--username", user, "--password", pass]);
        }
        if let Some((topic, payload, retain)) = o.will {
            cmd.args(["--will-topic", topic, "--will-payload-hex", &hex(payload)]);
            if retain {
                cmd.arg("--will-retain");
            }
        }
        let (mut child, rx) = spawn_lines(cmd);
        let stdin = child.stdin.take();
        let mut paho = Paho {
            child,
            stdin,
            rx,
            pending: VecDeque::new(),
            id: o.client_id.to_owned(),
        };
        let connack = paho.expect("connack").await;
        (paho, connack)
    }

    /// Starts a device that must be accepted.
    async fn connect(port: u16, version: &str, client_id: &str) -> Paho {
        Self::connect_with(port, PahoOpts::new(version, client_id)).await
    }

    async fn connect_with(port: u16, o: PahoOpts<'_>) -> Paho {
        let id = o.client_id.to_owned();
        let (paho, connack) = Self::start(port, o).await;
        assert_eq!(connack["reason"], 0, "{id} refused: {connack}");
        paho
    }

    fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").expect("write to paho");
        stdin.flush().expect("flush paho");
    }

    /// The next event matching `pred` within `wait`; others are kept for later.
    async fn next_where(&mut self, wait: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(at) = self.pending.iter().position(&pred) {
            return self.pending.remove(at);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            let event: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| json!({"event":"junk","line":line}));
            assert_ne!(event["event"], "error", "{}: {event}", self.id);
            if pred(&event) {
                return Some(event);
            }
            self.pending.push_back(event);
        }
    }

    async fn expect(&mut self, event: &str) -> Value {
        self.next_where(WAIT, |e| e["event"] == event)
            .await
            .unwrap_or_else(|| panic!("{}: no {event} event within {WAIT:?}", self.id))
    }

    async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Value {
        self.send(
            json!({"cmd":"publish","topic":topic,"payload_hex":hex(payload),
            "qos":qos,"retain":retain,"wait":true}),
        );
        self.expect("published").await
    }

    /// Subscribes and returns the SUBACK reason codes.
    async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u64> {
        self.send(json!({"cmd":"subscribe","filters":filters}));
        let sent = self.expect("subscribe_sent").await;
        assert_eq!(sent["rc"], 0, "{}: {sent}", self.id);
        let mid = sent["mid"].clone();
        let suback = self
            .next_where(WAIT, |e| e["event"] == "suback" && e["mid"] == mid)
            .await
            .unwrap_or_else(|| panic!("{}: no SUBACK", self.id));
        suback["reason_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect()
    }

    /// The next message: (topic, payload, retain).
    async fn message(&mut self) -> (String, Vec<u8>, bool) {
        let m = self.expect("message").await;
        (
            m["topic"].as_str().unwrap().to_owned(),
            unhex(m["payload_hex"].as_str().unwrap()),
            m["retain"].as_bool().unwrap(),
        )
    }

    async fn no_message(&mut self, wait: Duration) {
        if let Some(m) = self.next_where(wait, |e| e["event"] == "message").await {
            panic!("{}: unexpected message {m}", self.id);
        }
    }

    /// Waits for the server to end the connection.
    async fn expect_disconnected(&mut self) -> Value {
        self.next_where(WAIT, |e| {
            e["event"] == "disconnect" || e["event"] == "loop_ended"
        })
        .await
        .unwrap_or_else(|| panic!("{}: still connected after {WAIT:?}", self.id))
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Paho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mqtt_port(d: &Daemon) -> u16 {
    d.mqtt.expect("MQTT listener").port()
}

/// Asserts no `msg` push arrives for a while.
async fn no_msg(c: &mut Raw, what: &str) {
    while let Some(f) = c.try_recv(QUIET).await {
        assert_ne!(f["op"], "msg", "{what}: unexpected {f}");
    }
}

/// The next `msg` push as raw text, and its `data` exactly as the server wrote it.
async fn next_msg_raw(c: &mut Raw) -> (Value, String) {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    loop {
        let next = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("no frame")
            .expect("connection ended")
            .expect("ws error");
        let Message::Text(text) = next else { continue };
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        if value["op"] != "msg" {
            continue;
        }
        let frame: Frame<'_> = serde_json::from_str(text.as_str()).unwrap();
        let data = frame.data.expect("data").get().to_owned();
        return (value, data);
    }
}

async fn mqtt_stats(d: &Daemon) -> Value {
    d.healthz().await["mqtt"].clone()
}

fn stat(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no mqtt.{key}: {v}"))
}

/// Another device still works: a `mosquitto_pub` message reaches a WebSocket subscriber.
async fn still_works(d: &Daemon, what: &str) {
    common::mqtt_still_serves(d, what).await
}

// ---------------------------------------------------------------------------------------
// 1. MQTT → WebSocket
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_publishes_reach_websocket_subscribers_once() {
    let d = Daemon::start("");
    let port = mqtt_port(&d);
    let mut ws = Raw::subscribed(&d.ws_url(), "house/#").await;

    assert!(mosquitto_pub(port, &["-i", "mosq-1", "-t", "house/hall", "-m", "21"]).await);
    let m = ws.next_msg().await;
    assert_eq!(m["topic"], "house/hall");
    assert_eq!(m["data"], 21);
    assert_eq!(m["from"], "mqtt:mosq-1");
    no_msg(&mut ws, "mosquitto_pub").await;

    for (version, id) in [("3.1.1", "paho-v311"), ("5", "paho-v5")] {
        let mut p = Paho::connect(port, version, id).await;
        let topic = format!("house/{id}");
        p.publish(&topic, b"{\"v\":1}", 1, false).await;
        let m = ws.next_msg().await;
        assert_eq!(m["topic"], topic.as_str());
        assert_eq!(m["data"], json!({"v":1}));
        assert_eq!(m["from"], format!("mqtt:{id}"));
        no_msg(&mut ws, id).await;
    }
}

// ---------------------------------------------------------------------------------------
// 2. WebSocket → MQTT
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn websocket_publishes_reach_mqtt_subscribers_once_without_loops() {
    let d = Daemon::start("");
    let port = mqtt_port(&d);
    let mut mosq = MosquittoSub::start(port, &["-t", "lights/#", "-i", "mosq-sub"]).await;
    let mut paho = Paho::connect(port, "5", "paho-sub").await;
    assert_eq!(paho.subscribe(&[("lights/#", 1)]).await, vec![1]);
    let mut other_ws = Raw::subscribed(&d.ws_url(), "lights/#").await;

    let mut publisher = Raw::connect(&d.ws_url()).await;
    let r = publisher
        .request(json!({"op":"pub","topic":"lights/kitchen","data":{"on":true}}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");

    let (topic, payload) = mosq.message(WAIT).await.expect("mosquitto_sub message");
    assert_eq!(topic, "lights/kitchen");
    assert_eq!(payload, br#"{"on":true}"#);
    let (topic, payload, _) = paho.message().await;
    assert_eq!(topic, "lights/kitchen");
    assert_eq!(payload, br#"{"on":true}"#);
    let m = other_ws.next_msg().await;
    assert_eq!(m["data"], json!({"on":true}));
    assert_eq!(m["from"], Value::String(publisher.client_id.clone()));

    // Exactly once everywhere, and nothing bounced back from MQTT into the hub.
    assert!(
        mosq.message(QUIET).await.is_none(),
        "second copy to mosquitto_sub"
    );
    paho.no_message(QUIET).await;
    no_msg(&mut other_ws, "second copy to WS").await;
    no_msg(&mut publisher, "echo to the publisher").await;
}

/// A device's QoS 0 publishes skip the MQTT router while no MQTT subscriber could want
/// them (see `bridge/src/interest.rs`). What must hold: WebSocket dashboards get every
/// one; an MQTT subscriber gets them from the moment its SUBACK arrives, even though the
/// publishing device's session had already found nobody listening on that topic; and a
/// persistent session's subscription keeps receiving after its device comes back without
/// subscribing again.
#[tokio::test]
async fn device_publishes_reach_mqtt_subscribers_however_late_they_subscribe() {
    let d = Daemon::start("");
    let port = mqtt_port(&d);
    let mut dashboard = Raw::subscribed(&d.ws_url(), "plant/#").await;
    let mut sensor = Paho::connect(port, "3.1.1", "sensor-1").await;

    // Nobody over MQTT listens yet; the dashboard still gets it.
    sensor.publish("plant/a/temp", b"before", 0, false).await;
    ws_sees(&mut dashboard, "before").await;

    // Now an MQTT subscriber (persistent session) and a clean one appear.
    let keeper_opts = || PahoOpts {
        persistent: true,
        ..PahoOpts::new("3.1.1", "keeper")
    };
    let mut keeper = Paho::connect_with(port, keeper_opts()).await;
    assert_eq!(keeper.subscribe(&[("plant/+/temp", 1)]).await, vec![1]);
    let mut mosq = MosquittoSub::start(port, &["-t", "plant/#", "-i", "mosq-plant"]).await;
    sensor.publish("plant/a/temp", b"one", 0, false).await;
    ws_sees(&mut dashboard, "one").await;
    let (topic, payload, _) = keeper.message().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("plant/a/temp", &b"one"[..])
    );
    let (topic, payload) = mosq.message(WAIT).await.expect("mosquitto_sub message");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("plant/a/temp", &b"one"[..])
    );
    // Other topics of the same device follow the filters too.
    sensor.publish("plant/a/humidity", b"damp", 0, false).await;
    let (topic, _) = mosq.message(WAIT).await.expect("mosquitto_sub message");
    assert_eq!(topic, "plant/a/humidity");
    ws_sees(&mut dashboard, "damp").await;
    keeper.no_message(QUIET).await;
    drop(mosq);

    // The persistent subscriber leaves cleanly and comes back without subscribing: the
    // router kept its subscription, so it must still get what the sensor publishes.
    keeper.send(json!({"cmd":"disconnect"}));
    keeper.expect_disconnected().await;
    drop(keeper);
    let mut keeper = Paho::connect_with(port, keeper_opts()).await;
    sensor.publish("plant/a/temp", b"three", 0, false).await;
    let three = keeper
        .next_where(WAIT, |e| {
            e["event"] == "message" && e["payload_hex"] == hex(b"three")
        })
        .await
        .expect("the resumed persistent session gets the publish");
    assert_eq!(three["topic"], "plant/a/temp");
    ws_sees(&mut dashboard, "three").await;
    drop(keeper);

    // Back with a clean session, the old subscription is gone for the router and for
    // the interest record alike; the dashboard alone keeps receiving.
    let mut keeper = Paho::connect(port, "3.1.1", "keeper").await;
    sensor.publish("plant/a/temp", b"four", 0, false).await;
    ws_sees(&mut dashboard, "four").await;
    keeper.no_message(QUIET).await;
}

async fn ws_sees(dashboard: &mut Raw, payload: &str) {
    let m = dashboard.next_msg().await;
    assert_eq!(m["data"], json!(payload), "{m}");
}

// ---------------------------------------------------------------------------------------
// 3. Payload mapping
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn payload_kinds_map_to_data_and_round_trip_byte_for_byte() {
    let d = Daemon::start("");
    let port = mqtt_port(&d);
    let mut ws = Raw::subscribed(&d.ws_url(), "kinds/#").await;

    // mosquitto_pub: JSON, text and (from a file) binary.
    let dir = tempfile::tempdir().unwrap();
    let bin_path = dir.path().join("blob");
    std::fs::write(&bin_path, [0x00, 0xff, 0x10, 0x80]).unwrap();
    let bin_path = bin_path.to_str().unwrap();
    let cases: [(&[&str], Value); 3] = [
        (
            &["-t", "kinds/json", "-m", r#"{"t":21.5}"#],
            json!({"t":21.5}),
        ),
        (&["-t", "kinds/text", "-m", "on"], json!("on")),
        (
            &["-t", "kinds/bin", "-f", bin_path],
            json!({"$base64":"AP8QgA=="}),
        ),
    ];
    for (args, want) in cases {
        assert!(mosquitto_pub(port, args).await, "{args:?}");
        let m = ws.next_msg().await;
        assert_eq!(m["data"], want, "{args:?}");
    }
    no_msg(&mut ws, "mosquitto_pub kinds").await;

    // MQTT → WS → MQTT: the WebSocket client passes `data` on exactly as it came.
    let mut back = Paho::connect(port, "5", "back-sub").await;
    assert_eq!(back.subscribe(&[("back/x", 0)]).await, vec![0]);
    let mut device = Paho::connect(port, "5", "rt-dev").await;
    let mut relay = Raw::subscribed(&d.ws_url(), "rt/x").await;
    let payloads: [&[u8]; 8] = [
        br#"{"t": 21.50, "u":"C"}"#,
        b"on",
        b"[1,2]",
        br#""quoted""#,
        " 42 temp 21\u{b0}C\n".as_bytes(),
        br#"{"$base64":"AAE="}"#,
        &[0x00, 0xff, 0x01, 0xfe, 0x80, 0x7f],
        b"",
    ];
    for payload in payloads {
        device.publish("rt/x", payload, 0, false).await;
        let (m, raw) = next_msg_raw(&mut relay).await;
        assert_eq!(m["from"], "mqtt:rt-dev");
        if std::str::from_utf8(payload).is_err() {
            assert!(raw.starts_with(r#"{"$base64":"#), "{raw}");
        }
        relay
            .send_text(&format!(r#"{{"op":"pub","topic":"back/x","data":{raw}}}"#))
            .await;
        let (topic, got, _) = back.message().await;
        assert_eq!(topic, "back/x");
        assert_eq!(got, payload, "round trip through data {raw}");
    }
    back.no_message(QUIET).await;
}

// ---------------------------------------------------------------------------------------
// 4. QoS
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_qos_is_acknowledged_and_delivered_once() {
    let d = Daemon::start("");
    let port = mqtt_port(&d);
    let mut ws = Raw::subscribed(&d.ws_url(), "qos/#").await;
    for version in ["3.1.1", "5"] {
        let id = format!("qos-{}", version.replace('.', ""));
        let mut p = Paho::connect(port, version, &id).await;
        for qos in 0..=2u8 {
            let topic = format!("qos/{id}/{qos}");
            let published = p.publish(&topic, b"x", qos, false).await;
            assert_eq!(
                published["is_published"], true,
                "{id} qos {qos}: {published}"
            );
            let mid = published["mid"].clone();
            let ack = p
                .next_where(WAIT, |e| e["event"] == "puback" && e["mid"] == mid)
                .await
                .expect("on_publish");
            assert_eq!(ack["reason"], 0, "{id} qos {qos}: {ack}");
            let m = ws.next_msg().await;
            assert_eq!(m["topic"], topic.as_str());
            assert_eq!(m["data"], "x");
        }
        no_msg(&mut ws, &id).await;
    }
}

// ---------------------------------------------------------------------------------------
// 5. Retained messages
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn retained_messages_cross_both_ways_and_clear() {
    let d = Daemon::start("");
    let port = mqtt_port(&d);

    // MQTT retain → later WebSocket subscriber.
    let args = ["-i", "ret-pub", "-t", "state/boiler", "-m", "hot", "-r"];
    assert!(mosquitto_pub(port, &args).await);
    let mut late = Raw::subscribed(&d.ws_url(), "state/boiler").await;
    let m = late.next_msg().await;
    assert_eq!(m["data"], "hot");
    assert_eq!(m["retained"], true, "{m}");

    // WebSocket retain → later mosquitto_sub.
    let mut ws = Raw::connect(&d.ws_url()).await;
    let r = ws
        .request(json!({"op":"pub","topic":"state/door","data":"open","retain":true}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "state/door", "-C", "1", "-W", "5", "-v"])
            .output()
            .expect("mosquitto_sub")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "state/door open\n");

    // An empty retained payload from MQTT clears it for both sides.
    assert!(mosquitto_pub(port, &["-t", "state/boiler", "-n", "-r"]).await);
    let m = late.next_msg().await;
    assert_eq!(
        m["data"], "",
        "the clearing message itself is delivered live"
    );
    let mut later = Raw::subscribed(&d.ws_url(), "state/boiler").await;
    no_msg(&mut later, "cleared retained value").await;
    let mut mqtt_later = Paho::connect(port, "5", "ret-later").await;
    mqtt_later.subscribe(&[("state/boiler", 0)]).await;
    mqtt_later.no_message(QUIET).await;
}

// ---------------------------------------------------------------------------------------
// 6. Device status and Last Will
// ---------------------------------------------------------------------------------------

async fn status_of(c: &mut Raw, id: &str) -> Value {
    let topic = format!("$devices/{id}");
    loop {
        let m = c.next_msg().await;
        if m["topic"] == topic.as_str() {
            return m;
        }
    }
}

#[tokio::test]
async fn device_status_and_last_will() {
    let d = Daemon::start("");
    let port = mqtt_port(&d);
    let mut watcher = Raw::subscribed(&d.ws_url(), "$devices/+").await;
    let mut wills_ws = Raw::subscribed(&d.ws_url(), "wills/#").await;
    let mut wills_mqtt = Paho::connect(port, "3.1.1", "will-watcher").await;
    assert_eq!(wills_mqtt.subscribe(&[("wills/#", 0)]).await, vec![0]);

    // Clean connect and disconnect; its will must not fire.
    let mut o = PahoOpts::new("5", "dev-clean");
    o.will = Some(("wills/dev-clean", b"gone", false));
    let mut dev = Paho::connect_with(port, o).await;
    let on = status_of(&mut watcher, "dev-clean").await;
    assert_eq!(on["data"]["online"], true, "{on}");
    assert_eq!(on["data"]["protocol"], "mqtt/5", "{on}");
    assert_eq!(on["data"]["transport"], "tcp", "{on}");
    // A subscriber arriving later gets the retained notice.
    let mut late = Raw::subscribed(&d.ws_url(), "$devices/dev-clean").await;
    let m = late.next_msg().await;
    assert_eq!(m["retained"], true, "{m}");
    assert_eq!(m["data"]["online"], true, "{m}");

    dev.send(json!({"cmd":"disconnect"}));
    let off = status_of(&mut watcher, "dev-clean").await;
    assert_eq!(off["data"]["online"], false, "{off}");
    assert_eq!(off["data"]["reason"], "disconnected", "{off}");
    no_msg(&mut wills_ws, "will after a clean disconnect").await;
    wills_mqtt.no_message(Duration::from_millis(50)).await;

    // Killed without DISCONNECT: the will reaches both sides, and the notice says lost.
    let mut o = PahoOpts::new("3.1.1", "dev-lost");
    o.will = Some(("wills/dev-lost", b"{\"lost\":true}", false));
    let mut dev = Paho::connect_with(port, o).await;
    assert_eq!(
        status_of(&mut watcher, "dev-lost").await["data"]["online"],
        true
    );
    dev.sigkill();
    let will = wills_ws.next_msg().await;
    assert_eq!(will["topic"], "wills/dev-lost");
    assert_eq!(will["data"], json!({"lost":true}));
    assert_eq!(will["from"], "mqtt:dev-lost");
    let (topic, payload, _) = wills_mqtt.message().await;
    assert_eq!(topic, "wills/dev-lost");
    assert_eq!(payload, b"{\"lost\":true}");
    let off = status_of(&mut watcher, "dev-lost").await;
    assert_eq!(off["data"]["online"], false, "{off}");
    assert_eq!(off["data"]["reason"], "lost", "{off}");
    no_msg(&mut wills_ws, "second will").await;

    // Same through a socket closed under paho's feet.
    let mut o = PahoOpts::new("5", "dev-sock");
    o.will = Some(("wills/dev-sock", b"bye", false));
    let mut dev = Paho::connect_with(port, o).await;
    assert_eq!(
        status_of(&mut watcher, "dev-sock").await["data"]["online"],
        true
    );
    dev.send(json!({"cmd":"close_socket"}));
    let will = wills_ws.next_msg().await;
    assert_eq!(will["topic"], "wills/dev-sock");
    assert_eq!(will["data"], "bye");
    let off = status_of(&mut watcher, "dev-sock").await;
    assert_eq!(off["data"]["reason"], "lost", "{off}");
}

// ---------------------------------------------------------------------------------------
// 7. Credentials
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn password_file_decides_who_connects() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("node", "s3cret")]);
    let d = Daemon::start(&format!(
        "[mqtt]\nallow_anonymous = false\npassword_file = \"{file}\"\n"
    ));
    let port = mqtt_port(&d);
    let before = stat(&mqtt_stats(&d).await, "connects_refused");

    let mut o = PahoOpts::new("3.1.1", "good-311");
    o.login = Some(("node", "s3cret"));
    let (_good, connack) = Paho::start(port, o).await;
    assert_eq!(connack["rc"], 0, "{connack}");

    type Login<'a> = Option<(&'a str, &'a str)>;
    let refusals: [(&str, Login<'_>, &str, u64); 6] = [
        ("3.1.1", Some(("node", "wrong")), "rc", 4),
        ("3.1.1", Some(("nobody", "s3cret")), "rc", 4),
        ("5", Some(("node", "wrong")), "reason", 134),
        ("3.1.1", None, "rc", 5),
        ("5", None, "reason", 135),
        ("5", Some(("", "s3cret")), "reason", 134),
    ];
    for (i, (version, login, field, want)) in refusals.iter().enumerate() {
        let id = format!("refused-{i}");
        let mut o = PahoOpts::new(version, &id);
        o.login = *login;
        let (mut p, connack) = Paho::start(port, o).await;
        assert_eq!(connack[field], *want, "{id} {login:?}: {connack}");
        p.expect_disconnected().await;
    }
    assert!(
        !mosquitto_pub(port, &["-t", "x", "-m", "anon"]).await,
        "anonymous mosquitto_pub must fail"
    );
    let after = stat(&mqtt_stats(&d).await, "connects_refused");
    assert_eq!(after - before, refusals.len() as u64 + 1);

    // A v5 device with the right password, and mosquitto_pub with it, still work.
    let mut o = PahoOpts::new("5", "good-5");
    o.login = Some(("node", "s3cret"));
    let _good5 = Paho::connect_with(port, o).await;
    let mut ws = Raw::subscribed(&d.ws_url(), "auth/ok").await;
    let args = ["-u", "node", "-P", "s3cret", "-t", "auth/ok", "-m", "1"];
    assert!(mosquitto_pub(port, &args).await);
    assert_eq!(ws.next_msg().await["data"], 1);
}

// ---------------------------------------------------------------------------------------
// 8. Topic permissions
// ---------------------------------------------------------------------------------------

const ACL: &str = r#"
[[mqtt.acl]]
user = "*"
publish = ["sensors/%c/#"]
subscribe = ["commands/%c/#"]
"#;

#[tokio::test]
async fn topic_permissions_are_enforced_for_each_protocol_version() {
    let d = Daemon::start(ACL);
    let port = mqtt_port(&d);
    let mut ws = Raw::subscribed(&d.ws_url(), "#").await;

    // MQTT 5: refused QoS 1 publish → PUBACK 135, message goes nowhere; connection stays.
    let mut n1 = Paho::connect(port, "5", "n1").await;
    let published = n1.publish("sensors/n2/temp", b"forged", 1, false).await;
    let mid = published["mid"].clone();
    let ack = n1
        .next_where(WAIT, |e| e["event"] == "puback" && e["mid"] == mid)
        .await
        .expect("PUBACK");
    assert_eq!(ack["reason"], 135, "{ack}");
    n1.publish("sensors/n1/temp", b"21", 1, false).await;
    let m = ws.next_msg().await;
    assert_eq!(
        m["topic"], "sensors/n1/temp",
        "the refused message reached WS: {m}"
    );
    assert_eq!(m["from"], "mqtt:n1");

    // Mixed SUBSCRIBE: the allowed filter is granted and works, the other is refused.
    assert_eq!(
        n1.subscribe(&[("commands/n1/#", 1), ("commands/n2/#", 1)])
            .await,
        vec![1, 135]
    );
    let mut ws_pub = Raw::connect(&d.ws_url()).await;
    for topic in ["commands/n2/reboot", "commands/n1/reboot"] {
        let r = ws_pub
            .request(json!({"op":"pub","topic":topic,"data":"now"}))
            .await;
        assert_eq!(r["op"], "ok");
    }
    let (topic, payload, _) = n1.message().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("commands/n1/reboot", &b"now"[..])
    );
    n1.no_message(QUIET).await;

    // MQTT 3.1.1: SUBACK 0x80 for the refused filter; a refused publish closes the connection.
    let mut n3 = Paho::connect(port, "3.1.1", "n3").await;
    assert_eq!(
        n3.subscribe(&[("commands/n3/+", 0), ("sensors/#", 0)])
            .await,
        vec![0, 0x80]
    );
    n3.send(
        json!({"cmd":"publish","topic":"sensors/n1/temp","payload_hex":hex(b"forged"),"qos":0}),
    );
    n3.expect_disconnected().await;
    let stats = mqtt_stats(&d).await;
    assert_eq!(stat(&stats, "publishes_denied"), 2, "{stats}");
    assert_eq!(stat(&stats, "subscribes_denied"), 2, "{stats}");

    // Nothing refused reached the hub; allowed traffic from others still flows.
    assert!(mosquitto_pub(port, &["-i", "n4", "-t", "sensors/n4/x", "-m", "ok"]).await);
    loop {
        let m = ws.next_msg().await;
        assert_ne!(m["data"], "forged", "{m}");
        if m["topic"] == "sensors/n4/x" {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// 9. Abuse
// ---------------------------------------------------------------------------------------

/// Writes `bytes` to the MQTT port, optionally half-closes, and returns whether the server
/// closed the connection within the wait.
async fn send_raw(addr: SocketAddr, bytes: &[u8], half_close: bool) -> bool {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A minimal MQTT 3.1.1 CONNECT.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

async fn wait_stat(d: &Daemon, key: &str, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = stat(&mqtt_stats(d).await, key);
        if v >= at_least || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn broken_and_hostile_connections_do_not_hurt_others() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("node", "s3cret")]);
    let d = Daemon::start(&format!(
        "[mqtt]\nallow_anonymous = true\npassword_file = \"{file}\"\n"
    ));
    let addr = d.mqtt.unwrap();
    let port = addr.port();
    let errors0 = stat(&mqtt_stats(&d).await, "protocol_errors");

    // Garbage, an HTTP request, a truncated CONNECT.
    let mut garbage: Vec<u8> = (0..1024).map(|_| rand::random::<u8>()).collect();
    garbage[0] = 0x00; // packet type 0 is reserved: never a CONNECT
    assert!(send_raw(addr, &garbage, false).await, "garbage left open");
    still_works(&d, "garbage").await;
    let http = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert!(
        send_raw(addr, http.as_bytes(), false).await,
        "HTTP left open"
    );
    still_works(&d, "an HTTP request").await;
    let connect = connect_packet("trunc");
    assert!(send_raw(addr, &connect[..connect.len() - 3], true).await);
    still_works(&d, "a truncated CONNECT").await;
    assert!(
        wait_stat(&d, "protocol_errors", errors0 + 3).await >= errors0 + 3,
        "protocol_errors did not count garbage, HTTP and truncated CONNECT"
    );

    // CONNECT, then a truncated PUBLISH, then close; then a malformed length.
    let mut bytes = connect_packet("half-pub");
    bytes.extend([0x30, 0x0a, 0x00, 0x03, b'a', b'/']);
    assert!(send_raw(addr, &bytes, true).await);
    still_works(&d, "a truncated PUBLISH").await;
    let errors1 = stat(&mqtt_stats(&d).await, "protocol_errors");
    let mut bytes = connect_packet("bad-len");
    bytes.extend([0x30, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert!(
        send_raw(addr, &bytes, false).await,
        "malformed length left open"
    );
    still_works(&d, "a malformed remaining length").await;
    assert!(wait_stat(&d, "protocol_errors", errors1 + 1).await > errors1);

    // Client ids that would break topic patterns.
    let refused0 = stat(&mqtt_stats(&d).await, "connects_refused");
    for (version, id, field, want) in [
        ("3.1.1", "a/b", "rc", 2),
        ("5", "+", "reason", 133),
        ("3.1.1", "#", "rc", 2),
    ] {
        let (mut p, connack) = Paho::start(port, PahoOpts::new(version, id)).await;
        assert_eq!(connack[field], want, "client id {id:?}: {connack}");
        p.expect_disconnected().await;
    }
    still_works(&d, "invalid client ids").await;

    // Refused for bad credentials, then straight back with the same id, many times.
    for _ in 0..20 {
        let mut o = PahoOpts::new("3.1.1", "flappy");
        o.login = Some(("node", "wrong"));
        let (_p, connack) = Paho::start(port, o).await;
        assert_eq!(connack["rc"], 4, "{connack}");
        let mut o = PahoOpts::new("3.1.1", "flappy");
        o.login = Some(("node", "s3cret"));
        let (p, connack) = Paho::start(port, o).await;
        assert_eq!(connack["rc"], 0, "{connack}");
        drop(p);
    }
    // Plain reconnects after refusals with no successful login in between.
    for _ in 0..5 {
        let mut o = PahoOpts::new("5", "flappy2");
        o.login = Some(("node", "nope"));
        let (_p, connack) = Paho::start(port, o).await;
        assert_eq!(connack["reason"], 134, "{connack}");
    }
    let _flappy2 = Paho::connect(port, "5", "flappy2").await;
    still_works(&d, "refused reconnects").await;
    assert_eq!(
        stat(&mqtt_stats(&d).await, "connects_refused") - refused0,
        3 + 20 + 5
    );
    assert!(d.healthz().await["status"] == "ok");
}

/// The spec lets a client send packets right behind CONNECT without waiting for the
/// CONNACK; small embedded clients do, in one TCP segment.
#[tokio::test]
async fn packets_pipelined_behind_connect_are_not_lost() {
    let d = Daemon::start("");
    let mut ws = Raw::subscribed(&d.ws_url(), "pipe/#").await;
    let mut s = TcpStream::connect(d.mqtt.unwrap()).await.unwrap();
    let mut bytes = connect_packet("pipe");
    let body = [&[0, 6][..], b"pipe/x", &[0, 7], b"hi"].concat(); // QoS 1, packet id 7
    bytes.extend([0x32, body.len() as u8]);
    bytes.extend(body);
    s.write_all(&bytes).await.unwrap();
    let mut want: &[u8] = &[0x20, 0x02, 0x00, 0x00, 0x40, 0x02, 0x00, 0x07];
    let mut buf = [0u8; 64];
    while !want.is_empty() {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("CONNACK and PUBACK")
            .unwrap();
        assert!(n > 0, "closed");
        assert_eq!(&buf[..n], &want[..n], "CONNACK then PUBACK");
        want = &want[n..];
    }
    let m = ws.next_msg().await;
    assert_eq!(
        (m["topic"].clone(), m["data"].clone()),
        (json!("pipe/x"), json!("hi"))
    );
}

#[tokio::test]
async fn takeover_by_the_same_client_id() {
    let d = Daemon::start("");
    let port = mqtt_port(&d);
    let mut watcher = Raw::subscribed(&d.ws_url(), "$devices/twin").await;
    let mut first = Paho::connect(port, "5", "twin").await;
    assert_eq!(
        status_of(&mut watcher, "twin").await["data"]["online"],
        true
    );
    let mut second = Paho::connect(port, "5", "twin").await;
    let gone = first
        .next_where(WAIT, |e| e["event"] == "disconnect")
        .await
        .expect("first device not disconnected");
    assert_eq!(gone["reason"], 142, "session taken over: {gone}");
    let off = status_of(&mut watcher, "twin").await;
    assert_eq!(off["data"]["online"], false, "{off}");
    assert_eq!(off["data"]["reason"], "taken_over", "{off}");
    let on = status_of(&mut watcher, "twin").await;
    assert_eq!(on["data"]["online"], true, "{on}");

    // The winner works; the retained status says online.
    let mut ws = Raw::subscribed(&d.ws_url(), "twin/#").await;
    second.publish("twin/x", b"2", 1, false).await;
    assert_eq!(ws.next_msg().await["from"], "mqtt:twin");
    let mut late = Raw::subscribed(&d.ws_url(), "$devices/twin").await;
    assert_eq!(late.next_msg().await["data"]["online"], true);
    still_works(&d, "a takeover").await;

    // On the wire: the first MQTT 5 connection is told "session taken over" (0x8E) in a
    // well-formed DISCONNECT (with a reason string), and then closed.
    let mut raw1 = raw_v5_connect(d.mqtt.unwrap(), "twin-raw").await;
    let _raw2 = raw_v5_connect(d.mqtt.unwrap(), "twin-raw").await;
    assert_disconnect(&read_to_close(&mut raw1).await, 0x8e, "session taken over");
}

/// An MQTT 5 connection from raw bytes, with its CONNACK (success) read.
async fn raw_v5_connect(addr: SocketAddr, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    s.write_all(&packet).await.unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("CONNACK")
        .unwrap();
    assert_eq!(head[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; head[1] as usize];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest[1], 0, "CONNACK reason");
    s
}

/// `got` is exactly one well-formed MQTT 5 DISCONNECT with this reason code and string.
fn assert_disconnect(got: &[u8], code: u8, reason_string: &str) {
    let mut want = vec![0xe0, 5 + reason_string.len() as u8, code];
    want.extend([
        3 + reason_string.len() as u8,
        0x1f,
        0,
        reason_string.len() as u8,
    ]);
    want.extend(reason_string.as_bytes());
    assert_eq!(got, want, "DISCONNECT {code:#x}");
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("connection not closed")
        .unwrap();
    got
}

#[tokio::test]
async fn oversized_packets_close_only_that_connection() {
    let d = Daemon::start("[mqtt]\nmax_packet_size = 1024\n");
    let port = mqtt_port(&d);
    let mut ws = Raw::subscribed(&d.ws_url(), "big/#").await;
    let errors0 = stat(&mqtt_stats(&d).await, "protocol_errors");

    let mut big = Paho::connect(port, "5", "big").await;
    big.send(json!({"cmd":"publish","topic":"big/x","payload_hex":hex(&[b'a'; 4096]),"qos":0}));
    let gone = big
        .next_where(WAIT, |e| e["event"] == "disconnect")
        .await
        .expect("oversized publisher not disconnected");
    assert_eq!(gone["reason"], 149, "packet too large: {gone}");
    no_msg(&mut ws, "oversized publish").await;

    // On the wire, an MQTT 5 device is told "packet too large" (0x95).
    let mut raw = raw_v5_connect(d.mqtt.unwrap(), "big-raw").await;
    let body = [&[0, 5][..], b"big/z", &[0], &[b'c'; 2000]].concat();
    let mut packet = vec![0x30];
    packet.extend([(body.len() & 0x7f) as u8 | 0x80, (body.len() >> 7) as u8]);
    packet.extend(body);
    raw.write_all(&packet).await.unwrap();
    assert_disconnect(&read_to_close(&mut raw).await, 0x95, "packet too large");
    no_msg(&mut ws, "oversized raw publish").await;
    assert!(wait_stat(&d, "protocol_errors", errors0 + 2).await >= errors0 + 2);

    let mut small = Paho::connect(port, "5", "small").await;
    small.publish("big/y", &[b'b'; 512], 1, false).await;
    let m = ws.next_msg().await;
    assert_eq!(m["topic"], "big/y");
    still_works(&d, "an oversized publish").await;
}

// ---------------------------------------------------------------------------------------
// 10. MQTT over WebSocket
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_over_websocket_both_ways() {
    let d = Daemon::start("");
    let port = d.mqtt_ws.expect("MQTT/WebSocket listener").port();
    let mut o = PahoOpts::new("5", "ws-dev");
    o.websocket = true;
    let mut dev = Paho::connect_with(port, o).await;
    assert_eq!(dev.subscribe(&[("down/#", 1)]).await, vec![1]);

    let mut hub = Raw::subscribed(&d.ws_url(), "up/#").await;
    dev.publish("up/temp", b"19.5", 1, false).await;
    let m = hub.next_msg().await;
    assert_eq!(m["data"], 19.5);
    assert_eq!(m["from"], "mqtt:ws-dev");

    let r = hub
        .request(json!({"op":"pub","topic":"down/cmd","data":"go"}))
        .await;
    assert_eq!(r["op"], "ok");
    let (topic, payload, _) = dev.message().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("down/cmd", &b"go"[..])
    );
    dev.no_message(QUIET).await;
    no_msg(&mut hub, "echo").await;

    let mut status = Raw::subscribed(&d.ws_url(), "$devices/ws-dev").await;
    let s = status.next_msg().await;
    assert_eq!(s["data"]["transport"], "websocket", "{s}");
}

/// A subscription granted QoS 2 gets each message at the QoS it was published at (at
/// most 1 for WebSocket messages), over MQTT over WebSocket too, for either revision.
#[tokio::test]
async fn mqtt_over_websocket_gets_the_lower_of_publish_and_granted_qos() {
    let d = Daemon::start("");
    let port = d.mqtt.unwrap().port();
    let ws_port = d.mqtt_ws.expect("MQTT/WebSocket listener").port();
    for version in ["3.1.1", "5"] {
        let id = format!("ws-qos-{version}");
        let mut o = PahoOpts::new(version, &id);
        o.websocket = true;
        let mut dev = Paho::connect_with(ws_port, o).await;
        assert_eq!(dev.subscribe(&[("wq/#", 2)]).await, vec![2]);
        for qos in ["0", "1"] {
            let topic = format!("wq/{qos}");
            assert!(mosquitto_pub(port, &["-q", qos, "-t", &topic, "-m", "x"]).await);
        }
        let mut ws = Raw::connect(&d.ws_url()).await;
        let r = ws
            .request(json!({"op":"pub","topic":"wq/ws","data":1}))
            .await;
        assert_eq!(r["op"], "ok");
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = dev.expect("message").await;
            got.push((
                m["topic"].as_str().unwrap().to_owned(),
                m["qos"].as_u64().unwrap(),
            ));
        }
        got.sort();
        let want = [("wq/0", 0), ("wq/1", 1), ("wq/ws", 1)].map(|(t, q)| (t.to_owned(), q));
        assert_eq!(got, want, "MQTT {version} over WebSocket");
    }
}

/// A 3.1.1 CONNECT with a keep-alive and a Last Will.
fn connect_with_will(client_id: &str, keep_alive: u16, will_topic: &str, will: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x04];
    body.extend(keep_alive.to_be_bytes());
    for field in [client_id.as_bytes(), will_topic.as_bytes(), will] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field);
    }
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

#[tokio::test]
async fn silent_devices_time_out_and_their_will_fires() {
    let d = Daemon::start("[mqtt]\nconnect_timeout = \"1s\"\n");
    let addr = d.mqtt.expect("mqtt listener");
    let mut watcher = Raw::subscribed(&d.ws_url(), "wills/#").await;
    let mut status = Raw::subscribed(&d.ws_url(), "$devices/+").await;

    // Keep-alive 1 s and then silence: dropped after 1.5 s, will published.
    let mut device = TcpStream::connect(addr).await.unwrap();
    device
        .write_all(&connect_with_will(
            "sleepy",
            1,
            "wills/sleepy",
            b"gone quiet",
        ))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    device.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let started = tokio::time::Instant::now();
    let will = watcher.next_msg().await;
    assert_eq!(will["data"], "gone quiet", "{will}");
    assert_eq!(will["from"], "mqtt:sleepy");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "not before 1.5 x keep-alive"
    );
    let mut last = status_of(&mut status, "sleepy").await;
    while last["data"]["online"] == true {
        last = status_of(&mut status, "sleepy").await;
    }
    assert_eq!(last["data"]["reason"], "lost", "{last}");
    assert!(
        read_to_close(&mut device).await.is_empty(),
        "the socket is closed"
    );

    // A socket that never sends CONNECT is closed after connect_timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let t = tokio::time::Instant::now();
    assert!(read_to_close(&mut idle).await.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(900) && t.elapsed() < WAIT,
        "{:?}",
        t.elapsed()
    );
    still_works(&d, "after timeouts").await;
}

#[tokio::test]
async fn connection_limit_refuses_with_server_unavailable() {
    let d = Daemon::start("[mqtt]\nmax_connections = 2\n");
    let addr = d.mqtt.expect("mqtt listener");
    let mut held = Vec::new();
    for id in ["one", "two"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&connect_packet(id)).await.unwrap();
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0], "{id}");
        held.push(s);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(&connect_packet("three")).await.unwrap();
    let got = read_to_close(&mut third).await;
    assert_eq!(got, [0x20, 2, 0, 3], "CONNACK 3: server unavailable");
    assert_eq!(stat(&mqtt_stats(&d).await, "connects_refused"), 1);
    drop(held);
    // Room again once the others leave.
    let deadline = tokio::time::Instant::now() + WAIT;
    while stat(&mqtt_stats(&d).await, "connections") > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    still_works(&d, "after the limit").await;
}

// ---------------------------------------------------------------------------------------
// 11. Operators: devices in the client list
// ---------------------------------------------------------------------------------------

/// MQTT devices are listed beside WebSocket clients with what an operator needs, and an
/// operator can close one: the device sees its connection end (MQTT 5: 0x98,
/// administrative action) and its Last Will fires.
#[tokio::test]
async fn admins_list_and_disconnect_mqtt_devices() {
    let secrets = Secrets::new();
    let file = password_file(secrets.dir.path(), &[("node", "s3cret")]);
    let d = Daemon::start(&secrets.config(&format!(
        "[mqtt]\nallow_anonymous = false\npassword_file = \"{file}\"\n"
    )));
    let mut o = PahoOpts::new("5", "dev-5");
    o.login = Some(("node", "s3cret"));
    o.will = Some(("wills/dev-5", br#"{"gone":true}"#, false));
    let mut dev = Paho::connect_with(mqtt_port(&d), o).await;
    assert_eq!(dev.subscribe(&[("cmd/dev-5/#", 1)]).await, vec![1]);
    let mut o = PahoOpts::new("3.1.1", "dev-ws");
    o.login = Some(("node", "s3cret"));
    o.websocket = true;
    let ws_port = d.mqtt_ws.expect("MQTT/WebSocket listener").port();
    let _ws_dev = Paho::connect_with(ws_port, o).await;
    let mut admin = subscribed_as(&d, ADMIN, "wills/#").await;

    let (s, v) = get(&api(&d, "/clients"), Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let clients = v["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 3, "{v}");
    let listed = |id: &str| clients.iter().find(|c| c["id"] == id).cloned();
    let dev5 = listed("mqtt:dev-5").unwrap_or_else(|| panic!("dev-5 not listed: {v}"));
    assert_eq!(dev5["client_id"], "dev-5");
    assert_eq!(dev5["user"], "node");
    assert_eq!(dev5["transport"], "mqtt");
    assert_eq!(dev5["protocol"], "mqtt/5");
    assert_eq!(dev5["subscriptions"], json!(["cmd/dev-5/#"]));
    assert!(
        dev5["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{dev5}"
    );
    assert!(dev5["connected_at"].as_u64().unwrap() > 1_700_000_000_000);
    let will =
        json!({"topic":"wills/dev-5","data":{"gone":true},"retain":false,"qos":0,"delay_s":0});
    assert_eq!(dev5["will"], will);
    let over_ws = listed("mqtt:dev-ws").unwrap_or_else(|| panic!("dev-ws not listed: {v}"));
    assert_eq!(over_ws["transport"], "mqtt-ws");
    assert_eq!(over_ws["protocol"], "mqtt/3.1.1");
    assert_eq!(over_ws["will"], Value::Null);
    assert!(clients.iter().any(|c| c["transport"] == "ws"), "{v}");
    let (_, by_user) = get(&api(&d, "/clients?user=node"), Some(ADMIN)).await;
    assert_eq!(by_user["clients"].as_array().unwrap().len(), 2, "{by_user}");

    let url = api(&d, "/clients/mqtt:dev-5");
    let (s, one) = get(&url, Some(ADMIN)).await;
    assert_eq!((s, &one["will"]), (StatusCode::OK, &will));

    // Only the admin may list or close; an unknown device is 404.
    let alice = user_token("alice", json!({"subscribe":["#"]}));
    let (s, v) = get(&api(&d, "/clients"), Some(&alice)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _, _) = call(reqwest::Method::DELETE, &url, Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let nobody = api(&d, "/clients/mqtt:nobody");
    let (s, v, _) = call(reqwest::Method::DELETE, &nobody, Some(ADMIN), None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));

    let (s, _, _) = call(reqwest::Method::DELETE, &url, Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let gone = dev.expect_disconnected().await;
    assert_eq!(
        (&gone["event"], &gone["reason"]),
        (&json!("disconnect"), &json!(0x98)),
        "{gone}"
    );
    let fired = admin.next_msg().await;
    assert_eq!(
        (&fired["topic"], &fired["data"]),
        (&json!("wills/dev-5"), &json!({"gone":true}))
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, _) = get(&url, Some(ADMIN)).await;
        if s == StatusCode::NOT_FOUND {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "dev-5 still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, _, _) = call(reqwest::Method::DELETE, &url, Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
