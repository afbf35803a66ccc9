//! Where the embedded MQTT broker meets the Hub.
//!
//! The broker itself (listeners, router, device authentication hooks) lives in the
//! `switchboard-bridge` crate and knows nothing of the Hub. This module is the seam:
//! [`HubIngress`] turns device publishes and device comings and goings into Hub messages,
//! and [`BrokerTap`] sends every other Hub message on to MQTT subscribers. A message from
//! MQTT is never tapped back to MQTT, so nothing loops and nothing arrives twice.

pub mod metrics;
pub mod payload;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use switchboard_bridge::{Denied, Device, Gone, Inbound, Ingress, Publisher};

use crate::hub::Hub;
use switchboard_core::grants::Grants;
use switchboard_core::message::{Lifecycle, Origin, Publish, Tap};
use switchboard_core::quiet::{clip, Throttle};

/// Device status notices are published, retained, on `$devices/<client id>`.
pub const DEVICE_STATUS_PREFIX: &str = "$devices/";

/// Offline notices kept by default (`mqtt.offline_notices`).
pub const MAX_OFFLINE_NOTICES: usize = 10_000;

/// Device traffic into the Hub.
pub struct HubIngress {
    hub: Arc<Hub>,
    offline: Mutex<OfflineNotices>,
}

/// The retained offline notices, oldest first, so that past `max` the oldest is
/// forgotten: without a bound, a storm of connects with ever-new client ids would keep a
/// notice for each forever (100,000 of them in 20 s once filled the retained store).
/// Online notices need no bound of their own: there are at most `max_connections`.
struct OfflineNotices {
    max: usize,
    /// Client ids in the order they went offline, with the generation of that notice;
    /// an entry whose generation is no longer in `current` was superseded.
    order: VecDeque<(String, u64)>,
    current: HashMap<String, u64>,
    next: u64,
}

impl OfflineNotices {
    /// Records `client_id` as offline; returns the client ids whose notices to forget.
    fn went_offline(&mut self, client_id: &str) -> Vec<String> {
        self.next += 1;
        self.current.insert(client_id.to_owned(), self.next);
        self.order.push_back((client_id.to_owned(), self.next));
        let mut expired = Vec::new();
        while self.current.len() > self.max {
            let Some((id, generation)) = self.order.pop_front() else {
                break;
            };
            if self.current.get(&id) == Some(&generation) {
                self.current.remove(&id);
                expired.push(id);
            }
        }
        // Devices that come and go leave superseded entries behind: drop them once they
        // outnumber the live ones, so the queue stays within twice the bound.
        if self.order.len() > 2 * self.max.max(self.current.len()) {
            let current = &self.current;
            self.order.retain(|(id, g)| current.get(id) == Some(g));
        }
        expired
    }

    fn came_back(&mut self, client_id: &str) {
        self.current.remove(client_id);
    }
}

impl HubIngress {
    /// `max_offline_notices`: offline notices kept before the oldest are forgotten.
    pub fn new(hub: Arc<Hub>, max_offline_notices: usize) -> Self {
        let offline = OfflineNotices {
            max: max_offline_notices,
            order: VecDeque::new(),
            current: HashMap::new(),
            next: 0,
        };
        HubIngress {
            hub,
            offline: Mutex::new(offline),
        }
    }

    /// Held while a status notice is published, so a device coming back cannot have its
    /// online notice forgotten in place of the offline one it replaced.
    fn offline(&self) -> MutexGuard<'_, OfflineNotices> {
        // Each update leaves the queue usable, so a poisoned lock is safe to keep.
        self.offline.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// Encrypted-only topics (docs/e2e.md): asked here, before the session acknowledges,
    /// so an MQTT 5 device at QoS 1 or 2 hears `0x99 Payload format invalid`.
    fn check_payload(&self, device: &Device, message: Inbound<'_>) -> Result<(), Denied> {
        let rule = self.hub.encrypted_only();
        if !rule.covers(message.topic) {
            return Ok(());
        }
        rule.check(message.topic, &payload::to_data(message.payload))
            .map_err(|e| {
                static REFUSED: Throttle = Throttle::per_secs(10);
                if let Some(held_back) = REFUSED.admit() {
                    tracing::info!(
                        client_id = clip(&device.client_id, 64),
                        held_back,
                        "device publish refused: {}",
                        clip(&e.to_string(), 200)
                    );
                }
                Denied::PayloadFormatInvalid
            })
    }

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
            if matches!(e, crate::hub::HubError::NotEncrypted(_)) {
                // A Last Will on an encrypted-only topic (publishes were checked before
                // they were acknowledged): counted, and nothing to tell anyone.
                return;
            }
            // The broker checked the topic already, so this is a bug, not bad input.
            static UNROUTED: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = UNROUTED.admit() {
                tracing::warn!(client_id = clip(&device.client_id, 64), topic = clip(message.topic, 128), held_back, error = %e, "device message not routed to the hub");
            }
        }
    }

    fn connected(&self, device: &Device) {
        let mut offline = self.offline();
        offline.came_back(&device.client_id);
        self.status(device, true, None);
        drop(offline);
        self.hub.notify(&Lifecycle::DeviceOnline {
            client_id: &device.client_id,
            username: device.username.as_deref(),
        });
    }

    fn disconnected(&self, device: &Device, why: Gone) {
        let mut offline = self.offline();
        self.status(device, false, Some(why));
        for client_id in offline.went_offline(&device.client_id) {
            self.hub
                .forget_retained(&format!("{DEVICE_STATUS_PREFIX}{client_id}"));
        }
        drop(offline);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_offline_notices_go_first_and_superseded_ones_never() {
        let mut notices = OfflineNotices {
            max: 2,
            order: VecDeque::new(),
            current: HashMap::new(),
            next: 0,
        };
        assert!(notices.went_offline("a").is_empty());
        assert!(notices.went_offline("b").is_empty());
        notices.came_back("a");
        assert!(notices.went_offline("c").is_empty(), "a is online");
        assert_eq!(notices.went_offline("d"), ["b"]);
        // A device that flaps does not grow the queue past twice the bound.
        for _ in 0..100 {
            notices.came_back("d");
            notices.went_offline("d");
        }
        assert!(notices.order.len() <= 4, "{}", notices.order.len());
        assert_eq!(notices.went_offline("e"), ["c"]);
    }
}
