//! The message vocabulary every part of the daemon speaks: a [`Publish`] entering the
//! Hub, where it came from ([`Origin`]), what the Hub answered ([`Published`]), the
//! comings and goings beside messages ([`Lifecycle`]), and the [`Tap`] through which
//! storage, webhooks, bridges and the MQTT broker see them. Kept here, below the Hub, so
//! the parts that consume messages never import the part that routes them.

use serde_json::value::RawValue;

use crate::grants::Grants;

/// One message entering the Hub, from any way in.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    pub topic: &'a str,
    pub event: Option<&'a str>,
    /// The payload as JSON text, copied into the frame verbatim.
    pub data: &'a RawValue,
    /// Where it came from, shown to subscribers as `from` (a client id, `http`, `mqtt:…`).
    pub from: &'a str,
    pub origin: Origin,
    /// What the publisher may do; checked here, the one place every publish passes.
    /// Device publishes were checked by the broker session with the device's own
    /// grants and carry [`Grants::ALL`]; [`Origin::System`] messages are not checked.
    pub by: &'a Grants,
    /// Keep it as the topic's retained value (an empty payload, `""`, clears it).
    pub retain: bool,
}

impl<'a> Publish<'a> {
    /// The unit tests' message: a plain WebSocket publish by client `c1`, all grants.
    /// Public for the unit tests of the crates built on this one.
    #[doc(hidden)]
    pub fn test(topic: &'a str, data: &'a RawValue) -> Self {
        static ALL: Grants = Grants::ALL;
        Publish {
            topic,
            event: None,
            data,
            from: "c1",
            origin: Origin::Ws,
            by: &ALL,
            retain: false,
        }
    }
}

/// Which way a message came in; taps use it to avoid sending a message back where it
/// came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A WebSocket client.
    Ws,
    /// The HTTP API, called directly or carried over a WebSocket.
    Http,
    /// A device on the embedded MQTT broker.
    Mqtt,
    /// The daemon itself (device status notices); may use `$` topics.
    System,
    /// A replay of a recording, held to its starter's grants.
    Replay,
    /// An upstream broker, through a configured bridge (`from` is `bridge:<name>`).
    Bridge,
}

impl Origin {
    /// Every origin, in the order of the Hub's per-origin counters.
    pub const ALL: [Origin; 6] = [
        Origin::Ws,
        Origin::Http,
        Origin::Mqtt,
        Origin::System,
        Origin::Replay,
        Origin::Bridge,
    ];

    /// The transport's name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Ws => "ws",
            Origin::Http => "http",
            Origin::Mqtt => "mqtt",
            Origin::System => "system",
            Origin::Replay => "replay",
            Origin::Bridge => "bridge",
        }
    }
}

/// Something that sees every message the Hub routes, such as the MQTT broker. Called
/// under the topic's lock, so calls for one topic arrive in seq order; must not block.
pub trait Tap: Send + Sync {
    /// `seq` and `ts_us` are what subscribers see (`ts` is `ts_us / 1000`), so a
    /// stored copy matches the delivered one.
    fn routed(&self, message: &Publish<'_>, seq: u64, ts_us: u64);

    /// A client or device came or went, or a subscription changed. Must not block.
    fn lifecycle(&self, _event: &Lifecycle<'_>) {}
}

/// The comings and goings observers (webhooks) can follow, besides messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle<'a> {
    /// A WebSocket client connected.
    Connected {
        client: &'a str,
        user: Option<&'a str>,
    },
    /// A WebSocket client went away; its subscriptions ended with it.
    Disconnected {
        client: &'a str,
        user: Option<&'a str>,
    },
    Subscribed {
        client: &'a str,
        user: Option<&'a str>,
        filter: &'a str,
    },
    Unsubscribed {
        client: &'a str,
        user: Option<&'a str>,
        filter: &'a str,
    },
    /// An MQTT device connected to the embedded broker.
    DeviceOnline {
        client_id: &'a str,
        username: Option<&'a str>,
    },
    /// An MQTT device went away; `reason` says how (see `switchboard_bridge::Gone`).
    DeviceOffline {
        client_id: &'a str,
        username: Option<&'a str>,
        reason: &'a str,
    },
}

impl Lifecycle<'_> {
    /// The event's name as webhooks and docs spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Lifecycle::Connected { .. } => "client.connected",
            Lifecycle::Disconnected { .. } => "client.disconnected",
            Lifecycle::Subscribed { .. } => "client.subscribed",
            Lifecycle::Unsubscribed { .. } => "client.unsubscribed",
            Lifecycle::DeviceOnline { .. } => "device.online",
            Lifecycle::DeviceOffline { .. } => "device.offline",
        }
    }
}

/// What a publish produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// Sessions the frame was queued for.
    pub delivered: usize,
    /// False when the topic keeps a history and the message could not be written to it
    /// (a failing store): delivered, but not kept.
    pub stored: bool,
}
