//! The Hub: routing at the centre of the data path.
//!
//! Owns subscriptions (the [`index`]), per-topic sequence numbers and retained values,
//! presence, the table of connected sessions and direct messages. Every way in turns into a [`Publish`]; the
//! Hub encodes the outgoing frame once and pushes the same bytes into each matching
//! session's [`outbox`]. It never does I/O and never waits on a subscriber: the
//! transports (see `crate::ws`) own sockets and drain outboxes. Other consumers of every
//! message (the MQTT broker today) attach as [`Tap`]s.
//!
//! Locking: a publish takes its topic's lock (so every subscriber sees one topic's
//! messages in sequence order) and then the index read lock. Subscribing takes the index
//! write lock alone. No lock is held across an `.await`.

pub mod config;
pub mod index;
pub mod outbox;
mod session;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde_json::value::RawValue;

use crate::auth::Principal;
use crate::history::{History, Log, Position};
use crate::store::StoredMessage;
use index::SubscriptionIndex;
use outbox::{CloseReason, Outbox, Pushed, QueueLimits};
use session::lock;
pub use session::Session;
use switchboard_core::grants::{Forbidden, Grants};
use switchboard_core::message::{Lifecycle, Origin, Publish, Published, Tap};
use switchboard_core::protocol::Since;
use switchboard_core::protocol::{self, Frame, Member, Recipient, ServerFrame};
use switchboard_core::topic::{self, Filter, TopicError};

/// What the Hub needs from the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub queue: QueueLimits,
    pub max_subscriptions: usize,
    /// Topics matching these filters track who is subscribed and announce joins/leaves.
    pub presence: Vec<Filter>,
    pub max_info_bytes: usize,
}

/// Why the Hub refused a request. Each maps to one protocol error code.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    #[error("at most {0} subscriptions per connection")]
    TooManySubscriptions(usize),
    #[error("not subscribed to `{0}`")]
    NotSubscribed(String),
    #[error("presence is not enabled for `{0}`")]
    PresenceDisabled(String),
    #[error("no connected recipient for {0}")]
    NoRecipient(String),
    #[error("info must be a JSON object of at most {0} bytes")]
    InvalidInfo(usize),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error("`{0}` keeps no history (see [history] in the configuration)")]
    HistoryDisabled(String),
    #[error("recovering messages needs a topic without wildcards, not `{0}`")]
    HistoryNeedsTopic(String),
}

impl HubError {
    pub fn code(&self) -> protocol::ErrorCode {
        use protocol::ErrorCode as C;
        match self {
            HubError::InvalidTopic(_) => C::InvalidTopic,
            HubError::TooManySubscriptions(_) => C::TooManySubscriptions,
            HubError::NotSubscribed(_) => C::NotSubscribed,
            HubError::PresenceDisabled(_) => C::PresenceDisabled,
            HubError::NoRecipient(_) => C::NoRecipient,
            HubError::InvalidInfo(_) => C::InvalidInfo,
            HubError::Forbidden(_) => C::Forbidden,
            HubError::HistoryDisabled(_) => C::HistoryDisabled,
            HubError::HistoryNeedsTopic(_) => C::BadRequest,
        }
    }
}

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

/// Retained values kept at most; beyond it new retained topics are refused (counted),
/// so a client cannot grow memory without bound by retaining to ever-new topics.
pub const MAX_RETAINED: usize = 100_000;

/// Live counters, cheap enough to bump on every delivery.
#[derive(Default)]
struct Counters {
    /// Indexed by `Origin as usize`: one add per publish, as before the split.
    published: [AtomicU64; Origin::ALL.len()],
    publishes_forbidden: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    slow_closed: AtomicU64,
    /// Frames discarded with the queues of connections closed as slow consumers.
    slow_discarded: AtomicU64,
    direct: AtomicU64,
    retained: AtomicU64,
    retained_refused: AtomicU64,
    forbidden: AtomicU64,
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

/// Topics whose sequence numbers are kept before those without subscribers are
/// forgotten (their `seq` then starts again at 1).
const MAX_TRACKED_TOPICS: usize = 100_000;

#[derive(Default)]
struct TopicState {
    seq: u64,
    /// The retained message, already encoded with `retained: true`.
    retained: Option<Frame>,
    /// The topic's history, when a rule keeps one; it numbers on from its last message.
    log: Option<Log>,
}

/// What a subscription found, for the `ok` reply.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// For a topic with a history: its position when the subscription began. Messages
    /// numbered after it arrive live.
    pub position: Option<Position>,
    /// For a subscription that asked for missed messages: whether all of them were
    /// queued, and how many.
    pub recovery: Option<(bool, usize)>,
}

pub struct Hub {
    config: HubConfig,
    next_key: AtomicU64,
    index: RwLock<SubscriptionIndex<Arc<Session>>>,
    topics: RwLock<HashMap<Box<str>, Arc<Mutex<TopicState>>>>,
    /// Size of `topics` at which topics without subscribers are forgotten.
    prune_topics_at: std::sync::atomic::AtomicUsize,
    clients: RwLock<HashMap<String, Arc<Session>>>,
    users: RwLock<HashMap<String, HashMap<index::Key, Arc<Session>>>>,
    /// Presence-enabled topic → its members, ordered by connection.
    presence: Mutex<HashMap<String, BTreeMap<index::Key, Arc<Session>>>>,
    taps: RwLock<Vec<Arc<dyn Tap>>>,
    history: OnceLock<Arc<History>>,
    counters: Counters,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(config: HubConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            next_key: AtomicU64::new(1),
            index: RwLock::default(),
            topics: RwLock::default(),
            prune_topics_at: std::sync::atomic::AtomicUsize::new(MAX_TRACKED_TOPICS),
            clients: RwLock::default(),
            users: RwLock::default(),
            presence: Mutex::default(),
            taps: RwLock::default(),
            history: OnceLock::new(),
            counters: Counters::default(),
        })
    }

    /// Registers a new connection and gives it a fresh client id.
    pub fn connect(&self, principal: Arc<Principal>) -> Arc<Session> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        // Random, so ids are not guessable from connection order; the key keeps it unique.
        let id = format!("c{:08x}{:x}", rand::random::<u32>(), key);
        let user = principal.user.clone();
        let session = Arc::new(Session::new(
            key,
            id.clone(),
            principal,
            Outbox::new(self.config.queue),
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
            write(&self.index).insert(filter, session.key, session.clone());
        }
        let mut subscribed = Subscribed::default();
        if let Some(log) = guard.as_ref().and_then(|state| state.log.as_ref()) {
            match since.filter(|_| added) {
                Some(since) => {
                    let recovery = log.recover(since);
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
                None => subscribed.position = Some(log.position()),
            }
        }
        drop(guard);
        if !added {
            return Ok(subscribed);
        }
        self.join_presence(session, filter);
        if since.is_none() {
            self.send_retained(session, filter);
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
        Ok(log.recover_page(since, page))
    }

    /// Attaches the message history; set once at startup, before anything is served.
    pub fn set_history(&self, history: Arc<History>) {
        if self.history.set(history).is_err() {
            tracing::warn!("the history was already attached");
        }
    }

    fn send_retained(&self, session: &Arc<Session>, filter: &str) {
        if self.counters.retained.load(Ordering::Relaxed) == 0 {
            return;
        }
        let frames: Vec<Frame> = if topic::is_wildcard(filter) {
            read(&self.topics)
                .iter()
                .filter(|(t, _)| topic::matches(filter, t))
                .filter_map(|(_, state)| lock(state).retained.clone())
                .collect()
        } else {
            read(&self.topics)
                .get(filter)
                .and_then(|state| lock(state).retained.clone())
                .into_iter()
                .collect()
        };
        for frame in frames {
            // A full queue applies the slow-consumer policy as for any push.
            let _ = session.outbox.push(frame);
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

    /// Routes one message to every matching subscriber.
    pub fn publish(&self, p: Publish<'_>) -> Result<Published, HubError> {
        topic::validate_topic(p.topic)?;
        if p.origin != Origin::System {
            self.allow(p.by.check_publish(p.topic)).inspect_err(|_| {
                self.counters
                    .publishes_forbidden
                    .fetch_add(1, Ordering::Relaxed);
            })?;
        }
        let state = self.topic_state(p.topic);
        // Held through fan-out: concurrent publishers to one topic are serialised, so
        // every subscriber sees that topic's messages in seq order.
        let mut state = lock(&state);
        state.seq += 1;
        let seq = state.seq;
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
        if p.retain {
            let clears = p.data.get() == "\"\"";
            let had = state.retained.is_some();
            if clears {
                state.retained = None;
            } else if had || self.counters.retained.load(Ordering::Relaxed) < MAX_RETAINED as u64 {
                state.retained = Some(message(true));
            } else {
                self.counters
                    .retained_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    topic = p.topic,
                    "retained value not kept: {MAX_RETAINED} topics already retain one"
                );
            }
            match (had, state.retained.is_some()) {
                (false, true) => self.counters.retained.fetch_add(1, Ordering::Relaxed),
                (true, false) => self.counters.retained.fetch_sub(1, Ordering::Relaxed),
                _ => 0,
            };
        }
        let delivered = self.deliver(p.topic, &frame, None, Some(now_us));
        if let Some(log) = &state.log {
            log.append(&p, seq, now_us);
        }
        for tap in read(&self.taps).iter() {
            tap.publish(&p, seq, now_us);
        }
        drop(state);
        self.counters.published[p.origin as usize].fetch_add(1, Ordering::Relaxed);
        Ok(Published { seq, delivered })
    }

    fn topic_state(&self, topic: &str) -> Arc<Mutex<TopicState>> {
        if let Some(s) = read(&self.topics).get(topic) {
            return s.clone();
        }
        let mut topics = write(&self.topics);
        if topics.len() >= self.prune_topics_at.load(Ordering::Relaxed)
            && !topics.contains_key(topic)
        {
            // A client publishing to ever-new topics must not grow this map forever:
            // forget topics nobody subscribes to and nobody is publishing to right now.
            let index = read(&self.index);
            // A state only the map holds cannot be locked by anyone else, so the lock
            // taken for the retained check never waits.
            topics.retain(|t, state| {
                Arc::strong_count(state) > 1
                    || index.count_matches(t) > 0
                    || lock(state).retained.is_some()
            });
            // If most topics are in use, wait for the map to double before scanning
            // again, so the scan costs O(1) per new topic over time.
            let next = MAX_TRACKED_TOPICS.max(topics.len() * 2);
            self.prune_topics_at.store(next, Ordering::Relaxed);
            tracing::debug!(kept = topics.len(), "forgot topics without subscribers");
        }
        topics
            .entry(topic.into())
            .or_insert_with(|| {
                let log = self.history.get().and_then(|h| h.log(topic));
                Arc::new(Mutex::new(TopicState {
                    seq: log.as_ref().map_or(0, Log::last_seq),
                    retained: None,
                    log,
                }))
            })
            .clone()
    }

    /// Pushes one encoded frame to every session subscribed to `topic`, except `skip`.
    /// `stamp` is when a published message was accepted (µs), for the latency figure.
    fn deliver(
        &self,
        topic: &str,
        frame: &Frame,
        skip: Option<index::Key>,
        stamp: Option<u64>,
    ) -> usize {
        let mut delivered = 0usize;
        let mut dropped = 0u64;
        let mut closed = 0u64;
        let mut discarded = 0u64;
        read(&self.index).for_each_match(topic, |s| {
            if Some(s.key) == skip {
                return;
            }
            match s.outbox.push_stamped(frame.clone(), stamp) {
                Pushed::Queued => delivered += 1,
                Pushed::DroppedOldest(n) => {
                    delivered += 1;
                    dropped += n;
                }
                Pushed::Overflowed(n) => {
                    closed += 1;
                    discarded += n;
                }
                Pushed::Closed => {}
            }
        });
        self.counters
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        if dropped > 0 {
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if closed > 0 {
            self.counters
                .slow_closed
                .fetch_add(closed, Ordering::Relaxed);
            self.counters
                .slow_discarded
                .fetch_add(discarded, Ordering::Relaxed);
        }
        delivered
    }

    /// Sends a direct message; returns how many connections got it.
    pub fn send_direct(
        &self,
        from: Sender<'_>,
        to: &Recipient,
        event: Option<&str>,
        data: &RawValue,
    ) -> Result<usize, HubError> {
        let targets: Vec<Arc<Session>> = match to {
            Recipient::Client(id) => {
                let target = read(&self.clients).get(id).cloned();
                if let Some(target) = &target {
                    self.allow(from.grants.check_send(target.user()))?;
                }
                target.into_iter().collect()
            }
            Recipient::User(user) => {
                self.allow(from.grants.check_send(Some(user)))?;
                read(&self.users)
                    .get(user)
                    .map(|conns| {
                        conns
                            .values()
                            .filter(|s| Some(s.key) != from.key)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            }
        };
        let frame = ServerFrame::Dm {
            event: event.map(Cow::Borrowed),
            data,
            ts: switchboard_core::clock::now_ms(),
            from: Cow::Borrowed(from.id),
            from_user: from.user.map(Cow::Borrowed),
        }
        .to_frame();
        let delivered = targets
            .iter()
            .filter(|s| {
                matches!(
                    s.outbox.push(frame.clone()),
                    Pushed::Queued | Pushed::DroppedOldest(_)
                )
            })
            .count();
        if delivered == 0 {
            let who = match to {
                Recipient::Client(id) => format!("client `{id}`"),
                Recipient::User(u) => format!("user `{u}`"),
            };
            return Err(HubError::NoRecipient(who));
        }
        self.counters.direct.fetch_add(1, Ordering::Relaxed);
        Ok(delivered)
    }

    /// Who is subscribed to a presence-enabled topic, for someone allowed to know.
    pub fn presence(&self, by: &Grants, topic: &str) -> Result<Vec<Member<'static>>, HubError> {
        topic::validate_topic(topic)?;
        self.allow(by.check_presence(topic))?;
        if !self.presence_enabled(topic) {
            return Err(HubError::PresenceDisabled(topic.to_owned()));
        }
        let presence = lock(&self.presence);
        Ok(presence
            .get(topic)
            .map(|members| members.values().map(|s| member(s)).collect())
            .unwrap_or_default())
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
    fn join_presence(&self, session: &Arc<Session>, filter: &str) {
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

    fn leave_presence(&self, session: &Arc<Session>, filter: &str) {
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
        let topic_name = Cow::Borrowed(topic);
        let member = member(session);
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
        let frame = frame.to_frame();
        self.deliver(topic, &frame, Some(session.key), None);
    }

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

    /// A permission check's verdict, with refusals counted.
    fn allow(&self, verdict: Result<(), Forbidden>) -> Result<(), HubError> {
        verdict.map_err(|e| {
            self.counters.forbidden.fetch_add(1, Ordering::Relaxed);
            HubError::Forbidden(e)
        })
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

    /// Every filter someone subscribes to, with how many connections hold it.
    pub fn subscribed_filters(&self) -> Vec<(String, usize)> {
        read(&self.index).filters()
    }

    /// Every connected session, for shutdown.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        read(&self.clients).values().cloned().collect()
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

fn member(session: &Session) -> Member<'static> {
    Member {
        client: Cow::Owned(session.id().to_owned()),
        user: session.user().map(|u| Cow::Owned(u.to_owned())),
        info: session.info().map(Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox::SlowConsumerPolicy;
    use std::collections::VecDeque;

    fn anyone() -> Arc<Principal> {
        Arc::new(Principal::anonymous(Grants::all()))
    }

    fn named(user: &str) -> Arc<Principal> {
        Arc::new(Principal {
            user: Some(user.into()),
            ..Principal::anonymous(Grants::all())
        })
    }

    fn hub() -> Arc<Hub> {
        Hub::new(HubConfig {
            queue: QueueLimits {
                max_messages: 16,
                max_bytes: 1 << 20,
                policy: SlowConsumerPolicy::DropOldest,
            },
            max_subscriptions: 2,
            presence: vec![Filter::new("room/+").unwrap()],
            max_info_bytes: 64,
        })
    }

    async fn frames(s: &Session) -> Vec<serde_json::Value> {
        let mut out = VecDeque::new();
        s.outbox.next_batch(&mut out).await;
        out.iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }

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
    fn topics_without_subscribers_are_forgotten_past_the_limit() {
        let hub = hub();
        let a = hub.connect(anyone());
        hub.subscribe(&a, "kept").unwrap();
        let data = RawValue::from_string("1".into()).unwrap();
        let publish = |topic: &str| {
            hub.publish(Publish {
                topic,
                event: None,
                data: &data,
                from: "t",
                origin: Origin::Ws,
                by: &Grants::ALL,
                retain: false,
            })
            .unwrap()
            .seq
        };
        publish("kept");
        for i in 0..MAX_TRACKED_TOPICS + 10 {
            publish(&format!("noise/{i}"));
        }
        let topics = hub.stats().topics;
        assert!(topics < 20, "noise forgotten: {topics} topics kept");
        assert_eq!(publish("kept"), 2, "a subscribed topic keeps its sequence");
    }

    fn publish_as(
        hub: &Hub,
        topic: &str,
        data: &str,
        origin: Origin,
        retain: bool,
    ) -> Result<Published, HubError> {
        let data = RawValue::from_string(data.into()).unwrap();
        hub.publish(Publish {
            topic,
            event: None,
            data: &data,
            from: "t",
            origin,
            by: &Grants::ALL,
            retain,
        })
    }

    #[tokio::test]
    async fn retained_values_reach_later_subscribers_and_empty_clears() {
        let hub = hub();
        publish_as(&hub, "r/a", "1", Origin::Ws, true).unwrap();
        publish_as(&hub, "r/b", "2", Origin::Ws, true).unwrap();
        publish_as(&hub, "r/c", "3", Origin::Ws, false).unwrap();
        publish_as(&hub, "r/a", "4", Origin::Ws, true).unwrap();
        let a = hub.connect(anyone());
        hub.subscribe(&a, "r/+").unwrap();
        let mut got = frames(&a).await;
        got.sort_by_key(|f| f["topic"].as_str().unwrap().to_owned());
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0]["data"].clone(), got[0]["retained"].clone()),
            (4.into(), true.into())
        );
        assert_eq!(got[1]["data"], 2);
        assert_eq!(hub.stats().retained, 2);

        publish_as(&hub, "r/a", "\"\"", Origin::Ws, true).unwrap();
        let live = frames(&a).await;
        assert_eq!(live.len(), 1, "the clearing message is delivered live");
        assert!(live[0].get("retained").is_none());
        let b = hub.connect(anyone());
        hub.subscribe(&b, "r/a").unwrap();
        hub.subscribe(&b, "r/b").unwrap();
        let got = frames(&b).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["topic"], "r/b");
        assert_eq!(hub.stats().retained, 1);
    }

    #[test]
    fn dollar_topics_are_reserved_for_the_server_and_taps_see_origins() {
        struct Seen(Mutex<Vec<(String, Origin, bool)>>);
        impl Tap for Seen {
            fn publish(&self, m: &Publish<'_>, _seq: u64, _ts_us: u64) {
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
