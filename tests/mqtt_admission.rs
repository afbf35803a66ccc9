//! The MQTT side before and around a device's session: what a socket may cost before it
//! is admitted, packets the spec calls malformed, identity fields in ACL patterns, the
//! Last Will's MQTT 5 properties, device status notices and the log under a connect
//! storm. Raw bytes where no client library will send the bad input, paho-mqtt and
//! the mosquitto clients otherwise.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{mosquitto_pub, mqtt_still_serves, Daemon, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long anything that should happen may take.
const WAIT: Duration = Duration::from_secs(5);

/// MQTT's variable-length integer.
fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A packet of this first byte and body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    p.extend(varint(body.len()));
    p.extend(body);
    p
}

/// A length-prefixed MQTT string.
fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

/// A CONNECT with a clean session and no will or login; `level` 4 is 3.1.1, 5 is 5.
fn connect(level: u8, client_id: &str) -> Vec<u8> {
    let mut body = [&string("MQTT")[..], &[level, 0x02, 0, 60]].concat();
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id));
    packet(0x10, &body)
}

/// Everything the server sends until it closes the connection; `None` if it stays open.
async fn until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await {
        Ok(_) => Some(got),
        Err(_) => None,
    }
}

/// A device connected from raw bytes, its (successful) CONNACK read.
async fn connected(addr: SocketAddr, level: u8, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&connect(level, client_id)).await.unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("no CONNACK")
        .unwrap();
    let mut rest = vec![0u8; head[1] as usize];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!((head[0], rest[1]), (0x20, 0), "CONNACK success");
    s
}

/// The value of an unlabelled counter at /metrics.
async fn metric(d: &Daemon, name: &str) -> u64 {
    d.metric(name).await
}

/// Waits for a counter to reach `at_least`; returns its last value.
async fn metric_reaches(d: &Daemon, name: &str, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = metric(d, name).await;
        if v >= at_least || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Before CONNECT
// ---------------------------------------------------------------------------------------

/// A socket announcing a CONNECT over 64 KiB (well under `max_packet_size`) is refused as
/// soon as the length is read, not left to buffer it until the connect timeout.
#[tokio::test]
async fn an_oversized_connect_is_refused_before_it_is_buffered() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let counted0 = metric(&d, "switchboard_mqtt_connects_too_large_total").await;

    // MQTT 5: the start of a CONNECT that claims 200,000 bytes.
    let mut v5 = TcpStream::connect(addr).await.unwrap();
    let head = [
        &[0x10][..],
        &varint(200_000),
        &string("MQTT"),
        &[5, 0x02, 0, 60],
    ]
    .concat();
    v5.write_all(&head).await.unwrap();
    let got = until_closed(&mut v5)
        .await
        .expect("a 200 kB CONNECT left open");
    // CONNACK, no session, reason 0x95 "packet too large".
    assert_eq!(got.get(..4), Some(&[0x20, 3, 0, 0x95][..]), "{got:x?}");

    // 3.1.1 has no code for it: the socket is closed.
    let mut v4 = TcpStream::connect(addr).await.unwrap();
    let head = [
        &[0x10][..],
        &varint(100_000),
        &string("MQTT"),
        &[4, 0x02, 0, 60],
    ]
    .concat();
    v4.write_all(&head).await.unwrap();
    let got = until_closed(&mut v4)
        .await
        .expect("a 100 kB CONNECT left open");
    assert!(got.is_empty(), "{got:x?}");

    let counted = metric_reaches(
        &d,
        "switchboard_mqtt_connects_too_large_total",
        counted0 + 2,
    );
    assert_eq!(counted.await, counted0 + 2);
    // A CONNECT under the bound is as welcome as ever.
    drop(connected(addr, 5, "small").await);
    mqtt_still_serves(&d, "oversized CONNECTs").await;
}

// ---------------------------------------------------------------------------------------
// Malformed packets and identity fields
// ---------------------------------------------------------------------------------------

/// SUBSCRIBE, UNSUBSCRIBE and PUBREL must carry header flags 0b0010, the other packets 0
/// (but PUBLISH), and SUBSCRIBE/UNSUBSCRIBE a non-zero packet id. Anything else closes the
/// connection; an MQTT 5 device is told "malformed packet" (0x81) first.
#[tokio::test]
async fn malformed_subscribe_packets_close_the_connection() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let errors0 = metric(&d, "switchboard_mqtt_protocol_errors_total").await;
    let subscribe = |first: u8, pkid: u16| {
        let body = [&pkid.to_be_bytes()[..], &[0], &string("s/#"), &[0]].concat();
        packet(first, &body)
    };
    let v5_malformed = [
        ("SUBSCRIBE with flags 0", subscribe(0x80, 1)),
        ("SUBSCRIBE with flags 0b1010", subscribe(0x8a, 1)),
        ("SUBSCRIBE with packet id 0", subscribe(0x82, 0)),
        (
            "UNSUBSCRIBE with flags 0",
            packet(0xa0, &[&[0, 1, 0][..], &string("s/#")].concat()),
        ),
        (
            "UNSUBSCRIBE with packet id 0",
            packet(0xa2, &[&[0, 0, 0][..], &string("s/#")].concat()),
        ),
        ("PINGREQ with flags 1", vec![0xc1, 0]),
    ];
    for (what, bad) in &v5_malformed {
        let mut s = connected(addr, 5, "malformed-5").await;
        s.write_all(bad).await.unwrap();
        let got = until_closed(&mut s)
            .await
            .unwrap_or_else(|| panic!("{what}: left open"));
        assert_eq!(
            got.first(),
            Some(&0xe0),
            "{what}: DISCONNECT expected, got {got:x?}"
        );
        assert_eq!(got.get(2), Some(&0x81), "{what}: reason {got:x?}");
    }
    // 3.1.1 has no server DISCONNECT: no SUBACK, the socket is closed.
    let mut s = connected(addr, 4, "malformed-4").await;
    s.write_all(&subscribe(0x80, 1)).await.unwrap();
    let got = until_closed(&mut s).await.expect("3.1.1: left open");
    assert!(got.is_empty(), "3.1.1: {got:x?}");

    let want = errors0 + v5_malformed.len() as u64 + 1;
    let counted = metric_reaches(&d, "switchboard_mqtt_protocol_errors_total", want).await;
    assert_eq!(counted, want);
    // A well-formed SUBSCRIBE is still answered with a SUBACK.
    let mut s = connected(addr, 5, "well-formed").await;
    s.write_all(&subscribe(0x82, 7)).await.unwrap();
    let mut suback = [0u8; 6];
    tokio::time::timeout(WAIT, s.read_exact(&mut suback))
        .await
        .expect("no SUBACK")
        .unwrap();
    assert_eq!(suback, [0x90, 4, 0, 7, 0, 0], "SUBACK");
    mqtt_still_serves(&d, "malformed packets").await;
}

/// A client id spelled `%u` must not take the username's place in a `%c` pattern.
#[tokio::test]
async fn a_client_id_never_stands_in_for_the_username() {
    let d = Daemon::start(
        "[mqtt]\nallow_anonymous = true\n\n[[mqtt.acl]]\nuser = \"*\"\npublish = [\"d/%c/#\"]\n",
    );
    let port = d.mqtt.unwrap().port();
    let mut page = Raw::subscribed(&d.ws_url(), "d/#").await;
    let publish = |client_id: &'static str, topic: &'static str| async move {
        let args = [
            "-V", "5", "-q", "1", "-u", "alice", "-i", client_id, "-t", topic, "-m", client_id,
        ];
        mosquitto_pub(port, &args).await
    };
    // `%c` becomes "%u" (allowed as a client id), never "alice".
    let _ = publish("%u", "d/alice/x").await;
    let _ = publish("x%u", "d/xalice/x").await;
    // Its own topic is allowed, with the client id taken literally.
    assert!(publish("%u", "d/%u/x").await, "own topic refused");
    let m = tokio::time::timeout(WAIT, page.next_msg())
        .await
        .expect("nothing arrived");
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_str()),
        (Some("d/%u/x"), Some("%u")),
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------
// The Last Will
// ---------------------------------------------------------------------------------------

const WILL_PROPERTIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt/will_properties.py");

/// An MQTT 5 will reaches MQTT subscribers with the properties the device gave it.
#[tokio::test]
async fn an_mqtt5_will_keeps_its_properties() {
    let d = Daemon::start("");
    let port = d.mqtt.unwrap().port().to_string();
    let mut page = Raw::subscribed(&d.ws_url(), "wills/node").await;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([WILL_PROPERTIES, "--port", &port, "--topic", "wills/node"])
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let will: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(
        will,
        serde_json::json!({
            "topic": "wills/node",
            "payload": "gone",
            "retain": false,
            "user_properties": [["site", "north"], ["unit", "C"]],
            "content_type": "text/plain",
            "payload_format": 1,
            "response_topic": "replies/node",
            "correlation_data": "0102",
        })
    );
    // The WebSocket side still gets it too.
    let m = tokio::time::timeout(WAIT, page.next_msg())
        .await
        .expect("no will on the page");
    assert_eq!(m["data"], "gone");
}

// ---------------------------------------------------------------------------------------
// Device status notices and the log under a connect storm
// ---------------------------------------------------------------------------------------

/// Connects `client_id` from raw bytes and leaves with a DISCONNECT.
async fn come_and_go(addr: SocketAddr, client_id: &str) {
    let mut s = connected(addr, 4, client_id).await;
    s.write_all(&[0xe0, 0]).await.unwrap();
    until_closed(&mut s)
        .await
        .expect("not closed after DISCONNECT");
}

/// Past `offline_notices`, the oldest retained offline notices are forgotten, so client
/// ids that come once cannot pile up notices (nor use up the values users retain).
#[tokio::test]
async fn the_oldest_offline_notices_are_forgotten_past_their_bound() {
    let d = Daemon::start("[mqtt]\noffline_notices = 2\n");
    let addr = d.mqtt.unwrap();
    let mut watch = Raw::subscribed(&d.ws_url(), "$devices/+").await;
    for id in ["n1", "n2", "n3", "n4"] {
        come_and_go(addr, id).await;
        loop {
            let m = tokio::time::timeout(WAIT, watch.next_msg())
                .await
                .expect("no notice");
            if m["topic"] == format!("$devices/{id}") && m["event"] == "offline" {
                break;
            }
        }
    }
    // A dashboard arriving now gets the retained notices, then n5's live one.
    let mut late = Raw::subscribed(&d.ws_url(), "$devices/+").await;
    let _n5 = connected(addr, 4, "n5").await;
    let mut retained = Vec::new();
    loop {
        let m = tokio::time::timeout(WAIT, late.next_msg())
            .await
            .expect("no n5 notice");
        if m["topic"] == "$devices/n5" {
            break;
        }
        retained.push(m["topic"].as_str().unwrap_or_default().to_owned());
    }
    retained.sort();
    assert_eq!(retained, ["$devices/n3", "$devices/n4"]);
    // A device that comes back replaces its offline notice and is not forgotten.
    come_and_go(addr, "n3").await;
    mqtt_still_serves(&d, "offline notices").await;
}

/// A connect and a disconnect cost at most one INFO line, none of it from rumqttd's
/// router, and a refusal repeated many times one line per window.
#[tokio::test]
async fn a_connect_storm_does_not_flood_the_log() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    // The startup lines are not the storm's (the log is written behind the port file).
    d.wait_log_count("listening", 1).await;
    let before = d.logs().lines().count();
    const DEVICES: usize = 20;
    for i in 0..DEVICES {
        come_and_go(addr, &format!("storm-{i}")).await;
    }
    d.wait_log_count("device disconnected", DEVICES).await;
    let logs = d.logs();
    let lines: Vec<&str> = logs.lines().skip(before).collect();
    assert!(
        lines.len() <= DEVICES,
        "{} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        !logs.contains("rumqttd"),
        "router lines in the log:\n{logs}"
    );

    // Twenty refused CONNECTs (a client id with `/`) in a row: one line, not twenty.
    let before = d.logs().lines().count();
    for _ in 0..DEVICES {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&connect(4, "bad/id")).await.unwrap();
        let got = until_closed(&mut s).await.expect("refused and left open");
        assert_eq!(got, [0x20, 2, 0, 2], "CONNACK identifier rejected");
    }
    mqtt_still_serves(&d, "refused connects").await;
    let logs = d.logs();
    let refused = logs
        .lines()
        .skip(before)
        .filter(|l| l.contains("connect refused"));
    assert_eq!(refused.count(), 1, "{logs}");
}
