//! Configuration: one TOML file, every key with a default, unknown keys rejected, and
//! `SWITCHBOARD_<SECTION>_<KEY>` environment overrides on top.
//!
//! Owns parsing and validation only. Values are validated while they are deserialised
//! (non-zero counts, positive durations, valid topic filters), so every error in a file
//! carries the line and column it stands at; nothing is checked later where the position
//! would be lost. A file that fails here never reaches `serve`.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

mod env;
mod errors;

use crate::hub::outbox::{QueueLimits, SlowConsumerPolicy};
use crate::hub::HubConfig;
use crate::settings::{nz, nz32, positive_duration, Listen};
use crate::webhook::config::WebhookConfig;
use switchboard_core::topic::Filter;

use env::{key_paths, value_at};
pub use env::{ENV_NOT_SETTINGS, ENV_PREFIX};
pub use errors::ConfigError;

/// The annotated configuration the package installs; `switchboard default-config`
/// prints it. A test keeps it equal to [`Config::packaged`].
pub const ANNOTATED: &str = include_str!("../../config/switchboard.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log filter (`info`, `debug`, `switchboard=trace,info`…). `RUST_LOG` wins if set.
    #[serde(deserialize_with = "log_filter")]
    pub log_level: String,
    /// Where switchboard keeps its data. Defaults to a per-user directory.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub ws: WsConfig,
    pub presence: PresenceConfig,
    /// Topics that keep their recent messages for recovery (docs/history.md).
    pub history: crate::history::HistoryConfig,
    pub mqtt: MqttConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub shutdown: ShutdownConfig,
    pub store: StoreConfig,
    /// Recordings and replays (`crate::recorder`, docs/recordings.md).
    pub recording: RecordingConfig,
    /// Outbound webhook endpoints (`[[webhooks]]`); none by default.
    #[serde(deserialize_with = "crate::webhook::config::unique")]
    pub webhooks: Vec<WebhookConfig>,
    pub metrics: MetricsConfig,
    /// Links to upstream MQTT brokers (`[[bridges]]`, docs/bridges.md); none by default.
    #[serde(deserialize_with = "crate::bridges::config::bridges")]
    pub bridges: Vec<crate::bridges::config::LinkConfig>,
    /// Inbound webhooks: `POST /hooks/<name>` publishes signed bodies (docs/hooks.md).
    #[serde(deserialize_with = "crate::http::hooks::config::unique_names")]
    pub hooks: Vec<crate::http::hooks::HookConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP + WebSocket listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve HTTPS and WSS with the certificate in `[tls]`.
    pub tls: bool,
    /// Connections (HTTP and WebSocket) open at once; more are closed at accept.
    pub max_connections: NonZeroUsize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: NonZeroUsize,
    /// Time a new connection has for its TLS handshake and first request.
    #[serde(with = "positive_duration")]
    pub handshake_timeout: Duration,
    /// Largest body of `POST /api/v1/publish/batch`; other requests are held to
    /// `ws.max_message_size`.
    pub max_batch_bytes: NonZeroUsize,
    /// How long an HTTP publish's idempotency key is remembered.
    #[serde(with = "positive_duration")]
    pub idempotency_window: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest frame a client may send, in bytes; above it the connection closes with 1009.
    pub max_message_size: NonZeroUsize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: NonZeroUsize,
    /// Frames queued for one connection before the slow-consumer policy applies.
    pub outbound_queue_messages: NonZeroUsize,
    /// Bytes queued for one connection before the slow-consumer policy applies.
    pub outbound_queue_bytes: NonZeroUsize,
    /// `drop_oldest` (with a `lagged` notice) or `close` (code 4100).
    pub slow_consumer: SlowConsumerPolicy,
    /// How often the server pings each connection.
    #[serde(with = "positive_duration")]
    pub heartbeat_interval: Duration,
    /// Intervals without hearing from a peer before it is dropped (close 4101).
    pub heartbeat_misses: NonZeroU32,
    /// Socket read chunk, allocated per connection and zero-filled by tungstenite before
    /// each read. 1 KiB keeps an idle connection at 4.6 KiB (7.6 KiB with 4 KiB) with no
    /// loss of throughput for small messages (docs/benchmarks.md).
    pub read_buffer_size: NonZeroUsize,
    /// Bytes buffered before a write reaches the socket (a flush always writes).
    pub write_buffer_size: usize,
    /// Publishes per second one connection may make, sustained (a token bucket).
    pub publish_rate: NonZeroU32,
    /// Publishes one connection may make in a burst above the sustained rate.
    pub publish_burst: NonZeroU32,
    /// Refused publishes in a row after which the connection is closed (code 4008).
    pub rate_limit_strikes: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Topics matching these filters track members and announce joins and leaves.
    pub topics: Vec<Filter>,
    /// Largest `info` object a client may attach, in bytes.
    pub max_info_bytes: NonZeroUsize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT 3.1.1 and 5 over TCP; empty turns it off.
    pub listen: Listen,
    /// MQTT over WebSocket; empty turns it off.
    pub ws_listen: Listen,
    /// Devices connected at once.
    pub max_connections: NonZeroUsize,
    /// Largest MQTT packet a device may send, in bytes.
    pub max_packet_size: NonZeroUsize,
    /// Time a new connection has to send CONNECT.
    #[serde(with = "positive_duration")]
    pub connect_timeout: Duration,
    /// Messages from other ways in queued towards MQTT subscribers before drops.
    pub egress_queue: NonZeroUsize,
    /// Devices without a username may connect.
    pub allow_anonymous: bool,
    /// Password file (`switchboard passwd`, Mosquitto-compatible); empty for none.
    pub password_file: PathBuf,
    /// Topic permissions; none means every device may publish and subscribe anywhere.
    pub acl: Vec<AclRule>,
    /// MQTT over TLS (certificate in `[tls]`); empty turns it off.
    pub tls_listen: Listen,
    /// MQTT over secure WebSocket; empty turns it off.
    pub wss_listen: Listen,
    /// On the TLS listeners, devices must present a certificate signed by
    /// `tls.client_ca_file`.
    pub require_certificate: bool,
    /// A device's verified certificate names it: its common name becomes the username
    /// and no password is needed.
    pub use_identity_as_username: bool,
    /// `embedded` runs our own broker; `external` attaches the Hub to the broker in
    /// `[mqtt.external]` instead (docs/bridges.md).
    pub mode: MqttMode,
    /// The broker of external mode.
    #[serde(deserialize_with = "crate::bridges::config::external")]
    pub external: Option<crate::bridges::config::LinkConfig>,
}

/// Which MQTT broker devices talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    #[default]
    Embedded,
    External,
}

/// Who may connect over WebSocket and HTTP, and with what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Clients without credentials may connect, with the `anonymous` grants.
    pub allow_anonymous: bool,
    /// What an anonymous client may do.
    pub anonymous: GrantsConfig,
    /// File holding the admin token (everything allowed); empty for no admin.
    pub admin_token_file: PathBuf,
    /// API keys (`switchboard apikey`); empty means `<data_dir>/api_keys.json`.
    pub api_keys_file: PathBuf,
    /// Keys that verify client JWTs; several at once, chosen by `kid`, for rotation.
    pub jwt: Vec<JwtKeyConfig>,
    /// Tolerated clock difference for `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Time a connection without credentials has to send its `auth` frame.
    #[serde(with = "positive_duration")]
    pub auth_timeout: Duration,
    /// Browser origins allowed to open a WebSocket; empty means same-origin only,
    /// `*` any. Clients that send no `Origin` (not browsers) are not affected.
    pub allowed_origins: Vec<String>,
}

/// Topic filters and recipients one identity is allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantsConfig {
    /// Filters covering the topics it may publish to.
    pub publish: Vec<Filter>,
    /// Filters within which it may subscribe (and ask for presence).
    pub subscribe: Vec<Filter>,
    /// Users it may send direct messages to; `*` for anyone.
    pub send: Vec<String>,
}

/// One JWT verification key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Matched against the token's `kid` header; empty accepts tokens without one.
    #[serde(default)]
    pub kid: String,
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `ES256` or `EdDSA`.
    pub algorithm: JwtAlgorithm,
    /// HS*: a file holding the shared secret.
    #[serde(default)]
    pub secret_file: PathBuf,
    /// RS*, ES256, EdDSA: a PEM file holding the public key.
    #[serde(default)]
    pub public_key_file: PathBuf,
}

/// The signature algorithms switchboard verifies. `none` is not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    ES256,
    EdDSA,
}

impl JwtAlgorithm {
    /// Whether the key is a shared secret rather than a public key.
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

/// The certificate every TLS listener presents, reloaded on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates that sign device client certificates; empty for none.
    pub client_ca_file: PathBuf,
}

/// Topic permissions for the devices a rule applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// `*` for every device, `anonymous` for devices without a username, or a username.
    pub user: String,
    /// Filters the device may publish to; `%c` is its client id, `%u` its username.
    #[serde(default)]
    pub publish: Vec<TopicPattern>,
    /// Filters the device may subscribe within; same substitutions.
    #[serde(default)]
    pub subscribe: Vec<TopicPattern>,
}

/// A topic filter that may contain `%c` (client id) and `%u` (username) as whole levels
/// or inside one, validated with the placeholders filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TopicPattern(String);

impl TopicPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TopicPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let filled = s.replace("%c", "c").replace("%u", "u");
        switchboard_core::topic::validate_filter(&filled)
            .map_err(|e| serde::de::Error::custom(format!("invalid topic pattern `{s}`: {e}")))?;
        Ok(TopicPattern(s))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long shutdown waits for queued frames to be written before exiting.
    #[serde(with = "positive_duration")]
    pub grace: Duration,
}

/// The local store (`crate::store`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// How often writes are flushed to disk: at most this much is lost in a crash.
    #[serde(with = "positive_duration")]
    pub flush_interval: Duration,
    /// Bytes of stored messages (history and recordings) kept at most; the oldest are
    /// evicted past it.
    pub max_bytes: u64,
}

/// Recordings and replays (`crate::recorder`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// Messages waiting between the Hub and the recording writer; past it messages are
    /// dropped from recordings (and counted) rather than the Hub slowed.
    pub queue: NonZeroUsize,
    /// Least time between two progress events of a replay on `$replays/<id>`.
    #[serde(with = "positive_duration")]
    pub progress_interval: Duration,
}

/// The Prometheus endpoint `/metrics` (docs/metrics.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// `/metrics` needs no credential; when false it needs the admin token.
    pub public: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            data_dir: default_data_dir(),
            http: HttpConfig::default(),
            ws: WsConfig::default(),
            presence: PresenceConfig::default(),
            history: Default::default(),
            mqtt: MqttConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            shutdown: ShutdownConfig::default(),
            store: StoreConfig::default(),
            recording: RecordingConfig::default(),
            webhooks: Vec::new(),
            bridges: Vec::new(),
            metrics: MetricsConfig::default(),
            hooks: Vec::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            tls: false,
            max_connections: nz(20_000),
            max_connections_per_ip: nz(20_000),
            handshake_timeout: Duration::from_secs(10),
            max_batch_bytes: nz(1024 * 1024),
            idempotency_window: Duration::from_secs(300),
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message_size: nz(64 * 1024),
            max_subscriptions: nz(1000),
            outbound_queue_messages: nz(1024),
            outbound_queue_bytes: nz(1024 * 1024),
            slow_consumer: SlowConsumerPolicy::DropOldest,
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_misses: nz32(2),
            read_buffer_size: nz(1024),
            write_buffer_size: 16 * 1024,
            publish_rate: nz32(1000),
            publish_burst: nz32(2000),
            rate_limit_strikes: nz32(100),
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            max_info_bytes: nz(1024),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 1883)))),
            ws_listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 8083)))),
            max_connections: nz(10_000),
            max_packet_size: nz(1024 * 1024),
            connect_timeout: Duration::from_secs(10),
            egress_queue: nz(65_536),
            allow_anonymous: true,
            password_file: PathBuf::new(),
            acl: Vec::new(),
            tls_listen: Listen(None),
            wss_listen: Listen(None),
            require_certificate: false,
            use_identity_as_username: false,
            mode: MqttMode::Embedded,
            external: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            anonymous: GrantsConfig::default(),
            admin_token_file: PathBuf::new(),
            api_keys_file: PathBuf::new(),
            jwt: Vec::new(),
            leeway: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for GrantsConfig {
    /// Everything a client can do, for the no-config localhost default.
    fn default() -> Self {
        let filter = |f: &str| Filter::new(f).expect("a valid built-in filter");
        Self {
            publish: vec![filter("#")],
            subscribe: vec![filter("#"), filter("$devices/#"), filter("$bridges/#")],
            send: vec!["*".into()],
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            public: true,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(5),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(100),
            max_bytes: 1 << 30,
        }
    }
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            queue: nz(65_536),
            progress_interval: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// The built-in defaults made fit for a network, as the package installs them:
    /// every interface, credentials required, the service's own directories.
    pub fn packaged() -> Config {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        let mut c = Config {
            data_dir: PathBuf::from("/var/lib/switchboard"),
            ..Config::default()
        };
        c.http.listen = any(8700);
        c.http.max_connections_per_ip = nz(1000);
        c.mqtt.listen = Listen(Some(any(1883)));
        c.mqtt.ws_listen = Listen(Some(any(8083)));
        c.mqtt.allow_anonymous = false;
        c.mqtt.password_file = PathBuf::from("/etc/switchboard/passwd");
        c.auth.allow_anonymous = false;
        c.auth.admin_token_file = PathBuf::from("/etc/switchboard/admin.token");
        c.metrics.public = false;
        c
    }

    pub fn hub(&self) -> HubConfig {
        HubConfig {
            queue: QueueLimits {
                max_messages: self.ws.outbound_queue_messages.get(),
                max_bytes: self.ws.outbound_queue_bytes.get(),
                policy: self.ws.slow_consumer,
            },
            max_subscriptions: self.ws.max_subscriptions.get(),
            presence: self.presence.topics.clone(),
            max_info_bytes: self.presence.max_info_bytes.get(),
        }
    }

    pub fn broker(&self) -> switchboard_bridge::BrokerConfig {
        switchboard_bridge::BrokerConfig {
            listen: self.mqtt.listen.0,
            ws_listen: self.mqtt.ws_listen.0,
            tls_listen: self.mqtt.tls_listen.0,
            wss_listen: self.mqtt.wss_listen.0,
            // Comes from the certificate files, loaded by `crate::tls` at startup.
            tls: None,
            max_connections: self.mqtt.max_connections.get(),
            max_packet_size: self.mqtt.max_packet_size.get(),
            connect_timeout: self.mqtt.connect_timeout,
            egress_queue: self.mqtt.egress_queue.get(),
        }
    }

    /// Loads a file (or the defaults when `path` is None) and applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                (text, p.display().to_string())
            }
            None => (String::new(), "(defaults)".to_owned()),
        };
        Self::from_toml(&text, &origin, std::env::vars())
    }

    /// Parses TOML text, then applies `SWITCHBOARD_…` variables from `env`.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Parse the file alone first, so its errors carry their line and column.
        let parsed: Config =
            toml::from_str(text).map_err(|e| ConfigError::parse(origin, text, &e))?;
        let overrides = env::overrides(env);
        if overrides.is_empty() {
            return Ok(parsed);
        }
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::parse(origin, text, &e))?;
        env::apply(table, overrides)
    }
}

/// Every setting (`section.key`, as in the file) whose value differs between two
/// configurations, sorted; a list of tables such as `webhooks` is one setting.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Table::try_from(old), toml::Table::try_from(new)) else {
        return vec!["(configuration)".to_owned()];
    };
    let mut keys: Vec<String> = key_paths(old)
        .into_iter()
        .chain(key_paths(new))
        .filter(|(_, path)| value_at(&a, path) != value_at(&b, path))
        .map(|(_, path)| path.join("."))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The per-user data directory: `$XDG_DATA_HOME/switchboard`, else
/// `~/.local/share/switchboard`; `/var/lib/switchboard` when there is no home at all.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("switchboard");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/switchboard");
    }
    PathBuf::from("/var/lib/switchboard")
}

/// A `tracing` filter directive, checked now so a typo is reported with its position.
fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    tracing_subscriber::EnvFilter::try_new(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid log filter `{s}`: {e}")))?;
    // A bare word is a valid filter (it names a module), but `verbose` or `loud` is
    // far more likely a level that does not exist, which would silence every log.
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=')
            && directive
                .parse::<tracing::level_filters::LevelFilter>()
                .is_err()
        {
            return Err(serde::de::Error::custom(format!(
                "`{directive}` is not a log level: use off, error, warn, info, debug, trace, or module=level"
            )));
        }
    }
    Ok(s)
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match toml::to_string_pretty(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

#[cfg(test)]
mod tests;
