//! One link's life: connect, run a session, and after it ends wait a jittered,
//! exponentially growing delay (capped at `reconnect_max`) before the next attempt —
//! also when the broker refuses us, so wrong credentials cost one attempt per delay,
//! never a busy loop. A session that got connected starts the delays over.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchboard_bridge::rules;
use switchboard_bridge::upstream::{self, Inbox};
use tokio_util::sync::CancellationToken;

use super::{lock, Link};
use crate::hub::Hub;
use crate::mqtt::payload;
use switchboard_core::backoff::Backoff;
use switchboard_core::grants::Grants;
use switchboard_core::message::Publish;
use switchboard_core::quiet::{clip, Throttle};

pub async fn run(link: Arc<Link>, hub: Arc<Hub>, stop: CancellationToken) {
    let backoff = Backoff {
        min: link.config.reconnect_min,
        max: link.config.reconnect_max,
    };
    let inbox: Arc<dyn Inbox> = Arc::new(HubInbox {
        link: link.clone(),
        hub: hub.clone(),
    });
    let mut attempt = 0u32;
    loop {
        link.attempts.fetch_add(1, Ordering::Relaxed);
        let outbox = link.outbox();
        let ended = upstream::session(
            &link.upstream,
            outbox,
            inbox.clone(),
            link.queue.wake.clone(),
            &stop,
        )
        .await;
        let was_connected = link.connected.swap(false, Ordering::Relaxed);
        if was_connected {
            attempt = 0;
        }
        match ended {
            Ok(()) => {
                link.publish_status(&hub);
                return;
            }
            Err(e) => {
                let error = e.to_string();
                let repeated = lock(&link.last_error).as_deref() == Some(error.as_str());
                if was_connected {
                    tracing::warn!(bridge = %link.name, %error, "bridge disconnected");
                } else if repeated {
                    // Said once at warn level; a broker down for hours is not a log flood.
                    tracing::debug!(bridge = %link.name, %error, "bridge connection failed again");
                } else {
                    tracing::warn!(bridge = %link.name, %error, "bridge connection failed; retrying with backoff");
                }
                link.note_error(error);
            }
        }
        link.publish_status(&hub);
        let delay = backoff.equal_jitter(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Upstream messages into the Hub.
struct HubInbox {
    link: Arc<Link>,
    hub: Arc<Hub>,
}

impl Inbox for HubInbox {
    fn connected(&self) {
        self.link.connected.store(true, Ordering::Relaxed);
        self.link
            .connected_at
            .store(switchboard_core::clock::now_ms(), Ordering::Relaxed);
        tracing::info!(bridge = %self.link.name, address = %self.link.config.address, "bridge connected");
        self.link.publish_status(&self.hub);
    }

    fn message(&self, topic: &str, payload_bytes: &[u8], retain: bool) {
        let Some(local) = rules::inbound(&self.link.rules, topic) else {
            return;
        };
        if !self.link.may_pass() {
            return;
        }
        let data = payload::to_data(payload_bytes);
        let published = self.hub.publish(Publish {
            topic: &local,
            event: None,
            data: &data,
            from: &self.link.from,
            origin: self.link.origin,
            // The operator chose these topics in the bridge's rules.
            by: &Grants::ALL,
            retain,
        });
        match published {
            Ok(_) => {
                self.link.received.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // An upstream can repeat this per message (plaintext onto an
                // encrypted-only topic, for one): one line per window.
                static UNROUTED: Throttle = Throttle::per_secs(10);
                if let Some(held_back) = UNROUTED.admit() {
                    tracing::warn!(bridge = %self.link.name, topic = clip(&local, 128), held_back, error = %e, "bridged message not routed")
                }
            }
        }
    }
}
