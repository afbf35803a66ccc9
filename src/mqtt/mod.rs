//! Where the embedded MQTT broker meets the Hub.
//!
//! The broker itself (listeners, router, device authentication hooks) lives in the
//! `switchboard-bridge` crate and knows nothing of the Hub. This module is the seam:
//! [`HubIngress`] turns device publishes and device comings and goings into Hub messages,
//! and [`BrokerTap`] sends every other Hub message on to MQTT subscribers. A message from
//! MQTT is never tapped back to MQTT, so nothing loops and nothing arrives twice.

pub mod metrics;
pub mod payload;

use std::sync::Arc;

use bytes::Bytes;
use switchboard_bridge::{Device, Gone, Inbound, Ingress, Publisher};

use crate::hub::Hub;
use switchboard_core::grants::Grants;
use switchboard_core::message::{Lifecycle, Origin, Publish, Tap};
use switchboard_core::quiet::{clip, Throttle};

/// Device status notices are published, retained, on `$devices/<client id>`.
pub const DEVICE_STATUS_PREFIX: &str = "$devices/";

/// Device traffic into the Hub.
pub struct HubIngress {
    hub: Arc<Hub>,
}

impl HubIngress {
    pub fn new(hub: Arc<Hub>) -> Self {
        HubIngress { hub }
    }

    fn status(&self, device: &Device, online: bool, why: Option<Gone>) {
        let notice = serde_json::json!({
            "online": online,
            "ts": switchboard_core::clock::now_ms(),
            "username": device.username,
            "protocol": format!("mqtt/{}", device.version.as_str()),
            "transport": device.transport.as_str(),
            "reason": why.map(Gone::as_str),
        });
        let Ok(data) = serde_json::value::to_raw_value(&notice) else {
            return;
        };
        let topic = format!("{DEVICE_STATUS_PREFIX}{}", device.client_id);
        let event = if online { "online" } else { "offline" };
        let published = self.hub.publish_notice(&topic, event, &data);
        if let Err(e) = published {
            // A connect storm repeats this once per connect.
            static UNPUBLISHED: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = UNPUBLISHED.admit() {
                tracing::warn!(client_id = clip(&device.client_id, 64), held_back, error = %e, "device status not published");
            }
        }
    }
}

impl Ingress for HubIngress {
    fn accept(&self, device: &Device, message: Inbound<'_>) {
        let data = payload::to_data(message.payload);
        let from = format!("mqtt:{}", device.client_id);
        let published = self.hub.publish(Publish {
            topic: message.topic,
            event: None,
            data: &data,
            from: &from,
            origin: Origin::Mqtt,
            // Checked by the broker session against the device's grants.
            by: &Grants::ALL,
            retain: message.retain,
        });
        if let Err(e) = published {
            // The broker checked the topic already, so this is a bug, not bad input.
            static UNROUTED: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = UNROUTED.admit() {
                tracing::warn!(client_id = clip(&device.client_id, 64), topic = clip(message.topic, 128), held_back, error = %e, "device message not routed to the hub");
            }
        }
    }

    fn connected(&self, device: &Device) {
        self.status(device, true, None);
        self.hub.notify(&Lifecycle::DeviceOnline {
            client_id: &device.client_id,
            username: device.username.as_deref(),
        });
    }

    fn disconnected(&self, device: &Device, why: Gone) {
        self.status(device, false, Some(why));
        self.hub.notify(&Lifecycle::DeviceOffline {
            client_id: &device.client_id,
            username: device.username.as_deref(),
            reason: why.as_str(),
        });
    }
}

/// Hub messages out to MQTT subscribers.
pub struct BrokerTap {
    publisher: Publisher,
}

impl BrokerTap {
    pub fn new(publisher: Publisher) -> Self {
        BrokerTap { publisher }
    }
}

impl Tap for BrokerTap {
    fn routed(&self, message: &Publish<'_>, _seq: u64, _ts_us: u64) {
        // `$` topics (device status) stay on the WebSocket side: rumqttd's router refuses
        // `$` subscriptions, so no MQTT subscriber could receive them.
        if message.origin == Origin::Mqtt || message.topic.starts_with('$') {
            return;
        }
        let payload = Bytes::from(payload::to_payload(message.data).into_owned());
        // A full queue is counted by the publisher (egress_dropped).
        let _ = self
            .publisher
            .enqueue(message.topic, payload, message.retain);
    }
}
