//! The MQTT session under abuse and at the edges of the spec: every limit the broker
//! announces is enforced on the wire (the device sees the reason code, the counter moves)
//! and another device is still served. Raw packets, because no client library will send
//! what a hostile or broken device sends.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{mosquitto_pub, mqtt_still_serves, Daemon, Raw};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const PUBREC: u8 = 0x50;
const PUBCOMP: u8 = 0x70;
const SUBACK: u8 = 0x90;
const UNSUBACK: u8 = 0xb0;
const DISCONNECT: u8 = 0xe0;

/// One MQTT packet as read off the wire: its first byte and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packet {
    first: u8,
    body: Vec<u8>,
}

impl Packet {
    fn kind(&self) -> u8 {
        self.first & 0xf0
    }

    /// The packet id at the front of an acknowledgement's body.
    fn pkid(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// The reason code of an MQTT 5 DISCONNECT (0 when it has none).
    fn reason(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    /// (topic, payload) of a PUBLISH on an MQTT 5 connection, QoS 0.
    fn v5_publish(&self) -> (String, Vec<u8>) {
        let tlen = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let topic = String::from_utf8(self.body[2..2 + tlen].to_vec()).unwrap();
        let mut at = 2 + tlen;
        if (self.first >> 1) & 3 > 0 {
            at += 2;
        }
        let (props, n) = varint(&self.body[at..]);
        (topic, self.body[at + n + props..].to_vec())
    }
}

/// MQTT's variable byte integer: (value, bytes used).
fn varint(b: &[u8]) -> (usize, usize) {
    let mut value = 0;
    for (i, byte) in b.iter().enumerate().take(4) {
        value |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad variable byte integer");
}

fn encode_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    encode_varint(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A device speaking raw MQTT over TCP.
struct Wire {
    s: TcpStream,
    v5: bool,
    buf: Vec<u8>,
}

impl Wire {
    /// Connects with clean start and `props` (MQTT 5 CONNECT properties, encoded), and
    /// returns the device with its CONNACK, which must accept it.
    async fn connect(addr: SocketAddr, v5: bool, client_id: &str, props: &[u8]) -> (Wire, Packet) {
        let s = TcpStream::connect(addr).await.expect("connect");
        let mut body = string("MQTT");
        body.extend([if v5 { 5 } else { 4 }, 0x02, 0, 60]);
        if v5 {
            encode_varint(props.len(), &mut body);
            body.extend_from_slice(props);
        }
        body.extend(string(client_id));
        let mut wire = Wire {
            s,
            v5,
            buf: Vec::new(),
        };
        wire.send(&packet(0x10, &body)).await;
        let connack = wire.next().await.expect("CONNACK");
        assert_eq!(connack.kind(), CONNACK, "{connack:?}");
        assert_eq!(connack.body[1], 0, "refused: {connack:?}");
        (wire, connack)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` if the server closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no packet within {WAIT:?}"))
    }

    /// `Some(None)` when closed, `None` if nothing arrived in `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<Option<Packet>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 2 {
                let (len, n) = varint(&self.buf[1..]);
                if self.buf.len() >= 1 + n + len {
                    let body = self.buf[1 + n..1 + n + len].to_vec();
                    let first = self.buf[0];
                    self.buf.drain(..1 + n + len);
                    return Some(Some(Packet { first, body }));
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet of `kind`, skipping others.
    async fn expect(&mut self, kind: u8) -> Packet {
        loop {
            let p = self.next().await.unwrap_or_else(|| panic!("closed"));
            if p.kind() == kind {
                return p;
            }
        }
    }

    /// Reads until the server closes; returns the last packet it sent before.
    async fn closed(&mut self) -> Option<Packet> {
        let mut last = None;
        while let Some(p) = self.next().await {
            last = Some(p);
        }
        last
    }

    /// Asserts the server ended the connection, telling an MQTT 5 device `reason`.
    async fn expect_disconnect(&mut self, reason: u8) {
        let last = self.closed().await;
        if self.v5 {
            let last = last.expect("a DISCONNECT before the close");
            assert_eq!(last.kind(), DISCONNECT, "{last:?}");
            assert_eq!(last.reason(), reason, "{last:?}");
        } else {
            assert!(
                last.is_none_or(|p| p.kind() != DISCONNECT),
                "3.1.1 has no server DISCONNECT"
            );
        }
    }

    fn publish(&self, qos: u8, pkid: u16, topic: &str, payload: &[u8], dup: bool) -> Vec<u8> {
        self.publish_with(qos, pkid, topic, payload, dup, &[])
    }

    fn publish_with(
        &self,
        qos: u8,
        pkid: u16,
        topic: &str,
        payload: &[u8],
        dup: bool,
        props: &[u8],
    ) -> Vec<u8> {
        let mut body = string(topic);
        if qos > 0 {
            body.extend(pkid.to_be_bytes());
        }
        if self.v5 {
            encode_varint(props.len(), &mut body);
            body.extend_from_slice(props);
        }
        body.extend_from_slice(payload);
        packet(PUBLISH | (u8::from(dup) << 3) | (qos << 1), &body)
    }

    fn pubrel(&self, pkid: u16) -> Vec<u8> {
        packet(0x62, &pkid.to_be_bytes())
    }

    fn subscribe(&self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for f in filters {
            body.extend(string(f));
            body.push(0);
        }
        packet(0x82, &body)
    }

    fn unsubscribe(&self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for f in filters {
            body.extend(string(f));
        }
        packet(0xa2, &body)
    }

    /// Subscribes (QoS 0) and returns the SUBACK's codes.
    async fn subscribed(&mut self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        let sub = self.subscribe(pkid, filters);
        self.send(&sub).await;
        let suback = self.expect(SUBACK).await;
        assert_eq!(suback.pkid(), pkid);
        let codes = if self.v5 {
            let (props, n) = varint(&suback.body[2..]);
            &suback.body[2 + n + props..]
        } else {
            &suback.body[2..]
        };
        codes.to_vec()
    }
}

/// The property of this identifier in an MQTT 5 CONNACK, as a big-endian number.
fn connack_property(connack: &Packet, id: u8) -> Option<u32> {
    let (len, n) = varint(&connack.body[2..]);
    let mut props = &connack.body[2 + n..2 + n + len];
    while let Some((&key, rest)) = props.split_first() {
        let width = match key {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 => 2,
            0x11 | 0x27 => 4,
            _ => {
                // Strings and binary data: a two-byte length first.
                let l = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                props = &rest[2 + l..];
                continue;
            }
        };
        let value = rest[..width]
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        if key == id {
            return Some(value);
        }
        props = &rest[width..];
    }
    None
}

async fn mqtt_stats(d: &Daemon) -> Value {
    d.healthz().await["mqtt"].clone()
}

/// Waits for the healthz figure at `path` (under `mqtt`) to reach `want`.
async fn wait_stat(d: &Daemon, path: &[&str], want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = mqtt_stats(d).await;
        let got = path.iter().fold(&stats, |v, k| &v[*k]).as_u64();
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mqtt.{} is {got:?}, want {want}: {stats}",
            path.join(".")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
