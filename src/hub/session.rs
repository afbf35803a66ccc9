//! What the Hub knows of one connection: its ids, its outbound queue, its subscriptions
//! and the display info others see in presence. Transport-neutral: a WebSocket
//! connection owns one, and so will any other kind of subscriber.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::value::RawValue;

use super::index::Key;
use super::outbox::Outbox;

pub struct Session {
    pub(super) key: Key,
    id: String,
    user: Option<String>,
    pub outbox: Outbox,
    pub(super) filters: Mutex<HashSet<String>>,
    pub(super) info: Mutex<Option<Box<RawValue>>>,
}

impl Session {
    pub(super) fn new(key: Key, id: String, user: Option<String>, outbox: Outbox) -> Self {
        Self {
            key,
            id,
            user,
            outbox,
            filters: Mutex::new(HashSet::new()),
            info: Mutex::new(None),
        }
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
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
