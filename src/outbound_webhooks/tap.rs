//! From the hub to the store: the [`Tap`] the hub calls for every message and lifecycle
//! event, and the writer task that stores what it offers.
//!
//! The tap runs under the hub's topic lock, so it only serialises the event (once, for
//! every endpoint that wants it) and `try_send`s it; a full channel drops the event,
//! counts it on the endpoint and warns at most every [`WARN_EVERY_MS`]. The writer takes
//! events in bursts, stores each under a fresh id and wakes the endpoint's delivery task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{event, Endpoint};
use crate::live::{self, LiveList};
use crate::store::writer::{self, Writer};
use crate::throttle::Throttle;
use switchboard_core::message::{Lifecycle, Publish, Tap};
use switchboard_core::quiet::Throttle as Quiet;

/// Events between the hub and the writer. A burst this large only waits here while the
/// writer stores the previous one; beyond it, events are dropped rather than the hub
/// slowed.
const CHANNEL: usize = 65_536;

/// Events the writer takes at once.
pub const BURST: usize = 512;

const WARN_EVERY_MS: u64 = 10_000;

/// An event for one endpoint.
pub type Item = (Arc<Endpoint>, Arc<str>);

pub struct WebhookTap {
    endpoints: Arc<LiveList<Endpoint>>,
    tx: mpsc::Sender<Item>,
    warn: Throttle,
}

pub fn channel(endpoints: Arc<LiveList<Endpoint>>) -> (WebhookTap, Writer<Item>) {
    let (tx, writer) = writer::channel(CHANNEL, "webhook");
    let tap = WebhookTap {
        endpoints,
        tx,
        warn: Throttle::new(WARN_EVERY_MS),
    };
    (tap, writer)
}

impl WebhookTap {
    /// Offers the event, made at most once, to every endpoint `wants` picks. A message
    /// event for an endpoint whose lease another box holds goes to its shadow.
    fn offer(
        &self,
        wants: impl Fn(&Endpoint) -> bool,
        leased: bool,
        make: impl FnOnce() -> String,
    ) {
        let mut make = Some(make);
        let mut made: Option<Arc<str>> = None;
        for ep in self.endpoints.current().iter() {
            if !wants(ep) {
                continue;
            }
            let event = match (&made, make.take()) {
                (Some(e), _) => e.clone(),
                (None, Some(f)) => made.insert(Arc::from(f())).clone(),
                (None, None) => continue,
            };
            let event = match (&ep.shadow, leased) {
                (Some(shadow), true) => match shadow.keep(event) {
                    Some(event) => event,
                    None => continue,
                },
                _ => event,
            };
            if self.tx.try_send((ep.clone(), event)).is_err() {
                let dropped = ep.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.warn_dropped(ep, dropped);
            }
        }
    }

    fn warn_dropped(&self, ep: &Endpoint, dropped: u64) {
        if self.warn.due() {
            tracing::warn!(
                webhook = %ep.name,
                dropped,
                "webhook events dropped: the store writer is behind"
            );
        }
    }
}

impl Tap for WebhookTap {
    fn routed(&self, message: &Publish<'_>, seq: u64, _ts_us: u64) {
        self.offer(
            |ep| ep.with_config(|c| c.wants_topic(message.topic)),
            true,
            || event::message(message, seq),
        );
    }

    fn lifecycle(&self, e: &Lifecycle<'_>) {
        let name = e.name();
        self.offer(
            |ep| ep.with_config(|c| c.wants_event(name)),
            false,
            || event::lifecycle(e),
        );
    }
}

/// Stores a burst of events, each under a fresh id, and wakes their endpoints.
pub fn store(burst: &mut Vec<Item>) {
    live::store_burst(
        burst,
        |ep, event| match ep.queue.push(|id| event::with_id(&ep.event_id(id), &event)) {
            Ok(()) => {
                let pending = ep.pending.fetch_add(1, Ordering::Relaxed) + 1;
                if pending > ep.with_config(|c| c.max_pending.get()) {
                    overflow(ep);
                }
                true
            }
            Err(e) => {
                ep.dropped.fetch_add(1, Ordering::Relaxed);
                static FAILED: Quiet = Quiet::per_secs(10);
                if let Some(held_back) = FAILED.admit() {
                    tracing::error!(webhook = %ep.name, error = %e, held_back, "cannot store a webhook event; dropped");
                }
                false
            }
        },
        |ep| ep.wake.notify_one(),
    );
}

/// Drops the oldest pending event of an endpoint over its `max_pending`.
fn overflow(ep: &Endpoint) {
    match ep.queue.drop_oldest() {
        Ok(true) => {
            ep.pending.fetch_sub(1, Ordering::Relaxed);
            let dropped = ep.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    webhook = %ep.name,
                    dropped,
                    max_pending = ep.with_config(|c| c.max_pending.get()),
                    "webhook queue full: oldest events dropped"
                );
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(webhook = %ep.name, error = %e, "cannot drop an old webhook event")
        }
    }
}
