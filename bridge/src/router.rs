//! The rumqttd router thread, and links into it.
//!
//! The router's event channel has a type we cannot name (its `Event` is private), so the
//! handle keeps it behind closures. The router runs on its own OS thread; a panic there
//! (its debug assertions, its `unwrap`s) disconnects the channel, which [`RouterHandle::died`]
//! watches so the daemon can exit instead of running with MQTT half-alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::Packet;
use rumqttd::{Notification, Router, RouterConfig};

use crate::StartError;

/// How a link registers with the router.
pub(crate) struct LinkOptions<'a> {
    pub client_id: &'a str,
    pub clean_session: bool,
}

type Connect =
    dyn Fn(&LinkOptions<'_>) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

#[derive(Clone)]
pub(crate) struct RouterHandle {
    connect: Arc<Connect>,
    alive: Arc<dyn Fn() -> bool + Send + Sync>,
    full: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl RouterHandle {
    pub fn start(max_connections: usize) -> Result<RouterHandle, StartError> {
        let config = RouterConfig {
            // The router refuses connects beyond this silently; our listener enforces the
            // configured limit first and answers the device, so leave headroom for the
            // internal egress link.
            max_connections: max_connections + 16,
            // Notifications queued for one link before the router pauses it and sends
            // `Unschedule`; every link here resumes it with `wake` once written.
            max_outgoing_packet_count: 200,
            // The router keeps recent publishes per subscribed filter in memory segments.
            // An MQTT subscriber that falls further behind than that loses the oldest
            // (rumqttd logs "jumping to head"); 1 MiB x 10 per filter holds about two
            // seconds at 100,000 small messages/s while bounding memory per filter.
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            custom_segment: Some(HashMap::new()),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router = Router::new(0, config);
        let tx = router.spawn();
        let (connect_tx, alive_tx, full_tx) = (tx.clone(), tx.clone(), tx);
        Ok(RouterHandle {
            connect: Arc::new(move |options: &LinkOptions<'_>| {
                LinkBuilder::new(options.client_id, connect_tx.clone())
                    .clean_session(options.clean_session)
                    .build()
                    .map_err(|e| e.to_string())
            }),
            alive: Arc::new(move || !alive_tx.is_disconnected()),
            full: Arc::new(move || full_tx.is_full()),
        })
    }

    /// Registers a link. Blocks until the router answers, so call it on a blocking thread.
    /// Wills are not given to the router: the session fires them itself so that they also
    /// reach the hub.
    pub fn connect(
        &self,
        options: &LinkOptions<'_>,
    ) -> Result<(LinkTx, LinkRx, Notification), String> {
        if !(self.alive)() {
            return Err("the MQTT router has stopped".into());
        }
        (self.connect)(options)
    }

    /// True once the router thread is gone.
    pub fn stopped(&self) -> bool {
        !(self.alive)()
    }

    /// True when the router's event queue is full, so a send would block the thread.
    fn is_full(&self) -> bool {
        (self.full)()
    }

    /// Gives `packets` to the router through `link_tx` with a single wake-up.
    ///
    /// rumqttd's `send` wakes the router on a blocking channel: it never awaits, and when
    /// that channel is full it would stall this runtime thread, so tokio is told first.
    pub async fn hand_over(
        &self,
        link_tx: &mut LinkTx,
        mut packets: Vec<Packet>,
    ) -> Result<(), ()> {
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        link_tx.buffer().extend(packets);
        let send = link_tx.send(last);
        let sent = if self.is_full() && multi_thread() {
            tokio::task::block_in_place(|| run_now(send).is_ok())
        } else {
            send.await.is_ok()
        };
        if sent {
            Ok(())
        } else {
            Err(())
        }
    }

    pub async fn died(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if !(self.alive)() {
                return;
            }
        }
    }
}

fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs a future that never actually waits (rumqttd's `send` blocks instead) to completion.
fn run_now<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// The DISCONNECT handed to the router when a device goes (or its CONNACK could not be
/// written), so the router ends the client's link.
pub(crate) fn disconnect_packet() -> rumqttd::protocol::Packet {
    use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}
