//! Which boxes are alive: each box announces itself in Redis with a TTL and reads
//! everyone's announcements back.
//!
//! A box's heartbeat is one key, `sb:{nodes}:n:<id>`, holding what it is (JSON), set
//! with `PX node_ttl` every third of that TTL, and its id in the set `sb:{nodes}`. The
//! TTL is kept by Redis's clock, not the boxes', so clocks that disagree do not make a
//! box look dead or alive; a box that dies (SIGKILL, cut off) stops renewing and its key
//! expires `node_ttl` after its last beat at most. Ids whose key is gone are removed from
//! the set by whichever box reads it next. Both keys share the hash tag `{nodes}`, and
//! live on the first Redis when there are several.
//!
//! Each beat also reads the live list; `/api/v1/cluster/nodes`, `nodes_seen` and the
//! dashboard show that copy, so none of them waits on Redis.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::connect::Conn;
use super::Shared;
use crate::hub::Hub;
use switchboard_core::quiet::Throttle;

/// The set of announced node ids.
pub const SET: &str = "sb:{nodes}";

/// A node's heartbeat key.
pub fn key(node: &str) -> String {
    format!("sb:{{nodes}}:n:{node}")
}

/// What a box says about itself in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub node: String,
    /// Its HTTP listener, as it bound it (empty until bound).
    #[serde(default)]
    pub http: String,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    pub version: String,
    /// WebSocket and HTTP-over-WebSocket connections on it, at its last beat.
    pub clients: u64,
    /// When it last beat, by its own clock (ms).
    pub beat_at: u64,
}

/// This box's copy of the live list.
#[derive(Default)]
pub struct Registry {
    http: Mutex<String>,
    /// Beats at once when the HTTP address becomes known.
    changed: tokio::sync::Notify,
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    nodes: Vec<NodeInfo>,
    /// When the list was read (ms, this box's clock); 0: never.
    read_at: u64,
}

impl Registry {
    pub fn set_http(&self, addr: String) {
        *self.http.lock().unwrap_or_else(|p| p.into_inner()) = addr;
        self.changed.notify_one();
    }

    /// The live nodes, sorted by id. A list not read again within `ttl` (Redis
    /// unreachable) is no evidence of anyone but this box.
    pub fn live(&self, me: &str, ttl: Duration, now_ms: u64) -> Vec<NodeInfo> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.read_at > 0 && now_ms.saturating_sub(live.read_at) < ttl.as_millis() as u64 {
            return live.nodes.clone();
        }
        live.nodes
            .iter()
            .filter(|n| n.node == me)
            .cloned()
            .collect()
    }
}

/// Beats every third of `node_ttl` until stopped; on stop, removes this box's key so
/// the others see it gone at once.
pub(super) async fn beat_loop(
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    started_at: u64,
    stop: CancellationToken,
) {
    let every = shared.config.node_ttl / 3;
    let mut conn: Option<Conn> = None;
    static DOWN: Throttle = Throttle::per_secs(10);
    loop {
        if conn.is_none() {
            conn = shared.shards[0]
                .connect(shared.config.connect_timeout)
                .await
                .ok();
        }
        if let Some(c) = conn.as_mut() {
            let me = NodeInfo {
                node: shared.node_id.clone(),
                http: shared
                    .nodes
                    .http
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                started_at,
                version: env!("CARGO_PKG_VERSION").into(),
                clients: hub.stats().connections as u64,
                beat_at: switchboard_core::clock::now_ms(),
            };
            let beat = tokio::time::timeout(
                shared.config.command_timeout,
                beat(c, &me, shared.config.node_ttl),
            )
            .await;
            match beat {
                Ok(Ok(nodes)) => {
                    *shared.nodes.live.lock().unwrap_or_else(|p| p.into_inner()) = Live {
                        nodes,
                        read_at: switchboard_core::clock::now_ms(),
                    };
                }
                Ok(Err(e)) => {
                    conn = None;
                    if let Some(held_back) = DOWN.admit() {
                        tracing::warn!(error = %e, held_back, "cluster: heartbeat failed");
                    }
                }
                Err(_) => {
                    conn = None;
                    if let Some(held_back) = DOWN.admit() {
                        tracing::warn!(held_back, "cluster: heartbeat timed out");
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
            _ = shared.nodes.changed.notified() => {}
        }
    }
    if let Some(c) = conn.as_mut() {
        let mut gone = redis::pipe();
        gone.del(key(&shared.node_id)).srem(SET, &shared.node_id);
        let _ =
            tokio::time::timeout(shared.config.command_timeout, gone.query_async::<()>(c)).await;
    }
}

/// Announces `me` and reads the live list back.
async fn beat(c: &mut Conn, me: &NodeInfo, ttl: Duration) -> redis::RedisResult<Vec<NodeInfo>> {
    let text = serde_json::to_string(me).unwrap_or_default();
    let (ids,): (Vec<String>,) = redis::pipe()
        .cmd("SET")
        .arg(key(&me.node))
        .arg(text)
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .ignore()
        .sadd(SET, &me.node)
        .ignore()
        .smembers(SET)
        .query_async(c)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| key(id)).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(c).await?;
    let mut nodes = Vec::new();
    let mut gone = Vec::new();
    for (id, value) in ids.iter().zip(values) {
        match value.and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok()) {
            Some(n) => nodes.push(n),
            None => gone.push(id.clone()),
        }
    }
    if !gone.is_empty() {
        redis::cmd("SREM")
            .arg(SET)
            .arg(&gone)
            .query_async::<()>(c)
            .await?;
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}
