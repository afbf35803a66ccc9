//! One WebSocket connection: a reader that turns frames into Hub calls, and a writer
//! that drains the session's outbox onto the socket.
//!
//! Two tasks, because a writer blocked on a peer that reads nothing must not stop us
//! from reading (and noticing that peer is dead), and a reader waiting for input must
//! not delay fan-out. The writer takes everything queued in one batch and flushes once:
//! at high fan-out that is one `write` syscall for many frames.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::dispatch;
use crate::hub::outbox::{Batch, CloseReason};
use crate::hub::Session;
use crate::protocol::{close, ErrorCode, Frame, RequestError, ServerFrame};
use crate::server::App;

/// How long we wait for a peer to answer our close frame before dropping it.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// An upgraded connection.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;
type Sink = SplitSink<Socket, Message>;

/// Serves one upgraded connection until it ends.
pub async fn serve(socket: Socket, app: Arc<App>, user: Option<String>) {
    let session = app.hub.connect(user);
    let _tracked = app.tracker.token();
    tracing::debug!(
        client = session.id(),
        user = session.user(),
        "client connected"
    );
    if app.shutdown.is_cancelled() {
        // Accepted just as shutdown began: say so instead of leaving it half-served.
        session
            .outbox
            .close(CloseReason::Code(close::GOING_AWAY, "server shutting down"));
    }

    let heartbeat = app.config.ws.heartbeat_interval;
    let welcome = ServerFrame::Welcome {
        client: session.id().into(),
        user: session.user().map(Into::into),
        version: crate::protocol::VERSION,
        server: concat!("switchboard/", env!("CARGO_PKG_VERSION")).into(),
        heartbeat_ms: heartbeat.as_millis() as u64,
    };
    session.outbox.push_reply(welcome.to_frame()).await;

    let (sink, mut stream) = socket.split();
    // `reader_done`: the peer closed, vanished or broke the protocol. `writer_done`: the
    // writer gave up (write error, slow consumer). Each side stops when the other does.
    let reader_done = CancellationToken::new();
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn(write_loop(
        sink,
        session.clone(),
        heartbeat,
        reader_done.clone(),
        writer_done.clone(),
    ));
    read_loop(&mut stream, &app, &session, &writer_done).await;
    reader_done.cancel();
    match writer.await {
        Ok(sink) => {
            if let Ok(socket) = stream.reunite(sink) {
                // Boxed: its buffer would otherwise sit in every idle connection's task.
                Box::pin(linger(socket)).await;
            }
        }
        Err(e) => tracing::warn!(client = session.id(), error = %e, "connection writer failed"),
    }
    app.hub.disconnect(&session);
    tracing::debug!(client = session.id(), "client disconnected");
}

async fn read_loop(
    stream: &mut SplitStream<Socket>,
    app: &App,
    session: &Arc<Session>,
    writer_done: &CancellationToken,
) {
    let heartbeat = app.config.ws.heartbeat_interval;
    let misses = app.config.ws.heartbeat_misses.get();
    let dead_after = heartbeat * misses;
    // Liveness by counting heartbeat intervals in which nothing arrived: a flag per
    // frame instead of a clock read per frame.
    let mut liveness = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut heard = false;
    let mut silent_intervals = 0;
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = liveness.tick() => {
                if std::mem::take(&mut heard) {
                    silent_intervals = 0;
                } else {
                    silent_intervals += 1;
                    if silent_intervals >= misses {
                        tracing::debug!(client = session.id(), "heartbeat timeout");
                        session.outbox.close(CloseReason::Code(close::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
                        return;
                    }
                }
                continue;
            }
            _ = writer_done.cancelled() => return,
        };
        let message = match frame {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(client = session.id(), error = %e, "read failed");
                // The writer still tells the peer why, when there is a code for it.
                session
                    .outbox
                    .close(close_for_read_error(&e).unwrap_or(CloseReason::Finished));
                return;
            }
            None => {
                session.outbox.close(CloseReason::Finished);
                return;
            }
        };
        heard = true;
        let reply = match message {
            Message::Text(text) => dispatch::handle_text(&app.hub, session, text.as_str()),
            Message::Binary(_) => ServerFrame::error(
                None,
                &RequestError::new(
                    ErrorCode::BinaryUnsupported,
                    "binary frames are not part of protocol v1; send JSON text frames",
                ),
            ),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => {
                session.outbox.close(CloseReason::Finished);
                return;
            }
        };
        // Replies wait while many are unread: backpressure on a pipelining client. A peer
        // that reads nothing for as long as a dead one would is treated as dead.
        let reply = match session.outbox.try_push_reply(Frame::from(reply)) {
            Ok(true) => continue,
            Ok(false) => return,
            Err(reply) => reply,
        };
        match tokio::time::timeout(dead_after, session.outbox.push_reply(reply)).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                tracing::debug!(client = session.id(), "peer stopped reading its replies");
                session
                    .outbox
                    .close(CloseReason::Code(close::HEARTBEAT_TIMEOUT, "not reading"));
                return;
            }
        }
    }
}

/// Which close code a read error deserves, if the peer can still be told.
fn close_for_read_error(e: &tungstenite::Error) -> Option<CloseReason> {
    match e {
        tungstenite::Error::Capacity(_) => {
            Some(CloseReason::Code(close::MESSAGE_TOO_BIG, "frame too large"))
        }
        tungstenite::Error::Protocol(_) => Some(CloseReason::Code(1002, "protocol error")),
        tungstenite::Error::Utf8(_) => Some(CloseReason::Code(1007, "text frame is not UTF-8")),
        _ => None,
    }
}

async fn write_loop(
    mut sink: Sink,
    session: Arc<Session>,
    heartbeat: Duration,
    reader_done: CancellationToken,
    writer_done: CancellationToken,
) -> Sink {
    let mut queued = VecDeque::new();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        let batch = tokio::select! {
            batch = session.outbox.next_batch(&mut queued) => batch,
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let closing = batch.closed;
        tokio::select! {
            written = write_batch(&mut sink, batch, &mut queued) => {
                if let Err(e) = written {
                    tracing::debug!(client = session.id(), error = %e, "write failed");
                    break;
                }
            }
            _ = session.outbox.overflowed() => {
                tracing::info!(client = session.id(), "slow consumer: closing connection");
                close_with(&mut sink, close::SLOW_CONSUMER, "slow consumer").await;
                break;
            }
            // The peer is gone or broke the protocol: stop writing what it will never
            // read, but still try to send the close frame below.
            _ = reader_done.cancelled() => queued.clear(),
        }
        match closing {
            None if !reader_done.is_cancelled() => {}
            None | Some(CloseReason::Finished) => break,
            Some(CloseReason::SlowConsumer) => {
                close_with(&mut sink, close::SLOW_CONSUMER, "slow consumer").await;
                break;
            }
            Some(CloseReason::Code(code, reason)) => {
                close_with(&mut sink, code, reason).await;
                // Give the reader a moment to see the peer's closing reply.
                let _ =
                    tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, reader_done.cancelled()).await;
                break;
            }
        }
    }
    // Wakes a reader waiting for reply room, and refuses further frames.
    session.outbox.close(CloseReason::Finished);
    writer_done.cancel();
    sink
}

async fn write_batch(
    sink: &mut Sink,
    batch: Batch,
    queued: &mut VecDeque<Frame>,
) -> Result<(), tungstenite::Error> {
    if batch.dropped > 0 {
        let notice = ServerFrame::Lagged {
            dropped: batch.dropped,
        }
        .encode();
        sink.feed(Message::Text(notice.into())).await?;
    }
    for frame in queued.drain(..) {
        sink.feed(Message::Text(frame)).await?;
    }
    sink.flush().await
}

async fn close_with(sink: &mut Sink, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    };
    // Bounded: a peer that reads nothing would otherwise hold us here forever.
    let _ = tokio::time::timeout(
        CLOSE_HANDSHAKE_TIMEOUT,
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}

/// Half-closes the socket and reads what the peer still sends until it closes too (or
/// a short deadline passes). Closing with unread input would make the kernel send a
/// reset, which can destroy our close frame before the peer reads it.
async fn linger(socket: Socket) {
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
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
}
