//! A bridge on one box at a time (`[cluster]` on, the bridge's `lease`, docs/cluster.md).
//!
//! Every box may carry the same `[[bridges]]`; a lease in Redis per bridge
//! (`cluster::lease`) says which box connects upstream. The others stand by: no
//! upstream connection, nothing queued on disk, but what their tap routes is kept in a
//! short in-memory [`Shadow`]. A standby that takes over first queues the shadowed
//! messages the old holder may not have forwarded before it died. So outbound is at
//! least once across a takeover (a few may go twice), and inbound enters the cluster
//! once, from the one connected box.
//!
//! Fencing: the link's outbox and inbox check the lease before each message, so a box
//! whose lease ran out (paused, cut from Redis) lets nothing more through even before
//! its session is torn down.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchboard_bridge::upstream::{Outbox, Outgoing};
use tokio_util::sync::CancellationToken;

use super::queue::Queue;
use super::Link;
use crate::cluster::lease::{Lease, Shadow};
use crate::hub::Hub;
use switchboard_core::quiet::Throttle;

/// A link's lease and its standby shadow of queue entries.
pub struct Leased {
    pub lease: Arc<Lease>,
    shadow: Shadow<Vec<u8>>,
}

impl Leased {
    pub fn new(lease: Arc<Lease>) -> Leased {
        Leased {
            shadow: Shadow::new(lease.clone()),
            lease,
        }
    }

    /// Whether this box runs the link right now.
    pub fn leader(&self) -> bool {
        self.shadow.leader()
    }

    /// Keeps `entry` in the shadow if this box stands by; gives it back otherwise.
    pub fn shadow(&self, entry: Vec<u8>) -> Option<Vec<u8>> {
        self.shadow.keep(entry)
    }

    /// At a takeover: queues what the old holder may not have forwarded.
    fn replay(&self, name: &str, queue: &Queue) {
        let unsent = self.shadow.take_unsent();
        if unsent.is_empty() {
            return;
        }
        // One burst: as few segments as fit them; what cannot be stored is counted dropped.
        if let Err(e) = queue.push_burst(&unsent) {
            tracing::error!(bridge = %name, error = %e, "cannot store bridge messages; dropped");
            return;
        }
        tracing::info!(bridge = %name, queued = unsent.len(), "bridge taken over: queued what the old holder may not have forwarded");
        queue.wake.notify_one();
    }
}

impl Link {
    /// Whether this box may pass messages over the link: always without a lease.
    pub(super) fn may_pass(&self) -> bool {
        match &self.leased {
            None => true,
            Some(l) if l.leader() => true,
            Some(_) => {
                // Only between the lease running out and the session ending.
                static FENCED: Throttle = Throttle::per_secs(10);
                if let Some(held_back) = FENCED.admit() {
                    tracing::warn!(bridge = %self.name, held_back, "bridge: this box's lease ran out; message held back");
                }
                false
            }
        }
    }

    /// What a session sends from: the queue, fenced by the lease when there is one.
    pub(super) fn outbox(self: &Arc<Self>) -> Arc<dyn Outbox> {
        match &self.leased {
            None => self.queue.clone(),
            Some(_) => Arc::new(Fenced(self.clone())),
        }
    }

    /// `leader`, `standby`, or None without a lease.
    pub(super) fn role(&self) -> Option<&'static str> {
        let leased = self.leased.as_ref()?;
        Some(if leased.leader() { "leader" } else { "standby" })
    }
}

/// The queue, closed to a box whose lease ran out.
struct Fenced(Arc<Link>);

impl Outbox for Fenced {
    fn after(&self, after: Option<u64>, max: usize) -> Result<Vec<Outgoing>, String> {
        if !self.0.may_pass() {
            return Err("this box's lease on the bridge ran out".into());
        }
        self.0.queue.after(after, max)
    }

    fn done(&self, id: u64, refused: bool) {
        self.0.queue.done(id, refused)
    }
}

/// Runs a link: directly without a lease; with one, keeps the lease and runs the
/// link's sessions only while this box holds it.
pub async fn run(link: Arc<Link>, hub: Arc<Hub>, stop: CancellationToken) {
    let Some(leased) = link.leased.as_ref() else {
        return super::link::run(link, hub, stop).await;
    };
    let keeper = leased.lease.clone().keep(stop.clone());
    tokio::join!(keeper, lead(link.clone(), hub, stop));
}

async fn lead(link: Arc<Link>, hub: Arc<Hub>, stop: CancellationToken) {
    let Some(leased) = link.leased.as_ref() else {
        return;
    };
    let mut states = leased.lease.watch();
    loop {
        let generation = loop {
            let now = states.borrow_and_update().clone();
            if now.leader {
                break now.generation;
            }
            tokio::select! {
                changed = states.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        };
        tracing::info!(bridge = %link.name, generation, "bridge: this box holds its lease and runs it");
        leased.replay(&link.name, &link.queue);
        let term = stop.child_token();
        let session = super::link::run(link.clone(), hub.clone(), term.clone());
        tokio::pin!(session);
        loop {
            tokio::select! {
                _ = &mut session => return,
                changed = states.changed() => {
                    let now = states.borrow_and_update().clone();
                    if changed.is_err() || !now.leader || now.generation != generation {
                        term.cancel();
                        (&mut session).await;
                        break;
                    }
                }
            }
        }
        tracing::info!(bridge = %link.name, "bridge: this box stands by");
        // The status of a standby is the holder's to publish; refresh the API's view.
        link.connected.store(false, Ordering::Relaxed);
    }
}
