//! A warning raised on a hot path, logged at most once per interval: a full queue drops
//! messages thousands of times a second, and the log should say so without drowning.

use std::sync::atomic::{AtomicU64, Ordering};

use switchboard_core::clock::now_ms;

pub struct Throttle {
    every_ms: u64,
    last_ms: AtomicU64,
}

impl Throttle {
    pub const fn new(every_ms: u64) -> Throttle {
        Throttle {
            every_ms,
            last_ms: AtomicU64::new(0),
        }
    }

    /// True for one caller at most once per interval.
    pub fn due(&self) -> bool {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.every_ms
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn due_once_per_interval() {
        let t = super::Throttle::new(60_000);
        assert!(t.due());
        assert!(!t.due());
    }
}
