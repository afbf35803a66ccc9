//! `[cluster]`: several boxes as one through Redis (docs/cluster.md). Off by default.
//! URLs are parsed while the file is read, so a bad one is reported at its line;
//! whether Redis answers and takes the credentials is checked when the daemon starts.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::settings::{nz, nz32, positive_duration};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// One URL: one Redis. Several: independent Redis servers, partitions spread over
    /// them by a stable hash (client-side sharding). `rediss://` for TLS.
    #[serde(deserialize_with = "redis_urls")]
    pub redis: Vec<String>,
    /// Redis Cluster seeds (some of its nodes); when set, `redis` is not used.
    #[serde(deserialize_with = "redis_seeds")]
    pub redis_cluster: Vec<String>,
    /// This box's name on the bus; empty: the host name and the HTTP port.
    pub node_id: String,
    /// Topics are spread over this many bus streams (order is kept per topic).
    /// Every box must use the same number.
    pub partitions: NonZeroU32,
    pub ack: AckMode,
    /// A file holding the Redis password (ACL); empty: none.
    pub password_file: PathBuf,
    /// The Redis ACL user; empty: the default user.
    pub username: String,
    /// PEM CA certificate(s) that `rediss://` servers are verified against; empty: the
    /// system's roots.
    pub tls_ca_file: PathBuf,
    /// PEM client certificate and its key, for a Redis that asks for one
    /// (`tls-auth-clients`); both or neither.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    #[serde(with = "positive_duration")]
    pub connect_timeout: Duration,
    #[serde(with = "positive_duration")]
    pub command_timeout: Duration,
    /// How long a bus read waits for new entries before it proves the connection
    /// alive with an empty answer; a read that does not come back within this plus
    /// `command_timeout` restarts the reader.
    #[serde(with = "positive_duration")]
    pub probe_interval: Duration,
    /// Publishes queued in memory for one Redis, and MQTT devices' publishes kept on
    /// disk while it is unreachable (`outbox.rs`), at most.
    pub outbox_max: NonZeroUsize,
    /// Entries kept in each partition's bus stream (approximately): how far behind a
    /// box may fall, or be cut off, and still catch up without a gap.
    pub bus_keep: NonZeroU64,
    /// How long Redis keeps the numbering (meta hash) of a topic without a history
    /// rule once nobody publishes to it; afterwards it starts again under a new epoch.
    #[serde(with = "positive_duration")]
    pub topic_meta_ttl: Duration,
    /// How long a box's lease on a one-box-at-a-time job (an upstream bridge) lasts
    /// without renewal: a standby takes over within about this after the holder died.
    #[serde(with = "positive_duration")]
    pub lease_ttl: Duration,
    /// A box whose heartbeat is this old is gone: not counted, its clients dropped from
    /// other boxes' presence. It beats every third of this.
    #[serde(with = "positive_duration")]
    pub node_ttl: Duration,
}

/// When a publisher is told its message was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Once the publish script ran on the Redis primary.
    Redis,
    /// Then once at least one replica has it (`WAIT 1`).
    Wait,
    /// Then once it is fsynced to the primary's AOF (`WAITAOF 1 0`, Redis 7.2 or later).
    Waitaof,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            redis: vec!["redis://127.0.0.1:6379".into()],
            redis_cluster: Vec::new(),
            node_id: String::new(),
            partitions: nz32(16),
            ack: AckMode::Redis,
            password_file: PathBuf::new(),
            username: String::new(),
            tls_ca_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_secs(1),
            outbox_max: nz(100_000),
            bus_keep: NonZeroU64::new(100_000).unwrap_or(NonZeroU64::MIN),
            topic_meta_ttl: Duration::from_secs(24 * 3600),
            lease_ttl: Duration::from_secs(5),
            node_ttl: Duration::from_secs(15),
        }
    }
}

fn redis_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let urls = Vec::<String>::deserialize(d)?;
    if urls.is_empty() {
        return Err(serde::de::Error::custom(
            "at least one Redis URL, such as \"redis://127.0.0.1:6379\"",
        ));
    }
    check_urls(&urls)?;
    Ok(urls)
}

/// Empty: no Redis Cluster.
fn redis_seeds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let urls = Vec::<String>::deserialize(d)?;
    check_urls(&urls)?;
    Ok(urls)
}

fn check_urls<E: serde::de::Error>(urls: &[String]) -> Result<(), E> {
    use redis::IntoConnectionInfo;
    for url in urls {
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(E::custom(format!(
                "`{url}` is not a redis:// URL (nor rediss:// for TLS; unix sockets are not supported)"
            )));
        }
        if url.starts_with("rediss://") && url.contains("#insecure") {
            return Err(E::custom(format!(
                "`{url}`: certificate checks cannot be turned off; name the CA that signed the \
                 server's certificate in cluster.tls_ca_file"
            )));
        }
        url.as_str()
            .into_connection_info()
            .map_err(|e| E::custom(format!("`{url}` is not a usable Redis URL: {e}")))?;
    }
    Ok(())
}

impl ClusterConfig {
    /// The node id: the configured one, or the host name and the HTTP port.
    pub fn node_id(&self, http_port: u16) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "switchboard".into());
        format!("{host}:{http_port}")
    }
}
