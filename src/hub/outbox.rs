//! The bounded queue between the Hub and one connection's writer.
//!
//! The Hub pushes encoded frames without ever waiting; the connection's writer task takes
//! everything queued in one batch and writes it with one flush. When a subscriber cannot
//! keep up, the configured [`SlowConsumerPolicy`] decides: drop the oldest frames (and
//! tell the client how many with a `lagged` notice) or close the connection. Either way
//! a connection's memory is capped by `max_messages` and `max_bytes`.
//!
//! Replies to the connection's own requests live in a second, small queue that is never
//! dropped from: instead, the reader waits for room before queueing another reply, so a
//! client that pipelines requests faster than it reads replies is slowed down by TCP
//! backpressure rather than cut off or left without answers.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::Frame;

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
    /// The connection is going away and the transport needs to say nothing more
    /// (the peer left or broke the connection).
    Finished,
    /// Close with this code and reason once queued frames are written (shutdown,
    /// oversized frame…).
    Code(u16, &'static str),
}

/// Replies queued for one connection before its reader waits for the writer.
pub const MAX_QUEUED_REPLIES: usize = 256;

#[derive(Default)]
struct Queue {
    replies: VecDeque<Frame>,
    frames: VecDeque<Frame>,
    bytes: usize,
    dropped: u64,
    closed: Option<CloseReason>,
}

impl Queue {
    /// Nothing for the writer to do, so it is (or soon will be) waiting for a wake-up.
    fn is_idle(&self) -> bool {
        self.frames.is_empty() && self.replies.is_empty() && self.dropped == 0
    }
}

/// One batch for the writer.
#[derive(Debug, Default)]
pub struct Batch {
    /// Frames dropped since the last batch (send a `lagged` notice first).
    pub dropped: u64,
    /// Set once the outbox is closed; frames taken with it are still worth sending.
    pub closed: Option<CloseReason>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and this many older frames were dropped to make room.
    DroppedOldest(u64),
    /// Not queued: this push passed the limit under the close policy and closed it.
    Overflowed,
    /// Not queued: the outbox was already closed.
    Closed,
}

pub struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    /// Signalled when the writer took a batch, so a reader waiting for reply room wakes.
    space: Notify,
    /// Cancelled when the queue overflows under the close policy: the writer may be
    /// stuck writing to a peer that reads nothing, and must give up at once.
    overflow: CancellationToken,
    limits: QueueLimits,
}

impl Outbox {
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            space: Notify::new(),
            overflow: CancellationToken::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock would leave only plain data behind; keep going.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting. Never blocks the publisher on a slow reader.
    pub fn push(&self, frame: Frame) -> Pushed {
        let mut q = self.lock();
        if q.closed.is_some() {
            return Pushed::Closed;
        }
        let was_idle = q.is_idle();
        q.bytes += frame.len();
        q.frames.push_back(frame);
        let mut dropped = 0;
        while q.frames.len() > self.limits.max_messages || q.bytes > self.limits.max_bytes {
            match self.limits.policy {
                SlowConsumerPolicy::DropOldest if q.frames.len() > 1 => {
                    if let Some(old) = q.frames.pop_front() {
                        q.bytes -= old.len();
                        dropped += 1;
                    }
                }
                // Close, or a single frame larger than the byte limit: nothing to drop.
                _ => {
                    q.closed = Some(CloseReason::SlowConsumer);
                    q.frames.clear();
                    q.bytes = 0;
                    drop(q);
                    self.overflow.cancel();
                    self.ready.notify_one();
                    return Pushed::Overflowed;
                }
            }
        }
        q.dropped += dropped;
        drop(q);
        // Only the push that makes the queue non-empty wakes the writer: it takes
        // everything in one batch, so later pushes ride on that wake-up.
        if was_idle {
            self.ready.notify_one();
        }
        if dropped > 0 {
            Pushed::DroppedOldest(dropped)
        } else {
            Pushed::Queued
        }
    }

    /// Queues a reply if there is room, without waiting; gives the frame back if not.
    pub fn try_push_reply(&self, frame: Frame) -> Result<bool, Frame> {
        let mut q = self.lock();
        if q.closed.is_some() {
            return Ok(false);
        }
        if q.replies.len() >= MAX_QUEUED_REPLIES {
            return Err(frame);
        }
        let was_idle = q.is_idle();
        q.replies.push_back(frame);
        drop(q);
        if was_idle {
            self.ready.notify_one();
        }
        Ok(true)
    }

    /// Queues a reply to the connection's own request, waiting while too many replies
    /// are queued. Returns false if the outbox is closed.
    pub async fn push_reply(&self, mut frame: Frame) -> bool {
        loop {
            match self.try_push_reply(frame) {
                Ok(queued) => return queued,
                Err(back) => frame = back,
            }
            self.space.notified().await;
        }
    }

    /// Stops taking frames; what is queued can still be taken.
    pub fn close(&self, reason: CloseReason) {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(reason);
        }
        drop(q);
        self.ready.notify_one();
        self.space.notify_one();
    }

    /// Completes when the queue overflowed under [`SlowConsumerPolicy::Close`].
    pub async fn overflowed(&self) {
        self.overflow.cancelled().await
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Frames and replies waiting, for metrics.
    pub fn len(&self) -> usize {
        let q = self.lock();
        q.frames.len() + q.replies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until there is something to do, then moves every queued reply and frame
    /// into `out`, replies first (`out` should be empty; its allocation is reused batch
    /// after batch).
    pub async fn next_batch(&self, out: &mut VecDeque<Frame>) -> Batch {
        loop {
            {
                let mut q = self.lock();
                if !q.is_idle() || q.closed.is_some() {
                    let had_replies = !q.replies.is_empty();
                    out.extend(q.replies.drain(..));
                    if out.is_empty() {
                        std::mem::swap(out, &mut q.frames);
                    } else {
                        out.append(&mut q.frames);
                    }
                    q.bytes = 0;
                    let batch = Batch {
                        dropped: std::mem::take(&mut q.dropped),
                        closed: q.closed,
                    };
                    drop(q);
                    if had_replies {
                        self.space.notify_one();
                    }
                    return batch;
                }
            }
            // notify_one keeps a permit when nobody waits, so a push between the check
            // above and this await is not lost.
            self.ready.notified().await;
        }
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
    async fn replies_are_never_dropped_and_come_first() {
        let o = outbox(SlowConsumerPolicy::DropOldest);
        for i in 0..5u8 {
            o.push(Frame::from(i.to_string()));
        }
        assert!(o.push_reply(Frame::from_static("ok")).await);
        let mut out = VecDeque::new();
        o.next_batch(&mut out).await;
        assert_eq!(out[0], "ok");
        assert_eq!(out.len(), 4);
        // A full reply queue makes the pusher wait for the writer, not lose replies.
        for _ in 0..MAX_QUEUED_REPLIES {
            assert!(o.push_reply(Frame::from_static("r")).await);
        }
        let o = std::sync::Arc::new(o);
        let waiting = tokio::spawn({
            let o = o.clone();
            async move { o.push_reply(Frame::from_static("late")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        out.clear();
        o.next_batch(&mut out).await;
        assert_eq!(out.len(), MAX_QUEUED_REPLIES);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn close_policy_closes_and_refuses_more() {
        let o = outbox(SlowConsumerPolicy::Close);
        for _ in 0..3 {
            assert_eq!(o.push(Frame::from_static("x")), Pushed::Queued);
        }
        assert_eq!(o.push(Frame::from_static("x")), Pushed::Overflowed);
        assert_eq!(o.push(Frame::from_static("x")), Pushed::Closed);
        let mut out = VecDeque::new();
        let batch = o.next_batch(&mut out).await;
        assert_eq!(batch.closed, Some(CloseReason::SlowConsumer));
        assert!(out.is_empty());
    }
}
