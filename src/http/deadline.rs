//! A deadline for reading a request body.
//!
//! hyper bounds the time to send request headers (`http.handshake_timeout`), not the
//! body: a body trickled at one byte every 2 s held its connection for as long as the
//! client liked, and 200 of them took every slot of `max_connections` = 200. Each body
//! is wrapped here so that reading it fails once `http.body_timeout` has passed since
//! the request arrived; the handler's error reply ends the request and hyper then closes
//! the connection, whose body was not read to the end. The same wrapper serves HTTP/1
//! and HTTP/2 (where it ends the stream, not the connection).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::listener::ListenerStats;

/// The error a body gives when its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (http.body_timeout)")]
pub struct BodyTimeout(Duration);

/// A request body that must arrive whole before its deadline.
pub struct Deadline<B> {
    inner: B,
    timeout: Duration,
    due: Instant,
    /// Created on the first wait, so a body that is already there costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    stats: Arc<ListenerStats>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, timeout: Duration, stats: Arc<ListenerStats>) -> Self {
        Self {
            inner,
            timeout,
            due: Instant::now() + timeout,
            sleep: None,
            stats,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let due = this.due;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
