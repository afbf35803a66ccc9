//! Client-side WebSocket framing for the bench clients: the upgrade handshake, masked client frames, and the parser of server frames.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};

use crate::read_buf::{find, invalid, ReadBuf};

/// Any fixed key will do: servers unmask whatever key they get.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;
/// A text frame with RSV1 set: compressed (permessage-deflate). [`next_frame`] keeps
/// RSV1 in the opcode it returns, so a reader that did not ask for compression sees an
/// opcode it does not know.
pub const OP_TEXT_DEFLATED: u8 = 0x40 | OP_TEXT;

/// The upgrade header that offers permessage-deflate with a fresh context per message
/// both ways (what switchboard accepts).
pub const OFFER_DEFLATE: &str = "Sec-WebSocket-Extensions: permessage-deflate; \
     server_no_context_takeover; client_no_context_takeover\r\n";

/// Compressed payloads remembered with what they inflate to, per client thread.
const INFLATED_KEPT: usize = 4096;

thread_local! {
    /// One inflater per client thread, reset for every message.
    static INFLATER: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
    /// The bench's clients share one core and must cost far less per frame than the
    /// server: a server that compresses a publish once sends every subscriber the same
    /// bytes, so they are inflated once here too.
    static INFLATED: std::cell::RefCell<std::collections::HashMap<Vec<u8>, Vec<u8>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A compressed message's payload inflated into `out` (replacing what it held).
pub fn inflate(payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let known = INFLATED.with_borrow(|kept| {
        kept.get(payload).map(|plain| {
            out.clear();
            out.extend_from_slice(plain);
        })
    });
    if known.is_some() {
        return Ok(());
    }
    inflate_anew(payload, out)?;
    INFLATED.with_borrow_mut(|kept| {
        if kept.len() >= INFLATED_KEPT {
            kept.clear();
        }
        kept.insert(payload.to_vec(), out.clone());
    });
    Ok(())
}

fn inflate_anew(payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    INFLATER.with_borrow_mut(|inflater| {
        inflater.reset(false);
        out.clear();
        out.reserve(payload.len() * 4 + 64);
        for chunk in [payload, &[0, 0, 0xff, 0xff][..]] {
            let mut at = 0;
            loop {
                let before = inflater.total_in();
                inflater
                    .decompress_vec(&chunk[at..], out, flate2::FlushDecompress::Sync)
                    .map_err(|e| invalid(format!("compressed frame: {e}")))?;
                at += (inflater.total_in() - before) as usize;
                if at == chunk.len() && out.len() < out.capacity() {
                    break;
                }
                out.reserve(out.capacity());
            }
        }
        Ok(())
    })
}

/// A TCP connection with Nagle off, from source address `bind` when given: many
/// connections spread over 127.0.0.x get past one address's ephemeral ports.
pub async fn connect_tcp(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = bind {
        // Lets a port in TIME_WAIT from an earlier run be bound again.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends the upgrade request for `path` (asking for `protocol` if given, with the
/// header lines `extra`) and reads the response head; whatever follows it in `rx` is
/// already WebSocket frames.
pub async fn upgrade(
    tx: &mut OwnedWriteHalf,
    rx: &mut ReadBuf,
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
    extra: &str,
) -> io::Result<()> {
    let proto = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default()
        + extra;
    // The accept key is not checked: the servers are on loopback.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    );
    tx.write_all(request.as_bytes()).await?;
    loop {
        if let Some(pos) = find(&rx.buf[..rx.end], b"\r\n\r\n") {
            let head = &rx.buf[..pos];
            if !head.starts_with(b"HTTP/1.1 101") {
                return Err(invalid(format!(
                    "upgrade refused: {}",
                    String::from_utf8_lossy(head)
                )));
            }
            rx.start = pos + 4;
            return Ok(());
        }
        if rx.end == rx.buf.len() {
            return Err(invalid("upgrade response head too large"));
        }
        let n = rx.rd.read(&mut rx.buf[rx.end..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        rx.end += n;
    }
}

/// The next complete server frame already buffered in `rx`, if any, as its opcode
/// and payload; consumed from `rx`. Server frames must be unmasked and at most `max`
/// bytes.
pub fn next_frame(rx: &mut ReadBuf, max: usize) -> io::Result<Option<(u8, &[u8])>> {
    let b = rx.pending();
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err(invalid("server sent a masked frame"));
    }
    let (len, head) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= max)
        .ok_or_else(|| invalid(format!("server frame of {len} bytes")))?;
    if b.len() < head + len {
        return Ok(None);
    }
    // RSV1 kept: see OP_TEXT_DEFLATED.
    let opcode = b[0] & 0x4f;
    let payload = rx.start + head..rx.start + head + len;
    rx.start += head + len;
    Ok(Some((opcode, &rx.buf[payload])))
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

pub fn encode_text(payload: &[u8], out: &mut Vec<u8>) {
    encode(OP_TEXT, payload, out);
}

pub fn encode_pong(payload: &[u8], out: &mut Vec<u8>) {
    encode(OP_PONG, payload, out);
}

/// A close payload for a message: `1000 normal` or `no status`.
pub fn close_reason(payload: &[u8]) -> String {
    match payload {
        [a, b, reason @ ..] => format!(
            "{} {}",
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason)
        ),
        _ => "no status".into(),
    }
}
