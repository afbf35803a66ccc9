//! One WebSocket connection, served by one task.
//!
//! The task waits on three things at once — bytes from the peer, frames from the Hub
//! (the session's outbox) and the heartbeat timer — and makes progress on whichever is
//! ready, in [`Connection::poll_event`]. Outbound frames are taken from the outbox in
//! batches and flushed once per batch: at high fan-out one `write` carries many frames.
//!
//! One task rather than a reader and a writer: a split socket puts a lock around every
//! frame written (8–11% of server CPU at 1,000 subscribers, measured with perf), and a
//! second task per connection costs memory on every idle connection.
//!
//! Backpressure, both ways: a new batch is taken from the outbox only once the previous
//! one is handed to the socket, so a slow reader's backlog stays in the outbox where the
//! slow-consumer policy applies; and requests are no longer read while too many replies
//! wait to be written, so a client that pipelines without reading is slowed by TCP
//! rather than buffered without bound.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Interval;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::deflate::Sent;
use super::dispatch::{self, Then};
use super::http::Pending;
use super::rate::PublishLimiter;
use super::WsState;
use crate::auth::{AuthError, Principal};
use crate::hub::outbox::{CloseReason, Outgoing, SlowConsumerPolicy};
use crate::hub::{RetainedCursor, Session};
use switchboard_core::deflate::{compressed_text, DeflateError, Inflating};
use switchboard_core::protocol::{
    close, parse_request, ErrorCode, Frame, Request, RequestError, ServerFrame,
};
use switchboard_core::quiet::Throttle;

/// An upgraded connection; compressed frames from the peer are inflated below
/// tungstenite when permessage-deflate was negotiated.
pub type Socket = WebSocketStream<Inflating<TokioIo<Upgraded>>>;

/// How long closing may wait on the peer (to write our close frame, for its reply).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection that flushed less than this ago is taking a stream, and lets the tasks
/// already ready run before it takes its next batch (see [`Connection::defer_take`]).
/// At the fan-out target's pace (a message per connection every 10 ms) it never defers.
const STREAMING_WITHIN: Duration = Duration::from_micros(500);

/// Replies waiting for the socket beyond which requests are no longer read.
const MAX_UNWRITTEN_REPLIES: usize = 256;

/// Carried HTTP requests served at once per connection; beyond it requests are no
/// longer read until one finishes. Each may hold a response body of up to 4 MiB while
/// it is built, so this bounds what pipelining can make a connection hold
/// (docs/protocol.md, "Memory per connection").
const MAX_CARRIED_REQUESTS: usize = 4;

/// Who a new connection is, as far as the upgrade could tell.
pub enum Identity {
    Proven(Arc<Principal>),
    /// A credential came with the upgrade and was refused.
    Refused(AuthError),
    /// No credential and no anonymous access: the first frame must be `auth`.
    AwaitingAuth,
}

/// Serves one upgraded connection until it ends.
pub async fn serve(mut socket: Socket, state: Arc<WsState>, identity: Identity) {
    let _tracked = state.tracker.token();
    let (principal, auth_reply) = match identity {
        Identity::Proven(principal) => (principal, None),
        Identity::Refused(e) => {
            let refusal = unauthorized(None, &e.to_string());
            Box::pin(refuse(socket, refusal, close::UNAUTHORIZED, "unauthorized")).await;
            return;
        }
        Identity::AwaitingAuth => match await_auth(&mut socket, &state).await {
            Ok(proven) => proven,
            Err(Refusal::Gone) => return,
            Err(Refusal::Timeout) => {
                state.auth.rejections.count_auth_timeout();
                let reason = CloseReason::Code(close::AUTH_TIMEOUT, "authentication timeout");
                Box::pin(close_gracefully(socket, reason)).await;
                return;
            }
            Err(Refusal::Rejected(reply)) => {
                Box::pin(refuse(socket, reply, close::UNAUTHORIZED, "unauthorized")).await;
                return;
            }
        },
    };
    let session = state
        .hub
        .connect_with(principal, socket.get_ref().is_compressed());
    tracing::debug!(
        client = session.id(),
        user = session.user(),
        kind = %session.principal().kind,
        "client connected"
    );
    if state.shutdown.is_cancelled() {
        // Accepted just as shutdown began: say so instead of leaving it half-served.
        session
            .outbox
            .close(CloseReason::Code(close::GOING_AWAY, "server shutting down"));
    }
    let connection = Connection::new(socket, state.clone(), session, auth_reply);
    let client = connection.run().await;
    tracing::debug!(client, "client disconnected");
}

/// Why a connection awaiting `auth` ends.
enum Refusal {
    Gone,
    Timeout,
    /// The `error` frame to send before closing with 4001.
    Rejected(String),
}

/// Reads the first frame of a connection that must authenticate, within the auth
/// timeout. Returns the identity and the `ok` reply to send before `welcome`.
async fn await_auth(
    socket: &mut Socket,
    state: &WsState,
) -> Result<(Arc<Principal>, Option<Message>), Refusal> {
    let first = tokio::time::timeout(state.auth_timeout, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => return Some(text),
                Some(Ok(Message::Binary(_))) => return Some(Utf8Bytes::from_static("")),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                // Pings are answered by tungstenite; nothing else counts as the first frame.
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    let text = match first {
        Err(_) => return Err(Refusal::Timeout),
        Ok(None) => return Err(Refusal::Gone),
        Ok(Some(text)) => text,
    };
    let (id, request) = match parse_request(text.as_str()) {
        Ok(parsed) => parsed,
        Err((id, _)) => {
            return Err(Refusal::Rejected(unauthorized(
                id,
                "authenticate first: the first frame must be {\"op\":\"auth\",\"token\":…}",
            )))
        }
    };
    let Request::Auth { token } = request else {
        return Err(Refusal::Rejected(unauthorized(
            id,
            "authenticate first: the first frame must be {\"op\":\"auth\",\"token\":…}",
        )));
    };
    match dispatch::authenticate(state, &token) {
        Ok(principal) => {
            let ok = ServerFrame::Ok {
                id,
                reply: switchboard_core::protocol::OkReply {
                    expires_at: principal.expires_at,
                    ..Default::default()
                },
            };
            Ok((Arc::new(principal), Some(Message::Text(ok.to_frame()))))
        }
        Err(e) => Err(Refusal::Rejected(ServerFrame::error(id, &e))),
    }
}

fn unauthorized(id: Option<&serde_json::value::RawValue>, why: &str) -> String {
    ServerFrame::error(id, &RequestError::new(ErrorCode::Unauthorized, why))
}

/// Tells a client why it is refused, then closes.
async fn refuse(mut socket: Socket, error: String, code: u16, reason: &'static str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::text(error))).await;
    close_gracefully(socket, CloseReason::Code(code, reason)).await;
}

/// The frame that opens every served connection.
fn welcome(state: &WsState, session: &Session) -> Message {
    let welcome = ServerFrame::Welcome {
        client: session.id().into(),
        user: session.user().map(Into::into),
        version: switchboard_core::protocol::VERSION,
        server: concat!("switchboard/", env!("CARGO_PKG_VERSION")).into(),
        heartbeat_ms: state.config.heartbeat_interval.as_millis() as u64,
        expires_at: session.principal().expires_at,
    };
    Message::Text(welcome.to_frame())
}

/// A connection's publish limiter: the issuer's limits where it set them, else the
/// configured ones.
fn limiter(state: &WsState, principal: &Principal) -> PublishLimiter {
    let ws = &state.config;
    PublishLimiter::new(
        principal.limits.publish_rate.unwrap_or(ws.publish_rate),
        principal.limits.publish_burst.unwrap_or(ws.publish_burst),
        ws.rate_limit_strikes,
    )
}

/// A timer that fires when the identity expires, if it does.
fn expiry(principal: &Principal) -> Option<Pin<Box<tokio::time::Sleep>>> {
    principal
        .time_left()
        .map(|left| Box::pin(tokio::time::sleep(left)))
}

/// What woke the connection up.
enum Event {
    /// A frame from the peer.
    Incoming(Message),
    /// The peer closed, vanished, or sent something that ends the connection.
    PeerGone(Option<CloseReason>),
    /// Everything due is written and the outbox asks to close.
    Close(CloseReason),
    /// Nothing heard for too long.
    Dead,
    /// The token expired without a refresh.
    Expired,
    WriteFailed(tungstenite::Error),
}

struct Connection {
    socket: Socket,
    state: Arc<WsState>,
    session: Arc<Session>,
    /// Frames produced by this connection (welcome, replies, pings), not yet handed to
    /// the socket. Written first, and the only backlog that pauses reading.
    own: VecDeque<Message>,
    /// Bytes in `own`, held to `outbound_queue_bytes` like the outbox (one reply may
    /// pass it: replies are never dropped).
    own_bytes: usize,
    /// Frames taken from the outbox, in the order the Hub queued them, not yet handed to
    /// the socket. The outbox swaps its queue into this one when it is empty, so a
    /// batch reaches the writer without moving each frame again (a per-frame copy into
    /// a second queue was 3% of the daemon's CPU at 2M deliveries/s, perf).
    pushes: VecDeque<Outgoing>,
    /// Frames handed to the socket since the last flush.
    unflushed: bool,
    /// Set once the outbox asked to close; the close frame follows what is due.
    closing: Option<CloseReason>,
    heartbeat: Interval,
    heard: bool,
    silent_intervals: u32,
    limiter: PublishLimiter,
    /// Fires when the connection's token expires.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set when the connection decided to close: requests already sent are not served.
    stop_reading: bool,
    /// A subscription's retained values still being queued; no request is read until
    /// they all are.
    retained: Option<RetainedCursor>,
    /// Carried HTTP requests in progress; created by the first one, as most
    /// connections never carry any.
    carried: Option<FuturesUnordered<Pending>>,
    /// A publish waiting for the bus (`[cluster]`); nothing more is read until its
    /// reply is queued, without holding a thread meanwhile.
    publishing: Option<Pending>,
    /// Published frames taken from the outbox and not yet flushed: the oldest one's
    /// publish stamp and how many. Recorded in the latency histogram once flushed, so
    /// the clock is read once per batch, not per frame.
    unrecorded: Option<(u64, u64)>,
    /// When the last flush finished.
    last_flush: Option<std::time::Instant>,
    /// This wake-up's batch was put off once already.
    deferred: bool,
    /// permessage-deflate was negotiated: text frames go out compressed.
    compressed: bool,
    /// Compressed frames handed to the socket, not yet added to the shared counters.
    sent: Sent,
}

impl Connection {
    fn new(
        socket: Socket,
        state: Arc<WsState>,
        session: Arc<Session>,
        auth_reply: Option<Message>,
    ) -> Self {
        let every = state.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // After a stall, count the time that passed once, not as a burst of misses.
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let principal = session.principal();
        let own: VecDeque<Message> = auth_reply
            .into_iter()
            .chain([welcome(&state, &session)])
            .collect();
        Self {
            compressed: socket.get_ref().is_compressed(),
            socket,
            limiter: limiter(&state, &principal),
            expiry: expiry(&principal),
            stop_reading: false,
            retained: None,
            unrecorded: None,
            session,
            own_bytes: own.iter().map(own_len).sum(),
            own,
            pushes: VecDeque::new(),
            unflushed: false,
            closing: None,
            heartbeat,
            heard: false,
            silent_intervals: 0,
            carried: None,
            publishing: None,
            last_flush: None,
            deferred: false,
            sent: Sent::default(),
            state,
        }
    }

    /// Serves until the connection ends; returns the client id it ended with.
    async fn run(mut self) -> String {
        let close_with = loop {
            match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Incoming(message) => self.handle(message),
                Event::PeerGone(reason) => break reason,
                Event::Close(reason) => break Some(reason),
                Event::Dead => {
                    tracing::debug!(client = self.session.id(), "heartbeat timeout");
                    break Some(CloseReason::Code(
                        close::HEARTBEAT_TIMEOUT,
                        "heartbeat timeout",
                    ));
                }
                Event::Expired => {
                    tracing::debug!(client = self.session.id(), "token expired");
                    self.state.auth.rejections.count_expired_close();
                    break Some(CloseReason::Code(close::TOKEN_EXPIRED, "token expired"));
                }
                Event::WriteFailed(e) => {
                    tracing::debug!(client = self.session.id(), error = %e, "write failed");
                    break None;
                }
            }
        };
        // Done with the Hub: others see the leave now, not after the closing handshake.
        self.session
            .outbox
            .close(CloseReason::Code(close::GOING_AWAY, "connection closed"));
        self.state.hub.disconnect(&self.session);
        let client = self.session.id().to_owned();
        match close_with {
            // Boxed: this path runs once per connection, and its state would otherwise
            // sit in every idle connection's task.
            Some(reason) => Box::pin(close_gracefully(self.socket, reason)).await,
            // The peer closed: tungstenite has queued the closing reply; send it.
            None => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.flush()).await;
            }
        }
        client
    }

    fn handle(&mut self, message: Message) {
        self.heard = true;
        let reply = match message {
            Message::Text(text) => {
                let handled = dispatch::handle_text(
                    &self.state,
                    &self.session,
                    &mut self.limiter,
                    text.as_str(),
                );
                if let Some(reply) = handled.reply {
                    self.queue_own(Message::Text(Frame::from(reply)));
                }
                self.then(handled.then);
                self.retained = handled.retained;
                return;
            }
            Message::Binary(_) => ServerFrame::error(
                None,
                &RequestError::new(
                    ErrorCode::BinaryUnsupported,
                    "binary frames are not part of protocol v1; send JSON text frames",
                ),
            ),
            // Pongs are heard; pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => return,
        };
        self.queue_own(Message::Text(Frame::from(reply)));
    }

    /// Queues one of the connection's own frames (replies, notices, pings).
    fn queue_own(&mut self, message: Message) {
        self.own_bytes += own_len(&message);
        self.own.push_back(message);
    }

    /// Applies what a request changed about the connection itself.
    fn then(&mut self, then: Then) {
        match then {
            Then::Continue => {}
            Then::Identify(principal) => {
                // Nothing was done under the anonymous identity (dispatch checked), so
                // the connection simply starts again as the proven one.
                self.state.hub.disconnect(&self.session);
                self.session = self
                    .state
                    .hub
                    .connect_with(principal.clone(), self.compressed);
                self.limiter = limiter(&self.state, &principal);
                self.expiry = expiry(&principal);
                let welcome = welcome(&self.state, &self.session);
                self.queue_own(welcome);
                tracing::debug!(client = self.session.id(), kind = %principal.kind, "client authenticated");
            }
            Then::Refreshed(principal) => self.expiry = expiry(&principal),
            Then::Http(pending) => self
                .carried
                .get_or_insert_with(FuturesUnordered::new)
                .push(pending),
            Then::Publishing(pending) => self.publishing = Some(pending),
            Then::Close(reason) => {
                self.stop_reading = true;
                self.session.outbox.close(reason);
            }
        }
    }

    /// Makes all the progress it can; returns when something needs the caller.
    ///
    /// Frames are handed to the socket as soon as it takes them, but flushed only once
    /// nothing more is ready to read: a client pipelining requests gets its replies in
    /// a few large writes, not one `write` per reply.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            if let Some(event) = self.poll_outbox(cx) {
                return Poll::Ready(event);
            }
            let had_backlog = !self.pushes.is_empty();
            if let Err(e) = self.poll_hand_over(cx) {
                return Poll::Ready(Event::WriteFailed(e));
            }
            if had_backlog && self.pushes.is_empty() && self.closing.is_none() {
                // Room again: the outbox did not wake us for what it queued meanwhile.
                continue;
            }
            // Carried replies wait while the connection's own unwritten frames are over
            // the outbound byte limit: a client pipelining large GETs without reading
            // held 1.2 GB of them before they counted.
            let budget = self.state.config.outbound_queue_bytes.get();
            let room = self.own_bytes < budget;
            if let Some(carried) = self.carried.as_mut().filter(|_| room) {
                if let Poll::Ready(Some(reply)) = carried.poll_next_unpin(cx) {
                    // Replies are never dropped: over the limit, the rule below applies.
                    self.queue_own(Message::Text(reply));
                    continue;
                }
            }
            if let Some(publishing) = self.publishing.as_mut().filter(|_| room) {
                if let Poll::Ready(reply) = publishing.as_mut().poll(cx) {
                    self.publishing = None;
                    self.queue_own(Message::Text(reply));
                    continue;
                }
            }
            if let Some(expiry) = &mut self.expiry {
                if expiry.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Expired);
                }
            }
            if self.heartbeat.poll_tick(cx).is_ready() {
                if !std::mem::take(&mut self.heard) {
                    self.silent_intervals += 1;
                    if self.silent_intervals >= self.state.config.heartbeat_misses.get() {
                        return Poll::Ready(Event::Dead);
                    }
                } else {
                    self.silent_intervals = 0;
                }
                self.queue_own(Message::Ping(Bytes::new()));
                continue; // hand the ping over
            }
            // The socket took nothing more and the unwritten replies fill the limit: under
            // `close` that is a reader too slow, even when one reply larger than the limit
            // is all it holds (a second reply never comes once reading stops here).
            if self.own_bytes >= budget
                && !self.stop_reading
                && self.state.config.slow_consumer == SlowConsumerPolicy::Close
            {
                self.close_slow_reader();
                continue;
            }
            // A backlog of pushes does not stop reading: a slow subscriber's requests and
            // pongs are still heard. Only unwritten replies do.
            let carrying = self.carried.as_ref().map_or(0, FuturesUnordered::len);
            if self.own.len() < MAX_UNWRITTEN_REPLIES
                && self.own_bytes < budget
                && self.retained.is_none()
                && carrying < MAX_CARRIED_REQUESTS
                && self.publishing.is_none()
                && !self.stop_reading
            {
                match Pin::new(&mut self.socket).poll_next(cx) {
                    Poll::Ready(Some(Ok(Message::Close(_)))) | Poll::Ready(None) => {
                        return Poll::Ready(Event::PeerGone(None))
                    }
                    Poll::Ready(Some(Ok(message))) => return Poll::Ready(Event::Incoming(message)),
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(client = self.session.id(), error = %e, "read failed");
                        if matches!(e, tungstenite::Error::Capacity(_))
                            || matches!(DeflateError::of(&e), Some(DeflateError::TooBig { .. }))
                        {
                            self.state.instruments.count_ws_too_large();
                        }
                        return Poll::Ready(Event::PeerGone(close_for_read_error(&e)));
                    }
                    Poll::Pending => {}
                }
            }
            // Nothing more to read for now: flush what was handed over.
            if self.unflushed {
                match Pin::new(&mut self.socket).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        self.last_flush = Some(std::time::Instant::now());
                        if self.pushes.is_empty() {
                            self.record_latency();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::WriteFailed(e)),
                    Poll::Pending => {}
                }
            }
            if let Some(reason) = self.closing {
                if self.own.is_empty() && self.pushes.is_empty() && !self.unflushed {
                    return Poll::Ready(Event::Close(reason));
                }
            }
            if let Some(cursor) = &mut self.retained {
                // One step of a subscription's retained values per turn, then the other
                // tasks ready to run (see `hub::RetainedCursor`).
                if self.state.hub.send_retained_step(&self.session, cursor) {
                    self.retained = None;
                    continue;
                }
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
    }

    /// Takes the next batch from the outbox once the previous one is written.
    fn poll_outbox(&mut self, cx: &mut Context<'_>) -> Option<Event> {
        if self.closing.is_some() {
            return None;
        }
        let take = self.pushes.is_empty() && !self.defer_take(cx);
        let Poll::Ready(batch) = self.session.outbox.poll_batch(cx, take, &mut self.pushes) else {
            return None;
        };
        if batch.closed == Some(CloseReason::SlowConsumer) {
            static SLOW: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = SLOW.admit() {
                tracing::info!(
                    client = self.session.id(),
                    held_back,
                    "slow consumer: closing connection"
                );
            }
            return Some(Event::Close(CloseReason::SlowConsumer));
        }
        if let Some(stamp) = batch.oldest {
            let frames = self.pushes.len() as u64;
            self.unrecorded = Some(match self.unrecorded {
                Some((oldest, n)) => (oldest.min(stamp), n + frames),
                None => (stamp, frames),
            });
        }
        if batch.dropped > 0 {
            // The notice goes before the frames that survived the drops.
            // It is the connection's own frame (written first), not one of the batch.
            let notice = ServerFrame::Lagged {
                dropped: batch.dropped,
            };
            self.queue_own(Message::Text(notice.to_frame()));
        }
        self.closing = batch.closed;
        None
    }

    /// Puts off taking the outbox's batch once, behind the tasks already ready to run,
    /// when this connection is taking a stream (it flushed moments ago) and frames wait.
    ///
    /// Woken by a publish, a subscriber's task would otherwise run right after the
    /// publisher (tokio runs the task woken last first) and write that one frame. A
    /// dashboard fed by a thousand sensors then made one `send` per 4 frames, and the
    /// sends were a third of the core (profile in docs/benchmarks.md). Behind the other
    /// ready tasks, it finds what they published too and writes it in one `send`. A
    /// connection that has been quiet for a while writes at once.
    fn defer_take(&mut self, cx: &mut Context<'_>) -> bool {
        if std::mem::take(&mut self.deferred) {
            return false;
        }
        let streaming = self
            .last_flush
            .is_some_and(|at| at.elapsed() < STREAMING_WITHIN);
        if !streaming || self.session.outbox.depth() == 0 {
            return false;
        }
        self.deferred = true;
        cx.waker().wake_by_ref();
        true
    }

    /// Everything taken from the outbox is on the socket: each of those frames counts
    /// with the age of the oldest (an upper bound of its own).
    fn record_latency(&mut self) {
        if let Some((oldest, frames)) = self.unrecorded.take() {
            let age = switchboard_core::clock::now_us().saturating_sub(oldest);
            self.state.instruments.delivery_latency.record(age, frames);
        }
    }

    /// Hands unwritten frames to the socket, this connection's own first, which buffers
    /// them up to its write buffer size and writes when that fills.
    /// Stops reading and closes the connection as a slow consumer; its unwritten replies
    /// go first.
    fn close_slow_reader(&mut self) {
        self.stop_reading = true;
        self.session.outbox.close(CloseReason::SlowConsumer);
        self.state.hub.count_slow_close();
    }

    fn poll_hand_over(&mut self, cx: &mut Context<'_>) -> Result<(), tungstenite::Error> {
        // Frames taken from the outbox and handed over here (count, bytes): they stop
        // counting against the outbox's limits once they are the socket's.
        let mut released = (0, 0);
        let result = self.hand_over(cx, &mut released);
        if released.0 > 0 {
            self.session.outbox.release(released.0, released.1);
        }
        if self.compressed {
            self.state.deflate.record(&mut self.sent);
        }
        result
    }

    fn hand_over(
        &mut self,
        cx: &mut Context<'_>,
        released: &mut (usize, usize),
    ) -> Result<(), tungstenite::Error> {
        let mut socket = Pin::new(&mut self.socket);
        loop {
            if self.own.is_empty() && self.pushes.is_empty() {
                return Ok(());
            }
            match socket.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
            let next = match self.own.pop_front() {
                Some(own) => {
                    self.own_bytes = self.own_bytes.saturating_sub(own_len(&own));
                    Some(match own {
                        Message::Text(frame) if self.compressed => {
                            let packed = self.state.deflate.own(&frame, &mut self.sent);
                            packed.map_or(Message::Text(frame), compressed_message)
                        }
                        other => other,
                    })
                }
                None => self.pushes.pop_front().map(|item| {
                    released.0 += 1;
                    released.1 += item.frame().len();
                    match item {
                        Outgoing::Frame(frame) if self.compressed => {
                            let packed = self.state.deflate.own(&frame, &mut self.sent);
                            packed.map_or(Message::Text(frame), compressed_message)
                        }
                        Outgoing::Frame(frame) => Message::Text(frame),
                        // Shared with other subscribers: compressed by the first to send it.
                        Outgoing::Shared(shared) if self.compressed => {
                            match self.state.deflate.shared(&shared, &mut self.sent) {
                                Some(packed) => compressed_message(packed),
                                None => Message::Text(shared.frame().clone()),
                            }
                        }
                        Outgoing::Shared(shared) => Message::Text(shared.frame().clone()),
                    }
                }),
            };
            if let Some(message) = next {
                socket.as_mut().start_send(message)?;
                self.unflushed = true;
            }
        }
    }
}

fn compressed_message(payload: Bytes) -> Message {
    Message::Frame(compressed_text(payload))
}

/// What one of the connection's own frames holds, for its byte limit.
fn own_len(message: &Message) -> usize {
    message.len()
}

/// Which close code a read error deserves, if the peer can still be told.
fn close_for_read_error(e: &tungstenite::Error) -> Option<CloseReason> {
    match DeflateError::of(e) {
        Some(DeflateError::TooBig { .. }) => {
            return Some(CloseReason::Code(
                close::MESSAGE_TOO_BIG,
                "message too large",
            ))
        }
        Some(DeflateError::Invalid(_)) => {
            return Some(CloseReason::Code(1002, "invalid compressed frame"))
        }
        None => {}
    }
    match e {
        tungstenite::Error::Capacity(_) => {
            Some(CloseReason::Code(close::MESSAGE_TOO_BIG, "frame too large"))
        }
        tungstenite::Error::Protocol(_) => Some(CloseReason::Code(1002, "protocol error")),
        tungstenite::Error::Utf8(_) => Some(CloseReason::Code(1007, "text frame is not UTF-8")),
        _ => None,
    }
}

/// Sends the close frame, waits briefly for the peer's, then half-closes the socket and
/// reads what the peer still sends until it closes too. Dropping a socket with unread
/// input makes the kernel send a reset, which can destroy our close frame before the
/// peer reads it. Every step is bounded: a peer that reads nothing cannot hold us.
async fn close_gracefully(mut socket: Socket, reason: CloseReason) {
    let (code, why) = match reason {
        CloseReason::SlowConsumer => (close::SLOW_CONSUMER, "slow consumer"),
        CloseReason::Code(code, why) => (code, why),
    };
    let frame = CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(why),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    let mut io = socket.into_inner();
    if io.shutdown().await.is_err() {
        return;
    }
    let mut scratch = vec![0u8; 1024];
    let drain = async {
        while let Ok(n) = io.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}
