//! Filling holes in a topic's history from the bus's copy (`[cluster]`).
//!
//! A box that was down, cut off from the bus, or started later has a hole in its local
//! history: what the bus carried meanwhile. The bus keeps each history topic's messages
//! too, each with the bus position it was carried at, so a resume across the hole is
//! answered from both: the local history from where it is contiguous, the bus's copy
//! below. Which of the bus's messages belong to the answer is decided under the topic's
//! lock: one at a bus position this box's reader has passed will never arrive here
//! live, so it is recovered; one beyond will arrive live after the subscription and is
//! left to it; one from a bus stream this box no longer reads (another bus epoch) is
//! neither, and stays a hole that the answer reports. A topic's messages take bus
//! positions in their seq order, so the usable ones are a prefix: each message reaches
//! the client once, in the topic's one order, under the seq it has on every box.
//!
//! The same answer gives a plain `sub` on a topic this box has not read a message of
//! since it started the cluster's position for it, not one of this box's own.
//!
//! The bus is read before the topic's lock is taken, by the requesting connection
//! alone (as a publish waits for its answer), bounded by the bus's command timeout and
//! by `[history] max_recovery` messages: the Hub's delivery never waits on it. When the
//! bus cannot answer, the local answer stands (`recovered: false` across a hole).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use super::session::lock;
use super::Hub;
use crate::history::{Log, Position, Recovery};
use crate::store::StoredMessage;
use switchboard_core::protocol::Since;
use switchboard_core::quiet::Throttle;

/// Messages read to find a topic's position for a plain `sub`.
const PROBE: u64 = 64;

/// A range of a topic's history to read from the bus.
#[derive(Debug, Clone)]
pub struct RemoteRange {
    pub topic: String,
    /// Messages numbered after this one…
    pub after: u64,
    /// …up to this one (`None`: the newest).
    pub upto: Option<u64>,
    /// At most this many: the oldest of the range when `oldest_first`, else the newest.
    pub count: u64,
    pub oldest_first: bool,
}

/// One message of the bus's copy, with where it was on the bus.
#[derive(Debug, Clone)]
pub struct RemoteEntry {
    pub message: StoredMessage,
    pub bus_epoch: String,
    pub bus_position: u64,
}

/// What the bus holds of a topic: its epoch and last number there, and the range read.
#[derive(Debug, Clone)]
pub struct RemoteHistory {
    pub epoch: String,
    pub last: u64,
    pub entries: Vec<RemoteEntry>,
}

/// The bus's answer: `None` when it does not know the topic.
pub type RemoteFetch =
    Pin<Box<dyn Future<Output = Result<Option<RemoteHistory>, String>> + Send + 'static>>;

impl Hub {
    /// Before a `sub` or a history read of a kept topic: the bus's copy of what this
    /// box's history lacks after `since`, or, for a plain `sub` (`since: None`) on a
    /// topic this box has read nothing of since it started, of the topic's newest
    /// messages. `None` when the local history answers alone, there is no bus, or the
    /// bus did not answer in time.
    pub(super) fn remote_for(
        &self,
        topic: &str,
        since: Option<&Since>,
        page: Option<u64>,
    ) -> Option<RemoteHistory> {
        let bus = self.bus.get()?;
        let max = self.history.get()?.config().max_recovery.get() as u64;
        let range = {
            let state = self.topic_state(topic);
            let state = lock(&state);
            let log = state.log.as_ref()?;
            let (after, upto, count) = match since {
                None if state.epoch.is_none() => (0, None, PROBE),
                Some(Since::After {
                    seq,
                    epoch: Some(epoch),
                }) => {
                    let start = log.contiguous_from(epoch);
                    let within = *seq <= log.last_seq();
                    if within && start.is_some_and(|start| seq + 1 >= start) {
                        return None;
                    }
                    let upto = start.filter(|_| within).map(|s| s - 1);
                    let page = page.filter(|_| upto.is_some());
                    (*seq, upto, page.map_or(max, |n| n.min(max)).max(1))
                }
                _ => return None,
            };
            RemoteRange {
                topic: topic.to_owned(),
                after,
                upto,
                count,
                // A page is read oldest first where the box's own history follows it;
                // elsewhere the newest, which alone tell the topic's position here.
                oldest_first: page.is_some() && upto.is_some(),
            }
        };
        match wait(bus.history(range)?)? {
            Ok(Some(remote)) => match since {
                Some(Since::After {
                    epoch: Some(epoch), ..
                }) if *epoch != remote.epoch => None,
                _ => Some(remote),
            },
            Ok(None) => None,
            Err(why) => {
                static FAILED: Throttle = Throttle::per_secs(10);
                if let Some(held_back) = FAILED.admit() {
                    tracing::warn!(error = %why, held_back, "cluster: cannot read a topic's history from the bus; answered from this box's alone");
                }
                None
            }
        }
    }

    /// The bus's messages that belong to a recovery here (see the module's notes), by
    /// seq, and the seqs of those still on their way to this box (on the bus stream its
    /// reader reads, beyond where it is). `None` before the reader has a position: it
    /// cannot tell which is which yet. A message from another bus epoch is neither: a
    /// hole, reported.
    fn usable(
        &self,
        topic: &str,
        remote: &RemoteHistory,
    ) -> Option<(BTreeMap<u64, StoredMessage>, Vec<u64>)> {
        let (bus_epoch, passed) = self.bus.get()?.delivered(topic)?;
        if bus_epoch.is_empty() {
            return None;
        }
        let rule = self.history.get().and_then(|h| h.config().rule(topic));
        let now_us = switchboard_core::clock::now_us();
        let mut usable = BTreeMap::new();
        let mut coming = Vec::new();
        for e in remote.entries.iter().filter(|e| e.bus_epoch == bus_epoch) {
            if e.bus_position > passed {
                coming.push(e.message.seq);
            } else if !rule.is_some_and(|r| r.expired(e.message.ts_us, now_us)) {
                usable.insert(e.message.seq, e.message.clone());
            }
        }
        Some((usable, coming))
    }

    /// Where the topic stands for a client on this box, in the bus's epoch: after
    /// `after` (what the client has), up to the newest message this box will not
    /// deliver live. With the local history in that epoch it is the local newest, as
    /// anything after reaches this box from the bus (or a gap notice does); otherwise
    /// the newest usable message of the bus's copy, trusted only when what follows it
    /// is known to be still on its way (or nothing does).
    fn top(
        local: &Position,
        remote: &RemoteHistory,
        usable: &BTreeMap<u64, StoredMessage>,
        coming: &[u64],
        after: u64,
    ) -> Option<u64> {
        let newest = usable.keys().next_back().copied().unwrap_or(0).max(after);
        if local.epoch == remote.epoch {
            return Some(newest.max(local.seq));
        }
        (newest >= remote.last || coming.contains(&(newest + 1))).then_some(newest)
    }

    /// The position a plain `sub` answers on a topic this box has read nothing of since
    /// it started: the cluster's; `None` when it cannot be told (the local one stands).
    /// Under the topic's lock.
    pub(super) fn repaired_position(
        &self,
        topic: &str,
        log: &Log,
        remote: &RemoteHistory,
    ) -> Option<Position> {
        let (usable, coming) = self.usable(topic, remote)?;
        let seq = Self::top(&log.position(), remote, &usable, &coming, 0)?;
        Some(Position {
            epoch: remote.epoch.clone(),
            seq,
        })
    }

    /// A local recovery after `after` completed with the bus's copy, under the topic's
    /// lock: the local history's messages from where it is contiguous, the bus's below;
    /// complete only when every number up to the position is there (and within
    /// `max_recovery`, or `page`, oldest first).
    pub(super) fn repaired(
        &self,
        topic: &str,
        log: &Log,
        local: Recovery,
        remote: &RemoteHistory,
        after: u64,
        page: Option<u64>,
    ) -> Recovery {
        let Some((usable, coming)) = self.usable(topic, remote) else {
            return local;
        };
        let Some(top) = Self::top(&local.position, remote, &usable, &coming, after) else {
            return local;
        };
        let start = if local.position.epoch == remote.epoch {
            log.contiguous_from(&remote.epoch).unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        let mut messages: BTreeMap<u64, StoredMessage> = local
            .messages
            .into_iter()
            .filter(|m| m.seq > after && m.seq >= start && m.seq <= top)
            .map(|m| (m.seq, m))
            .collect();
        for (seq, m) in usable.range(after + 1..=top) {
            messages.entry(*seq).or_insert_with(|| m.clone());
        }
        let wanted = top - after;
        let whole = messages.len() as u64 == wanted;
        let max = self
            .history
            .get()
            .map_or(u64::MAX, |h| h.config().max_recovery.get() as u64);
        let mut messages: Vec<StoredMessage> = messages.into_values().collect();
        let complete = match page {
            Some(n) => {
                let n = n.min(max) as usize;
                messages.truncate(n);
                whole && messages.len() as u64 == wanted
            }
            None if messages.len() as u64 > max => {
                messages.drain(..messages.len() - max as usize);
                false
            }
            None => whole,
        };
        Recovery {
            position: Position {
                epoch: remote.epoch.clone(),
                seq: top,
            },
            complete,
            messages,
        }
    }
}

/// Waits for the bus on this connection's worker thread, as a publish does
/// (`Hub::through_bus`): the runtime moves the worker's other tasks meanwhile. `None`
/// where no worker can wait (outside a multi-threaded runtime).
fn wait<T>(fetch: Pin<Box<dyn Future<Output = T> + Send>>) -> Option<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Some(tokio::task::block_in_place(|| rt.block_on(fetch)))
        }
        _ => None,
    }
}
