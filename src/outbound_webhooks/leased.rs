//! With `[cluster]`: message events enqueued by one box at a time (docs/cluster.md).
//!
//! Each endpoint has a lease in Redis (`cluster::lease`, named `webhook:<name>`). The
//! box holding it enqueues the event of every message on the bus, wherever it was
//! published; the others keep theirs in a short in-memory [`Shadow`] and, taking over,
//! enqueue the ones the old holder may not have. So a message's event no longer dies
//! with the box it was published on. Lifecycle events stay with the box of the client
//! or device, which alone sees them. Every box delivers what it enqueued, holder or
//! not, so a box that comes back sends what it had queued on disk.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{tap, Endpoint};

/// Keeps the endpoint's lease until `stop`, and at each takeover enqueues what the
/// shadow holds for it.
pub async fn run(ep: Arc<Endpoint>, stop: CancellationToken) {
    let Some(shadow) = ep.shadow.as_ref() else {
        return;
    };
    let keeper = shadow.lease().clone().keep(stop.clone());
    let hand_on = async {
        let mut states = shadow.lease().watch();
        let mut held = 0u64;
        loop {
            let now = states.borrow_and_update().clone();
            if now.leader && now.generation != held {
                held = now.generation;
                let mut burst: Vec<tap::Item> = shadow
                    .take_unsent()
                    .into_iter()
                    .map(|event| (ep.clone(), event))
                    .collect();
                if !burst.is_empty() {
                    tracing::info!(webhook = %ep.name, events = burst.len(), "webhook lease taken: enqueued what the old holder may not have");
                    tap::store(&mut burst);
                }
            } else if !now.leader {
                held = 0;
            }
            tokio::select! {
                changed = states.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    };
    tokio::join!(keeper, hand_on);
}
