//! Everything MQTT: the embedded broker that sensor nodes talk to.
//!
//! rumqttd's router owns MQTT routing state (subscriptions, QoS 1/2 flows, persistent
//! sessions, retained messages for MQTT subscribers). Everything in front of it is ours:
//! the listeners, the CONNECT handshake, authentication, topic permissions and the socket
//! options. We do not use rumqttd's own listeners because they only log bind errors, leave
//! Nagle's algorithm on, have no topic-permission hook, and can be panicked for everyone by
//! a client id that reconnects after a refused connect.
//!
//! This crate knows nothing of WebSocket clients or the hub. It meets the rest of the daemon
//! through three seams:
//! - [`Gate`] decides who may connect and what they may publish or subscribe to;
//! - [`Ingress`] receives every message a device publishes and every device coming and going;
//! - [`Publisher`] carries messages from elsewhere to MQTT subscribers.
//!
//! Links to other brokers (upstream bridges, or the site's broker in external mode) are
//! in [`upstream`], with their topic [`rules`]: an inbound stream of messages
//! ([`upstream::Inbox`]) and an outbound queue the caller keeps ([`upstream::Outbox`]).

mod admission;
mod codec;
mod egress;
mod interest;
mod listener;
mod registry;
mod router;
pub mod rules;
mod session;
mod transport;
pub mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use egress::{Publisher, QueueFull};
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
    /// Messages queued towards MQTT subscribers from other ways in before new ones are
    /// dropped (and counted).
    pub egress_queue: usize,
    /// QoS 2 publishes one device may leave unreleased (no PUBREL yet); announced to
    /// MQTT 5 devices as Receive Maximum. One more closes the connection.
    pub receive_maximum: u16,
    /// Topic aliases an MQTT 5 device may set (announced as Topic Alias Maximum); one
    /// past it closes the connection.
    pub topic_alias_maximum: u16,
    /// Topic filters one device may hold; further ones are refused in the SUBACK.
    pub max_subscriptions: usize,
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
            egress_queue: 65_536,
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
    pub payload: &'a [u8],
    pub retain: bool,
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
}

impl Gone {
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::Disconnected => "disconnected",
            Gone::Lost => "lost",
            Gone::TakenOver => "taken_over",
            Gone::Shutdown => "shutdown",
            Gone::Revoked => "revoked",
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
    #[error("cannot start the MQTT router: {0}")]
    Router(String),
    #[error("an MQTT TLS listener is configured without a TLS configuration")]
    NoTls,
}

/// Shared by every connection task.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub router: router::RouterHandle,
    pub gate: Arc<dyn Gate>,
    pub ingress: Arc<dyn Ingress>,
    pub registry: registry::Registry,
    /// The filters MQTT subscribers hold, so publishes nobody over MQTT wants skip the router.
    pub interest: interest::Interest,
    pub stats: Arc<Stats>,
    pub publisher: Publisher,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Bumped by [`Broker::recheck`]: every session then checks its device again.
    pub recheck: tokio::sync::watch::Sender<u64>,
    /// Permits for `max_connections` admitted devices.
    pub capacity: Arc<tokio::sync::Semaphore>,
}

/// The running broker: its listeners, the router thread and the egress thread.
pub struct Broker {
    shared: Arc<Shared>,
    local_addr: Option<SocketAddr>,
    ws_local_addr: Option<SocketAddr>,
    tls_local_addr: Option<SocketAddr>,
    wss_local_addr: Option<SocketAddr>,
}

impl Broker {
    /// Binds every configured listener (any failure is returned, nothing is left half-up),
    /// starts the router and begins accepting devices on the current tokio runtime.
    pub async fn start(
        config: BrokerConfig,
        gate: Arc<dyn Gate>,
        ingress: Arc<dyn Ingress>,
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
        let router = router::RouterHandle::start(config.max_connections)?;
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let publisher = egress::start(
            &router,
            config.egress_queue,
            stats.clone(),
            shutdown.clone(),
        )?;
        let max_connections = config.max_connections;
        let shared = Arc::new(Shared {
            config,
            router,
            gate,
            ingress,
            registry: registry::Registry::default(),
            interest: interest::Interest::default(),
            stats,
            publisher,
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

    /// Sends messages from other ways in to MQTT subscribers.
    pub fn publisher(&self) -> Publisher {
        self.shared.publisher.clone()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Messages queued towards MQTT subscribers now, not yet taken by the egress task.
    pub fn egress_queue_depth(&self) -> usize {
        self.shared.publisher.queued()
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

    /// Resolves if the router thread dies. The daemon must then exit rather than run with
    /// MQTT half-alive.
    pub async fn died(&self) {
        self.shared.router.died().await
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
