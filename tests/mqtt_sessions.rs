//! MQTT subscribers served by the Hub: the QoS a delivery goes out at, MQTT 5 session
//! expiry, the device's Receive Maximum, subscription options, and retained values that
//! follow one rule for MQTT and WebSocket subscribers. Raw packets, so that every flag
//! on the wire is seen; `mosquitto_pub` and WebSocket clients as the other side.

mod common;

use std::net::SocketAddr;

use common::wire::*;
use common::{mosquitto_pub, Daemon, Raw};
use serde_json::json;

/// The CONNECT properties for a Session Expiry Interval of `secs` (0x11).
fn expiry(secs: u32) -> Vec<u8> {
    let mut props = vec![0x11];
    props.extend(secs.to_be_bytes());
    props
}

/// Whether a CONNACK says a session was present.
fn session_present(connack: &Packet) -> bool {
    connack.body[0] & 1 == 1
}

/// Publishes from a raw device and waits until the daemon has taken it (a QoS 1
/// publish's PUBACK, or a PINGRESP behind a QoS 0 one).
async fn publish(dev: &mut Wire, qos: u8, topic: &str, payload: &[u8], retain: bool) {
    let mut p = dev.publish(qos, 1, topic, payload, false);
    p[0] |= u8::from(retain);
    dev.send(&p).await;
    if qos == 1 {
        dev.expect(PUBACK).await;
    } else {
        dev.send(&[0xc0, 0]).await;
        dev.expect(0xd0).await;
    }
}

async fn ws_publish(d: &Daemon, topic: &str, data: serde_json::Value, retain: bool) {
    let mut ws = Raw::connect(&d.ws_url()).await;
    let r = ws
        .request(json!({"op":"pub","topic":topic,"data":data,"retain":retain}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
}

fn topics_and_qos(got: &[Packet], v5: bool) -> Vec<(String, u8)> {
    got.iter().map(|p| (p.publish(v5).topic, p.qos())).collect()
}

#[tokio::test]
async fn deliveries_go_out_at_the_lower_of_publish_and_granted_qos() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    for v5 in [false, true] {
        let (mut sub, _) = Wire::connect(addr, v5, "qos-sub", &[]).await;
        assert_eq!(sub.subscribed_with(1, &[("qos/#", 2)]).await, [2]);
        let (mut publisher, _) = Wire::connect(addr, v5, "qos-pub", &[]).await;
        publish(&mut publisher, 0, "qos/zero", b"0", false).await;
        publish(&mut publisher, 1, "qos/one", b"1", false).await;
        // WebSocket and HTTP messages count as QoS 1: the Hub acknowledged them.
        ws_publish(&d, "qos/ws", json!("w"), false).await;
        let got = sub.publishes_until_quiet(true).await;
        assert_eq!(
            topics_and_qos(&got, v5),
            [
                ("qos/zero".to_owned(), 0),
                ("qos/one".to_owned(), 1),
                ("qos/ws".to_owned(), 1)
            ],
            "MQTT {}",
            if v5 { "5" } else { "3.1.1" }
        );
    }
}

#[tokio::test]
async fn a_websocket_message_reaches_an_mqtt_subscriber_with_a_puback_flow() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    // Persistent, so a message it does not acknowledge comes again when it returns.
    let (mut sub, _) = Wire::connect_with(addr, false, "ws-fan", 0, &[]).await;
    assert_eq!(sub.subscribed_with(1, &[("from/ws", 2)]).await, [2]);
    ws_publish(&d, "from/ws", json!({"n": 1}), false).await;
    let first = sub.expect(PUBLISH).await;
    assert_eq!(first.qos(), 1, "{first:?}");
    assert_eq!(first.publish(false).payload, br#"{"n":1}"#);
    assert!(first.publish(false).pkid != 0);
    // Not acknowledged: after a reconnect it is sent again, marked DUP.
    drop(sub);
    let (mut sub, connack) = Wire::connect_with(addr, false, "ws-fan", 0, &[]).await;
    assert!(session_present(&connack));
    let again = sub.expect(PUBLISH).await;
    assert!(again.dup() && again.qos() == 1, "{again:?}");
    assert_eq!(again.publish(false).payload, br#"{"n":1}"#);
    let ack = sub.puback(again.publish(false).pkid);
    sub.send(&ack).await;
    ws_publish(&d, "from/ws", json!({"n": 2}), false).await;
    let next = sub.publishes_until_quiet(true).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].publish(false).payload, br#"{"n":2}"#);
    assert!(!next[0].dup());
}

/// Subscribes `client_id` (MQTT 5 or 3.1.1) to `topic` at QoS 1 with these CONNECT
/// flags and properties, then leaves with a DISCONNECT.
async fn subscribe_and_leave(
    addr: SocketAddr,
    v5: bool,
    client_id: &str,
    flags: u8,
    props: &[u8],
    topic: &str,
) {
    let (mut dev, _) = Wire::connect_with(addr, v5, client_id, flags, props).await;
    assert_eq!(dev.subscribed_with(1, &[(topic, 1)]).await, [1]);
    let bye = dev.disconnect();
    dev.send(&bye).await;
    assert_eq!(dev.next().await, None, "the server closes after DISCONNECT");
}

#[tokio::test]
async fn mqtt5_sessions_last_as_long_as_their_session_expiry() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let (mut publisher, _) = Wire::connect(addr, true, "exp-pub", &[]).await;

    // Clean Start 0 with no expiry: the session ends with the connection.
    subscribe_and_leave(addr, true, "exp-none", 0, &[], "exp/none").await;
    let (mut dev, connack) = Wire::connect_with(addr, true, "exp-none", 0, &[]).await;
    assert!(!session_present(&connack), "{connack:?}");
    publish(&mut publisher, 1, "exp/none", b"x", false).await;
    assert!(dev.publishes_until_quiet(true).await.is_empty());
    drop(dev);

    // Clean Start 1 with an expiry of 300 s: kept after the connection, with what was
    // published meanwhile.
    subscribe_and_leave(addr, true, "exp-300", 0x02, &expiry(300), "exp/300").await;
    wait_stat(&d, &["sessions_waiting"], 1).await;
    publish(&mut publisher, 1, "exp/300", b"kept", false).await;
    let (mut dev, connack) = Wire::connect_with(addr, true, "exp-300", 0, &expiry(300)).await;
    assert!(session_present(&connack), "{connack:?}");
    let got = dev.publishes_until_quiet(true).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].publish(true).payload, b"kept");
    drop(dev);

    // An expiry of 1 s: the session and what was queued for it go when it passes.
    subscribe_and_leave(addr, true, "exp-1", 0, &expiry(1), "exp/1").await;
    publish(&mut publisher, 1, "exp/1", b"lost", false).await;
    wait_stat(&d, &["sessions_expired"], 1).await;
    let (mut dev, connack) = Wire::connect_with(addr, true, "exp-1", 0, &expiry(1)).await;
    assert!(!session_present(&connack), "{connack:?}");
    assert!(dev.publishes_until_quiet(true).await.is_empty());
}

#[tokio::test]
async fn no_more_unacknowledged_publishes_than_the_device_receive_maximum() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    // Receive Maximum 2 (property 0x21).
    let (mut sub, _) = Wire::connect(addr, true, "rm-sub", &[0x21, 0, 2]).await;
    assert_eq!(sub.subscribed_with(1, &[("rm/#", 1)]).await, [1]);
    let (mut publisher, _) = Wire::connect(addr, true, "rm-pub", &[]).await;
    for i in 0..5u8 {
        publish(&mut publisher, 1, "rm/t", &[b'0' + i], false).await;
    }
    let mut payloads = Vec::new();
    let first = sub.publishes_until_quiet(false).await;
    assert_eq!(first.len(), 2, "two in flight at most: {first:?}");
    let mut unacked: Vec<Packet> = first;
    while let Some(p) = unacked.first().cloned() {
        unacked.remove(0);
        let p = p.publish(true);
        payloads.push(p.payload[0]);
        let ack = sub.puback(p.pkid);
        sub.send(&ack).await;
        let more = sub.publishes_until_quiet(false).await;
        assert!(unacked.len() + more.len() <= 2, "{more:?}");
        unacked.extend(more);
    }
    assert_eq!(payloads, b"01234");
}

#[tokio::test]
async fn no_local_keeps_a_device_from_its_own_messages() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let (mut own, _) = Wire::connect(addr, true, "nl-own", &[]).await;
    // No Local (bit 2).
    assert_eq!(own.subscribed_with(1, &[("nl/t", 0b100)]).await, [0]);
    let (mut other, _) = Wire::connect(addr, true, "nl-other", &[]).await;
    assert_eq!(other.subscribed(1, &["nl/t"]).await, [0]);
    publish(&mut own, 0, "nl/t", b"mine", false).await;
    assert_eq!(other.publishes_until_quiet(false).await.len(), 1);
    assert!(own.publishes_until_quiet(false).await.is_empty());
    publish(&mut other, 0, "nl/t", b"theirs", false).await;
    let got = own.publishes_until_quiet(false).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].publish(true).payload, b"theirs");
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_messages() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let (mut kept, _) = Wire::connect(addr, true, "rap-kept", &[]).await;
    // Retain As Published (bit 3).
    assert_eq!(kept.subscribed_with(1, &[("rap/t", 0b1000)]).await, [0]);
    let (mut plain, _) = Wire::connect(addr, true, "rap-plain", &[]).await;
    assert_eq!(plain.subscribed(1, &["rap/t"]).await, [0]);
    assert!(mosquitto_pub(addr.port(), &["-q", "1", "-r", "-t", "rap/t", "-m", "v"]).await);
    let got = kept.publishes_until_quiet(false).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].retain(), "{got:?}");
    let got = plain.publishes_until_quiet(false).await;
    assert_eq!(got.len(), 1);
    assert!(
        !got[0].retain(),
        "an established subscription gets RETAIN 0: {got:?}"
    );
}

#[tokio::test]
async fn retain_handling_decides_when_retained_values_are_sent() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    assert!(mosquitto_pub(addr.port(), &["-q", "1", "-r", "-t", "rh/t", "-m", "v"]).await);
    let (mut dev, _) = Wire::connect(addr, true, "rh", &[]).await;
    let retained = |got: &[Packet]| got.iter().filter(|p| p.retain()).count();
    // Handling 0: on every subscribe, a repeated one included.
    for pkid in [1, 2] {
        dev.subscribed_with(pkid, &[("rh/t", 0)]).await;
        assert_eq!(retained(&dev.publishes_until_quiet(false).await), 1);
    }
    // Handling 1: only when the subscription is new.
    dev.subscribed_with(3, &[("rh/t", 0b01_0000)]).await;
    assert_eq!(retained(&dev.publishes_until_quiet(false).await), 0);
    dev.subscribed_with(4, &[("rh/+", 0b01_0000)]).await;
    assert_eq!(retained(&dev.publishes_until_quiet(false).await), 1);
    // Handling 2: never.
    dev.subscribed_with(5, &[("rh/#", 0b10_0000)]).await;
    assert_eq!(retained(&dev.publishes_until_quiet(false).await), 0);
}

#[tokio::test]
async fn a_new_mqtt_subscriber_gets_every_matching_retained_value() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    const TOPICS: usize = 1000;
    let (mut publisher, _) = Wire::connect(addr, false, "ret-pub", &[]).await;
    let mut all = Vec::new();
    for i in 0..TOPICS {
        let mut p = publisher.publish(0, 0, &format!("many/{i}"), b"v", false);
        p[0] |= 1;
        all.extend(p);
    }
    publisher.send(&all).await;
    publish(&mut publisher, 0, "many-done", b"", false).await;
    for v5 in [false, true] {
        let (mut sub, _) = Wire::connect(addr, v5, "ret-sub", &[]).await;
        sub.subscribed(1, &["many/#"]).await;
        let got = sub.publishes_until_quiet(false).await;
        assert_eq!(got.len(), TOPICS);
        assert!(got.iter().all(Packet::retain));
    }
}

#[tokio::test]
async fn a_non_retained_empty_message_leaves_the_retained_value_on_both_sides() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let port = addr.port();
    assert!(mosquitto_pub(port, &["-q", "1", "-r", "-t", "one/t", "-m", "kept"]).await);
    // Neither an empty QoS 1 MQTT publish nor an empty WebSocket one clears it: only a
    // retained empty one does.
    assert!(mosquitto_pub(port, &["-q", "1", "-t", "one/t", "-n"]).await);
    ws_publish(&d, "one/t", json!(""), false).await;
    let (mut dev, _) = Wire::connect(addr, false, "one-rule", &[]).await;
    dev.subscribed(1, &["one/t"]).await;
    let got = dev.publishes_until_quiet(false).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].publish(false).payload, b"kept");
    let mut ws = Raw::subscribed(&d.ws_url(), "one/t").await;
    assert_eq!(ws.next_msg().await["data"], "kept");
    // A retained empty one clears it for both.
    assert!(mosquitto_pub(port, &["-q", "1", "-r", "-t", "one/t", "-n"]).await);
    let (mut dev, _) = Wire::connect(addr, false, "one-rule-2", &[]).await;
    dev.subscribed(1, &["one/t"]).await;
    assert!(dev.publishes_until_quiet(false).await.is_empty());
}

#[tokio::test]
async fn a_shared_subscription_hands_each_message_to_one_member() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let mut members = Vec::new();
    for id in ["share-a", "share-b"] {
        let (mut dev, _) = Wire::connect(addr, true, id, &[]).await;
        assert_eq!(dev.subscribed(1, &["$share/g/sh/t"]).await, [0]);
        members.push(dev);
    }
    let (mut plain, _) = Wire::connect(addr, true, "share-plain", &[]).await;
    plain.subscribed(1, &["sh/t"]).await;
    let (mut publisher, _) = Wire::connect(addr, true, "share-pub", &[]).await;
    for i in 0..4u8 {
        publish(&mut publisher, 0, "sh/t", &[b'0' + i], false).await;
    }
    assert_eq!(plain.publishes_until_quiet(false).await.len(), 4);
    let mut got = Vec::new();
    for dev in &mut members {
        let mine = dev.publishes_until_quiet(false).await;
        assert!(!mine.is_empty(), "every member gets its turn");
        got.extend(mine.iter().map(|p| p.publish(true).payload[0]));
    }
    got.sort_unstable();
    assert_eq!(got, b"0123", "each message to one member");
}

#[tokio::test]
async fn unreleased_qos2_packet_ids_belong_to_the_session() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let (mut sub, _) = Wire::connect(addr, false, "q2-sub", &[]).await;
    sub.subscribed(1, &["q2/t"]).await;
    for v5 in [false, true] {
        let id = if v5 { "q2-v5" } else { "q2-v311" };
        let props = if v5 { expiry(60) } else { Vec::new() };
        let (mut dev, _) = Wire::connect_with(addr, v5, id, 0, &props).await;
        let first = dev.publish(2, 7, "q2/t", b"once", false);
        dev.send(&first).await;
        assert_eq!(dev.expect(PUBREC).await.pkid(), 7);
        // Gone before PUBREL; back with its session, it sends the PUBLISH again.
        drop(dev);
        let (mut dev, connack) = Wire::connect_with(addr, v5, id, 0, &props).await;
        assert!(session_present(&connack), "{connack:?}");
        let again = dev.publish(2, 7, "q2/t", b"once", true);
        dev.send(&again).await;
        assert_eq!(dev.expect(PUBREC).await.pkid(), 7);
        let rel = dev.pubrel(7);
        dev.send(&rel).await;
        let comp = dev.expect(PUBCOMP).await;
        assert_eq!(comp.pkid(), 7);
        assert_ne!(
            comp.body.get(2),
            Some(&0x92),
            "the PUBREL found its packet id"
        );
        let got = sub.publishes_until_quiet(false).await;
        assert_eq!(got.len(), 1, "delivered once: {got:?}");
    }
}

#[tokio::test]
async fn a_pubrel_not_completed_is_sent_again_when_the_device_returns() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let props = expiry(60);
    let (mut sub, _) = Wire::connect_with(addr, true, "rel-sub", 0, &props).await;
    assert_eq!(sub.subscribed_with(1, &[("rel/t", 2)]).await, [2]);
    let (mut publisher, _) = Wire::connect(addr, true, "rel-pub", &[]).await;
    let p = publisher.publish(2, 1, "rel/t", b"x", false);
    publisher.send(&p).await;
    publisher.expect(PUBREC).await;
    let m = sub.expect(PUBLISH).await;
    assert_eq!(m.qos(), 2);
    let pkid = m.publish(true).pkid;
    sub.send(&packet(PUBREC, &pkid.to_be_bytes())).await;
    assert_eq!(sub.expect(0x60).await.pkid(), pkid);
    // Gone before PUBCOMP: the PUBREL comes again, so the device can free the id.
    drop(sub);
    let (mut sub, connack) = Wire::connect_with(addr, true, "rel-sub", 0, &props).await;
    assert!(session_present(&connack), "{connack:?}");
    assert_eq!(sub.expect(0x60).await.pkid(), pkid);
    sub.send(&packet(PUBCOMP, &pkid.to_be_bytes())).await;
    publish(&mut publisher, 1, "rel/t", b"next", false).await;
    let got = sub.publishes_until_quiet(true).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].publish(true).payload, b"next");
}

#[tokio::test]
async fn a_session_away_keeps_a_bounded_queue_and_counts_what_it_drops() {
    let d = Daemon::start("[ws]\noutbound_queue_messages = 4\n");
    let addr = d.mqtt.unwrap();
    // 3.1.1 with clean session off: kept after the device leaves.
    subscribe_and_leave(addr, false, "bounded", 0, &[], "b/t").await;
    let (mut publisher, _) = Wire::connect(addr, false, "b-pub", &[]).await;
    for i in 0..10u8 {
        publish(&mut publisher, 1, "b/t", &[b'0' + i], false).await;
    }
    assert_eq!(d.healthz().await["dropped"], 6, "the oldest go, counted");
    let (mut dev, connack) = Wire::connect_with(addr, false, "bounded", 0, &[]).await;
    assert!(session_present(&connack));
    let got: Vec<u8> = dev
        .publishes_until_quiet(true)
        .await
        .iter()
        .map(|p| p.publish(false).payload[0])
        .collect();
    assert_eq!(got, b"6789", "the newest are kept");
}
