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
use tokio_util::sync::CancellationToken;

use super::queue;
use super::Link;
use crate::hub::{Publish, Tap};
use crate::store::StoredMessage;

/// Messages between the Hub and the writer; beyond it they are dropped, not the Hub
/// slowed.
const CHANNEL: usize = 65_536;

/// Messages the writer stores at once.
const BURST: usize = 512;

/// An entry for the link at an index of the link list.
type Item = (usize, Vec<u8>);

pub struct Receiver(mpsc::Receiver<Item>);

pub struct BridgeTap {
    links: Vec<Arc<Link>>,
    tx: mpsc::Sender<Item>,
}

pub fn channel(links: Vec<Arc<Link>>) -> (BridgeTap, Receiver) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    (BridgeTap { links, tx }, Receiver(rx))
}

impl Tap for BridgeTap {
    fn publish(&self, message: &Publish<'_>, seq: u64) {
        for (i, link) in self.links.iter().enumerate() {
            if link.came_from(message) {
                continue;
            }
            let Some((remote, qos)) = rules::outbound(&link.rules, message.topic) else {
                continue;
            };
            let stored = StoredMessage {
                topic: remote,
                event: message.event.map(str::to_owned),
                data: message.data.get().to_owned(),
                ts_us: crate::protocol::now_us(),
                seq,
                from: message.from.to_owned(),
                origin: message.origin,
            };
            if self
                .tx
                .try_send((i, queue::entry(&stored, qos, message.retain)))
                .is_err()
            {
                link.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Stores entries until `stop`, then what is left in the channel, and returns.
pub async fn write(mut rx: Receiver, links: Vec<Arc<Link>>, stop: CancellationToken) {
    let mut burst = Vec::with_capacity(BURST);
    loop {
        let n = tokio::select! {
            n = rx.0.recv_many(&mut burst, BURST) => n,
            _ = stop.cancelled() => break,
        };
        if n == 0 {
            return;
        }
        store(&mut burst, &links);
    }
    while let Ok(item) = rx.0.try_recv() {
        burst.push(item);
    }
    store(&mut burst, &links);
}

fn store(burst: &mut Vec<Item>, links: &[Arc<Link>]) {
    let mut touched = vec![false; links.len()];
    for (i, value) in burst.drain(..) {
        let Some(link) = links.get(i) else { continue };
        match link.queue.push(&value) {
            Ok(()) => touched[i] = true,
            Err(e) => {
                link.queue.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(bridge = %link.name, error = %e, "cannot store a bridge message; dropped");
            }
        }
    }
    for (link, touched) in links.iter().zip(touched) {
        if touched {
            link.queue.wake.notify_one();
        }
    }
}
