//! What the Hub shows at /metrics: messages in by the way they came, permissions,
//! subscriptions, retained values.

use switchboard_core::message::Origin;

use super::Hub;
use crate::metrics::families::DROPPED;
use crate::metrics::{Snapshot, Source};

/// Routing: messages in by the way they came, permissions, subscriptions, retained values.
impl Source for Hub {
    fn collect(&self, s: &mut Snapshot) {
        let hub = self.stats();
        s.counters(
            "messages_in",
            "Messages accepted by the Hub for routing, by the transport they came in by (system: the daemon's own notices).",
            "transport",
            Origin::ALL
                .iter()
                .zip(hub.published_by_origin)
                .map(|(origin, n)| (origin.as_str(), n)),
        );
        s.counters(
            "messages_dropped",
            DROPPED,
            "reason",
            [
                ("forbidden", hub.publishes_forbidden),
                ("retained_refused", hub.retained_refused),
                ("not_encrypted", self.config.encrypted_only.refused()),
            ],
        );
        s.counter(
            "direct_messages",
            "Direct messages (`send`) delivered to at least one connection.",
            hub.direct_messages,
        );
        s.counter(
            "requests_forbidden",
            "Requests over WebSocket and HTTP refused by permissions (publish, subscribe, send, presence).",
            hub.forbidden,
        );
        s.gauge(
            "subscriptions",
            "WebSocket subscriptions held now.",
            hub.subscriptions as u64,
        );
        s.gauge(
            "topics",
            "Topics whose sequence numbers are tracked now.",
            hub.topics as u64,
        );
        s.gauge(
            "retained",
            "Topics holding a retained value now.",
            hub.retained,
        );
    }
}
