//! Message history: topics matching a `[[history.topics]]` rule keep their last N
//! messages and/or the last T seconds in the local store, so a client that lost its
//! connection can ask for what it missed and continue with no gap and no duplicate.
//!
//! Owns the per-topic *streams* and their on-disk layout. Each stream has a position:
//! an **epoch** and the sequence number of its newest message. The Hub numbers a
//! topic's messages; for a topic with a history it starts from the stream's last
//! number, so numbers keep increasing across restarts. The epoch changes whenever the
//! stream can no longer vouch for its numbers: when it is first created, after an
//! unclean stop (the last flush interval may be lost while clients saw it), when the
//! store's cap evicted messages the rule would have kept, and when a write failed. A
//! client holding a position from another epoch is told its recovery is incomplete.
//!
//! Appends and recoveries are called by the Hub under the topic's lock, so a recovery
//! reads exactly the messages published before the subscription and the live ones
//! follow. An append encodes the message once and puts it on the stream's in-memory
//! *tail*; the writer task ([`History::start`]) takes every tail with something new,
//! at most every [`Store::group_commit`] under a flood, and stores each as *runs* of
//! messages, all in one [`RunTree`] change: the runs' bytes in a run file, the pointers
//! to them in one sled batch. A message stays on its tail until its run is stored, so
//! a recovery reads the store and then the tail and misses nothing. The store syncs and
//! flushes every `[store] flush_interval`; the writer adds at most one group-commit
//! window and the time to store one burst. A tail longer than [`MAX_TAIL`] is stored by
//! the appender itself, which holds the publisher back.
//!
//! Layout, in two trees: `history/messages` holds `topic NUL seq` → a pointer to a run
//! of [`StoredMessage`]s numbered `seq`, `seq + 1`, … ([`crate::store::message::run`])
//! in the tree's run files ([`crate::store::run_files`]; a store of format 3 may still
//! hold the run itself);
//! `history/streams` holds each stream's position, written at a clean stop together
//! with a marker. Without the marker the daemon did not stop cleanly, so the streams
//! are rebuilt from the messages and all start new epochs. Trimming and eviction move a
//! stream's first number at once and delete a run once none of its messages is kept.
//!
//! The history owns its expiry and writer tasks ([`History::start`]); [`History::close`]
//! stops them, waiting for a pass in progress, stores what the tails hold, and from then
//! on nothing trims or evicts, so the saved positions describe exactly the messages the
//! next start finds.

pub mod config;
pub mod metrics;
mod pending;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use std::collections::VecDeque;

use crate::background::Background;
use crate::store::message::run;
use crate::store::run_files::Change;
use crate::store::{
    off_runtime, Evictable, Evicted, Reopened, RunTree, Store, StoreError, StoredMessage, Tree,
};
pub use config::{HistoryConfig, HistoryRule};
use pending::{Copied, Pending};
use switchboard_core::message::Publish;
use switchboard_core::protocol::Since;
use switchboard_core::quiet::Throttle;

/// Messages a tail holds before the appender stores it itself.
pub const MAX_TAIL: usize = 16_384;

/// How often streams with an age limit are trimmed, so idle topics expire too.
pub const EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The key of the clean-stop marker in the streams tree (no topic is empty).
const CLEAN: &[u8] = b"";
const MESSAGES: &str = "history/messages";
const STREAMS: &str = "history/streams";

/// A stream's position: its epoch and the number of its newest message (0: none yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

/// What a recovery found.
#[derive(Debug)]
pub struct Recovery {
    pub position: Position,
    /// False when some of the requested messages can no longer be delivered (trimmed,
    /// evicted, too many, or from another epoch).
    pub complete: bool,
    /// Oldest first.
    pub messages: Vec<StoredMessage>,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct HistoryStats {
    pub streams: u64,
    pub messages: u64,
    pub bytes: u64,
    pub appended: u64,
    pub trimmed: u64,
    pub recoveries: u64,
    pub incomplete_recoveries: u64,
    pub recovered_messages: u64,
    pub write_errors: u64,
}

/// One topic's stream, in memory. Messages `first..=last` are stored (none when
/// `first > last`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stream {
    epoch: u64,
    /// The first number of the current epoch.
    epoch_start: u64,
    first: u64,
    last: u64,
    /// When `first` was stored, µs since the Unix epoch (0 when empty).
    first_ts_us: u64,
    bytes: u64,
    /// In memory only: an epoch under which nothing was numbered before the stream took
    /// a bus's epoch (a `sub` on a topic the box had not read yet answered with it), so
    /// its positions are positions of the current one.
    alias: Option<u64>,
    /// In memory only: what is not stored yet, and the oldest stored run.
    tail: Tail,
}

/// What a stream has that the store does not, and what it will delete there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Tail {
    /// The newest messages, oldest first; each stays until its run is stored.
    pending: Pending,
    /// The highest number put in a run (stored or being stored).
    taken: u64,
    /// The oldest stored run, read once so that trimming message by message does not
    /// read it again.
    head: Option<Head>,
    /// Runs a pop will need next (the oldest message's and its successor's), read from
    /// the store with the stream's lock released ([`History::shed`]).
    ahead: Vec<Head>,
    /// Keys of runs none of whose messages is kept any more.
    doomed: Vec<Vec<u8>>,
    /// On the writer's list.
    dirty: bool,
}

/// A stored run: its key and, oldest first, the number, time and size of each message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    key: Vec<u8>,
    messages: VecDeque<(u64, u64, u64)>,
}

impl Head {
    /// Whether `seq` falls in this run (a hole a failed write left counts as in it).
    fn holds(&self, seq: u64) -> bool {
        self.messages.front().is_some_and(|m| m.0 <= seq)
            && self.messages.back().is_some_and(|m| m.0 >= seq)
    }
}

/// The number whose run popping the stream's oldest message would read from the store:
/// the oldest's own, or its successor's (whose time becomes the stream's).
fn unread(s: &Stream) -> Option<u64> {
    let known = |seq: u64| {
        s.tail.pending.contains(seq)
            || s.tail
                .head
                .as_ref()
                .is_some_and(|h| h.messages.back().is_some_and(|m| m.0 >= seq))
            || s.tail.ahead.iter().any(|h| h.holds(seq))
    };
    if s.is_empty() {
        None
    } else if !known(s.first) {
        Some(s.first)
    } else if s.first < s.last && !known(s.first + 1) {
        Some(s.first + 1)
    } else {
        None
    }
}

/// The bytes a run's key and framing take, counted once per run.
fn run_overhead(key: &[u8]) -> u64 {
    (key.len() + run::OVERHEAD) as u64
}

impl Stream {
    fn new(after: u64) -> Stream {
        Stream {
            epoch: new_epoch(),
            epoch_start: after + 1,
            first: after + 1,
            last: after,
            first_ts_us: 0,
            bytes: 0,
            alias: None,
            tail: Tail::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.first > self.last
    }

    fn count(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first)
    }

    /// Continuity is lost from here on: numbers continue, under a new epoch.
    fn restart_epoch(&mut self) {
        self.epoch = new_epoch();
        self.epoch_start = self.last + 1;
        self.alias = None;
    }

    /// Whether a client's epoch is the stream's current one.
    fn is_current(&self, epoch: &str) -> bool {
        epoch == epoch_text(self.epoch) || self.alias.is_some_and(|a| epoch == epoch_text(a))
    }

    fn position(&self) -> Position {
        Position {
            epoch: epoch_text(self.epoch),
            seq: self.last,
        }
    }

    fn encode(&self) -> Vec<u8> {
        [
            self.epoch,
            self.epoch_start,
            self.first,
            self.last,
            self.first_ts_us,
            self.bytes,
        ]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
    }

    fn decode(bytes: &[u8]) -> Option<Stream> {
        let mut fields = bytes
            .chunks_exact(8)
            .map(|c| c.try_into().map(u64::from_be_bytes).ok());
        let stream = Stream {
            epoch: fields.next()??,
            epoch_start: fields.next()??,
            first: fields.next()??,
            last: fields.next()??,
            first_ts_us: fields.next()??,
            bytes: fields.next()??,
            alias: None,
            tail: Tail::default(),
        };
        (bytes.len() == 48).then_some(stream)
    }
}

fn new_epoch() -> u64 {
    // Never 0, so an epoch is always 16 hex digits of real randomness.
    rand::random::<u64>().max(1)
}

fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// An epoch given as text (by a shared bus); `None` unless it is one `epoch_text` makes.
fn parse_epoch(text: &str) -> Option<u64> {
    let epoch = u64::from_str_radix(text, 16).ok()?;
    (epoch != 0 && epoch_text(epoch) == text).then_some(epoch)
}

/// A topic's stream, shared by the Hub's topic state and the history's table.
struct Entry {
    topic: Box<str>,
    rule: usize,
    stream: Mutex<Stream>,
}

fn lock(entry: &Entry) -> std::sync::MutexGuard<'_, Stream> {
    entry.stream.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every stream and the trees they live in.
pub struct History {
    config: HistoryConfig,
    messages: RunTree,
    positions: Tree,
    store: Store,
    streams: RwLock<HashMap<Box<str>, Arc<Entry>>>,
    /// Bytes of every stored message (keys and values), for the store's cap.
    bytes: AtomicU64,
    stored: AtomicU64,
    appended: AtomicU64,
    trimmed: AtomicU64,
    recoveries: AtomicU64,
    incomplete: AtomicU64,
    recovered: AtomicU64,
    write_errors: AtomicU64,
    /// Set by [`History::close`]; an append after it withdraws the clean marker, and
    /// nothing is trimmed or evicted after it.
    closed: std::sync::atomic::AtomicBool,
    /// The expiry and writer tasks, from [`History::start`] to [`History::close`].
    tasks: Background,
    /// Streams whose tail the writer should store.
    dirty: Mutex<Vec<Arc<Entry>>>,
    /// Wakes the writer.
    wake: tokio::sync::Notify,
    /// Held for a whole write pass, so runs are stored in the order they were taken.
    writing: Mutex<()>,
    /// Table size at which empty, unused streams are forgotten.
    prune_at: std::sync::atomic::AtomicUsize,
}

/// Streams kept before empty, unused ones are forgotten.
const MAX_IDLE_STREAMS: usize = 100_000;

fn message_key(topic: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 9);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Splits a message key into its topic and number.
fn split_key(key: &[u8]) -> Option<(&str, u64)> {
    let (head, seq) = key.split_at_checked(key.len().checked_sub(8)?)?;
    let topic = head.strip_suffix(&[0])?;
    Some((
        std::str::from_utf8(topic).ok()?,
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

/// One message found by [`History::rebuild`], in key order.
fn rebuild_one(
    streams: &mut HashMap<Box<str>, Stream>,
    topic: &str,
    seq: u64,
    ts_us: u64,
    size: u64,
) {
    match streams.get_mut(topic) {
        Some(s) if s.last + 1 == seq => {
            s.last = seq;
            s.bytes += size;
        }
        Some(s) => {
            // A hole (never written before a crash): keep the part after it.
            tracing::warn!(topic, seq, "history: a gap in a stored stream");
            s.first = seq;
            s.last = seq;
            s.first_ts_us = ts_us;
            s.bytes = size;
        }
        None => {
            let mut s = Stream::new(seq.saturating_sub(1));
            s.last = seq;
            s.first_ts_us = ts_us;
            s.bytes = size;
            streams.insert(topic.into(), s);
        }
    }
}

/// A run whose bytes do not read back (its run file damaged or cut short): its messages
/// are gone. One line per window: every recovery across it would log it again.
fn lost_run(topic: &str, error: &crate::store::run_files::Unreadable) {
    static LOST: Throttle = Throttle::per_secs(10);
    if let Some(held_back) = LOST.admit() {
        tracing::warn!(topic = switchboard_core::quiet::clip(topic, 200), %error, held_back, "history: a stored run is lost");
    }
}

/// A stored run, read: every record must be a message, numbered on from the key's.
fn read_run(key: &[u8], first: u64, value: &[u8]) -> Option<Head> {
    let mut messages = VecDeque::new();
    for (i, record) in run::records(value).enumerate() {
        let record = record.ok()?;
        let message = StoredMessage::decode(record).ok()?;
        if message.seq != first + i as u64 {
            return None;
        }
        let size = (record.len() + run::PER_RECORD) as u64;
        messages.push_back((message.seq, message.ts_us, size));
    }
    (!messages.is_empty()).then(|| Head {
        key: key.to_vec(),
        messages,
    })
}

/// A handle on one topic's stream, kept in the Hub's topic state.
#[derive(Clone)]
pub struct Log {
    history: Arc<History>,
    entry: Arc<Entry>,
}

impl History {
    /// Opens the history trees and restores every stream's position: as saved at a
    /// clean stop, or rebuilt from the stored messages (with new epochs) after an
    /// unclean one. Messages of topics no rule covers any more are deleted.
    pub fn open(config: HistoryConfig, store: &Store) -> Result<Arc<History>, StoreError> {
        let messages = RunTree::open(store, MESSAGES)?;
        let positions = store.tree(STREAMS)?;
        let history = History {
            config,
            messages,
            positions,
            store: store.clone(),
            streams: RwLock::default(),
            bytes: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            trimmed: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            incomplete: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            closed: Default::default(),
            tasks: Background::new(),
            dirty: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            writing: Mutex::default(),
            prune_at: std::sync::atomic::AtomicUsize::new(MAX_IDLE_STREAMS),
        };
        let clean = history
            .positions
            .current()?
            .remove(CLEAN)
            .map_err(|e| store.io(e))?
            .is_some();
        let streams = if clean {
            history.load_positions()?
        } else {
            history.rebuild()?
        };
        let mut table = HashMap::with_capacity(streams.len());
        for (topic, stream) in streams {
            let Some(rule) = history.rule_index(&topic) else {
                history.drop_stream(&topic)?;
                continue;
            };
            history.bytes.fetch_add(stream.bytes, Ordering::Relaxed);
            history.stored.fetch_add(stream.count(), Ordering::Relaxed);
            let entry = Entry {
                topic: topic.clone(),
                rule,
                stream: Mutex::new(stream),
            };
            table.insert(topic, Arc::new(entry));
        }
        *history.streams.write().unwrap_or_else(|p| p.into_inner()) = table;
        // The marker is gone from disk before anything is served: a crash from here on
        // is seen as unclean at the next start.
        history
            .positions
            .current()?
            .flush()
            .map_err(|e| store.io(e))?;
        let history = Arc::new(history);
        store.on_reopen(&history);
        Ok(history)
    }

    /// Makes the next open rebuild every stream from the stored messages, under new
    /// epochs, as after a crash: for a store whose saved positions may count messages
    /// it lost (a salvaged one).
    pub fn forget_clean_stop(store: &Store) -> Result<(), StoreError> {
        let positions = store.tree(STREAMS)?;
        let tree = positions.current()?;
        tree.remove(CLEAN).map_err(|e| positions.io(e))?;
        tree.flush().map_err(|e| positions.io(e))?;
        Ok(())
    }

    fn rule_index(&self, topic: &str) -> Option<usize> {
        self.config
            .topics
            .iter()
            .position(|r| r.filter.matches(topic))
    }

    fn rule(&self, entry: &Entry) -> &HistoryRule {
        &self.config.topics[entry.rule]
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    fn load_positions(&self) -> Result<Vec<(Box<str>, Stream)>, StoreError> {
        let mut out = Vec::new();
        for item in self.positions.current()?.iter() {
            let (key, value) = item.map_err(|e| self.store.io(e))?;
            let topic = std::str::from_utf8(&key).ok();
            match (topic, Stream::decode(&value)) {
                (Some(topic), Some(stream)) => out.push((topic.into(), stream)),
                _ => {
                    tracing::warn!("history: unreadable stream position; rebuilding all");
                    return self.rebuild();
                }
            }
        }
        Ok(out)
    }

    /// Recomputes every stream from the stored messages. The numbers continue from
    /// the highest stored (or saved) one, under new epochs.
    fn rebuild(&self) -> Result<Vec<(Box<str>, Stream)>, StoreError> {
        let saved: HashMap<Vec<u8>, u64> = self
            .positions
            .current()?
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((k.to_vec(), Stream::decode(&v)?.last)))
            .collect();
        let mut streams: HashMap<Box<str>, Stream> = HashMap::new();
        let mut corrupt = Vec::new();
        for item in self.messages.current()?.iter() {
            let (key, value) = item.map_err(|e| self.store.io(e))?;
            let value = match self.messages.resolve(&key, value) {
                Ok(value) => value,
                Err(e) => {
                    lost_run(split_key(&key).map_or("", |(topic, _)| topic), &e);
                    corrupt.push(key);
                    continue;
                }
            };
            let run = split_key(&key)
                .and_then(|(topic, first)| Some((topic, read_run(&key, first, &value)?)));
            let Some((topic, run)) = run else {
                corrupt.push(key);
                continue;
            };
            for (i, &(seq, ts_us, size)) in run.messages.iter().enumerate() {
                let size = size + if i == 0 { run_overhead(&key) } else { 0 };
                rebuild_one(&mut streams, topic, seq, ts_us, size);
            }
        }
        // Delete what a hole cut off, and unreadable records.
        let mut cut = 0u64;
        for (topic, s) in &streams {
            let start = message_key(topic, 0);
            let end = message_key(topic, s.first);
            for item in self.messages.current()?.range(start..end) {
                let (key, _) = item.map_err(|e| self.store.io(e))?;
                self.messages.remove(&key)?;
                cut += 1;
            }
        }
        for key in &corrupt {
            self.messages.remove(key)?;
        }
        for (topic, last) in saved {
            if let Ok(topic) = std::str::from_utf8(&topic) {
                if !topic.is_empty() {
                    let s = streams
                        .entry(topic.into())
                        .or_insert_with(|| Stream::new(last));
                    s.last = s.last.max(last);
                    s.first = s.first.min(s.last + 1);
                }
            }
        }
        self.positions
            .current()?
            .clear()
            .map_err(|e| self.store.io(e))?;
        for s in streams.values_mut() {
            s.restart_epoch();
            // Numbers the lost interval may have used are given out again, under the
            // new epoch; the epoch start marks where the new numbering begins.
        }
        if !streams.is_empty() || !corrupt.is_empty() {
            tracing::warn!(
                streams = streams.len(),
                unreadable = corrupt.len(),
                cut,
                "the store was not closed cleanly: history streams rebuilt and given new epochs"
            );
        }
        Ok(streams.into_iter().collect())
    }

    fn drop_stream(&self, topic: &str) -> Result<(), StoreError> {
        self.positions
            .current()?
            .remove(topic.as_bytes())
            .map_err(|e| self.store.io(e))?;
        let mut removed = 0u64;
        for item in self
            .messages
            .current()?
            .range(message_key(topic, 0)..=message_key(topic, u64::MAX))
        {
            let (key, _) = item.map_err(|e| self.store.io(e))?;
            self.messages.remove(&key)?;
            removed += 1;
        }
        tracing::info!(
            topic,
            removed,
            "history: no rule covers this topic any more; its messages were deleted"
        );
        Ok(())
    }

    /// The stream of a topic, created when a rule covers it; None when no rule does.
    pub fn log(self: &Arc<Self>, topic: &str) -> Option<Log> {
        if let Some(entry) = self.read().get(topic) {
            return Some(self.handle(entry.clone()));
        }
        let rule = self.rule_index(topic)?;
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if streams.len() >= self.prune_at.load(Ordering::Relaxed) && !streams.contains_key(topic) {
            // Subscribing to ever-new topics under a broad rule must not grow this table
            // forever: forget streams that hold nothing and that no topic state uses.
            // One that comes back is a new stream, with a new epoch, as it should be.
            streams.retain(|_, e| Arc::strong_count(e) > 1 || !lock(e).is_empty());
            let next = MAX_IDLE_STREAMS.max(streams.len() * 2);
            self.prune_at.store(next, Ordering::Relaxed);
            tracing::debug!(kept = streams.len(), "history: forgot empty streams");
        }
        let entry = streams
            .entry(topic.into())
            .or_insert_with(|| {
                Arc::new(Entry {
                    topic: topic.into(),
                    rule,
                    stream: Mutex::new(Stream::new(0)),
                })
            })
            .clone();
        Some(self.handle(entry))
    }

    fn handle(self: &Arc<Self>, entry: Arc<Entry>) -> Log {
        Log {
            history: self.clone(),
            entry,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Arc<Entry>>> {
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.read().values().cloned().collect()
    }

    /// Gives up a stream's oldest message; returns its size. A message still on the
    /// tail leaves it; a stored one goes when the last message of its run does.
    fn pop_oldest(&self, entry: &Arc<Entry>, s: &mut Stream) -> Result<u64, StoreError> {
        let seq = s.first;
        let tail = &mut s.tail;
        while tail.pending.first().is_some_and(|first| first < seq) {
            tail.pending.pop_front();
        }
        let size = if tail.pending.first() == Some(seq) {
            tail.pending.pop_front().map_or(0, |(_, size)| size)
        } else {
            self.load_head(entry, s, seq)?;
            let mut size = 0;
            if let Some(head) = &mut s.tail.head {
                while head.messages.front().is_some_and(|m| m.0 < seq) {
                    head.messages.pop_front();
                }
                if head.messages.front().is_some_and(|m| m.0 == seq) {
                    size = head.messages.pop_front().map_or(0, |m| m.2);
                }
                if head.messages.is_empty() {
                    let key = std::mem::take(&mut head.key);
                    s.tail.head = None;
                    size += run_overhead(&key);
                    self.doom(entry, s, key);
                }
            }
            size
        };
        s.first += 1;
        s.bytes = s.bytes.saturating_sub(size);
        s.first_ts_us = if s.is_empty() {
            0
        } else {
            self.ts_of(entry, s)?
        };
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.stored.fetch_sub(1, Ordering::Relaxed);
        Ok(size)
    }

    /// When the stream's first message was stored: from its tail or its oldest run.
    fn ts_of(&self, entry: &Arc<Entry>, s: &mut Stream) -> Result<u64, StoreError> {
        let seq = s.first;
        if let Some(ts) = s.tail.pending.ts(seq) {
            return Ok(ts);
        }
        self.load_head(entry, s, seq)?;
        Ok(s.tail
            .head
            .as_ref()
            .and_then(|h| h.messages.iter().find(|m| m.0 == seq))
            .map_or(0, |m| m.1))
    }

    /// Makes the stream's head the stored run holding `seq`, unless it already is.
    fn load_head(&self, entry: &Arc<Entry>, s: &mut Stream, seq: u64) -> Result<(), StoreError> {
        let holds = |h: &Head| h.messages.back().is_some_and(|m| m.0 >= seq);
        if s.tail.head.as_ref().is_some_and(holds) {
            return Ok(());
        }
        if let Some(old) = s.tail.head.take() {
            // Every message of it is behind `seq`, and was counted out when it left the
            // tail (it was being stored then): only the run's own bytes remain.
            self.give_up(entry, s, old.key);
        }
        let run = match s.tail.ahead.iter().position(|h| h.holds(seq)) {
            Some(i) => Some(s.tail.ahead.swap_remove(i)),
            None => off_runtime(|| self.read_head(&entry.topic, seq))?,
        };
        match run {
            Some(run) if holds(&run) => s.tail.head = Some(run),
            // It ends before `seq`, which fell in a hole a failed write left: nothing of
            // it is kept, so it goes, unless it is going already.
            Some(run) if !s.tail.doomed.contains(&run.key) => self.give_up(entry, s, run.key),
            _ => {}
        }
        Ok(())
    }

    /// The stored run that holds `seq`, or else the last one before it. Reads the store:
    /// not to be called under a stream's lock where a publisher may wait for it.
    fn read_head(&self, topic: &str, seq: u64) -> Result<Option<Head>, StoreError> {
        let tree = self.messages.current()?;
        let found = tree
            .range(message_key(topic, 0)..=message_key(topic, seq))
            .next_back()
            .transpose()
            .map_err(|e| self.store.io(e))?;
        Ok(found.and_then(|(key, value)| {
            let (_, first) = split_key(&key)?;
            let value = self
                .messages
                .resolve(&key, value)
                .map_err(|e| lost_run(topic, &e))
                .ok()?;
            read_run(&key, first, &value)
        }))
    }

    /// Pops a stream's oldest messages while `more` says so, for the janitor and the
    /// expiry task. The runs that needs are read from the store with the stream's lock
    /// released: a publisher of the topic waits for that lock, and a read can wait for
    /// sled, which can wait for the disk for seconds (a stalled or saturated disk, or a
    /// batch holding sled's global lock). `popped` is called under the lock after each
    /// stretch of pops with how many it took. Nothing once closed.
    fn shed(
        &self,
        entry: &Arc<Entry>,
        mut more: impl FnMut(&Stream, &Evicted) -> bool,
        mut popped: impl FnMut(&mut Stream, u64),
    ) -> Result<Evicted, StoreError> {
        let mut freed = Evicted::default();
        // A number whose run was read and still is not known (a hole a failed write
        // left): popped under the lock as before rather than read again and again.
        let mut tried = None;
        loop {
            let mut s = lock(entry);
            if self.is_closed() {
                return Ok(freed);
            }
            let before = freed.records;
            let need = loop {
                if s.is_empty() || !more(&s, &freed) {
                    break None;
                }
                if let Some(seq) = unread(&s).filter(|&seq| tried != Some(seq)) {
                    break Some(seq);
                }
                freed.bytes += self.pop_oldest(entry, &mut s)?;
                freed.records += 1;
            };
            if freed.records > before {
                popped(&mut s, freed.records - before);
            }
            let Some(seq) = need else {
                return Ok(freed);
            };
            drop(s);
            tried = Some(seq);
            let run = self.read_head(&entry.topic, seq)?;
            let mut s = lock(entry);
            // What the pops from here need: the oldest message's run and the next.
            let first = s.first;
            s.tail
                .ahead
                .retain(|h| h.messages.back().is_some_and(|m| m.0 >= first));
            s.tail.ahead.truncate(1);
            s.tail.ahead.extend(run.filter(|r| r.holds(seq)));
        }
    }

    /// Gives up a stored run none of whose messages is counted any more: its own bytes
    /// are counted out, and the writer deletes it.
    fn give_up(&self, entry: &Arc<Entry>, s: &mut Stream, key: Vec<u8>) {
        let size = run_overhead(&key);
        s.bytes = s.bytes.saturating_sub(size);
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.doom(entry, s, key);
    }

    /// Deletes a run at the writer's next pass.
    fn doom(&self, entry: &Arc<Entry>, s: &mut Stream, key: Vec<u8>) {
        s.tail.doomed.push(key);
        self.mark_dirty(entry, s);
    }

    /// A message that cannot be kept: logged (one line per window: a full disk fails
    /// every write; the store's health and `history_write_errors` say the rest), and
    /// the stream starts a new epoch. The hole stays inside `first..=last`: a recovery
    /// across it reads short and says it is incomplete.
    fn refuse(
        &self,
        entry: &Entry,
        s: &mut Stream,
        seq: u64,
        error: &dyn std::fmt::Display,
    ) -> bool {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        static FAILED: Throttle = Throttle::per_secs(10);
        if let Some(held_back) = FAILED.admit() {
            tracing::error!(topic = &*entry.topic, seq, error = %error, held_back, "history: write failed; the stream starts a new epoch");
        }
        s.last = seq;
        s.restart_epoch();
        false
    }

    /// A shared bus started the topic's numbering again below the stream's newest
    /// number (Redis lost it, or rolled it back): the old messages go at once, so no
    /// number holds two messages. Called under the stream's lock with the writer held
    /// (`writing`), so none of their runs is in flight; their runs are deleted here,
    /// before a run of the new numbers can take one of their keys.
    fn forget_numbers(&self, entry: &Arc<Entry>, s: &mut Stream) -> Result<(), StoreError> {
        while !s.is_empty() {
            self.pop_oldest(entry, s)?;
        }
        s.tail.pending.clear();
        s.tail.ahead.clear();
        let doomed = std::mem::take(&mut s.tail.doomed);
        for key in doomed {
            self.messages.remove(&key)?;
        }
        s.tail.taken = 0;
        Ok(())
    }

    /// Puts a stream on the writer's list and wakes it.
    fn mark_dirty(&self, entry: &Arc<Entry>, s: &mut Stream) {
        if !s.tail.dirty {
            s.tail.dirty = true;
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.clone());
            self.wake.notify_one();
        }
    }

    /// Drops what a stream's rule no longer keeps: beyond `keep`, older than `max_age`.
    /// Nothing once closed: the saved positions count what is stored.
    fn trim(&self, entry: &Arc<Entry>, s: &mut Stream, now_us: u64) -> Result<(), StoreError> {
        if self.is_closed() {
            return Ok(());
        }
        let rule = self.rule(entry);
        let keep = rule.keep.map_or(u64::MAX, |k| k.get());
        while !s.is_empty() && (s.count() > keep || rule.expired(s.first_ts_us, now_us)) {
            self.pop_oldest(entry, s)?;
            self.trimmed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Starts the writer task, which stores the tails as soon as there is something
    /// on them, and the expiry task, which runs [`History::expire`] every
    /// [`EXPIRE_EVERY`] (none when no rule has an age limit), until [`History::close`].
    pub fn start(self: &Arc<Self>) {
        let history = Arc::downgrade(self);
        let group_commit = self.store.group_commit();
        self.tasks.spawn(move |stop| async move {
            let mut last_pass: Option<tokio::time::Instant> = None;
            loop {
                let Some(woken) = history.upgrade() else {
                    return;
                };
                tokio::select! {
                    _ = woken.wake.notified() => {}
                    _ = stop.cancelled() => return,
                }
                // Under a flood the writer would wake for every few messages, and a
                // pass costs a thread hop, a file write and a sled batch whatever it
                // holds: passes come at most every `group_commit` and take what came
                // meanwhile. After a quiet spell the first message waits for nothing.
                if let Some(ready) = last_pass.map(|at| at + group_commit) {
                    tokio::select! {
                        _ = tokio::time::sleep_until(ready) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                // On the blocking pool: a batch waits for the disk, and on an async
                // thread it would hold every connection that thread serves.
                if let Err(e) = tokio::task::spawn_blocking(move || woken.write_dirty()).await {
                    tracing::error!(error = %e, "history: the writer failed");
                }
                last_pass = Some(tokio::time::Instant::now());
            }
        });
        if self.config.topics.iter().any(|r| r.max_age.is_some()) {
            self.tasks.every(
                self,
                EXPIRE_EVERY,
                "history: expiring old messages",
                History::expire,
            );
        }
    }

    /// Stores every tail on the writer's list, each as one run, in one batch, and
    /// deletes the runs trimming gave up. A failed write loses what it held: the
    /// streams it touched start new epochs (the holes stay inside them, so a recovery
    /// across one reads short and says it is incomplete).
    fn write_dirty(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let entries = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        if entries.is_empty() {
            return;
        }
        let (mut stored, mut removed) = (self.messages.buffer(), Vec::new());
        // Per stream: the run stored (key, first, last) and the runs deleted.
        let mut done = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut s = lock(&entry);
            s.tail.dirty = false;
            // The tail holds its messages as runs of consecutive numbers already:
            // (key, first, last) of each, copied into the burst's buffer.
            let from = (s.tail.taken + 1).max(s.first);
            let runs =
                s.tail
                    .pending
                    .take_runs(from, |seq| message_key(&entry.topic, seq), &mut stored);
            if let Some(&(_, _, b)) = runs.last() {
                s.tail.taken = b;
            }
            let doomed = std::mem::take(&mut s.tail.doomed);
            removed.extend(doomed.iter().cloned());
            drop(s);
            done.push((entry, runs, doomed));
        }
        let written = self.messages.apply(Change {
            runs: stored,
            removed,
            ..Change::default()
        });
        let failed = written.as_ref().err().map(ToString::to_string);
        for (entry, runs, doomed) in done {
            let mut s = lock(&entry);
            if failed.is_none() {
                for (key, _, b) in runs {
                    s.tail.pending.pop_through(b);
                    if b < s.first {
                        // Trimmed whole while it was being stored.
                        self.doom(&entry, &mut s, key);
                    } else {
                        let size = run_overhead(&key);
                        s.bytes += size;
                        self.bytes.fetch_add(size, Ordering::Relaxed);
                    }
                }
                continue;
            }
            s.tail.doomed.extend(doomed);
            let (Some(&(_, a, _)), Some(&(_, _, b))) = (runs.first(), runs.last()) else {
                continue;
            };
            // Those behind the first were counted out when trimmed.
            let kept_from = s.first;
            let (lost, size) = s.tail.pending.remove(a, b, kept_from);
            s.bytes = s.bytes.saturating_sub(size);
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            let _ = self
                .stored
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(lost))
                });
            self.write_errors.fetch_add(lost, Ordering::Relaxed);
            s.restart_epoch();
            static FAILED: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = FAILED.admit() {
                tracing::error!(
                    topic = &*entry.topic,
                    from = a,
                    to = b,
                    error = failed.as_deref().unwrap_or(""),
                    held_back,
                    "history: write failed; the stream starts a new epoch"
                );
            }
        }
    }

    /// Whether [`History::close`] began (read under a stream's lock: close sets it
    /// before it takes any).
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Trims every stream with an age limit; run periodically, so idle topics expire
    /// too.
    pub fn expire(&self) -> Result<(), StoreError> {
        let now = switchboard_core::clock::now_us();
        for entry in self.entries() {
            let rule = self.rule(&entry);
            if rule.max_age.is_some() {
                let keep = rule.keep.map_or(u64::MAX, |k| k.get());
                self.shed(
                    &entry,
                    |s, _| s.count() > keep || rule.expired(s.first_ts_us, now),
                    |_, n| {
                        self.trimmed.fetch_add(n, Ordering::Relaxed);
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Stops the expiry and writer tasks (waiting for a pass in progress), stores what
    /// the tails hold, then saves every stream's position and marks the stop as clean. Called at shutdown, after the last
    /// publish and after the store's janitor stopped, before the store's final flush.
    /// From here on nothing is trimmed or evicted, so no message the positions count
    /// can go missing before the next start.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.tasks.stop().await;
        // Before any stream's lock is taken below: a trim or an eviction that gets a
        // stream's lock after its position was read sees it and does nothing.
        self.closed.store(true, Ordering::SeqCst);
        for entry in self.entries() {
            let mut s = lock(&entry);
            if !s.tail.pending.is_empty() || !s.tail.doomed.is_empty() {
                self.mark_dirty(&entry, &mut s);
            }
        }
        self.write_dirty();
        // The runs' bytes reach the disk before the positions that count them.
        self.messages.sync()?;
        // Positions of forgotten streams go; a crash before the batch lands leaves no
        // marker, so the next start rebuilds from the messages instead.
        self.positions
            .current()?
            .clear()
            .map_err(|e| self.store.io(e))?;
        let mut batch = sled::Batch::default();
        for entry in self.entries() {
            batch.insert(entry.topic.as_bytes(), lock(&entry).encode());
        }
        batch.insert(CLEAN, &[1u8][..]);
        self.positions
            .current()?
            .apply_batch(batch)
            .map_err(|e| self.store.io(e))
    }

    pub fn stats(&self) -> HistoryStats {
        HistoryStats {
            streams: self.read().len() as u64,
            messages: self.stored.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            appended: self.appended.load(Ordering::Relaxed),
            trimmed: self.trimmed.load(Ordering::Relaxed),
            recoveries: self.recoveries.load(Ordering::Relaxed),
            incomplete_recoveries: self.incomplete.load(Ordering::Relaxed),
            recovered_messages: self.recovered.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }

    /// Reads messages `from..=to` of a topic: from the store up to `tail`'s first, then
    /// `tail` (the stream's unstored messages in that range, taken under its lock).
    /// Unreadable ones are skipped and logged.
    fn read_range(&self, topic: &str, from: u64, to: u64, tail: Copied) -> Vec<StoredMessage> {
        let stored_to = tail
            .first
            .map_or(to, |first| first.saturating_sub(1).min(to));
        let mut out = off_runtime(|| self.read_stored(topic, from, stored_to));
        for record in run::frames(&tail.frames) {
            match record.and_then(StoredMessage::decode) {
                Ok(m) => out.push(m),
                Err(e) => tracing::warn!(topic, error = %e, "history: skipped a message"),
            }
        }
        out
    }

    /// Reads the stored messages `from..=to` of a topic.
    fn read_stored(&self, topic: &str, from: u64, to: u64) -> Vec<StoredMessage> {
        if from > to {
            return Vec::new();
        }
        let mut out = Vec::with_capacity((to - from + 1).min(4096) as usize);
        let messages = match self.messages.current() {
            Ok(tree) => tree,
            Err(e) => {
                tracing::error!(topic, error = %e, "history: read failed");
                return out;
            }
        };
        // From the run holding `from`, which may begin before it.
        let start = match messages
            .range(message_key(topic, 0)..=message_key(topic, from))
            .next_back()
        {
            Some(Ok((key, _))) => key.to_vec(),
            _ => message_key(topic, from),
        };
        for item in messages.range(start..=message_key(topic, to)) {
            match item.map_err(|e| self.store.io(e)) {
                Ok((key, value)) => {
                    let value = match self.messages.resolve(&key, value) {
                        Ok(value) => value,
                        Err(e) => {
                            lost_run(topic, &e);
                            continue;
                        }
                    };
                    for record in run::records(&value) {
                        let seq = record
                            .as_ref()
                            .ok()
                            .and_then(|r| StoredMessage::peek_seq(r));
                        if seq.is_some_and(|n| n < from || n > to) {
                            continue;
                        }
                        match record.and_then(StoredMessage::decode) {
                            Ok(m) => out.push(m),
                            Err(e) => {
                                tracing::warn!(topic, error = %e, "history: skipped a message")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(topic, error = %e, "history: read failed");
                    break;
                }
            }
        }
        out
    }
}

impl Log {
    /// The number of the stream's newest message; the Hub continues from it.
    pub fn last_seq(&self) -> u64 {
        lock(&self.entry).last
    }

    pub fn position(&self) -> Position {
        lock(&self.entry).position()
    }

    /// From which number the stream holds every message of `epoch` up to its newest;
    /// `None` when `epoch` is not its current one. Below it a shared bus's copy fills in
    /// (`hub/repair.rs`): a box that was down or cut off has a hole there.
    pub fn contiguous_from(&self, epoch: &str) -> Option<u64> {
        let s = lock(&self.entry);
        s.is_current(epoch).then(|| s.first.max(s.epoch_start))
    }

    /// Keeps a message the Hub just numbered `seq` (under the topic's lock): on the
    /// stream's tail, for the writer. False when it could not be kept (a write after
    /// [`History::close`] failed), which is logged and starts a new epoch: the stream
    /// has a hole from here. A failed write of the writer does the same.
    pub fn append(&self, p: &Publish<'_>, seq: u64, ts_us: u64) -> bool {
        self.append_at(p, None, seq, ts_us)
    }

    /// As [`Log::append`], for a message a shared bus numbered (`[cluster]`): the
    /// stream takes the bus's epoch, so a topic has the same position on every box and
    /// a client resumes on any of them. A hole (a box that missed numbers) stays inside
    /// the stream, where a recovery across it comes back short and says so.
    pub fn append_at(&self, p: &Publish<'_>, epoch: Option<&str>, seq: u64, ts_us: u64) -> bool {
        let history = &self.history;
        let entry = &self.entry;
        let mut s = lock(entry);
        if seq <= s.last && epoch.and_then(parse_epoch).is_some_and(|e| e != s.epoch) {
            drop(s);
            let writing = history.writing.lock().unwrap_or_else(|p| p.into_inner());
            s = lock(entry);
            if let Err(e) = history.forget_numbers(entry, &mut s) {
                tracing::error!(topic = &*entry.topic, error = %e, "history: cannot drop the messages of a restarted numbering");
            }
            drop(writing);
            tracing::warn!(
                topic = &*entry.topic,
                seq,
                "history: the bus started this topic's numbering again under a new epoch; the old messages were dropped"
            );
        }
        // Nothing numbered under the current epoch and this number follows on.
        let unused = s.epoch_start == s.last + 1 && seq == s.last + 1;
        if history.closed.load(Ordering::Relaxed) {
            // Published after the positions were saved: they are stale, so the next
            // start must rebuild them as after a crash.
            let withdrawn = history
                .positions
                .current()
                .and_then(|t| t.remove(CLEAN).map_err(|e| history.store.io(e)));
            if let Err(e) = withdrawn {
                tracing::error!(error = %e, "history: cannot withdraw the clean-stop marker");
            }
        }
        if seq != s.last + 1 {
            // Numbers come from the Hub, which starts from `last_seq`; a jump means
            // messages were numbered without reaching the history.
            if s.is_empty() {
                s.first = seq;
            }
            s.last = seq - 1;
            s.restart_epoch();
        }
        if let Some(epoch) = epoch.and_then(parse_epoch) {
            if epoch != s.epoch {
                s.alias = unused.then_some(s.epoch);
                s.epoch = epoch;
                s.epoch_start = seq;
            }
        }
        let encode = |out: &mut Vec<u8>| StoredMessage::encode_routed_into(p, seq, ts_us, out);
        let size;
        if history.is_closed() {
            // The writer has stopped: store it at once, as a run of its own.
            let key = message_key(&entry.topic, seq);
            let mut value = run::start(0);
            size = run::push_with(&mut value, encode) as u64;
            let written = history
                .messages
                .current()
                .and_then(|t| t.insert(&key, value).map_err(|e| history.store.io(e)));
            if let Err(e) = written {
                return history.refuse(entry, &mut s, seq, &e);
            }
            s.tail.taken = seq;
            s.bytes += run_overhead(&key);
            history
                .bytes
                .fetch_add(run_overhead(&key), Ordering::Relaxed);
        } else if history.store.health().is_failing() {
            // The writer would fail to store it: the publisher hears now that it was
            // not kept, as it did when every append was a write.
            return history.refuse(entry, &mut s, seq, &"the store is failing");
        } else {
            size = s.tail.pending.push(seq, ts_us, encode);
            history.mark_dirty(entry, &mut s);
        }
        if s.is_empty() {
            s.first = seq;
            s.first_ts_us = ts_us;
        }
        s.last = seq;
        s.bytes += size;
        history.bytes.fetch_add(size, Ordering::Relaxed);
        history.stored.fetch_add(1, Ordering::Relaxed);
        history.appended.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = history.trim(entry, &mut s, ts_us) {
            history.write_errors.fetch_add(1, Ordering::Relaxed);
            static FAILED: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = FAILED.admit() {
                tracing::error!(topic = &*entry.topic, error = %e, held_back, "history: trimming failed");
            }
        }
        if s.tail.pending.len() > MAX_TAIL {
            // The writer is behind (the disk is slower than this topic's publishers):
            // store the tails here, holding this publisher back, but not the other
            // connections its thread serves.
            drop(s);
            off_runtime(|| history.write_dirty());
        }
        true
    }

    /// What a subscriber asking for `since` should get before live messages: at most
    /// `[history] max_recovery` messages. Called under the topic's lock.
    pub fn recover(&self, since: &Since) -> Recovery {
        self.recover_page(since, None)
    }

    /// As [`Log::recover`]; with `page`, at most that many of the messages after an
    /// `After` position, oldest first, so a caller can read forward page by page (the
    /// reply is then incomplete while more remain).
    pub fn recover_page(&self, since: &Since, page: Option<u64>) -> Recovery {
        let history = &self.history;
        let max = history.config.max_recovery.get() as u64;
        let (from, to, complete, tail) = {
            let mut s = lock(&self.entry);
            if let Err(e) = history.trim(&self.entry, &mut s, switchboard_core::clock::now_us()) {
                static FAILED: Throttle = Throttle::per_secs(10);
                if let Some(held_back) = FAILED.admit() {
                    tracing::error!(error = %e, held_back, "history: trimming failed");
                }
            }
            let (wanted_from, complete) = match since {
                Since::Last(n) => {
                    let from = (s.last + 1).saturating_sub(*n).max(1);
                    // Complete when all were there, or the stream never held more.
                    (from, from >= s.first || s.first == 1)
                }
                Since::After {
                    seq,
                    epoch: Some(e),
                } if s.is_current(e) && *seq <= s.last => (seq + 1, seq + 1 >= s.first),
                // Numbers without their epoch cannot be vouched for.
                Since::After { seq, epoch: None } => (seq + 1, false),
                // Another epoch: everything since this one began is new to the client.
                Since::After { .. } => (s.epoch_start, false),
            };
            let from = wanted_from.max(s.first);
            let paged = page.filter(|_| matches!(since, Since::After { .. }));
            let (from, to, complete) = match paged {
                // A page: the oldest first, no more than asked nor than `max`.
                Some(n) if s.last >= from => {
                    let to = s.last.min(from + n.min(max).max(1) - 1);
                    let to = if n == 0 { from - 1 } else { to };
                    (from, to, complete && to == s.last)
                }
                // Too many missed: deliver the newest `max`, and say it was not all.
                _ if s.last >= from && s.last - from + 1 > max => (s.last + 1 - max, s.last, false),
                _ => (from, s.last, complete),
            };
            let tail = s.tail.pending.copy(from, to);
            (from, to, complete, tail)
        };
        // Reading after releasing the stream's lock is safe: the topic's lock keeps new
        // messages out, and eviction only removes messages older than `from` or makes
        // the read come back short, which is then reported.
        let messages = history.read_range(&self.entry.topic, from, to, tail);
        let complete = complete && messages.len() as u64 == (to + 1).saturating_sub(from);
        history.recoveries.fetch_add(1, Ordering::Relaxed);
        history
            .recovered
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        if !complete {
            history.incomplete.fetch_add(1, Ordering::Relaxed);
        }
        Recovery {
            position: self.position(),
            complete,
            messages,
        }
    }
}

impl Evictable for History {
    fn stored_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn oldest_us(&self) -> Option<u64> {
        self.entries()
            .iter()
            .map(|e| lock(e))
            .filter(|s| !s.is_empty())
            .map(|s| s.first_ts_us)
            .min()
    }

    /// Evicts from the stream holding the oldest message, which starts a new epoch:
    /// its rule promised to keep what was evicted.
    fn evict_oldest(&self, at_least: u64) -> Result<Evicted, StoreError> {
        let oldest = self
            .entries()
            .into_iter()
            .filter_map(|e| {
                let s = lock(&e);
                (!s.is_empty()).then_some((s.first_ts_us, e.clone()))
            })
            .min_by_key(|(ts, _)| *ts);
        let Some((_, entry)) = oldest else {
            return Ok(Evicted::default());
        };
        // Nothing once closed: the positions are saved, and evicting would make them lie.
        let freed = self.shed(
            &entry,
            |_, freed| freed.bytes < at_least,
            |s, _| s.restart_epoch(),
        )?;
        if freed.records > 0 {
            tracing::info!(
                topic = &*entry.topic,
                evicted = freed.records,
                "history: evicted at the store's cap; the stream starts a new epoch"
            );
        }
        Ok(freed)
    }
}

/// After the store reopened, each stream is checked against what the store holds: what
/// sled had not written when the disk failed is gone, and a stream missing any of its
/// messages starts a new epoch, so a client resuming across the loss is told.
impl Reopened for History {
    fn reopened(&self) {
        if let Err(e) = self.messages.recount() {
            tracing::error!(error = %e, "history: cannot count the run files after the store reopened");
        }
        let (mut streams, mut lost) = (0u64, 0u64);
        for entry in self.entries() {
            let mut s = lock(&entry);
            if s.is_empty() {
                continue;
            }
            match self.resync(&entry, &mut s) {
                Ok(0) => {}
                Ok(n) => {
                    streams += 1;
                    lost += n;
                }
                Err(e) => {
                    tracing::error!(topic = &*entry.topic, error = %e, "history: cannot check a stream after the store reopened");
                }
            }
        }
        if lost > 0 {
            tracing::warn!(
                streams,
                lost,
                "history: messages not written before the store failed are gone; their streams start new epochs"
            );
        }
    }
}

impl History {
    /// Recounts a stream from the store; returns how many of its messages are missing.
    fn resync(&self, entry: &Entry, s: &mut Stream) -> Result<u64, StoreError> {
        let tree = self.messages.current()?;
        let (mut found, mut bytes, mut first) = (0u64, 0u64, None);
        // What is on the tail is counted from there, the rest from the store.
        let tail_from = s.tail.pending.first().unwrap_or(u64::MAX);
        let kept = s.first..=s.last.min(tail_from.saturating_sub(1));
        let start = match tree
            .range(message_key(&entry.topic, 0)..=message_key(&entry.topic, s.first))
            .next_back()
        {
            Some(item) => item.map_err(|e| self.store.io(e))?.0.to_vec(),
            None => message_key(&entry.topic, s.first),
        };
        for item in tree.range(start..=message_key(&entry.topic, s.last)) {
            let (key, value) = item.map_err(|e| self.store.io(e))?;
            let Ok(value) = self.messages.resolve(&key, value) else {
                continue;
            };
            let Some(run) = split_key(&key).and_then(|(_, a)| read_run(&key, a, &value)) else {
                continue;
            };
            let mut counted = false;
            for &(seq, ts, size) in run.messages.iter().filter(|m| kept.contains(&m.0)) {
                first = first.or(Some((seq, Some(ts))));
                found += 1;
                bytes += size;
                counted = true;
            }
            if counted {
                bytes += run_overhead(&key);
            }
        }
        for (seq, ts, size) in s
            .tail
            .pending
            .sizes()
            .filter(|&(seq, ..)| seq >= s.first && seq <= s.last)
        {
            first = first.or(Some((seq, Some(ts))));
            found += 1;
            bytes += size;
        }
        s.tail.head = None;
        s.tail.ahead.clear();
        let missing = s.count().saturating_sub(found);
        if missing == 0 {
            return Ok(0);
        }
        let (first, ts) = first.unwrap_or((s.last + 1, None));
        self.bytes
            .fetch_sub(s.bytes.saturating_sub(bytes), Ordering::Relaxed);
        // `missing` counts the holes of writes that failed too, which were never counted.
        let _ = self
            .stored
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(missing))
            });
        s.first = first;
        s.first_ts_us = ts.unwrap_or(0);
        s.bytes = bytes;
        s.restart_epoch();
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn history(dir: &std::path::Path) -> Arc<History> {
        let store = crate::store::open_when_free(dir, &StoreConfig::default());
        let config: HistoryConfig =
            toml::from_str("[[topics]]\nfilter = \"t/#\"\nkeep = 10\n").unwrap();
        History::open(config, &store).unwrap()
    }

    fn append(log: &Log, seq: u64) {
        let data = serde_json::value::RawValue::from_string(seq.to_string()).unwrap();
        log.append(&Publish::test("t/kept", &data), seq, seq * 1000);
    }

    #[test]
    fn empty_unused_streams_are_forgotten_but_not_those_holding_messages() {
        let dir = tempfile::tempdir().unwrap();
        let h = history(dir.path());
        append(&h.log("t/kept").unwrap(), 1);
        let held = h.log("t/held").unwrap();
        for i in 0..MAX_IDLE_STREAMS + 1 {
            h.log(&format!("t/{i}")).unwrap();
        }
        assert!(h.log("other/x").is_none(), "no rule, no stream");
        let streams = h.stats().streams;
        assert!(streams < 10, "{streams} streams kept");
        assert_eq!(h.log("t/kept").unwrap().last_seq(), 1);
        assert!(h.read().contains_key("t/held"));
        drop(held);
    }

    #[tokio::test]
    async fn nothing_is_evicted_or_trimmed_once_the_positions_are_saved() {
        let dir = tempfile::tempdir().unwrap();
        let h = history(dir.path());
        let log = h.log("t/kept").unwrap();
        for seq in 1..=3 {
            append(&log, seq);
        }
        h.close().await.unwrap();
        assert_eq!(h.evict_oldest(u64::MAX).unwrap(), Evicted::default());
        h.expire().unwrap();
        assert_eq!(h.stats().messages, 3);
        assert_eq!(stored_seqs(&h), [1, 2, 3]);
    }

    /// Every message number in the store, in key order.
    fn stored_seqs(h: &History) -> Vec<u64> {
        let mut out = Vec::new();
        for item in h.messages.current().unwrap().iter() {
            let (key, value) = item.unwrap();
            let value = h.messages.resolve(&key, value).expect("a readable run");
            let (_, first) = split_key(&key).unwrap();
            let run = read_run(&key, first, &value).expect("a readable run");
            out.extend(run.messages.iter().map(|m| m.0));
        }
        out
    }

    fn recovered(log: &Log, n: u64) -> Vec<u64> {
        let r = log.recover(&Since::Last(n));
        r.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_recovery_reads_the_tail_and_the_store_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let h = history(dir.path());
        let log = h.log("t/kept").unwrap();
        for seq in 1..=4 {
            append(&log, seq);
        }
        // Nothing stored yet: all four come from the tail.
        assert!(stored_seqs(&h).is_empty());
        assert_eq!(recovered(&log, 10), [1, 2, 3, 4]);
        h.write_dirty();
        assert_eq!(stored_seqs(&h), [1, 2, 3, 4]);
        for seq in 5..=7 {
            append(&log, seq);
        }
        // Half stored, half on the tail.
        assert_eq!(recovered(&log, 10), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(recovered(&log, 2), [6, 7]);
        h.write_dirty();
        assert_eq!(recovered(&log, 10), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(h.messages.current().unwrap().len(), 2, "two runs");
    }

    #[test]
    fn trimming_deletes_whole_runs_and_counts_bytes_as_they_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let h = history(dir.path());
        let log = h.log("t/kept").unwrap();
        // Runs of 7 with keep = 10: trimming goes through the tail and through runs.
        for seq in 1..=100 {
            append(&log, seq);
            if seq % 7 == 0 {
                h.write_dirty();
            }
        }
        h.write_dirty();
        assert_eq!(recovered(&log, 20), (91..=100).collect::<Vec<_>>());
        let stored = stored_seqs(&h);
        assert!(
            stored.len() < 20,
            "runs behind the first were deleted: {stored:?}"
        );
        assert!(stored.ends_with(&(91..=100).collect::<Vec<_>>()));
        // The bytes counted are those of the runs that hold what is kept.
        let mut bytes = 0;
        for item in h.messages.current().unwrap().iter() {
            let (key, value) = item.unwrap();
            let value = h.messages.resolve(&key, value).unwrap();
            let (_, first) = split_key(&key).unwrap();
            let run = read_run(&key, first, &value).unwrap();
            bytes += run_overhead(&key);
            bytes += run
                .messages
                .iter()
                .filter(|m| m.0 >= 91)
                .map(|m| m.2)
                .sum::<u64>();
        }
        assert_eq!(h.stats().bytes, bytes);
        assert_eq!(h.stats().messages, 10);
    }

    #[tokio::test]
    async fn after_a_crash_the_streams_are_rebuilt_from_the_runs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = history(dir.path());
            let log = h.log("t/kept").unwrap();
            for seq in 1..=8 {
                append(&log, seq);
                if seq % 3 == 0 {
                    h.write_dirty();
                }
            }
            // 7 and 8 were never stored: the crash takes them.
            h.store.flush().await.unwrap();
        }
        let h = history(dir.path());
        let log = h.log("t/kept").unwrap();
        assert_eq!(log.last_seq(), 6);
        assert_eq!(recovered(&log, 10), [1, 2, 3, 4, 5, 6]);
        assert_eq!(h.stats().bytes, {
            let mut bytes = 0;
            for item in h.messages.current().unwrap().iter() {
                let (key, value) = item.unwrap();
                let value = h.messages.resolve(&key, value).unwrap();
                bytes += (key.len() + value.len()) as u64;
            }
            bytes
        });
    }

    #[tokio::test]
    async fn a_clean_close_keeps_positions_and_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let (epoch, seq) = {
            let h = history(dir.path());
            let log = h.log("t/kept").unwrap();
            for seq in 1..=3 {
                append(&log, seq);
            }
            h.close().await.unwrap();
            let p = log.position();
            (p.epoch, p.seq)
        };
        let h = history(dir.path());
        let p = h.log("t/kept").unwrap().position();
        assert_eq!((p.epoch, p.seq), (epoch, seq));
        let r = h.log("t/kept").unwrap().recover(&Since::Last(10));
        assert!(r.complete);
        assert_eq!(
            r.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
