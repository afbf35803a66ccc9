//! From the Hub to the queues: the [`Tap`] the Hub calls for every message, and the
//! writer task that stores what it offers.
//!
//! The tap runs under the Hub's topic lock, so it only maps the topic, encodes the entry
//! and `try_send`s it; a full channel drops the message and counts it on the link. The
//! writer takes messages in bursts, stores each and wakes the link's sending task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchboard_bridge::rules;
use tokio::sync::mpsc;

use super::queue;
use super::Link;
use crate::live::LiveList;
use crate::store::writer::{self, Writer};
use crate::store::StoredMessage;
use switchboard_core::message::{Publish, Tap};
use switchboard_core::quiet::Throttle;

/// Messages between the Hub and the writer; beyond it they are dropped, not the Hub
/// slowed.
const CHANNEL: usize = 65_536;

/// Messages the writer stores at once.
pub const BURST: usize = 512;

/// An entry for one link.
pub type Item = (Arc<Link>, Vec<u8>);

pub struct BridgeTap {
    links: Arc<LiveList<Link>>,
    tx: mpsc::Sender<Item>,
}

pub fn channel(links: Arc<LiveList<Link>>) -> (BridgeTap, Writer<Item>) {
    let (tx, writer) = writer::channel(CHANNEL, "bridge");
    (BridgeTap { links, tx }, writer)
}

impl Tap for BridgeTap {
    fn routed(&self, message: &Publish<'_>, seq: u64, ts_us: u64) {
        for link in self.links.current().iter() {
            if link.came_from(message) {
                continue;
            }
            let Some((remote, qos)) = rules::outbound(&link.rules, message.topic) else {
                continue;
            };
            let stored = StoredMessage {
                topic: remote,
                ..StoredMessage::routed(message, seq, ts_us)
            };
            let mut entry = queue::entry(&stored, qos, message.retain);
            if let Some(leased) = &link.leased {
                match leased.shadow(entry) {
                    Some(back) => entry = back,
                    None => continue,
                }
            }
            if self.tx.try_send((link.clone(), entry)).is_err() {
                link.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Stores a burst of entries, each link's as one or a few segments, and wakes their
/// links' sending tasks.
pub fn store(burst: &mut Vec<Item>) {
    let mut by_link: Vec<(Arc<Link>, Vec<Vec<u8>>)> = Vec::new();
    for (link, value) in burst.drain(..) {
        match by_link.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &link)) {
            Some((_, values)) => values.push(value),
            None => by_link.push((link, vec![value])),
        }
    }
    for (link, values) in by_link {
        if let Err(e) = link.queue.push_burst(&values) {
            static FAILED: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = FAILED.admit() {
                tracing::error!(bridge = %link.name, error = %e, held_back, "cannot store bridge messages; dropped");
            }
        }
        link.queue.wake.notify_one();
    }
}
