//! What a link reports: the API's and metrics' [`LinkStatus`], and the same figures as
//! a retained message on `$bridges/<name>/status`, published by the daemon
//! ([`Origin::System`]) when the link connects or drops and, while its figures move,
//! at most every [`EVERY`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{lock, Link};
use crate::hub::Hub;
use crate::live::LiveList;
use switchboard_core::message::Origin;

/// Status messages are published, retained, on `$bridges/<name>/status`.
pub const STATUS_PREFIX: &str = "$bridges/";

const EVERY: Duration = Duration::from_secs(2);

/// One link's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    pub name: String,
    /// `bridge`, or `external` for the broker of external mode.
    pub kind: &'static str,
    /// `host:port` of the other broker.
    pub address: String,
    pub connected: bool,
    /// Unix ms of the last successful connection.
    pub connected_at: Option<u64>,
    /// Why the last connection failed or ended.
    pub last_error: Option<String>,
    /// Connection attempts since start.
    pub connect_attempts: u64,
    /// Messages waiting to go out, and their stored bytes.
    pub queue_messages: u64,
    pub queue_bytes: u64,
    /// Messages dropped: queue full (oldest first), or the writer behind.
    pub dropped: u64,
    /// Messages the other broker acknowledged.
    pub forwarded: u64,
    /// Messages the other broker acknowledged with an error reason (not sent again).
    pub refused: u64,
    /// Messages that came in from the other broker.
    pub received: u64,
    /// With `[cluster]` and a lease: `leader` (this box runs the bridge) or `standby`;
    /// absent without a lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The node id of the box holding the lease, as Redis last said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The generation of the holder's lease (it grows with every change of holder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_generation: Option<u64>,
}

impl Link {
    pub fn status(&self) -> LinkStatus {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let connected_at = get(&self.connected_at);
        LinkStatus {
            name: self.name.clone(),
            kind: if self.origin == Origin::Bridge {
                "bridge"
            } else {
                "external"
            },
            address: self.config.address.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            connected_at: (connected_at > 0).then_some(connected_at),
            last_error: lock(&self.last_error).clone(),
            connect_attempts: get(&self.attempts),
            queue_messages: get(&self.queue.len),
            queue_bytes: get(&self.queue.bytes),
            dropped: get(&self.queue.dropped),
            forwarded: get(&self.queue.forwarded),
            refused: get(&self.queue.refused),
            received: get(&self.received),
            role: self.role(),
            holder: self.leased.as_ref().and_then(|l| l.lease.state().holder),
            lease_generation: self.leased.as_ref().map(|l| l.lease.state().generation),
        }
    }

    /// Publishes the status, retained.
    pub fn publish_status(&self, hub: &Hub) {
        self.announce(hub, &self.status());
    }

    fn announce(&self, hub: &Hub, status: &LinkStatus) {
        if status.role == Some("standby") {
            // The holder's status is the bridge's; a standby's would overwrite it.
            return;
        }
        let Ok(data) = serde_json::value::to_raw_value(status) else {
            return;
        };
        let topic = format!("{STATUS_PREFIX}{}/status", self.name);
        if let Err(e) = hub.publish_notice(&topic, "status", &data) {
            tracing::warn!(bridge = %self.name, error = %e, "bridge status not published");
        }
    }
}

/// Publishes each link's status when its figures changed, at most every [`EVERY`].
pub async fn publish_changes(links: Arc<LiveList<Link>>, hub: Arc<Hub>, stop: CancellationToken) {
    // By name: a reload may add, remove or restart links between two ticks.
    let mut last: HashMap<String, LinkStatus> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let links = links.current();
        last.retain(|name, _| links.iter().any(|l| &l.name == name));
        for link in links.iter() {
            let now = link.status();
            if last.get(&link.name) != Some(&now) {
                link.announce(&hub, &now);
                last.insert(link.name.clone(), now);
            }
        }
    }
}
