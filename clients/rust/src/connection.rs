//! The driver: the one task that owns a client's connection.
//!
//! It serves one connection at a time ([`Driver::serve`]): reads frames and hands
//! replies to whoever waits for them, messages to the local subscriptions, everything
//! else to the event channel; passes what the handles queue to the connection's writer
//! task, which flushes each burst at once. When the connection drops it fails the
//! requests in flight with `Disconnected`, honours the close code's advice, and
//! reconnects with full-jitter backoff, re-sending `sub` for every filter still held
//! locally.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, SEC_WEBSOCKET_EXTENSIONS};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::frame::{classify, Inbound, Outgoing};
use super::resume::{Positions, Resumed};
use super::subscription::{LocalSub, Registry};
use super::{lock, ClientError, ClientOptions, Event, Shared};
use switchboard_core::backoff::Backoff;
use switchboard_core::deflate::{self, Inflating};
use switchboard_core::protocol::{close, Incoming, Since};

/// A connection; with permessage-deflate, the server's compressed frames are inflated
/// below tungstenite (`switchboard_core::deflate`).
type Ws = WebSocketStream<Inflating<MaybeTlsStream<TcpStream>>>;
type Reply = oneshot::Sender<Result<Incoming, ClientError>>;
type Ack = oneshot::Sender<Result<(), ClientError>>;

/// Socket read chunk. tungstenite zero-fills its whole read buffer before every read;
/// at the default 128 KiB that memset dominated a fan-out test's CPU (with 4 KiB a plain
/// broadcast server went from 100% to 40% of a core at 1,000 connections).
const READ_BUFFER: usize = 4 * 1024;
/// Largest message accepted once inflated (tungstenite's own default limit).
const MAX_MESSAGE: usize = 64 << 20;
/// Requests shorter than this go uncompressed: deflate saves little on them.
const COMPRESS_FROM: usize = 256;
/// zlib level of compressed requests.
const COMPRESS_LEVEL: u32 = 6;
/// Frames handed to the writer task and not yet written.
const WRITE_QUEUE: usize = 256;
/// How long `close` waits for the server to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a handle asks the driver to do.
pub(super) enum Command {
    /// A request encoded by the caller; `reply` waits for the answer to its id.
    /// Without `reply` it is fire-and-forget.
    Request {
        text: String,
        reply: Option<(u64, Reply)>,
    },
    Subscribe {
        filter: String,
        key: u64,
        sub: LocalSub,
        since: Option<Since>,
        ack: Ack,
    },
    Unsubscribe {
        filter: String,
        key: u64,
        ack: Ack,
    },
    Close(oneshot::Sender<()>),
}

/// A dropped [`super::Subscription`].
pub(super) struct Release {
    pub filter: String,
    pub key: u64,
}

/// A request the server has not answered yet.
enum Pending {
    Reply(Reply),
    /// A `sub`. Without `key` it re-subscribes a whole filter after a reconnect.
    Sub {
        filter: String,
        key: Option<u64>,
        since: Option<Since>,
        ack: Option<Ack>,
    },
    Unsub(Option<Ack>),
}

/// The `welcome` that opens every connection.
pub(super) struct Welcome {
    pub client: String,
    /// How often the server pings; we expect to hear from it at least that often.
    pub heartbeat: Option<Duration>,
}

/// How a connection ended.
enum Ended {
    Lost {
        code: Option<u16>,
        reason: String,
    },
    /// By [`super::Client::close`] (with its reply) or because every handle is gone.
    Closed(Option<oneshot::Sender<()>>),
}

/// Opens a connection and reads its `welcome`, within the request timeout.
pub(super) async fn open(options: &ClientOptions) -> Result<(Ws, Welcome), ClientError> {
    let url = options.endpoint();
    let connect_error = |reason: String| ClientError::Connect {
        url: url.clone(),
        reason,
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| connect_error(e.to_string()))?;
    if let Some(token) = &options.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| connect_error("the token is not a valid header value".into()))?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    if options.compression {
        request.headers_mut().insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(deflate::CLIENT_OFFER),
        );
    }
    let tls = if url.starts_with("wss://") {
        Some(tls_config(options).map_err(|e| connect_error(e.to_string()))?)
    } else {
        None
    };
    let attempt = async {
        let stream = connect_stream(request.uri(), tls)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        // The inflater sits above TLS: it reads frames, not records.
        let stream = if options.compression {
            Inflating::client(stream, MAX_MESSAGE)
        } else {
            Inflating::plain(stream)
        };
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (mut ws, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| connect_error(e.to_string()))?;
        if options.compression {
            let answer = response.headers().get(SEC_WEBSOCKET_EXTENSIONS);
            deflate::client_accepts(answer.and_then(|v| v.to_str().ok()))
                .map_err(|why| connect_error(why.into()))?;
        }
        let welcome = read_welcome(&mut ws).await.map_err(|e| match e {
            closed @ ClientError::Closed { .. } => closed,
            other => connect_error(other.to_string()),
        })?;
        Ok((ws, welcome))
    };
    tokio::time::timeout(options.request_timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(connect_error(format!(
                "no welcome within {:?}",
                options.request_timeout
            )))
        })
}

/// The TCP connection to the request's host, inside TLS for `wss://`. Done here rather
/// than by tokio-tungstenite so that the inflater can sit between TLS and tungstenite.
async fn connect_stream(
    uri: &tungstenite::http::Uri,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<MaybeTlsStream<TcpStream>, ClientError> {
    let host = uri
        .host()
        .ok_or_else(|| ClientError::Protocol("the URL has no host".into()))?;
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    // Nagle off: we batch writes ourselves, and replies should not wait 40 ms.
    tcp.set_nodelay(true)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let Some(tls) = tls else {
        return Ok(MaybeTlsStream::Plain(tcp));
    };
    let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| ClientError::Protocol(format!("{host}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(MaybeTlsStream::Rustls(stream))
}

/// TLS for `wss://`: the system's roots, plus the configured CA.
fn tls_config(options: &ClientOptions) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped; a private CA may be all that is needed.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = &options.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                ClientError::Protocol(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
        roots.add_parsable_certificates(certs);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn read_welcome(ws: &mut Ws) -> Result<Welcome, ClientError> {
    // An `error` before the close says why the server refused the connection.
    let mut refusal: Option<String> = None;
    while let Some(message) = ws.next().await {
        let text = match message.map_err(|e| ClientError::Protocol(e.to_string()))? {
            WsMessage::Text(text) => text,
            WsMessage::Close(frame) => {
                let (code, reason) = describe_close(frame);
                let reason = refusal.map_or(reason.clone(), |why| format!("{reason}: {why}"));
                return Err(ClientError::Closed { code, reason });
            }
            _ => continue,
        };
        let frame: Incoming = serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("welcome is not valid JSON: {e}")))?;
        if frame.op == "error" {
            refusal = frame.message;
            continue;
        }
        return match (frame.op.as_str(), frame.client) {
            ("welcome", Some(client)) => Ok(Welcome {
                client,
                heartbeat: frame
                    .heartbeat_ms
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis),
            }),
            (op, _) => Err(ClientError::Protocol(format!(
                "expected `welcome` with a client id, got `{op}`"
            ))),
        };
    }
    Err(ClientError::Protocol(
        "connection closed before `welcome`".into(),
    ))
}

fn describe_close(frame: Option<CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
        None => (None, "closed without a code".into()),
    }
}

/// Whether a close code lets the client try again, and how soon.
fn advice(code: Option<u16>) -> close::Advice {
    code.map_or(close::Advice::ReconnectWithBackoff, close::advice)
}

pub(super) struct Driver {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    releases: mpsc::UnboundedReceiver<Release>,
    events: broadcast::Sender<Event>,
    registry: Registry,
    positions: Positions,
    pending: HashMap<u64, Pending>,
}

impl Driver {
    pub fn new(
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        releases: mpsc::UnboundedReceiver<Release>,
        events: broadcast::Sender<Event>,
    ) -> Self {
        Self {
            shared,
            commands,
            releases,
            events,
            registry: Registry::default(),
            positions: Positions::default(),
            pending: HashMap::new(),
        }
    }

    pub async fn run(mut self, mut ws: Ws, mut welcome: Welcome) {
        loop {
            let (code, reason) = match self.serve(ws, welcome.heartbeat).await {
                Ended::Lost { code, reason } => (code, reason),
                Ended::Closed(done) => {
                    let reason = "closed by the client".to_owned();
                    return self.finish(Some(1000), reason, done);
                }
            };
            self.fail_pending();
            let advice = advice(code);
            let reconnecting =
                self.shared.options.reconnect && advice != close::Advice::DoNotReconnect;
            tracing::info!(?code, reason, reconnecting, "connection lost");
            if !reconnecting {
                return self.finish(code, reason, None);
            }
            self.emit(Event::Disconnected {
                code,
                reason,
                reconnecting,
            });
            match self.reconnect(advice == close::Advice::ReconnectNow).await {
                Ok((new_ws, new_welcome)) => (ws, welcome) = (new_ws, new_welcome),
                Err(Ended::Closed(done)) => {
                    return self.finish(Some(1000), "closed by the client".into(), done)
                }
                Err(Ended::Lost { code, reason }) => return self.finish(code, reason, None),
            }
            *lock(&self.shared.client_id) = welcome.client.clone();
            tracing::info!(client = welcome.client, "reconnected");
            self.emit(Event::Connected {
                client_id: welcome.client.clone(),
            });
        }
    }

    /// Stops for good: records why before the queues close, so callers that find them
    /// closed can say why; ends every subscription stream and the event channel.
    fn finish(self, code: Option<u16>, reason: String, done: Option<oneshot::Sender<()>>) {
        *lock(&self.shared.closed) = Some(ClientError::Closed {
            code,
            reason: reason.clone(),
        });
        self.emit(Event::Disconnected {
            code,
            reason,
            reconnecting: false,
        });
        lock(&self.shared.events).take();
        // Dropping `self` now drops every waiting reply; the callers then read `closed`.
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn emit(&self, event: Event) {
        // No receiver is fine: nobody asked for events.
        let _ = self.events.send(event);
    }

    /// Serves one connection until it ends.
    ///
    /// A writer task owns the socket's write half, so that a write stalled on a full
    /// socket never stops us reading: the server stops reading our requests while its
    /// replies to us are unread, and one task doing both would then wait forever.
    async fn serve(&mut self, ws: Ws, heartbeat: Option<Duration>) -> Ended {
        let compressed = ws.get_ref().is_compressed();
        let (sink, mut stream) = ws.split();
        let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
        let mut writer = tokio::spawn(write_loop(sink, out_rx, compressed));
        let ended = self.pump(&mut stream, &out, &mut writer, heartbeat).await;
        if matches!(ended, Ended::Closed(_)) {
            // After everything queued before it; then the server's answer. Bounded: a
            // server that reads nothing must not hold `close` forever.
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let (writer, stream) = (&mut writer, &mut stream);
            let handshake = async move {
                let _ = out.send(WsMessage::Close(Some(frame))).await;
                drop(out);
                let _ = writer.await;
                while let Some(Ok(_)) = stream.next().await {}
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
        }
        writer.abort();
        ended
    }

    async fn pump(
        &mut self,
        stream: &mut SplitStream<Ws>,
        out: &mpsc::Sender<WsMessage>,
        writer: &mut JoinHandle<Result<(), tungstenite::Error>>,
        heartbeat: Option<Duration>,
    ) -> Ended {
        // A close frame's code, kept until the stream ends after the close handshake.
        let mut closed_with: Option<(Option<u16>, String)> = None;
        let lost = |closed_with: Option<(Option<u16>, String)>, reason: String| {
            let (code, reason) = closed_with.unwrap_or((None, reason));
            Ended::Lost { code, reason }
        };
        // Empty on the first connection; after a reconnect, every filter still held.
        if !self.resubscribe(out).await {
            return lost(None, "the connection failed while re-subscribing".into());
        }
        // The server pings every `heartbeat`; hearing nothing for 2.5 of them means the
        // path is dead even if TCP has not noticed.
        let deadline = heartbeat.map(|h| h * 5 / 2);
        let mut liveness = tokio::time::interval(heartbeat.unwrap_or(Duration::from_secs(60)));
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                message = stream.next() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(WsMessage::Text(text))) => self.on_text(&text),
                        Some(Ok(WsMessage::Close(frame))) => closed_with = Some(describe_close(frame)),
                        Some(Ok(WsMessage::Binary(_))) => {
                            tracing::debug!("ignoring a binary frame");
                        }
                        // Pings are answered by tungstenite itself while we poll.
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return lost(closed_with, e.to_string()),
                        None => return lost(closed_with, "connection closed".into()),
                    }
                }
                // Taken only while the writer has room: callers wait in the bounded
                // command queue, never in memory here.
                command = self.commands.recv(), if out.capacity() > 0 => {
                    let Some(command) = command else {
                        return Ended::Closed(None);
                    };
                    if let Some(done) = self.take_commands(command, out) {
                        return Ended::Closed(Some(done));
                    }
                }
                Some(Release { filter, key }) = self.releases.recv(), if out.capacity() > 0 => {
                    if self.registry.remove(&filter, key) {
                        self.positions.forget(&filter);
                        if let Some(text) = self.unsub_frame(filter, None) {
                            let _ = out.try_send(WsMessage::text(text));
                        }
                    }
                }
                written = &mut *writer => {
                    let reason = match written {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the writer stopped".into(),
                    };
                    return lost(closed_with, reason);
                }
                _ = liveness.tick(), if deadline.is_some() => {
                    if deadline.is_some_and(|d| last_heard.elapsed() > d) {
                        return lost(closed_with, "no heartbeat from the server".into());
                    }
                }
            }
        }
    }

    /// Hands `first`, and whatever else is queued while the writer has room, to the
    /// writer, so a burst of publishes goes out in one flush. Returns the reply channel
    /// of a `Close` command met on the way.
    fn take_commands(
        &mut self,
        first: Command,
        out: &mpsc::Sender<WsMessage>,
    ) -> Option<oneshot::Sender<()>> {
        let mut next = Some(first);
        while let Some(command) = next {
            if let Command::Close(done) = command {
                return Some(done);
            }
            if let Some(text) = self.prepare(command) {
                // Room was checked; a writer that died is noticed by the select loop,
                // and the request then fails with the rest of those in flight.
                let _ = out.try_send(WsMessage::text(text));
            }
            next = (out.capacity() > 0)
                .then(|| self.commands.try_recv().ok())
                .flatten();
        }
        None
    }

    /// Records what a command waits for and returns the frame to write, if any.
    fn prepare(&mut self, command: Command) -> Option<String> {
        match command {
            Command::Request { text, reply } => {
                if let Some((id, reply)) = reply {
                    self.pending.insert(id, Pending::Reply(reply));
                }
                Some(text)
            }
            // Registered before the server's ok, so that a drop in between still
            // counts it and a racing `unsub` of the same filter is not sent too early.
            Command::Subscribe {
                filter,
                key,
                sub,
                since,
                ack,
            } => {
                self.registry.insert(&filter, key, sub);
                self.sub_frame(filter, Some(key), since, Some(ack))
            }
            Command::Unsubscribe { filter, key, ack } => {
                if self.registry.remove(&filter, key) {
                    self.positions.forget(&filter);
                    self.unsub_frame(filter, Some(ack))
                } else {
                    // Other local subscriptions still need the filter.
                    let _ = ack.send(Ok(()));
                    None
                }
            }
            Command::Close(_) => None,
        }
    }

    fn sub_frame(
        &mut self,
        filter: String,
        key: Option<u64>,
        since: Option<Since>,
        ack: Option<Ack>,
    ) -> Option<String> {
        let id = self.shared.next_id();
        let frame = Outgoing::new("sub", Some(id))
            .topic(filter.as_str())
            .since(since.as_ref());
        let text = encode(frame)?;
        self.pending.insert(
            id,
            Pending::Sub {
                filter,
                key,
                since,
                ack,
            },
        );
        Some(text)
    }

    fn unsub_frame(&mut self, filter: String, ack: Option<Ack>) -> Option<String> {
        let id = self.shared.next_id();
        let text = encode(Outgoing::new("unsub", Some(id)).topic(filter))?;
        self.pending.insert(id, Pending::Unsub(ack));
        Some(text)
    }

    /// Sends `sub` for every filter held, asking for what was missed on topics with a
    /// history; false if the writer is gone.
    async fn resubscribe(&mut self, out: &mpsc::Sender<WsMessage>) -> bool {
        let filters: Vec<String> = self.registry.filters().map(str::to_owned).collect();
        for filter in filters {
            let since = self.positions.since(&filter);
            if let Some(text) = self.sub_frame(filter, None, since, None) {
                if out.send(WsMessage::text(text)).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    fn on_text(&mut self, text: &str) {
        let frame: Incoming = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a server frame that is not valid JSON");
                return;
            }
        };
        match classify(frame) {
            Inbound::Reply(id, result) => self.on_reply(id, result),
            Inbound::Msg(msg) => {
                if self.positions.admit(&msg) {
                    self.registry.dispatch(msg);
                }
            }
            Inbound::Event(event) => {
                if let Event::Unsubscribed { filters, .. } = &event {
                    for filter in filters {
                        self.end_filter(filter);
                    }
                }
                self.emit(event)
            }
            Inbound::Ignored => {}
        }
    }

    /// Ends every local subscription of a filter the server no longer holds.
    fn end_filter(&mut self, filter: &str) {
        self.registry.remove_filter(filter);
        self.positions.forget(filter);
    }

    fn on_reply(&mut self, id: u64, result: Result<Incoming, ClientError>) {
        let Some(pending) = self.pending.remove(&id) else {
            // The caller timed out long ago, or the id is not ours.
            tracing::debug!(id, "reply to no pending request");
            return;
        };
        match pending {
            Pending::Reply(tx) => {
                let _ = tx.send(result);
            }
            Pending::Sub {
                filter,
                key,
                since,
                ack,
            } => {
                if let Ok(reply) = &result {
                    let resumed = self.positions.on_subscribed(&filter, reply, since.as_ref());
                    if resumed == Resumed::Gap {
                        self.emit(Event::Gap {
                            topic: filter.clone(),
                        });
                    }
                }
                if let Err(e) = &result {
                    match key {
                        Some(key) => {
                            self.registry.remove(&filter, key);
                        }
                        None => {
                            tracing::warn!(filter, error = %e, "re-subscribing failed");
                            self.end_filter(&filter);
                            if let ClientError::Server { code, message } = e.clone() {
                                let message = format!("re-subscribing `{filter}`: {message}");
                                self.emit(Event::ServerError { code, message });
                            }
                        }
                    }
                }
                if let Some(ack) = ack {
                    let _ = ack.send(result.map(drop));
                }
            }
            Pending::Unsub(ack) => match ack {
                Some(ack) => {
                    let _ = ack.send(result.map(drop));
                }
                None => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "unsub of a dropped subscription failed");
                    }
                }
            },
        }
    }

    /// The connection is gone: nothing in flight will be answered.
    fn fail_pending(&mut self) {
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::Reply(tx) => {
                    let _ = tx.send(Err(ClientError::Disconnected));
                }
                // A caller still waiting gets an error and drops its subscription, so
                // it must not be re-subscribed.
                Pending::Sub {
                    filter,
                    key: Some(key),
                    ack,
                    ..
                } => {
                    self.registry.remove(&filter, key);
                    if let Some(ack) = ack {
                        let _ = ack.send(Err(ClientError::Disconnected));
                    }
                }
                // A re-subscription: sent again on the next connection.
                Pending::Sub { key: None, .. } => {}
                // The server forgot every subscription with the connection.
                Pending::Unsub(ack) => {
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(()));
                    }
                }
            }
        }
    }

    /// Tries to connect again until it works, the server says not to, or the client
    /// is closed. Meanwhile requests fail at once with `Disconnected`: waiting for a
    /// connection that may take minutes would only turn them into timeouts.
    async fn reconnect(&mut self, now: bool) -> Result<(Ws, Welcome), Ended> {
        let shared = self.shared.clone();
        let backoff = Backoff {
            min: shared.options.backoff_min,
            max: shared.options.backoff_max,
        };
        let mut attempt = 0u32;
        loop {
            let delay = if now && attempt == 0 {
                Duration::ZERO
            } else {
                backoff.delay(attempt)
            };
            tracing::debug!(attempt, ?delay, "reconnecting");
            let connecting = async {
                tokio::time::sleep(delay).await;
                open(&shared.options).await
            };
            tokio::pin!(connecting);
            loop {
                tokio::select! {
                    result = &mut connecting => match result {
                        Ok(connection) => return Ok(connection),
                        Err(ClientError::Closed { code, reason })
                            if advice(code) == close::Advice::DoNotReconnect =>
                        {
                            return Err(Ended::Lost { code, reason });
                        }
                        Err(e) => {
                            tracing::debug!(attempt, error = %e, "reconnect attempt failed");
                            attempt = attempt.saturating_add(1);
                            break;
                        }
                    },
                    command = self.commands.recv() => match command {
                        None => return Err(Ended::Closed(None)),
                        Some(Command::Close(done)) => return Err(Ended::Closed(Some(done))),
                        Some(command) => self.refuse(command),
                    },
                    Some(Release { filter, key }) = self.releases.recv() => {
                        // No `unsub`: the server forgot the connection's subscriptions.
                        self.registry.remove(&filter, key);
                    }
                }
            }
        }
    }

    fn refuse(&mut self, command: Command) {
        match command {
            Command::Request { reply, .. } => {
                if let Some((_, tx)) = reply {
                    let _ = tx.send(Err(ClientError::Disconnected));
                }
            }
            Command::Subscribe { ack, .. } => {
                let _ = ack.send(Err(ClientError::Disconnected));
            }
            Command::Unsubscribe { filter, key, ack } => {
                self.registry.remove(&filter, key);
                let _ = ack.send(Ok(()));
            }
            Command::Close(_) => {}
        }
    }
}

/// Encodes a frame the driver builds itself (only strings in it, so this cannot fail
/// in practice; if it did, the request is skipped with a log line).
fn encode(frame: Outgoing) -> Option<String> {
    frame
        .encode()
        .map_err(|e| tracing::error!(error = %e, op = frame.op, "could not encode a request"))
        .ok()
}

/// Writes what the driver hands over, flushing once per burst.
async fn write_loop(
    mut sink: SplitSink<Ws, WsMessage>,
    mut frames: mpsc::Receiver<WsMessage>,
    compressed: bool,
) -> Result<(), tungstenite::Error> {
    let wire = |frame| match frame {
        WsMessage::Text(text) if compressed && text.len() >= COMPRESS_FROM => {
            match deflate::compress(text.as_bytes(), COMPRESS_LEVEL) {
                Some(packed) => WsMessage::Frame(deflate::compressed_text(packed)),
                None => WsMessage::Text(text),
            }
        }
        other => other,
    };
    while let Some(frame) = frames.recv().await {
        sink.feed(wire(frame)).await?;
        while let Ok(frame) = frames.try_recv() {
            sink.feed(wire(frame)).await?;
        }
        sink.flush().await?;
    }
    Ok(())
}
