//! Presence: who is subscribed to a presence-enabled topic, and the `join`/`leave`
//! announcements its other subscribers get.
//!
//! Owns the members table (`Hub::presence`, one mutex), [`Hub::presence`],
//! [`Hub::set_info`], and the joins and leaves that subscribing, unsubscribing and
//! disconnecting call here. Announcements go out through `deliver` (routing.rs, the
//! index read lock) after the presence lock is released; no topic lock is taken
//! here and the subscription index is never changed here.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::session::lock;
use super::{Hub, HubError, Session};
use switchboard_core::grants::{Forbidden, Grants};
use switchboard_core::protocol::{Member, ServerFrame};
use switchboard_core::topic;

impl Hub {
    /// Who is subscribed to a presence-enabled topic, for someone allowed to know.
    pub fn presence(&self, by: &Grants, topic: &str) -> Result<Vec<Member<'static>>, HubError> {
        Ok(self
            .presence_on(by, topic)?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    /// [`Hub::presence`] with each member's box: `None` for this one, else the node id
    /// (with a bus).
    pub fn presence_on(
        &self,
        by: &Grants,
        topic: &str,
    ) -> Result<Vec<(Option<String>, Member<'static>)>, HubError> {
        topic::validate_topic(topic)?;
        self.allow(by.check_presence(topic))?;
        if !self.presence_enabled(topic) {
            return Err(HubError::PresenceDisabled(topic.to_owned()));
        }
        let mut members: Vec<(Option<String>, Member<'static>)> = lock(&self.presence)
            .get(topic)
            .map(|members| members.values().map(|s| (None, member(s))).collect())
            .unwrap_or_default();
        if let Some(bus) = self.bus.get() {
            members.extend(
                bus.remote_members(topic)
                    .into_iter()
                    .map(|(n, m)| (Some(n), m)),
            );
        }
        Ok(members)
    }

    /// Every (topic, member) of this box, for a bus that rewrites what it holds.
    pub fn local_presence(&self) -> Vec<(String, Member<'static>)> {
        lock(&self.presence)
            .iter()
            .flat_map(|(t, members)| members.values().map(|s| (t.clone(), member(s))))
            .collect()
    }

    /// A member of another box joined or left: told to this box's subscribers of the topic.
    pub fn announce_remote(&self, topic: &str, member: Member<'_>, joined: bool) {
        self.tell(topic, member, joined, None);
    }

    /// Sets the display info others see in presence. Topics the session is already on
    /// get a fresh `join` carrying the new info.
    pub fn set_info(&self, session: &Arc<Session>, info: &RawValue) -> Result<(), HubError> {
        if session.principal().info.is_some() {
            self.allow(Err(Forbidden(
                "presence info was set by your token's issuer".into(),
            )))?;
        }
        let text = info.get();
        if text.len() > self.config.max_info_bytes || !text.trim_start().starts_with('{') {
            return Err(HubError::InvalidInfo(self.config.max_info_bytes));
        }
        *lock(&session.info) = Some(info.to_owned());
        let present: Vec<String> = lock(&self.presence)
            .iter()
            .filter(|(_, members)| members.contains_key(&session.key))
            .map(|(t, _)| t.clone())
            .collect();
        for t in present {
            self.announce(&t, session, true);
        }
        Ok(())
    }

    fn presence_enabled(&self, topic: &str) -> bool {
        self.config.presence.iter().any(|f| f.matches(topic))
    }

    /// A subscription to a concrete, presence-enabled topic makes the session a member.
    pub(super) fn join_presence(&self, session: &Arc<Session>, filter: &str) {
        if topic::is_wildcard(filter) || !self.presence_enabled(filter) {
            return;
        }
        let added = lock(&self.presence)
            .entry(filter.to_owned())
            .or_default()
            .insert(session.key, session.clone())
            .is_none();
        if added {
            self.announce(filter, session, true);
        }
    }

    pub(super) fn leave_presence(&self, session: &Arc<Session>, filter: &str) {
        if topic::is_wildcard(filter) {
            return;
        }
        let removed = {
            let mut presence = lock(&self.presence);
            let Some(members) = presence.get_mut(filter) else {
                return;
            };
            let removed = members.remove(&session.key).is_some();
            if members.is_empty() {
                presence.remove(filter);
            }
            removed
        };
        if removed {
            self.announce(filter, session, false);
        }
    }

    /// Tells the topic's other subscribers that `session` joined or left.
    fn announce(&self, topic: &str, session: &Session, joined: bool) {
        let member = member(session);
        if let Some(bus) = self.bus.get() {
            bus.presence_changed(topic, &member, joined);
        }
        self.tell(topic, member, joined, Some(session.key));
    }

    /// Delivers a `join` or `leave` to the topic's subscribers but `skip`.
    fn tell(&self, topic: &str, member: Member<'_>, joined: bool, skip: Option<super::index::Key>) {
        let topic_name = Cow::Borrowed(topic);
        let frame = if joined {
            ServerFrame::Join {
                topic: topic_name,
                member,
            }
        } else {
            ServerFrame::Leave {
                topic: topic_name,
                member,
            }
        };
        self.deliver(topic, &frame.to_frame(), skip, None, None);
    }
}

fn member(session: &Session) -> Member<'static> {
    Member {
        client: Cow::Owned(session.id().to_owned()),
        user: session.user().map(|u| Cow::Owned(u.to_owned())),
        info: session.info().map(Cow::Owned),
    }
}
