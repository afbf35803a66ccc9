//! Which topic filters MQTT subscribers hold in the router.
//!
//! Every publish handed to rumqttd's router wakes its thread, and on one core that
//! wake-up and the context switches around it cost more than the rest of the publish
//! (a thousand sensors at 100 messages/s: a third of the core). Most device traffic is
//! read only by WebSocket dashboards through the Hub, so a non-retained publish that no
//! MQTT filter matches is not handed over at all, whatever its QoS (the session
//! acknowledges it). Retained messages always go (the router keeps them for later
//! subscribers). Topic aliases are resolved by the session, so the router never needs
//! its own alias table.
//!
//! Filters are recorded per client id, because a persistent session's subscriptions stay
//! in the router after its device leaves and come back with it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use switchboard_core::topic::matches as filter_matches;

/// The filters of every session the router knows, live or persistent.
#[derive(Default)]
pub(crate) struct Interest {
    inner: RwLock<Filters>,
    /// Bumped on every change, so sessions know when their cached answers are stale.
    generation: AtomicU64,
}

#[derive(Default)]
struct Filters {
    by_client: HashMap<String, HashSet<String>>,
    /// Each filter with the number of clients holding it.
    held: HashMap<String, usize>,
}

impl Interest {
    /// Records `filter` for `client_id`; call before the SUBSCRIBE reaches the router, so
    /// no publish after the SUBACK can be held back.
    pub fn add(&self, client_id: &str, filter: &str) {
        let filter = match_filter(filter);
        let mut f = self.write();
        let added = f
            .by_client
            .entry(client_id.to_owned())
            .or_default()
            .insert(filter.to_owned());
        if added {
            *f.held.entry(filter.to_owned()).or_default() += 1;
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    pub fn remove(&self, client_id: &str, filter: &str) {
        let filter = match_filter(filter);
        let mut f = self.write();
        let removed = f
            .by_client
            .get_mut(client_id)
            .is_some_and(|set| set.remove(filter));
        if removed {
            f.release(filter);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Drops everything `client_id` held: its clean session ended, or it came back with
    /// a clean session and the router discarded the old one.
    pub fn forget(&self, client_id: &str) {
        let mut f = self.write();
        let Some(filters) = f.by_client.remove(client_id) else {
            return;
        };
        for filter in &filters {
            f.release(filter);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The filters `client_id` holds in the router: a persistent session's come back
    /// with its device.
    pub fn held_by(&self, client_id: &str) -> HashSet<String> {
        self.read()
            .by_client
            .get(client_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Could any MQTT subscriber receive a publish to `topic`?
    pub fn wants(&self, topic: &str) -> bool {
        self.read()
            .held
            .keys()
            .any(|filter| filter_matches(filter, topic))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Filters> {
        // Only plain maps behind it; a panic elsewhere cannot leave them half-updated.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Filters> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Filters {
    fn release(&mut self, filter: &str) {
        if let Some(count) = self.held.get_mut(filter) {
            *count -= 1;
            if *count == 0 {
                self.held.remove(filter);
            }
        }
    }
}

/// One session's remembered answers of [`Interest::wants`], valid for one generation.
/// A sensor publishes to a handful of topics, so this turns the scan over every filter
/// into a few string comparisons per publish (cheaper than hashing the topic).
#[derive(Default)]
pub(crate) struct InterestCache {
    generation: u64,
    answers: Vec<(String, bool)>,
}

/// Answers kept per session before the cache starts over (a device cycling through
/// many topics should not grow it, or the scan, without bound).
const CACHED_TOPICS: usize = 16;

impl InterestCache {
    pub fn wants(&mut self, interest: &Interest, topic: &str) -> bool {
        let generation = interest.generation();
        if generation != self.generation || self.answers.len() >= CACHED_TOPICS {
            self.answers.clear();
            self.generation = generation;
        }
        if let Some((_, known)) = self.answers.iter().find(|(t, _)| t == topic) {
            return *known;
        }
        let wanted = interest.wants(topic);
        self.answers.push((topic.to_owned(), wanted));
        wanted
    }
}

/// `$share/<group>/<filter>` receives what `<filter>` matches.
pub(crate) fn match_filter(path: &str) -> &str {
    path.strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(path, |(_, filter)| filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants_what_some_held_filter_matches() {
        let i = Interest::default();
        assert!(!i.wants("plant/a/temp"));
        i.add("c1", "plant/+/temp");
        assert!(i.wants("plant/a/temp"));
        assert!(!i.wants("plant/a/humidity"));
        i.add("c2", "$share/g/plant/#");
        assert!(i.wants("plant/a/humidity"));
        i.remove("c2", "$share/g/plant/#");
        assert!(!i.wants("plant/a/humidity"));
    }

    #[test]
    fn a_filter_stays_while_any_client_holds_it() {
        let i = Interest::default();
        i.add("c1", "t");
        i.add("c2", "t");
        i.add("c2", "t"); // a repeated SUBSCRIBE replaces, it does not count twice
        i.remove("c2", "t");
        assert!(i.wants("t"));
        i.forget("c1");
        assert!(!i.wants("t"));
        i.remove("c1", "t"); // already gone: no underflow
        i.add("c3", "t");
        assert!(i.wants("t"));
    }

    #[test]
    fn cached_answers_follow_changes() {
        let i = Interest::default();
        let mut cache = InterestCache::default();
        assert!(!cache.wants(&i, "a/b"));
        i.add("c", "a/#");
        assert!(cache.wants(&i, "a/b"));
        i.forget("c");
        assert!(!cache.wants(&i, "a/b"));
        // Unchanged generations and repeated removals do not invalidate needlessly.
        let g = i.generation();
        i.remove("c", "a/#");
        i.forget("c");
        assert_eq!(i.generation(), g);
    }

    #[test]
    fn the_cache_is_bounded() {
        let i = Interest::default();
        let mut cache = InterestCache::default();
        for n in 0..1000 {
            cache.wants(&i, &format!("t/{n}"));
            assert!(cache.answers.len() <= CACHED_TOPICS);
        }
    }
}
