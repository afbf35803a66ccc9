//! A device speaking raw MQTT (3.1.1 or 5) over TCP, for tests that must see every
//! packet and flag on the wire or send what no client library sends.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Daemon;

pub const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(300);

pub const CONNACK: u8 = 0x20;
pub const PUBLISH: u8 = 0x30;
pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
pub const PUBCOMP: u8 = 0x70;
pub const SUBACK: u8 = 0x90;
pub const UNSUBACK: u8 = 0xb0;
pub const DISCONNECT: u8 = 0xe0;

/// One MQTT packet as read off the wire: its first byte and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.first & 0xf0
    }

    /// The packet id at the front of an acknowledgement's body.
    pub fn pkid(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// The reason code of an MQTT 5 DISCONNECT (0 when it has none).
    pub fn reason(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    /// A PUBLISH's QoS.
    pub fn qos(&self) -> u8 {
        (self.first >> 1) & 3
    }

    /// A PUBLISH's RETAIN flag.
    pub fn retain(&self) -> bool {
        self.first & 1 == 1
    }

    /// A PUBLISH's DUP flag.
    pub fn dup(&self) -> bool {
        self.first & 8 == 8
    }

    /// A PUBLISH's topic, packet id (0 at QoS 0) and payload, on a connection of either
    /// revision.
    pub fn publish(&self, v5: bool) -> Publish {
        let tlen = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let topic = String::from_utf8(self.body[2..2 + tlen].to_vec()).unwrap();
        let mut at = 2 + tlen;
        let mut pkid = 0;
        if self.qos() > 0 {
            pkid = u16::from_be_bytes([self.body[at], self.body[at + 1]]);
            at += 2;
        }
        if v5 {
            let (props, n) = varint(&self.body[at..]);
            at += n + props;
        }
        Publish {
            topic,
            pkid,
            payload: self.body[at..].to_vec(),
        }
    }

    /// (topic, payload) of a PUBLISH on an MQTT 5 connection, QoS 0.
    pub fn v5_publish(&self) -> (String, Vec<u8>) {
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

/// The parts of a PUBLISH a test looks at (see [`Packet::publish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub pkid: u16,
    pub payload: Vec<u8>,
}

/// MQTT's variable byte integer: (value, bytes used).
pub fn varint(b: &[u8]) -> (usize, usize) {
    let mut value = 0;
    for (i, byte) in b.iter().enumerate().take(4) {
        value |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad variable byte integer");
}

pub fn encode_varint(mut n: usize, out: &mut Vec<u8>) {
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

pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    encode_varint(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

pub fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A device speaking raw MQTT over TCP.
pub struct Wire {
    pub s: TcpStream,
    pub v5: bool,
    pub buf: Vec<u8>,
}

impl Wire {
    /// Connects with clean start and `props` (MQTT 5 CONNECT properties, encoded), and
    /// returns the device with its CONNACK, which must accept it.
    pub async fn connect(
        addr: SocketAddr,
        v5: bool,
        client_id: &str,
        props: &[u8],
    ) -> (Wire, Packet) {
        Wire::connect_with(addr, v5, client_id, 0x02, props).await
    }

    /// [`Wire::connect`] with the CONNECT flags given (0x02: clean start/session).
    pub async fn connect_with(
        addr: SocketAddr,
        v5: bool,
        client_id: &str,
        flags: u8,
        props: &[u8],
    ) -> (Wire, Packet) {
        let s = TcpStream::connect(addr).await.expect("connect");
        let mut body = string("MQTT");
        body.extend([if v5 { 5 } else { 4 }, flags, 0, 60]);
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

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` if the server closed the connection.
    pub async fn next(&mut self) -> Option<Packet> {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no packet within {WAIT:?}"))
    }

    /// `Some(None)` when closed, `None` if nothing arrived in `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Option<Packet>> {
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
    pub async fn expect(&mut self, kind: u8) -> Packet {
        loop {
            let p = self.next().await.unwrap_or_else(|| panic!("closed"));
            if p.kind() == kind {
                return p;
            }
        }
    }

    /// Reads until the server closes; returns the last packet it sent before.
    pub async fn closed(&mut self) -> Option<Packet> {
        let mut last = None;
        while let Some(p) = self.next().await {
            last = Some(p);
        }
        last
    }

    /// Asserts the server ended the connection, telling an MQTT 5 device `reason`.
    pub async fn expect_disconnect(&mut self, reason: u8) {
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

    pub fn publish(&self, qos: u8, pkid: u16, topic: &str, payload: &[u8], dup: bool) -> Vec<u8> {
        self.publish_with(qos, pkid, topic, payload, dup, &[])
    }

    pub fn publish_with(
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

    pub fn pubrel(&self, pkid: u16) -> Vec<u8> {
        packet(0x62, &pkid.to_be_bytes())
    }

    pub fn subscribe(&self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        let with: Vec<(&str, u8)> = filters.iter().map(|f| (*f, 0)).collect();
        self.subscribe_with(pkid, &with)
    }

    /// SUBSCRIBE with each filter's options byte (QoS | No Local << 2 | Retain As
    /// Published << 3 | Retain Handling << 4).
    pub fn subscribe_with(&self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for (f, options) in filters {
            body.extend(string(f));
            body.push(*options);
        }
        packet(0x82, &body)
    }

    pub fn puback(&self, pkid: u16) -> Vec<u8> {
        packet(PUBACK, &pkid.to_be_bytes())
    }

    /// A normal DISCONNECT.
    pub fn disconnect(&self) -> Vec<u8> {
        packet(DISCONNECT, &[])
    }

    /// The PUBLISHes that arrive until nothing more comes for [`QUIET`]; QoS 1 ones
    /// are acknowledged when `ack` is set.
    pub async fn publishes_until_quiet(&mut self, ack: bool) -> Vec<Packet> {
        let mut got = Vec::new();
        while let Some(Some(p)) = self.next_within(QUIET).await {
            if p.kind() != PUBLISH {
                continue;
            }
            if ack && p.qos() == 1 {
                let ack = self.puback(p.publish(self.v5).pkid);
                self.send(&ack).await;
            }
            got.push(p);
        }
        got
    }

    pub fn unsubscribe(&self, pkid: u16, filters: &[&str]) -> Vec<u8> {
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
    pub async fn subscribed(&mut self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        let with: Vec<(&str, u8)> = filters.iter().map(|f| (*f, 0)).collect();
        self.subscribed_with(pkid, &with).await
    }

    /// Subscribes with options (see [`Wire::subscribe_with`]) and returns the SUBACK's codes.
    pub async fn subscribed_with(&mut self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let sub = self.subscribe_with(pkid, filters);
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
pub fn connack_property(connack: &Packet, id: u8) -> Option<u32> {
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

pub async fn mqtt_stats(d: &Daemon) -> Value {
    d.healthz().await["mqtt"].clone()
}

/// Waits for the healthz figure at `path` (under `mqtt`) to reach `want`.
pub async fn wait_stat(d: &Daemon, path: &[&str], want: u64) {
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
