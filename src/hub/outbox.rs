//! The bounded queue between the Hub and one connection.
//!
//! The Hub pushes encoded frames without ever waiting; the connection takes everything
//! queued in one batch and writes it with one flush. When a subscriber cannot keep up,
//! the configured [`SlowConsumerPolicy`] decides: drop the oldest frames (and tell the
//! client how many with a `lagged` notice) or close the connection. Either way a
//! connection's memory is capped by `max_messages` and `max_bytes`: frames the
//! connection has taken but not yet handed to its socket still count (see
//! [`Outbox::release`]), so the queue and the batch being written together stay within
//! them (before, each held up to the limit: a never-reading subscriber cost 2.6 MB
//! against a documented 1 MiB).
//!
//! Each batch carries the publish stamp of its oldest stamped frame, so the consumer can
//! measure delivery latency once per batch rather than once per frame.
//!
//! The consumer side is poll-based (`poll_batch`) so a connection can wait for
//! outbound frames and inbound bytes in one task, without a second task per socket.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use serde::{Deserialize, Serialize};

use switchboard_core::delivery::Delivery;
use switchboard_core::protocol::Frame;

/// A frame the Hub queues for many connections (a publish, a presence notice, a retained
/// value), with room for a second encoding of it that the first connection to need one
/// makes for all the others: permessage-deflate's compressed bytes (`ws::deflate`).
/// Kept with the frame, the compressed form lives exactly as long as some connection
/// may still send it, and finding it costs no lock and no lookup.
#[derive(Debug)]
pub struct Shared {
    frame: Frame,
    packed: OnceLock<Option<Bytes>>,
}

impl Shared {
    pub fn new(frame: Frame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            packed: OnceLock::new(),
        })
    }

    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The frame's second encoding (`None`: it has none worth sending), made by `pack`
    /// on the first call. `pack` runs once however many connections ask at once; the
    /// others wait for its result.
    pub fn packed(&self, pack: impl FnOnce(&Frame) -> Option<Bytes>) -> Option<&Bytes> {
        self.packed.get_or_init(|| pack(&self.frame)).as_ref()
    }
}

/// What a WebSocket connection's outbox holds: a frame, or a frame shared with its
/// compressed form for a connection that negotiated permessage-deflate (uncompressed
/// connections get the bare frame and pay nothing for the other kind).
#[derive(Debug, Clone)]
pub enum Outgoing {
    Frame(Frame),
    Shared(Arc<Shared>),
}

impl Outgoing {
    pub fn frame(&self) -> &Frame {
        match self {
            Outgoing::Frame(frame) => frame,
            Outgoing::Shared(shared) => shared.frame(),
        }
    }
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Outgoing::Frame(frame)
    }
}

/// What an outbox holds: encoded WebSocket frames, or an MQTT subscriber's deliveries.
pub trait Queued {
    /// Bytes it holds, for the byte limit.
    fn size(&self) -> usize;

    /// Whether it counts against what [`Outbox::poll_up_to`] may take: an MQTT
    /// delivery that waits for an acknowledgement does, anything else does not.
    fn awaits_ack(&self) -> bool {
        false
    }
}

impl Queued for Frame {
    fn size(&self) -> usize {
        self.len()
    }
}

impl Queued for Outgoing {
    fn size(&self) -> usize {
        self.frame().len()
    }
}

impl Queued for Delivery {
    fn size(&self) -> usize {
        Delivery::size(self)
    }

    fn awaits_ack(&self) -> bool {
        self.qos > 0
    }
}

/// What to do when a connection's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Drop the oldest queued frames; the client gets a `lagged` notice with the count.
    /// Right for telemetry, where the newest value matters most.
    #[default]
    DropOldest,
    /// Close the connection (code 4100) so the client reconnects and resynchronises.
    Close,
}

/// Limits of one outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub policy: SlowConsumerPolicy,
}

/// Why an outbox stopped taking frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue passed its limit under [`SlowConsumerPolicy::Close`].
    SlowConsumer,
    /// Close with this code and reason once queued frames are written (shutdown…).
    Code(u16, &'static str),
}

struct Queue<T> {
    frames: VecDeque<T>,
    bytes: usize,
    /// Frames (and their bytes) handed to the consumer and not yet released by it.
    taken_frames: usize,
    taken_bytes: usize,
    dropped: u64,
    closed: Option<CloseReason>,
    /// Publish stamp (µs since the epoch) of the oldest stamped frame queued since the
    /// last batch.
    oldest: Option<u64>,
}

/// What the consumer gets from one `poll_batch`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Frames dropped since the last batch (send a `lagged` notice first).
    pub dropped: u64,
    /// Set once the outbox is closed. Under `SlowConsumer` the queue was discarded and
    /// nothing more should be written; otherwise frames taken with it are still due.
    pub closed: Option<CloseReason>,
    /// Publish stamp of the oldest stamped frame in the batch (see [`Outbox::push_stamped`]).
    pub oldest: Option<u64>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and this many older frames were dropped to make room.
    DroppedOldest(u64),
    /// Not queued: this push passed the limit under the close policy and closed it; this
    /// many frames were discarded, itself included.
    Overflowed(u64),
    /// Not queued: the outbox was already closed.
    Closed,
}

pub struct Outbox<T = Frame> {
    queue: Mutex<Queue<T>>,
    /// The connection task waiting for frames (one consumer, so one waker).
    consumer: AtomicWaker,
    limits: QueueLimits,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            taken_frames: 0,
            taken_bytes: 0,
            dropped: 0,
            closed: None,
            oldest: None,
        }
    }
}

impl<T: Queued> Outbox<T> {
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            consumer: AtomicWaker::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        // A panic while holding this lock would leave only plain data behind; keep going.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting. Never blocks the publisher on a slow reader.
    pub fn push(&self, frame: impl Into<T>) -> Pushed {
        self.push_stamped(frame.into(), None)
    }

    /// Queues a frame the Hub accepted at `stamp` (µs since the epoch), for the delivery
    /// latency figure.
    pub fn push_stamped(&self, frame: T, stamp: Option<u64>) -> Pushed {
        let mut q = self.lock();
        if q.closed.is_some() {
            return Pushed::Closed;
        }
        if q.oldest.is_none() {
            q.oldest = stamp;
        }
        let was_empty = q.frames.is_empty();
        q.bytes += frame.size();
        q.frames.push_back(frame);
        let mut dropped = 0;
        while q.frames.len() + q.taken_frames > self.limits.max_messages
            || q.bytes + q.taken_bytes > self.limits.max_bytes
        {
            match self.limits.policy {
                SlowConsumerPolicy::DropOldest if q.frames.len() > 1 => {
                    if let Some(old) = q.frames.pop_front() {
                        q.bytes -= old.size();
                        dropped += 1;
                    }
                }
                // The newest frame fits the limit on its own, only not beside the batch
                // being written: keep it, the batch's release makes room.
                SlowConsumerPolicy::DropOldest if q.bytes <= self.limits.max_bytes => break,
                // Close, or a single frame larger than the byte limit: nothing to drop.
                _ => {
                    let discarded = q.frames.len() as u64;
                    q.closed = Some(CloseReason::SlowConsumer);
                    q.frames = VecDeque::new();
                    q.bytes = 0;
                    q.oldest = None;
                    drop(q);
                    self.consumer.wake();
                    return Pushed::Overflowed(discarded);
                }
            }
        }
        q.dropped += dropped;
        drop(q);
        // Only the push that makes the queue non-empty wakes the consumer: it takes
        // everything in one batch, so later pushes ride on that wake-up.
        if was_empty {
            self.consumer.wake();
        }
        if dropped > 0 {
            Pushed::DroppedOldest(dropped)
        } else {
            Pushed::Queued
        }
    }

    /// The consumer handed `frames` frames of `bytes` bytes, taken in a batch, to its
    /// socket: they no longer count against the limits.
    pub fn release(&self, frames: usize, bytes: usize) {
        let mut q = self.lock();
        q.taken_frames = q.taken_frames.saturating_sub(frames);
        q.taken_bytes = q.taken_bytes.saturating_sub(bytes);
    }

    /// Stops taking frames; what is queued is still handed out, then `closed` is set.
    pub fn close(&self, reason: CloseReason) {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(reason);
        }
        drop(q);
        self.consumer.wake();
    }

    /// Ready when there is something for the consumer: frames (moved into `out` when
    /// `take` is true), a drop count, or a close. With `take` false only a slow-consumer
    /// close is reported, so a connection still writing its last batch leaves new
    /// frames here, where the queue limits apply, instead of buffering them itself.
    pub fn poll_batch(
        &self,
        cx: &mut Context<'_>,
        take: bool,
        out: &mut VecDeque<T>,
    ) -> Poll<Batch> {
        self.poll_inner(cx, take, usize::MAX, out)
    }

    /// [`Outbox::poll_batch`] taking, oldest first, at most `max` frames that await an
    /// acknowledgement ([`Queued::awaits_ack`]) and those between them: an MQTT session
    /// takes no more QoS 1 and 2 deliveries than the device's Receive Maximum lets it
    /// send, and leaves the rest here, where the queue limits apply. `closed` is
    /// reported with the batch that empties the queue.
    pub fn poll_up_to(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut VecDeque<T>,
    ) -> Poll<Batch> {
        self.poll_inner(cx, true, max, out)
    }

    fn poll_inner(
        &self,
        cx: &mut Context<'_>,
        take: bool,
        max: usize,
        out: &mut VecDeque<T>,
    ) -> Poll<Batch> {
        // Register first, then look: a push after the look wakes this registration.
        self.consumer.register(cx.waker());
        let mut q = self.lock();
        if q.closed == Some(CloseReason::SlowConsumer) {
            return Poll::Ready(Batch {
                dropped: 0,
                closed: q.closed,
                oldest: None,
            });
        }
        if !take || (q.frames.is_empty() && q.dropped == 0 && q.closed.is_none()) {
            return Poll::Pending;
        }
        let n = if max >= q.frames.len() {
            q.frames.len()
        } else {
            let mut counted = 0;
            q.frames
                .iter()
                .take_while(|f| {
                    counted += usize::from(f.awaits_ack());
                    counted <= max
                })
                .count()
        };
        if n == 0 && q.dropped == 0 && (q.closed.is_none() || !q.frames.is_empty()) {
            // The next one awaits an acknowledgement and there is no room for it.
            return Poll::Pending;
        }
        if n == q.frames.len() {
            q.taken_frames += q.frames.len();
            q.taken_bytes += q.bytes;
            if out.is_empty() {
                std::mem::swap(out, &mut q.frames);
            } else {
                out.append(&mut q.frames);
            }
            q.bytes = 0;
        } else {
            let mut bytes = 0;
            for frame in q.frames.drain(..n) {
                bytes += frame.size();
                out.push_back(frame);
            }
            q.bytes -= bytes;
            q.taken_frames += n;
            q.taken_bytes += bytes;
        }
        let closed = if q.frames.is_empty() { q.closed } else { None };
        Poll::Ready(Batch {
            dropped: std::mem::take(&mut q.dropped),
            closed,
            oldest: q.oldest.take(),
        })
    }

    /// Puts frames taken and not delivered back at the front, in their order, no longer
    /// counted as taken: an MQTT device left before acknowledging them, and its session
    /// sends them again when it comes back.
    pub fn requeue(&self, frames: Vec<T>) {
        let mut q = self.lock();
        if q.closed.is_some() {
            return;
        }
        let bytes: usize = frames.iter().map(Queued::size).sum();
        q.taken_frames = q.taken_frames.saturating_sub(frames.len());
        q.taken_bytes = q.taken_bytes.saturating_sub(bytes);
        q.bytes += bytes;
        for frame in frames.into_iter().rev() {
            q.frames.push_front(frame);
        }
        drop(q);
        self.consumer.wake();
    }

    /// Whether it stopped taking frames.
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Frames queued now, for the queue depth figures.
    pub fn depth(&self) -> usize {
        self.lock().frames.len()
    }

    /// Waits for the next batch (for consumers that are plain async code, which are
    /// done with a batch once they have it: it is released at once).
    pub async fn next_batch(&self, out: &mut VecDeque<T>) -> Batch {
        let before = out.len();
        let batch = std::future::poll_fn(|cx| self.poll_batch(cx, true, out)).await;
        let taken = out.iter().skip(before);
        self.release(taken.len(), taken.map(Queued::size).sum());
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(policy: SlowConsumerPolicy) -> Outbox {
        Outbox::new(QueueLimits {
            max_messages: 3,
            max_bytes: 100,
            policy,
        })
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_and_counts() {
        let o = outbox(SlowConsumerPolicy::DropOldest);
        for i in 0..5u8 {
            o.push(Frame::from(i.to_string()));
        }
        let mut out = VecDeque::new();
        let batch = o.next_batch(&mut out).await;
        assert_eq!(batch.dropped, 2);
        assert_eq!(out, ["2", "3", "4"]);
    }

    #[tokio::test]
    async fn byte_limit_drops_too() {
        let o = outbox(SlowConsumerPolicy::DropOldest);
        o.push(Frame::from("0".repeat(60)));
        assert_eq!(
            o.push(Frame::from("1".repeat(60))),
            Pushed::DroppedOldest(1)
        );
        let mut out = VecDeque::new();
        o.next_batch(&mut out).await;
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with('1'));
    }

    #[tokio::test]
    async fn close_policy_closes_and_refuses_more() {
        let o = outbox(SlowConsumerPolicy::Close);
        for _ in 0..3 {
            assert_eq!(o.push(Frame::from_static("x")), Pushed::Queued);
        }
        assert_eq!(o.push(Frame::from_static("x")), Pushed::Overflowed(4));
        assert_eq!(o.push(Frame::from_static("x")), Pushed::Closed);
        let mut out = VecDeque::new();
        let batch = o.next_batch(&mut out).await;
        assert_eq!(batch.closed, Some(CloseReason::SlowConsumer));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_consumer_still_writing_is_told_only_of_overflow() {
        let o = outbox(SlowConsumerPolicy::Close);
        o.push(Frame::from_static("x"));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        assert_eq!(o.poll_batch(&mut cx, false, &mut out), Poll::Pending);
        assert!(
            out.is_empty(),
            "frames stay in the outbox while the consumer is busy"
        );
        for _ in 0..3 {
            o.push(Frame::from_static("x"));
        }
        let ready = o.poll_batch(&mut cx, false, &mut out);
        assert_eq!(
            ready,
            Poll::Ready(Batch {
                dropped: 0,
                closed: Some(CloseReason::SlowConsumer),
                oldest: None,
            })
        );
    }

    #[tokio::test]
    async fn a_batch_being_written_counts_until_released() {
        let o = outbox(SlowConsumerPolicy::DropOldest);
        for i in 0..3u8 {
            o.push(Frame::from(i.to_string()));
        }
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut writing = VecDeque::new();
        assert!(o.poll_batch(&mut cx, true, &mut writing).is_ready());
        // The batch taken still counts: the newest is kept, alone.
        assert_eq!(o.push(Frame::from_static("3")), Pushed::Queued);
        assert_eq!(o.push(Frame::from_static("4")), Pushed::DroppedOldest(1));
        o.release(3, 3);
        assert_eq!(o.push(Frame::from_static("5")), Pushed::Queued);
        assert_eq!(o.push(Frame::from_static("6")), Pushed::Queued);
        assert_eq!(o.depth(), 3);
    }

    #[tokio::test]
    async fn a_batch_carries_its_oldest_stamp() {
        let o = outbox(SlowConsumerPolicy::DropOldest);
        o.push(Frame::from_static("presence"));
        o.push_stamped(Frame::from_static("a"), Some(10));
        o.push_stamped(Frame::from_static("b"), Some(20));
        assert_eq!(o.depth(), 3);
        let mut out = VecDeque::new();
        assert_eq!(o.next_batch(&mut out).await.oldest, Some(10));
        assert_eq!(o.depth(), 0);
        o.push_stamped(Frame::from_static("c"), Some(30));
        out.clear();
        assert_eq!(o.next_batch(&mut out).await.oldest, Some(30));
    }

    #[test]
    fn at_most_max_deliveries_awaiting_an_ack_are_taken() {
        use std::sync::Arc;
        use switchboard_core::delivery::DeviceMessage;
        let o: Outbox<Delivery> = Outbox::new(QueueLimits {
            max_messages: 10,
            max_bytes: 1000,
            policy: SlowConsumerPolicy::DropOldest,
        });
        let message = Arc::new(DeviceMessage {
            topic: "t".into(),
            payload: "p".into(),
            qos: 1,
            retain: false,
            properties: Default::default(),
        });
        for qos in [1, 0, 1, 1] {
            o.push(Delivery {
                message: message.clone(),
                qos,
                retain: false,
                dup: false,
            });
        }
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        assert!(o.poll_up_to(&mut cx, 1, &mut out).is_ready());
        let taken: Vec<u8> = out.iter().map(|d| d.qos).collect();
        assert_eq!(taken, [1, 0], "QoS 0 ones ride along");
        out.clear();
        assert!(o.poll_up_to(&mut cx, 0, &mut out).is_pending(), "no room");
        assert!(o.poll_up_to(&mut cx, 5, &mut out).is_ready());
        assert_eq!(out.len(), 2);
    }

    #[tokio::test]
    async fn close_hands_out_what_is_queued_first() {
        let o = outbox(SlowConsumerPolicy::DropOldest);
        o.push(Frame::from_static("last words"));
        o.close(CloseReason::Code(1001, "bye"));
        assert_eq!(o.push(Frame::from_static("late")), Pushed::Closed);
        let mut out = VecDeque::new();
        let batch = o.next_batch(&mut out).await;
        assert_eq!(batch.closed, Some(CloseReason::Code(1001, "bye")));
        assert_eq!(out, ["last words"]);
    }
}
