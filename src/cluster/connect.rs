//! How a box reaches its Redis servers: the URL, the ACL credentials and TLS, and
//! whether they are independent servers or one Redis Cluster.
//!
//! Everything here is read and checked before any connection is made, so
//! `check-config` catches an unreadable password, a CA file without a certificate or a
//! client certificate without its key, and the daemon refuses them at startup with the
//! key to fix. TLS is rustls (the `redis` crate's `tokio-rustls-comp`), verified
//! against `tls_ca_file` when set, else the system's roots; there is no way to turn
//! verification off.
//!
//! A Redis Cluster is one [`Target`]: its client follows `MOVED`/`ASK` and finds the
//! primaries from the seeds. Each partition's keys share one hash tag (`keys.rs`), so a
//! publish script and a bus read touch one slot; [`Conn`] hides which kind a caller has.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    ClientTlsConfig, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture,
    TlsCertificates, Value,
};

use super::config::ClusterConfig;

/// One Redis server: where it is (for logs: never the password) and how to reach it.
pub(super) struct Target {
    client: Client,
    pub addr: String,
}

enum Client {
    One(redis::Client),
    Cluster(ClusterClient),
}

/// A connection to one Redis, or to a Redis Cluster (commands routed by their keys).
/// Every `connect` makes a new one: a blocking bus read must not hold up anything else.
#[derive(Clone)]
pub(super) enum Conn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Target {
    pub async fn connect(&self, timeout: Duration) -> Result<Conn, redis::RedisError> {
        let made = match &self.client {
            Client::One(c) => tokio::time::timeout(timeout, c.get_multiplexed_async_connection())
                .await
                .map(|c| c.map(Conn::One)),
            Client::Cluster(c) => tokio::time::timeout(timeout, c.get_async_connection())
                .await
                .map(|c| c.map(Conn::Cluster)),
        };
        made.unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "connect timed out",
            )))
        })
    }

    /// A Redis Cluster: a pipeline must stay within one slot, and each partition needs
    /// a reader of its own.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }
}

/// Every configured Redis, with its credentials and TLS settings read from their files.
pub fn check(config: &ClusterConfig) -> anyhow::Result<()> {
    targets(config).map(|_| ())
}

pub(super) fn targets(config: &ClusterConfig) -> anyhow::Result<Vec<Target>> {
    let password = secret(&config.password_file)?;
    let tls = tls_files(config)?;
    if !config.redis_cluster.is_empty() {
        return Ok(vec![redis_cluster(config, password, tls)?]);
    }
    config
        .redis
        .iter()
        .map(|url| {
            let mut info = url
                .as_str()
                .into_connection_info()
                .with_context(|| format!("cluster.redis: `{url}` is not a usable Redis URL"))?;
            if password.is_some() {
                info.redis.password = password.clone();
            }
            if !config.username.is_empty() {
                info.redis.username = Some(config.username.clone());
            }
            let addr = info.addr.to_string();
            let is_tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
            let client = match (&tls, is_tls) {
                (Some(certs), true) => redis::Client::build_with_tls(info, certs.clone())
                    .with_context(|| format!("cluster: TLS settings for `{addr}`"))?,
                (Some(_), false) => anyhow::bail!(
                    "cluster.redis: `{addr}` is a plain redis:// URL but cluster.tls_* files are \
                     set: use rediss:// to reach it over TLS"
                ),
                (None, _) => {
                    redis::Client::open(info).with_context(|| format!("cluster.redis: `{addr}`"))?
                }
            };
            Ok(Target {
                client: Client::One(client),
                addr,
            })
        })
        .collect()
}

/// One client for the whole Redis Cluster, reached through its seeds.
fn redis_cluster(
    config: &ClusterConfig,
    password: Option<String>,
    tls: Option<TlsCertificates>,
) -> anyhow::Result<Target> {
    let seeds = &config.redis_cluster;
    let all_tls = seeds.iter().all(|u| u.starts_with("rediss://"));
    if !all_tls && seeds.iter().any(|u| u.starts_with("rediss://")) {
        anyhow::bail!("cluster.redis_cluster: the seeds are all rediss:// or all redis://");
    }
    let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(config.connect_timeout)
        // A bus read blocks up to `probe_interval`; the callers time out themselves.
        .response_timeout(config.probe_interval + config.command_timeout);
    if let Some(password) = password {
        builder = builder.password(password);
    }
    if !config.username.is_empty() {
        builder = builder.username(config.username.clone());
    }
    match (tls, all_tls) {
        (Some(certs), true) => builder = builder.certs(certs),
        (Some(_), false) => anyhow::bail!(
            "cluster.redis_cluster: the seeds are plain redis:// URLs but cluster.tls_* files \
             are set: use rediss:// to reach them over TLS"
        ),
        (None, _) => {}
    }
    let client = builder
        .build()
        .context("cluster.redis_cluster: the seeds")?;
    // Host and port only: a seed URL may hold a password.
    let addr = seeds
        .iter()
        .filter_map(|u| u.as_str().into_connection_info().ok())
        .map(|i| i.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Target {
        client: Client::Cluster(client),
        addr: format!("{addr} (Redis Cluster)"),
    })
}

/// The password file's text without its line end; `None` when no file is set.
fn secret(path: &Path) -> anyhow::Result<Option<String>> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cluster.password_file {}", path.display()))?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// The CA and the client certificate and key, checked as PEM; `None` when none is set
/// (a rediss:// URL is then verified against the system's roots).
fn tls_files(config: &ClusterConfig) -> anyhow::Result<Option<TlsCertificates>> {
    let set = |p: &Path| !p.as_os_str().is_empty();
    let (ca, cert, key) = (
        &config.tls_ca_file,
        &config.tls_cert_file,
        &config.tls_key_file,
    );
    if set(cert) != set(key) {
        anyhow::bail!(
            "cluster.tls_cert_file and cluster.tls_key_file go together (a client certificate \
             needs its key)"
        );
    }
    if !set(ca) && !set(cert) {
        return Ok(None);
    }
    let root_cert = if set(ca) {
        crate::tls::load_certs(ca).context("cluster.tls_ca_file")?;
        Some(std::fs::read(ca).context("cluster.tls_ca_file")?)
    } else {
        None
    };
    let client_tls = if set(cert) {
        crate::tls::load_certs(cert).context("cluster.tls_cert_file")?;
        crate::tls::load_key(key).context("cluster.tls_key_file")?;
        Some(ClientTlsConfig {
            client_cert: std::fs::read(cert).context("cluster.tls_cert_file")?,
            client_key: std::fs::read(key).context("cluster.tls_key_file")?,
        })
    } else {
        None
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A startup failure with what the operator must fix.
pub(super) fn refused(addr: &str, e: redis::RedisError) -> anyhow::Error {
    let text = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("NOAUTH")
        || text.contains("WRONGPASS")
    {
        anyhow::anyhow!(
            "cluster: Redis at {addr} refused the credentials (cluster.username, cluster.password_file): {text}"
        )
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        anyhow::anyhow!(
            "cluster: Redis at {addr} showed a TLS certificate that does not name that host \
             (use the name its certificate holds in the rediss:// URL): {text}"
        )
    } else if text.contains("invalid peer certificate") {
        anyhow::anyhow!(
            "cluster: Redis at {addr} showed a TLS certificate this box does not trust \
             (cluster.tls_ca_file names the CA that signed it): {text}"
        )
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        anyhow::anyhow!(
            "cluster: Redis at {addr} asks for a TLS client certificate \
             (cluster.tls_cert_file, cluster.tls_key_file): {text}"
        )
    } else {
        anyhow::anyhow!("cluster: cannot reach Redis at {addr}: {text}")
    }
}
