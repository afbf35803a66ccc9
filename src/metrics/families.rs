//! Help texts of the families several parts add values to (merged by name in a
//! [`Snapshot`](super::Snapshot)), so each part says the same thing.

pub const CONNECTIONS: &str =
    "Connections open now, by transport (ws: WebSocket clients; mqtt_*: devices by MQTT listener).";
pub const MESSAGES_OUT: &str = "Messages handed to subscribers, by transport (ws: queued to a WebSocket connection, one per subscriber; mqtt: PUBLISH packets written to devices).";
pub const DROPPED: &str = "Messages not delivered or not kept, by reason.";
pub const CLOSES: &str = "WebSocket connections closed by the server, by reason.";
pub const TLS_FAILURES: &str =
    "TLS handshakes that failed or timed out, by listener (http: HTTPS/WSS; mqtt: MQTT TLS and WSS).";
