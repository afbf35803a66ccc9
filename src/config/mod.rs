//! Configuration: one TOML file, every key with a default, unknown keys rejected, and
//! `SWITCHBOARD_<SECTION>_<KEY>` environment overrides on top.
//!
//! Each section belongs to the module that acts on it (`[auth]` to `crate::auth`,
//! `[store]` to `crate::store`…), which declares its keys, defaults and checks; this
//! module composes them into one [`Config`], loads it, applies the environment
//! (`env.rs`), renders errors (`errors.rs`) and makes the decisions that span sections
//! (which listeners want TLS, where the API keys are, the Hub's limits), so no section
//! needs another. Values are validated while they are deserialised (non-zero counts,
//! positive durations, valid topic filters), so every error in a file carries the line
//! and column it stands at; nothing is checked later where the position would be lost.
//! A file that fails here never reaches `serve`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

mod env;
mod errors;
pub mod files;
mod mqtt;

use crate::auth::config::AuthConfig;
use crate::http::config::{HttpConfig, MetricsConfig};
use crate::hub::config::PresenceConfig;
use crate::hub::outbox::QueueLimits;
use crate::hub::HubConfig;
use crate::outbound_webhooks::config::WebhookConfig;
use crate::pubkeys::policy::EncryptedOnly;
use crate::recordings::RecordingConfig;
use crate::settings::{positive_duration, Listen};
use crate::store::StoreConfig;
use crate::tls::{TlsConfig, TlsListeners};
use crate::ws::config::WsConfig;

use env::{key_paths, value_at};
pub use env::{ENV_NOT_SETTINGS, ENV_PREFIX};
pub use errors::ConfigError;
pub use mqtt::{MqttConfig, MqttMode};

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
    /// Recordings and replays (`crate::recordings`, docs/recordings.md).
    pub recording: RecordingConfig,
    /// Outbound webhook endpoints (`[[webhooks]]`); none by default.
    #[serde(deserialize_with = "crate::outbound_webhooks::config::unique")]
    pub webhooks: Vec<WebhookConfig>,
    pub metrics: MetricsConfig,
    /// Links to upstream MQTT brokers (`[[bridges]]`, docs/bridges.md); none by default.
    #[serde(deserialize_with = "crate::uplinks::config::bridges")]
    pub bridges: Vec<crate::uplinks::config::LinkConfig>,
    /// Inbound webhooks: `POST /hooks/<name>` publishes signed bodies (docs/hooks.md).
    #[serde(deserialize_with = "crate::http::inbound_webhooks::config::unique_names")]
    pub hooks: Vec<crate::http::inbound_webhooks::HookConfig>,
    /// End-to-end encryption: encrypted-only topics (docs/e2e.md).
    pub e2e: crate::pubkeys::config::E2eConfig,
    /// Several boxes as one through Redis (docs/cluster.md); off by default.
    pub cluster: crate::cluster::config::ClusterConfig,
}

/// `[shutdown]`: read by the root alone, which runs the shutdown, so it stays here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long shutdown waits for queued frames to be written before exiting.
    #[serde(with = "positive_duration")]
    pub grace: Duration,
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
            e2e: Default::default(),
            cluster: Default::default(),
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
        c.mqtt.listen = Listen(Some(any(1883)));
        c.mqtt.ws_listen = Listen(Some(any(8083)));
        c.mqtt.allow_anonymous = false;
        c.mqtt.password_file = PathBuf::from("/etc/switchboard/passwd");
        c.auth.allow_anonymous = false;
        c.auth.admin_token_file = PathBuf::from("/etc/switchboard/admin.token");
        c.metrics.public = false;
        c
    }

    /// Which browser pages and host names every web-facing listener accepts (HTTP, `/ws`,
    /// MQTT over WebSocket): origins from `[auth]`, host names from `[http]`.
    pub fn web_policy(&self) -> switchboard_core::web::WebPolicy {
        switchboard_core::web::WebPolicy {
            allowed_origins: self.auth.allowed_origins.clone(),
            allowed_hosts: self.http.allowed_hosts.clone(),
        }
    }

    /// The Hub's settings: presence from `[presence]`, the per-connection limits it
    /// enforces from `[ws]`.
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
            encrypted_only: std::sync::Arc::new(EncryptedOnly::from_config(&self.e2e)),
        }
    }

    /// Which listeners serve TLS, from `[http]` and `[mqtt]`; `[tls]` names the files.
    pub fn tls_listeners(&self) -> TlsListeners {
        let mqtt = &self.mqtt;
        let mut asked_by = Vec::new();
        if self.http.tls {
            asked_by.push("http.tls");
        }
        if mqtt.tls_listen.0.is_some() {
            asked_by.push("mqtt.tls_listen");
        }
        if mqtt.wss_listen.0.is_some() {
            asked_by.push("mqtt.wss_listen");
        }
        TlsListeners {
            asked_by,
            http: self.http.tls,
            mqtt: mqtt.tls_listen.0.is_some() || mqtt.wss_listen.0.is_some(),
            require_certificate: mqtt.require_certificate,
        }
    }

    /// Where API keys live: `auth.api_keys_file`, or `api_keys.json` in the data
    /// directory when that is empty.
    pub fn api_keys_file(&self) -> PathBuf {
        if self.auth.api_keys_file.as_os_str().is_empty() {
            self.data_dir.join("api_keys.json")
        } else {
            self.auth.api_keys_file.clone()
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
