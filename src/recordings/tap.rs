//! From the Hub to the store: the [`Tap`] the Hub calls for every message, and the
//! writer task that stores what it offers.
//!
//! The tap runs under the Hub's topic lock, so it only matches the topic against the
//! running recordings, encodes the [`StoredMessage`] record once for all of them and
//! `try_send`s it; a full channel counts the message as dropped for each recording that
//! wanted it. The writer stores each burst with one `sled::Batch` that also rewrites
//! the figures of every recording it touched (see the module doc of `recorder`), each
//! recording's messages of the burst as a few runs ([`Runs`]): sled costs per entry
//! far more than per byte.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{json, layout, lock, Counters, Recorder};
use crate::store::message::run;
use crate::store::StoredMessage;
use crate::throttle::Throttle;
use switchboard_core::message::{Publish, Tap};
use switchboard_core::topic::Filter;

/// Messages the writer takes and stores in one batch.
pub const BURST: usize = 1024;

const WARN_EVERY_MS: u64 = 10_000;

pub enum Item {
    /// A message for the recordings with these ids, encoded once by the tap
    /// ([`StoredMessage::encode_routed`]): the bytes the store keeps.
    Message(Vec<u64>, Vec<u8>),
    /// Answered once everything before it is stored.
    Barrier(oneshot::Sender<()>),
}

/// A running recording as the tap sees it.
pub struct Active {
    pub id: u64,
    pub filters: Vec<Filter>,
    pub dropped: Arc<AtomicU64>,
}

/// What the tap and the recorder share.
pub struct Shared {
    active: RwLock<Arc<Vec<Active>>>,
    pub tx: mpsc::Sender<Item>,
    pub counters: Counters,
    warn: Throttle,
}

pub fn channel(capacity: usize) -> (Arc<Shared>, mpsc::Receiver<Item>) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Shared {
        active: RwLock::default(),
        tx,
        counters: Counters::default(),
        warn: Throttle::new(WARN_EVERY_MS),
    };
    (Arc::new(shared), rx)
}

impl Shared {
    pub fn set_active(&self, active: Vec<Active>) {
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(active);
    }

    fn active(&self) -> Arc<Vec<Active>> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn active_count(&self) -> usize {
        self.active().len()
    }

    fn warn_dropped(&self) {
        if self.warn.due() {
            tracing::warn!(
                dropped = self.counters.dropped.load(Ordering::Relaxed),
                "messages left out of recordings: the recording writer is behind"
            );
        }
    }
}

impl Tap for Shared {
    fn routed(&self, message: &Publish<'_>, seq: u64, ts_us: u64) {
        let active = self.active();
        if active.is_empty() {
            return;
        }
        let wanted: Vec<&Active> = active
            .iter()
            .filter(|a| a.filters.iter().any(|f| f.matches(message.topic)))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let record = StoredMessage::encode_routed(message, seq, ts_us);
        let ids = wanted.iter().map(|a| a.id).collect();
        if self.tx.try_send(Item::Message(ids, record)).is_err() {
            for a in &wanted {
                a.dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.counters
                .dropped
                .fetch_add(wanted.len() as u64, Ordering::Relaxed);
            self.warn_dropped();
        }
    }
}

/// The runs a burst adds to each recording: consecutive numbers, at most
/// `run::MAX_BYTES` each, keyed by their first number.
#[derive(Default)]
pub struct Runs {
    /// (recording, first n, next n, run).
    runs: Vec<(u64, u64, u64, Vec<u8>)>,
}

impl Runs {
    /// Adds message `n` of recording `id`.
    pub fn push(&mut self, id: u64, n: u64, record: &[u8]) {
        let open = self
            .runs
            .iter_mut()
            .rev()
            .find(|r| r.0 == id)
            .filter(|r| r.2 == n && run::fits(&r.3, record));
        match open {
            Some(r) => {
                run::push(&mut r.3, record);
                r.2 = n + 1;
            }
            None => {
                let mut value = run::start(run::MAX_BYTES.min(record.len() * 64));
                run::push(&mut value, record);
                self.runs.push((id, n, n + 1, value));
            }
        }
    }

    pub fn into_batch(self, batch: &mut sled::Batch) {
        for (id, first, _, value) in self.runs {
            batch.insert(&layout::message_key(id, first), value);
        }
    }
}

/// Stores messages until `stop`, then stores what is left in the channel and returns.
pub async fn write(recorder: Arc<Recorder>, mut rx: mpsc::Receiver<Item>, stop: CancellationToken) {
    let mut burst = Vec::with_capacity(BURST);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut burst, BURST) => n,
            _ = stop.cancelled() => break,
        };
        if n == 0 {
            return;
        }
        recorder.store_burst(&mut burst);
    }
    while let Ok(item) = rx.try_recv() {
        burst.push(item);
        if burst.len() == BURST {
            recorder.store_burst(&mut burst);
        }
    }
    recorder.store_burst(&mut burst);
}

impl Recorder {
    /// Stores one burst: every message and the figures of every recording it touched,
    /// in one batch. On a failure the figures in memory go back to what is stored.
    fn store_burst(&self, burst: &mut Vec<Item>) {
        let mut barriers = Vec::new();
        let mut recordings = lock(&self.recordings);
        let mut before = HashMap::new();
        let mut runs = Runs::default();
        let (mut stored, mut bytes) = (0u64, 0u64);
        for item in burst.drain(..) {
            let (ids, record) = match item {
                Item::Message(ids, record) => (ids, record),
                Item::Barrier(done) => {
                    barriers.push(done);
                    continue;
                }
            };
            // The tap encoded it: these cannot fail on its bytes.
            let (Some(topic), Some(ts_us)) = (
                StoredMessage::peek_topic(&record),
                StoredMessage::peek_ts_us(&record),
            ) else {
                continue;
            };
            for id in ids {
                // Deleted since, or taken by the tap just as it was stopped.
                let Some(entry) = recordings.get_mut(&id) else {
                    continue;
                };
                if entry.meta.stopped_at.is_some_and(|at| ts_us / 1000 > at) {
                    continue;
                }
                before.entry(id).or_insert_with(|| entry.figures.clone());
                let n = entry.figures.next;
                entry.figures.count_in(topic, ts_us, record.len());
                runs.push(id, n, &record);
                stored += 1;
                bytes += layout::record_bytes(record.len());
            }
        }
        let mut batch = sled::Batch::default();
        runs.into_batch(&mut batch);
        for id in before.keys() {
            if let Some(entry) = recordings.get_mut(id) {
                entry.figures.dropped = entry.dropped.load(Ordering::Relaxed);
                batch.insert(&layout::figures_key(*id), json(&entry.figures));
            }
        }
        if !before.is_empty() {
            let written = self
                .tree
                .current()
                .and_then(|t| t.apply_batch(batch).map_err(|e| self.store.io(e)));
            match written {
                Ok(()) => {
                    self.tap
                        .counters
                        .recorded
                        .fetch_add(stored, Ordering::Relaxed);
                    self.tap
                        .counters
                        .recorded_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                }
                Err(e) => {
                    static FAILED: switchboard_core::quiet::Throttle =
                        switchboard_core::quiet::Throttle::per_secs(10);
                    if let Some(held_back) = FAILED.admit() {
                        tracing::error!(error = %e, messages = stored, held_back, "cannot store recorded messages; dropped (dropped messages count in the recordings' figures)");
                    }
                    for (id, figures) in before {
                        if let Some(entry) = recordings.get_mut(&id) {
                            let lost = entry.figures.messages - figures.messages;
                            entry.figures = figures;
                            entry.dropped.fetch_add(lost, Ordering::Relaxed);
                        }
                    }
                    self.tap
                        .counters
                        .dropped
                        .fetch_add(stored, Ordering::Relaxed);
                }
            }
        }
        drop(recordings);
        for done in barriers {
            let _ = done.send(());
        }
    }
}
