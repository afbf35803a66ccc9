//! Recordings and replays: named captures of topic filters kept in the local store,
//! played back later through the Hub like any publisher. docs/recordings.md is the
//! user's side of this.
//!
//! The path of a recorded message: the Hub calls the recorder's [`tap`] under the
//! topic's lock; it matches the topic against the running recordings and appends one
//! encoded [`StoredMessage`] record to a buffer of at most `[recording] queue` messages
//! it shares with the writer, counting the message as dropped when the buffer is full,
//! so recording never slows delivery. The writer task swaps the buffer out a burst at
//! a time and stores each burst with one sled batch ([`layout`]; the runs' bytes go to
//! run files first, [`crate::store::run_files`]), on the blocking pool, so a stalled
//! disk holds back no connection.
//!
//! Consistency after a crash: a recording's figures (count, bytes, per-topic counts,
//! time span) live in the same tree as its messages and are rewritten in the same
//! batch as the pointers to the messages they count. sled applies a batch atomically, also across a
//! `kill -9`, so what the API reports always equals what is stored, with no scan at
//! open; a crash loses at most the last `[store] flush_interval` of both together.
//! Eviction ([`evict`]) and deletion keep the same rule.
//!
//! Recordings still running when the daemon stops keep running after it starts again.
//! This module owns the `recordings` tree and nothing else in the store.

pub mod config;
mod evict;
pub mod export;
mod layout;
pub mod metrics;
pub mod replay;
mod tap;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;

use crate::hub::Hub;
use crate::store::message::run;
use crate::store::run_files::Change;
use crate::store::{off_runtime, Reopened, RunTree, Store, StoreError, StoredMessage};
use layout::{Figures, Meta};
use switchboard_core::clock::now_ms;
use switchboard_core::protocol::ErrorCode;
use switchboard_core::topic::{self, Filter};

pub use config::RecordingConfig;
pub use replay::{ReplayRequest, ReplayView};

/// Longest name, notes and filter list a recording may have.
pub const MAX_NAME: usize = 200;
pub const MAX_NOTES: usize = 4096;
pub const MAX_FILTERS: usize = 100;

/// Why a recording or replay request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no recording {0}")]
    NoRecording(u64),
    #[error("no replay {0}")]
    NoReplay(u64),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RecorderError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RecorderError::Invalid(_) => ErrorCode::BadRequest,
            RecorderError::Forbidden(_) => ErrorCode::Forbidden,
            RecorderError::NoRecording(_) | RecorderError::NoReplay(_) => ErrorCode::NotFound,
            RecorderError::Conflict(_) => ErrorCode::Conflict,
            RecorderError::Store(_) => ErrorCode::Internal,
        }
    }

    fn sled(store: &Store) -> impl Fn(sled::Error) -> RecorderError + '_ {
        |e| RecorderError::Store(store.io(e))
    }
}

/// What starts a recording.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub name: String,
    #[serde(default)]
    pub notes: String,
    pub topics: Vec<String>,
}

/// A recording as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingView {
    pub id: u64,
    pub name: String,
    pub notes: String,
    /// The topic filters recorded.
    pub topics: Vec<String>,
    pub owner: String,
    /// `recording` or `stopped`.
    pub state: &'static str,
    pub imported: bool,
    /// Unix ms.
    pub started_at: u64,
    pub stopped_at: Option<u64>,
    pub messages: u64,
    /// Bytes of stored records.
    pub bytes: u64,
    /// `ts` in µs of the first and last stored message, and the span between them.
    pub first_ts: Option<u64>,
    pub last_ts: Option<u64>,
    pub span_us: u64,
    /// Messages left out because the writer was behind.
    pub dropped: u64,
    /// Messages removed by the store's cap (`[store] max_bytes`).
    pub evicted: u64,
    /// Stored messages by topic; only when one recording is asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_topic: Option<BTreeMap<String, u64>>,
}

/// One recording in memory: what it is and what it holds, mirroring the store.
struct Entry {
    meta: Meta,
    figures: Figures,
    /// Counted by the tap; copied into `figures.dropped` when written.
    dropped: Arc<AtomicU64>,
}

impl Entry {
    fn view(&self, id: u64, by_topic: bool) -> RecordingView {
        let f = &self.figures;
        RecordingView {
            id,
            name: self.meta.name.clone(),
            notes: self.meta.notes.clone(),
            topics: self.meta.topics.clone(),
            owner: self.meta.owner.clone(),
            state: if self.meta.stopped_at.is_some() {
                "stopped"
            } else {
                "recording"
            },
            imported: self.meta.imported,
            started_at: self.meta.started_at,
            stopped_at: self.meta.stopped_at,
            messages: f.messages,
            bytes: f.bytes,
            first_ts: f.first_us,
            last_ts: f.last_us,
            span_us: match (f.first_us, f.last_us) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => 0,
            },
            dropped: self.dropped.load(Ordering::Relaxed).max(f.dropped),
            evicted: f.evicted,
            by_topic: by_topic.then(|| f.topics.clone()),
        }
    }

    fn visible_to(&self, caller: &Principal) -> bool {
        caller.grants.is_all() || self.meta.owner == caller.identity()
    }
}

/// Daemon-wide figures, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub recorded: AtomicU64,
    pub recorded_bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub replayed: AtomicU64,
}

/// Everything about recordings and replays.
pub struct Recorder {
    store: Store,
    /// The `recordings` tree; messages' runs live in files beside it ([`RunTree`]).
    runs: RunTree,
    /// Every recording; held for moments only, never while sled works, so the API's
    /// readers never wait for the disk.
    recordings: Mutex<BTreeMap<u64, Entry>>,
    /// Held by whoever writes the tree (the writer, eviction, starting, stopping and
    /// deleting), across the write and the change in memory that follows it, so the
    /// figures in memory, the figures stored and the messages stored change together.
    /// Taken before `recordings`, never while holding it.
    writing: Mutex<()>,
    tap: Arc<tap::Shared>,
    /// Whether the writer task was started (once).
    started: AtomicBool,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop_writer: CancellationToken,
    hub: Arc<Hub>,
    replays: replay::Replays,
    progress_interval: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// Loads every recording, attaches to the Hub (recordings that were running go on
    /// running) and registers with the store's cap. Messages queue from now on;
    /// [`Recorder::start`] starts storing them.
    pub fn open(
        store: &Store,
        hub: &Arc<Hub>,
        config: &RecordingConfig,
    ) -> Result<Arc<Recorder>, StoreError> {
        let runs = RunTree::open(store, "recordings")?;
        let mut recordings = BTreeMap::new();
        let current = runs.current()?;
        for item in current.scan_prefix([b'r']) {
            let (key, value) = item.map_err(|e| store.io(e))?;
            let Some(id) = layout::id_of_meta(&key) else {
                continue;
            };
            let meta: Meta = match serde_json::from_slice(&value) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(recording = id, error = %e, "unreadable recording; skipped");
                    continue;
                }
            };
            let figures: Figures = current
                .get(layout::figures_key(id))
                .map_err(|e| store.io(e))?
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default();
            let dropped = Arc::new(AtomicU64::new(figures.dropped));
            recordings.insert(
                id,
                Entry {
                    meta,
                    figures,
                    dropped,
                },
            );
        }
        let tap = tap::shared(config.queue.get());
        let recorder = Arc::new(Recorder {
            store: store.clone(),
            runs,
            recordings: Mutex::new(recordings),
            writing: Mutex::default(),
            tap: tap.clone(),
            started: AtomicBool::new(false),
            writer: Mutex::new(None),
            stop_writer: CancellationToken::new(),
            hub: hub.clone(),
            replays: replay::Replays::default(),
            progress_interval: config.progress_interval,
        });
        recorder.refresh_active(&lock(&recorder.recordings));
        let running = tap.active_count();
        if running > 0 {
            tracing::info!(recordings = running, "recordings resumed");
        }
        hub.add_tap(tap);
        store.quota().register(&recorder);
        store.on_reopen(&recorder);
        Ok(recorder)
    }

    /// After the store reopened: each recording's figures become what is stored, and
    /// messages counted but not written before the failure count as dropped.
    fn resync(&self) -> Result<(), StoreError> {
        let _writing = lock(&self.writing);
        let metas: Vec<(u64, Vec<u8>)> = lock(&self.recordings)
            .iter()
            .map(|(id, e)| (*id, json(&e.meta)))
            .collect();
        let tree = self.runs.current()?;
        for (id, meta) in metas {
            let stored: Option<Figures> = tree
                .get(layout::figures_key(id))
                .map_err(|e| self.store.io(e))?
                .and_then(|v| serde_json::from_slice(&v).ok());
            let stored = match stored {
                Some(figures) => figures,
                None => {
                    // Started just before the failure: nothing of it reached the disk.
                    let mut batch = sled::Batch::default();
                    batch.insert(&layout::meta_key(id), meta);
                    batch.insert(&layout::figures_key(id), json(&Figures::default()));
                    tree.apply_batch(batch).map_err(|e| self.store.io(e))?;
                    Figures::default()
                }
            };
            let mut recordings = lock(&self.recordings);
            let Some(entry) = recordings.get_mut(&id) else {
                continue;
            };
            let lost = entry.figures.messages.saturating_sub(stored.messages);
            if lost > 0 {
                tracing::warn!(recording = id, lost, "recorded messages not written before the store failed are gone; counted as dropped");
            }
            entry.dropped.fetch_add(lost, Ordering::Relaxed);
            entry.figures = stored;
            entry.figures.dropped = entry.dropped.load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// Runs `f` on the tree as its one writer, and off the async threads: it may wait
    /// for another writer, and sled may wait for the disk.
    fn write<R>(
        &self,
        f: impl FnOnce(&sled::Tree) -> Result<R, RecorderError>,
    ) -> Result<R, RecorderError> {
        off_runtime(|| {
            let _writing = lock(&self.writing);
            f(&*self.runs.current()?)
        })
    }

    /// Starts the writer task.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let writer = tokio::spawn(tap::write(self.clone(), self.stop_writer.clone()));
        *lock(&self.writer) = Some(writer);
    }

    /// Stops every replay, stores what is queued and flushes. Call after the Hub is quiet.
    pub async fn stop(&self) {
        self.replays.stop_all();
        self.stop_writer.cancel();
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            if let Err(e) = writer.await {
                tracing::error!(error = %e, "the recording writer task failed");
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "cannot flush the store");
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.tap.counters
    }

    /// Recordings running now.
    pub fn active(&self) -> usize {
        self.tap.active_count()
    }

    /// Replays running or paused now.
    pub fn running_replays(&self) -> usize {
        self.replays.running()
    }

    /// Tells the tap which recordings run, after a change.
    fn refresh_active(&self, recordings: &BTreeMap<u64, Entry>) {
        let active = recordings
            .iter()
            .filter(|(_, e)| e.meta.stopped_at.is_none())
            .map(|(id, e)| tap::Active {
                id: *id,
                filters: e
                    .meta
                    .topics
                    .iter()
                    .filter_map(|f| Filter::new(f.as_str()).ok())
                    .collect(),
                dropped: e.dropped.clone(),
            })
            .collect();
        self.tap.set_active(active);
    }

    /// Starts recording `topics`, which the caller must be allowed to subscribe to.
    pub fn start_recording(
        &self,
        caller: &Principal,
        request: StartRequest,
    ) -> Result<RecordingView, RecorderError> {
        let meta = validated_meta(caller, request.name, request.notes, request.topics)?;
        for filter in &meta.topics {
            caller
                .grants
                .check_subscribe(filter)
                .map_err(|e| RecorderError::Forbidden(e.to_string()))?;
        }
        let entry = Entry {
            meta,
            figures: Figures::default(),
            dropped: Arc::default(),
        };
        let id = self.write(|tree| {
            let id = self.store.next_id()?;
            let mut batch = sled::Batch::default();
            batch.insert(&layout::meta_key(id), json(&entry.meta));
            batch.insert(&layout::figures_key(id), json(&entry.figures));
            tree.apply_batch(batch)
                .map_err(RecorderError::sled(&self.store))?;
            Ok(id)
        })?;
        let view = entry.view(id, false);
        let mut recordings = lock(&self.recordings);
        recordings.insert(id, entry);
        self.refresh_active(&recordings);
        tracing::info!(recording = id, name = %view.name, topics = ?view.topics, owner = %view.owner, "recording started");
        Ok(view)
    }

    /// Stops a recording; returns once every message it took is stored. Stopping a
    /// stopped recording changes nothing.
    pub async fn stop_recording(
        &self,
        caller: &Principal,
        id: u64,
    ) -> Result<RecordingView, RecorderError> {
        let stopped = self.write(|tree| {
            let meta = {
                let mut recordings = lock(&self.recordings);
                let entry = visible(&mut recordings, caller, id)?;
                if entry.meta.stopped_at.is_some() {
                    return Ok(Some(entry.view(id, false)));
                }
                let mut meta = entry.meta.clone();
                meta.stopped_at = Some(now_ms());
                meta
            };
            tree.insert(layout::meta_key(id), json(&meta))
                .map_err(RecorderError::sled(&self.store))?;
            let mut recordings = lock(&self.recordings);
            if let Some(entry) = recordings.get_mut(&id) {
                entry.meta = meta;
            }
            self.refresh_active(&recordings);
            Ok(None)
        })?;
        if let Some(view) = stopped {
            return Ok(view);
        }
        self.barrier().await;
        tracing::info!(recording = id, "recording stopped");
        self.show(caller, id)
    }

    /// Waits until the writer has stored everything queued before this call.
    async fn barrier(&self) {
        if lock(&self.writer).is_none() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.tap.barrier(tx);
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    }

    /// Every recording the caller may see (the admin sees all), oldest first.
    pub fn list(&self, caller: &Principal) -> Vec<RecordingView> {
        lock(&self.recordings)
            .iter()
            .filter(|(_, e)| e.visible_to(caller))
            .map(|(id, e)| e.view(*id, false))
            .collect()
    }

    /// One recording, with its per-topic counts.
    pub fn show(&self, caller: &Principal, id: u64) -> Result<RecordingView, RecorderError> {
        let mut recordings = lock(&self.recordings);
        Ok(visible(&mut recordings, caller, id)?.view(id, true))
    }

    /// Deletes a recording and every message it holds.
    pub fn delete(&self, caller: &Principal, id: u64) -> Result<(), RecorderError> {
        self.write(|tree| {
            visible(&mut lock(&self.recordings), caller, id)?;
            let mut removed = vec![
                layout::meta_key(id).to_vec(),
                layout::figures_key(id).to_vec(),
            ];
            for key in tree.scan_prefix(layout::messages_prefix(id)).keys() {
                removed.push(key.map_err(RecorderError::sled(&self.store))?.to_vec());
            }
            self.runs.apply(Change {
                removed,
                ..Change::default()
            })?;
            let mut recordings = lock(&self.recordings);
            recordings.remove(&id);
            self.refresh_active(&recordings);
            Ok(())
        })?;
        tracing::info!(recording = id, "recording deleted");
        Ok(())
    }

    /// Up to `limit` messages of a recording from message number `from` on, with the
    /// number of each.
    pub(crate) fn messages(
        &self,
        id: u64,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredMessage)>, StoreError> {
        let tree = self.runs.current()?;
        // From the run holding `from`, which may begin before it.
        let start = match tree
            .range(layout::message_key(id, 0)..=layout::message_key(id, from))
            .next_back()
        {
            Some(item) => item.map_err(|e| self.store.io(e))?.0.to_vec(),
            None => layout::message_key(id, from).to_vec(),
        };
        let end = layout::message_key(id, u64::MAX).to_vec();
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in tree.range(start..=end) {
            let (key, value) = item.map_err(|e| self.store.io(e))?;
            let first = layout::number_of(&key).unwrap_or(u64::MAX);
            let value = match self.runs.resolve(&key, value) {
                Ok(value) => value,
                Err(e) => {
                    static LOST: switchboard_core::quiet::Throttle =
                        switchboard_core::quiet::Throttle::per_secs(10);
                    if let Some(held_back) = LOST.admit() {
                        tracing::error!(recording = id, first, error = %e, held_back, "a run of recorded messages is lost; skipped");
                    }
                    continue;
                }
            };
            for (i, record) in run::records(&value).enumerate() {
                let n = first.saturating_add(i as u64);
                if n < from {
                    continue;
                }
                if out.len() >= limit {
                    return Ok(out);
                }
                match record.and_then(StoredMessage::decode) {
                    Ok(m) => out.push((n, m)),
                    Err(e) => {
                        tracing::error!(recording = id, n, error = %e, "unreadable recorded message; skipped")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Stores a whole recording at once (import): every message and its figures, in
    /// batches; on a failure what was written is removed again.
    fn insert_complete(
        &self,
        meta: Meta,
        messages: &[StoredMessage],
    ) -> Result<RecordingView, RecorderError> {
        let id = self.store.next_id()?;
        let mut figures = Figures::default();
        let written = (|| -> Result<(), StoreError> {
            for chunk in messages.chunks(tap::BURST) {
                let mut runs = tap::Runs::default();
                for m in chunk {
                    let record = m.encode();
                    figures.count_in(&m.topic, m.ts_us, record.len());
                    runs.push(id, figures.next - 1, &record);
                }
                let mut buffer = self.runs.buffer();
                runs.add_to(&mut buffer);
                self.runs.apply(Change {
                    runs: buffer,
                    ..Change::default()
                })?;
            }
            // Figures and meta last: until they exist, nothing reads the messages.
            self.runs.apply(Change {
                inline: vec![
                    (layout::figures_key(id).to_vec(), json(&figures)),
                    (layout::meta_key(id).to_vec(), json(&meta)),
                ],
                ..Change::default()
            })
        })();
        if let Err(e) = written {
            let removed = self
                .runs
                .current()
                .map(|tree| {
                    tree.scan_prefix(layout::messages_prefix(id))
                        .keys()
                        .flatten()
                        .map(|k| k.to_vec())
                        .collect()
                })
                .unwrap_or_default();
            let removing = self.runs.apply(Change {
                removed,
                ..Change::default()
            });
            if let Err(e) = removing {
                tracing::error!(recording = id, error = %e, "cannot remove a failed import");
            }
            return Err(RecorderError::Store(e));
        }
        let entry = Entry {
            meta,
            figures,
            dropped: Arc::default(),
        };
        let view = entry.view(id, true);
        lock(&self.recordings).insert(id, entry);
        Ok(view)
    }
}

impl Figures {
    /// Counts one more message, stored as `n = next` with a value of `len` bytes.
    fn count_in(&mut self, topic: &str, ts_us: u64, len: usize) {
        self.next += 1;
        self.messages += 1;
        self.bytes += layout::record_bytes(len);
        self.first_us.get_or_insert(ts_us);
        self.last_us = Some(self.last_us.map_or(ts_us, |l| l.max(ts_us)));
        // No copy of the topic for one already counted.
        match self.topics.get_mut(topic) {
            Some(n) => *n += 1,
            None => {
                self.topics.insert(topic.to_owned(), 1);
            }
        }
    }
}

/// A recording's metadata from a request, checked.
fn validated_meta(
    caller: &Principal,
    name: String,
    notes: String,
    topics: Vec<String>,
) -> Result<Meta, RecorderError> {
    let invalid = |m: String| Err(RecorderError::Invalid(m));
    // Counted in characters, as JSON Schema counts `maxLength`.
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return invalid(format!("`name` must be 1 to {MAX_NAME} characters"));
    }
    if notes.chars().count() > MAX_NOTES {
        return invalid(format!("`notes` must be at most {MAX_NOTES} characters"));
    }
    if topics.is_empty() || topics.len() > MAX_FILTERS {
        return invalid(format!("`topics` must hold 1 to {MAX_FILTERS} filters"));
    }
    for filter in &topics {
        if let Err(e) = topic::validate_filter(filter) {
            return invalid(format!("`{filter}`: {e}"));
        }
    }
    Ok(Meta {
        name,
        notes,
        topics,
        owner: caller.identity(),
        started_at: now_ms(),
        stopped_at: None,
        imported: false,
    })
}

/// The entry if it exists and the caller may see it; another's recording is "not
/// found", so ids do not reveal what others record.
fn visible<'a>(
    recordings: &'a mut BTreeMap<u64, Entry>,
    caller: &Principal,
    id: u64,
) -> Result<&'a mut Entry, RecorderError> {
    recordings
        .get_mut(&id)
        .filter(|e| e.visible_to(caller))
        .ok_or(RecorderError::NoRecording(id))
}

impl Reopened for Recorder {
    fn reopened(&self) {
        if let Err(e) = self.runs.recount() {
            tracing::error!(error = %e, "recordings: cannot count the run files after the store reopened");
        }
        if let Err(e) = self.resync() {
            tracing::error!(error = %e, "recordings: cannot check the figures after the store reopened");
        }
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests;
