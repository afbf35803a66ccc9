//! Reconnect delays: exponential growth with full jitter.
//!
//! Full jitter (a delay drawn uniformly between zero and the exponential ceiling) spreads
//! the clients that lost the same server over the whole window, so a restarted daemon is
//! not hit by all of them in the same millisecond.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The longest delay before attempt `attempt` (0-based): `min · 2^attempt`, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// A random delay in `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        rand::thread_rng().gen_range(Duration::ZERO..=self.ceiling(attempt))
    }

    /// A random delay in `ceiling/2..=ceiling`: still spread, but never near zero, for
    /// a loop that must not spin when every attempt fails at once (a refused login).
    pub fn equal_jitter(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        rand::thread_rng().gen_range(ceiling / 2..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };

    #[test]
    fn ceiling_doubles_then_caps() {
        let ms = |a| B.ceiling(a).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3)], [100, 200, 400, 800]);
        assert_eq!(ms(7), 10_000);
        // No overflow however long the outage.
        assert_eq!(ms(31), 10_000);
        assert_eq!(ms(u32::MAX), 10_000);
    }

    #[test]
    fn delays_stay_under_the_ceiling_and_spread() {
        let delays: Vec<Duration> = (0..200).map(|_| B.delay(5)).collect();
        assert!(delays.iter().all(|d| *d <= B.ceiling(5)));
        let low = delays.iter().filter(|d| **d < B.ceiling(5) / 2).count();
        assert!((40..160).contains(&low), "{low} of 200 in the lower half");
    }
}
