//! What the Hub knows of one connection: its ids, its outbound queue, its subscriptions
//! and the display info others see in presence. Transport-neutral: a WebSocket
//! connection owns one, and so will any other kind of subscriber.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::value::RawValue;

use super::index::Key;
use super::outbox::{Outbox, Outgoing, Shared};
use crate::auth::Principal;

pub struct Session {
    pub(super) key: Key,
    id: String,
    /// Kept apart from `principal` to be read without a lock: a refresh may change the
    /// grants but never the user.
    user: Option<String>,
    /// Who the connection acts for; replaced whole when a token is refreshed.
    principal: RwLock<Arc<Principal>>,
    pub outbox: Outbox<Outgoing>,
    /// The connection negotiated permessage-deflate: frames shared with other
    /// connections are queued with their compressed form ([`Session::share`]).
    compressed: bool,
    pub(super) filters: Mutex<HashSet<String>>,
    pub(super) info: Mutex<Option<Box<RawValue>>>,
    /// Milliseconds since the Unix epoch, for the client list.
    connected_at: u64,
}

impl Session {
    pub(super) fn new(
        key: Key,
        id: String,
        principal: Arc<Principal>,
        outbox: Outbox<Outgoing>,
        compressed: bool,
    ) -> Self {
        Self {
            key,
            id,
            compressed,
            user: principal.user.clone(),
            info: Mutex::new(principal.info.clone()),
            principal: RwLock::new(principal),
            outbox,
            filters: Mutex::new(HashSet::new()),
            connected_at: switchboard_core::clock::now_ms(),
        }
    }

    /// When the connection was made, in milliseconds since the Unix epoch.
    pub fn connected_at(&self) -> u64 {
        self.connected_at
    }

    /// The identity in force now.
    pub fn principal(&self) -> Arc<Principal> {
        self.principal
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_principal(&self, principal: Arc<Principal>) {
        *self.principal.write().unwrap_or_else(|p| p.into_inner()) = principal;
    }

    /// The filters subscribed to now.
    pub fn filters(&self) -> Vec<String> {
        lock(&self.filters).iter().cloned().collect()
    }

    /// The server-assigned client id (sent in `welcome`, used by direct messages).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The user this connection acts for, if known.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn info(&self) -> Option<Box<RawValue>> {
        lock(&self.info).clone()
    }

    /// How this connection queues a frame shared with others: with the room for its
    /// compressed form when it compresses, the bare frame when not.
    pub(super) fn share(&self, shared: &Arc<Shared>) -> Outgoing {
        if self.compressed {
            Outgoing::Shared(shared.clone())
        } else {
            Outgoing::Frame(shared.frame().clone())
        }
    }

    pub(super) fn compressed(&self) -> bool {
        self.compressed
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
