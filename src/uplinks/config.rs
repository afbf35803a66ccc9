//! `[[bridges]]` entries and `[mqtt.external]`: how to reach another broker and which
//! topics cross. Both are a [`LinkConfig`]. Validated while deserialised (like the rest
//! of the configuration), so a bad address or direction is reported at its line; the
//! password file is read when the daemon starts.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use switchboard_bridge::rules::{Direction, Rule};

use crate::settings::positive_duration;

/// A link to another MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Names the bridge in the API, in metrics, in its status topic and in the store:
    /// letters, digits, `-`, `_` and `.`. Not used in `[mqtt.external]`.
    #[serde(default, deserialize_with = "name")]
    pub name: String,
    /// `host:port` of the other broker.
    #[serde(deserialize_with = "address")]
    pub address: String,
    /// PEM file of the CA(s) that sign the broker's certificate; setting it turns TLS on.
    #[serde(default)]
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for brokers that want one (with `ca_file`).
    #[serde(default)]
    pub cert_file: PathBuf,
    #[serde(default)]
    pub key_file: PathBuf,
    #[serde(default)]
    pub username: String,
    /// File holding the password (never the password itself in this file).
    #[serde(default)]
    pub password_file: PathBuf,
    /// Our client id on the other broker; `switchboard-<name>` when empty.
    #[serde(default)]
    pub client_id: String,
    #[serde(default = "defaults::keep_alive", with = "positive_duration")]
    pub keep_alive: Duration,
    /// false: the broker keeps our session (subscriptions and QoS 1 messages for us)
    /// while the link is down.
    #[serde(default)]
    pub clean_session: bool,
    /// Which topics cross, and how they are renamed.
    #[serde(default)]
    pub topics: Vec<TopicRule>,
    /// Messages waiting to go out, at most; beyond it the oldest are dropped (counted).
    #[serde(default = "defaults::max_queue_messages")]
    pub max_queue_messages: NonZeroU64,
    /// Bytes of messages waiting to go out, at most (same policy).
    #[serde(default = "defaults::max_queue_bytes")]
    pub max_queue_bytes: NonZeroU64,
    /// First wait before reconnecting; doubled per failed attempt (with jitter).
    #[serde(default = "defaults::reconnect_min", with = "positive_duration")]
    pub reconnect_min: Duration,
    /// The longest wait between two attempts.
    #[serde(default = "defaults::reconnect_max", with = "positive_duration")]
    pub reconnect_max: Duration,
    /// Publishes sent and not yet acknowledged, at most.
    #[serde(default = "defaults::inflight")]
    pub inflight: NonZeroUsize,
    /// With `[cluster]`: run the bridge on one box at a time, by a lease in Redis
    /// (docs/cluster.md). false: every box that carries it runs it. Not used in
    /// `[mqtt.external]`.
    #[serde(default = "defaults::lease")]
    pub lease: bool,
}

/// `topic pattern [in|out|both] qos local-prefix remote-prefix`, as a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// MQTT filter, matched below the prefixes.
    pub pattern: String,
    /// `in`, `out` or `both`.
    #[serde(deserialize_with = "direction", serialize_with = "direction_out")]
    pub direction: Direction,
    /// 0 or 1.
    #[serde(default = "defaults::qos")]
    pub qos: u8,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

impl TopicRule {
    pub fn rule(&self) -> Rule {
        Rule {
            pattern: self.pattern.clone(),
            direction: self.direction,
            qos: self.qos,
            local_prefix: self.local_prefix.clone(),
            remote_prefix: self.remote_prefix.clone(),
        }
    }
}

impl LinkConfig {
    pub fn rules(&self) -> Vec<Rule> {
        self.topics.iter().map(TopicRule::rule).collect()
    }

    pub fn client_id(&self) -> String {
        if self.client_id.is_empty() {
            format!("switchboard-{}", self.name)
        } else {
            self.client_id.clone()
        }
    }

    /// Host and port; checked when parsed.
    pub fn host_port(&self) -> (String, u16) {
        split_address(&self.address).unwrap_or_default()
    }
}

mod defaults {
    use super::*;

    pub fn keep_alive() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_queue_messages() -> NonZeroU64 {
        NonZeroU64::new(1_000_000).unwrap_or(NonZeroU64::MIN)
    }
    pub fn max_queue_bytes() -> NonZeroU64 {
        NonZeroU64::new(256 * 1024 * 1024).unwrap_or(NonZeroU64::MIN)
    }
    pub fn reconnect_min() -> Duration {
        Duration::from_secs(1)
    }
    pub fn reconnect_max() -> Duration {
        Duration::from_secs(60)
    }
    pub fn lease() -> bool {
        true
    }
    pub fn inflight() -> NonZeroUsize {
        NonZeroUsize::new(100).unwrap_or(NonZeroUsize::MIN)
    }
    pub fn qos() -> u8 {
        1
    }
}

fn split_address(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0 && !host.contains(['/', ' '])).then(|| (host.to_owned(), port))
}

fn address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if split_address(&s).is_none() {
        return Err(serde::de::Error::custom(format!(
            "bridge address `{s}` must be host:port (for instance `broker.example.com:8883`)"
        )));
    }
    Ok(s)
}

fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    // Empty is allowed here (`[mqtt.external]` has none); `bridges` requires one.
    if !s.is_empty() && !crate::outbound_webhooks::config::is_valid_name(&s) {
        return Err(serde::de::Error::custom(format!(
            "bridge name `{s}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        )));
    }
    Ok(s)
}

fn direction<'de, D: Deserializer<'de>>(d: D) -> Result<Direction, D::Error> {
    let s = String::deserialize(d)?;
    Direction::parse(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown bridge direction `{s}`; expected `in`, `out` or `both`"
        ))
    })
}

fn direction_out<S: serde::Serializer>(d: &Direction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

/// The `bridges` list: every entry named, names unique (they share nothing on disk),
/// every rule valid.
pub fn bridges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<LinkConfig>, D::Error> {
    let list = Vec::<LinkConfig>::deserialize(d)?;
    for (i, b) in list.iter().enumerate() {
        if b.name.is_empty() {
            return Err(serde::de::Error::custom("every bridge needs a `name`"));
        }
        if list[..i].iter().any(|o| o.name == b.name) {
            return Err(serde::de::Error::custom(format!(
                "two bridges are named `{}`; names must be unique",
                b.name
            )));
        }
        rules_valid(b).map_err(serde::de::Error::custom)?;
    }
    Ok(list)
}

/// `[mqtt.external]`, with its rules checked.
pub fn external<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LinkConfig>, D::Error> {
    let link = Option::<LinkConfig>::deserialize(d)?;
    if let Some(l) = &link {
        rules_valid(l).map_err(serde::de::Error::custom)?;
    }
    Ok(link)
}

fn rules_valid(link: &LinkConfig) -> Result<(), String> {
    let who = if link.name.is_empty() {
        "mqtt.external".to_owned()
    } else {
        format!("bridge `{}`", link.name)
    };
    for rule in link.rules() {
        rule.validate().map_err(|e| format!("{who}: {e}"))?;
    }
    if link.reconnect_min > link.reconnect_max {
        return Err(format!("{who}: reconnect_min is longer than reconnect_max"));
    }
    Ok(())
}
