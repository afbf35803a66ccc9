//! A client link to another MQTT broker (an upstream cloud broker, or the site's own
//! broker in external mode), over rumqttc's MQTT 5 client.
//!
//! [`session`] runs one connection: it connects, subscribes to the inbound filters with
//! `no_local` (so what we publish on a topic we also subscribe to is not sent back to us:
//! no loop, no duplicate), sends the [`Outbox`] from its head and hands incoming
//! messages to the [`Inbox`]. It returns when the connection ends; reconnecting and its
//! backoff are the caller's, which also owns the durable queue behind [`Outbox`] — this
//! crate knows nothing of where messages are stored.
//!
//! Every session starts a fresh rumqttc event loop and resends the outbox from its
//! head, so what was in flight when a connection broke goes again (at-least-once): an
//! entry only leaves the outbox when [`Outbox::done`] is called, on the broker's PUBACK
//! for QoS 1, or once written to the socket for QoS 0. PUBACKs are matched to entries by
//! packet id, recorded as rumqttc reports each publish going out (in request order).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Filter, Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use rumqttc::{Outgoing as Sent, TlsConfiguration, Transport};
use tokio::sync::{Notify, Semaphore};
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
pub async fn session(
    config: &UpstreamConfig,
    outbox: Arc<dyn Outbox>,
    inbox: &dyn Inbox,
    wake: Arc<Notify>,
    stop: &CancellationToken,
) -> Result<(), LinkError> {
    let window = config.window.max(1);
    let (client, mut events) = AsyncClient::new(options(config), window + 16);
    let shared = Arc::new(InFlight {
        sent: Mutex::new(VecDeque::new()),
        permits: Semaphore::new(window),
    });
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    let session_over = CancellationToken::new();
    let _stop_feeder = session_over.clone().drop_guard();
    let mut feeder: Option<tokio::task::JoinHandle<Result<(), LinkError>>> = None;
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            _ = stop.cancelled() => {
                let _ = client.try_disconnect();
                return Ok(());
            }
            Some(ended) = wait(&mut feeder) => {
                return match ended {
                    Ok(Err(e)) => Err(e),
                    _ => Err(LinkError::Connection("the sending task stopped".into())),
                };
            }
        };
        match event.map_err(classify)? {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    return Err(LinkError::Refused(format!("{:?}", ack.code)));
                }
                let filters: Vec<Filter> = config
                    .subscriptions
                    .iter()
                    .map(|(f, q)| {
                        let mut filter = Filter::new(f.clone(), qos(*q));
                        filter.nolocal = true;
                        filter.preserve_retain = true;
                        filter
                    })
                    .collect();
                if !filters.is_empty() {
                    client
                        .subscribe_many(filters)
                        .await
                        .map_err(|e| LinkError::Connection(e.to_string()))?;
                }
                inbox.connected();
                feeder = Some(tokio::spawn(feed(
                    client.clone(),
                    outbox.clone(),
                    shared.clone(),
                    wake.clone(),
                    session_over.clone(),
                )));
            }
            Event::Incoming(Packet::Publish(p)) => match std::str::from_utf8(&p.topic) {
                Ok(topic) => inbox.message(topic, &p.payload, p.retain),
                Err(_) => {
                    tracing::warn!("message with a non-UTF-8 topic from the other broker ignored")
                }
            },
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(id) = by_pkid.remove(&ack.pkid) {
                    let refused = !matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    );
                    outbox.done(id, refused);
                    shared.permits.add_permits(1);
                }
            }
            Event::Outgoing(Sent::Publish(pkid)) => {
                let id = lock(&shared.sent).pop_front();
                if let Some(id) = id {
                    if pkid == 0 {
                        outbox.done(id, false);
                        shared.permits.add_permits(1);
                    } else {
                        by_pkid.insert(pkid, id);
                    }
                }
            }
            _ => {}
        }
    }
}

async fn wait<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Option<Result<T, tokio::task::JoinError>> {
    match task {
        Some(t) => Some(t.await),
        None => std::future::pending().await,
    }
}

/// What the sending task and the event loop share.
struct InFlight {
    /// Entries handed to rumqttc, not yet reported as written.
    sent: Mutex<VecDeque<u64>>,
    /// One permit per entry that may still be sent before an acknowledgement.
    permits: Semaphore,
}

/// Sends the outbox in order, at most `window` unacknowledged, until the session ends.
/// A task of its own because rumqttc's `poll` must not be cancelled mid-write.
async fn feed(
    client: AsyncClient,
    outbox: Arc<dyn Outbox>,
    shared: Arc<InFlight>,
    wake: Arc<Notify>,
    over: CancellationToken,
) -> Result<(), LinkError> {
    let mut cursor = None;
    loop {
        let free = tokio::select! {
            permit = shared.permits.acquire() => match permit {
                Ok(p) => { drop(p); shared.permits.available_permits().max(1) }
                Err(_) => return Ok(()),
            },
            _ = over.cancelled() => return Ok(()),
        };
        let batch = outbox.after(cursor, free).map_err(LinkError::Outbox)?;
        if batch.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = over.cancelled() => return Ok(()),
            }
            continue;
        }
        for m in batch {
            match shared.permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
            cursor = Some(m.id);
            lock(&shared.sent).push_back(m.id);
            client
                .publish_bytes(m.topic, qos(m.qos), m.retain, m.payload)
                .await
                .map_err(|e| LinkError::Connection(e.to_string()))?;
        }
    }
}

fn options(config: &UpstreamConfig) -> MqttOptions {
    let mut o = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    o.set_keep_alive(config.keep_alive.max(Duration::from_secs(1)));
    o.set_clean_start(!config.persistent);
    if config.persistent {
        // MQTT 5 ends a session at disconnect unless it has an expiry: keep it a week.
        o.set_session_expiry_interval(Some(7 * 24 * 3600));
    }
    o.set_connection_timeout(config.connect_timeout.as_secs().max(1));
    if let Some(user) = &config.username {
        o.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &config.tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    }
    o
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn classify(e: ConnectionError) -> LinkError {
    match e {
        ConnectionError::ConnectionRefused(code) => LinkError::Refused(format!("{code:?}")),
        other => LinkError::Connection(other.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
