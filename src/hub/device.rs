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
    pub(super) key: Key,
    client_id: String,
    /// `from` on the device's own publishes (`mqtt:<client id>`), for No Local.
    pub(super) from: String,
    pub outbox: Outbox<Delivery>,
    pub(super) filters: Mutex<HashMap<String, SubscriptionOptions>>,
    /// False while the device is away: QoS 0 messages are then not kept for it (MQTT
    /// lets a server drop them; QoS 1 and 2 wait, within the queue limits).
    attached: AtomicBool,
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
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(DeviceSession {
            key,
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
        {
            let mut devices = lock(&self.devices);
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
    }

    /// Ends a session whose expiry passed, unless its device came back meanwhile.
    pub fn expire_device(&self, session: &Arc<DeviceSession>) {
        {
            let mut devices = lock(&self.devices);
            // Attaching happens under this lock, so a device coming back now either
            // finds the session gone or keeps it.
            if session.attached() {
                return;
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
            .close(CloseReason::Code(1000, "session expired"));
    }

    fn drop_device_subscriptions(&self, session: &DeviceSession) {
        let filters: Vec<String> = lock(&session.filters).drain().map(|(f, _)| f).collect();
        let mut index = write(&self.index);
        for f in &filters {
            index.remove(f, session.key);
        }
    }

    /// Subscribes a device (or changes the options of a filter it holds), then starts
    /// queueing the retained values its Retain Handling asks for: the first step now,
    /// and a cursor when more remain (see [`Hub::send_retained_step_to_device`]).
    pub fn subscribe_device(
        &self,
        session: &Arc<DeviceSession>,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<Option<RetainedCursor>, HubError> {
        topic::validate_filter(filter)?;
        let existed = lock(&session.filters)
            .insert(filter.to_owned(), options)
            .is_some();
        // Inserting again replaces the options kept with the filter.
        write(&self.index).insert(
            filter,
            session.key,
            Subscriber::Device(session.clone(), options),
        );
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
        let granted = lock(&session.filters).get(cursor.filter()).map(|o| o.qos);
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
        if lock(&session.filters).remove(filter).is_none() {
            return false;
        }
        write(&self.index).remove(filter, session.key);
        true
    }

    /// Device sessions kept now, live or waiting for their device.
    pub fn device_sessions(&self) -> usize {
        lock(&self.devices).len()
    }
}
