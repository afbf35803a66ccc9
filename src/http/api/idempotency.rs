//! Idempotency keys for HTTP publishes: a client that retries a request after a timeout
//! gives the same key, and the message is published once.
//!
//! Keys are remembered per caller for a configured window, at most [`MAX_KEYS`] of them
//! (the oldest forgotten first), so memory stays bounded whatever clients send.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::hub::HubError;
use switchboard_core::message::Published;

/// Keys remembered at most, across all callers.
pub const MAX_KEYS: usize = 100_000;

/// Whose key it is (a caller's identity) and the key itself.
type Scoped = (String, String);

pub struct IdempotencyCache {
    window: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashMap<Scoped, Published>,
    /// Insertion order, for expiry and the size cap.
    order: VecDeque<(Instant, Scoped)>,
}

impl IdempotencyCache {
    pub fn new(window: Duration) -> Self {
        IdempotencyCache {
            window,
            inner: Mutex::default(),
        }
    }

    /// Runs `publish` unless `caller` already published under `key` within the window.
    /// Returns what the first publish produced and whether this one was a duplicate. A
    /// publish that failed is not remembered, so the client may retry it.
    ///
    /// The lock is held across `publish` (a synchronous Hub call of microseconds), so two
    /// concurrent requests with one key cannot both publish.
    pub fn publish_once(
        &self,
        caller: &str,
        key: &str,
        publish: impl FnOnce() -> Result<Published, HubError>,
    ) -> Result<(Published, bool), HubError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        inner.expire(now, self.window);
        let scoped = (caller.to_owned(), key.to_owned());
        if let Some(first) = inner.seen.get(&scoped) {
            return Ok((*first, true));
        }
        let published = publish()?;
        if inner.order.len() >= MAX_KEYS {
            if let Some((_, oldest)) = inner.order.pop_front() {
                inner.seen.remove(&oldest);
            }
        }
        inner.seen.insert(scoped.clone(), published);
        inner.order.push_back((now, scoped));
        Ok((published, false))
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(seq: u64) -> Result<Published, HubError> {
        Ok(Published {
            seq,
            delivered: 1,
            stored: true,
        })
    }

    #[test]
    fn a_key_publishes_once_per_caller_within_the_window() {
        let cache = IdempotencyCache::new(Duration::from_millis(50));
        assert!(!cache.publish_once("a", "k", || published(1)).unwrap().1);
        let (first, dup) = cache
            .publish_once("a", "k", || panic!("must not publish twice"))
            .unwrap();
        assert_eq!((first.seq, dup), (1, true));
        assert!(!cache.publish_once("b", "k", || published(2)).unwrap().1);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            cache.publish_once("a", "k", || published(3)).unwrap(),
            (
                Published {
                    seq: 3,
                    delivered: 1,
                    stored: true
                },
                false
            )
        );
    }

    #[test]
    fn failures_are_not_remembered() {
        let cache = IdempotencyCache::new(Duration::from_secs(60));
        let refused = cache.publish_once("a", "k", || Err(HubError::NotSubscribed("x".into())));
        assert!(refused.is_err());
        assert!(!cache.publish_once("a", "k", || published(1)).unwrap().1);
    }
}
