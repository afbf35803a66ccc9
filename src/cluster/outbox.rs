//! MQTT devices' publishes waiting for Redis, on disk.
//!
//! A device's QoS 1 publish is acknowledged by its session before the Hub sees it, so
//! when Redis does not take it there is no one to tell: it waits here, in the local
//! store (one sled tree per Redis, keys in arrival order), and its writer sends it
//! before anything newer from a device once Redis answers again. Bounded by
//! `outbox_max`; beyond, new ones are dropped and counted. Owned by its writer task
//! alone, so nothing here locks.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::hub::{AsSent, BusMessage};
use crate::store::{Store, StoreError, Tree};
use switchboard_core::message::Origin;

pub(super) struct Outbox {
    tree: Tree,
    len: usize,
    max: usize,
    next: u64,
}

/// A waiting message as stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    t: String,
    ev: Option<String>,
    d: String,
    f: String,
    o: u8,
    r: bool,
    q: Option<u8>,
    /// Payload and properties as sent, base64.
    p: Option<String>,
    pp: Option<String>,
    /// The id the message was first sent under (`publish.rs`); older entries have none.
    #[serde(default)]
    id: Option<String>,
}

impl Outbox {
    pub(super) fn open(store: &Store, shard: usize, max: usize) -> Result<Outbox, StoreError> {
        let tree = store.tree(&format!("cluster_outbox_{shard}"))?;
        let current = tree.current()?;
        let len = current.len();
        let next = match current.last().map_err(|e| tree.io(e))? {
            Some((k, _)) => key_number(&k).map_or(0, |n| n + 1),
            None => 0,
        };
        Ok(Outbox {
            tree,
            len,
            max,
            next,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps a message for later; false when full or the store failed (then it is lost).
    pub(super) fn push(&mut self, m: &BusMessage, id: Option<&str>) -> bool {
        if self.len >= self.max {
            return false;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let stored = Stored {
            t: m.topic.clone(),
            ev: m.event.clone(),
            d: m.data.clone(),
            f: m.from.clone(),
            o: m.origin as u8,
            r: m.retain,
            q: m.as_sent.as_ref().map(|s| s.qos),
            p: m.as_sent.as_ref().map(|s| b64.encode(&s.payload)),
            pp: m.as_sent.as_ref().map(|s| b64.encode(&s.properties)),
            id: id.map(str::to_owned),
        };
        let Ok(value) = serde_json::to_vec(&stored) else {
            return false;
        };
        let written = self.tree.current().and_then(|t| {
            t.insert(self.next.to_be_bytes(), value)
                .map_err(|e| self.tree.io(e))
        });
        match written {
            Ok(_) => {
                self.next += 1;
                self.len += 1;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster: cannot keep an MQTT publish for later; lost");
                false
            }
        }
    }

    /// The oldest `n` waiting, with their keys.
    pub(super) fn oldest(&self, n: usize) -> Vec<(u64, BusMessage, Option<String>)> {
        let Ok(tree) = self.tree.current() else {
            return Vec::new();
        };
        tree.iter()
            .take(n)
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let (message, id) = decode(&v)?;
                Some((key_number(&k)?, message, id))
            })
            .collect()
    }

    /// Forgets messages Redis took.
    pub(super) fn remove(&mut self, keys: impl IntoIterator<Item = u64>) {
        let Ok(tree) = self.tree.current() else {
            return;
        };
        for k in keys {
            if let Ok(Some(_)) = tree.remove(k.to_be_bytes()) {
                self.len = self.len.saturating_sub(1);
            }
        }
    }
}

fn key_number(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

/// The message and the id it was first sent under; one kept before ids existed gets
/// a new one (it is sent again as it always was).
fn decode(v: &[u8]) -> Option<(BusMessage, Option<String>)> {
    let s: Stored = serde_json::from_slice(v).ok()?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let as_sent = match s.q {
        Some(qos) => Some(AsSent {
            qos,
            payload: b64.decode(s.p?).ok()?.into(),
            properties: b64.decode(s.pp?).ok()?.into(),
        }),
        None => None,
    };
    let message = BusMessage {
        topic: s.t,
        event: s.ev,
        data: s.d,
        from: s.f,
        origin: *Origin::ALL.get(usize::from(s.o))?,
        retain: s.r,
        as_sent,
        acked: false,
    };
    let id = s.id.or_else(|| super::publish::retry_id(&message));
    Some((message, id))
}
