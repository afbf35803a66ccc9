//! Messages from other ways in (WebSocket, HTTP, the daemon itself) to MQTT subscribers.
//!
//! Callers must never block on the router, so [`Publisher::enqueue`] only queues; one task
//! owns the router link, takes whatever is queued, hands it to the router in one batch and
//! one wake-up. A task rather than a thread: the hand-off from the publishing connection
//! then usually stays on its runtime thread, one context switch fewer per message. The queue is bounded: when the router cannot keep up the newest messages
//! are dropped and counted in `egress_dropped`, never lost silently.
//!
//! The link publishes at QoS 0: rumqttd delivers at each subscription's granted QoS, so an
//! MQTT subscriber at QoS 1 still gets QoS 1 delivery.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use rumqttd::local::LinkRx;
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::router::{LinkOptions, RouterHandle};
use crate::{StartError, Stats};

const BATCH: usize = 1024;

/// A message to MQTT subscribers.
struct Outgoing {
    topic: Bytes,
    payload: Bytes,
    retain: bool,
    /// Only a Last Will has any; boxed so the queue's slots stay small.
    properties: Option<Box<PublishProperties>>,
}

/// Queues messages for MQTT subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<Stats>,
}

/// The egress queue was full (or the broker stopped); the message was dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the MQTT egress queue is full; message dropped")]
pub struct QueueFull;

impl Publisher {
    /// Messages waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn enqueue(&self, topic: &str, payload: Bytes, retain: bool) -> Result<(), QueueFull> {
        self.enqueue_with(topic, payload, retain, None)
    }

    /// [`Publisher::enqueue`] with MQTT 5 properties for the subscribers (a Last Will's).
    pub(crate) fn enqueue_with(
        &self,
        topic: &str,
        payload: Bytes,
        retain: bool,
        properties: Option<PublishProperties>,
    ) -> Result<(), QueueFull> {
        let message = Outgoing {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload,
            retain,
            properties: properties.map(Box::new),
        };
        self.tx.try_send(message).map_err(|_| {
            self.stats.egress_dropped.fetch_add(1, Ordering::Relaxed);
            QueueFull
        })
    }
}

pub(crate) fn start(
    router: &RouterHandle,
    capacity: usize,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<Publisher, StartError> {
    let options = LinkOptions {
        client_id: "switchboard-egress",
        clean_session: true,
    };
    let (mut link_tx, link_rx, _connack) = router.connect(&options).map_err(StartError::Router)?;
    let (tx, mut rx) = mpsc::channel::<Outgoing>(capacity.max(1));
    let counted = stats.clone();
    let handle = router.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let count = batch.len() as u64;
            let packets = batch
                .drain(..)
                .map(|m| {
                    let publish = Publish::new(m.topic, m.payload, m.retain);
                    Packet::Publish(publish, m.properties.map(|p| *p))
                })
                .collect();
            if handle.hand_over(&mut link_tx, packets).await.is_err() {
                tracing::error!("the MQTT router has stopped; egress ends");
                return;
            }
            counted.egress_published.fetch_add(count, Ordering::Relaxed);
        }
    });
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(drop)
            .map_err(|e| StartError::Router(format!("cannot start the {name} thread: {e}")))
    };
    spawn(
        "mqtt-egress-acks",
        Box::new(move || drain(link_rx, shutdown)),
    )?;
    Ok(Publisher { tx, stats })
}

/// The egress link receives nothing it needs, but the router pauses a link whose
/// notifications pile up, so they are read and the link woken as rumqttd requires.
fn drain(mut link_rx: LinkRx, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match link_rx.recv() {
            Ok(Some(Notification::Unschedule)) => {
                if link_rx.ready().is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
