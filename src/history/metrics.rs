//! What message history shows at /metrics.

use super::History;
use crate::metrics::{Snapshot, Source};

/// Message history (`[history]`).
impl Source for History {
    fn collect(&self, s: &mut Snapshot) {
        let h = self.stats();
        s.gauge(
            "history_streams",
            "Topics with a history (streams) known to the daemon.",
            h.streams,
        );
        s.gauge(
            "history_messages",
            "Messages held in topic histories.",
            h.messages,
        );
        s.gauge(
            "history_bytes",
            "Bytes of messages held in topic histories.",
            h.bytes,
        );
        s.counter(
            "history_appended",
            "Messages written to a topic history.",
            h.appended,
        );
        s.counter(
            "history_trimmed",
            "History messages dropped by their rule (keep, max_age).",
            h.trimmed,
        );
        s.counter(
            "history_recoveries",
            "Subscriptions that asked for missed messages (since or last).",
            h.recoveries,
        );
        s.counter(
            "history_incomplete_recoveries",
            "Recoveries that could not deliver every message asked for.",
            h.incomplete_recoveries,
        );
        s.counter(
            "history_recovered_messages",
            "Messages delivered from a history by recoveries.",
            h.recovered_messages,
        );
        s.counter(
            "history_write_errors",
            "History writes that failed (each starts a new epoch on its topic).",
            h.write_errors,
        );
    }
}
