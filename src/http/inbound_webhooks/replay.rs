//! Remembers the `webhook-id`s a Standard Webhooks hook has accepted, so a captured
//! request sent again is not published twice.
//!
//! An id only needs remembering while its signed timestamp is within the tolerance:
//! after that the request is refused as stale anyway. Memory is bounded by a capacity;
//! when a flood of valid deliveries fills it, the id closest to expiry is forgotten
//! first, which is the one least likely to be replayed in time.

use std::collections::{BTreeSet, HashMap};

/// Ids remembered per hook. At the longest id accepted this is a few MiB at most.
pub const CAPACITY: usize = 10_000;

/// Longest `webhook-id` accepted, so one request cannot make us store much.
pub const MAX_ID_LEN: usize = 256;

#[derive(Debug)]
pub struct ReplayWindow {
    capacity: usize,
    expiry_of: HashMap<String, u64>,
    by_expiry: BTreeSet<(u64, String)>,
}

impl ReplayWindow {
    pub fn new(capacity: usize) -> Self {
        ReplayWindow {
            capacity: capacity.max(1),
            expiry_of: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// Records `id` as seen until `expires_s` (Unix seconds). False when it was seen
    /// before and has not expired: a replay.
    pub fn insert(&mut self, id: &str, expires_s: u64, now_s: u64) -> bool {
        self.forget_expired(now_s);
        if self.expiry_of.contains_key(id) {
            return false;
        }
        if self.expiry_of.len() >= self.capacity {
            if let Some((_, oldest)) = self.by_expiry.pop_first() {
                self.expiry_of.remove(&oldest);
            }
        }
        self.expiry_of.insert(id.to_owned(), expires_s);
        self.by_expiry.insert((expires_s, id.to_owned()));
        true
    }

    /// Forgets `id`, so the sender's retry of a delivery we failed to publish is taken.
    pub fn forget(&mut self, id: &str) {
        if let Some(expiry) = self.expiry_of.remove(id) {
            self.by_expiry.remove(&(expiry, id.to_owned()));
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.expiry_of.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.expiry_of.is_empty()
    }

    fn forget_expired(&mut self, now_s: u64) {
        while let Some((expiry, _)) = self.by_expiry.first() {
            if *expiry >= now_s {
                break;
            }
            if let Some((_, id)) = self.by_expiry.pop_first() {
                self.expiry_of.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_refused_until_the_id_expires() {
        let mut w = ReplayWindow::new(10);
        assert!(w.insert("a", 100, 50));
        assert!(!w.insert("a", 100, 60), "replayed");
        assert!(!w.insert("a", 100, 100), "still within the window");
        assert!(w.insert("a", 200, 101), "expired, so new");
    }

    #[test]
    fn memory_is_bounded_and_the_soonest_to_expire_goes_first() {
        let mut w = ReplayWindow::new(3);
        assert!(w.insert("late", 300, 0));
        assert!(w.insert("soon", 100, 0));
        assert!(w.insert("mid", 200, 0));
        assert!(w.insert("new", 400, 0));
        assert_eq!(w.len(), 3);
        assert!(w.insert("soon", 100, 0), "evicted, so accepted again");
        assert!(!w.insert("late", 300, 0));
    }

    #[test]
    fn forgotten_ids_are_accepted_again() {
        let mut w = ReplayWindow::new(3);
        assert!(w.insert("a", 100, 0));
        w.forget("a");
        assert!(w.is_empty());
        assert!(w.insert("a", 100, 0));
    }
}
