//! What WebSocket clients show at /metrics: connections, deliveries, outbox depths,
//! compression and the delivery latency histogram.

use std::sync::Arc;

use super::deflate::Deflater;
use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::metrics::families::{CLOSES, CONNECTIONS, DROPPED, MESSAGES_OUT};
use crate::metrics::{read, Instruments, Snapshot, Source};

/// WebSocket clients: connections, deliveries, outbox depths and the latency histogram.
pub struct WsMetrics {
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub instruments: Arc<Instruments>,
    pub deflate: Arc<Deflater>,
}

impl Source for WsMetrics {
    fn collect(&self, s: &mut Snapshot) {
        let hub = self.hub.stats();
        let auth = self.auth.rejections.snapshot();
        s.gauges(
            "connections",
            CONNECTIONS,
            "transport",
            [("ws", hub.connections as u64)],
        );
        s.counters(
            "messages_out",
            MESSAGES_OUT,
            "transport",
            [("ws", hub.delivered)],
        );
        s.counters(
            "messages_dropped",
            DROPPED,
            "reason",
            [
                ("drop_oldest", hub.dropped),
                ("slow_consumer_close", hub.slow_consumer_discarded),
                ("rate_limited", auth.rate_limited),
                ("too_large", read(&self.instruments.ws_too_large)),
            ],
        );
        s.counters(
            "ws_closes",
            CLOSES,
            "reason",
            [
                ("slow_consumer", hub.slow_consumer_closes),
                ("rate_limited", auth.rate_limit_closes),
                ("token_expired", auth.expired_closes),
                ("revoked", auth.revoked_closes),
            ],
        );
        let (mut total, mut max) = (0u64, 0u64);
        for session in self.hub.sessions() {
            let depth = session.outbox.depth() as u64;
            total += depth;
            max = max.max(depth);
        }
        s.gauge(
            "ws_outbox_frames",
            "Frames queued for WebSocket connections and not yet taken by their writers, summed over connections.",
            total,
        );
        s.gauge(
            "ws_outbox_frames_max",
            "Frames queued for the most backed-up WebSocket connection.",
            max,
        );
        let deflate = &self.deflate;
        s.counter(
            "ws_deflate_compressions",
            "Payloads compressed for permessage-deflate connections: once per published message, \
             however many compressed subscribers it has, plus each compressed reply.",
            read(&deflate.compressions),
        );
        s.counter(
            "ws_deflate_frames",
            "Frames sent compressed (each delivery to a compressed connection counts).",
            read(&deflate.frames),
        );
        s.counters(
            "ws_deflate_bytes",
            "Bytes of the frames sent compressed: their payload before (plain) and after (compressed).",
            "form",
            [
                ("plain", read(&deflate.plain_bytes)),
                ("compressed", read(&deflate.wire_bytes)),
            ],
        );
        s.histogram(
            "delivery_latency_seconds",
            "Time from the Hub accepting a publish to the WebSocket writer flushing it to the socket. \
             Measured once per write batch: every frame of a batch is counted with the age of its \
             oldest frame (an upper bound), so the count is frames written and recording costs no \
             clock read per frame. Publish-time stamps come from the wall clock.",
            self.instruments.delivery_latency.snapshot(),
        );
    }
}
