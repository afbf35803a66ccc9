//! One endpoint's deliveries on disk, in the shared [`Store`]:
//!
//! - `webhook/<name>/pending`: events not yet delivered, keyed by a store-wide
//!   increasing id (big-endian, so key order is arrival order), the value the event's
//!   JSON with its `id`.
//! - `webhook/<name>/inflight` (in the `webhook.meta` tree): the delivery being tried,
//!   as the key range of its events and its attempts so far, so that a restart resends
//!   the same events under the same `webhook-id` and keeps counting attempts.
//! - `webhook/<name>/dead`: deliveries that used up their attempts, keyed by the id of
//!   their first event (so oldest first), with the last failure.
//!
//! Writes are ordered so that a crash between two of them leaves a state the next
//! start recovers from: a dead letter is written before its events leave `pending`,
//! and events leave `pending` before the in-flight record is cleared.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::{Store, StoreError, Tree};

/// The delivery being tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inflight {
    /// Keys of its first and last event in `pending`.
    pub first: u64,
    pub last: u64,
    pub attempts: u32,
    /// Unix ms before which the next attempt must not start.
    pub next_at: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// A delivery that used up its attempts.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The `webhook-id` it was sent with; the API names it by this.
    pub id: String,
    pub events: Vec<Box<RawValue>>,
    pub attempts: u32,
    /// The HTTP status of the last attempt, if the endpoint answered.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Unix ms of the last attempt.
    pub failed_at: u64,
}

pub struct Queue {
    store: Store,
    pending: Tree,
    dead: Tree,
    meta: Tree,
    inflight_key: String,
}

type Result<T> = std::result::Result<T, StoreError>;

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(k).map(u64::from_be_bytes).unwrap_or(0)
}

impl Queue {
    pub fn open(store: &Store, name: &str) -> Result<Queue> {
        Ok(Queue {
            pending: store.tree(&format!("webhook/{name}/pending"))?,
            dead: store.tree(&format!("webhook/{name}/dead"))?,
            meta: store.tree("webhook.meta")?,
            inflight_key: format!("webhook/{name}/inflight"),
            store: store.clone(),
        })
    }

    fn io(&self, e: sled::Error) -> StoreError {
        self.store.io(e)
    }

    /// 0 while the store reopens.
    pub fn pending_len(&self) -> usize {
        self.pending.current().map_or(0, |t| t.len())
    }

    pub fn dead_len(&self) -> usize {
        self.dead.current().map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.pending.current().map_or(true, |t| t.is_empty())
    }

    /// Appends an event under a fresh id (`make` gets the id and returns the stored
    /// bytes).
    pub fn push(&self, make: impl FnOnce(u64) -> Vec<u8>) -> Result<()> {
        let id = self.store.next_id()?;
        self.pending
            .current()?
            .insert(key(id), make(id))
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Drops the oldest pending event; whether there was one.
    pub fn drop_oldest(&self) -> Result<bool> {
        Ok(self
            .pending
            .current()?
            .pop_min()
            .map_err(|e| self.io(e))?
            .is_some())
    }

    /// The keys of the first `max` pending events: the next delivery.
    pub fn head(&self, max: usize) -> Result<Option<(u64, u64)>> {
        let mut range: Option<(u64, u64)> = None;
        for item in self.pending.current()?.iter().keys().take(max) {
            let id = id_of(&item.map_err(|e| self.io(e))?);
            range = Some(range.map_or((id, id), |(first, _)| (first, id)));
        }
        Ok(range)
    }

    /// The events of a delivery still pending (overflow may have dropped some).
    pub fn events(&self, first: u64, last: u64) -> Result<Vec<sled::IVec>> {
        self.pending
            .current()?
            .range(key(first)..=key(last))
            .values()
            .map(|v| v.map_err(|e| self.io(e)))
            .collect()
    }

    /// Removes a delivery's events from `pending`; how many there were.
    pub fn remove(&self, first: u64, last: u64) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in self.pending.current()?.range(key(first)..=key(last)).keys() {
            batch.remove(k.map_err(|e| self.io(e))?);
            n += 1;
        }
        self.pending
            .current()?
            .apply_batch(batch)
            .map_err(|e| self.io(e))?;
        Ok(n)
    }

    pub fn inflight(&self) -> Result<Option<Inflight>> {
        let Some(bytes) = self
            .meta
            .current()?
            .get(&self.inflight_key)
            .map_err(|e| self.io(e))?
        else {
            return Ok(None);
        };
        // A record this build cannot read is dropped: its events are still pending and
        // go out again as a new delivery.
        Ok(serde_json::from_slice(&bytes).ok())
    }

    pub fn set_inflight(&self, inflight: &Inflight) -> Result<()> {
        let bytes = serde_json::to_vec(inflight).unwrap_or_default();
        self.meta
            .current()?
            .insert(&self.inflight_key, bytes)
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    pub fn clear_inflight(&self) -> Result<()> {
        self.meta
            .current()?
            .remove(&self.inflight_key)
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Moves the in-flight delivery to the dead letters.
    pub fn bury(&self, inflight: &Inflight, letter: &DeadLetter) -> Result<usize> {
        let bytes = serde_json::to_vec(letter).unwrap_or_default();
        self.dead
            .current()?
            .insert(key(inflight.first), bytes)
            .map_err(|e| self.io(e))?;
        let n = self.remove(inflight.first, inflight.last)?;
        self.clear_inflight()?;
        Ok(n)
    }

    /// Up to `limit` dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(u64, DeadLetter)>> {
        let mut out = Vec::new();
        for item in self.dead.current()?.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.io(e))?;
            if let Ok(letter) = serde_json::from_slice(&v) {
                out.push((id_of(&k), letter));
            }
        }
        Ok(out)
    }

    /// Removes one dead letter; it, if it was there.
    pub fn take_dead(&self, first: u64) -> Result<Option<DeadLetter>> {
        let Some(bytes) = self
            .dead
            .current()?
            .remove(key(first))
            .map_err(|e| self.io(e))?
        else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Puts a dead letter's events back at the end of `pending` (each keeps its `id`),
    /// then removes the letter. Returns how many events were queued.
    pub fn requeue(&self, first: u64) -> Result<Option<usize>> {
        let Some(bytes) = self
            .dead
            .current()?
            .get(key(first))
            .map_err(|e| self.io(e))?
        else {
            return Ok(None);
        };
        let letter: Option<DeadLetter> = serde_json::from_slice(&bytes).ok();
        let events = letter.map(|l| l.events).unwrap_or_default();
        for event in &events {
            self.push(|_| event.get().as_bytes().to_vec())?;
        }
        self.dead
            .current()?
            .remove(key(first))
            .map_err(|e| self.io(e))?;
        Ok(Some(events.len()))
    }

    /// Keys of every dead letter, oldest first.
    pub fn dead_keys(&self) -> Result<Vec<u64>> {
        self.dead
            .current()?
            .iter()
            .keys()
            .map(|k| k.map(|k| id_of(&k)).map_err(|e| self.io(e)))
            .collect()
    }
}
