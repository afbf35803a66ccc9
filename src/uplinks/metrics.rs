//! What links to other MQTT brokers show at /metrics, one label value per bridge.

use super::{Bridges, LinkStatus};
use crate::metrics::{Snapshot, Source};

/// Links to other MQTT brokers, one label value per bridge (`external` in external
/// mode).
impl Source for Bridges {
    fn collect(&self, s: &mut Snapshot) {
        let links = self.status();
        if links.is_empty() {
            return;
        }
        type Read = fn(&LinkStatus) -> u64;
        let counters: [(&'static str, &'static str, Read); 5] = [
            (
                "bridge_messages_forwarded",
                "Messages the other broker acknowledged.",
                |l| l.forwarded,
            ),
            (
                "bridge_messages_received",
                "Messages that came in from the other broker.",
                |l| l.received,
            ),
            (
                "bridge_messages_dropped",
                "Outbound messages dropped: queue full (oldest first) or the store writer behind.",
                |l| l.dropped,
            ),
            (
                "bridge_messages_refused",
                "Outbound messages the other broker acknowledged with an error reason.",
                |l| l.refused,
            ),
            (
                "bridge_connect_attempts",
                "Connection attempts to the other broker.",
                |l| l.connect_attempts,
            ),
        ];
        let gauges: [(&'static str, &'static str, Read); 4] = [
            (
                "bridge_lease_held",
                "1 while this box runs the bridge: it holds the bridge's lease, or the bridge has none.",
                |l| u64::from(l.role != Some("standby")),
            ),
            (
                "bridge_connected",
                "1 while the link to the other broker is up.",
                |l| u64::from(l.connected),
            ),
            (
                "bridge_queue_messages",
                "Outbound messages stored and waiting for the broker's acknowledgement.",
                |l| l.queue_messages,
            ),
            (
                "bridge_queue_bytes",
                "Stored bytes of the outbound messages waiting.",
                |l| l.queue_bytes,
            ),
        ];
        let per = |read: Read| links.iter().map(move |l| (l.name.clone(), read(l)));
        for (name, help, read) in counters {
            s.counters(name, help, "bridge", per(read));
        }
        for (name, help, read) in gauges {
            s.gauges(name, help, "bridge", per(read));
        }
    }
}
