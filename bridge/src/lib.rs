//! Everything MQTT: the embedded broker that sensor nodes talk to.
//!
//! rumqttd gives us its MQTT 3.1.1 and 5 packet types and codecs; everything else is
//! ours: the listeners, the CONNECT handshake, authentication, topic permissions, socket
//! options, and each device's session (`session.rs`), which runs both directions of the
//! protocol: acknowledgements, QoS 2, topic aliases, and the outbound flow to an MQTT
//! subscriber (its packet ids, Receive Maximum and Maximum Packet Size). Who receives
//! what is decided by the daemon's Hub, the one router for WebSocket and MQTT alike.
//!
//! This crate knows nothing of WebSocket clients or the hub. It meets the rest of the daemon
//! through three seams:
//! - [`Gate`] decides who may connect and what they may publish or subscribe to;
//! - [`Ingress`] receives every message a device publishes and every device coming and going;
//! - [`Sessions`] keeps each device's subscriptions and queues what they receive, live
//!   and, for a persistent session, while the device is away.
//!
//! Links to other brokers (upstream bridges, or the site's broker in external mode) are
//! in [`upstream`], with their topic [`rules`]: an inbound stream of messages
//! ([`upstream::Inbox`]) and an outbound queue the caller keeps ([`upstream::Outbox`]).

mod admission;
mod codec;
mod listener;
mod registry;
pub mod rules;
mod session;
mod transport;
pub mod upstream;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use switchboard_core::delivery::{
    Delivery, DeviceMessage, RetainHandling, SubscriptionOptions,
};
pub use switchboard_core::web::WebPolicy;

/// How the broker listens and what it tolerates.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// MQTT 3.1.1 and 5 over TCP; `None` turns the listener off.
    pub listen: Option<SocketAddr>,
    /// MQTT over WebSocket (MQTT.js, paho in browsers); `None` turns it off.
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over TLS (usually port 8883); `None` turns it off. Needs `tls`.
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS; `None` turns it off. Needs `tls`.
    pub wss_listen: Option<SocketAddr>,
    /// The server configuration of both TLS listeners.
    pub tls: Option<TlsSource>,
    /// Devices connected at once; more are refused with "server unavailable".
    pub max_connections: usize,
    /// Largest packet a device may send, in bytes.
    pub max_packet_size: usize,
    /// A socket that has not sent CONNECT by then is closed.
    pub connect_timeout: Duration,
    /// QoS 2 publishes one device may leave unreleased (no PUBREL yet); announced to
    /// MQTT 5 devices as Receive Maximum. One more closes the connection.
    pub receive_maximum: u16,
    /// Topic aliases an MQTT 5 device may set (announced as Topic Alias Maximum); one
    /// past it closes the connection.
    pub topic_alias_maximum: u16,
    /// Topic filters one device may hold; further ones are refused in the SUBACK.
    pub max_subscriptions: usize,
    /// Longest a session is kept after its device left (MQTT 5 Session Expiry Interval,
    /// or a 3.1.1 persistent session): a device asking for longer gets this.
    pub max_session_expiry: Duration,
    /// Which browser pages (`Origin`) and host names (`Host`) the WebSocket listeners
    /// accept: the daemon's own policy, so a page refused on its `/ws` is refused here.
    pub web: WebPolicy,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            ws_listen: None,
            tls_listen: None,
            wss_listen: None,
            tls: None,
            max_connections: 10_000,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_session_expiry: Duration::from_secs(24 * 3600),
            receive_maximum: 32,
            max_subscriptions: 1000,
            topic_alias_maximum: 16,
            web: WebPolicy::default(),
        }
    }
}

/// Where the TLS listeners get their rustls configuration. Asked once per accepted
/// connection, so a certificate reloaded by the daemon applies to the next device
/// without a restart while connected devices keep the session they have.
#[derive(Clone)]
pub struct TlsSource(Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>);

impl TlsSource {
    pub fn new(current: impl Fn() -> Arc<rustls::ServerConfig> + Send + Sync + 'static) -> Self {
        TlsSource(Arc::new(current))
    }

    /// A configuration that never changes.
    pub fn fixed(config: Arc<rustls::ServerConfig>) -> Self {
        TlsSource::new(move || config.clone())
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        (self.0)()
    }
}

impl fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsSource")
    }
}

/// MQTT protocol revision a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// How the device reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket over TLS.
    SecureWebSocket,
}

impl Transport {
    /// Every transport, in the order of [`StatsSnapshot::connections_by_transport`].
    pub const ALL: [Transport; 4] = [
        Transport::Tcp,
        Transport::WebSocket,
        Transport::Tls,
        Transport::SecureWebSocket,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
            Transport::Tls => "tls",
            Transport::SecureWebSocket => "wss",
        }
    }
}

/// What a device presented in its CONNECT packet.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub remote: SocketAddr,
    /// DER of the end-entity certificate the device presented on a TLS listener, present
    /// only once the client verifier accepted it (so it is signed by a trusted CA).
    pub peer_certificate: Option<Vec<u8>>,
}

/// A connected device, as the rest of the daemon sees it.
#[derive(Debug, Clone)]
pub struct Device {
    pub client_id: String,
    pub username: Option<String>,
    pub version: Version,
    pub transport: Transport,
    pub remote: SocketAddr,
}

/// A connected device as an operator sees it ([`Broker::connected`]).
#[derive(Debug, Clone)]
pub struct Connected {
    pub device: Device,
    /// When it was admitted, milliseconds since the Unix epoch.
    pub since_ms: u64,
    pub will: Option<WillShown>,
}

/// A connected device's Last Will, as it will be published if the device is lost.
#[derive(Debug, Clone)]
pub struct WillShown {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub retain: bool,
    pub qos: u8,
    /// MQTT 5's Will Delay Interval (zero: at once).
    pub delay: Duration,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad username or password")]
    BadCredentials,
    #[error("not authorized")]
    NotAuthorized,
}

/// Why a PUBLISH or SUBSCRIBE was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("not authorized")]
    NotAuthorized,
    #[error("invalid topic or filter")]
    Invalid,
    /// The payload is not what the topic takes (an encrypted-only topic, plaintext).
    #[error("payload format invalid")]
    PayloadFormatInvalid,
}

/// What one authenticated device may do. Asked on every PUBLISH and SUBSCRIBE, so an
/// implementation may follow rules that change while the device is connected.
pub trait Permissions: Send + Sync {
    fn check_publish(&self, topic: &str) -> Result<(), Denied>;
    fn check_subscribe(&self, filter: &str) -> Result<(), Denied>;

    /// Whether the credential the device connected with is still accepted; asked after
    /// [`Broker::recheck`]. A device whose answer is false is disconnected.
    fn still_valid(&self) -> bool {
        true
    }

    /// The name the gate gave the device when it is not the CONNECT username (for
    /// instance a certificate's common name); the device is known by it from then on.
    fn username(&self) -> Option<&str> {
        None
    }
}

/// Authentication for devices.
pub trait Gate: Send + Sync + 'static {
    /// Called on a blocking thread: password hashing is deliberately slow.
    fn authenticate(&self, credentials: &Credentials) -> Result<Arc<dyn Permissions>, Refusal>;
}

/// A message a device published (or its Last Will), after permissions were checked.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub topic: &'a str,
    pub payload: &'a bytes::Bytes,
    pub retain: bool,
    pub qos: u8,
    /// MQTT 5 properties for the subscribers, as encoded on the wire; empty if none.
    pub properties: &'a bytes::Bytes,
}

/// Why a device went away, for the offline notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// It sent DISCONNECT.
    Disconnected,
    /// The connection broke, timed out or broke the protocol: its Last Will (if any) fired.
    Lost,
    /// Another connection with the same client id took over.
    TakenOver,
    /// The daemon is shutting down.
    Shutdown,
    /// Its credential or a subscription it held is no longer allowed (a reload changed
    /// the rules): the server closed it, without its Last Will.
    Revoked,
    /// An operator closed it ([`Broker::disconnect`]); its Last Will fired, as MQTT
    /// requires when the server closes a connection the device did not end.
    Kicked,
}

impl Gone {
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::Disconnected => "disconnected",
            Gone::Lost => "lost",
            Gone::TakenOver => "taken_over",
            Gone::Shutdown => "shutdown",
            Gone::Revoked => "revoked",
            Gone::Kicked => "kicked",
        }
    }
}

/// Where device traffic goes besides MQTT subscribers.
pub trait Ingress: Send + Sync + 'static {
    /// Called on the device's connection task for every accepted publish, exactly once per
    /// message (QoS 2 retransmissions are filtered before this). Must not block.
    fn accept(&self, from: &Device, message: Inbound<'_>);
    /// Asked before a publish is acknowledged, after permissions, so a refusal can be the
    /// acknowledgement's reason code: whether the daemon takes this payload on this topic.
    fn check_payload(&self, _from: &Device, _message: Inbound<'_>) -> Result<(), Denied> {
        Ok(())
    }
    fn connected(&self, device: &Device);
    fn disconnected(&self, device: &Device, why: Gone);
}

/// MQTT subscribers' sessions, kept by the daemon beside every other subscriber.
pub trait Sessions: Send + Sync + 'static {
    /// The session of a device that connected: with `clean_start` false the one its
    /// client id left behind, if any (then `true`: session present), else a new one
    /// (ending one left behind).
    fn attach(&self, client_id: &str, clean_start: bool) -> (Arc<dyn DeviceSession>, bool);
}

/// One device's session: its subscriptions, and the deliveries queued for it (bounded:
/// the daemon's per-subscriber queue limits apply, and count what they drop).
pub trait DeviceSession: Send + Sync {
    /// Subscribes (or changes the options of a held filter) and starts sending the
    /// retained values the options ask for; a catch-up is returned when more remain.
    fn subscribe(
        &self,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<Option<Box<dyn CatchUp>>, Denied>;
    /// True if the filter was held.
    fn unsubscribe(&self, filter: &str) -> bool;
    fn filters(&self) -> Vec<String>;
    /// Takes queued deliveries, oldest first, with at most `max` of QoS 1 or 2 among
    /// them; `Ready(false)` once the session was ended or closed for falling behind.
    fn poll_deliveries(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut VecDeque<Delivery>,
    ) -> Poll<bool>;
    /// Deliveries taken and now done with (written, acknowledged or skipped), so they
    /// no longer count against the queue limits.
    fn release(&self, count: usize, bytes: usize);
    /// Deliveries queued and not taken.
    fn depth(&self) -> usize;
    /// The device left; its session stays, with `unacknowledged` to send again first.
    fn detach(&self, unacknowledged: Vec<Delivery>);
    /// Ends the session: its subscriptions and queue go. With `only_if_detached`, not
    /// if its device came back meanwhile; false then.
    fn end(&self, only_if_detached: bool) -> bool;
}

/// A subscription's retained values, queued a step at a time.
pub trait CatchUp: Send {
    /// Queues the next step; true once none remain.
    fn step(&mut self) -> bool;
}

/// Counters for /healthz and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub connects_refused: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub publishes_denied: AtomicU64,
    pub subscribes_denied: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Sockets closed because their CONNECT was larger than the bound on what a
    /// connection may buffer before it is admitted.
    pub connects_too_large: AtomicU64,
    /// Always 0: MQTT subscribers are served by the Hub, with no egress queue between.
    /// Kept so the figures' set stays the same.
    pub egress_published: AtomicU64,
    pub egress_dropped: AtomicU64,
    /// TLS handshakes that failed or timed out on the TLS listeners.
    pub tls_handshake_failures: AtomicU64,
    /// `connections` split by [`Transport`] (indexed as [`Transport::ALL`]).
    pub connections_by_transport: [AtomicU64; 4],
    /// Subscription filters refused because the device held `max_subscriptions`.
    pub subscribes_over_quota: AtomicU64,
    /// Packets not sent to a device for being larger than its Maximum Packet Size.
    pub too_large_for_device: AtomicU64,
    /// Connections closed for going past a limit the broker announced.
    pub limit_disconnects: LimitCounters,
    /// Sessions ended when their Session Expiry passed after their device left.
    pub sessions_expired: AtomicU64,
    /// Sessions waiting for their device now.
    pub sessions_waiting: AtomicU64,
}

/// Connections closed for going past an announced limit, by limit.
#[derive(Debug, Default)]
pub struct LimitCounters {
    /// More unreleased QoS 2 publishes than the Receive Maximum.
    pub receive_maximum: AtomicU64,
    /// A topic alias of 0 or above the Topic Alias Maximum.
    pub topic_alias: AtomicU64,
}

/// A point-in-time copy of [`LimitCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSnapshot {
    pub receive_maximum: u64,
    pub topic_alias: u64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub connects_refused: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub publishes_denied: u64,
    pub subscribes_denied: u64,
    pub protocol_errors: u64,
    pub connects_too_large: u64,
    pub egress_published: u64,
    pub egress_dropped: u64,
    pub tls_handshake_failures: u64,
    /// Devices connected now, in the order of [`Transport::ALL`].
    pub connections_by_transport: [u64; 4],
    pub subscribes_over_quota: u64,
    pub too_large_for_device: u64,
    pub limit_disconnects: LimitSnapshot,
    pub sessions_expired: u64,
    pub sessions_waiting: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: get(&self.connections),
            connects_refused: get(&self.connects_refused),
            messages_in: get(&self.messages_in),
            messages_out: get(&self.messages_out),
            publishes_denied: get(&self.publishes_denied),
            subscribes_denied: get(&self.subscribes_denied),
            protocol_errors: get(&self.protocol_errors),
            connects_too_large: get(&self.connects_too_large),
            egress_published: get(&self.egress_published),
            egress_dropped: get(&self.egress_dropped),
            tls_handshake_failures: get(&self.tls_handshake_failures),
            connections_by_transport: self.connections_by_transport.each_ref().map(get),
            subscribes_over_quota: get(&self.subscribes_over_quota),
            too_large_for_device: get(&self.too_large_for_device),
            limit_disconnects: LimitSnapshot {
                receive_maximum: get(&self.limit_disconnects.receive_maximum),
                topic_alias: get(&self.limit_disconnects.topic_alias),
            },
            sessions_expired: get(&self.sessions_expired),
            sessions_waiting: get(&self.sessions_waiting),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("an MQTT TLS listener is configured without a TLS configuration")]
    NoTls,
}

/// Shared by every connection task.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub gate: Arc<dyn Gate>,
    pub ingress: Arc<dyn Ingress>,
    pub sessions: Arc<dyn Sessions>,
    pub registry: registry::Registry,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Bumped by [`Broker::recheck`]: every session then checks its device again.
    pub recheck: tokio::sync::watch::Sender<u64>,
    /// Permits for `max_connections` admitted devices.
    pub capacity: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// Keeps a session after its device left, `unacknowledged` first in its queue, until
    /// `expiry` passes or the device comes back. At most `max_connections` sessions wait at
    /// once; past that one ends with its connection.
    pub(crate) fn keep_session(
        self: &Arc<Self>,
        client_id: &str,
        session: Arc<dyn DeviceSession>,
        unacknowledged: Vec<Delivery>,
        expiry: Duration,
    ) {
        let Some((id, back)) = self
            .registry
            .keep_session(client_id, self.config.max_connections)
        else {
            session.end(false);
            self.registry.take_packet_ids(client_id);
            return;
        };
        session.detach(unacknowledged);
        let stats = &self.stats;
        stats.sessions_waiting.fetch_add(1, Ordering::Relaxed);
        let shared = self.clone();
        let client_id = client_id.to_owned();
        shared.tracker.clone().spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(expiry) => {
                    if session.end(true) {
                        shared.registry.take_packet_ids(&client_id);
                    }
                    shared.stats.sessions_expired.fetch_add(1, Ordering::Relaxed);
                }
                _ = back.cancelled() => {}
                _ = shared.shutdown.cancelled() => {}
            }
            shared
                .stats
                .sessions_waiting
                .fetch_sub(1, Ordering::Relaxed);
            shared.registry.session_done(&client_id, id);
        });
    }
}

/// The running broker: its listeners and device sessions.
pub struct Broker {
    shared: Arc<Shared>,
    local_addr: Option<SocketAddr>,
    ws_local_addr: Option<SocketAddr>,
    tls_local_addr: Option<SocketAddr>,
    wss_local_addr: Option<SocketAddr>,
}

impl Broker {
    /// Binds every configured listener (any failure is returned, nothing is left half-up)
    /// and begins accepting devices on the current tokio runtime.
    pub async fn start(
        config: BrokerConfig,
        gate: Arc<dyn Gate>,
        ingress: Arc<dyn Ingress>,
        sessions: Arc<dyn Sessions>,
    ) -> Result<Broker, StartError> {
        let tcp = match config.listen {
            Some(addr) => Some(listener::bind(addr).await?),
            None => None,
        };
        let ws = match config.ws_listen {
            Some(addr) => Some(listener::bind(addr).await?),
            None => None,
        };
        if (config.tls_listen.is_some() || config.wss_listen.is_some()) && config.tls.is_none() {
            return Err(StartError::NoTls);
        }
        let tls = match config.tls_listen {
            Some(addr) => Some(listener::bind(addr).await?),
            None => None,
        };
        let wss = match config.wss_listen {
            Some(addr) => Some(listener::bind(addr).await?),
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let max_connections = config.max_connections;
        let shared = Arc::new(Shared {
            config,
            gate,
            ingress,
            sessions,
            registry: registry::Registry::default(),
            stats,
            shutdown,
            tracker: TaskTracker::new(),
            recheck: tokio::sync::watch::Sender::new(0),
            capacity: Arc::new(tokio::sync::Semaphore::new(max_connections)),
        });
        let local_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let ws_local_addr = ws.as_ref().and_then(|l| l.local_addr().ok());
        let tls_local_addr = tls.as_ref().and_then(|l| l.local_addr().ok());
        let wss_local_addr = wss.as_ref().and_then(|l| l.local_addr().ok());
        for (listener, transport) in [
            (tcp, Transport::Tcp),
            (ws, Transport::WebSocket),
            (tls, Transport::Tls),
            (wss, Transport::SecureWebSocket),
        ] {
            if let Some(l) = listener {
                tokio::spawn(listener::accept_loop(l, transport, shared.clone()));
            }
        }
        Ok(Broker {
            shared,
            local_addr,
            ws_local_addr,
            tls_local_addr,
            wss_local_addr,
        })
    }

    /// The MQTT/TCP address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The MQTT/WebSocket address actually bound.
    pub fn ws_local_addr(&self) -> Option<SocketAddr> {
        self.ws_local_addr
    }

    /// The MQTT/TLS address actually bound.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// The MQTT/WebSocket/TLS address actually bound.
    pub fn wss_local_addr(&self) -> Option<SocketAddr> {
        self.wss_local_addr
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Asks every connected device's session to check its permissions again, after the
    /// rules behind them changed (a reload). A device whose credential is no longer
    /// valid, or that holds a subscription its permissions no longer allow, is
    /// disconnected with "not authorized": MQTT has no way to take one subscription
    /// away from a client and tell it, and a reconnecting device learns what it may
    /// do from its SUBACKs.
    pub fn recheck(&self) {
        self.shared.recheck.send_modify(|n| *n += 1);
    }

    /// The devices connected now, in no particular order.
    pub fn connected(&self) -> Vec<Connected> {
        self.shared.registry.connected()
    }

    /// The device connected with this client id, if there is one.
    pub fn device(&self, client_id: &str) -> Option<Connected> {
        self.shared.registry.shown(client_id)
    }

    /// Closes a device's connection for an operator: an MQTT 5 device is told
    /// "administrative action", its Last Will fires and a persistent session stays for
    /// its expiry, as when a connection is lost. False if no device with this client id
    /// is connected.
    pub fn disconnect(&self, client_id: &str) -> bool {
        self.shared.registry.kick(client_id)
    }

    /// Stops accepting, disconnects every device (without firing Last Wills) and waits
    /// up to `grace` for their tasks to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some MQTT connections did not close within the grace period");
        }
    }
}

/// The daemon's permissions, checked for devices with the very same methods as for
/// WebSocket and HTTP clients.
impl Permissions for switchboard_core::Grants {
    fn check_publish(&self, topic_name: &str) -> Result<(), Denied> {
        switchboard_core::topic::validate_topic(topic_name).map_err(|_| Denied::Invalid)?;
        switchboard_core::Grants::check_publish(self, topic_name).map_err(|_| Denied::NotAuthorized)
    }

    fn check_subscribe(&self, filter: &str) -> Result<(), Denied> {
        switchboard_core::topic::validate_filter(filter).map_err(|_| Denied::Invalid)?;
        switchboard_core::Grants::check_subscribe(self, filter).map_err(|_| Denied::NotAuthorized)
    }
}
