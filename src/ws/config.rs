//! `[ws]`: what one WebSocket connection may do and queue.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hub::outbox::SlowConsumerPolicy;
use crate::settings::{nz, nz32, positive_duration};

/// Limits per WebSocket connection: frame and queue sizes, heartbeats, publish rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest frame a client may send, in bytes; above it the connection closes with 1009.
    pub max_message_size: NonZeroUsize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: NonZeroUsize,
    /// Frames queued for one connection before the slow-consumer policy applies.
    pub outbound_queue_messages: NonZeroUsize,
    /// Bytes queued for one connection before the slow-consumer policy applies.
    pub outbound_queue_bytes: NonZeroUsize,
    /// `drop_oldest` (with a `lagged` notice) or `close` (code 4100).
    pub slow_consumer: SlowConsumerPolicy,
    /// How often the server pings each connection.
    #[serde(with = "positive_duration")]
    pub heartbeat_interval: Duration,
    /// Intervals without hearing from a peer before it is dropped (close 4101).
    pub heartbeat_misses: NonZeroU32,
    /// Socket read chunk, allocated per connection and zero-filled by tungstenite before
    /// each read. 1 KiB keeps an idle connection at 4.6 KiB (7.6 KiB with 4 KiB) with no
    /// loss of throughput for small messages (docs/benchmarks.md).
    pub read_buffer_size: NonZeroUsize,
    /// Bytes buffered before a write reaches the socket (a flush always writes).
    pub write_buffer_size: usize,
    /// Publishes per second one connection may make, sustained (a token bucket).
    pub publish_rate: NonZeroU32,
    /// Publishes one connection may make in a burst above the sustained rate.
    pub publish_burst: NonZeroU32,
    /// Refused publishes in a row after which the connection is closed (code 4008).
    pub rate_limit_strikes: NonZeroU32,
    /// Offer permessage-deflate (RFC 7692). Off: it costs CPU on every frame, and most
    /// clients are on links where bytes are cheap (docs/configuration.md).
    pub compression: bool,
    /// Frames smaller than this go uncompressed: deflate saves little on them.
    pub compression_threshold: usize,
    /// zlib's level, 0 (store) to 9 (smallest, slowest).
    #[serde(deserialize_with = "level")]
    pub compression_level: u32,
}

fn level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let level = u32::deserialize(d)?;
    if level > 9 {
        return Err(serde::de::Error::custom(format!(
            "compression_level is zlib's 0 (store) to 9 (smallest), not {level}"
        )));
    }
    Ok(level)
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message_size: nz(64 * 1024),
            max_subscriptions: nz(1000),
            outbound_queue_messages: nz(1024),
            outbound_queue_bytes: nz(1024 * 1024),
            slow_consumer: SlowConsumerPolicy::DropOldest,
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_misses: nz32(2),
            read_buffer_size: nz(1024),
            write_buffer_size: 16 * 1024,
            publish_rate: nz32(1000),
            publish_burst: nz32(2000),
            rate_limit_strikes: nz32(100),
            compression: false,
            compression_threshold: 256,
            compression_level: 6,
        }
    }
}
