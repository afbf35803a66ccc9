//! Routing: connections, subscriptions and publishes.
//!
//! Owns the sessions table (`clients`, `users`), the subscription index, the taps and
//! the attached history: connecting and disconnecting, subscribing (with recovery from
//! a topic's history) and unsubscribing, and publishing. A publish turns into one
//! encoded frame pushed to every matching session by `deliver`, which presence
//! announcements use too. Topic state is taken from `topics.rs`, joins and leaves are
//! left to `presence.rs`; direct messages (`direct.rs`) do not pass through here.
//!
//! Locking: a publish takes its topic's lock (so every subscriber sees one topic's
//! messages in sequence order), then the index read lock to deliver and the taps read
//! lock, and releases the topic's lock last. Subscribing takes the index write lock
//! alone, or on a topic with a history inside that topic's lock. A session's own
//! `filters` lock is taken and released before the index lock. No lock is held across
//! an `.await`.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::outbox::{CloseReason, Outbox, Outgoing, Pushed, Shared};
use super::session::lock;
use super::topics::Retained;
use super::{index, read, write, DeviceSession, Hub, HubError, Session};
use crate::auth::Principal;
use crate::history::{History, Position};
use crate::pubkeys::policy::EncryptedOnly;
use crate::store::StoredMessage;
use switchboard_core::delivery::{Delivery, DeviceMessage, SubscriptionOptions};
use switchboard_core::grants::Grants;
use switchboard_core::message::{Lifecycle, Origin, Publish, Published, Tap};
use switchboard_core::protocol::{Frame, ServerFrame, Since};
use switchboard_core::{payload, topic};

/// What a subscription found, for the `ok` reply.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// For a topic with a history: its position when the subscription began. Messages
    /// numbered after it arrive live.
    pub position: Option<Position>,
    /// For a subscription that asked for missed messages: whether all of them were
    /// queued, and how many.
    pub recovery: Option<(bool, usize)>,
    /// For a wildcard subscription: where queueing its retained values is up to, when
    /// more remain (see [`Hub::send_retained_step`]).
    pub retained: Option<super::RetainedCursor>,
}

impl Hub {
    /// Registers a new connection and gives it a fresh client id.
    pub fn connect(&self, principal: Arc<Principal>) -> Arc<Session> {
        self.connect_with(principal, false)
    }

    /// [`Hub::connect`] for a connection that may negotiate permessage-deflate:
    /// `compressed` when it did, so frames shared with others reach it with their
    /// compressed form.
    pub fn connect_with(&self, principal: Arc<Principal>, compressed: bool) -> Arc<Session> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        // Random, so ids are not guessable from connection order; the key keeps it unique.
        let id = format!("c{:08x}{:x}", rand::random::<u32>(), key);
        let user = principal.user.clone();
        let session = Arc::new(Session::new(
            key,
            id.clone(),
            principal,
            Outbox::new(self.config.queue),
            compressed,
        ));
        write(&self.clients).insert(id, session.clone());
        if let Some(user) = user {
            write(&self.users)
                .entry(user)
                .or_default()
                .insert(key, session.clone());
        }
        self.notify(&Lifecycle::Connected {
            client: session.id(),
            user: session.user(),
        });
        session
    }

    /// Tells every tap of a lifecycle event.
    pub fn notify(&self, event: &Lifecycle<'_>) {
        for tap in read(&self.taps).iter() {
            tap.lifecycle(event);
        }
    }

    /// A connected client by id.
    pub fn client(&self, id: &str) -> Option<Arc<Session>> {
        read(&self.clients).get(id).cloned()
    }

    /// Removes a connection: its subscriptions, its presence (announcing leaves) and its
    /// entry in the client table. Safe to call more than once.
    pub fn disconnect(&self, session: &Arc<Session>) {
        let filters: Vec<String> = lock(&session.filters).drain().collect();
        {
            let mut index = write(&self.index);
            for f in &filters {
                index.remove(f, session.key);
            }
        }
        for f in &filters {
            self.leave_presence(session, f);
        }
        if write(&self.clients).remove(session.id()).is_some() {
            self.notify(&Lifecycle::Disconnected {
                client: session.id(),
                user: session.user(),
            });
        }
        if let Some(user) = session.user() {
            let mut users = write(&self.users);
            if let Some(conns) = users.get_mut(user) {
                conns.remove(&session.key);
                if conns.is_empty() {
                    users.remove(user);
                }
            }
        }
    }

    pub fn subscribe(&self, session: &Arc<Session>, filter: &str) -> Result<Subscribed, HubError> {
        self.subscribe_from(session, filter, None)
    }

    /// Subscribes, first queueing what the topic's history holds after `since`. On a
    /// topic with a history the topic's lock is held while the subscription is added,
    /// so the position reported (and any recovery) sits exactly between the messages
    /// published before and the live ones after: no gap, no duplicate.
    pub fn subscribe_from(
        &self,
        session: &Arc<Session>,
        filter: &str,
        since: Option<&Since>,
    ) -> Result<Subscribed, HubError> {
        topic::validate_filter(filter)?;
        let principal = session.principal();
        self.allow(principal.grants.check_subscribe(filter))?;
        let kept = !topic::is_wildcard(filter)
            && self
                .history
                .get()
                .is_some_and(|h| h.config().rule(filter).is_some());
        if since.is_some() && !kept {
            return Err(if topic::is_wildcard(filter) {
                HubError::HistoryNeedsTopic(filter.to_owned())
            } else {
                HubError::HistoryDisabled(filter.to_owned())
            });
        }
        // With a bus: what this box's history lacks, read before the topic's lock.
        let remote = kept.then(|| self.remote_for(filter, since, None)).flatten();
        let state = kept.then(|| self.topic_state(filter));
        let guard = state.as_ref().map(|s| lock(s));
        let max = principal
            .limits
            .max_subscriptions
            .unwrap_or(self.config.max_subscriptions);
        let added = {
            let mut filters = lock(&session.filters);
            if filters.contains(filter) {
                false
            } else if filters.len() >= max {
                return Err(HubError::TooManySubscriptions(max));
            } else {
                filters.insert(filter.to_owned());
                true
            }
        };
        if added {
            write(&self.index).insert(filter, session.key, Subscriber::Client(session.clone()));
        }
        let mut subscribed = Subscribed::default();
        if let Some(log) = guard.as_ref().and_then(|state| state.log.as_ref()) {
            match since.filter(|_| added) {
                Some(since) => {
                    let mut recovery = log.recover(since);
                    if let (Some(remote), Since::After { seq, .. }) = (&remote, since) {
                        recovery = self.repaired(filter, log, recovery, remote, *seq, None);
                    }
                    let mut queued = 0;
                    for message in &recovery.messages {
                        if let Some(frame) = history_frame(message) {
                            // A full queue applies the slow-consumer policy as for any push.
                            let _ = session.outbox.push(frame);
                            queued += 1;
                        }
                    }
                    let complete = recovery.complete && queued == recovery.messages.len();
                    subscribed.recovery = Some((complete, queued));
                    subscribed.position = Some(recovery.position);
                }
                None => {
                    let cluster = remote
                        .as_ref()
                        .filter(|_| since.is_none())
                        .and_then(|r| self.repaired_position(filter, log, r));
                    subscribed.position = Some(cluster.unwrap_or_else(|| log.position()));
                }
            }
        }
        drop(guard);
        if !added {
            return Ok(subscribed);
        }
        self.join_presence(session, filter);
        if since.is_none() {
            subscribed.retained = self.send_retained(session, filter);
        }
        self.notify(&Lifecycle::Subscribed {
            client: session.id(),
            user: session.user(),
            filter,
        });
        Ok(subscribed)
    }

    /// What a topic's history holds after `since`, for a caller that may subscribe to
    /// it (the HTTP API; a `sub` recovers through [`Hub::subscribe_from`]).
    pub fn history(
        &self,
        by: &Grants,
        topic: &str,
        since: &Since,
        page: Option<u64>,
    ) -> Result<crate::history::Recovery, HubError> {
        topic::validate_filter(topic)?;
        if topic::is_wildcard(topic) {
            return Err(HubError::HistoryNeedsTopic(topic.to_owned()));
        }
        self.allow(by.check_subscribe(topic))?;
        let log = self
            .history
            .get()
            .and_then(|h| h.log(topic))
            .ok_or_else(|| HubError::HistoryDisabled(topic.to_owned()))?;
        let remote = self.remote_for(topic, Some(since), page);
        let recovery = log.recover_page(since, page);
        Ok(match (&remote, since) {
            (Some(remote), Since::After { seq, .. }) => {
                self.repaired(topic, &log, recovery, remote, *seq, page)
            }
            _ => recovery,
        })
    }

    /// Attaches the message history; set once at startup, before anything is served.
    pub fn set_history(&self, history: Arc<History>) {
        if self.history.set(history).is_err() {
            tracing::warn!("the history was already attached");
        }
    }

    /// Adds a consumer of every message.
    pub fn add_tap(&self, tap: Arc<dyn Tap>) {
        write(&self.taps).push(tap);
    }

    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> Result<(), HubError> {
        topic::validate_filter(filter)?;
        if !lock(&session.filters).remove(filter) {
            return Err(HubError::NotSubscribed(filter.to_owned()));
        }
        write(&self.index).remove(filter, session.key);
        self.leave_presence(session, filter);
        self.notify(&Lifecycle::Unsubscribed {
            client: session.id(),
            user: session.user(),
            filter,
        });
        Ok(())
    }

    /// Publishes one of the daemon's own retained notices (device and bridge status on
    /// `$` topics), from `switchboard`.
    pub fn publish_notice(
        &self,
        topic: &str,
        event: &str,
        data: &RawValue,
    ) -> Result<Published, HubError> {
        self.publish(Publish {
            topic,
            event: Some(event),
            data,
            from: "switchboard",
            origin: Origin::System,
            by: &Grants::ALL,
            retain: true,
        })
    }

    /// The encrypted-only rule, for ways in that must answer before they publish (MQTT
    /// acknowledges a device's publish with its reason code).
    pub fn encrypted_only(&self) -> &EncryptedOnly {
        &self.config.encrypted_only
    }

    /// Routes one message to every matching subscriber. MQTT subscribers get it at
    /// QoS 1 at most (the Hub acknowledged it), its payload by the MQTT payload rule.
    ///
    /// With a bus attached (`[cluster]`) it returns once the bus accepted the message,
    /// with the number the bus gave it; `delivered` is then 0 (delivery follows when
    /// each box reads it back).
    /// The daemon's own notices do not wait: no one is answered with them, and they are
    /// sent from places that must not block (a device's connection task).
    pub fn publish(&self, p: Publish<'_>) -> Result<Published, HubError> {
        let wait = p.origin != Origin::System;
        self.route(p, None, wait)
    }

    /// Routes a device's publish: MQTT subscribers get it as the device sent it.
    pub fn publish_from_device(
        &self,
        p: Publish<'_>,
        as_sent: AsSent,
    ) -> Result<Published, HubError> {
        // Never waits for a bus: the device's session acknowledged it already, and a
        // device's connection task must not block (`Ingress::accept`).
        self.route(p, Some(as_sent), false)
    }

    fn route(
        &self,
        p: Publish<'_>,
        as_sent: Option<AsSent>,
        wait: bool,
    ) -> Result<Published, HubError> {
        self.admit(&p)?;
        if let Some(bus) = self.bus.get() {
            // Several boxes as one: the bus numbers and orders the message, and this
            // box delivers it when it reads it back (`deliver_from_bus`), as every box does.
            return self.through_bus(bus.as_ref(), &p, as_sent, wait);
        }
        Ok(self.apply(p, as_sent, None))
    }

    /// The checks every publish passes once, on the box it entered.
    pub(super) fn admit(&self, p: &Publish<'_>) -> Result<(), HubError> {
        topic::validate_topic(p.topic)?;
        if p.origin != Origin::System {
            self.allow(p.by.check_publish(p.topic)).inspect_err(|_| {
                self.counters
                    .publishes_forbidden
                    .fetch_add(1, Ordering::Relaxed);
            })?;
            self.config.encrypted_only.check(p.topic, p.data)?;
        }
        Ok(())
    }

    /// Numbers (or, from the bus, takes the number given), delivers, keeps and taps one
    /// admitted message.
    pub(super) fn apply(
        &self,
        p: Publish<'_>,
        as_sent: Option<AsSent>,
        numbered: Option<(&str, u64)>,
    ) -> Published {
        let state = self.topic_state(p.topic);
        // Held through fan-out: concurrent publishers to one topic are serialised, so
        // every subscriber sees that topic's messages in seq order.
        let mut state = lock(&state);
        let seq = match numbered {
            None => {
                state.seq += 1;
                state.seq
            }
            Some((epoch, seq)) => match self.continuity(&mut state, p.topic, epoch, seq) {
                Some(seq) => seq,
                // Read twice from the bus (a reader resumed before its last entry).
                None => {
                    return Published {
                        seq,
                        delivered: 0,
                        stored: true,
                    }
                }
            },
        };
        // One clock reading per publish, for `ts` and for the delivery latency stamp.
        let now_us = switchboard_core::clock::now_us();
        let message = |retained| {
            ServerFrame::Msg {
                topic: Cow::Borrowed(p.topic),
                event: p.event.map(Cow::Borrowed),
                data: p.data,
                ts: now_us / 1000,
                seq,
                from: Cow::Borrowed(p.from),
                retained,
                history: false,
            }
            .to_frame()
        };
        let frame = message(false);
        let mut for_devices = ForDevices::new(&p, seq, as_sent);
        if p.retain && Self::retained_in_order(&mut state, numbered) {
            self.keep_retained(&mut state, p.topic, p.data, || Retained {
                frame: Shared::new(message(true)),
                message: for_devices.message().clone(),
            });
        }
        let delivered = self.deliver(p.topic, &frame, None, Some(now_us), Some(&mut for_devices));
        let stored = state
            .log
            .as_ref()
            .is_none_or(|log| log.append_at(&p, numbered.map(|(e, _)| e), seq, now_us));
        for tap in read(&self.taps).iter() {
            tap.routed(&p, seq, now_us);
        }
        drop(state);
        self.counters.published[p.origin as usize].fetch_add(1, Ordering::Relaxed);
        Published {
            seq,
            delivered,
            stored,
        }
    }

    /// Pushes one encoded frame to every session subscribed to `topic`, except `skip`,
    /// and, for a published message (`devices`), the message to every MQTT subscriber.
    /// `stamp` is when a published message was accepted (µs), for the latency figure.
    pub(super) fn deliver(
        &self,
        topic: &str,
        frame: &Frame,
        skip: Option<index::Key>,
        stamp: Option<u64>,
        mut devices: Option<&mut ForDevices<'_>>,
    ) -> usize {
        let mut tally = Tally::default();
        // The frame with room for its compressed form, made for the first subscriber
        // that compresses: all of them share it, so it is compressed at most once.
        let mut shared: Option<Arc<Shared>> = None;
        read(&self.index).for_each_match(topic, |s| {
            let pushed = match s {
                Subscriber::Client(s) if Some(s.key) != skip => {
                    let item = if s.compressed() {
                        let shared = shared.get_or_insert_with(|| Shared::new(frame.clone()));
                        Outgoing::Shared(shared.clone())
                    } else {
                        Outgoing::Frame(frame.clone())
                    };
                    s.outbox.push_stamped(item, stamp)
                }
                Subscriber::Client(_) => return,
                Subscriber::Device(d, options) => {
                    let Some(devices) = devices.as_deref_mut() else {
                        return;
                    };
                    if let Some(delivery) = devices.delivery(d, options) {
                        tally.device(d.outbox.push_stamped(delivery, stamp));
                    }
                    return;
                }
                Subscriber::Shared(d, options, group) => {
                    if let Some(devices) = devices.as_deref_mut() {
                        devices.shared.push((group.clone(), d.clone(), *options));
                    }
                    return;
                }
            };
            tally.count(pushed);
        });
        if let Some(devices) = devices {
            // One member of each shared subscription's group gets it, in turn by the
            // topic's sequence number; chosen outside the index lock.
            let mut shared = std::mem::take(&mut devices.shared);
            shared.sort_by(|a, b| a.0.cmp(&b.0));
            for members in shared.chunk_by(|a, b| a.0 == b.0) {
                let (_, d, options) = &members[(devices.seq % members.len() as u64) as usize];
                if let Some(delivery) = devices.delivery(d, options) {
                    tally.device(d.outbox.push_stamped(delivery, stamp));
                }
            }
        }
        self.counters.delivered.fetch_add(
            (tally.delivered - tally.to_devices) as u64,
            Ordering::Relaxed,
        );
        if tally.dropped > 0 {
            self.counters
                .dropped
                .fetch_add(tally.dropped, Ordering::Relaxed);
        }
        if tally.closed > 0 {
            self.counters
                .slow_closed
                .fetch_add(tally.closed, Ordering::Relaxed);
            self.counters
                .slow_discarded
                .fetch_add(tally.discarded, Ordering::Relaxed);
        }
        tally.delivered
    }

    /// Replaces a live connection's identity (a refreshed token) and drops the
    /// subscriptions the new grants no longer allow; returns those filters.
    pub fn refresh(&self, session: &Arc<Session>, principal: Arc<Principal>) -> Vec<String> {
        let dropped = principal
            .grants
            .disallowed(session.filters().iter().map(String::as_str));
        session.set_principal(principal);
        for filter in &dropped {
            // Gone between the two steps is fine: it is gone either way.
            let _ = self.unsubscribe(session, filter);
        }
        dropped
    }

    /// Gives every connection whose identity matches a new one (the configuration's
    /// anonymous grants changed), drops the subscriptions it no longer allows as
    /// [`Hub::refresh`] does, and tells the client which with an `unsubscribed` frame.
    /// Returns how many connections lost a subscription.
    pub fn regrant(
        &self,
        matches: impl Fn(&Principal) -> bool,
        principal: &Arc<Principal>,
        why: &str,
    ) -> usize {
        let mut narrowed = 0;
        for session in self.sessions() {
            if !matches(&session.principal()) {
                continue;
            }
            let dropped = self.refresh(&session, principal.clone());
            if !dropped.is_empty() {
                narrowed += 1;
                let notice = ServerFrame::Unsubscribed {
                    unsubscribed: &dropped,
                    message: Cow::Borrowed(why),
                };
                session.outbox.push(notice.to_frame());
            }
        }
        narrowed
    }

    /// Closes every connection whose identity matches, such as those using a revoked
    /// API key; returns how many.
    pub fn close_where(&self, matches: impl Fn(&Principal) -> bool, reason: CloseReason) -> usize {
        let doomed: Vec<Arc<Session>> = read(&self.clients)
            .values()
            .filter(|s| matches(&s.principal()))
            .cloned()
            .collect();
        for session in &doomed {
            session.outbox.close(reason);
        }
        doomed.len()
    }

    /// A page of the filters someone subscribes to, with how many connections hold
    /// each (see [`index::SubscriptionIndex::page`]); the index read lock is held for
    /// one page only.
    pub fn subscribed_filters(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visible: impl Fn(&str) -> bool,
    ) -> index::FilterPage {
        // Filters the caller may not see cost a look each: bound those too.
        read(&self.index).page(prefix, after, limit, limit.saturating_mul(10), visible)
    }

    /// Every connected session, for shutdown.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        read(&self.clients).values().cloned().collect()
    }
}

/// A subscriber in the index: a connection, which gets encoded frames, or an MQTT
/// device's session, which gets deliveries under its subscription's options; a shared
/// subscription (`$share/<group>/<filter>`, indexed under `<filter>`) names its group.
#[derive(Clone)]
pub(super) enum Subscriber {
    Client(Arc<Session>),
    Device(Arc<DeviceSession>, SubscriptionOptions),
    Shared(Arc<DeviceSession>, SubscriptionOptions, Arc<str>),
}

/// What one fan-out did, for the counters.
#[derive(Default)]
struct Tally {
    delivered: usize,
    /// Of `delivered`, to MQTT devices: their connections count what they write.
    to_devices: usize,
    dropped: u64,
    closed: u64,
    discarded: u64,
}

impl Tally {
    fn device(&mut self, pushed: Pushed) {
        if matches!(pushed, Pushed::Queued | Pushed::DroppedOldest(_)) {
            self.to_devices += 1;
        }
        self.count(pushed);
    }

    fn count(&mut self, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.delivered += 1,
            Pushed::DroppedOldest(n) => {
                self.delivered += 1;
                self.dropped += n;
            }
            Pushed::Overflowed(n) => {
                self.closed += 1;
                self.discarded += n;
            }
            Pushed::Closed => {}
        }
    }
}

/// A device's publish as it sent it, so MQTT subscribers get it byte for byte.
#[derive(Debug, Clone)]
pub struct AsSent {
    pub qos: u8,
    pub payload: Bytes,
    /// MQTT 5 properties as encoded on the wire (see `DeviceMessage::properties`).
    pub properties: Bytes,
}

/// One published message as MQTT subscribers get it, made on the first that matches:
/// most messages have none, and those that do share one copy.
pub(super) struct ForDevices<'a> {
    publish: &'a Publish<'a>,
    seq: u64,
    as_sent: Option<AsSent>,
    made: Option<Arc<DeviceMessage>>,
    /// Members of shared subscriptions that match, with their group.
    shared: Vec<(Arc<str>, Arc<DeviceSession>, SubscriptionOptions)>,
}

impl<'a> ForDevices<'a> {
    pub(super) fn new(publish: &'a Publish<'a>, seq: u64, as_sent: Option<AsSent>) -> Self {
        ForDevices {
            publish,
            seq,
            as_sent,
            made: None,
            shared: Vec::new(),
        }
    }

    pub(super) fn message(&mut self) -> &Arc<DeviceMessage> {
        let (p, as_sent) = (self.publish, &mut self.as_sent);
        self.made.get_or_insert_with(|| {
            let topic = Bytes::copy_from_slice(p.topic.as_bytes());
            Arc::new(match as_sent.take() {
                Some(sent) => DeviceMessage {
                    topic,
                    payload: sent.payload,
                    qos: sent.qos,
                    retain: p.retain,
                    properties: sent.properties,
                },
                None => DeviceMessage {
                    topic,
                    payload: Bytes::from(payload::to_payload(p.data).into_owned()),
                    qos: 1,
                    retain: p.retain,
                    properties: Bytes::new(),
                },
            })
        })
    }

    /// What one MQTT subscription gets, if anything: not its own device's message under
    /// No Local, nothing at QoS 0 while its device is away.
    fn delivery(&mut self, to: &DeviceSession, options: &SubscriptionOptions) -> Option<Delivery> {
        if options.no_local && self.publish.origin == Origin::Mqtt && self.publish.from == to.from {
            return None;
        }
        let message = self.message();
        let qos = message.qos.min(options.qos);
        if qos == 0 && !to.attached() {
            return None;
        }
        Some(Delivery {
            message: message.clone(),
            qos,
            retain: options.retain_as_published && message.retain,
            dup: false,
        })
    }
}

/// A recovered message as its subscriber gets it: as first delivered, marked `history`.
fn history_frame(m: &StoredMessage) -> Option<Frame> {
    let data = RawValue::from_string(m.data.clone())
        .inspect_err(|e| tracing::warn!(topic = m.topic, seq = m.seq, error = %e, "history: stored payload is not JSON; skipped"))
        .ok()?;
    Some(
        ServerFrame::Msg {
            topic: Cow::Borrowed(&m.topic),
            event: m.event.as_deref().map(Cow::Borrowed),
            data: &data,
            ts: m.ts_us / 1000,
            seq: m.seq,
            from: Cow::Borrowed(&m.from),
            retained: false,
            history: true,
        }
        .to_frame(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{anyone, frames, hub, named, publish_as};
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn publish_fans_out_with_sequence() {
        let hub = hub();
        let a = hub.connect(anyone());
        hub.subscribe(&a, "t/+").unwrap();
        let data = RawValue::from_string("[1]".into()).unwrap();
        for _ in 0..2 {
            hub.publish(Publish {
                topic: "t/x",
                event: Some("e"),
                data: &data,
                from: "me",
                origin: Origin::Ws,
                by: &Grants::ALL,
                retain: false,
            })
            .unwrap();
        }
        let got = frames(&a).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["seq"], 1);
        assert_eq!(got[1]["seq"], 2);
        assert_eq!(got[1]["event"], "e");
        assert!(hub
            .publish(Publish {
                topic: "t/#",
                event: None,
                data: &data,
                from: "me",
                origin: Origin::Ws,
                by: &Grants::ALL,
                retain: false,
            })
            .is_err());
    }

    #[test]
    fn dollar_topics_are_reserved_for_the_server_and_taps_see_origins() {
        struct Seen(Mutex<Vec<(String, Origin, bool)>>);
        impl Tap for Seen {
            fn routed(&self, m: &Publish<'_>, _seq: u64, _ts_us: u64) {
                self.0
                    .lock()
                    .unwrap()
                    .push((m.topic.to_owned(), m.origin, m.retain));
            }
        }
        let hub = hub();
        let seen = Arc::new(Seen(Mutex::default()));
        hub.add_tap(seen.clone());
        assert!(matches!(
            publish_as(&hub, "$devices/x", "1", Origin::Ws, false),
            Err(HubError::Forbidden(_))
        ));
        publish_as(&hub, "$devices/x", "1", Origin::System, true).unwrap();
        publish_as(&hub, "s/1", "1", Origin::Mqtt, false).unwrap();
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("$devices/x".to_owned(), Origin::System, true),
                ("s/1".to_owned(), Origin::Mqtt, false)
            ]
        );
    }

    #[tokio::test]
    async fn subscription_limit_and_cleanup() {
        let hub = hub();
        let a = hub.connect(named("ann"));
        hub.subscribe(&a, "a").unwrap();
        hub.subscribe(&a, "a").unwrap();
        hub.subscribe(&a, "b").unwrap();
        assert!(matches!(
            hub.subscribe(&a, "c"),
            Err(HubError::TooManySubscriptions(2))
        ));
        hub.disconnect(&a);
        let s = hub.stats();
        assert_eq!((s.connections, s.subscriptions), (0, 0));
    }
}
