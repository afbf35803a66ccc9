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
//! only the map holds (so never waits on them). `send_retained` takes the `topics` read
//! lock and each matching topic's lock in turn, and pushes after releasing them all.
//! No topic's lock is held while the `topics` map lock is taken.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;

use super::session::lock;
use super::{read, write, Hub, Session};
use crate::history::Log;
use switchboard_core::protocol::Frame;
use switchboard_core::topic;

/// Retained values kept at most; beyond it new retained topics are refused (counted),
/// so a client cannot grow memory without bound by retaining to ever-new topics. The
/// server's own notices on `$` topics are not counted here: they are bounded by whoever
/// makes them (device status in `crate::mqtt`), and a storm of device connects must not
/// use up the values users retain.
pub const MAX_RETAINED: usize = 100_000;

/// Topics whose sequence numbers are kept before those without subscribers are
/// forgotten (their `seq` then starts again at 1).
pub(super) const MAX_TRACKED_TOPICS: usize = 100_000;

/// One topic's state; routing holds its lock while it numbers, delivers and logs.
#[derive(Default)]
pub(super) struct TopicState {
    pub(super) seq: u64,
    /// The retained message, already encoded with `retained: true`.
    pub(super) retained: Option<Frame>,
    /// The topic's history, when a rule keeps one; it numbers on from its last message.
    pub(super) log: Option<Log>,
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

    /// Sets the topic's retained value (`retained`, encoded only if kept) or, when the
    /// data is an empty string, clears it. New retained topics beyond [`MAX_RETAINED`]
    /// are refused and counted. Called by `publish` with the topic's lock held.
    pub(super) fn keep_retained(
        &self,
        state: &mut TopicState,
        topic: &str,
        data: &RawValue,
        retained: impl FnOnce() -> Frame,
    ) {
        let clears = data.get() == "\"\"";
        let had = state.retained.is_some();
        let system = topic.starts_with('$');
        let users = self.counters.retained.load(Ordering::Relaxed)
            - self.counters.retained_system.load(Ordering::Relaxed);
        if clears {
            state.retained = None;
        } else if had || system || users < MAX_RETAINED as u64 {
            state.retained = Some(retained());
        } else {
            self.counters
                .retained_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                topic,
                "retained value not kept: {MAX_RETAINED} topics already retain one"
            );
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
        if lock(&state).retained.take().is_some() {
            self.count_retained(topic, false);
        }
    }

    /// Queues the retained values a new subscription to `filter` matches.
    pub(super) fn send_retained(&self, session: &Arc<Session>, filter: &str) {
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
