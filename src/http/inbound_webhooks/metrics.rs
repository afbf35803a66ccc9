//! What inbound webhooks show at /metrics.

use super::{Hooks, RefusedCounts};
use crate::metrics::{Snapshot, Source};

/// Inbound webhooks (`POST /hooks/<name>`).
impl Source for Hooks {
    fn collect(&self, s: &mut Snapshot) {
        let stats = self.stats();
        if stats.is_empty() {
            return;
        }
        s.counters(
            "hook_requests_accepted",
            "Inbound hook requests whose signature checked out and whose body was published.",
            "hook",
            stats.iter().map(|(name, c)| (name.clone(), c.accepted)),
        );
        s.counters(
            "hook_requests_duplicate",
            "Inbound hook requests with a webhook-id seen before, answered without publishing again.",
            "hook",
            stats.iter().map(|(name, c)| (name.clone(), c.duplicates)),
        );
        let refused =
            |f: fn(&RefusedCounts) -> u64| stats.values().map(|c| f(&c.refused)).sum::<u64>();
        s.counters(
            "hook_requests_refused",
            "Inbound hook requests refused, over every hook, by reason.",
            "reason",
            [
                ("missing_signature", refused(|r| r.missing_signature)),
                ("malformed_signature", refused(|r| r.malformed_signature)),
                ("bad_signature", refused(|r| r.bad_signature)),
                ("stale_timestamp", refused(|r| r.stale_timestamp)),
                ("too_large", refused(|r| r.too_large)),
            ],
        );
    }
}
