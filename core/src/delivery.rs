//! What the Hub hands to an MQTT subscriber's session: a message as MQTT carries it
//! (topic and payload bytes, made once per message and shared by every subscriber) and,
//! per subscriber, the QoS and RETAIN flag it goes out with. The MQTT crate encodes the
//! PUBLISH with the device's own packet id; the Hub never sees packet ids.

use std::sync::Arc;

use bytes::Bytes;

/// A message on its way to MQTT subscribers, shared by all of them.
#[derive(Debug)]
pub struct DeviceMessage {
    pub topic: Bytes,
    pub payload: Bytes,
    /// The QoS it was published at. Messages from WebSocket and HTTP count as QoS 1:
    /// the Hub acknowledged them.
    pub qos: u8,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// Its MQTT 5 properties as they are written on the wire (length first), empty if
    /// it has none: encoded once, by the session that received it.
    pub properties: Bytes,
}

/// One message for one MQTT subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<DeviceMessage>,
    /// min(published QoS, granted QoS) (MQTT §3.8.4).
    pub qos: u8,
    /// The RETAIN flag it goes out with: set for retained values sent on subscribe, and
    /// on live messages only under Retain As Published.
    pub retain: bool,
    /// Sent before and not acknowledged: the device reconnected to its session.
    pub dup: bool,
}

impl Delivery {
    /// Bytes it holds, for queue limits.
    pub fn size(&self) -> usize {
        self.message.topic.len() + self.message.payload.len() + self.message.properties.len()
    }
}

/// Which retained values a subscription is sent when it is made (MQTT 5 Retain Handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Every time the filter is subscribed to (0).
    #[default]
    OnSubscribe,
    /// Only when the subscription did not exist before (1).
    OnNewSubscribe,
    /// Never (2).
    Never,
}

/// An MQTT subscription's options, kept with its filter in the Hub's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// The granted QoS: the most a delivery gets.
    pub qos: u8,
    /// Not sent what the subscribing device published itself.
    pub no_local: bool,
    /// Live messages keep the RETAIN flag they were published with.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}
