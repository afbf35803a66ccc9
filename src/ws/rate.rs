//! The per-connection publish rate limit: a token bucket, and a count of refusals in a
//! row after which the client is considered abusive and closed.

use std::num::NonZeroU32;
use std::time::Instant;

/// What the limiter says about one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the rate: refuse this one (`rate_limited`).
    Limited,
    /// Refused too many times in a row: close the connection.
    Abusive,
}

pub struct PublishLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Tokens the bucket holds at most.
    burst: f64,
    tokens: f64,
    refilled: Instant,
    strikes: u32,
    max_strikes: u32,
}

impl PublishLimiter {
    pub fn new(rate: NonZeroU32, burst: NonZeroU32, max_strikes: NonZeroU32) -> Self {
        let burst = f64::from(burst.get().max(1));
        PublishLimiter {
            rate: f64::from(rate.get()),
            burst,
            tokens: burst,
            refilled: Instant::now(),
            strikes: 0,
            max_strikes: max_strikes.get(),
        }
    }

    pub fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return Verdict::Allowed;
        }
        self.strikes += 1;
        if self.strikes >= self.max_strikes {
            Verdict::Abusive
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn burst_then_rate_then_strikes() {
        let mut l = PublishLimiter::new(nz(10), nz(3), nz(3));
        let t0 = Instant::now();
        l.refilled = t0;
        for _ in 0..3 {
            assert_eq!(l.check_at(t0), Verdict::Allowed);
        }
        assert_eq!(l.check_at(t0), Verdict::Limited);
        // 100 ms at 10/s refills one token, and an allowed publish clears the strikes.
        assert_eq!(
            l.check_at(t0 + Duration::from_millis(100)),
            Verdict::Allowed
        );
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check_at(t1), Verdict::Limited);
        assert_eq!(l.check_at(t1), Verdict::Limited);
        assert_eq!(l.check_at(t1), Verdict::Abusive);
        // Never more than the burst, however long the pause.
        let later = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.check_at(later), Verdict::Allowed);
        }
        assert_ne!(l.check_at(later), Verdict::Allowed);
    }
}
