//! Bridges to other MQTT brokers and external-broker mode, against a real Mosquitto
//! started by each test on its own port (the load generator's
//! `switchboard_bench::mosquitto`, which the bridge bench uses too).

mod common;

use std::time::Duration;

use common::creds::{Secrets, ADMIN};
use common::http::{api, get};
use common::wire::{packet, Packet, Wire, CONNACK, PUBLISH};
use common::{mosquitto_pub, Daemon, MosquittoSub, Raw};
use serde_json::{json, Value};
use switchboard_bench::mosquitto::{free_port, Mosquitto, Subscriber};

const WAIT: Duration = Duration::from_secs(20);

/// A `[[bridges]]` entry named `up` to `port`, quick to reconnect, with `rules` (TOML
/// `[[bridges.topics]]` tables) and `extra` keys.
fn bridge(port: u16, extra: &str, rules: &str) -> String {
    format!(
        "[[bridges]]\nname = \"up\"\naddress = \"127.0.0.1:{port}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n{extra}\n{rules}"
    )
}

fn rule(pattern: &str, direction: &str, local: &str, remote: &str) -> String {
    format!("[[bridges.topics]]\npattern = \"{pattern}\"\ndirection = \"{direction}\"\nqos = 1\nlocal_prefix = \"{local}\"\nremote_prefix = \"{remote}\"\n")
}

/// Starts the daemon with `config`, the admin token the status API needs, and no
/// publish rate limit (the tests flood).
fn start(config: &str) -> (Daemon, Secrets) {
    let secrets = Secrets::new();
    let auth = format!(
        "[ws]\npublish_rate = 1000000\npublish_burst = 1000000\n[auth]\nadmin_token_file = \"{}\"\n",
        secrets.path("admin.token").display()
    );
    (Daemon::start(&format!("{auth}{config}")), secrets)
}

async fn status(d: &Daemon, name: &str) -> Value {
    get(&api(d, &format!("/bridges/{name}")), Some(ADMIN))
        .await
        .1
}

/// Polls the bridge's status until `pred` holds; panics with the last status if not.
async fn wait_status(d: &Daemon, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = status(d, name).await;
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge status never matched: {s}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `i` of a `{"i": n, …}` payload from `Raw::flood`.
fn index(payload: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(payload).unwrap()["i"]
        .as_u64()
        .unwrap()
}

/// Receives until every index below `n` was seen; checks they came in order, where a
/// message sent again after a reconnect (at-least-once) may repeat earlier ones.
async fn expect_in_order(up: &mut Subscriber, topic: &str, n: u64) {
    let mut next = 0u64;
    let mut repeats = 0u64;
    while next < n {
        let (t, payload) = up.next().await;
        assert_eq!(t, topic);
        let i = index(&payload);
        if i < next {
            repeats += 1;
            continue;
        }
        assert_eq!(i, next, "message {i} arrived before {next}");
        next += 1;
    }
    assert!(repeats < n / 2, "{repeats} repeats");
}

#[tokio::test]
async fn forwards_10000_messages_in_order_across_an_upstream_restart() {
    let mut m = Mosquitto::start("");
    let mut up = Subscriber::start(m.port, "edge/#").await;
    let (d, _secrets) = start(&bridge(m.port, "", &rule("t/#", "out", "", "edge/")));
    wait_status(&d, "up", |s| s["connected"] == true).await;
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/x", 5_000, 16).await;
    m.stop();
    ws.flood_from("t/x", 5_000, 10_000, 16).await;
    // The second half waits on disk while the upstream is down.
    let s = wait_status(&d, "up", |s| {
        s["connected"] == false && s["queue_messages"].as_u64() > Some(0)
    })
    .await;
    assert!(s["last_error"].is_string(), "{s}");
    m.restart();
    expect_in_order(&mut up, "edge/t/x", 10_000).await;
    let s = wait_status(&d, "up", |s| s["queue_messages"] == 0).await;
    assert!(s["forwarded"].as_u64() >= Some(10_000), "{s}");
    assert_eq!(s["dropped"], 0);
}

#[tokio::test]
async fn the_queue_survives_a_restart_and_a_crash_of_switchboard_while_the_upstream_is_down() {
    let mut m = Mosquitto::start("");
    let mut up = Subscriber::start(m.port, "edge/#").await;
    m.stop();
    let (mut d, _secrets) = start(&bridge(m.port, "", &rule("t/#", "out", "", "edge/")));
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/q", 100, 8).await;
    wait_status(&d, "up", |s| s["queue_messages"] == 100).await;
    d.restart();
    let s = status(&d, "up").await;
    assert_eq!(s["queue_messages"], 100, "{s}");
    // SIGKILL: what was stored more than the flush interval (100 ms) before is kept.
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood_from("t/q", 100, 150, 8).await;
    wait_status(&d, "up", |s| s["queue_messages"] == 150).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.crash_and_restart();
    let s = status(&d, "up").await;
    assert_eq!(s["queue_messages"], 150, "{s}");
    m.restart();
    expect_in_order(&mut up, "edge/t/q", 150).await;
    wait_status(&d, "up", |s| s["queue_messages"] == 0).await;
}

#[tokio::test]
async fn a_crash_while_forwarding_loses_nothing() {
    let mut m = Mosquitto::start("");
    let mut up = Subscriber::start(m.port, "edge/#").await;
    m.stop();
    // One message in flight at a time, so the drain takes long enough to crash in.
    let (mut d, _secrets) = start(&bridge(
        m.port,
        "inflight = 1",
        &rule("t/#", "out", "", "edge/"),
    ));
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/c", 3_000, 8).await;
    wait_status(&d, "up", |s| s["queue_messages"] == 3_000).await;
    // Past the store's flush interval: the backlog is on disk.
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.restart();
    let s = wait_status(&d, "up", |s| s["forwarded"].as_u64() >= Some(200)).await;
    d.crash_and_restart();
    assert!(
        s["queue_messages"].as_u64() > Some(0),
        "drained before the crash: {s}"
    );
    // Everything arrives, in order; what was in flight or acknowledged but not yet
    // removed on disk may come twice.
    expect_in_order(&mut up, "edge/t/c", 3_000).await;
    wait_status(&d, "up", |s| s["queue_messages"] == 0).await;
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts_them() {
    let mut m = Mosquitto::start("");
    let mut up = Subscriber::start(m.port, "edge/#").await;
    m.stop();
    let (d, _secrets) = start(&bridge(
        m.port,
        "max_queue_messages = 10",
        &rule("t/#", "out", "", "edge/"),
    ));
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/o", 25, 8).await;
    let s = wait_status(&d, "up", |s| s["dropped"] == 15).await;
    assert_eq!(s["queue_messages"], 10, "{s}");
    m.restart();
    wait_status(&d, "up", |s| {
        s["queue_messages"] == 0 && s["forwarded"] == 10
    })
    .await;
    // The newest ten, in order.
    for i in 15..25 {
        let (topic, payload) = up.next().await;
        assert_eq!((topic.as_str(), index(&payload)), ("edge/t/o", i));
    }
}

#[tokio::test]
async fn in_and_both_rules_map_prefixes_without_a_loop() {
    let m = Mosquitto::start("");
    let rules = rule("cmd/#", "in", "site/", "cloud/") + &rule("data/#", "both", "", "edge/");
    let (d, _secrets) = start(&bridge(m.port, "", &rules));
    wait_status(&d, "up", |s| s["connected"] == true).await;
    let mut ws = Raw::subscribed(&d.ws_url(), "site/cmd/#").await;
    ws.request(json!({"op":"sub","id":"d","topic":"data/#"}))
        .await;
    let mut up = Subscriber::start(m.port, "edge/#").await;

    // in: cloud/cmd/x upstream arrives as site/cmd/x, from the bridge.
    assert!(
        mosquitto_pub(
            m.port,
            &["-q", "1", "-t", "cloud/cmd/reboot", "-m", "{\"now\":true}"]
        )
        .await
    );
    let msg = ws.next_msg().await;
    assert_eq!(msg["topic"], "site/cmd/reboot");
    assert_eq!(msg["data"], json!({"now": true}));
    assert_eq!(msg["from"], "bridge:up");

    // both, from upstream: arrives locally once, and is not sent back up.
    assert!(mosquitto_pub(m.port, &["-q", "1", "-t", "edge/data/b", "-m", "1"]).await);
    let msg = ws.next_msg().await;
    assert_eq!(
        (msg["topic"].as_str(), msg["from"].as_str()),
        (Some("data/b"), Some("bridge:up"))
    );
    assert_eq!(up.next().await, ("edge/data/b".to_owned(), b"1".to_vec()));

    // both, from here: goes up once, and does not come back (no_local), so the next
    // thing either side sees is the marker, not an echo.
    ws.request(json!({"op":"pub","id":"p","topic":"data/a","data":2}))
        .await;
    assert_eq!(ws.next_msg().await["topic"], "data/a");
    assert_eq!(up.next().await, ("edge/data/a".to_owned(), b"2".to_vec()));
    ws.request(json!({"op":"pub","id":"m","topic":"data/marker","data":3}))
        .await;
    assert_eq!(ws.next_msg().await["topic"], "data/marker");
    assert_eq!(up.next().await.0, "edge/data/marker");

    // `forwarded` counts the upstream broker's PUBACKs, which can reach the bridge
    // after the upstream subscriber already has the message.
    let s = wait_status(&d, "up", |s| s["forwarded"] == 2).await;
    assert_eq!(s["received"], 2, "{s}");
    assert_eq!(s["forwarded"], 2, "{s}");
}

#[tokio::test]
async fn status_is_published_retained_on_its_topic() {
    let m = Mosquitto::start("");
    let (d, _secrets) = start(&bridge(m.port, "", &rule("t/#", "out", "", "")));
    wait_status(&d, "up", |s| s["connected"] == true).await;
    let mut ws = Raw::subscribed(&d.ws_url(), "$bridges/up/status").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = ws.next_msg().await;
        assert_eq!(msg["from"], "switchboard");
        if msg["data"]["connected"] == true {
            assert_eq!(msg["data"]["name"], "up");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{msg}");
    }
}

#[tokio::test]
async fn wrong_credentials_are_reported_and_retried_with_backoff() {
    let mut m = Mosquitto::start("");
    let passwd = m.write("passwd", "");
    assert!(std::process::Command::new("mosquitto_passwd")
        .args(["-b", &passwd, "edge", "right-password"])
        .status()
        .unwrap()
        .success());
    m.write(
        "mosquitto.conf",
        &std::fs::read_to_string(m.path("mosquitto.conf"))
            .unwrap()
            .replace(
                "allow_anonymous true",
                &format!("allow_anonymous false\npassword_file {passwd}"),
            ),
    );
    m.restart();
    let wrong = m.write("wrong.password", "wrong-password\n");
    let (d, _secrets) = start(&format!(
        "[[bridges]]\nname = \"up\"\naddress = \"127.0.0.1:{}\"\nusername = \"edge\"\npassword_file = \"{wrong}\"\nreconnect_min = \"400ms\"\nreconnect_max = \"1600ms\"\n{}",
        m.port,
        rule("t/#", "out", "", "")
    ));
    let s = wait_status(&d, "up", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused"))
    })
    .await;
    assert_eq!(s["connected"], false);
    let (before, attempts_before) = (
        m.connection_attempts(),
        s["connect_attempts"].as_u64().unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = m.connection_attempts() - before;
    let counted = status(&d, "up").await["connect_attempts"].as_u64().unwrap() - attempts_before;
    // Delays of 0.2–0.4 s, then 0.4–0.8, 0.8–1.6, then 0.8–1.6 s each: a hot loop would
    // make thousands.
    assert!((2..=10).contains(&seen), "{seen} connections in 4 s");
    assert!(
        counted.abs_diff(seen as u64) <= 1,
        "{counted} counted, {seen} seen"
    );
    assert!(
        !d.logs().contains("wrong-password"),
        "the password was logged"
    );
}

#[tokio::test]
async fn tls_to_the_upstream_with_a_generated_ca() {
    let ca = common::certs::Ca::new("bridge test CA");
    let server = ca.server();
    let tls_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let cert = write("server.pem", &server.cert_pem);
    let key = write("server.key", &server.key_pem);
    let m = Mosquitto::start(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {ca_file}\ncertfile {cert}\nkeyfile {key}\n"
    ));
    let mut up = Subscriber::start(m.port, "edge/#").await;
    let mut config = bridge(
        tls_port,
        &format!("ca_file = \"{ca_file}\""),
        &rule("t/#", "out", "", "edge/"),
    );
    config = config.replace("127.0.0.1:", "localhost:");
    let (d, _secrets) = start(&config);
    wait_status(&d, "up", |s| s["connected"] == true).await;
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/tls", 3, 4).await;
    for i in 0..3 {
        let (topic, payload) = up.next().await;
        assert_eq!((topic.as_str(), index(&payload)), ("edge/t/tls", i));
    }
}

#[tokio::test]
async fn external_mode_attaches_the_hub_to_mosquitto() {
    let m = Mosquitto::start("");
    let (d, _secrets) = start(&format!(
        "[mqtt]\nmode = \"external\"\n[mqtt.external]\naddress = \"127.0.0.1:{}\"\nreconnect_min = \"100ms\"\n",
        m.port
    ));
    assert_eq!(d.mqtt, None, "the embedded broker must be off");
    wait_status(&d, "external", |s| {
        s["connected"] == true && s["kind"] == "external"
    })
    .await;
    let mut ws = Raw::subscribed(&d.ws_url(), "dev/#").await;
    let mut device = MosquittoSub::start(m.port, &["-t", "cmd/#", "-q", "1"]).await;

    // device → Mosquitto → switchboard → WebSocket, once, with the payload mapping.
    assert!(mosquitto_pub(m.port, &["-t", "dev/t", "-m", "21.5"]).await);
    let msg = ws.next_msg().await;
    assert_eq!(
        (msg["topic"].as_str(), msg["data"].as_f64()),
        (Some("dev/t"), Some(21.5))
    );
    assert_eq!(msg["from"], "mqtt");

    // WebSocket → switchboard → Mosquitto → device, once.
    ws.request(json!({"op":"pub","id":"1","topic":"cmd/led","data":"on"}))
        .await;
    assert_eq!(
        device.message(WAIT).await,
        Some(("cmd/led".to_owned(), b"on".to_vec()))
    );
    ws.request(json!({"op":"pub","id":"2","topic":"cmd/marker","data":1}))
        .await;
    assert_eq!(
        device.message(WAIT).await.map(|(t, _)| t).as_deref(),
        Some("cmd/marker")
    );
    // What switchboard published did not come back into the Hub: the next WebSocket
    // message on dev/# is a device's, not an echo of ours.
    ws.request(json!({"op":"pub","id":"3","topic":"dev/mine","data":2}))
        .await;
    assert_eq!(ws.next_msg().await["topic"], "dev/mine");
    assert!(mosquitto_pub(m.port, &["-t", "dev/after", "-m", "3"]).await);
    assert_eq!(ws.next_msg().await["topic"], "dev/after");
}

#[test]
fn bad_bridge_configuration_is_a_clear_error_at_startup() {
    common::assert_startup_errors(&[
        ("[[bridges]]\nname = \"up\"\naddress = \"nowhere\"\n", "must be host:port"),
        (
            "[[bridges]]\nname = \"up\"\naddress = \"h:1883\"\n[[bridges.topics]]\npattern = \"a/#\"\ndirection = \"upward\"\n",
            "unknown bridge direction `upward`",
        ),
        (
            "[[bridges]]\nname = \"up\"\naddress = \"h:1883\"\nusername = \"u\"\npassword_file = \"/nonexistent/up.password\"\n",
            "bridge `up`: cannot read the password file /nonexistent/up.password",
        ),
        ("[mqtt]\nmode = \"external\"\n", "no [mqtt.external] section"),
    ]);
}

/// An end-to-end envelope crosses a bridge to the upstream broker byte for byte, and
/// opens there on the same topic (docs/e2e.md, "Everywhere a message goes").
#[tokio::test]
async fn an_end_to_end_envelope_crosses_the_bridge_byte_for_byte() {
    use switchboard_e2e::{seal, Binding, Inbox, KeyPair, Kind, Reading, Received};
    let m = Mosquitto::start("");
    let mut up = Subscriber::start(m.port, "dm/#").await;
    let (d, _secrets) = start(&bridge(m.port, "", &rule("dm/#", "out", "", "")));
    wait_status(&d, "up", |s| s["connected"] == true).await;
    let receiver = KeyPair::generate(2048).unwrap();
    let jwe = seal(
        b"across the bridge",
        &[receiver.public().clone()],
        Binding::new(Kind::Sealed, "dm/up", "alice"),
    )
    .unwrap();
    let text = serde_json::to_string(&jwe).unwrap();
    let mut ws = Raw::connect(&d.ws_url()).await;
    // The frame's own text, so the bytes published are the envelope's.
    ws.send_text(&format!(
        r#"{{"op":"pub","id":1,"topic":"dm/up","data":{text}}}"#
    ))
    .await;
    let reply = ws.recv().await;
    assert_eq!(reply["op"], "ok", "{reply}");
    let (topic, payload) = up.next().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("dm/up", text.as_bytes())
    );
    let data: Value = serde_json::from_slice(&payload).unwrap();
    match Inbox::new(receiver).open("dm/up", None, &data, Reading::Live) {
        Ok(Received::Message(m)) => assert_eq!(m.plaintext, b"across the bridge"),
        other => panic!("{other:?}"),
    }
}

/// A stand-in upstream on a raw socket, for what Mosquitto cannot be made to do: announce
/// a Receive Maximum and show every packet in order, or send a malformed packet.
struct FakeUpstream {
    listener: tokio::net::TcpListener,
}

const PINGREQ: u8 = 0xc0;

impl FakeUpstream {
    async fn bind() -> FakeUpstream {
        FakeUpstream {
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// The bridge's next connection, its CONNECT read (MQTT 5) and not yet answered.
    async fn accept(&self) -> Wire {
        let (s, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the bridge did not connect")
            .unwrap();
        let mut wire = Wire {
            s,
            v5: true,
            buf: Vec::new(),
        };
        let connect = wire.next().await.expect("CONNECT");
        assert_eq!(connect.first, 0x10, "{connect:?}");
        assert_eq!(connect.body[6], 5, "MQTT 5");
        wire
    }
}

/// The `i`s of PUBLISHes from the bridge.
fn indices(publishes: &[Packet]) -> Vec<u64> {
    publishes
        .iter()
        .map(|p| index(&p.publish(true).payload))
        .collect()
}

/// The next `n` packets from the bridge, which must all be PUBLISHes.
async fn publishes(w: &mut Wire, n: usize) -> Vec<Packet> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = w.next().await.expect("closed");
        assert_eq!(p.kind(), PUBLISH, "{p:?}");
        got.push(p);
    }
    got
}

async fn ack_all(w: &mut Wire, publishes: &[Packet]) {
    for p in publishes {
        let ack = w.puback(p.publish(true).pkid);
        w.send(&ack).await;
    }
}

/// No more than the broker's Receive Maximum go unacknowledged, whatever `inflight`
/// allows: with keep alive at 1 s the bridge's PINGREQ marks the end of what it sends
/// while waiting, so every packet before it is counted.
#[tokio::test]
async fn the_brokers_receive_maximum_bounds_what_is_unacknowledged() {
    let up = FakeUpstream::bind().await;
    let (d, _secrets) = start(&bridge(
        up.port(),
        "keep_alive = \"1s\"\ninflight = 100",
        &rule("t/#", "out", "", "edge/"),
    ));
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/w", 7, 8).await;
    wait_status(&d, "up", |s| s["queue_messages"] == 7).await;
    let mut w = up.accept().await;
    // CONNACK: success, Receive Maximum (0x21) 5.
    w.send(&packet(CONNACK, &[0, 0, 3, 0x21, 0, 5])).await;
    let mut sent = Vec::new();
    for window in [0..5, 5..7] {
        let mut got = Vec::new();
        loop {
            let p = w.next().await.expect("closed");
            if p.kind() == PINGREQ {
                w.send(&packet(0xd0, &[])).await;
                break;
            }
            assert_eq!(p.kind(), PUBLISH, "{p:?}");
            got.push(p);
        }
        assert_eq!(indices(&got), window.collect::<Vec<_>>());
        ack_all(&mut w, &got).await;
        sent.extend(got);
    }
    let ids: std::collections::HashSet<u16> = sent.iter().map(|p| p.publish(true).pkid).collect();
    assert!(ids.iter().all(|id| *id != 0), "{ids:?}");
    wait_status(&d, "up", |s| s["queue_messages"] == 0).await;
}

/// A broker that stops answering (SIGSTOP: the socket stays open) is left after a
/// PINGREQ gets no PINGRESP within keep alive, and joined again once it answers.
#[tokio::test]
async fn an_upstream_that_stops_answering_is_left_and_rejoined() {
    let m = Mosquitto::start("");
    let mut up = Subscriber::start(m.port, "edge/#").await;
    let (d, _secrets) = start(&bridge(
        m.port,
        "keep_alive = \"1s\"",
        &rule("t/#", "out", "", "edge/"),
    ));
    wait_status(&d, "up", |s| s["connected"] == true).await;
    let pid = m.pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let silent = tokio::time::Instant::now();
    let s = wait_status(&d, "up", |s| s["connected"] == false).await;
    let noticed = silent.elapsed();
    signal("-CONT");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no PINGRESP")),
        "{s}"
    );
    // Quiet for up to keep alive, then a PINGREQ with keep alive to answer it.
    assert!(
        noticed < Duration::from_secs(6),
        "noticed after {noticed:?}"
    );
    wait_status(&d, "up", |s| s["connected"] == true).await;
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/k", 3, 4).await;
    expect_in_order(&mut up, "edge/t/k", 3).await;
}

/// Bytes that are no MQTT packet end the session with an error that says so; the
/// unacknowledged messages go again on the next session.
#[tokio::test]
async fn a_malformed_packet_from_the_upstream_ends_the_session_and_loses_nothing() {
    let up = FakeUpstream::bind().await;
    let (d, _secrets) = start(&bridge(up.port(), "", &rule("t/#", "out", "", "edge/")));
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/m", 5, 8).await;
    wait_status(&d, "up", |s| s["queue_messages"] == 5).await;
    let mut w = up.accept().await;
    w.send(&packet(CONNACK, &[0, 0, 0])).await;
    let first = publishes(&mut w, 5).await;
    assert_eq!(indices(&first), (0..5).collect::<Vec<_>>());
    // Packet type 0 is reserved.
    w.send(&[0x00, 0x00]).await;
    assert_eq!(w.closed().await, None, "closed without another packet");
    let s = wait_status(&d, "up", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed packet"))
    })
    .await;
    assert_eq!(s["queue_messages"], 5, "{s}");
    let mut w = up.accept().await;
    w.send(&packet(CONNACK, &[0, 0, 0])).await;
    let again = publishes(&mut w, 5).await;
    assert_eq!(indices(&again), (0..5).collect::<Vec<_>>());
    ack_all(&mut w, &again).await;
    wait_status(&d, "up", |s| s["queue_messages"] == 0).await;
}
