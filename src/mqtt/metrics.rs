//! What the embedded MQTT broker shows at /metrics.

use std::sync::Arc;

use switchboard_bridge::Broker;

use crate::metrics::families::{CONNECTIONS, DROPPED, MESSAGES_OUT, TLS_FAILURES};
use crate::metrics::{Snapshot, Source};

/// The embedded MQTT broker; zeros when it is turned off, so the set of figures is fixed.
pub struct MqttMetrics(pub Option<Arc<Broker>>);

impl Source for MqttMetrics {
    fn collect(&self, s: &mut Snapshot) {
        let m = self.0.as_ref().map(|b| b.stats()).unwrap_or_default();
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
                ("mqtt_device_max_packet_size", m.too_large_for_device),
            ],
        );
        s.gauge(
            "mqtt_egress_queue_depth",
            "Always 0: messages reach MQTT subscribers through the hub.",
            0,
        );
        s.counter(
            "mqtt_egress_published",
            "Always 0: there is no egress queue any more.",
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
        s.counter(
            "mqtt_connects_too_large",
            "MQTT sockets closed because their CONNECT was over the 64 KiB bound (also in mqtt_protocol_errors).",
            m.connects_too_large,
        );
        s.counter(
            "mqtt_subscribes_over_quota",
            "MQTT subscription filters refused because the device held mqtt.max_subscriptions.",
            m.subscribes_over_quota,
        );
        s.gauge(
            "mqtt_sessions_waiting",
            "MQTT sessions kept for a device that left, until their Session Expiry.",
            m.sessions_waiting,
        );
        s.counter(
            "mqtt_sessions_expired",
            "MQTT sessions ended, with what was queued for them, when their Session Expiry passed.",
            m.sessions_expired,
        );
        let limits = m.limit_disconnects;
        s.counters(
            "mqtt_limit_disconnects",
            "MQTT connections closed for going past a limit the broker announced.",
            "limit",
            [
                ("receive_maximum", limits.receive_maximum),
                ("topic_alias", limits.topic_alias),
            ],
        );
        s.counters(
            "tls_handshake_failures",
            TLS_FAILURES,
            "listener",
            [("mqtt", m.tls_handshake_failures)],
        );
    }
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
