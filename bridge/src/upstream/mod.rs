//! A client link to another MQTT broker (an upstream cloud broker, or the site's own
//! broker in external mode), over our own MQTT 5 client session ([`client`]).
//!
//! [`session`] runs one connection: it connects, subscribes to the inbound filters with
//! `no_local` (so what we publish on a topic we also subscribe to is not sent back to us:
//! no loop, no duplicate), sends the [`Outbox`] from its head and hands incoming
//! messages to the [`Inbox`]. It returns when the connection ends; reconnecting and its
//! backoff are the caller's, which also owns the durable queue behind [`Outbox`] — this
//! crate knows nothing of where messages are stored.
//!
//! Every session opens a fresh connection and resends the outbox from its head, so what
//! was in flight when a connection broke goes again (at-least-once): an entry only
//! leaves the outbox when [`Outbox::done`] is called, on the broker's PUBACK for QoS 1,
//! or once written to the socket for QoS 0.

mod client;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How to reach and log in to the other broker.
#[derive(Clone)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    /// TLS client configuration (trusted CAs, optional client certificate); None for TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    pub keep_alive: Duration,
    /// Ask the broker to keep our session (subscriptions and queued QoS 1 messages)
    /// while we are away.
    pub persistent: bool,
    /// Filters to subscribe to, with their QoS.
    pub subscriptions: Vec<(String, u8)>,
    /// Publishes sent and not yet acknowledged, at most.
    pub window: usize,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for UpstreamConfig {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("username", &self.username)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A message waiting to go to the other broker.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its place in the outbox; increasing in send order.
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// The queue a link sends from, kept by the caller (durably, for store-and-forward).
pub trait Outbox: Send + Sync + 'static {
    /// Up to `max` entries after `after` (from the head when None), oldest first.
    fn after(&self, after: Option<u64>, max: usize) -> Result<Vec<Outgoing>, String>;
    /// The broker took entry `id` (PUBACK for QoS 1): it may leave the queue. `refused`
    /// when the broker acknowledged it with an error reason (sending it again would not
    /// help).
    fn done(&self, id: u64, refused: bool);
}

/// Where a link's incoming traffic goes.
pub trait Inbox: Send + Sync + 'static {
    /// The broker accepted our CONNECT.
    fn connected(&self);
    /// A message on one of our subscriptions. Must not block.
    fn message(&self, topic: &str, payload: &[u8], retain: bool);
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The broker answered CONNECT with a refusal (bad credentials, not authorized…).
    #[error("connection refused by the broker: {0}")]
    Refused(String),
    #[error("{0}")]
    Connection(String),
    #[error("outbox: {0}")]
    Outbox(String),
}

/// Runs one session until the connection ends (an error) or `stop` (Ok). `wake` is
/// notified (with `notify_one`) whenever the outbox grows.
///
/// The session runs on a runtime of its own, one worker thread named `bridge-link`:
/// under a backlog the link pauses between bursts with a blocking sleep (tokio's timers
/// count milliseconds), and that must not hold up the daemon's other connections. The
/// runtime is multi-threaded in flavour so that the inbox may wait the way a publish
/// does elsewhere (`block_in_place`, on a cluster's bus). Nothing the inbox or the
/// outbox calls may spawn tasks: they would end with the session's runtime.
pub async fn session(
    config: &UpstreamConfig,
    outbox: Arc<dyn Outbox>,
    inbox: Arc<dyn Inbox>,
    wake: Arc<Notify>,
    stop: &CancellationToken,
) -> Result<(), LinkError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bridge-link")
        .enable_all()
        .build()
        .map_err(|e| LinkError::Connection(format!("cannot start the link's thread: {e}")))?;
    // Dropping this future (the link's task aborted) stops the session too.
    let stop = stop.child_token();
    let _stop_on_drop = stop.clone().drop_guard();
    let config = config.clone();
    let run =
        async move { client::run(&config, outbox.as_ref(), inbox.as_ref(), &wake, &stop).await };
    let session = runtime.spawn(run);
    let _runtime = OwnRuntime(Some(runtime));
    session.await.unwrap_or_else(|e| {
        Err(LinkError::Connection(format!(
            "the link's session ended abnormally: {e}"
        )))
    })
}

/// A session's runtime, let go without waiting when the session ends: a runtime may not
/// be dropped (which waits for its threads) on another runtime's thread.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
