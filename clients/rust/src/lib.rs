//! The Rust client for a running switchboard daemon (protocol v1, docs/protocol.md).
//!
//! A [`Client`] is a cheap, cloneable handle. One background task, the driver in
//! `connection.rs`, owns the socket: it writes requests, matches replies to the ids the
//! handles assign, routes `msg` pushes to local [`Subscription`]s, answers the server's
//! pings and, when the connection drops, reconnects with jittered backoff and
//! re-subscribes every active filter. Handles never touch the socket, so any number of
//! tasks can share one client and keep many requests in flight. The connection stays
//! open while any handle or subscription exists, or until [`Client::close`].
//!
//! It owns no wire format of its own: frames are `switchboard_core::protocol`'s, topic matching is
//! `switchboard_core::topic`'s.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::ClientError> {
//! use futures_util::StreamExt;
//! use switchboard_client::Client;
//!
//! let client = Client::connect("ws://127.0.0.1:8700/ws").await?;
//! let mut temps = client.subscribe("weather/+/temperature").await?;
//! client.publish("weather/kitchen/temperature", &21.5).await?;
//! while let Some(msg) = temps.next().await {
//!     println!("{} {}", msg.topic, msg.data);
//! }
//! # Ok(()) }
//! ```

mod connection;
#[cfg(feature = "e2e")]
pub mod e2e;
mod frame;
mod resume;
mod subscription;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use connection::{Command, Release};
use frame::{to_raw, Outgoing};
use subscription::LocalSub;
pub use switchboard_core::protocol::Since;
use switchboard_core::protocol::{Incoming, OwnedMember};

pub use frame::{DirectMessage, Event, Message};
pub use subscription::Subscription;

/// The daemon's default WebSocket endpoint.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8700/ws";

/// Commands queued for the driver before callers wait for room: enough to pipeline a
/// burst of publishes, small enough that a stalled socket pushes back on them.
const COMMAND_QUEUE: usize = 1024;
/// Events kept for a slow [`Client::events`] reader before it sees `Lagged`.
const EVENT_QUEUE: usize = 1024;

/// How to connect. Build with [`ClientOptions::new`] (or from a URL string) and adjust
/// the public fields.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://host:port/ws`.
    pub url: String,
    /// Sent as `?user=`: the name an anonymous client gives itself.
    pub user: Option<String>,
    /// A credential (JWT, API key or admin token), sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// A PEM CA certificate trusted for `wss://` besides the system roots (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// Reconnect after the connection drops (not after the first connect fails).
    pub reconnect: bool,
    /// Bounds of the exponential reconnect delay; each delay is drawn in `0..=bound`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a request (and a connection attempt) may wait for the server.
    pub request_timeout: Duration,
    /// Messages buffered per [`Subscription`] before new ones are dropped.
    pub subscription_buffer: usize,
    /// Offer permessage-deflate: fewer bytes on a metered link for some CPU. Used only
    /// if the server accepts (switchboard's `ws.compression`).
    pub compression: bool,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            user: None,
            token: None,
            ca_file: None,
            reconnect: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            subscription_buffer: 1024,
            compression: false,
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    pub fn compression(mut self, compression: bool) -> Self {
        self.compression = compression;
        self
    }

    /// The URL with `user` added to its query.
    fn endpoint(&self) -> String {
        let Some(user) = &self.user else {
            return self.url.clone();
        };
        let mut url = self.url.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("user=");
        for b in user.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                url.push(char::from(b));
            } else {
                let _ = write!(url, "%{b:02X}");
            }
        }
        url
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self::new(DEFAULT_URL)
    }
}

impl From<&str> for ClientOptions {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for ClientOptions {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an `error` frame; `code` is stable (protocol::ErrorCode).
    #[error("server error `{code}`: {message}")]
    Server { code: String, message: String },
    #[error("could not connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The connection dropped before the reply came; the request may or may not have
    /// been applied. The client is reconnecting.
    #[error("disconnected from the server before the reply arrived")]
    Disconnected,
    #[error("no reply from the server within {0:?}")]
    Timeout(Duration),
    /// The client stopped for good: closed by [`Client::close`], or by the server with a
    /// do-not-reconnect code, or the connection dropped with reconnect off.
    #[error("the client is closed: {reason}{}", code.map(|c| format!(" (close code {c})")).unwrap_or_default())]
    Closed { code: Option<u16>, reason: String },
    /// The request could not be encoded (data that is not JSON-serialisable).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The server's reply lacked what its op promises.
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, for [`ClientError::Server`].
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for ClientError {
    fn from(e: serde_json::Error) -> Self {
        ClientError::InvalidRequest(e.to_string())
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// State shared by the handles and the driver.
struct Shared {
    options: ClientOptions,
    /// Request ids and subscription keys: unique per client is all they need to be.
    next_id: AtomicU64,
    /// The id from the latest `welcome`.
    client_id: Mutex<String>,
    /// Set once the driver has stopped, before its queues close, so late callers learn why.
    closed: Mutex<Option<ClientError>>,
    /// Taken by the driver when it stops, so event receivers see the channel close.
    events: Mutex<Option<broadcast::Sender<Event>>>,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A handle to one connection (and its reconnections). Clone it freely.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    /// Unbounded so that `Subscription::drop`, which cannot wait, never loses a release.
    releases: mpsc::UnboundedSender<Release>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.shared.options.url)
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and waits for the server's `welcome`. A first connection that fails is
    /// an error, not retried: reconnecting is for connections that worked once.
    pub async fn connect(options: impl Into<ClientOptions>) -> Result<Client> {
        let options = options.into();
        let (ws, welcome) = connection::open(&options).await?;
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (releases, releases_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            options,
            next_id: AtomicU64::new(1),
            client_id: Mutex::new(welcome.client.clone()),
            closed: Mutex::new(None),
            events: Mutex::new(Some(events.clone())),
        });
        tracing::debug!(client = welcome.client, "connected");
        let driver = connection::Driver::new(shared.clone(), commands_rx, releases_rx, events);
        tokio::spawn(driver.run(ws, welcome));
        Ok(Client {
            commands,
            releases,
            shared,
        })
    }

    /// The server-assigned id of the current connection (it changes on reconnect;
    /// while reconnecting it is the previous one).
    pub fn id(&self) -> String {
        lock(&self.shared.client_id).clone()
    }

    /// Why the client stopped, once it has.
    pub fn closed_reason(&self) -> Option<ClientError> {
        lock(&self.shared.closed).clone()
    }

    /// Direct messages, presence, lag notices and connection changes from now on.
    /// Every receiver gets every event; one that falls more than 1024 events behind
    /// gets `RecvError::Lagged`. The channel closes when the client stops for good.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        match &*lock(&self.shared.events) {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Subscribes to a filter (MQTT syntax) and waits for the server's ok. On a topic
    /// with a history the client follows its position and, after a reconnect, gets
    /// what it missed (see [`Event::Gap`]).
    pub async fn subscribe(&self, filter: impl Into<String>) -> Result<Subscription> {
        self.subscribe_since(filter, None).await
    }

    /// Subscribes to a topic with a history, first receiving the messages `since`
    /// asks for (`Since::Last(n)`, or everything after a number of an epoch).
    pub async fn subscribe_since(
        &self,
        filter: impl Into<String>,
        since: Option<Since>,
    ) -> Result<Subscription> {
        let filter = filter.into();
        let (tx, rx) = mpsc::channel(self.shared.options.subscription_buffer.max(1));
        let dropped = Arc::default();
        let key = self.shared.next_id();
        // Built before asking, so that if we stop waiting its drop cleans up.
        let subscription = Subscription {
            filter: filter.clone(),
            key,
            rx,
            dropped: Arc::clone(&dropped),
            client: self.clone(),
            active: true,
        };
        let (ack, done) = oneshot::channel();
        let sub = LocalSub { tx, dropped };
        self.command(Command::Subscribe {
            filter,
            key,
            sub,
            since,
            ack,
        })
        .await?;
        self.wait(done).await?;
        Ok(subscription)
    }

    async fn unsubscribe(&self, filter: String, key: u64) -> Result<()> {
        let (ack, done) = oneshot::channel();
        self.command(Command::Unsubscribe { filter, key, ack })
            .await?;
        self.wait(done).await
    }

    /// For `Subscription::drop`, which cannot wait.
    fn release(&self, filter: String, key: u64) {
        // Fails only when the driver is gone, and then there is nothing to release.
        let _ = self.releases.send(Release { filter, key });
    }

    /// Publishes and waits for the server's acknowledgement; returns the message's
    /// sequence number on its topic.
    pub async fn publish<T: Serialize + ?Sized>(&self, topic: &str, data: &T) -> Result<u64> {
        self.publish_frame(topic, None, data).await
    }

    /// Like [`Client::publish`], with an event name subscribers can dispatch on.
    pub async fn publish_event<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        event: &str,
        data: &T,
    ) -> Result<u64> {
        self.publish_frame(topic, Some(event), data).await
    }

    async fn publish_frame<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        event: Option<&str>,
        data: &T,
    ) -> Result<u64> {
        let id = self.shared.next_id();
        let reply = self
            .call(id, pub_frame(Some(id), topic, event, data)?)
            .await?;
        reply
            .seq
            .ok_or_else(|| ClientError::Protocol("`ok` to `pub` without `seq`".into()))
    }

    /// Publishes without waiting for the acknowledgement (it waits only for room in
    /// the send queue). A failure shows up later as [`Event::ServerError`].
    pub async fn publish_nowait<T: Serialize + ?Sized>(&self, topic: &str, data: &T) -> Result<()> {
        let text = pub_frame(None, topic, None, data)?.encode()?;
        self.command(Command::Request { text, reply: None }).await
    }

    /// A direct message to one connection; returns how many received it (1).
    pub async fn send_to_client<T: Serialize + ?Sized>(
        &self,
        client: &str,
        event: Option<&str>,
        data: &T,
    ) -> Result<usize> {
        self.send_direct(|f| f.client = Some(client.into()), event, data)
            .await
    }

    /// A direct message to every connection of a user except this one; returns how
    /// many received it. No recipient is the error `no_recipient`.
    pub async fn send_to_user<T: Serialize + ?Sized>(
        &self,
        user: &str,
        event: Option<&str>,
        data: &T,
    ) -> Result<usize> {
        self.send_direct(|f| f.user = Some(user.into()), event, data)
            .await
    }

    async fn send_direct<T: Serialize + ?Sized>(
        &self,
        to: impl FnOnce(&mut Outgoing),
        event: Option<&str>,
        data: &T,
    ) -> Result<usize> {
        let id = self.shared.next_id();
        let mut frame = Outgoing::new("send", Some(id));
        to(&mut frame);
        frame.event = event.map(Into::into);
        frame.data = Some(to_raw(data)?);
        let reply = self.call(id, frame).await?;
        reply
            .delivered
            .ok_or_else(|| ClientError::Protocol("`ok` to `send` without `delivered`".into()))
    }

    /// Who is on a presence-enabled topic.
    pub async fn presence(&self, topic: &str) -> Result<Vec<OwnedMember>> {
        let id = self.shared.next_id();
        let reply = self
            .call(id, Outgoing::new("presence", Some(id)).topic(topic))
            .await?;
        reply
            .members
            .ok_or_else(|| ClientError::Protocol("`ok` to `presence` without `members`".into()))
    }

    /// Sets the JSON object others see for this connection in presence.
    pub async fn set_info<T: Serialize + ?Sized>(&self, info: &T) -> Result<()> {
        let id = self.shared.next_id();
        let mut frame = Outgoing::new("info", Some(id));
        frame.info = Some(to_raw(info)?);
        self.call(id, frame).await.map(drop)
    }

    /// One round trip to the server.
    pub async fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        let id = self.shared.next_id();
        self.call(id, Outgoing::new("ping", Some(id))).await?;
        Ok(start.elapsed())
    }

    /// Sends any request object (its `id`, if any, is replaced by one the client
    /// assigns) and returns the `ok` frame (the `http` frame, with `status` and `body`,
    /// for a carried API call); an `error` frame is [`ClientError::Server`].
    /// For ops this client has no method for.
    pub async fn request(&self, request: serde_json::Value) -> Result<Incoming> {
        let serde_json::Value::Object(mut fields) = request else {
            return Err(ClientError::InvalidRequest(
                "a request must be a JSON object".into(),
            ));
        };
        let id = self.shared.next_id();
        fields.insert("id".into(), id.into());
        let text = serde_json::to_string(&fields)?;
        self.call_text(id, text).await
    }

    /// Closes the connection (close code 1000) and stops the client. Every handle and
    /// subscription then fails or ends with [`ClientError::Closed`].
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }

    async fn call(&self, id: u64, frame: Outgoing) -> Result<Incoming> {
        self.call_text(id, frame.encode()?).await
    }

    async fn call_text(&self, id: u64, text: String) -> Result<Incoming> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Request {
            text,
            reply: Some((id, tx)),
        })
        .await?;
        self.wait(rx).await
    }

    async fn command(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| self.stopped())
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        let timeout = self.shared.options.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            // The driver dropped the request: it stopped.
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    fn stopped(&self) -> ClientError {
        self.closed_reason().unwrap_or_else(|| ClientError::Closed {
            code: None,
            reason: "the client stopped".into(),
        })
    }
}

fn pub_frame<T: Serialize + ?Sized>(
    id: Option<u64>,
    topic: &str,
    event: Option<&str>,
    data: &T,
) -> Result<Outgoing> {
    let mut frame = Outgoing::new("pub", id).topic(topic);
    frame.event = event.map(Into::into);
    frame.data = Some(to_raw(data)?);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_adds_an_escaped_user() {
        let plain = ClientOptions::new("ws://h/ws");
        assert_eq!(plain.endpoint(), "ws://h/ws");
        assert_eq!(plain.clone().user("ann").endpoint(), "ws://h/ws?user=ann");
        assert_eq!(
            ClientOptions::new("ws://h/ws?x=1")
                .user("a b&c/é")
                .endpoint(),
            "ws://h/ws?x=1&user=a%20b%26c%2F%C3%A9"
        );
    }

    #[test]
    fn errors_read_well() {
        let closed = ClientError::Closed {
            code: Some(4000),
            reason: "bad token".into(),
        };
        assert_eq!(
            closed.to_string(),
            "the client is closed: bad token (close code 4000)"
        );
        let server = ClientError::Server {
            code: "forbidden".into(),
            message: "no".into(),
        };
        assert_eq!(server.code(), Some("forbidden"));
        assert_eq!(server.to_string(), "server error `forbidden`: no");
    }
}
