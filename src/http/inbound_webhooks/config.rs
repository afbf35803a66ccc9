//! The `[[hooks]]` configuration: one entry per inbound hook. Validated while it is
//! deserialised, like the rest of the configuration, so a bad name or topic is reported
//! with its line and column. The secret files are read later, when the daemon starts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// One inbound hook: where it is reached, how its sender signs, where bodies go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The URL segment: the hook is `POST /hooks/<name>`.
    pub name: HookName,
    /// Where request bodies are published.
    pub topic: HookTopic,
    /// A file holding the shared secret; re-read on SIGHUP.
    pub secret_file: PathBuf,
    /// How the sender signs: `github` or `standard` (Standard Webhooks).
    pub signature: Scheme,
    /// `standard` only: how far `webhook-timestamp` may be from now; also how long a
    /// `webhook-id` is remembered to refuse replays.
    #[serde(
        default = "default_tolerance",
        with = "crate::settings::positive_duration"
    )]
    pub tolerance: Duration,
    /// The `event` of every published message, unless `event_header` gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// A request header whose value becomes the `event` (`X-GitHub-Event`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "header_name"
    )]
    pub event_header: Option<String>,
    /// Publish as the topic's retained value.
    #[serde(default)]
    pub retain: bool,
}

/// Signature schemes an inbound hook accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
    Github,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Standard,
}

impl Scheme {
    /// The name as it is written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Github => "github",
            Scheme::Standard => "standard",
        }
    }
}

fn default_tolerance() -> Duration {
    Duration::from_secs(5 * 60)
}

/// Longest hook name; it is a URL segment and a label in `/healthz`.
const MAX_NAME_LEN: usize = 64;

/// A hook name: letters, digits, `-` and `_`, so it needs no escaping in a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct HookName(String);

impl HookName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for HookName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let valid_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if s.is_empty() || s.len() > MAX_NAME_LEN || !valid_chars {
            return Err(serde::de::Error::custom(format!(
                "invalid hook name `{s}`: use 1 to {MAX_NAME_LEN} letters, digits, `-` or `_`"
            )));
        }
        Ok(HookName(s))
    }
}

/// The topic a hook publishes to: a concrete topic, and not a `$` topic, which only
/// the server publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HookTopic(String);

impl HookTopic {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for HookTopic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        switchboard_core::topic::validate_topic(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid hook topic `{s}`: {e}")))?;
        if s.starts_with('$') {
            return Err(serde::de::Error::custom(format!(
                "invalid hook topic `{s}`: `$` topics are published by the server only"
            )));
        }
        Ok(HookTopic(s))
    }
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    axum::http::HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an HTTP header name")))?;
    Ok(Some(s))
}

/// The whole `[[hooks]]` list: each entry valid, and no name twice (one URL, one hook).
pub fn unique_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HookConfig>, D::Error> {
    let hooks = Vec::<HookConfig>::deserialize(d)?;
    for (i, hook) in hooks.iter().enumerate() {
        if hooks[..i].iter().any(|h| h.name == hook.name) {
            return Err(serde::de::Error::custom(format!(
                "hook name `{}` is used twice; each hook needs its own name",
                hook.name.as_str()
            )));
        }
    }
    Ok(hooks)
}
