//! The Hub: routing at the centre of the data path.
//!
//! Every way in turns into a [`Publish`](switchboard_core::message::Publish); the Hub encodes the outgoing frame once and
//! pushes the same bytes into each matching session's [`outbox`]. It never does I/O and
//! never waits on a subscriber: the transports (see `crate::ws`) own sockets and drain
//! outboxes; an MQTT device is a subscriber too (`device.rs`), whose outbox holds
//! deliveries its connection encodes. Other consumers of every message (storage,
//! webhooks, bridges) attach as [`Tap`]s. The message vocabulary itself lives in `switchboard_core::message`.
//!
//! This file holds the [`Hub`] struct, its configuration and its errors; each concern
//! is an `impl Hub` block in a file of its own, which owns the fields marked for it:
//! - `routing.rs`: sessions table, connect/disconnect, subscribe/unsubscribe, publish
//!   and delivery to subscribers, taps, the attached history;
//! - `topics.rs`: per-topic sequence numbers, retained values, forgetting unused topics;
//! - `presence.rs`: presence members, `join`/`leave` announcements, `set_info`;
//! - `direct.rs`: direct messages to a client or a user;
//! - `device.rs`: MQTT subscribers' sessions, live and persistent;
//! - `bus.rs`: the seam to a bus shared by several boxes (`[cluster]`);
//! - `repair.rs`: filling holes in a topic's history from the bus's copy;
//! - `bus_retained.rs`: retained values loaded from the bus's store, never going back;
//! - `stats.rs`: counters and the [`Stats`] snapshot;
//! - [`index`] (the subscription trie), [`outbox`] (one connection's bounded queue) and
//!   `session.rs` (what the Hub knows of one connection).
//!
//! Locking: a publish takes its topic's lock (so every subscriber sees one topic's
//! messages in sequence order) and then the index read lock. Subscribing takes the index
//! write lock alone (inside the topic's lock on a topic with a history). The `topics`
//! map lock is never taken while a topic's lock is held. The `retained` map (retained
//! values in topic order) is written inside a topic's lock and read alone, one step of
//! a subscription's catch-up at a time. The presence lock and the
//! `clients`/`users` locks are each taken alone and released before delivering. No lock
//! is held across an `.await`. Each file's notes say which of these it takes.

mod bus;
mod bus_retained;
pub mod config;
mod device;
mod direct;
pub mod index;
pub mod metrics;
pub mod outbox;
mod presence;
mod repair;
mod routing;
mod session;
mod stats;
mod topics;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::history::History;
use crate::pubkeys::policy::{EncryptedOnly, NotEncrypted};
pub use bus::{Ack, Bus, BusMessage, BusWait, FromBus, Publishing};
pub use device::DeviceSession;
pub use direct::Sender;
use index::SubscriptionIndex;
use outbox::QueueLimits;
pub use repair::{RemoteEntry, RemoteFetch, RemoteHistory, RemoteRange};
pub use routing::{AsSent, Subscribed};
pub use session::Session;
use stats::Counters;
pub use stats::Stats;
use switchboard_core::grants::Forbidden;
use switchboard_core::message::Tap;
use switchboard_core::protocol;
use switchboard_core::topic::{Filter, TopicError};
pub use topics::{RetainedCursor, MAX_RETAINED};
use topics::{TopicState, MAX_TRACKED_TOPICS};

/// What the Hub needs from the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub queue: QueueLimits,
    pub max_subscriptions: usize,
    /// Topics matching these filters track who is subscribed and announce joins/leaves.
    pub presence: Vec<Filter>,
    pub max_info_bytes: usize,
    /// Topics that take end-to-end envelopes only; shared with the MQTT seam, which asks
    /// before it acknowledges a device's publish.
    pub encrypted_only: Arc<EncryptedOnly>,
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
    #[error(transparent)]
    NotEncrypted(#[from] NotEncrypted),
    /// The cluster bus did not take the message (Redis unreachable, too slow, refused).
    #[error("not published: {0}")]
    Unavailable(String),
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
            HubError::NotEncrypted(_) => C::EncryptionRequired,
            // A fault on the server side; the publisher may retry.
            HubError::Unavailable(_) => C::Internal,
        }
    }
}

/// The Hub's shared state. Fields are in their order before the split (which fixes
/// their drop order); each is marked with the file that owns it.
pub struct Hub {
    config: HubConfig,
    next_key: AtomicU64,                                       // routing.rs
    index: RwLock<SubscriptionIndex<routing::Subscriber>>,     // routing.rs
    topics: RwLock<HashMap<Box<str>, Arc<Mutex<TopicState>>>>, // topics.rs
    /// Each retained value by topic, in topic order, for new subscriptions.
    retained: RwLock<BTreeMap<Box<str>, topics::Retained>>, // topics.rs
    /// Size of `topics` at which topics without subscribers are forgotten.
    prune_topics_at: std::sync::atomic::AtomicUsize, // topics.rs
    clients: RwLock<HashMap<String, Arc<Session>>>,            // routing.rs
    users: RwLock<HashMap<String, HashMap<index::Key, Arc<Session>>>>, // routing.rs
    /// Presence-enabled topic → its members, ordered by connection.
    presence: Mutex<HashMap<String, BTreeMap<index::Key, Arc<Session>>>>, // presence.rs
    taps: RwLock<Vec<Arc<dyn Tap>>>,                           // routing.rs
    /// Taps that see, with a bus attached, only the messages published on this box:
    /// they act once per cluster (webhooks), given the same configuration on every box.
    history: OnceLock<Arc<History>>, // routing.rs
    counters: Counters,                                        // stats.rs
    /// MQTT devices' sessions by client id, live or waiting for their device.
    devices: Mutex<HashMap<String, Arc<DeviceSession>>>, // device.rs
    /// The bus shared with other boxes, when `[cluster]` is on.
    bus: OnceLock<Arc<dyn Bus>>, // bus.rs
    bus_gaps: AtomicU64,                                       // bus.rs
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
            retained: RwLock::default(),
            prune_topics_at: std::sync::atomic::AtomicUsize::new(MAX_TRACKED_TOPICS),
            clients: RwLock::default(),
            users: RwLock::default(),
            presence: Mutex::default(),
            taps: RwLock::default(),
            history: OnceLock::new(),
            counters: Counters::default(),
            devices: Mutex::default(),
            bus: OnceLock::new(),
            bus_gaps: AtomicU64::new(0),
        })
    }

    /// A permission check's verdict, with refusals counted.
    fn allow(&self, verdict: Result<(), Forbidden>) -> Result<(), HubError> {
        verdict.map_err(|e| {
            self.counters.forbidden.fetch_add(1, Ordering::Relaxed);
            HubError::Forbidden(e)
        })
    }
}

#[cfg(test)]
mod tests {
    //! Helpers shared by the Hub's unit tests, which sit beside the code they test.

    use super::*;
    use crate::auth::Principal;
    use outbox::SlowConsumerPolicy;
    use serde_json::value::RawValue;
    use std::collections::VecDeque;
    use switchboard_core::grants::Grants;
    use switchboard_core::message::{Origin, Publish, Published};

    pub(super) fn anyone() -> Arc<Principal> {
        Arc::new(Principal::anonymous(Grants::all()))
    }

    pub(super) fn named(user: &str) -> Arc<Principal> {
        Arc::new(Principal {
            user: Some(user.into()),
            ..Principal::anonymous(Grants::all())
        })
    }

    pub(super) fn hub() -> Arc<Hub> {
        Hub::new(HubConfig {
            queue: QueueLimits {
                max_messages: 16,
                max_bytes: 1 << 20,
                policy: SlowConsumerPolicy::DropOldest,
            },
            max_subscriptions: 2,
            presence: vec![Filter::new("room/+").unwrap()],
            max_info_bytes: 64,
            encrypted_only: Default::default(),
        })
    }

    pub(super) async fn frames(s: &Session) -> Vec<serde_json::Value> {
        let mut out = VecDeque::new();
        s.outbox.next_batch(&mut out).await;
        out.iter()
            .map(|b| serde_json::from_str(b.frame()).unwrap())
            .collect()
    }

    pub(super) fn publish_as(
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
}
