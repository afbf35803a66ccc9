//! Topic state: each topic's sequence numbers, retained value and history log.
//!
//! Owns `TopicState`, the `topics` map, [`MAX_RETAINED`], setting and clearing retained
//! values (with their count) and forgetting tracked topics nobody uses. Routing
//! (`publish`, `subscribe_from`) takes a topic's state from here and holds its lock
//! while it numbers and delivers; this file never delivers and never changes the
//! subscription index.
//!
//! Locking: `topic_state` takes the `topics` read lock, and only to add a topic its write
//! lock; while forgetting topics it also takes the index read lock and the lock of states
//! only the map holds (so never waits on them). Retained values are also kept in
//! `retained`, in topic order, written with the topic's lock held; `send_retained` takes
//! only its read lock, for one step of a subscription's catch-up at a time, and pushes
//! after releasing it. No topic's lock is held while the `topics` map lock is taken.

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use switchboard_core::delivery::DeviceMessage;

use super::outbox::Shared;
use super::session::lock;
use super::{read, write, Hub, Session};
use crate::history::Log;
use switchboard_core::quiet::{clip, Throttle};
use switchboard_core::topic;

/// Retained topics a subscription's catch-up looks at per step (see [`RetainedCursor`]).
const RETAINED_STEP: usize = 512;

/// Retained values kept at most; beyond it new retained topics are refused (counted),
/// so a client cannot grow memory without bound by retaining to ever-new topics. The
/// server's own notices on `$` topics are not counted here: they are bounded by whoever
/// makes them (device status in `crate::mqtt`), and a storm of device connects must not
/// use up the values users retain.
pub const MAX_RETAINED: usize = 100_000;

/// Topics whose sequence numbers are kept before those that keep nothing and have no
/// subscriber by name are forgotten (their `seq` then starts again at 1).
pub(super) const MAX_TRACKED_TOPICS: usize = 100_000;

/// One topic's state; routing holds its lock while it numbers, delivers and logs.
#[derive(Default)]
pub(super) struct TopicState {
    pub(super) seq: u64,
    /// The retained message, already encoded with `retained: true`.
    pub(super) retained: Option<Arc<Shared>>,
    /// The topic's history, when a rule keeps one; it numbers on from its last message.
    pub(super) log: Option<Log>,
    /// With a cluster bus: the epoch of the numbers the bus gives this topic.
    pub(super) epoch: Option<Box<str>>,
    /// With a cluster bus: the `(epoch, seq)` that last set or cleared `retained`
    /// (`bus_retained.rs`).
    pub(super) retained_at: Option<(Box<str>, u64)>,
}

impl Hub {
    /// The topic's state, added if new; when the map is full, topics nobody subscribes
    /// to, publishes to or retains on are forgotten first.
    pub(super) fn topic_state(&self, topic: &str) -> Arc<Mutex<TopicState>> {
        if let Some(s) = read(&self.topics).get(topic) {
            return s.clone();
        }
        let mut topics = write(&self.topics);
        if topics.len() >= self.prune_topics_at.load(Ordering::Relaxed)
            && !topics.contains_key(topic)
        {
            // A client publishing to ever-new topics must not grow this map forever:
            // forget topics that keep nothing (no retained value, no history), that no
            // one subscribes to by name and that no one is publishing to right now. A
            // wildcard subscriber does not keep them: with one `#` subscriber every topic
            // ever published was kept (+515 MB for 300,000 topics, never given back); its
            // cost is that such a topic's `seq` starts again at 1.
            let index = read(&self.index);
            // A state only the map holds cannot be locked by anyone else, so the lock
            // taken for the check never waits.
            topics.retain(|t, state| {
                Arc::strong_count(state) > 1 || index.has_exact(t) || {
                    let state = lock(state);
                    state.retained.is_some() || state.log.is_some()
                }
            });
            // Give the memory back, not only the entries.
            topics.shrink_to_fit();
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
                    epoch: None,
                    retained_at: None,
                }))
            })
            .clone()
    }

    /// Sets the topic's retained value (`retained`, encoded only if kept) or, when the
    /// data is an empty string, clears it. New retained topics beyond [`MAX_RETAINED`]
    /// are refused and counted. Called by `publish` with the topic's lock held.
    pub(super) fn keep_retained(
        &self,
        state: &mut TopicState,
        topic: &str,
        data: &RawValue,
        retained: impl FnOnce() -> Retained,
    ) {
        let clears = data.get() == "\"\"";
        let had = state.retained.is_some();
        let system = topic.starts_with('$');
        let users = self.counters.retained.load(Ordering::Relaxed)
            - self.counters.retained_system.load(Ordering::Relaxed);
        if clears {
            state.retained = None;
            if had {
                write(&self.retained).remove(topic);
            }
        } else if had || system || users < MAX_RETAINED as u64 {
            let value = retained();
            let frame = value.frame.clone();
            let mut sorted = write(&self.retained);
            match sorted.get_mut(topic) {
                Some(kept) => *kept = value,
                None => {
                    sorted.insert(topic.into(), value);
                }
            }
            state.retained = Some(frame);
        } else {
            self.counters
                .retained_refused
                .fetch_add(1, Ordering::Relaxed);
            // One line per window: each refused message logged its own (50,000 lines
            // for 50,000 messages); the count is in `retained_refused`.
            static REFUSED: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = REFUSED.admit() {
                tracing::warn!(
                    topic = clip(topic, 128),
                    held_back,
                    "retained value not kept: {MAX_RETAINED} topics already retain one"
                );
            }
        }
        match (had, state.retained.is_some()) {
            (false, true) => self.count_retained(topic, true),
            (true, false) => self.count_retained(topic, false),
            _ => {}
        };
    }

    fn count_retained(&self, topic: &str, added: bool) {
        let counters = [&self.counters.retained, &self.counters.retained_system];
        let counted = if topic.starts_with('$') { 2 } else { 1 };
        for counter in &counters[..counted] {
            if added {
                counter.fetch_add(1, Ordering::Relaxed);
            } else {
                counter.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops a topic's retained value without a message to anyone: for the server's own
    /// notices, which their maker expires (a device's offline notice long after it left).
    pub fn forget_retained(&self, topic: &str) {
        let Some(state) = read(&self.topics).get(topic).cloned() else {
            return;
        };
        let mut state = lock(&state);
        if state.retained.take().is_some() {
            write(&self.retained).remove(topic);
            self.count_retained(topic, false);
            self.forget_on_bus(topic, &state);
        }
    }

    /// Starts queueing the retained values a new subscription to `filter` matches: the
    /// first step now, and a cursor when more remain, for the connection to take
    /// further steps with [`Hub::send_retained_step`] between its other work.
    pub(super) fn send_retained(
        &self,
        session: &Arc<Session>,
        filter: &str,
    ) -> Option<RetainedCursor> {
        let mut cursor = self.retained_cursor(filter);
        (!self.send_retained_step(session, &mut cursor)).then_some(cursor)
    }

    /// Queues the retained values of the next [`RETAINED_STEP`] retained topics the
    /// cursor's filter could match; true once none remain.
    pub fn send_retained_step(&self, session: &Session, cursor: &mut RetainedCursor) -> bool {
        self.retained_step(cursor, |r| {
            // A full queue applies the slow-consumer policy as for any push.
            let _ = session.outbox.push(session.share(&r.frame));
        })
    }

    pub(super) fn retained_cursor(&self, filter: &str) -> RetainedCursor {
        RetainedCursor {
            filter: filter.to_owned(),
            after: None,
        }
    }

    /// Hands `push` the retained values of the next [`RETAINED_STEP`] retained topics
    /// the cursor's filter could match (all of a filter without wildcards at once); true
    /// once none remain. The retained read lock is held for one step only, and `push`
    /// is called after it is released.
    pub(super) fn retained_step(
        &self,
        cursor: &mut RetainedCursor,
        mut push: impl FnMut(&Retained),
    ) -> bool {
        if self.counters.retained.load(Ordering::Relaxed) == 0 {
            return true;
        }
        if !topic::is_wildcard(&cursor.filter) {
            let found = read(&self.retained).get(cursor.filter.as_str()).cloned();
            if let Some(found) = found {
                push(&found);
            }
            return true;
        }
        // Retained topics are in byte order, so those a filter can match start with its
        // levels before the first wildcard.
        let prefix = match cursor.filter.find(['+', '#']) {
            Some(at) => &cursor.filter[..at],
            None => cursor.filter.as_str(),
        };
        let mut found = Vec::new();
        let mut last = None;
        let mut done = true;
        {
            let retained = read(&self.retained);
            let start = match &cursor.after {
                Some(after) => Bound::Excluded(&**after),
                None => Bound::Included(prefix),
            };
            for (looked, (t, value)) in retained
                .range::<str, _>((start, Bound::Unbounded))
                .enumerate()
            {
                if !t.starts_with(prefix) {
                    break;
                }
                if looked == RETAINED_STEP {
                    done = false;
                    break;
                }
                if topic::matches(&cursor.filter, t) {
                    found.push(value.clone());
                }
                last = Some(t);
            }
            if let Some(last) = last {
                cursor.after = Some(last.clone());
            }
        }
        for value in &found {
            push(value);
        }
        done
    }
}

/// A topic's retained value, as each kind of subscriber gets it: the WebSocket frame
/// (encoded with `retained: true`, compressed at most once for all the subscribers it is
/// sent to) and the MQTT message.
#[derive(Clone)]
pub(super) struct Retained {
    pub(super) frame: Arc<Shared>,
    pub(super) message: Arc<DeviceMessage>,
}

/// Where a wildcard subscription's retained values are up to.
///
/// Queueing them all at once held a worker thread for the whole retained table: two
/// clients alternating `sub #` and `unsub #` over 100,000 retained values stalled
/// every other client for 102 s (a busy tokio worker also checks for socket events
/// only every 61 tasks, so yielding between requests did not help). A connection takes
/// one step per turn instead, and reads no request until the last.
#[derive(Debug)]
pub struct RetainedCursor {
    filter: String,
    /// The last retained topic looked at.
    after: Option<Box<str>>,
}

impl RetainedCursor {
    pub(super) fn filter(&self) -> &str {
        &self.filter
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{anyone, frames, hub, publish_as};
    use super::*;
    use switchboard_core::grants::Grants;
    use switchboard_core::message::{Origin, Publish};

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

    #[test]
    fn server_notices_do_not_use_up_the_users_retained_values() {
        let hub = hub();
        for i in 0..MAX_RETAINED {
            publish_as(&hub, &format!("$devices/n{i}"), "1", Origin::System, true).unwrap();
        }
        publish_as(&hub, "r/kept", "1", Origin::Ws, true).unwrap();
        assert_eq!(hub.stats().retained_refused, 0);
        assert_eq!(hub.stats().retained, MAX_RETAINED as u64 + 1);
        hub.forget_retained("$devices/n0");
        hub.forget_retained("$devices/never");
        assert_eq!(hub.stats().retained, MAX_RETAINED as u64);
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
}
