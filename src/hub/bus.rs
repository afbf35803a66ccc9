//! The seam to a bus shared by several boxes (`crate::cluster`, `[cluster]`).
//!
//! Owns the `bus` and `bus_gaps` fields. With a bus attached, a publish that passed its
//! checks (`admit`, in `routing.rs`) is handed to the bus instead of being numbered here;
//! every box, the one it entered included, delivers it when its bus reader reads it
//! back ([`Hub::deliver_from_bus`]) with the `(epoch, seq)` the bus gave it, so a topic
//! has one order and the same numbers on every box. Without a bus nothing here runs and
//! a publish costs what it always did (one `OnceLock` read).
//!
//! Continuity is checked per topic as messages arrive: a number that skips ahead, or a
//! new epoch, is a gap, and the topic's subscribers get a `lagged` notice (never a
//! silent hole); a number already delivered is dropped (a reader that resumed from an
//! older position). Locking: `continuity` runs under the topic's lock, taken by
//! `apply`; `bus_gap` takes the clients read lock alone.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::repair::{RemoteFetch, RemoteRange};
use super::topics::TopicState;
use super::{AsSent, Hub, HubError};
use switchboard_core::grants::Grants;
use switchboard_core::message::{Origin, Publish, Published};
use switchboard_core::protocol::{Member, Recipient, ServerFrame};

/// An admitted publish, owned, on its way to the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub topic: String,
    pub event: Option<String>,
    /// The payload as JSON text.
    pub data: String,
    pub from: String,
    pub origin: Origin,
    pub retain: bool,
    /// A device's publish as it sent it, for MQTT subscribers on every box.
    pub as_sent: Option<AsSent>,
    /// Whether someone waits for the bus's answer (a device's publish was
    /// acknowledged already, by its session).
    pub acked: bool,
}

/// The grants of a message from the bus: checked on the box it entered.
static CHECKED: Grants = Grants::ALL;

impl BusMessage {
    /// The message as the Hub routes it, with its payload parsed once.
    pub(super) fn publish<'a>(&'a self, data: &'a RawValue) -> Publish<'a> {
        Publish {
            topic: &self.topic,
            event: self.event.as_deref(),
            data,
            from: &self.from,
            origin: self.origin,
            // Checked on the box it entered (`admit`).
            by: &CHECKED,
            retain: self.retain,
        }
    }
}

/// A message read back from the bus, with the position the bus gave it on its topic.
#[derive(Debug)]
pub struct FromBus {
    pub message: BusMessage,
    pub data: Box<RawValue>,
    pub epoch: String,
    pub seq: u64,
}

/// The bus's answer to one publish: its topic's sequence number, or why it was not taken.
pub type Ack = tokio::sync::oneshot::Receiver<Result<u64, String>>;

/// A publish done, or handed to the bus with its answer to come ([`Hub::publish_deferred`]).
pub enum Publishing {
    Done(Published),
    Waiting(BusWait),
}

/// The bus's answer to come for one publish.
pub struct BusWait(Ack);

impl BusWait {
    pub async fn answer(self) -> Result<Published, HubError> {
        answered(self.0.await)
    }
}

fn submit(bus: &dyn Bus, p: &Publish<'_>, as_sent: Option<AsSent>, wait: bool) -> Ack {
    bus.submit(BusMessage {
        topic: p.topic.to_owned(),
        event: p.event.map(str::to_owned),
        data: p.data.get().to_owned(),
        from: p.from.to_owned(),
        origin: p.origin,
        retain: p.retain,
        as_sent,
        acked: wait,
    })
}

/// What a publisher that waited for the bus is told.
fn answered(
    answer: Result<Result<u64, String>, tokio::sync::oneshot::error::RecvError>,
) -> Result<Published, HubError> {
    match answer {
        Ok(Ok(seq)) => Ok(Published {
            seq,
            delivered: 0,
            stored: true,
        }),
        Ok(Err(why)) => Err(HubError::Unavailable(why)),
        Err(_) => Err(HubError::Unavailable("the bus stopped".into())),
    }
}

/// A bus shared by several boxes.
pub trait Bus: Send + Sync + 'static {
    /// Takes an admitted message; the answer comes once the bus accepted it (by the
    /// configured acknowledgement) or gave up on it.
    fn submit(&self, message: BusMessage) -> Ack;

    /// What the bus keeps of a topic's history, to repair this box's (`repair.rs`);
    /// `None` when it keeps none.
    fn history(&self, _range: RemoteRange) -> Option<RemoteFetch> {
        None
    }

    /// The bus epoch and the last position this box delivered, on the topic's stream.
    fn delivered(&self, _topic: &str) -> Option<(String, u64)> {
        None
    }

    /// Drops the bus's stored retained value of `topic` if it is still the one numbered
    /// `(epoch, seq)` (a forgotten offline notice, `bus_retained.rs`); best effort.
    fn forget_retained(&self, _topic: &str, _epoch: &str, _seq: u64) {}

    /// A member of this box joined (`true`, also for new info) or left a presence
    /// topic; told after the Hub announced it here, never blocking.
    fn presence_changed(&self, _topic: &str, _member: &Member<'_>, _joined: bool) {}

    /// A direct message (`frame`, the `dm` frame as encoded) for connections on other
    /// boxes; `may_send_to` is the sender's send grant (`None`: anyone), checked there.
    fn direct(&self, _to: &Recipient, _may_send_to: Option<&[String]>, _frame: &str) {}

    /// The topic's members on other boxes, each with its box's node id.
    fn remote_members(&self, _topic: &str) -> Vec<(String, Member<'static>)> {
        Vec::new()
    }
}

impl Hub {
    /// Attaches the bus; set once at startup, before anything is served.
    pub fn set_bus(&self, bus: Arc<dyn Bus>) {
        if self.bus.set(bus).is_err() {
            tracing::warn!("a bus was already attached");
        }
    }

    /// Whether publishes go through a bus.
    pub fn has_bus(&self) -> bool {
        self.bus.get().is_some()
    }

    /// Gaps seen on the bus: per topic (a skipped number, a new epoch) and per bus
    /// stream (a skipped position, a bus that lost its data).
    pub fn bus_gaps(&self) -> u64 {
        self.bus_gaps.load(Ordering::Relaxed)
    }

    /// Hands an admitted message to the bus and, when `wait`, blocks this worker thread
    /// until the bus answers (at most the bus's command timeout). Blocking here keeps
    /// the one place every way in passes (`Hub::publish`) synchronous, so no caller
    /// changes and the single-box path pays nothing; `block_in_place` lets the
    /// runtime move this worker's other tasks to another thread meanwhile.
    pub(super) fn through_bus(
        &self,
        bus: &dyn Bus,
        p: &Publish<'_>,
        as_sent: Option<AsSent>,
        wait: bool,
    ) -> Result<Published, HubError> {
        let ack = submit(bus, p, as_sent, wait);
        if !wait {
            return Ok(Published {
                seq: 0,
                delivered: 0,
                stored: true,
            });
        }
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| rt.block_on(ack))
            }
            Ok(_) => {
                return Err(HubError::Unavailable(
                    "a bus publish cannot wait inside a single-threaded runtime".into(),
                ))
            }
            Err(_) => ack.blocking_recv(),
        };
        answered(answer)
    }

    /// [`Hub::publish`] for callers that can await: with a bus, the wait for its answer
    /// is awaited instead of holding a worker thread (`block_in_place` hands the worker's
    /// other tasks to a new thread, one per publish waiting, up to the blocking pool's
    /// 512: a stalled Redis under many publishers would cost that many threads).
    pub async fn publish_async(&self, p: Publish<'_>) -> Result<Published, HubError> {
        match self.publish_deferred(p)? {
            Publishing::Done(published) => Ok(published),
            Publishing::Waiting(wait) => wait.answer().await,
        }
    }

    /// [`Hub::publish`] for callers that answer later: with a bus, the message is handed
    /// over now (so it takes its place in the order now) and the wait for the answer is
    /// returned, to be awaited without blocking.
    pub fn publish_deferred(&self, p: Publish<'_>) -> Result<Publishing, HubError> {
        match self.bus.get() {
            Some(bus) if p.origin != Origin::System => {
                self.admit(&p)?;
                Ok(Publishing::Waiting(BusWait(submit(
                    bus.as_ref(),
                    &p,
                    None,
                    true,
                ))))
            }
            _ => self.publish(p).map(Publishing::Done),
        }
    }

    /// Delivers a message read from the bus on this box, under the number the bus gave it.
    pub fn deliver_from_bus(&self, m: FromBus) -> Published {
        let FromBus {
            mut message,
            data,
            epoch,
            seq,
        } = m;
        let as_sent = message.as_sent.take();
        self.apply(message.publish(&data), as_sent, Some((&epoch, seq)))
    }

    /// A bus stream skipped `dropped` positions (0: an unknown number, its data was
    /// lost): which topics they were on is unknown, so every connection is told.
    pub fn bus_gap(&self, dropped: u64) {
        self.bus_gaps.fetch_add(1, Ordering::Relaxed);
        let frame = ServerFrame::Lagged { dropped }.to_frame();
        for session in self.sessions() {
            session.outbox.push(frame.clone());
        }
    }

    /// Checks a bus number against the last one delivered on the topic (under its
    /// lock): `None` for one already delivered; a skip or a new epoch tells the topic's
    /// subscribers (`lagged`, with how many when known) and counts a gap.
    pub(super) fn continuity(
        &self,
        state: &mut TopicState,
        topic: &str,
        epoch: &str,
        seq: u64,
    ) -> Option<u64> {
        let missed = match state.epoch.as_deref() {
            Some(e) if e == epoch => {
                if seq <= state.seq {
                    return None;
                }
                seq - state.seq - 1
            }
            // The topic's numbering started again (Redis lost it): how much was lost
            // is unknown, and said so with 0.
            Some(_) => {
                state.epoch = Some(epoch.into());
                self.topic_gap(topic, 0);
                state.seq = seq;
                return Some(seq);
            }
            None => {
                state.epoch = Some(epoch.into());
                0
            }
        };
        if missed > 0 {
            self.topic_gap(topic, missed);
        }
        state.seq = seq;
        Some(seq)
    }

    fn topic_gap(&self, topic: &str, dropped: u64) {
        self.bus_gaps.fetch_add(1, Ordering::Relaxed);
        static GAPS: switchboard_core::quiet::Throttle =
            switchboard_core::quiet::Throttle::per_secs(10);
        if let Some(held_back) = GAPS.admit() {
            tracing::warn!(
                topic = switchboard_core::quiet::clip(topic, 128),
                dropped,
                held_back,
                "cluster: a gap in a topic's numbering; its subscribers were told"
            );
        }
        let frame = ServerFrame::Lagged { dropped }.to_frame();
        self.deliver(topic, &frame, None, None, None);
    }
}
