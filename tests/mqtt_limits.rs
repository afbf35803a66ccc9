//! The MQTT session under abuse and at the edges of the spec: every limit the broker
//! announces is enforced on the wire (the device sees the reason code, the counter moves)
//! and another device is still served. Raw packets, because no client library will send
//! what a hostile or broken device sends.

mod common;

use common::wire::*;
use common::{mosquitto_pub, mqtt_still_serves, Daemon, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// Unreleased QoS 2 publishes are bounded by the Receive Maximum.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unreleased_qos2_beyond_the_receive_maximum_disconnects() {
    let d = Daemon::start("[mqtt]\nreceive_maximum = 4\n");
    let addr = d.mqtt.unwrap();

    for v5 in [true, false] {
        let (mut dev, connack) = Wire::connect(addr, v5, "hoarder", &[]).await;
        if v5 {
            assert_eq!(connack_property(&connack, 0x21), Some(4), "{connack:?}");
        }
        // Four open flows are allowed, and a retransmission of one is not a fifth.
        for pkid in 1..=4 {
            let p = dev.publish(2, pkid, "hoard/x", b"x", false);
            dev.send(&p).await;
            assert_eq!(dev.expect(PUBREC).await.pkid(), pkid);
        }
        let again = dev.publish(2, 4, "hoard/x", b"x", true);
        dev.send(&again).await;
        assert_eq!(dev.expect(PUBREC).await.pkid(), 4);
        // Releasing one makes room for another.
        let rel = dev.pubrel(1);
        dev.send(&rel).await;
        assert_eq!(dev.expect(PUBCOMP).await.pkid(), 1);
        let p = dev.publish(2, 5, "hoard/x", b"x", false);
        dev.send(&p).await;
        assert_eq!(dev.expect(PUBREC).await.pkid(), 5);

        let fifth = dev.publish(2, 6, "hoard/x", b"x", false);
        dev.send(&fifth).await;
        dev.expect_disconnect(0x93).await;
    }
    wait_stat(&d, &["limit_disconnects", "receive_maximum"], 2).await;
    mqtt_still_serves(&d, "QoS 2 hoarding").await;
}

// ---------------------------------------------------------------------------------------
// Floods while reading the replies: what the session queues towards the router is bounded.
// ---------------------------------------------------------------------------------------

/// Writes `rounds` copies of `chunk` while reading everything the server sends, and
/// returns the bytes read by the time `want` bytes arrived (or the server went quiet).
async fn flood_reading(dev: Wire, chunk: Vec<u8>, rounds: usize, want: usize) -> usize {
    let (mut rd, mut wr) = dev.s.into_split();
    // The write half is kept open until the reading is done: dropping it sends FIN,
    // and the server rightly ends a session whose device has closed.
    let writer = tokio::spawn(async move {
        for _ in 0..rounds {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
        drop(wr);
    });
    let mut got = dev.buf.len();
    let mut buf = vec![0u8; 64 * 1024];
    while got < want {
        match tokio::time::timeout(WAIT, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => break,
        }
    }
    writer.abort();
    got
}

#[tokio::test]
async fn a_pingreq_flood_is_answered_without_growing_memory() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let rss_before = d.rss_kib();
    let pings: Vec<u8> = [0xc0u8, 0x00].repeat(32 * 1024);
    const ROUNDS: usize = 40;
    let mut floods = Vec::new();
    for (i, v5) in [true, false].into_iter().enumerate() {
        let (dev, _) = Wire::connect(addr, v5, &format!("pinger{i}"), &[]).await;
        let chunk = pings.clone();
        floods.push(tokio::spawn(flood_reading(
            dev,
            chunk,
            ROUNDS,
            pings.len() * ROUNDS,
        )));
    }
    for flood in floods {
        // Every PINGREQ gets its two-byte PINGRESP.
        let got = flood.await.unwrap();
        let rss = d.rss_kib() / 1024;
        assert_eq!(
            got,
            pings.len() * ROUNDS,
            "PINGRESP bytes (RSS now {rss} MiB)"
        );
    }
    let growth_mib = d.rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!(
        "RSS grew {growth_mib} MiB over 2 x {} PINGREQs",
        32 * 1024 * ROUNDS
    );
    assert!(growth_mib < 32, "RSS grew {growth_mib} MiB");
    mqtt_still_serves(&d, "a PINGREQ flood").await;
}

/// Keeps reading a device's connection so the router never pauses it.
fn drain(dev: Wire) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut s = dev.s;
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
}

#[tokio::test]
async fn qos1_and_subscribe_floods_are_paced_not_queued() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    // An MQTT subscriber, so the publishes do go to the router.
    let (mut sub, _) = Wire::connect(addr, true, "flood-sub", &[]).await;
    assert_eq!(sub.subscribed(1, &["flood/#"]).await, [0]);
    let reader = drain(sub);
    let rss_before = d.rss_kib();

    const ROUNDS: usize = 50;
    let (dev, _) = Wire::connect(addr, true, "flooder", &[]).await;
    let mut chunk = Vec::new();
    for pkid in 1..=1000u16 {
        chunk.extend(dev.publish(1, pkid, "flood/x", &[b'p'; 100], false));
    }
    // Every QoS 1 publish gets its four-byte PUBACK.
    let got = flood_reading(dev, chunk, ROUNDS, 1000 * ROUNDS * 4).await;
    assert_eq!(
        got,
        1000 * ROUNDS * 4,
        "PUBACK bytes (RSS {} MiB)",
        d.rss_kib() / 1024
    );

    let (dev, _) = Wire::connect(addr, true, "subflooder", &[]).await;
    let mut chunk = Vec::new();
    for pkid in 1..=1000u16 {
        chunk.extend(dev.subscribe(pkid, &["flood/again"]));
    }
    // Every SUBSCRIBE gets its six-byte SUBACK (no properties, one code).
    let got = flood_reading(dev, chunk, ROUNDS, 1000 * ROUNDS * 6).await;
    assert_eq!(
        got,
        1000 * ROUNDS * 6,
        "SUBACK bytes (RSS {} MiB)",
        d.rss_kib() / 1024
    );

    let growth_mib = d.rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!(
        "RSS grew {growth_mib} MiB over 2 x {} packets",
        1000 * ROUNDS
    );
    // The router's own segments for the filter take up to 10 MiB of this.
    assert!(growth_mib < 64, "RSS grew {growth_mib} MiB");
    mqtt_still_serves(&d, "QoS 1 and SUBSCRIBE floods").await;
    reader.abort();
}

// ---------------------------------------------------------------------------------------
// Subscriptions per device.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn subscriptions_beyond_the_cap_are_refused_in_the_suback() {
    let d = Daemon::start("[mqtt]\nmax_subscriptions = 3\n");
    let addr = d.mqtt.unwrap();
    let mut ws = Raw::subscribed(&d.ws_url(), "cap/#").await;
    for (v5, refused) in [(true, 0x97), (false, 0x80)] {
        let id = if v5 { "capped5" } else { "capped4" };
        let (mut dev, _) = Wire::connect(addr, v5, id, &[]).await;
        assert_eq!(dev.subscribed(1, &["cap/a", "cap/b"]).await, [0, 0]);
        // Again to a held filter is no new subscription; the fourth is one too many.
        assert_eq!(
            dev.subscribed(2, &["cap/a", "cap/c", "cap/d"]).await,
            [0, 0, refused]
        );
        // Giving one back makes room.
        let unsub = dev.unsubscribe(3, &["cap/b"]);
        dev.send(&unsub).await;
        dev.expect(UNSUBACK).await;
        assert_eq!(dev.subscribed(4, &["cap/d"]).await, [0]);
        // The refused filter was never held: nothing arrives for it, and the device
        // is still served.
        let p = dev.publish(1, 5, "cap/d", b"d", false);
        dev.send(&p).await;
        let m = dev.expect(PUBLISH).await;
        assert_eq!(m.body[2..7], *b"cap/d");
        assert_eq!(ws.next_msg().await["data"], "d");
    }
    wait_stat(&d, &["subscribes_over_quota"], 2).await;
}

// ---------------------------------------------------------------------------------------
// Topic aliases.
// ---------------------------------------------------------------------------------------

/// MQTT 5 PUBLISH properties holding one topic alias.
fn alias(n: u16) -> Vec<u8> {
    let mut p = vec![0x23];
    p.extend(n.to_be_bytes());
    p
}

#[tokio::test]
async fn topic_aliases_are_bounded_and_refusals_log_little() {
    let d = Daemon::start(
        "[mqtt]\ntopic_alias_maximum = 2\n[[mqtt.acl]]\nuser = \"*\"\npublish = [\"alias/#\", \"alive/#\"]\nsubscribe = [\"#\"]\n",
    );
    let addr = d.mqtt.unwrap();
    let mut ws = Raw::subscribed(&d.ws_url(), "alias/#").await;
    let (mut dev, connack) = Wire::connect(addr, true, "aliaser", &[]).await;
    assert_eq!(connack_property(&connack, 0x22), Some(2), "{connack:?}");

    // Alias 2 is set, then used with an empty topic.
    let set = dev.publish_with(1, 1, "alias/two", b"set", false, &alias(2));
    dev.send(&set).await;
    dev.expect(PUBACK).await;
    let used = dev.publish_with(1, 2, "", b"used", false, &alias(2));
    dev.send(&used).await;
    dev.expect(PUBACK).await;
    for want in ["set", "used"] {
        let m = ws.next_msg().await;
        assert_eq!(
            (m["topic"].as_str(), m["data"].as_str()),
            (Some("alias/two"), Some(want))
        );
    }

    // A refused publish with a huge topic, many times: a few short log lines.
    let long = format!("denied/{}", "x".repeat(60_000));
    let mut flood = Vec::new();
    for pkid in 3..203 {
        flood.extend(dev.publish(1, pkid, &long, b"no", false));
    }
    dev.send(&flood).await;
    for _ in 3..203 {
        let ack = dev.expect(PUBACK).await;
        assert_eq!(ack.body[2], 0x90, "topic name invalid: {ack:?}");
    }
    let logs = d.logs();
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("publish refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "one line per window: {}", refusals.len());
    assert!(
        refusals[0].len() < 1024,
        "clipped: {} bytes",
        refusals[0].len()
    );

    // Alias 3 is past the announced maximum.
    let past = dev.publish_with(0, 0, "alias/three", b"x", false, &alias(3));
    dev.send(&past).await;
    dev.expect_disconnect(0x94).await;
    wait_stat(&d, &["limit_disconnects", "topic_alias"], 1).await;
    mqtt_still_serves(&d, "a topic alias past the maximum").await;
}

// ---------------------------------------------------------------------------------------
// QoS 2 exactly once.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn qos2_is_delivered_once_and_pubrel_releases_its_own_packet() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let mut ws = Raw::subscribed(&d.ws_url(), "once/#").await;
    let (mut sub, _) = Wire::connect(addr, true, "once-sub", &[]).await;
    assert_eq!(sub.subscribed(1, &["once/#"]).await, [0]);

    let (mut dev, _) = Wire::connect(addr, true, "once-pub", &[]).await;
    let one = dev.publish(2, 1, "once/x", b"one", false);
    let one_again = dev.publish(2, 1, "once/x", b"one", true);
    let two = dev.publish(2, 2, "once/x", b"two", false);
    for p in [one, one_again, two] {
        dev.send(&p).await;
    }
    for pkid in [1, 1, 2] {
        assert_eq!(dev.expect(PUBREC).await.pkid(), pkid);
    }
    // Released out of order: packet 2 first.
    for pkid in [2, 1] {
        let rel = dev.pubrel(pkid);
        dev.send(&rel).await;
        let comp = dev.expect(PUBCOMP).await;
        assert_eq!(
            (comp.pkid(), comp.body.get(2).copied().unwrap_or(0)),
            (pkid, 0)
        );
    }
    let mut got = Vec::new();
    while let Some(Some(p)) = sub.next_within(QUIET).await {
        if p.kind() == PUBLISH {
            got.push(String::from_utf8(p.v5_publish().1).unwrap());
        }
    }
    assert_eq!(got, ["one", "two"], "MQTT subscriber");
    for want in ["one", "two"] {
        assert_eq!(ws.next_msg().await["data"], want);
    }
    while let Some(f) = ws.try_recv(QUIET).await {
        assert_ne!(f["op"], "msg", "delivered twice to the hub: {f}");
    }
    // A PUBREL for a packet id not awaiting release: PUBCOMP 0x92.
    let stray = dev.pubrel(9);
    dev.send(&stray).await;
    let comp = dev.expect(PUBCOMP).await;
    assert_eq!((comp.pkid(), comp.body[2]), (9, 0x92));
}

// ---------------------------------------------------------------------------------------
// UNSUBSCRIBE always gets its UNSUBACK.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_unsubscribe_gets_one_unsuback() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    for v5 in [true, false] {
        let (mut dev, _) = Wire::connect(addr, v5, "unsub", &[]).await;
        assert_eq!(dev.subscribed(1, &["held/a", "held/b"]).await, [0, 0]);
        // One filter never subscribed, then one held and one not, in one packet.
        let never = dev.unsubscribe(2, &["never/x"]);
        dev.send(&never).await;
        let mixed = dev.unsubscribe(3, &["held/a", "never/y", "held/b"]);
        dev.send(&mixed).await;
        let mut acks = Vec::new();
        while let Some(Some(p)) = dev.next_within(QUIET).await {
            assert_eq!(p.kind(), UNSUBACK, "{p:?}");
            acks.push(p);
        }
        assert_eq!(acks.len(), 2, "one UNSUBACK per UNSUBSCRIBE: {acks:?}");
        assert_eq!((acks[0].pkid(), acks[1].pkid()), (2, 3));
        if v5 {
            // After the property length: No subscription existed (0x11) or Success.
            assert_eq!(acks[0].body[3..], [0x11]);
            assert_eq!(acks[1].body[3..], [0x00, 0x11, 0x00]);
        } else {
            assert_eq!(acks[0].body.len(), 2);
        }
        // The held ones are gone: a publish to them comes back to nobody.
        let p = dev.publish(0, 0, "held/a", b"x", false);
        dev.send(&p).await;
        assert_eq!(dev.next_within(QUIET).await, None, "still subscribed");
    }
}

// ---------------------------------------------------------------------------------------
// The device's own Maximum Packet Size.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn packets_larger_than_the_device_takes_are_not_sent_to_it() {
    let d = Daemon::start("");
    let addr = d.mqtt.unwrap();
    let port = addr.port();
    // Maximum Packet Size 64 (property 0x27).
    let (mut dev, _) = Wire::connect(addr, true, "small", &[0x27, 0, 0, 0, 64]).await;
    // Subscribe at QoS 1, so the router waits for acknowledgements.
    let sub = packet(0x82, &[&[0, 1, 0][..], &string("tiny/#"), &[1]].concat());
    dev.send(&sub).await;
    dev.expect(SUBACK).await;
    for payload in ["x".repeat(100), "fits".to_owned()] {
        assert!(mosquitto_pub(port, &["-q", "1", "-t", "tiny/x", "-m", &payload]).await);
    }
    let m = dev.expect(PUBLISH).await;
    assert!(m.body.len() < 64, "{} bytes", m.body.len());
    assert!(m.body.ends_with(b"fits"), "{m:?}");
    let ack = packet(PUBACK, &m.body[8..10]);
    dev.send(&ack).await;
    wait_stat(&d, &["too_large_for_device"], 1).await;
    // The router's flow went on: later messages still arrive.
    assert!(mosquitto_pub(port, &["-q", "1", "-t", "tiny/x", "-m", "more"]).await);
    assert!(dev.expect(PUBLISH).await.body.ends_with(b"more"));
}
