//! The client side on raw sockets: a minimal MQTT 3.1.1 codec (CONNECT/CONNACK,
//! PUBLISH QoS 0 and 1, PUBACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP) and a minimal WebSocket client
//! (upgrade handshake with an optional subprotocol, frame parser, masked frames).
//!
//! Up to 1,000 subscribers share the bench's one core, so the receive path does no
//! JSON parsing and no allocation per message: it finds `"t":` and `"n":` in the bytes.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::read_buf::{invalid, ReadBuf};
use crate::ws_frame::{
    self, encode, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};

/// The bench's payload: `{"t":<ns>,"n":<seq>,"p":"…"}`, padded to `PAYLOAD_BYTES`.
pub const PAYLOAD_BYTES: usize = 64;

pub fn payload(t: u64, n: u64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let start = out.len();
    let _ = write!(out, "{{\"t\":{t},\"n\":{n},\"p\":\"");
    while out.len() - start < PAYLOAD_BYTES - 2 {
        out.push(b'x');
    }
    out.extend_from_slice(b"\"}");
}

// ---------------------------------------------------------------- MQTT 3.1.1

pub const PUBLISH: u8 = 0x30;
pub const PUBACK: u8 = 0x40;
const CONNACK: u8 = 0x20;
const SUBACK: u8 = 0x90;
const PINGRESP: u8 = 0xd0;

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT, clean session, no credentials; keep-alive 0 (off), so no PINGREQ is due.
pub fn connect(client_id: &str, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&0u16.to_be_bytes());
    string(client_id.as_bytes(), &mut body);
    out.push(0x10);
    remaining_length(body.len(), out);
    out.extend_from_slice(&body);
}

/// PUBLISH QoS 0, no retain.
pub fn publish(topic: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    publish_with(topic, payload, None, out);
}

/// PUBLISH, no retain: QoS 1 with `packet_id` when given, else QoS 0.
pub fn publish_with(topic: &[u8], payload: &[u8], packet_id: Option<u16>, out: &mut Vec<u8>) {
    let id_len = if packet_id.is_some() { 2 } else { 0 };
    out.push(if packet_id.is_some() {
        PUBLISH | 0x02
    } else {
        PUBLISH
    });
    remaining_length(2 + topic.len() + id_len + payload.len(), out);
    string(topic, out);
    if let Some(id) = packet_id {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub fn puback(packet_id: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[PUBACK, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// SUBSCRIBE to one filter at `qos` (0 or 1).
pub fn subscribe(packet_id: u16, filter: &str, qos: u8, out: &mut Vec<u8>) {
    out.push(0x82);
    remaining_length(2 + 2 + filter.len() + 1, out);
    out.extend_from_slice(&packet_id.to_be_bytes());
    string(filter.as_bytes(), out);
    out.push(qos);
}

pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xc0, 0]);
}

/// The next complete packet at the start of `buf`: (first byte, body range, length).
pub fn next_packet(buf: &[u8]) -> io::Result<Option<(u8, std::ops::Range<usize>)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(invalid("bad MQTT remaining length"));
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some((buf[0], i..i + len)))
}

/// The payload of a PUBLISH body (after the packet id at QoS 1 and 2).
pub fn publish_payload(first: u8, body: &[u8]) -> Option<&[u8]> {
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic_len;
    if first & 0x06 != 0 {
        at += 2;
    }
    body.get(at..)
}

/// The packet id of a PUBLISH body at QoS 1 or 2, which the receiver acknowledges.
pub fn publish_packet_id(first: u8, body: &[u8]) -> Option<u16> {
    if first & 0x06 == 0 {
        return None;
    }
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let id = body.get(2 + topic_len..4 + topic_len)?;
    Some(u16::from_be_bytes([id[0], id[1]]))
}

/// An MQTT connection over TCP with its read buffer.
pub struct MqttTcp {
    pub r: ReadBuf,
    pub tx: OwnedWriteHalf,
}

impl MqttTcp {
    /// Connects, sends CONNECT, waits for CONNACK, and checks PINGREQ/PINGRESP.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> io::Result<MqttTcp> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, tx) = stream.into_split();
        let mut c = MqttTcp {
            r: ReadBuf::new(rd, 64 * 1024),
            tx,
        };
        let mut out = Vec::new();
        connect(client_id, &mut out);
        pingreq(&mut out);
        c.tx.write_all(&out).await?;
        c.expect(CONNACK).await?;
        c.expect(PINGRESP).await?;
        Ok(c)
    }

    /// Subscribes at `qos`; a broker granting less is an error, so a QoS 1 run cannot
    /// silently measure QoS 0.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> io::Result<()> {
        let mut out = Vec::new();
        subscribe(1, filter, qos, &mut out);
        self.tx.write_all(&out).await?;
        match self.expect(SUBACK).await? {
            Some(g) if g == qos => Ok(()),
            g => Err(invalid(format!(
                "SUBACK granted {g:?}, asked for QoS {qos}"
            ))),
        }
    }

    /// Waits for a packet of `kind`; returns its body's third byte (SUBACK's return code).
    async fn expect(&mut self, kind: u8) -> io::Result<Option<u8>> {
        loop {
            if let Some((first, body)) = next_packet(self.r.pending())? {
                let b = &self.r.buf[self.r.start + body.start..self.r.start + body.end];
                if first & 0xf0 != kind {
                    return Err(invalid(format!(
                        "expected MQTT packet {kind:#x}, got {first:#x}"
                    )));
                }
                if kind == CONNACK && b.get(1) != Some(&0) {
                    return Err(invalid(format!("CONNACK refused: {b:?}")));
                }
                if kind == SUBACK && b.get(2).is_some_and(|&rc| rc & 0x80 != 0) {
                    return Err(invalid("SUBACK refused"));
                }
                let code = b.get(2).copied();
                self.r.start += body.end;
                return Ok(code);
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn fill(&mut self) -> io::Result<bool> {
        self.r.fill().await
    }
}

// ---------------------------------------------------------------- WebSocket

/// Largest server frame accepted.
const MAX_FRAME: usize = 1 << 24;

pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Close,
    Other,
}

/// A client WebSocket connection: its read side and its write half.
pub struct Ws {
    pub r: WsRead,
    pub tx: OwnedWriteHalf,
}

/// The read side of a WebSocket connection, with its buffer and frame parser.
pub struct WsRead {
    buf: ReadBuf,
    /// The last compressed text frame, inflated.
    inflated: Vec<u8>,
}

impl Ws {
    /// Connects and upgrades on `path`, asking for `protocol` if given.
    pub async fn connect(addr: SocketAddr, path: &str, protocol: Option<&str>) -> io::Result<Ws> {
        Ws::connect_from(addr, None, 16 * 1024, path, protocol).await
    }

    /// [`Ws::connect`] from source address `bind` when given, with a read buffer of
    /// `buffer` bytes to start with (it grows for larger frames).
    pub async fn connect_from(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        buffer: usize,
        path: &str,
        protocol: Option<&str>,
    ) -> io::Result<Ws> {
        Ws::connect_with(addr, bind, buffer, path, protocol, "").await
    }

    /// [`Ws::connect_from`] with the upgrade header lines `extra`
    /// ([`ws_frame::OFFER_DEFLATE`]: compressed text frames are read as their text).
    pub async fn connect_with(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        buffer: usize,
        path: &str,
        protocol: Option<&str>,
        extra: &str,
    ) -> io::Result<Ws> {
        let stream = ws_frame::connect_tcp(addr, bind).await?;
        let (rd, tx) = stream.into_split();
        let mut ws = Ws {
            r: WsRead {
                buf: ReadBuf::new(rd, buffer),
                inflated: Vec::new(),
            },
            tx,
        };
        ws_frame::upgrade(&mut ws.tx, &mut ws.r.buf, addr, path, protocol, extra).await?;
        Ok(ws)
    }

    pub async fn fill(&mut self) -> io::Result<bool> {
        self.r.fill().await
    }

    pub fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        self.r.next_frame()
    }

    /// Waits for the next text or binary frame and returns a copy (setup only).
    pub async fn next_data(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let mut pong = Vec::new();
            match self.next_frame()? {
                Some(Frame::Text(t) | Frame::Binary(t)) => return Ok(t.to_vec()),
                Some(Frame::Ping(p)) => encode(OP_PONG, p, &mut pong),
                Some(Frame::Close) => return Err(invalid("server closed")),
                Some(Frame::Other) => {}
                None => {
                    if !self.fill().await? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
            if !pong.is_empty() {
                self.tx.write_all(&pong).await?;
            }
        }
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        encode(opcode, payload, &mut out);
        self.tx.write_all(&out).await
    }
}

impl WsRead {
    pub async fn fill(&mut self) -> io::Result<bool> {
        self.buf.fill().await
    }

    /// The next complete frame already buffered, if any.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        let Some((opcode, p)) = ws_frame::next_frame(&mut self.buf, MAX_FRAME)? else {
            return Ok(None);
        };
        Ok(Some(match opcode {
            OP_TEXT => Frame::Text(p),
            ws_frame::OP_TEXT_DEFLATED => {
                ws_frame::inflate(p, &mut self.inflated)?;
                Frame::Text(&self.inflated)
            }
            // A continuation frame of a binary message carries MQTT stream bytes too.
            OP_BINARY | OP_CONTINUATION => Frame::Binary(p),
            OP_PING => Frame::Ping(p),
            OP_CLOSE => Frame::Close,
            _ => Frame::Other,
        }))
    }
}
