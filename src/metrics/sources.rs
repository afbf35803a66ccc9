//! Where each figure comes from: one function per part of the daemon, reading the
//! counters that part keeps. Families shared by several parts (`connections`,
//! `messages_out`, `messages_dropped`) are merged by [`Snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::Snapshot;
use crate::server::App;
use switchboard_core::message::Origin;

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

const CONNECTIONS: &str =
    "Connections open now, by transport (ws: WebSocket clients; mqtt_*: devices by MQTT listener).";
const MESSAGES_OUT: &str = "Messages handed to subscribers, by transport (ws: queued to a WebSocket connection, one per subscriber; mqtt: PUBLISH packets written to devices).";
const DROPPED: &str = "Messages not delivered or not kept, by reason.";
const CLOSES: &str = "WebSocket connections closed by the server, by reason.";
const TLS_FAILURES: &str =
    "TLS handshakes that failed or timed out, by listener (http: HTTPS/WSS; mqtt: MQTT TLS and WSS).";

/// WebSocket clients: connections, deliveries, outbox depths and the latency histogram.
pub fn websocket(app: &App, s: &mut Snapshot) {
    let hub = app.hub.stats();
    let auth = app.auth.rejections.snapshot();
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
            ("too_large", get(&app.metrics.ws_too_large)),
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
    for session in app.hub.sessions() {
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
    s.histogram(
        "delivery_latency_seconds",
        "Time from the Hub accepting a publish to the WebSocket writer flushing it to the socket. \
         Measured once per write batch: every frame of a batch is counted with the age of its \
         oldest frame (an upper bound), so the count is frames written and recording costs no \
         clock read per frame. Publish-time stamps come from the wall clock.",
        app.metrics.delivery_latency.snapshot(),
    );
}

/// Routing: messages in by the way they came, permissions, subscriptions, retained values.
pub fn hub(app: &App, s: &mut Snapshot) {
    let hub = app.hub.stats();
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

/// The embedded MQTT broker; zeros when it is turned off, so the set of figures is fixed.
pub fn mqtt(app: &App, s: &mut Snapshot) {
    let m = app.broker.as_ref().map(|b| b.stats()).unwrap_or_default();
    let egress_depth = app.broker.as_ref().map_or(0, |b| b.egress_queue_depth());
    s.gauges(
        "connections",
        CONNECTIONS,
        "transport",
        switchboard_bridge::Transport::ALL
            .iter()
            .zip(m.connections_by_transport)
            .map(|(t, n)| (mqtt_transport(*t), n)),
    );
    s.counters(
        "messages_out",
        MESSAGES_OUT,
        "transport",
        [("mqtt", m.messages_out)],
    );
    s.counters(
        "messages_dropped",
        DROPPED,
        "reason",
        [
            ("forbidden", m.publishes_denied),
            ("mqtt_egress_full", m.egress_dropped),
        ],
    );
    s.gauge(
        "mqtt_egress_queue_depth",
        "Messages from other ways in queued towards MQTT subscribers now.",
        egress_depth as u64,
    );
    s.counter(
        "mqtt_egress_published",
        "Messages from other ways in handed to the MQTT router.",
        m.egress_published,
    );
    s.counter(
        "mqtt_connects_refused",
        "MQTT CONNECTs refused (bad credentials, bad client id, too many connections).",
        m.connects_refused,
    );
    s.counter(
        "mqtt_subscribes_denied",
        "MQTT subscriptions refused by the ACL.",
        m.subscribes_denied,
    );
    s.counter(
        "mqtt_protocol_errors",
        "MQTT connections ended for a malformed or oversized packet.",
        m.protocol_errors,
    );
    s.counters(
        "tls_handshake_failures",
        TLS_FAILURES,
        "listener",
        [("mqtt", m.tls_handshake_failures)],
    );
}

fn mqtt_transport(t: switchboard_bridge::Transport) -> &'static str {
    use switchboard_bridge::Transport as T;
    match t {
        T::Tcp => "mqtt_tcp",
        T::WebSocket => "mqtt_ws",
        T::Tls => "mqtt_tls",
        T::SecureWebSocket => "mqtt_wss",
    }
}

/// Refused WebSocket and HTTP clients.
pub fn auth(app: &App, s: &mut Snapshot) {
    let r = app.auth.rejections.snapshot();
    s.counters(
        "auth_refusals",
        "WebSocket and HTTP clients refused before being served, by reason.",
        "reason",
        [
            ("bad_credentials", r.bad_credentials),
            ("auth_timeout", r.auth_timeouts),
            ("origin_refused", r.origins_refused),
        ],
    );
}

/// The HTTP listener (which also carries WebSocket connections).
pub fn http(app: &App, s: &mut Snapshot) {
    let h = &app.http_stats;
    s.gauge(
        "http_connections_open",
        "Connections holding a place on the HTTP listener now, WebSocket included.",
        get(&h.open),
    );
    s.counter(
        "http_connections_accepted",
        "Connections given a place on the HTTP listener.",
        get(&h.accepted),
    );
    s.counters(
        "http_connections_refused",
        "Connections the HTTP listener closed at once, by reason (the caps in [http], or no handshake in time).",
        "reason",
        [
            ("max_connections", get(&h.refused_total_cap)),
            ("max_connections_per_ip", get(&h.refused_per_ip)),
            ("handshake_timeout", get(&h.handshake_timeouts)),
        ],
    );
    s.counters(
        "tls_handshake_failures",
        TLS_FAILURES,
        "listener",
        [("http", get(&h.tls_handshake_failures))],
    );
}

/// Outbound webhooks, one label value per configured endpoint.
pub fn webhooks(app: &App, s: &mut Snapshot) {
    let stats = app.webhooks.stats();
    if stats.is_empty() {
        return;
    }
    let per = |f: fn(&crate::webhook::EndpointStats) -> u64| {
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

/// The local store (sled) under the data directory, and its cap.
pub fn store(app: &App, s: &mut Snapshot) {
    let quota = app.store.quota();
    let evicted = quota.evicted();
    s.gauge(
        "store_disk_bytes",
        "Bytes the local store takes on disk.",
        app.store.size_on_disk(),
    );
    s.gauge(
        "store_stored_bytes",
        "Bytes of stored messages (history and recordings) counted against store.max_bytes.",
        quota.used(),
    );
    s.gauge(
        "store_max_bytes",
        "The cap on stored messages (store.max_bytes).",
        quota.max_bytes(),
    );
    s.counter(
        "store_evicted_messages",
        "Stored messages evicted, oldest first, to keep under store.max_bytes.",
        evicted.records,
    );
    s.counter(
        "store_evicted_bytes",
        "Bytes of stored messages evicted to keep under store.max_bytes.",
        evicted.bytes,
    );
}

/// Message history (`[history]`).
pub fn history(app: &App, s: &mut Snapshot) {
    let h = app.history.stats();
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

/// Recordings and replays (`crate::recorder`).
pub fn recordings(app: &App, s: &mut Snapshot) {
    let c = app.recorder.counters();
    s.counter(
        "recorded_messages",
        "Messages stored into recordings (a message kept by two recordings counts twice).",
        get(&c.recorded),
    );
    s.counter(
        "recorded_bytes",
        "Bytes of message records stored into recordings.",
        get(&c.recorded_bytes),
    );
    s.counters(
        "messages_dropped",
        DROPPED,
        "reason",
        [("recording_queue_full", get(&c.dropped))],
    );
    s.gauge(
        "recordings_active",
        "Recordings running now.",
        app.recorder.active() as u64,
    );
    s.gauge(
        "replays_running",
        "Replays running or paused now.",
        app.recorder.running_replays() as u64,
    );
    s.counter(
        "replayed_messages",
        "Messages published by replays and accepted by the Hub.",
        get(&c.replayed),
    );
}

/// Inbound webhooks (`POST /hooks/<name>`).
pub fn hooks(app: &App, s: &mut Snapshot) {
    let stats = app.hooks.stats();
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
    let refused = |f: fn(&crate::http::hooks::RefusedCounts) -> u64| {
        stats.values().map(|c| f(&c.refused)).sum::<u64>()
    };
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

/// Links to other MQTT brokers, one label value per bridge (`external` in external
/// mode).
pub fn bridges(app: &App, s: &mut Snapshot) {
    use crate::bridges::LinkStatus;
    let links = app.bridges.status();
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
    let gauges: [(&'static str, &'static str, Read); 3] = [
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
