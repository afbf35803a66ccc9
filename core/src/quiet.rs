//! Keeping logs readable under a flood: one line per window for a repeated event, and
//! bounded copies of what a client sent.
//!
//! A device or page that repeats a refused request thousands of times a second must not
//! turn the journal into its megaphone (a connect storm once wrote 886,000 lines in 20 s,
//! a topic-alias flood 3.2 GB). Each call site that can repeat on untrusted input owns a
//! [`Throttle`]; the first occurrence in a window is logged with the count of those held
//! back since the last line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lets one occurrence of an event through per window and counts the rest.
///
/// Meant as a `static` next to the log line it guards:
///
/// ```
/// use switchboard_core::quiet::Throttle;
/// static REFUSED: Throttle = Throttle::per_secs(10);
/// if let Some(held_back) = REFUSED.admit() {
///     tracing::warn!(held_back, "retained value refused: the store is full");
/// }
/// ```
#[derive(Debug)]
pub struct Throttle {
    window_ms: u64,
    /// Milliseconds since [`epoch`] before which occurrences are only counted;
    /// `u64::MAX` until the first occurrence, which always passes.
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl Throttle {
    /// One line per `secs` seconds at most.
    pub const fn per_secs(secs: u64) -> Self {
        Throttle {
            window_ms: secs * 1000,
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many were held back
    /// since the last logged one; `None` when it should only be counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(elapsed_ms())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next
            || self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.window_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            // Another thread took this window's line: this occurrence is one of the rest.
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

/// Milliseconds since the first throttled event of the process (monotonic).
fn elapsed_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // +1 so that the very first reading is past a fresh throttle's `next_ms` of 0.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// At most `max` bytes of `text`, cut on a character boundary, for logging what a client
/// sent (topics, client ids) without letting it decide the size of the line.
pub fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_carrying_the_count_held_back() {
        let throttle = Throttle::per_secs(10);
        assert_eq!(
            throttle.admit_at(1),
            Some(0),
            "the first occurrence is logged"
        );
        for t in 2..1000 {
            assert_eq!(throttle.admit_at(t), None);
        }
        assert_eq!(throttle.admit_at(9_999), None, "still inside the window");
        assert_eq!(
            throttle.admit_at(10_001),
            Some(999),
            "998 + the one at 9,999"
        );
        assert_eq!(throttle.admit_at(10_002), None);
        assert_eq!(throttle.admit_at(30_000), Some(1));
    }

    #[test]
    fn clipping_never_splits_a_character() {
        assert_eq!(clip("sensors/1", 64), "sensors/1");
        assert_eq!(clip("abcdef", 3), "abc");
        // 'é' is two bytes: a cut inside it backs off to before it.
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("", 0), "");
    }
}
