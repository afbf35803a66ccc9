//! Local subscriptions: the [`Subscription`] stream a caller holds, and the driver's
//! [`Registry`] that routes each `msg` push to every local subscription it matches.
//!
//! The server delivers a message once per connection however many of its filters match,
//! so matching happens again here, with `switchboard_core::topic::matches`, to fan it out locally.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::{Client, ClientError, Message};
use switchboard_core::topic;

/// The driver's end of one subscription.
pub(super) struct LocalSub {
    pub tx: mpsc::Sender<Message>,
    pub dropped: Arc<AtomicU64>,
}

impl LocalSub {
    /// Never waits. A reader that falls behind must not stall the socket: that would
    /// hold up every other subscription, every reply and the answers to the server's
    /// pings (the server would then drop us with 4101). So a full buffer drops the new
    /// message and counts it in [`Subscription::dropped`].
    fn deliver(&self, filter: &str, msg: Message) {
        if let Err(TrySendError::Full(msg)) = self.tx.try_send(msg) {
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    filter,
                    topic = msg.topic,
                    "a subscription is not read fast enough; dropping its messages"
                );
            }
        }
        // Closed: its Subscription was dropped and the release is on its way.
    }
}

/// Filter → the local subscriptions holding it, by key.
#[derive(Default)]
pub(super) struct Registry {
    filters: HashMap<String, HashMap<u64, LocalSub>>,
}

impl Registry {
    pub fn insert(&mut self, filter: &str, key: u64, sub: LocalSub) {
        self.filters
            .entry(filter.to_owned())
            .or_default()
            .insert(key, sub);
    }

    /// Removes one subscription. True when it was the filter's last, so the server
    /// should hear `unsub`.
    pub fn remove(&mut self, filter: &str, key: u64) -> bool {
        let Some(subs) = self.filters.get_mut(filter) else {
            return false;
        };
        if subs.remove(&key).is_none() || !subs.is_empty() {
            return false;
        }
        self.filters.remove(filter);
        true
    }

    /// Ends every subscription of a filter (their streams return `None`).
    pub fn remove_filter(&mut self, filter: &str) {
        self.filters.remove(filter);
    }

    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.filters.keys().map(String::as_str)
    }

    /// Hands a message to every local subscription whose filter matches its topic.
    pub fn dispatch(&self, msg: Message) {
        let targets: Vec<(&str, &LocalSub)> = self
            .filters
            .iter()
            .filter(|(filter, _)| topic::matches(filter, &msg.topic))
            .flat_map(|(filter, subs)| subs.values().map(move |s| (filter.as_str(), s)))
            .collect();
        // Clone for all but the last target: the common single match costs no copy.
        if let Some(((filter, last), rest)) = targets.split_last() {
            for (f, sub) in rest {
                sub.deliver(f, msg.clone());
            }
            last.deliver(filter, msg);
        }
    }
}

/// A stream of the messages matching one filter, from [`Client::subscribe`].
///
/// Each subscription buffers up to `ClientOptions::subscription_buffer` messages; when
/// the reader falls further behind, new messages for it are dropped and counted (see
/// [`Subscription::dropped`]) rather than slowing the whole client. Dropping it
/// unsubscribes; the server hears `unsub` when the last local subscription of the
/// filter goes. The stream ends when the client closes for good.
pub struct Subscription {
    pub(super) filter: String,
    pub(super) key: u64,
    pub(super) rx: mpsc::Receiver<Message>,
    pub(super) dropped: Arc<AtomicU64>,
    /// Keeps the connection alive while the subscription is, even if every other
    /// handle is gone.
    pub(super) client: Client,
    pub(super) active: bool,
}

impl Subscription {
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Messages dropped because this subscription's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The next message, or `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Unsubscribes and waits for the server's answer (when one is needed).
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.active = false;
        self.client
            .unsubscribe(std::mem::take(&mut self.filter), self.key)
            .await
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active {
            self.client
                .release(std::mem::take(&mut self.filter), self.key);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("filter", &self.filter)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str) -> Message {
        Message {
            topic: topic.into(),
            event: None,
            data: switchboard_core::protocol::null().to_owned(),
            ts: 0,
            seq: 1,
            retained: false,
            history: false,
            from: "c".into(),
        }
    }

    fn local(cap: usize) -> (LocalSub, mpsc::Receiver<Message>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(cap);
        let dropped = Arc::new(AtomicU64::new(0));
        (
            LocalSub {
                tx,
                dropped: dropped.clone(),
            },
            rx,
            dropped,
        )
    }

    #[test]
    fn fans_out_by_filter_and_drops_when_full() {
        let mut reg = Registry::default();
        let (a, mut rx_a, _) = local(8);
        let (b, mut rx_b, dropped_b) = local(1);
        reg.insert("room/+", 1, a);
        reg.insert("room/#", 2, b);
        reg.dispatch(msg("room/1"));
        reg.dispatch(msg("room/2"));
        reg.dispatch(msg("other"));
        assert_eq!(rx_a.try_recv().unwrap().topic, "room/1");
        assert_eq!(rx_a.try_recv().unwrap().topic, "room/2");
        assert!(rx_a.try_recv().is_err());
        assert_eq!(rx_b.try_recv().unwrap().topic, "room/1");
        assert!(rx_b.try_recv().is_err());
        assert_eq!(dropped_b.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn remove_reports_the_last_of_a_filter() {
        let mut reg = Registry::default();
        reg.insert("a", 1, local(1).0);
        reg.insert("a", 2, local(1).0);
        assert!(!reg.remove("a", 1));
        assert!(!reg.remove("a", 1), "already gone");
        assert!(reg.remove("a", 2));
        assert!(!reg.remove("a", 2));
        assert_eq!(reg.filters().count(), 0);
    }
}
