//! From the Hub to the store: the [`Tap`] the Hub calls for every message, and the
//! writer task that stores what it offers.
//!
//! The tap runs under the Hub's topic lock, so it only matches the topic against the
//! running recordings and appends the [`StoredMessage`] record, encoded once for all of
//! them, to a [`Pending`] buffer it shares with the writer: no allocation per message
//! (the buffers are reused) and one wake-up of the writer per burst, when the buffer
//! goes from empty to not. A full buffer (`[recording] queue` messages) counts the
//! message as dropped for each recording that wanted it. The writer swaps the whole
//! buffer out (at most every [`crate::store::Store::group_commit`] under a flood) and
//! stores it with one [`crate::store::RunTree`] change that also rewrites the figures of
//! every recording it touched (see the module doc of `recorder`), each recording's
//! messages of the burst as a few runs ([`Runs`]), whose bytes go to a run file and
//! whose pointers go in the same sled batch as the figures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::layout::Figures;
use super::{json, layout, lock, Counters, Recorder};
use crate::store::message::run;
use crate::store::run_files::{Change, RunBuffer};
use crate::store::StoredMessage;
use crate::throttle::Throttle;
use switchboard_core::message::{Publish, Tap};
use switchboard_core::topic::Filter;

/// Messages an import stores in one batch.
pub const BURST: usize = 1024;

const WARN_EVERY_MS: u64 = 10_000;

/// Messages the tap has encoded and the writer has not taken yet, laid end to end so
/// that a burst costs a few growing buffers rather than vectors per message.
#[derive(Default)]
pub struct Pending {
    /// The records, one after another.
    records: Vec<u8>,
    /// The recordings that want them, one after another.
    ids: Vec<u64>,
    /// Per message: where its record and its ids end in `records` and `ids`.
    ends: Vec<(usize, usize)>,
    /// Answered once everything before them is stored.
    barriers: Vec<oneshot::Sender<()>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.barriers.is_empty()
    }

    /// Each message's record and the recordings that want it, in order.
    fn messages(&self) -> impl Iterator<Item = (&[u8], &[u64])> + '_ {
        let mut from = (0, 0);
        self.ends.iter().map(move |&(record_end, ids_end)| {
            let record = &self.records[from.0..record_end];
            let ids = &self.ids[from.1..ids_end];
            from = (record_end, ids_end);
            (record, ids)
        })
    }

    /// Empties it, keeping what it allocated for the next burst.
    fn clear(&mut self) {
        self.records.clear();
        self.ids.clear();
        self.ends.clear();
        self.barriers.clear();
    }
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
    pending: Mutex<Pending>,
    /// Messages `pending` may hold (`[recording] queue`).
    capacity: usize,
    /// Wakes the writer when `pending` stops being empty.
    wake: Notify,
    pub counters: Counters,
    warn: Throttle,
}

pub fn shared(capacity: usize) -> Arc<Shared> {
    Arc::new(Shared {
        active: RwLock::default(),
        pending: Mutex::default(),
        capacity,
        wake: Notify::new(),
        counters: Counters::default(),
        warn: Throttle::new(WARN_EVERY_MS),
    })
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

    /// Queues `done`, answered once the writer has stored everything before it.
    pub fn barrier(&self, done: oneshot::Sender<()>) {
        lock(&self.pending).barriers.push(done);
        self.wake.notify_one();
    }

    /// Hands what is pending to the writer in `taken` (empty), and `taken`'s buffers
    /// to the tap.
    fn take(&self, taken: &mut Pending) {
        std::mem::swap(&mut *lock(&self.pending), taken);
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
        let wants = |a: &&Active| a.filters.iter().any(|f| f.matches(message.topic));
        let Some(first) = active.iter().position(|a| wants(&a)) else {
            return;
        };
        // Each recording's filters are matched once per message (they are most of
        // the tap's cost under a flood).
        let rest = &active[first..];
        let wanting = || rest.iter().take(1).chain(rest.iter().skip(1).filter(wants));
        let mut pending = lock(&self.pending);
        if pending.ends.len() >= self.capacity {
            drop(pending);
            let mut dropped = 0;
            for a in wanting() {
                a.dropped.fetch_add(1, Ordering::Relaxed);
                dropped += 1;
            }
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
            self.warn_dropped();
            return;
        }
        let was_empty = pending.is_empty();
        let p = &mut *pending;
        StoredMessage::encode_routed_into(message, seq, ts_us, &mut p.records);
        p.ids.extend(wanting().map(|a| a.id));
        p.ends.push((p.records.len(), p.ids.len()));
        drop(pending);
        if was_empty {
            self.wake.notify_one();
        }
    }
}

/// The runs a burst adds to each recording: consecutive numbers, at most
/// `run::FILE_MAX_BYTES` each, keyed by their first number.
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
                // A full run for a burst of small records: no reallocation as it fills.
                let mut value = run::start(run::FILE_MAX_BYTES.min(record.len() * 256) + 4);
                run::push(&mut value, record);
                self.runs.push((id, n, n + 1, value));
            }
        }
    }

    /// Adds every run, under its key, to `buffer` (for
    /// [`crate::store::run_files::Change::runs`]).
    pub fn add_to(self, buffer: &mut RunBuffer) {
        for (id, first, _, value) in self.runs {
            buffer.add(layout::message_key(id, first).to_vec(), &value);
        }
    }
}

/// Stores messages until `stop`, then stores what is left and returns. Each burst is
/// stored on the blocking pool: a batch can wait for the disk for seconds, and on an
/// async thread it would hold every connection that thread serves.
pub async fn write(recorder: Arc<Recorder>, stop: CancellationToken) {
    let tap = recorder.tap.clone();
    let group_commit = recorder.store.group_commit();
    let mut burst = Pending::default();
    let mut last_pass: Option<tokio::time::Instant> = None;
    loop {
        // Under a flood, bursts come at most every `group_commit`, each taking what
        // came meanwhile; after a quiet spell the first message waits for nothing.
        if let Some(ready) = last_pass.map(|at| at + group_commit) {
            tokio::select! {
                _ = tokio::time::sleep_until(ready) => {}
                _ = stop.cancelled() => break,
            }
        }
        tap.take(&mut burst);
        if burst.is_empty() {
            last_pass = None;
            tokio::select! {
                _ = tap.wake.notified() => {}
                _ = stop.cancelled() => break,
            }
            // Let the tasks that are ready run first: what they route joins this burst.
            tokio::task::yield_now().await;
            continue;
        }
        burst = store_off_runtime(&recorder, burst).await;
        last_pass = Some(tokio::time::Instant::now());
    }
    tap.take(&mut burst);
    store_off_runtime(&recorder, burst).await;
}

/// Stores `burst` on the blocking pool and hands its emptied buffers back.
async fn store_off_runtime(recorder: &Arc<Recorder>, mut burst: Pending) -> Pending {
    let recorder = recorder.clone();
    let stored = tokio::task::spawn_blocking(move || {
        recorder.store_burst(&mut burst);
        burst
    });
    stored.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the recording writer failed on a burst");
        Pending::default()
    })
}

impl Recorder {
    /// Stores one burst: every message and the figures of every recording it touched,
    /// in one batch. The figures in memory change once the batch is stored (on a
    /// failure the messages count as dropped); the recordings' lock is not held while
    /// sled works, so the API's readers never wait for the disk.
    fn store_burst(&self, burst: &mut Pending) {
        let _writing = lock(&self.writing);
        // The figures each touched recording will have.
        let mut after: HashMap<u64, Figures> = HashMap::new();
        let mut runs = Runs::default();
        let (mut stored, mut bytes) = (0u64, 0u64);
        let mut change = Change::default();
        {
            let recordings = lock(&self.recordings);
            for (record, ids) in burst.messages() {
                // The tap encoded it: these cannot fail on its bytes.
                let (Some(topic), Some(ts_us)) = (
                    StoredMessage::peek_topic(record),
                    StoredMessage::peek_ts_us(record),
                ) else {
                    continue;
                };
                for &id in ids {
                    // Deleted since, or taken by the tap just as it was stopped.
                    let Some(entry) = recordings.get(&id) else {
                        continue;
                    };
                    if entry.meta.stopped_at.is_some_and(|at| ts_us / 1000 > at) {
                        continue;
                    }
                    let figures = after.entry(id).or_insert_with(|| entry.figures.clone());
                    let n = figures.next;
                    figures.count_in(topic, ts_us, record.len());
                    runs.push(id, n, record);
                    stored += 1;
                    bytes += layout::record_bytes(record.len());
                }
            }
            for (id, figures) in after.iter_mut() {
                if let Some(entry) = recordings.get(id) {
                    figures.dropped = entry.dropped.load(Ordering::Relaxed);
                }
                change
                    .inline
                    .push((layout::figures_key(*id).to_vec(), json(&*figures)));
            }
        }
        let mut buffer = self.runs.buffer();
        runs.add_to(&mut buffer);
        change.runs = buffer;
        if !after.is_empty() {
            let written = self.runs.apply(change);
            let mut recordings = lock(&self.recordings);
            match written {
                Ok(()) => {
                    for (id, figures) in after {
                        if let Some(entry) = recordings.get_mut(&id) {
                            entry.figures = figures;
                        }
                    }
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
                    for (id, figures) in after {
                        if let Some(entry) = recordings.get(&id) {
                            let lost = figures.messages.saturating_sub(entry.figures.messages);
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
        for done in burst.barriers.drain(..) {
            let _ = done.send(());
        }
        burst.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn active(id: u64, filters: &[&str]) -> Active {
        Active {
            id,
            filters: filters
                .iter()
                .map(|f| Filter::new(*f).expect("a filter"))
                .collect(),
            dropped: Arc::default(),
        }
    }

    /// Each message lists exactly the recordings whose filters match it, in order,
    /// whichever of them matches first; a full queue counts it dropped for those.
    #[test]
    fn a_message_goes_to_every_recording_that_matches_it_and_no_other() {
        let tap = shared(3);
        tap.set_active(vec![
            active(1, &["other/#"]),
            active(2, &["a/+", "b/#"]),
            active(3, &["nothing"]),
            active(4, &["a/x"]),
            active(5, &["#"]),
        ]);
        let data = RawValue::from_string("1".into()).expect("JSON");
        for topic in ["a/x", "b/y/z", "other/q"] {
            tap.routed(&Publish::test(topic, &data), 1, 1);
        }
        let mut taken = Pending::default();
        tap.take(&mut taken);
        let got: Vec<(String, Vec<u64>)> = taken
            .messages()
            .map(|(record, ids)| {
                let topic = StoredMessage::peek_topic(record).expect("a topic");
                (topic.to_owned(), ids.to_vec())
            })
            .collect();
        let want = |t: &str, ids: &[u64]| (t.to_owned(), ids.to_vec());
        assert_eq!(
            got,
            vec![
                want("a/x", &[2, 4, 5]),
                want("b/y/z", &[2, 5]),
                want("other/q", &[1, 5])
            ]
        );
        // The queue holds 3: the next is dropped, for each recording that wanted it.
        tap.take(&mut Pending::default());
        for topic in ["c", "c", "c", "a/x"] {
            tap.routed(&Publish::test(topic, &data), 1, 1);
        }
        let dropped: Vec<u64> = tap
            .active()
            .iter()
            .map(|a| a.dropped.load(Ordering::Relaxed))
            .collect();
        assert_eq!(dropped, vec![0, 1, 0, 1, 1]);
        assert_eq!(tap.counters.dropped.load(Ordering::Relaxed), 3);
    }
}
