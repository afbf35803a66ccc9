//! The Hub's figures: live counters bumped on the data path, and the [`Stats`] snapshot
//! read for `/healthz` and metrics.
//!
//! Owns `Counters` (relaxed atomics only: bumping one never takes a lock) and
//! [`Hub::stats`], which takes the `clients`, index and `topics` read locks one at a
//! time, only to count. What counts as published, delivered or dropped is decided where
//! it happens (routing, topics, direct messages); this file only holds and reads.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{read, Hub};
use switchboard_core::message::Origin;

/// Live counters, cheap enough to bump on every delivery.
#[derive(Default)]
pub(super) struct Counters {
    /// Indexed by `Origin as usize`: one add per publish, as before the split.
    pub(super) published: [AtomicU64; Origin::ALL.len()],
    pub(super) publishes_forbidden: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) slow_closed: AtomicU64,
    /// Frames discarded with the queues of connections closed as slow consumers.
    pub(super) slow_discarded: AtomicU64,
    pub(super) direct: AtomicU64,
    pub(super) retained: AtomicU64,
    /// The part of `retained` on `$` topics (the server's notices), which does not count
    /// against [`MAX_RETAINED`](super::topics::MAX_RETAINED).
    pub(super) retained_system: AtomicU64,
    pub(super) retained_refused: AtomicU64,
    pub(super) forbidden: AtomicU64,
}

/// A snapshot of the Hub's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub connections: usize,
    pub subscriptions: usize,
    pub topics: usize,
    pub published: u64,
    /// `published` by the way messages came in, in the order of [`Origin::ALL`].
    pub published_by_origin: [u64; Origin::ALL.len()],
    /// Publishes refused by permissions (also counted in `forbidden`).
    pub publishes_forbidden: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub slow_consumer_closes: u64,
    pub slow_consumer_discarded: u64,
    pub direct_messages: u64,
    pub retained: u64,
    pub retained_refused: u64,
    /// Requests refused by permissions, from any way in.
    pub forbidden: u64,
}

impl Hub {
    /// Counts a connection closed as a slow consumer by its own side: a client that does
    /// not read the replies it asked for (carried HTTP) is closed by its connection, not
    /// by a publish.
    pub fn count_slow_close(&self) {
        self.counters.slow_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the figures.
    pub fn stats(&self) -> Stats {
        let published_by_origin = self
            .counters
            .published
            .each_ref()
            .map(|c| c.load(Ordering::Relaxed));
        Stats {
            connections: read(&self.clients).len(),
            subscriptions: read(&self.index).len(),
            topics: read(&self.topics).len(),
            published: published_by_origin.iter().sum(),
            published_by_origin,
            publishes_forbidden: self.counters.publishes_forbidden.load(Ordering::Relaxed),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            slow_consumer_closes: self.counters.slow_closed.load(Ordering::Relaxed),
            slow_consumer_discarded: self.counters.slow_discarded.load(Ordering::Relaxed),
            direct_messages: self.counters.direct.load(Ordering::Relaxed),
            retained: self.counters.retained.load(Ordering::Relaxed),
            retained_refused: self.counters.retained_refused.load(Ordering::Relaxed),
            forbidden: self.counters.forbidden.load(Ordering::Relaxed),
        }
    }
}
