//! A socket's read half with its buffer (refill, compact, grow), and the byte searches the lean bench clients run over what it holds.

use std::io;

use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

pub fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Position of `needle` in `hay`. The searches here are over a few dozen bytes.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer right after `key` (e.g. `"t":`) in a payload. Cheap on
/// purpose: no JSON parsing on the receive path.
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

/// The read half of a connection and the bytes read from it not yet consumed:
/// `buf[start..end]`.
pub struct ReadBuf {
    pub rd: OwnedReadHalf,
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

impl ReadBuf {
    pub fn new(rd: OwnedReadHalf, capacity: usize) -> ReadBuf {
        ReadBuf {
            rd,
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// The bytes read and not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes from the socket, compacting or growing the buffer first if
    /// needed. Returns false at end of stream.
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
}
