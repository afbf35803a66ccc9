//! `[[webhooks]]` entries: what one endpoint receives and how hard we try. Validated
//! while deserialised (like the rest of the configuration), so a bad name, URL or event
//! is reported at its line; the secret file is read when the daemon starts.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::settings::positive_duration;
use switchboard_core::topic::Filter;

/// The lifecycle events an endpoint may follow, as `switchboard_core::message::Lifecycle::name` spells
/// them; `*` in `events` stands for all of them.
pub const EVENT_NAMES: [&str; 6] = [
    "client.connected",
    "client.disconnected",
    "client.subscribed",
    "client.unsubscribed",
    "device.online",
    "device.offline",
];

/// One outbound webhook endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the endpoint in the API, in stats and in the store: letters, digits, `-`,
    /// `_` and `.`.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// Where deliveries are POSTed: an `http://` or `https://` URL.
    #[serde(deserialize_with = "url")]
    pub url: String,
    /// File holding the signing secret. Every delivery is signed, so it is required.
    pub secret_file: PathBuf,
    /// Topic filters whose messages are delivered.
    #[serde(default)]
    pub topics: Vec<Filter>,
    /// Lifecycle events delivered (see [`EVENT_NAMES`]), or `*` for all.
    #[serde(default, deserialize_with = "events")]
    pub events: Vec<String>,
    /// Time one request may take, connecting included.
    #[serde(default = "defaults::timeout", with = "positive_duration")]
    pub timeout: Duration,
    /// Attempts before a delivery goes to the dead-letter list.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: NonZeroU32,
    /// Wait before the first retry; doubled for each further one.
    #[serde(default = "defaults::retry_initial", with = "positive_duration")]
    pub retry_initial: Duration,
    /// The longest wait between two attempts.
    #[serde(default = "defaults::retry_max", with = "positive_duration")]
    pub retry_max: Duration,
    /// Events in one request; 1 sends each event on its own.
    #[serde(default = "defaults::batch_max")]
    pub batch_max: NonZeroUsize,
    /// How long a request waits for more events to fill its batch (0: send what is
    /// pending at once).
    #[serde(default, with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Events kept pending on disk at most; beyond it the oldest are dropped (counted).
    #[serde(default = "defaults::max_pending")]
    pub max_pending: NonZeroU64,
}

impl WebhookConfig {
    /// Whether this endpoint follows the lifecycle event `name`.
    pub fn wants_event(&self, name: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == name)
    }

    /// Whether this endpoint follows messages on `topic`.
    pub fn wants_topic(&self, topic: &str) -> bool {
        self.topics.iter().any(|f| f.matches(topic))
    }
}

mod defaults {
    use super::*;

    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_attempts() -> NonZeroU32 {
        NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN)
    }
    pub fn retry_initial() -> Duration {
        Duration::from_secs(1)
    }
    pub fn retry_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn batch_max() -> NonZeroUsize {
        NonZeroUsize::MIN
    }
    pub fn max_pending() -> NonZeroU64 {
        NonZeroU64::new(100_000).unwrap_or(NonZeroU64::MIN)
    }
}

/// A name fit for the API, metrics labels and store trees: 1 to 64 letters, digits,
/// `-`, `_` or `.`.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !is_valid_name(&s) {
        return Err(serde::de::Error::custom(format!(
            "webhook name `{s}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        )));
    }
    Ok(s)
}

fn url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let parsed = reqwest::Url::parse(&s)
        .map_err(|e| serde::de::Error::custom(format!("webhook url `{s}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(serde::de::Error::custom(format!(
            "webhook url `{s}` must be an http:// or https:// URL with a host"
        )));
    }
    Ok(s)
}

fn events<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for e in &list {
        if e != "*" && !EVENT_NAMES.contains(&e.as_str()) {
            return Err(serde::de::Error::custom(format!(
                "unknown webhook event `{e}`; expected `*` or one of {}",
                EVENT_NAMES.join(", ")
            )));
        }
    }
    Ok(list)
}

/// The `webhooks` list, refusing two endpoints of the same name (they would share
/// their stored deliveries).
pub fn unique<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<WebhookConfig>, D::Error> {
    let list = Vec::<WebhookConfig>::deserialize(d)?;
    for (i, w) in list.iter().enumerate() {
        if list[..i].iter().any(|o| o.name == w.name) {
            return Err(serde::de::Error::custom(format!(
                "two webhooks are named `{}`; names must be unique",
                w.name
            )));
        }
    }
    Ok(list)
}
