//! permessage-deflate on the daemon's side: each outbound frame compressed once for
//! every connection that negotiated the extension (the codec is
//! `switchboard_core::deflate`).
//!
//! The Hub encodes a publish once and queues the same frame for every subscriber; for
//! the subscribers that compress it queues a [`Shared`], which has room for the
//! compressed bytes. The first of them to write the publish compresses it into that
//! room and the others send what it made: one compression per publish however far apart
//! the subscribers drift, with no cache to look it up in. (The cache this replaced, of
//! 16 × 1,024 recent frames under their addresses, cost a lock, a hash lookup and four
//! shared counters on every delivery: 1.37–1.40× the CPU per delivery of an
//! uncompressed fan-out at 1,000 subscribers; docs/benchmarks.md.)

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use switchboard_core::protocol::Frame;

use crate::hub::outbox::Shared;

/// Frames larger than this go uncompressed: compressing runs on the connection's runtime
/// thread, and 64 KiB of JSON takes it about a millisecond at level 6 (a 4 MiB `http`
/// reply would take tens, stalling every connection served by that thread).
const LARGEST: usize = 64 * 1024;

/// The compression settings and what they did, for the metrics.
pub struct Deflater {
    threshold: usize,
    level: u32,
    /// Times a payload was compressed.
    pub compressions: AtomicU64,
    /// Frames sent compressed, and their bytes before and after.
    pub frames: AtomicU64,
    pub plain_bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
}

/// Compressed frames one connection sent since it last added them to the [`Deflater`]'s
/// counters: counted here and added once per batch, so a delivery touches no counter
/// shared with the other connections.
#[derive(Debug, Default)]
pub struct Sent {
    frames: u64,
    plain_bytes: u64,
    wire_bytes: u64,
}

impl Sent {
    fn count(&mut self, plain: usize, compressed: &Bytes) {
        self.frames += 1;
        self.plain_bytes += plain as u64;
        self.wire_bytes += compressed.len() as u64;
    }
}

impl Deflater {
    pub fn new(threshold: usize, level: u32) -> Self {
        Self {
            threshold,
            level,
            compressions: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            plain_bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
        }
    }

    /// The compressed form of a frame the Hub shares between connections, made by the
    /// first one to ask, or `None` to send it as it is.
    pub fn shared(&self, shared: &Shared, sent: &mut Sent) -> Option<Bytes> {
        if !self.worth_it(shared.frame()) {
            return None;
        }
        let compressed = shared.packed(|frame| self.compress(frame.as_bytes()))?;
        sent.count(shared.frame().len(), compressed);
        Some(compressed.clone())
    }

    /// The compressed form of a frame only this connection sends (a reply, a notice).
    pub fn own(&self, frame: &Frame, sent: &mut Sent) -> Option<Bytes> {
        if !self.worth_it(frame) {
            return None;
        }
        let compressed = self.compress(frame.as_bytes())?;
        sent.count(frame.len(), &compressed);
        Some(compressed)
    }

    /// Adds what a connection sent to the counters.
    pub fn record(&self, sent: &mut Sent) {
        let sent = std::mem::take(sent);
        if sent.frames > 0 {
            self.frames.fetch_add(sent.frames, Ordering::Relaxed);
            self.plain_bytes
                .fetch_add(sent.plain_bytes, Ordering::Relaxed);
            self.wire_bytes
                .fetch_add(sent.wire_bytes, Ordering::Relaxed);
        }
    }

    fn worth_it(&self, frame: &Frame) -> bool {
        (self.threshold..=LARGEST).contains(&frame.len())
    }

    fn compress(&self, payload: &[u8]) -> Option<Bytes> {
        self.compressions.fetch_add(1, Ordering::Relaxed);
        switchboard_core::deflate::compress(payload, self.level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_frame_is_compressed_once_and_small_ones_never() {
        let deflater = Deflater::new(64, 6);
        let mut sent = Sent::default();
        let big = Shared::new(Frame::from("{\"reading\":21.5}".repeat(20)));
        let first = deflater.shared(&big, &mut sent).expect("compressed");
        for _ in 0..3 {
            assert_eq!(deflater.shared(&big, &mut sent), Some(first.clone()));
        }
        let small = Shared::new(Frame::from("{\"reading\":21.5}"));
        assert_eq!(deflater.shared(&small, &mut sent), None);
        assert_eq!(deflater.compressions.load(Ordering::Relaxed), 1);
        assert_eq!(
            deflater.frames.load(Ordering::Relaxed),
            0,
            "not recorded yet"
        );
        deflater.record(&mut sent);
        assert_eq!(deflater.frames.load(Ordering::Relaxed), 4);
        assert_eq!(deflater.plain_bytes.load(Ordering::Relaxed), 4 * 320);
        assert_eq!(
            deflater.wire_bytes.load(Ordering::Relaxed),
            4 * first.len() as u64
        );
    }
}
