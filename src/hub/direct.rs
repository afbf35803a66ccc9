//! Direct messages: one client or one user's connections, found through the Hub's
//! session tables rather than the subscription index.
//!
//! Owns [`Sender`] and [`Hub::send_direct`]. Reads the `clients` and `users` tables
//! (each read lock taken alone, and released before anything is pushed); takes no topic
//! lock, never touches the subscription index, and does not fill those tables (that is
//! `connect`/`disconnect`, in routing.rs). With a bus, a message not for a client of
//! this box also goes to the other boxes, which deliver it with [`Hub::deliver_direct`].

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::outbox::Pushed;
use super::{index, read, Hub, HubError, Session};
use crate::auth::Principal;
use switchboard_core::grants::Grants;
use switchboard_core::protocol::{Frame, Recipient, ServerFrame};

/// Who sends a direct message: a connection, or an HTTP caller.
#[derive(Clone, Copy)]
pub struct Sender<'a> {
    /// Shown to the recipient as `from`.
    pub id: &'a str,
    pub user: Option<&'a str>,
    pub grants: &'a Grants,
    /// The sending connection, which a message to its own user skips.
    key: Option<index::Key>,
}

impl<'a> Sender<'a> {
    pub fn session(session: &'a Session, principal: &'a Principal) -> Self {
        Sender {
            id: session.id(),
            user: session.user(),
            grants: &principal.grants,
            key: Some(session.key),
        }
    }

    pub fn external(id: &'a str, principal: &'a Principal) -> Self {
        Sender {
            id,
            user: principal.user.as_deref(),
            grants: &principal.grants,
            key: None,
        }
    }
}

impl Hub {
    /// Sends a direct message; returns how many connections of this box got it. With a
    /// bus, one not for a client of this box is also handed to the other boxes, and 0
    /// means "sent to the cluster", not "no recipient" (docs/cluster.md).
    pub fn send_direct(
        &self,
        from: Sender<'_>,
        to: &Recipient,
        event: Option<&str>,
        data: &RawValue,
    ) -> Result<usize, HubError> {
        let targets = self.direct_targets(to, from.grants, from.key)?;
        let frame = ServerFrame::Dm {
            event: event.map(Cow::Borrowed),
            data,
            ts: switchboard_core::clock::now_ms(),
            from: Cow::Borrowed(from.id),
            from_user: from.user.map(Cow::Borrowed),
        }
        .to_frame();
        let here = matches!(to, Recipient::Client(_)) && !targets.is_empty();
        let delivered = push(&targets, &frame);
        let bus = self.bus.get().filter(|_| !here);
        if let Some(bus) = bus {
            bus.direct(to, from.grants.send_scope(), frame.as_str());
        } else if delivered == 0 {
            let who = match to {
                Recipient::Client(id) => format!("client `{id}`"),
                Recipient::User(u) => format!("user `{u}`"),
            };
            return Err(HubError::NoRecipient(who));
        }
        self.counters.direct.fetch_add(1, Ordering::Relaxed);
        Ok(delivered)
    }

    /// A direct message from another box: delivered to the connections of this box it
    /// is for and the sender may reach (`may_send_to`, its send grant; `None`: anyone).
    pub fn deliver_direct(&self, to: &Recipient, may_send_to: Option<Vec<String>>, frame: &str) {
        let grants = match may_send_to {
            None => Grants::all(),
            Some(users) => Grants::new(Vec::new(), Vec::new(), users),
        };
        if let Ok(targets) = self.direct_targets(to, &grants, None) {
            push(&targets, &Frame::from(frame.to_owned()));
        }
    }

    /// The connections of this box a message to `to` goes to, but `skip`.
    fn direct_targets(
        &self,
        to: &Recipient,
        grants: &Grants,
        skip: Option<index::Key>,
    ) -> Result<Vec<Arc<Session>>, HubError> {
        Ok(match to {
            Recipient::Client(id) => {
                let target = read(&self.clients).get(id).cloned();
                if let Some(target) = &target {
                    self.allow(grants.check_send(target.user()))?;
                }
                target.into_iter().collect()
            }
            Recipient::User(user) => {
                self.allow(grants.check_send(Some(user)))?;
                read(&self.users)
                    .get(user)
                    .map(|conns| {
                        conns
                            .values()
                            .filter(|s| Some(s.key) != skip)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            }
        })
    }
}

/// Pushes `frame` to each target; how many took it.
fn push(targets: &[Arc<Session>], frame: &Frame) -> usize {
    targets
        .iter()
        .filter(|s| {
            matches!(
                s.outbox.push(frame.clone()),
                Pushed::Queued | Pushed::DroppedOldest(_)
            )
        })
        .count()
}
