//! permessage-deflate (RFC 7692) on top of tungstenite, which has none.
//!
//! tungstenite sends a frame built by hand (`Message::Frame`, RSV1 set, payload already
//! compressed) as it is, but fails every frame with RSV1 set that it reads. So the two
//! directions are done apart:
//! - out: [`compress`] turns a message's payload into the bytes of a compressed message
//!   and [`compressed_text`] frames them. Because both ends negotiate
//!   `server_no_context_takeover`, those bytes depend on the message alone: the daemon
//!   compresses a publish once and sends the same bytes to every subscriber.
//! - in: [`Inflating`] sits between the socket and tungstenite and rewrites each
//!   compressed data frame into the plain frame it stands for, before tungstenite parses
//!   it. It counts the inflated size against the message limit as it goes, so a deflate
//!   bomb ends in [`DeflateError::TooBig`] having allocated no more than the limit.
//!
//! Both directions also negotiate `client_no_context_takeover`: nothing is kept between
//! messages, so an idle connection with compression holds no zlib state at all (with
//! context takeover zlib holds ~290 KiB per connection for its lifetime).

use std::cell::RefCell;
use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// What a client offers: per-message contexts both ways (see the module doc).
pub const CLIENT_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The bytes RFC 7692 §7.2.1 strips from the end of every compressed message (an empty
/// stored block left by a sync flush), and the receiver puts back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Why a compressed frame from the peer ended the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeflateError {
    /// Close 1009: the message inflates past the size limit.
    #[error("compressed message inflates past {max} bytes")]
    TooBig { max: usize },
    /// Close 1002: not a valid compressed message.
    #[error("invalid compressed frame: {0}")]
    Invalid(&'static str),
}

impl DeflateError {
    /// The deflate error a read failed with, if that is why it failed.
    pub fn of(e: &tungstenite::Error) -> Option<&DeflateError> {
        match e {
            tungstenite::Error::Io(io) => io.get_ref()?.downcast_ref(),
            _ => None,
        }
    }
}

/// The server's answer to a client's `Sec-WebSocket-Extensions` header values: the
/// response for the first permessage-deflate offer it can keep, or `None` to decline.
///
/// The server compresses with a 32 KiB window only (miniz_oxide has no other), so an
/// offer that limits `server_max_window_bits` below 15 is declined. Any
/// `client_max_window_bits` is fine: inflating with the full window reads smaller ones.
pub fn accept_offer<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<String> {
    headers
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(accept_one)
}

fn accept_one(offer: &str) -> Option<String> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut response =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    let mut seen = Vec::new();
    for (name, value) in parts.map(param) {
        if seen.contains(&name) {
            return None; // RFC 7692 §7.1: a repeated parameter makes the offer invalid
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) if window_bits(bits).is_some() => {}
            ("server_max_window_bits", Some(bits)) if window_bits(bits) == Some(15) => {
                response.push_str("; server_max_window_bits=15");
            }
            _ => return None,
        }
    }
    Some(response)
}

/// Whether the server's `Sec-WebSocket-Extensions` answer to [`CLIENT_OFFER`] turns
/// compression on. `Err` when it names terms the offer did not allow (the client must
/// then fail the connection, RFC 7692 §5).
pub fn client_accepts(response: Option<&str>) -> Result<bool, &'static str> {
    let Some(response) = response else {
        return Ok(false);
    };
    let mut parts = response.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case(EXTENSION))
        || response.contains(',')
    {
        return Err("the server answered with an extension that was not offered");
    }
    let mut server_resets = false;
    for (name, value) in parts.map(param) {
        match (name, value) {
            ("server_no_context_takeover", None) => server_resets = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(bits)) if window_bits(bits).is_some() => {}
            _ => return Err("the server answered permessage-deflate with terms not offered"),
        }
    }
    if server_resets {
        Ok(true)
    } else {
        Err("the server answered permessage-deflate without server_no_context_takeover")
    }
}

/// `name` or `name=value` (the value possibly quoted, RFC 7692 §7.1).
fn param(part: &str) -> (&str, Option<&str>) {
    match part.split_once('=') {
        Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
        None => (part, None),
    }
}

fn window_bits(value: &str) -> Option<u8> {
    let bits: u8 = value.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

thread_local! {
    /// A compressor per thread, reset for every message. Its state is ~300 KiB; one per
    /// runtime thread instead of one per connection is what keeps compression from
    /// costing memory per connection.
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// `payload` compressed as one permessage-deflate message (raw deflate, sync-flushed,
/// the final `00 00 ff ff` removed), or `None` when that would not be smaller: the
/// message then goes out uncompressed, which the extension allows per message.
/// `level` is zlib's 0–9.
pub fn compress(payload: &[u8], level: u32) -> Option<Bytes> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((at, compressor)) if *at == level => compressor,
            _ => {
                &mut slot
                    .insert((level, Compress::new(Compression::new(level), false)))
                    .1
            }
        };
        compressor.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let consumed = compressor.total_in() as usize;
            compressor
                .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .ok()?;
            let done = compressor.total_in() as usize == payload.len();
            if done && out.len() < out.capacity() {
                break;
            }
            if out.len() > payload.len() + TAIL.len() {
                return None;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        (out.len() < payload.len()).then(|| Bytes::from(out))
    })
}

/// The frame that carries a text message compressed by [`compress`].
pub fn compressed_text(compressed: Bytes) -> Frame {
    let header = FrameHeader {
        is_final: true,
        rsv1: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    Frame::from_payload(header, compressed)
}

/// A socket whose compressed frames are inflated before tungstenite reads them; writes
/// pass through. Without the extension ([`Inflating::plain`]) reads pass through too.
pub struct Inflating<S> {
    inner: S,
    rewriter: Option<Box<Rewriter>>,
}

impl<S> Inflating<S> {
    /// A socket on which the extension was not negotiated: RSV1 reaches tungstenite,
    /// which refuses it (close 1002).
    pub fn plain(inner: S) -> Self {
        Self {
            inner,
            rewriter: None,
        }
    }

    /// A socket on which the extension was negotiated; `max_message` bounds a message
    /// once inflated.
    pub fn new(inner: S, max_message: usize) -> Self {
        Self {
            inner,
            rewriter: Some(Box::new(Rewriter::new(max_message))),
        }
    }

    /// A client's socket before its opening handshake, which offered [`CLIENT_OFFER`]:
    /// the server's HTTP response passes through, and frames after it are inflated if
    /// that response accepted the offer. (tungstenite may read the first frames together
    /// with the response, so the choice cannot wait until the handshake returns.)
    pub fn client(inner: S, max_message: usize) -> Self {
        let mut rewriter = Rewriter::new(max_message);
        rewriter.handshake = Some(Vec::new());
        Self {
            inner,
            rewriter: Some(Box::new(rewriter)),
        }
    }

    /// Whether the extension is in use: negotiated (a client: its offer accepted by
    /// the response already read).
    pub fn is_compressed(&self) -> bool {
        self.rewriter
            .as_deref()
            .is_some_and(|r| r.inflate && r.handshake.is_none())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(rewriter) = this.rewriter.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if rewriter.give(buf) {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &rewriter.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())));
            }
            if let Err(e) = rewriter.rewrite() {
                rewriter.failed = Some(e);
                continue;
            }
            if rewriter.has_output() {
                continue;
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Read into the reader's own buffer and take the bytes from there: no buffer
            // of ours is held while waiting, so an idle connection costs nothing here.
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    if buf.filled().len() == before {
                        return Poll::Ready(Ok(())); // end of stream
                    }
                    rewriter.input.extend_from_slice(&buf.filled()[before..]);
                    buf.set_filled(before);
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the data message being received stands.
enum InMessage {
    Idle,
    /// A fragmented uncompressed message: its continuations pass through.
    Plain,
    /// A fragmented compressed message: its context and the bytes inflated so far.
    Compressed(Box<Decompress>, usize),
}

/// The byte-stream rewriting behind [`Inflating`], free of I/O.
struct Rewriter {
    max_message: usize,
    /// Bytes read from the socket and not rewritten yet.
    input: Vec<u8>,
    /// Rewritten bytes, of which `given` went to the reader.
    output: Vec<u8>,
    given: usize,
    /// Payload bytes of an uncompressed frame still to pass through untouched.
    through: u64,
    message: InMessage,
    failed: Option<DeflateError>,
    /// A client's handshake response, while it is still passing through.
    handshake: Option<Vec<u8>>,
    /// Whether RSV1 means compressed; unset, RSV1 frames reach tungstenite, which
    /// refuses them.
    inflate: bool,
}

impl Rewriter {
    fn new(max_message: usize) -> Self {
        Self {
            max_message,
            input: Vec::new(),
            output: Vec::new(),
            given: 0,
            through: 0,
            message: InMessage::Idle,
            failed: None,
            handshake: None,
            inflate: true,
        }
    }

    fn has_output(&self) -> bool {
        self.given < self.output.len()
    }

    /// Copies rewritten bytes to the reader; false if there were none. Drained buffers
    /// are freed, so an idle connection holds none.
    fn give(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if !self.has_output() {
            return false;
        }
        let n = buf.remaining().min(self.output.len() - self.given);
        buf.put_slice(&self.output[self.given..self.given + n]);
        self.given += n;
        if self.given == self.output.len() {
            self.output = Vec::new();
            self.given = 0;
        }
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        true
    }

    /// Rewrites what the input holds: uncompressed frames as they are, each compressed
    /// frame (once all of it is here) as the plain frame it stands for.
    fn rewrite(&mut self) -> Result<(), DeflateError> {
        if let Some(head) = self.handshake.as_mut() {
            let before = head.len();
            head.extend_from_slice(&self.input);
            let from = before.saturating_sub(3);
            let Some(at) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > MAX_RESPONSE_HEAD {
                    return Err(DeflateError::Invalid("handshake response too long"));
                }
                self.output.append(&mut self.input);
                return Ok(());
            };
            let end = from + at + 4;
            head.truncate(end);
            self.inflate = response_accepts(head);
            self.output.extend(self.input.drain(..end - before));
            self.handshake = None;
        }
        loop {
            if self.through > 0 {
                let n = (self.input.len() as u64).min(self.through) as usize;
                self.output.extend(self.input.drain(..n));
                self.through -= n as u64;
                if self.through > 0 {
                    return Ok(());
                }
            }
            let mut cursor = Cursor::new(&self.input[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor)
                .map_err(|_| DeflateError::Invalid("malformed frame header"))?
            else {
                return Ok(());
            };
            let header_len = cursor.position() as usize;
            let compressed = match header.opcode {
                // RSV1 on a control frame is tungstenite's to refuse.
                OpCode::Control(_) => false,
                OpCode::Data(Data::Continue) if header.rsv1 => {
                    return Err(DeflateError::Invalid("RSV1 set on a continuation frame"))
                }
                OpCode::Data(Data::Continue) => {
                    matches!(self.message, InMessage::Compressed(..))
                }
                // A new message inside another is tungstenite's to refuse.
                OpCode::Data(_) => {
                    self.inflate && header.rsv1 && matches!(self.message, InMessage::Idle)
                }
            };
            if !compressed {
                if let OpCode::Data(data) = header.opcode {
                    self.message = match (data, header.is_final) {
                        (_, true) => InMessage::Idle,
                        (Data::Continue, false) => {
                            std::mem::replace(&mut self.message, InMessage::Idle)
                        }
                        (_, false) => InMessage::Plain,
                    };
                }
                self.output.extend(self.input.drain(..header_len));
                self.through = len;
                continue;
            }
            let inflated_so_far = match &self.message {
                InMessage::Compressed(_, size) => *size,
                _ => 0,
            };
            if len > (self.max_message - inflated_so_far) as u64 {
                return Err(DeflateError::TooBig {
                    max: self.max_message,
                });
            }
            let len = len as usize;
            if self.input.len() < header_len + len {
                return Ok(()); // the rest of the frame is still on its way
            }
            let mut payload: Vec<u8> = self
                .input
                .drain(..header_len + len)
                .skip(header_len)
                .collect();
            if let Some(mask) = header.mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i & 3];
                }
            }
            let (mut inflater, size) = match std::mem::replace(&mut self.message, InMessage::Idle) {
                InMessage::Compressed(inflater, size) => (inflater, size),
                _ => (Box::new(Decompress::new(false)), 0),
            };
            let room = self.max_message - size;
            let plain =
                inflate(&mut inflater, &payload, header.is_final, room).map_err(|e| match e {
                    Overflow::TooBig => DeflateError::TooBig {
                        max: self.max_message,
                    },
                    Overflow::Invalid => DeflateError::Invalid("not a valid deflate stream"),
                })?;
            if !header.is_final {
                self.message = InMessage::Compressed(inflater, size + plain.len());
            }
            let rewritten = FrameHeader {
                rsv1: false,
                // Still masked (tungstenite checks), with a key that leaves bytes as they are.
                mask: header.mask.map(|_| [0; 4]),
                ..header
            };
            let mut head = Vec::with_capacity(14);
            rewritten
                .format(plain.len() as u64, &mut head)
                .map_err(|_| DeflateError::Invalid("frame header"))?;
            self.output.extend_from_slice(&head);
            self.output.extend_from_slice(&plain);
            return Ok(());
        }
    }
}

/// Longest handshake response a client reads before its frames.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Whether an HTTP response head accepts [`CLIENT_OFFER`].
fn response_accepts(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                && client_accepts(Some(value.trim())) == Ok(true)
        })
    })
}

enum Overflow {
    TooBig,
    Invalid,
}

/// Inflates one frame's payload (with the stripped tail put back on the last frame of a
/// message), producing at most `room + 1` bytes: a bomb is stopped at the limit.
fn inflate(
    inflater: &mut Decompress,
    payload: &[u8],
    last: bool,
    room: usize,
) -> Result<Vec<u8>, Overflow> {
    let mut out = Vec::new();
    let tail: &[u8] = if last { &TAIL } else { &[] };
    for chunk in [payload, tail] {
        let mut at = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > room {
                    return Err(Overflow::TooBig);
                }
                out.reserve_exact((room + 1 - out.len()).clamp(1, 16 * 1024));
            }
            let (read, wrote) = (inflater.total_in(), out.len());
            let status = inflater
                .decompress_vec(&chunk[at..], &mut out, FlushDecompress::Sync)
                .map_err(|_| Overflow::Invalid)?;
            at += (inflater.total_in() - read) as usize;
            if out.len() > room {
                return Err(Overflow::TooBig);
            }
            let stuck = inflater.total_in() == read && out.len() == wrote;
            if status == Status::StreamEnd
                || (at == chunk.len() && out.len() < out.capacity())
                || (stuck && out.len() < out.capacity())
            {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers() {
        let full = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(
            accept_offer(["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(full)
        );
        assert_eq!(
            accept_offer(["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=\"15\""])
                .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15")
        );
        // A window the compressor cannot keep to, then one it can.
        assert_eq!(
            accept_offer(["permessage-deflate; server_max_window_bits=10, permessage-deflate"])
                .as_deref(),
            Some(full)
        );
        assert_eq!(
            accept_offer(["permessage-deflate; server_max_window_bits=10"]),
            None
        );
        assert_eq!(accept_offer(["permessage-deflate; foo"]), None);
        assert_eq!(
            accept_offer([
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
            ]),
            None
        );
        assert_eq!(accept_offer([]), None);
        assert_eq!(client_accepts(Some(full)), Ok(true));
        assert_eq!(client_accepts(None), Ok(false));
        assert!(client_accepts(Some("permessage-deflate")).is_err());
        assert!(client_accepts(Some(
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=9"
        ))
        .is_err());
    }

    /// A frame as a client sends it: masked, with RSV1 when compressed.
    fn client_frame(opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let header = FrameHeader {
            is_final: fin,
            rsv1,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// The frames tungstenite would read after the rewriter, as (header, payload) pairs.
    fn rewritten(input: &[u8], max: usize) -> Result<Vec<(FrameHeader, Vec<u8>)>, DeflateError> {
        let mut rewriter = Rewriter::new(max);
        // Byte by byte: frames split anywhere must come out whole.
        for byte in input {
            rewriter.input.push(*byte);
            rewriter.rewrite()?;
        }
        let mut cursor = Cursor::new(&rewriter.output[..]);
        let mut frames = Vec::new();
        while let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap() {
            let at = cursor.position() as usize;
            let mut payload = rewriter.output[at..at + len as usize].to_vec();
            if let Some(mask) = header.mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= mask[i & 3]);
            }
            cursor.set_position((at + len as usize) as u64);
            frames.push((header, payload));
        }
        Ok(frames)
    }

    #[test]
    fn round_trip_whole_and_fragmented() {
        let text =
            br#"{"op":"pub","topic":"sensors/a/env","data":{"t":21.5,"h":40,"t2":21.5,"h2":40}}"#
                .repeat(20);
        let packed = compress(&text, 6).unwrap();
        assert!(packed.len() < text.len() / 4);
        let whole = client_frame(OpCode::Data(Data::Text), true, true, &packed);
        let frames = rewritten(&whole, 64 * 1024).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(!frames[0].0.rsv1 && frames[0].0.mask.is_some());
        assert_eq!(frames[0].1, text);

        let (a, b) = packed.split_at(packed.len() / 3);
        let mut split = client_frame(OpCode::Data(Data::Text), false, true, a);
        split.extend(client_frame(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
            true,
            false,
            b"hi",
        ));
        split.extend(client_frame(OpCode::Data(Data::Continue), true, false, b));
        split.extend(client_frame(
            OpCode::Data(Data::Text),
            true,
            false,
            b"plain",
        ));
        let frames = rewritten(&split, 64 * 1024).unwrap();
        assert_eq!(frames.len(), 4);
        let joined: Vec<u8> = [frames[0].1.clone(), frames[2].1.clone()].concat();
        assert_eq!(joined, text);
        assert_eq!(frames[1].1, b"hi");
        assert_eq!(frames[3].1, b"plain");
    }

    #[test]
    fn client_reads_the_response_first() {
        let packed = compress(&b"abcabcabc".repeat(50), 6).unwrap();
        let frame = |rsv1| {
            let mut out = Vec::new();
            let header = FrameHeader {
                rsv1,
                opcode: OpCode::Data(Data::Text),
                ..FrameHeader::default()
            };
            header.format(packed.len() as u64, &mut out).unwrap();
            out.extend_from_slice(&packed);
            out
        };
        for (head, inflated) in [
            ("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n", true),
            ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", false),
        ] {
            let mut rewriter = Rewriter::new(1024);
            rewriter.handshake = Some(Vec::new());
            rewriter.input.extend_from_slice(head.as_bytes());
            rewriter.input.extend(frame(true));
            rewriter.rewrite().unwrap();
            let out = &rewriter.output;
            assert!(out.starts_with(head.as_bytes()));
            let mut cursor = Cursor::new(&out[head.len()..]);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            // Not negotiated: the frame reaches tungstenite as it came, RSV1 and all.
            assert_eq!((header.rsv1, len == 450), (!inflated, inflated));
        }
    }

    #[test]
    fn bombs_and_garbage() {
        let zeros = vec![0u8; 1024 * 1024];
        let bomb = compress(&zeros, 9).unwrap();
        let frame = client_frame(OpCode::Data(Data::Text), true, true, &bomb);
        assert_eq!(
            rewritten(&frame, 64 * 1024),
            Err(DeflateError::TooBig { max: 64 * 1024 })
        );
        let garbage = client_frame(OpCode::Data(Data::Text), true, true, &[0xff; 40]);
        assert!(matches!(
            rewritten(&garbage, 64 * 1024),
            Err(DeflateError::Invalid(_))
        ));
        let mut rsv1_continuation = client_frame(OpCode::Data(Data::Text), false, false, b"a");
        rsv1_continuation.extend(client_frame(OpCode::Data(Data::Continue), true, true, b"b"));
        assert!(matches!(
            rewritten(&rsv1_continuation, 64),
            Err(DeflateError::Invalid(_))
        ));
    }
}
