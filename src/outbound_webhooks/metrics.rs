//! What outbound webhooks show at /metrics, one label value per endpoint.

use super::{EndpointStats, Webhooks};
use crate::metrics::{Snapshot, Source};

/// Outbound webhooks, one label value per configured endpoint.
impl Source for Webhooks {
    fn collect(&self, s: &mut Snapshot) {
        let stats = self.stats();
        if stats.is_empty() {
            return;
        }
        let per = |f: fn(&EndpointStats) -> u64| {
            stats
                .iter()
                .map(move |e| (e.name.clone(), f(e)))
                .collect::<Vec<_>>()
        };
        s.counters(
            "webhook_events_delivered",
            "Events delivered to a webhook endpoint (answered with a 2xx).",
            "webhook",
            per(|e| e.delivered),
        );
        s.counters(
            "webhook_failed_attempts",
            "Webhook requests that failed: an error, a timeout or a non-2xx status.",
            "webhook",
            per(|e| e.failed_attempts),
        );
        s.counters(
            "webhook_events_dropped",
            "Webhook events lost before delivery: the hub's channel was full or max_pending was passed.",
            "webhook",
            per(|e| e.dropped),
        );
        s.gauges(
            "webhook_events_pending",
            "Webhook events stored and waiting for delivery.",
            "webhook",
            per(|e| e.pending),
        );
        s.gauges(
            "webhook_dead_letters",
            "Webhook deliveries on the dead-letter list.",
            "webhook",
            per(|e| e.dead),
        );
    }
}
