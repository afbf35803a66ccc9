//! What recordings and replays show at /metrics.

use super::Recorder;
use crate::metrics::families::DROPPED;
use crate::metrics::{read, Snapshot, Source};

/// Recordings and replays (`crate::recordings`).
impl Source for Recorder {
    fn collect(&self, s: &mut Snapshot) {
        let c = self.counters();
        s.counter(
            "recorded_messages",
            "Messages stored into recordings (a message kept by two recordings counts twice).",
            read(&c.recorded),
        );
        s.counter(
            "recorded_bytes",
            "Bytes of message records stored into recordings.",
            read(&c.recorded_bytes),
        );
        s.counters(
            "messages_dropped",
            DROPPED,
            "reason",
            [("recording_queue_full", read(&c.dropped))],
        );
        s.gauge(
            "recordings_active",
            "Recordings running now.",
            self.active() as u64,
        );
        s.gauge(
            "replays_running",
            "Replays running or paused now.",
            self.running_replays() as u64,
        );
        s.counter(
            "replayed_messages",
            "Messages published by replays and accepted by the Hub.",
            read(&c.replayed),
        );
    }
}
