//! Where the embedded MQTT broker meets the Hub.
//!
//! The broker itself (listeners, device sessions, device authentication hooks) lives in
//! the `switchboard-bridge` crate and knows nothing of the Hub. This module is the seam:
//! [`HubIngress`] turns device publishes and device comings and goings into Hub messages,
//! and [`HubSessions`] makes each MQTT device a subscriber of the Hub, so a message
//! reaches MQTT and WebSocket subscribers alike through the one router.

pub mod metrics;
pub use switchboard_core::payload;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use switchboard_bridge::{
    CatchUp, Delivery, Denied, Device, DeviceSession, Gone, Inbound, Ingress, Sessions,
    SubscriptionOptions,
};

use crate::hub::{self, AsSent, Hub, RetainedCursor};
use switchboard_core::grants::Grants;
use switchboard_core::message::{Lifecycle, Origin, Publish};
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
        let publish = Publish {
            topic: message.topic,
            event: None,
            data: &data,
            from: &from,
            origin: Origin::Mqtt,
            // Checked by the broker session against the device's grants.
            by: &Grants::ALL,
            retain: message.retain,
        };
        // MQTT subscribers get the payload and properties as the device sent them.
        let as_sent = AsSent {
            qos: message.qos,
            payload: message.payload.clone(),
            properties: message.properties.clone(),
        };
        let published = self.hub.publish_from_device(publish, as_sent);
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

/// MQTT subscribers' sessions, kept in the Hub beside WebSocket connections.
pub struct HubSessions {
    hub: Arc<Hub>,
}

impl HubSessions {
    pub fn new(hub: Arc<Hub>) -> Self {
        HubSessions { hub }
    }
}

impl Sessions for HubSessions {
    fn attach(&self, client_id: &str, clean_start: bool) -> (Arc<dyn DeviceSession>, bool) {
        let (session, present) = self.hub.attach_device(client_id, clean_start);
        let handle = HubDeviceSession {
            hub: self.hub.clone(),
            session,
        };
        (Arc::new(handle), present)
    }
}

/// One device's session in the Hub, as its MQTT connection sees it.
struct HubDeviceSession {
    hub: Arc<Hub>,
    session: Arc<hub::DeviceSession>,
}

impl DeviceSession for HubDeviceSession {
    fn subscribe(
        &self,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<Option<Box<dyn CatchUp>>, Denied> {
        let cursor = self
            .hub
            .subscribe_device(&self.session, filter, options)
            .map_err(|_| Denied::Invalid)?;
        Ok(cursor.map(|cursor| {
            Box::new(HubCatchUp {
                hub: self.hub.clone(),
                session: self.session.clone(),
                cursor,
            }) as Box<dyn CatchUp>
        }))
    }

    fn unsubscribe(&self, filter: &str) -> bool {
        self.hub.unsubscribe_device(&self.session, filter)
    }

    fn filters(&self) -> Vec<String> {
        self.session.filters()
    }

    fn poll_deliveries(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut VecDeque<Delivery>,
    ) -> Poll<bool> {
        self.session
            .outbox
            .poll_up_to(cx, max, out)
            .map(|batch| batch.closed.is_none())
    }

    fn release(&self, count: usize, bytes: usize) {
        self.session.outbox.release(count, bytes);
    }

    fn depth(&self) -> usize {
        self.session.outbox.depth()
    }

    fn detach(&self, unacknowledged: Vec<Delivery>) {
        self.session.outbox.requeue(unacknowledged);
        self.hub.detach_device(&self.session);
    }

    fn end(&self, only_if_detached: bool) -> bool {
        if only_if_detached {
            self.hub.expire_device(&self.session)
        } else {
            self.hub.end_device(&self.session);
            true
        }
    }
}

/// A device subscription's retained values, a step at a time.
struct HubCatchUp {
    hub: Arc<Hub>,
    session: Arc<hub::DeviceSession>,
    cursor: RetainedCursor,
}

impl CatchUp for HubCatchUp {
    fn step(&mut self) -> bool {
        self.hub
            .send_retained_step_to_device(&self.session, &mut self.cursor)
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
