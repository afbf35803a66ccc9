//! The lean client side: a raw `TcpStream`, a hand-written upgrade handshake and a
//! minimal frame parser.
//!
//! Every subscriber of the benchmark shares one core, so the client must cost far less
//! per frame than the server it measures: no HTTP library, no tungstenite, no JSON
//! parsing on the receive path. Server frames are unmasked and never fragmented by the
//! servers under test; client frames are masked as RFC 6455 requires.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;

/// Any fixed key will do: servers unmask whatever key they get.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Largest server frame accepted; the benchmark's frames are a few hundred bytes.
const MAX_FRAME: usize = 1 << 20;

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One frame from the server, borrowed from the connection's buffer.
pub enum Frame<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    /// The close payload: a status code and a reason, or nothing.
    Close(&'a [u8]),
    /// Binary, pong, continuation: nothing the benchmark acts on.
    Other,
}

pub fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The read side of a connection, with its buffer and frame parser.
pub struct Reader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// A client WebSocket connection, split so that one task can read while another
/// writes (the publisher), or one task can write a pong while holding a read frame.
pub struct Conn {
    pub rx: Reader,
    pub tx: OwnedWriteHalf,
}

impl Conn {
    /// Connects (from `bind`, when given, so many connections can use several loopback
    /// source addresses) and completes the upgrade to WebSocket on `/ws`.
    pub async fn connect(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        buffer: usize,
    ) -> io::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = bind {
            // Lets a port in TIME_WAIT from an earlier run be bound again.
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, tx) = stream.into_split();
        let mut conn = Conn {
            rx: Reader {
                rd,
                buf: vec![0; buffer.max(1024)],
                start: 0,
                end: 0,
            },
            tx,
        };
        conn.handshake(addr).await?;
        Ok(conn)
    }

    async fn handshake(&mut self, addr: SocketAddr) -> io::Result<()> {
        // The accept key is not checked: both servers are ours and on loopback.
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.tx.write_all(request.as_bytes()).await?;
        let rx = &mut self.rx;
        loop {
            if let Some(pos) = find(&rx.buf[..rx.end], b"\r\n\r\n") {
                let head = &rx.buf[..pos];
                if !head.starts_with(b"HTTP/1.1 101") {
                    return Err(invalid(format!(
                        "upgrade refused: {}",
                        String::from_utf8_lossy(head)
                    )));
                }
                // Whatever follows the head is already WebSocket frames.
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

    /// Waits for the next text frame and returns a copy; answers pings on the way.
    /// For setup steps, not the measured path.
    pub async fn next_text(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let mut pong = Vec::new();
            match self.rx.next_frame()? {
                Some(Frame::Text(t)) => return Ok(t.to_vec()),
                Some(Frame::Ping(p)) => encode_pong(p, &mut pong),
                Some(Frame::Close(c)) => {
                    return Err(invalid(format!("server closed: {}", close_reason(c))))
                }
                Some(Frame::Other) => {}
                None => {
                    if !self.rx.fill().await? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
            if !pong.is_empty() {
                self.tx.write_all(&pong).await?;
            }
        }
    }

    /// Waits for a text frame that starts with `prefix`, skipping others.
    pub async fn wait_for(&mut self, prefix: &[u8]) -> io::Result<()> {
        for _ in 0..16 {
            let text = self.next_text().await?;
            if text.starts_with(prefix) {
                return Ok(());
            }
            if text.starts_with(b"{\"op\":\"error\"") {
                return Err(invalid(String::from_utf8_lossy(&text)));
            }
        }
        Err(invalid(format!(
            "no frame starting with {}",
            String::from_utf8_lossy(prefix)
        )))
    }

    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 14);
        encode_text(text.as_bytes(), &mut out);
        self.tx.write_all(&out).await
    }

    /// Answers pings and ignores everything else until the server closes: what an
    /// idle subscriber does.
    pub async fn idle(&mut self) -> io::Result<()> {
        loop {
            let mut pong = Vec::new();
            while let Some(frame) = self.rx.next_frame()? {
                match frame {
                    Frame::Ping(p) => encode_pong(p, &mut pong),
                    Frame::Close(_) => return Ok(()),
                    Frame::Text(_) | Frame::Other => {}
                }
            }
            if !pong.is_empty() {
                self.tx.write_all(&pong).await?;
            }
            if !self.rx.fill().await? {
                return Ok(());
            }
        }
    }
}

impl Reader {
    /// Reads more bytes from the socket. Returns false at end of stream.
    pub async fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < self.buf.len() / 4 {
            if self.start > 0 {
                // Move the partial frame to the front so the next read is a big one.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // One frame larger than the buffer: grow once for it.
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        let n = self.rd.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next complete frame already buffered, if any.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        let b = &self.buf[self.start..self.end];
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
            .filter(|&l| l <= MAX_FRAME)
            .ok_or_else(|| invalid(format!("server frame of {len} bytes")))?;
        if b.len() < head + len {
            return Ok(None);
        }
        let opcode = b[0] & 0x0f;
        let payload = self.start + head..self.start + head + len;
        self.start += head + len;
        let payload = &self.buf[payload];
        Ok(Some(match opcode {
            OP_TEXT => Frame::Text(payload),
            OP_PING => Frame::Ping(payload),
            OP_CLOSE => Frame::Close(payload),
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

/// Position of `needle` in `hay`. The searches here are over a few dozen bytes.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The publish timestamp at the start of a frame's `data` string: the digits after
/// `"data":"`. Cheap on purpose: no JSON parsing on the receive path.
pub fn data_timestamp(payload: &[u8]) -> Option<u64> {
    let at = find(payload, b"\"data\":\"")? + 8;
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
