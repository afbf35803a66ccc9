//! The client side on raw sockets: a minimal MQTT 3.1.1 codec (CONNECT/CONNACK,
//! PUBLISH QoS 0, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP) and a minimal WebSocket client
//! (upgrade handshake with an optional subprotocol, frame parser, masked frames).
//!
//! Up to 1,000 subscribers share the bench's one core, so the receive path does no
//! JSON parsing and no allocation per message: it finds `"t":` and `"n":` in the bytes.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer after `key` (e.g. `"t":`) in a payload.
pub fn number_after(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(payload, key)? + key.len();
    let mut value = None;
    for &c in payload[at..].iter().take_while(|c| c.is_ascii_digit()) {
        value = Some(
            value
                .unwrap_or(0u64)
                .checked_mul(10)?
                .checked_add(u64::from(c - b'0'))?,
        );
    }
    value
}

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
    out.push(PUBLISH);
    remaining_length(2 + topic.len() + payload.len(), out);
    string(topic, out);
    out.extend_from_slice(payload);
}

/// SUBSCRIBE to one filter at QoS 0.
pub fn subscribe(packet_id: u16, filter: &str, out: &mut Vec<u8>) {
    out.push(0x82);
    remaining_length(2 + 2 + filter.len() + 1, out);
    out.extend_from_slice(&packet_id.to_be_bytes());
    string(filter.as_bytes(), out);
    out.push(0);
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

/// The payload of a PUBLISH body (QoS 0: no packet id).
pub fn publish_payload(first: u8, body: &[u8]) -> Option<&[u8]> {
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic_len;
    if first & 0x06 != 0 {
        at += 2;
    }
    body.get(at..)
}

/// An MQTT connection over TCP with its read buffer.
pub struct MqttTcp {
    pub rd: OwnedReadHalf,
    pub tx: OwnedWriteHalf,
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

impl MqttTcp {
    /// Connects, sends CONNECT, waits for CONNACK, and checks PINGREQ/PINGRESP.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> io::Result<MqttTcp> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, tx) = stream.into_split();
        let mut c = MqttTcp {
            rd,
            tx,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        };
        let mut out = Vec::new();
        connect(client_id, &mut out);
        pingreq(&mut out);
        c.tx.write_all(&out).await?;
        c.expect(CONNACK).await?;
        c.expect(PINGRESP).await?;
        Ok(c)
    }

    pub async fn subscribe(&mut self, filter: &str) -> io::Result<()> {
        let mut out = Vec::new();
        subscribe(1, filter, &mut out);
        self.tx.write_all(&out).await?;
        self.expect(SUBACK).await
    }

    async fn expect(&mut self, kind: u8) -> io::Result<()> {
        loop {
            if let Some((first, body)) = next_packet(&self.buf[self.start..self.end])? {
                let b = &self.buf[self.start + body.start..self.start + body.end];
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
                self.start += body.end;
                return Ok(());
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn fill(&mut self) -> io::Result<bool> {
        fill(&mut self.rd, &mut self.buf, &mut self.start, &mut self.end).await
    }
}

/// Reads more bytes into `buf[end..]`, compacting or growing it first if needed.
async fn fill(
    rd: &mut OwnedReadHalf,
    buf: &mut Vec<u8>,
    start: &mut usize,
    end: &mut usize,
) -> io::Result<bool> {
    if *start == *end {
        *start = 0;
        *end = 0;
    } else if buf.len() - *end < buf.len() / 4 {
        if *start > 0 {
            buf.copy_within(*start..*end, 0);
            *end -= *start;
            *start = 0;
        } else {
            let len = buf.len();
            buf.resize(len * 2, 0);
        }
    }
    let n = rd.read(&mut buf[*end..]).await?;
    *end += n;
    Ok(n > 0)
}

// ---------------------------------------------------------------- WebSocket

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

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
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Ws {
    /// Connects and upgrades on `path`, asking for `protocol` if given.
    pub async fn connect(addr: SocketAddr, path: &str, protocol: Option<&str>) -> io::Result<Ws> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, tx) = stream.into_split();
        let mut ws = Ws {
            r: WsRead {
                rd,
                buf: vec![0; 16 * 1024],
                start: 0,
                end: 0,
            },
            tx,
        };
        let proto = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
        );
        ws.tx.write_all(request.as_bytes()).await?;
        let r = &mut ws.r;
        loop {
            if let Some(pos) = find(&r.buf[..r.end], b"\r\n\r\n") {
                let head = &r.buf[..pos];
                if !head.starts_with(b"HTTP/1.1 101") {
                    return Err(invalid(format!(
                        "upgrade refused: {}",
                        String::from_utf8_lossy(head)
                    )));
                }
                r.start = pos + 4;
                return Ok(ws);
            }
            if r.end == r.buf.len() {
                return Err(invalid("upgrade response head too large"));
            }
            let n = r.rd.read(&mut r.buf[r.end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            r.end += n;
        }
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
        fill(&mut self.rd, &mut self.buf, &mut self.start, &mut self.end).await
    }

    /// The next complete frame already buffered, if any.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(None);
        }
        let (len, head) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (usize::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                let n = u64::from_be_bytes(n);
                if n > 1 << 24 {
                    return Err(invalid(format!("server frame of {n} bytes")));
                }
                (n as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        if b.len() < head + len {
            return Ok(None);
        }
        let opcode = b[0] & 0x0f;
        let range = self.start + head..self.start + head + len;
        self.start += head + len;
        let p = &self.buf[range];
        Ok(Some(match opcode {
            OP_TEXT => Frame::Text(p),
            // A continuation frame of a binary message carries MQTT stream bytes too.
            OP_BINARY | 0x0 => Frame::Binary(p),
            OP_PING => Frame::Ping(p),
            OP_CLOSE => Frame::Close,
            _ => Frame::Other,
        }))
    }
}

/// Appends one masked client frame.
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
}

pub fn encode_pong(payload: &[u8], out: &mut Vec<u8>) {
    encode(OP_PONG, payload, out);
}
