//! permessage-deflate on the daemon's side: each outbound frame compressed once for
//! every connection that negotiated the extension (the codec is
//! `switchboard_core::deflate`).
//!
//! The Hub encodes a publish once and queues the same bytes for every subscriber, so the
//! address of a frame's bytes names the publish. [`Deflater`] keeps the compressed form
//! of the frames it compressed lately under that address: the first compressed
//! subscriber to write a publish compresses it (holding its shard's lock, so a second one
//! waits rather than compressing it again) and the others reuse the bytes. Each entry
//! holds a clone of the frame, so the address cannot be reused by another frame while
//! the entry lives. A subscriber that lags more than a few hundred publishes behind the
//! first one compresses again: a second compression, never a wrong frame.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use switchboard_core::protocol::Frame;

/// Frames larger than this go uncompressed: compressing runs on the connection's runtime
/// thread, and 64 KiB of JSON takes it about a millisecond at level 6 (a 4 MiB `http`
/// reply would take tens, stalling every connection served by that thread).
const LARGEST: usize = 64 * 1024;

/// Shards of the cache, so connections on different threads rarely share a lock.
const SHARDS: usize = 16;
/// Frames one shard remembers, and the plain bytes it may hold (beyond its newest
/// frame): all shards together hold at most 8 MiB and 16,384 frames. Subscribers of a
/// busy topic drift thousands of publishes apart under load (each may queue that many),
/// and one that falls out of the cache compresses again: with 64 frames a shard, the
/// fan-out benchmark spent a quarter of the daemon's CPU compressing the same publishes
/// over and over (mostly resetting zlib's tables).
const SHARD_FRAMES: usize = 1024;
const SHARD_BYTES: usize = 512 * 1024;

/// The compress-once cache and what it counts.
pub struct Deflater {
    threshold: usize,
    level: u32,
    shards: Box<[Mutex<Recent>]>,
    /// Times a payload was compressed.
    pub compressions: AtomicU64,
    /// Frames sent compressed, and their bytes before and after.
    pub frames: AtomicU64,
    pub plain_bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
}

#[derive(Default)]
struct Recent {
    entries: VecDeque<Entry>,
    /// Where each remembered frame is in `entries`, by its address and length, so a
    /// lookup does not walk a thousand entries. Positions are counted from `evicted`.
    index: HashMap<(usize, usize), u64>,
    evicted: u64,
    bytes: usize,
}

struct Entry {
    /// Held so its address stays this frame's.
    frame: Frame,
    /// `None`: compressing did not make it smaller.
    compressed: Option<Bytes>,
}

impl Deflater {
    pub fn new(threshold: usize, level: u32) -> Self {
        Self {
            threshold,
            level,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            compressions: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            plain_bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
        }
    }

    /// The compressed form of a frame queued by the Hub (shared by every subscriber), or
    /// `None` to send it as it is.
    pub fn shared(&self, frame: &Frame) -> Option<Bytes> {
        if !self.worth_it(frame) {
            return None;
        }
        let address = frame.as_str().as_ptr() as usize;
        // Allocations are at least 16-byte aligned: the bits above those pick the shard.
        let shard = ((address as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize;
        let mut recent = self.shards[shard % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let known = recent.find(frame);
        let compressed = match known {
            Some(entry) => entry.compressed.clone(),
            None => {
                let compressed = self.compress(frame.as_bytes());
                recent.remember(frame.clone(), compressed.clone());
                compressed
            }
        };
        drop(recent);
        self.count_sent(frame.len(), compressed.as_ref())
    }

    /// The compressed form of a frame only this connection sends (a reply, a notice).
    pub fn own(&self, frame: &Frame) -> Option<Bytes> {
        if !self.worth_it(frame) {
            return None;
        }
        let compressed = self.compress(frame.as_bytes());
        self.count_sent(frame.len(), compressed.as_ref())
    }

    fn worth_it(&self, frame: &Frame) -> bool {
        (self.threshold..=LARGEST).contains(&frame.len())
    }

    fn compress(&self, payload: &[u8]) -> Option<Bytes> {
        self.compressions.fetch_add(1, Ordering::Relaxed);
        switchboard_core::deflate::compress(payload, self.level)
    }

    fn count_sent(&self, plain: usize, compressed: Option<&Bytes>) -> Option<Bytes> {
        let compressed = compressed?;
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.plain_bytes.fetch_add(plain as u64, Ordering::Relaxed);
        self.wire_bytes
            .fetch_add(compressed.len() as u64, Ordering::Relaxed);
        Some(compressed.clone())
    }
}

impl Recent {
    fn key(frame: &Frame) -> (usize, usize) {
        (frame.as_str().as_ptr() as usize, frame.len())
    }

    fn find(&self, frame: &Frame) -> Option<&Entry> {
        let at = self.index.get(&Self::key(frame))?;
        self.entries
            .get(usize::try_from(at.checked_sub(self.evicted)?).ok()?)
    }

    fn remember(&mut self, frame: Frame, compressed: Option<Bytes>) {
        self.bytes += frame.len() + compressed.as_ref().map_or(0, Bytes::len);
        let at = self.evicted + self.entries.len() as u64;
        self.index.insert(Self::key(&frame), at);
        self.entries.push_back(Entry { frame, compressed });
        while self.entries.len() > SHARD_FRAMES
            || (self.bytes > SHARD_BYTES && self.entries.len() > 1)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.frame.len() + old.compressed.as_ref().map_or(0, Bytes::len);
                let key = Self::key(&old.frame);
                if self.index.get(&key) == Some(&self.evicted) {
                    self.index.remove(&key);
                }
                self.evicted += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_finds_what_it_remembers_and_forgets_the_oldest() {
        let mut recent = Recent::default();
        let frames: Vec<Frame> = (0..SHARD_FRAMES + 100)
            .map(|i| Frame::from(format!("{{\"n\":{i}}}")))
            .collect();
        for (i, frame) in frames.iter().enumerate() {
            recent.remember(frame.clone(), Some(Bytes::from(i.to_string())));
        }
        assert_eq!(recent.entries.len(), SHARD_FRAMES);
        assert_eq!(recent.index.len(), SHARD_FRAMES);
        assert!(recent.find(&frames[99]).is_none());
        for i in [100, 500, SHARD_FRAMES + 99] {
            let entry = recent.find(&frames[i]).expect("remembered");
            assert_eq!(entry.compressed.as_deref(), Some(i.to_string().as_bytes()));
        }
        // Another frame with equal text but its own bytes is not mistaken for one held.
        assert!(recent.find(&Frame::from(frames[500].to_string())).is_none());
    }
}
