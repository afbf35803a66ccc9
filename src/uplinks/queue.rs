//! A link's outbound messages on disk: the tree `bridge/<name>/queue` of the shared
//! [`Store`], keyed by a store-wide increasing id (big-endian, so key order is arrival
//! order). A value is one flags byte (bit 0 retain, bit 1 QoS 1) followed by the
//! message in the [`StoredMessage`] layout, its topic already the remote one.
//!
//! Bounded by count and bytes: past either, the oldest entries are dropped and counted
//! (`dropped`). An entry leaves only on [`Outbox::done`] (the broker's PUBACK), so after
//! a restart everything not acknowledged goes again.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_bridge::upstream::{Outbox, Outgoing};
use tokio::sync::Notify;

use crate::mqtt::payload;
use crate::store::{Reopened, Store, StoreError, StoredMessage, Tree};

const RETAIN: u8 = 1;
const QOS1: u8 = 2;

pub struct Queue {
    name: String,
    store: Store,
    tree: Tree,
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

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(k).map(u64::from_be_bytes).unwrap_or(0)
}

/// Encodes one entry.
pub fn entry(message: &StoredMessage, qos: u8, retain: bool) -> Vec<u8> {
    let flags = if retain { RETAIN } else { 0 } | if qos > 0 { QOS1 } else { 0 };
    let mut out = vec![flags];
    out.extend_from_slice(&message.encode());
    out
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
        let (len, bytes) = count(&tree)?;
        let queue = Arc::new(Queue {
            name: name.to_owned(),
            store: store.clone(),
            len: AtomicU64::new(len),
            bytes: AtomicU64::new(bytes),
            tree,
            max_messages: AtomicU64::new(max_messages),
            max_bytes: AtomicU64::new(max_bytes),
            dropped: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
        });
        store.on_reopen(&queue);
        Ok(queue)
    }

    /// Appends an entry, then drops the oldest while over a bound.
    pub fn push(&self, value: &[u8]) -> Result<(), StoreError> {
        let id = self.store.next_id()?;
        self.tree
            .current()?
            .insert(key(id), value)
            .map_err(|e| self.store.io(e))?;
        self.len.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(value.len() as u64, Ordering::Relaxed);
        while self.len.load(Ordering::Relaxed) > self.max_messages.load(Ordering::Relaxed)
            || self.bytes.load(Ordering::Relaxed) > self.max_bytes.load(Ordering::Relaxed)
        {
            let popped = self.tree.current()?.pop_min();
            let Some((_, old)) = popped.map_err(|e| self.store.io(e))? else {
                break;
            };
            self.forget(old.len());
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(bridge = %self.name, dropped, "bridge queue full: oldest messages dropped");
            }
        }
        Ok(())
    }

    fn forget(&self, size: usize) {
        let sub = |c: &AtomicU64, n: u64| {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.len, 1);
        sub(&self.bytes, size as u64);
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

/// Entries and their bytes in a queue's tree.
fn count(tree: &Tree) -> Result<(u64, u64), StoreError> {
    let tree_now = tree.current()?;
    let mut bytes = 0u64;
    for v in tree_now.iter().values() {
        bytes += v.map_err(|e| tree.io(e))?.len() as u64;
    }
    Ok((tree_now.len() as u64, bytes))
}

/// What sled had not written when the disk failed is gone after a reopen: the figures
/// follow what the queue holds.
impl Reopened for Queue {
    fn reopened(&self) {
        match count(&self.tree) {
            Ok((len, bytes)) => {
                self.len.store(len, Ordering::Relaxed);
                self.bytes.store(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(bridge = %self.name, error = %e, "cannot count the bridge queue after the store reopened")
            }
        }
    }
}

impl Outbox for Queue {
    fn after(&self, after: Option<u64>, max: usize) -> Result<Vec<Outgoing>, String> {
        let start = match after {
            Some(a) => Bound::Excluded(key(a)),
            None => Bound::Unbounded,
        };
        let mut out = Vec::with_capacity(max.min(1024));
        let tree = self.tree.current().map_err(|e| e.to_string())?;
        for item in tree.range::<[u8; 8], _>((start, Bound::Unbounded)) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(|e| e.to_string())?;
            let id = id_of(&k);
            match Queue::decode(id, &v) {
                Some(m) => out.push(m),
                None => {
                    // Not readable by this build: it can never be sent, so it goes.
                    tracing::warn!(bridge = %self.name, id, "unreadable bridge queue entry dropped");
                    if let Ok(Some(old)) = tree.remove(k) {
                        self.forget(old.len());
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(out)
    }

    fn done(&self, id: u64, refused: bool) {
        let removed = self
            .tree
            .current()
            .and_then(|t| t.remove(key(id)).map_err(|e| self.store.io(e)));
        match removed {
            Ok(Some(old)) => self.forget(old.len()),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(bridge = %self.name, error = %e, "cannot remove an acknowledged bridge message")
            }
        }
        let counter = if refused {
            &self.refused
        } else {
            &self.forwarded
        };
        counter.fetch_add(1, Ordering::Relaxed);
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

    #[test]
    fn keeps_order_drops_oldest_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let q = Queue::open(&store, "b", 3, 1 << 20).unwrap();
        for i in 0..5 {
            q.push(&entry(&message(&format!("t/{i}"), "\"on\""), 1, i == 4))
                .unwrap();
        }
        assert_eq!(q.dropped.load(Ordering::Relaxed), 2);
        let all = q.after(None, 10).unwrap();
        let topics: Vec<&str> = all.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["t/2", "t/3", "t/4"]);
        assert_eq!(all[0].payload.as_ref(), b"on");
        assert!(all[2].retain && all[2].qos == 1);
        assert_eq!(q.after(Some(all[0].id), 1).unwrap()[0].topic, "t/3");
        q.done(all[0].id, false);
        drop(q);
        let again = Queue::open(&store, "b", 3, 1 << 20).unwrap();
        assert_eq!(again.len.load(Ordering::Relaxed), 2);
        assert_eq!(again.after(None, 10).unwrap()[0].topic, "t/3");
    }
}
