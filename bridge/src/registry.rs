//! Which client ids are connected, so a second connection with the same id takes over
//! the first cleanly (the old one is told to go and finishes before the new one starts),
//! and so a delayed Last Will, or the wait of a session kept for its device, is
//! cancelled by the device coming back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::Connected;

/// One live session's handle, as seen by the next session with the same client id.
#[derive(Clone)]
pub(crate) struct Slot {
    pub serial: u64,
    /// Cancelled to ask the session to leave.
    pub take_over: CancellationToken,
    /// Cancelled by the session once it has fully left.
    pub gone: CancellationToken,
    /// Cancelled to close the connection for an operator ([`crate::Broker::disconnect`]).
    pub kick: CancellationToken,
    /// What an operator is shown, set once the device is admitted: until then the id is
    /// claimed but no device is connected with it.
    pub shown: Arc<OnceLock<Connected>>,
}

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_serial: u64,
    live: HashMap<String, Slot>,
    pending_wills: Waiting,
    /// Sessions kept after their device left, until their expiry.
    kept_sessions: Waiting,
    /// QoS 2 packet ids a kept session's device left in the middle of their flows.
    packet_ids: HashMap<String, PacketIds>,
}

/// QoS 2 flows a session holds open across connections, by packet id: they belong to
/// the session, so a retransmission after the device comes back is not delivered twice,
/// its PUBREL is answered, and ours is sent again.
#[derive(Debug, Default)]
pub(crate) struct PacketIds {
    /// Inbound: PUBREC sent, PUBREL not yet received.
    pub unreleased: HashSet<u16>,
    /// Outbound: PUBREL sent, PUBCOMP not yet received.
    pub releasing: Vec<u16>,
}

/// Client ids with something waiting for them, each cancelled by the device's return.
type Waiting = HashMap<String, (u64, CancellationToken)>;

impl Registry {
    /// Claims `client_id` for a new session, returning its slot and the previous holder's.
    pub fn claim(&self, client_id: &str) -> (Slot, Option<Slot>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.next_serial += 1;
        let slot = Slot {
            serial: inner.next_serial,
            take_over: CancellationToken::new(),
            gone: CancellationToken::new(),
            kick: CancellationToken::new(),
            shown: Arc::default(),
        };
        for waiting in [&mut inner.pending_wills, &mut inner.kept_sessions] {
            if let Some((_, token)) = waiting.remove(client_id) {
                token.cancel();
            }
        }
        let previous = inner.live.insert(client_id.to_owned(), slot.clone());
        (slot, previous)
    }

    /// Releases `client_id` if `serial` still holds it.
    pub fn release(&self, client_id: &str, serial: u64) {
        let mut inner = self.lock();
        if inner
            .live
            .get(client_id)
            .is_some_and(|s| s.serial == serial)
        {
            inner.live.remove(client_id);
        }
    }

    /// The devices admitted and still connected.
    pub fn connected(&self) -> Vec<Connected> {
        let inner = self.lock();
        inner
            .live
            .values()
            .filter_map(|s| s.shown.get().cloned())
            .collect()
    }

    /// The device admitted with `client_id`, if it is connected.
    pub fn shown(&self, client_id: &str) -> Option<Connected> {
        self.lock().live.get(client_id)?.shown.get().cloned()
    }

    /// Asks the connection admitted with `client_id` to close; false if there is none.
    pub fn kick(&self, client_id: &str) -> bool {
        let inner = self.lock();
        match inner.live.get(client_id) {
            Some(slot) if slot.shown.get().is_some() => {
                slot.kick.cancel();
                true
            }
            _ => false,
        }
    }

    /// Records a delayed will; its token is cancelled if the device reconnects first.
    pub fn delay_will(&self, client_id: &str) -> (u64, CancellationToken) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        wait(&mut inner.next_serial, &mut inner.pending_wills, client_id)
    }

    /// Forgets a delayed will once it fired or was cancelled.
    pub fn will_done(&self, client_id: &str, id: u64) {
        done(&mut self.lock().pending_wills, client_id, id);
    }

    /// Records a session kept for its device; its token is cancelled if the device
    /// reconnects first. `None` when `max` sessions are kept already.
    pub fn keep_session(&self, client_id: &str, max: usize) -> Option<(u64, CancellationToken)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.kept_sessions.len() >= max && !inner.kept_sessions.contains_key(client_id) {
            return None;
        }
        Some(wait(
            &mut inner.next_serial,
            &mut inner.kept_sessions,
            client_id,
        ))
    }

    /// Forgets a kept session once it expired or its device came back.
    pub fn session_done(&self, client_id: &str, id: u64) {
        done(&mut self.lock().kept_sessions, client_id, id);
    }

    /// Keeps the open QoS 2 flows of a session that outlives its connection, for the
    /// connection that resumes it.
    pub fn stash_packet_ids(&self, client_id: &str, ids: PacketIds) {
        let mut inner = self.lock();
        if ids.unreleased.is_empty() && ids.releasing.is_empty() {
            inner.packet_ids.remove(client_id);
        } else {
            inner.packet_ids.insert(client_id.to_owned(), ids);
        }
    }

    /// Takes what [`Registry::stash_packet_ids`] kept for `client_id`.
    pub fn take_packet_ids(&self, client_id: &str) -> PacketIds {
        self.lock().packet_ids.remove(client_id).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every update is one insert
        // or remove, so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn wait(serial: &mut u64, waiting: &mut Waiting, client_id: &str) -> (u64, CancellationToken) {
    *serial += 1;
    let entry = (*serial, CancellationToken::new());
    if let Some((_, old)) = waiting.insert(client_id.to_owned(), entry.clone()) {
        old.cancel();
    }
    entry
}

fn done(waiting: &mut Waiting, client_id: &str, id: u64) {
    if waiting.get(client_id).is_some_and(|(i, _)| *i == id) {
        waiting.remove(client_id);
    }
}
