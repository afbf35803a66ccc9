//! MQTT subscribers: what the Hub keeps of a device's session.
//!
//! A device that subscribes is a subscriber like a WebSocket connection, with its own
//! bounded outbox; what it holds are [`Delivery`]s (the message as MQTT carries it, with
//! the QoS and RETAIN flag this subscription gets) rather than encoded frames, because
//! the device's session encodes each PUBLISH with the device's own packet id. The
//! subscription options (granted QoS, No Local, Retain As Published, Retain Handling)
//! live with the filter in the index. A persistent session stays here after its device
//! leaves, queueing QoS 1 and 2 messages within the same limits, until the MQTT side
//! ends it (its Session Expiry passed, or the device came back with Clean Start).
//!
//! Owns the `devices` table and [`DeviceSession`]. Locking: the `devices` lock is taken
//! alone; a session's `filters` lock is taken and released before the index lock, as
//! for WebSocket sessions (routing.rs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::index::Key;
use super::outbox::{CloseReason, Outbox};
use super::routing::Subscriber;
use super::session::lock;
use super::{write, Hub, HubError, RetainedCursor};
use switchboard_core::delivery::{Delivery, RetainHandling, SubscriptionOptions};
use switchboard_core::topic;

/// One MQTT device's session in the Hub, live or waiting for its device.
pub struct DeviceSession {
    client_id: String,
    /// `from` on the device's own publishes (`mqtt:<client id>`), for No Local.
    pub(super) from: String,
    pub outbox: Outbox<Delivery>,
    pub(super) filters: Mutex<HashMap<String, Held>>,
    /// False while the device is away: QoS 0 messages are then not kept for it (MQTT
    /// lets a server drop them; QoS 1 and 2 wait, within the queue limits).
    attached: AtomicBool,
}

/// A filter a device holds: its options, and its key in the index. Each filter has a
/// key of its own, so a message matching several of a device's filters reaches it once
/// per filter, at that filter's QoS and options (MQTT 3.1.1 §3.3.5 and 5 §3.3.4 allow
/// this, and it delivers at the highest granted QoS as both require).
pub(super) struct Held {
    options: SubscriptionOptions,
    key: Key,
}

/// `$share/<group>/<filter>` as (group, filter).
fn shared(filter: &str) -> Option<(&str, &str)> {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(group, filter)| {
            !group.is_empty() && !group.contains(['+', '#']) && !filter.is_empty()
        })
}

/// The filter a subscription is indexed under.
fn indexed(filter: &str) -> &str {
    shared(filter).map_or(filter, |(_, f)| f)
}

impl DeviceSession {
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(super) fn attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    /// The filters held now.
    pub fn filters(&self) -> Vec<String> {
        lock(&self.filters).keys().cloned().collect()
    }
}

impl Hub {
    /// The session for a device that connected: the one its client id left behind when
    /// `clean_start` is false and there is one (true: session present), else a new one
    /// (a session left behind is ended first).
    pub fn attach_device(&self, client_id: &str, clean_start: bool) -> (Arc<DeviceSession>, bool) {
        let mut devices = lock(&self.devices);
        if let Some(kept) = devices.get(client_id) {
            if !clean_start && !kept.outbox.is_closed() {
                kept.attached.store(true, Ordering::Relaxed);
                return (kept.clone(), true);
            }
        }
        let session = Arc::new(DeviceSession {
            client_id: client_id.to_owned(),
            from: format!("mqtt:{client_id}"),
            outbox: Outbox::new(self.config.queue),
            filters: Mutex::default(),
            attached: AtomicBool::new(true),
        });
        let old = devices.insert(client_id.to_owned(), session.clone());
        drop(devices);
        if let Some(old) = old {
            self.drop_device_subscriptions(&old);
            old.outbox
                .close(CloseReason::Code(1000, "session replaced"));
        }
        (session, false)
    }

    /// The device left and its session stays, until [`Hub::end_device`].
    pub fn detach_device(&self, session: &DeviceSession) {
        session.attached.store(false, Ordering::Relaxed);
    }

    /// Ends a session: its subscriptions and whatever was queued for it go. Does nothing
    /// to a newer session of the same client id.
    pub fn end_device(&self, session: &Arc<DeviceSession>) {
        self.end_device_if(session, false);
    }

    /// Ends a session whose expiry passed, unless its device came back meanwhile (false).
    pub fn expire_device(&self, session: &Arc<DeviceSession>) -> bool {
        self.end_device_if(session, true)
    }

    fn end_device_if(&self, session: &Arc<DeviceSession>, only_if_away: bool) -> bool {
        {
            let mut devices = lock(&self.devices);
            // Attaching happens under this lock, so a device coming back now either
            // finds the session gone or keeps it.
            if only_if_away && session.attached() {
                return false;
            }
            if devices
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                devices.remove(&session.client_id);
            }
        }
        self.drop_device_subscriptions(session);
        session
            .outbox
            .close(CloseReason::Code(1000, "session ended"));
        true
    }

    fn drop_device_subscriptions(&self, session: &DeviceSession) {
        let filters: Vec<(String, Held)> = lock(&session.filters).drain().collect();
        let mut index = write(&self.index);
        for (f, held) in &filters {
            index.remove(indexed(f), held.key);
        }
    }

    /// Subscribes a device (or changes the options of a filter it holds), then starts
    /// queueing the retained values its Retain Handling asks for: the first step now,
    /// and a cursor when more remain (see [`Hub::send_retained_step_to_device`]). A
    /// shared subscription (`$share/<group>/<filter>`) gets one message in turn with the
    /// other members of its group, and no retained values (MQTT 5 §4.8.2).
    pub fn subscribe_device(
        &self,
        session: &Arc<DeviceSession>,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<Option<RetainedCursor>, HubError> {
        let group = shared(filter).map(|(group, _)| group);
        if filter.starts_with("$share/") && group.is_none() {
            return Err(HubError::InvalidTopic(topic::TopicError::Empty));
        }
        topic::validate_filter(indexed(filter))?;
        let (existed, key) = {
            let mut filters = lock(&session.filters);
            match filters.get_mut(filter) {
                Some(held) => {
                    held.options = options;
                    (true, held.key)
                }
                None => {
                    let key = self.next_key.fetch_add(1, Ordering::Relaxed);
                    filters.insert(filter.to_owned(), Held { options, key });
                    (false, key)
                }
            }
        };
        let entry = match group {
            Some(group) => Subscriber::Shared(session.clone(), options, Arc::from(group)),
            None => Subscriber::Device(session.clone(), options),
        };
        // Inserting again replaces the options kept with the filter.
        write(&self.index).insert(indexed(filter), key, entry);
        if group.is_some() {
            return Ok(None);
        }
        let send = match options.retain_handling {
            RetainHandling::OnSubscribe => true,
            RetainHandling::OnNewSubscribe => !existed,
            RetainHandling::Never => false,
        };
        if !send {
            return Ok(None);
        }
        let mut cursor = self.retained_cursor(filter);
        let done = self.retained_step(&mut cursor, |r| {
            let _ = session.outbox.push(Delivery {
                qos: r.message.qos.min(options.qos),
                message: r.message.clone(),
                retain: true,
                dup: false,
            });
        });
        Ok((!done).then_some(cursor))
    }

    /// Queues the next step of a device subscription's retained values; true once none
    /// remain.
    pub fn send_retained_step_to_device(
        &self,
        session: &DeviceSession,
        cursor: &mut RetainedCursor,
    ) -> bool {
        let granted = lock(&session.filters)
            .get(cursor.filter())
            .map(|held| held.options.qos);
        let Some(granted) = granted else {
            // Unsubscribed meanwhile.
            return true;
        };
        self.retained_step(cursor, |r| {
            let _ = session.outbox.push(Delivery {
                qos: r.message.qos.min(granted),
                message: r.message.clone(),
                retain: true,
                dup: false,
            });
        })
    }

    /// True if the device held `filter`.
    pub fn unsubscribe_device(&self, session: &DeviceSession, filter: &str) -> bool {
        let Some(held) = lock(&session.filters).remove(filter) else {
            return false;
        };
        write(&self.index).remove(indexed(filter), held.key);
        true
    }

    /// The filters a device's session holds, sorted; `None` if it has no session.
    pub fn device_filters(&self, client_id: &str) -> Option<Vec<String>> {
        let session = lock(&self.devices).get(client_id).cloned()?;
        let mut filters = session.filters();
        filters.sort();
        Some(filters)
    }

    /// Device sessions kept now, live or waiting for their device.
    pub fn device_sessions(&self) -> usize {
        lock(&self.devices).len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{hub, publish_as};
    use super::*;
    use std::collections::VecDeque;
    use switchboard_core::message::Origin;

    fn options(qos: u8) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        }
    }

    async fn taken(session: &DeviceSession) -> Vec<Delivery> {
        let mut out = VecDeque::new();
        session.outbox.next_batch(&mut out).await;
        out.into()
    }

    #[tokio::test]
    async fn deliveries_follow_the_subscription_options() {
        let hub = hub();
        let (a, present) = hub.attach_device("a", true);
        assert!(!present);
        hub.subscribe_device(&a, "t/#", options(0)).unwrap();
        let rap = SubscriptionOptions {
            retain_as_published: true,
            no_local: true,
            ..options(2)
        };
        hub.subscribe_device(&a, "t/x", rap).unwrap();
        // From WebSocket: QoS 1 at most, RETAIN kept under Retain As Published only.
        publish_as(&hub, "t/x", "1", Origin::Ws, true).unwrap();
        let mut got: Vec<(u8, bool)> = taken(&a).await.iter().map(|d| (d.qos, d.retain)).collect();
        got.sort_unstable();
        assert_eq!(got, [(0, false), (1, true)], "one copy per matching filter");
        // Its own message under No Local: the t/# subscription still takes it.
        let data = serde_json::value::RawValue::from_string("2".into()).unwrap();
        let own = switchboard_core::message::Publish {
            from: "mqtt:a",
            origin: Origin::Mqtt,
            ..switchboard_core::message::Publish::test("t/y", &data)
        };
        hub.publish(own).unwrap();
        assert_eq!(taken(&a).await.len(), 1);
    }

    #[tokio::test]
    async fn a_session_away_keeps_qos1_not_qos0_and_comes_back_present() {
        let hub = hub();
        let (a, _) = hub.attach_device("a", false);
        hub.subscribe_device(&a, "q0", options(0)).unwrap();
        hub.subscribe_device(&a, "q1", options(1)).unwrap();
        hub.detach_device(&a);
        publish_as(&hub, "q0", "0", Origin::Ws, false).unwrap();
        publish_as(&hub, "q1", "1", Origin::Ws, false).unwrap();
        let (back, present) = hub.attach_device("a", false);
        assert!(present && Arc::ptr_eq(&a, &back));
        let got = taken(&back).await;
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].message.topic[..], b"q1");
        // An expiry does nothing to a session whose device is back; a clean start ends it.
        assert!(!hub.expire_device(&back));
        let (fresh, present) = hub.attach_device("a", true);
        assert!(!present && !Arc::ptr_eq(&fresh, &back));
        assert!(back.outbox.is_closed());
        assert_eq!(hub.stats().subscriptions, 0);
    }

    #[tokio::test]
    async fn a_shared_group_takes_turns() {
        let hub = hub();
        let (a, _) = hub.attach_device("a", true);
        let (b, _) = hub.attach_device("b", true);
        for s in [&a, &b] {
            hub.subscribe_device(s, "$share/g/s", options(0)).unwrap();
        }
        for _ in 0..4 {
            publish_as(&hub, "s", "1", Origin::Ws, false).unwrap();
        }
        assert_eq!((taken(&a).await.len(), taken(&b).await.len()), (2, 2));
        assert!(hub.unsubscribe_device(&a, "$share/g/s"));
        hub.end_device(&b);
        assert_eq!(hub.stats().subscriptions, 0);
    }
}
