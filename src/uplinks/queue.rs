//! A link's outbound messages on disk: the tree `bridge/<name>/queue` of the shared
//! [`Store`]. An entry is one flags byte (bit 0 retain, bit 1 QoS 1) followed by the
//! message in the [`StoredMessage`] layout, its topic already the remote one.
//!
//! Entries are stored a burst at a time, as **segments**: one sled value holding up to
//! [`run::MAX_BYTES`] of entries, so a burst costs sled one insert and, once every entry
//! in it is acknowledged, one remove — not one of each per message, which was half the
//! daemon's CPU when forwarding (docs/benchmarks.md, "Bridges"). A segment's key is the
//! id of its first entry (big-endian, so key order is arrival order) and its entries
//! have the ids that follow, so an id names a segment and a place in it.
//!
//! Format 2 (this build): a segment is [`SEGMENT`] then a [`run`] of entries. Format 1
//! (older builds): one entry per value, keyed by a store id. A format 1 value starts
//! with its flags byte (0–3), never [`SEGMENT`], so it reads as a segment of one and an
//! old queue drains as it is, with nothing to rewrite on upgrade.
//!
//! Which entries are acknowledged is kept in memory: an entry leaves the disk with its
//! segment, when the last of its entries is acknowledged or dropped. So a crash (or a
//! store reopen) sends the acknowledged entries of a partly acknowledged segment again:
//! at-least-once, at most one segment's worth of duplicates per partly acknowledged
//! segment. A clean restart or reconnect sends nothing acknowledged again.
//!
//! Bounded by count and bytes: past either, the oldest entries are dropped and counted
//! (`dropped`); a segment that lost its first entries this way is rewritten under the
//! id of its first kept entry, so a restart does not bring them back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_bridge::upstream::{Outbox, Outgoing};
use tokio::sync::Notify;

use crate::mqtt::payload;
use crate::store::message::{run, Corrupt};
use crate::store::{Reopened, Store, StoreError, StoredMessage, Tree};

const RETAIN: u8 = 1;
const QOS1: u8 = 2;

/// First byte of a format 2 segment; a format 1 value starts with its flags (0–3).
const SEGMENT: u8 = 0x80;

pub struct Queue {
    name: String,
    tree: Tree,
    state: Mutex<State>,
    /// Limits; a reload that changes the bridge changes them in place.
    max_messages: AtomicU64,
    max_bytes: AtomicU64,
    pub len: AtomicU64,
    pub bytes: AtomicU64,
    /// Dropped by the overflow policy (and entries that could not be stored).
    pub dropped: AtomicU64,
    /// Acknowledged by the broker.
    pub forwarded: AtomicU64,
    /// Acknowledged with an error reason (not sent again).
    pub refused: AtomicU64,
    /// Notified when entries were added, for the sending task.
    pub wake: Arc<Notify>,
}

/// The segments on disk, by key, and the id the next entry gets.
struct State {
    segments: BTreeMap<u64, Segment>,
    next: u64,
}

/// What the queue knows of one segment without reading it.
struct Segment {
    /// Each entry's size, for the byte count.
    sizes: Vec<u32>,
    /// Acknowledged or dropped, so not sent again by this process.
    done: Vec<bool>,
    /// Entries not done; the segment leaves the disk at 0.
    left: usize,
}

impl Segment {
    fn new(sizes: Vec<u32>) -> Segment {
        Segment {
            done: vec![false; sizes.len()],
            left: sizes.len(),
            sizes,
        }
    }

    /// Marks entry `i` done; its size if it was not already.
    fn finish(&mut self, i: usize) -> Option<u32> {
        let done = self.done.get_mut(i)?;
        if *done {
            return None;
        }
        *done = true;
        self.left -= 1;
        self.sizes.get(i).copied()
    }
}

/// Encodes one entry.
pub fn entry(message: &StoredMessage, qos: u8, retain: bool) -> Vec<u8> {
    let flags = if retain { RETAIN } else { 0 } | if qos > 0 { QOS1 } else { 0 };
    let mut out = vec![flags];
    out.extend_from_slice(&message.encode());
    out
}

/// The entries of a stored value, oldest first: a segment's, or a format 1 value's one.
fn entries(value: &[u8]) -> impl Iterator<Item = Result<&[u8], Corrupt>> {
    let (segment, lone) = match value {
        [SEGMENT, rest @ ..] => (Some(rest), None),
        lone => (None, Some(lone)),
    };
    lone.map(Ok)
        .into_iter()
        .chain(segment.into_iter().flat_map(run::records))
}

/// A segment of `entries`, for [`Queue::push_burst`].
fn segment<'a>(entries: impl Iterator<Item = &'a [u8]> + Clone) -> (Vec<u8>, Vec<u32>) {
    let size: usize = entries.clone().map(|e| e.len() + run::PER_RECORD).sum();
    let mut value = run::start(size + 1);
    value.insert(0, SEGMENT);
    let mut sizes = Vec::new();
    for e in entries {
        run::push(&mut value, e);
        sizes.push(u32::try_from(e.len()).unwrap_or(u32::MAX));
    }
    (value, sizes)
}

/// The segments of a queue's tree, and the id after the last entry.
fn load(tree: &sled::Tree) -> Result<(BTreeMap<u64, Segment>, u64), sled::Error> {
    let mut segments = BTreeMap::new();
    let mut next = 0;
    for item in tree.iter() {
        let (k, v) = item?;
        let key = id_of(&k);
        // A truncated segment keeps what could be read; the rest is gone.
        let sizes: Vec<u32> = entries(&v)
            .map_while(Result::ok)
            .map(|e| u32::try_from(e.len()).unwrap_or(u32::MAX))
            .collect();
        next = next.max(key + sizes.len() as u64);
        if !sizes.is_empty() {
            segments.insert(key, Segment::new(sizes));
        }
    }
    Ok((segments, next))
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(k).map(u64::from_be_bytes).unwrap_or(0)
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    /// New limits, applied from the next message stored.
    pub fn set_limits(&self, max_messages: u64, max_bytes: u64) {
        self.max_messages.store(max_messages, Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    pub fn open(
        store: &Store,
        name: &str,
        max_messages: u64,
        max_bytes: u64,
    ) -> Result<Arc<Queue>, StoreError> {
        let tree = store.tree(&format!("bridge/{name}/queue"))?;
        let (segments, next) = load(&*tree.current()?).map_err(|e| tree.io(e))?;
        let queue = Arc::new(Queue {
            name: name.to_owned(),
            tree,
            state: Mutex::new(State { segments, next }),
            len: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_messages: AtomicU64::new(max_messages),
            max_bytes: AtomicU64::new(max_bytes),
            dropped: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
        });
        queue.recount(&lock(&queue.state));
        store.on_reopen(&queue);
        Ok(queue)
    }

    /// The figures from what the segments hold and is not done.
    fn recount(&self, state: &State) {
        let (mut len, mut bytes) = (0u64, 0u64);
        for s in state.segments.values() {
            len += s.left as u64;
            for (size, done) in s.sizes.iter().zip(&s.done) {
                if !done {
                    bytes += u64::from(*size);
                }
            }
        }
        self.len.store(len, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// Appends a burst of entries, as few segments as fit them, then drops the oldest
    /// while over a bound. On an error, what was not stored is counted as dropped.
    pub fn push_burst(&self, burst: &[Vec<u8>]) -> Result<(), StoreError> {
        let tree = match self.tree.current() {
            Ok(t) => t,
            Err(e) => {
                self.dropped
                    .fetch_add(burst.len() as u64, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut state = lock(&self.state);
        let mut rest = burst;
        while !rest.is_empty() {
            // At least one entry, then as many as fit in a segment.
            let mut size = rest[0].len();
            let mut n = 1;
            while n < rest.len() && size + rest[n].len() + run::PER_RECORD <= run::MAX_BYTES {
                size += rest[n].len() + run::PER_RECORD;
                n += 1;
            }
            let (value, sizes) = segment(rest[..n].iter().map(Vec::as_slice));
            let at = state.next;
            if let Err(e) = tree.insert(key(at), value) {
                self.dropped.fetch_add(rest.len() as u64, Ordering::Relaxed);
                return Err(self.tree.io(e));
            }
            state.next = at + n as u64;
            self.len.fetch_add(n as u64, Ordering::Relaxed);
            let added: u64 = sizes.iter().map(|s| u64::from(*s)).sum();
            self.bytes.fetch_add(added, Ordering::Relaxed);
            state.segments.insert(at, Segment::new(sizes));
            rest = &rest[n..];
        }
        self.trim(&tree, &mut state)
    }

    /// Drops the oldest entries while over a bound.
    fn trim(&self, tree: &sled::Tree, state: &mut State) -> Result<(), StoreError> {
        let mut touched: Vec<u64> = Vec::new();
        while self.len.load(Ordering::Relaxed) > self.max_messages.load(Ordering::Relaxed)
            || self.bytes.load(Ordering::Relaxed) > self.max_bytes.load(Ordering::Relaxed)
        {
            let oldest = state.segments.iter_mut().find(|(_, s)| s.left > 0);
            let Some((&at, segment)) = oldest else {
                break;
            };
            let Some(i) = segment.done.iter().position(|d| !d) else {
                break;
            };
            if let Some(size) = segment.finish(i) {
                self.forget(size);
            }
            if touched.last() != Some(&at) {
                touched.push(at);
            }
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(bridge = %self.name, dropped, "bridge queue full: oldest messages dropped");
            }
        }
        for at in touched {
            self.settle(tree, state, at, true)?;
        }
        Ok(())
    }

    /// Removes segment `at` from the disk once every entry is done; with `rewrite`, a
    /// segment whose first entries are done is written again without them, under the id
    /// of its first kept entry (ids do not change).
    fn settle(
        &self,
        tree: &sled::Tree,
        state: &mut State,
        at: u64,
        rewrite: bool,
    ) -> Result<(), StoreError> {
        let Some(s) = state.segments.get_mut(&at) else {
            return Ok(());
        };
        if s.left == 0 {
            state.segments.remove(&at);
            tree.remove(key(at)).map_err(|e| self.tree.io(e))?;
            return Ok(());
        }
        let skip = s.done.iter().take_while(|d| **d).count();
        if !rewrite || skip == 0 {
            return Ok(());
        }
        let Some(value) = tree.get(key(at)).map_err(|e| self.tree.io(e))? else {
            return Ok(());
        };
        let kept: Vec<&[u8]> = entries(&value).skip(skip).map_while(Result::ok).collect();
        let (value, _) = segment(kept.into_iter());
        let mut batch = sled::Batch::default();
        batch.remove(&key(at));
        batch.insert(&key(at + skip as u64), value);
        tree.apply_batch(batch).map_err(|e| self.tree.io(e))?;
        if let Some(mut moved) = state.segments.remove(&at) {
            moved.sizes.drain(..skip);
            moved.done.drain(..skip);
            state.segments.insert(at + skip as u64, moved);
        }
        Ok(())
    }

    fn forget(&self, size: u32) {
        let sub = |c: &AtomicU64, n: u64| {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.len, 1);
        sub(&self.bytes, u64::from(size));
    }

    fn decode(id: u64, value: &[u8]) -> Option<Outgoing> {
        let (&flags, rest) = value.split_first()?;
        let m = StoredMessage::decode(rest).ok()?;
        let payload = match serde_json::from_str::<&RawValue>(&m.data) {
            Ok(raw) => Bytes::from(payload::to_payload(raw).into_owned()),
            Err(_) => Bytes::from(m.data.into_bytes()),
        };
        Some(Outgoing {
            id,
            topic: m.topic,
            payload,
            qos: u8::from(flags & QOS1 != 0),
            retain: flags & RETAIN != 0,
        })
    }
}

/// What sled had not written when the disk failed is gone after a reopen: the segments
/// and figures follow what the queue holds. Ids only grow, so an entry in flight before
/// the reopen never names one stored after it.
impl Reopened for Queue {
    fn reopened(&self) {
        let loaded = self
            .tree
            .current()
            .and_then(|t| load(&t).map_err(|e| self.tree.io(e)));
        match loaded {
            Ok((segments, next)) => {
                let mut state = lock(&self.state);
                state.next = state.next.max(next);
                state.segments = segments;
                self.recount(&state);
            }
            Err(e) => {
                tracing::error!(bridge = %self.name, error = %e, "cannot count the bridge queue after the store reopened")
            }
        }
    }
}

impl Outbox for Queue {
    fn after(&self, after: Option<u64>, max: usize) -> Result<Vec<Outgoing>, String> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::with_capacity(max.min(1024));
        let tree = self.tree.current().map_err(|e| e.to_string())?;
        let mut state = lock(&self.state);
        // The segment holding `start`, if any, then those after it.
        let from = match state.segments.range(..=start).next_back() {
            Some((&at, s)) if start < at + s.done.len() as u64 => at,
            _ => start,
        };
        let mut unreadable: Vec<u64> = Vec::new();
        for (&at, segment) in state.segments.range_mut(from..) {
            if out.len() >= max {
                break;
            }
            let first = start.saturating_sub(at) as usize;
            if segment.done.iter().skip(first).all(|d| *d) {
                continue;
            }
            let Some(value) = tree.get(key(at)).map_err(|e| e.to_string())? else {
                continue;
            };
            for (i, e) in entries(&value).enumerate().skip(first) {
                if out.len() >= max {
                    break;
                }
                if segment.done.get(i) != Some(&false) {
                    continue;
                }
                let id = at + i as u64;
                match e.ok().and_then(|e| Queue::decode(id, e)) {
                    Some(m) => out.push(m),
                    None => {
                        // Not readable by this build: it can never be sent, so it goes.
                        tracing::warn!(bridge = %self.name, id, "unreadable bridge queue entry dropped");
                        if let Some(size) = segment.finish(i) {
                            self.forget(size);
                        }
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        unreadable.push(at);
                    }
                }
            }
            // A truncated segment: what could not be read is dropped.
        }
        for at in unreadable {
            self.settle(&tree, &mut state, at, false)
                .map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    fn done(&self, id: u64, refused: bool) {
        let counter = if refused {
            &self.refused
        } else {
            &self.forwarded
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut state = lock(&self.state);
        let Some((&at, segment)) = state.segments.range_mut(..=id).next_back() else {
            return;
        };
        let Ok(i) = usize::try_from(id - at) else {
            return;
        };
        if let Some(size) = segment.finish(i) {
            self.forget(size);
        }
        if segment.left > 0 {
            return;
        }
        let removed = self
            .tree
            .current()
            .and_then(|t| self.settle(&t, &mut state, at, false));
        if let Err(e) = removed {
            tracing::error!(bridge = %self.name, error = %e, "cannot remove an acknowledged bridge segment")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::message::Origin;

    fn message(topic: &str, data: &str) -> StoredMessage {
        StoredMessage {
            topic: topic.into(),
            event: None,
            data: data.into(),
            ts_us: 1,
            seq: 1,
            from: "x".into(),
            origin: Origin::Ws,
        }
    }

    fn open(store: &Store, max: u64) -> Arc<Queue> {
        Queue::open(store, "b", max, 1 << 20).unwrap()
    }

    fn topics(q: &Queue) -> Vec<String> {
        q.after(None, 1000)
            .unwrap()
            .into_iter()
            .map(|m| m.topic)
            .collect()
    }

    #[test]
    fn keeps_order_drops_oldest_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let q = open(&store, 3);
        for i in 0..5 {
            q.push_burst(&[entry(&message(&format!("t/{i}"), "\"on\""), 1, i == 4)])
                .unwrap();
        }
        assert_eq!(q.dropped.load(Ordering::Relaxed), 2);
        let all = q.after(None, 10).unwrap();
        assert_eq!(topics(&q), ["t/2", "t/3", "t/4"]);
        assert_eq!(all[0].payload.as_ref(), b"on");
        assert!(all[2].retain && all[2].qos == 1);
        assert_eq!(q.after(Some(all[0].id), 1).unwrap()[0].topic, "t/3");
        q.done(all[0].id, false);
        drop(q);
        let again = open(&store, 3);
        assert_eq!(again.len.load(Ordering::Relaxed), 2);
        assert_eq!(again.after(None, 10).unwrap()[0].topic, "t/3");
    }

    fn burst(from: usize, to: usize) -> Vec<Vec<u8>> {
        (from..to)
            .map(|i| entry(&message(&format!("t/{i}"), "1"), 1, false))
            .collect()
    }

    #[test]
    fn a_burst_is_one_segment_acknowledged_entries_are_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let q = open(&store, 1000);
        q.push_burst(&burst(0, 10)).unwrap();
        assert_eq!(q.tree.current().unwrap().len(), 1, "one sled value");
        let sent = q.after(None, 4).unwrap();
        for m in &sent {
            q.done(m.id, false);
        }
        assert_eq!(q.len.load(Ordering::Relaxed), 6);
        // A reconnect reads from the head: what was acknowledged is skipped.
        assert_eq!(topics(&q)[0], "t/4");
        assert_eq!(q.after(Some(sent[1].id), 1).unwrap()[0].topic, "t/4");
        // A crash before the segment was finished sends it again whole.
        drop(q);
        let again = open(&store, 1000);
        assert_eq!(again.len.load(Ordering::Relaxed), 10);
        for m in again.after(None, 100).unwrap() {
            again.done(m.id, false);
        }
        assert_eq!(
            again.tree.current().unwrap().len(),
            0,
            "finished segments leave"
        );
        assert_eq!(again.len.load(Ordering::Relaxed), 0);
        assert_eq!(again.bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn dropping_the_oldest_of_a_segment_rewrites_it_so_they_stay_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let q = open(&store, 6);
        q.push_burst(&burst(0, 5)).unwrap();
        let first = q.after(None, 1).unwrap();
        q.push_burst(&burst(5, 9)).unwrap();
        assert_eq!(q.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(topics(&q), ["t/3", "t/4", "t/5", "t/6", "t/7", "t/8"]);
        // The PUBACK of a dropped entry in flight changes nothing.
        q.done(first[0].id, false);
        assert_eq!(q.len.load(Ordering::Relaxed), 6);
        drop(q);
        let again = open(&store, 6);
        assert_eq!(topics(&again), ["t/3", "t/4", "t/5", "t/6", "t/7", "t/8"]);
    }

    #[test]
    fn a_queue_of_the_previous_format_drains_after_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        // Format 1, as older builds wrote it: one entry per value, keyed by a store id,
        // QoS 1 (flags 2, the first byte a run has) and retained ones among them.
        let tree = store.tree("bridge/b/queue").unwrap().current().unwrap();
        for (i, value) in burst(0, 3).into_iter().enumerate() {
            let mut value = value;
            value[0] = if i == 1 { QOS1 | RETAIN } else { QOS1 };
            tree.insert(key(store.next_id().unwrap()), value).unwrap();
        }
        drop(tree);
        let q = open(&store, 1000);
        assert_eq!(q.len.load(Ordering::Relaxed), 3);
        q.push_burst(&burst(3, 5)).unwrap();
        let all = q.after(None, 100).unwrap();
        let names: Vec<&str> = all.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            names,
            ["t/0", "t/1", "t/2", "t/3", "t/4"],
            "old entries first"
        );
        assert!(all[1].retain && all[1].qos == 1 && !all[0].retain);
        for m in &all {
            q.done(m.id, false);
        }
        assert_eq!(q.tree.current().unwrap().len(), 0);
        assert_eq!(q.forwarded.load(Ordering::Relaxed), 5);
    }
}
