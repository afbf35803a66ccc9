//! The lean client side: a raw `TcpStream`, a hand-written upgrade handshake and a
//! minimal frame parser.
//!
//! Every subscriber of the benchmark shares one core, so the client must cost far less
//! per frame than the server it measures: no HTTP library, no tungstenite, no JSON
//! parsing on the receive path. Server frames are unmasked and never fragmented by the
//! servers under test; client frames are masked as RFC 6455 requires. A connection that
//! offered permessage-deflate reads compressed frames as the text they hold.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use crate::read_buf::{invalid, number_after, ReadBuf};
use crate::ws_frame::{
    self, close_reason, encode_pong, encode_text, OP_CLOSE, OP_PING, OP_TEXT, OP_TEXT_DEFLATED,
};

/// Largest server frame accepted; the benchmark's frames are a few hundred bytes.
const MAX_FRAME: usize = 1 << 20;

/// One frame from the server, borrowed from the connection's buffer.
pub enum Frame<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    /// The close payload: a status code and a reason, or nothing.
    Close(&'a [u8]),
    /// Binary, pong, continuation: nothing the benchmark acts on.
    Other,
}

/// The read side of a connection, with its buffer and frame parser.
pub struct Reader {
    buf: ReadBuf,
    /// The last compressed text frame, inflated (empty unless compression was offered).
    inflated: Vec<u8>,
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
        Conn::connect_to(addr, bind, buffer, "/ws").await
    }

    /// [`Conn::connect`] offering permessage-deflate: compressed text frames are read
    /// as the text they hold.
    pub async fn connect_deflate(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        buffer: usize,
    ) -> io::Result<Conn> {
        Conn::open(addr, bind, buffer, "/ws", ws_frame::OFFER_DEFLATE).await
    }

    /// [`Conn::connect`] with the request target spelled out: `/ws?token=…` presents a
    /// credential the way a browser does.
    pub async fn connect_to(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        buffer: usize,
        path: &str,
    ) -> io::Result<Conn> {
        Conn::open(addr, bind, buffer, path, "").await
    }

    async fn open(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        buffer: usize,
        path: &str,
        extra: &str,
    ) -> io::Result<Conn> {
        let stream = ws_frame::connect_tcp(addr, bind).await?;
        let (rd, tx) = stream.into_split();
        let mut conn = Conn {
            rx: Reader {
                buf: ReadBuf::new(rd, buffer.max(1024)),
                inflated: Vec::new(),
            },
            tx,
        };
        ws_frame::upgrade(&mut conn.tx, &mut conn.rx.buf, addr, path, None, extra).await?;
        Ok(conn)
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
        self.buf.fill().await
    }

    /// The next complete frame already buffered, if any.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        let Some((opcode, payload)) = ws_frame::next_frame(&mut self.buf, MAX_FRAME)? else {
            return Ok(None);
        };
        Ok(Some(match opcode {
            OP_TEXT => Frame::Text(payload),
            OP_TEXT_DEFLATED => {
                ws_frame::inflate(payload, &mut self.inflated)?;
                Frame::Text(&self.inflated)
            }
            OP_PING => Frame::Ping(payload),
            OP_CLOSE => Frame::Close(payload),
            _ => Frame::Other,
        }))
    }
}

/// The publish timestamp at the start of a frame's `data` string: the digits after
/// `"data":"`. Cheap on purpose: no JSON parsing on the receive path.
pub fn data_timestamp(payload: &[u8]) -> Option<u64> {
    number_after(payload, b"\"data\":\"")
}
