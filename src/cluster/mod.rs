//! Several boxes as one, through Redis (`[cluster]`, docs/cluster.md).
//!
//! Owns the Redis connections, the publish script and the bus readers; attaches to the
//! Hub as its [`Bus`], so every way in (WebSocket, REST, HTTP carried over WebSocket,
//! MQTT devices, bridges, replays) reaches the bus at the Hub's one publish path.
//! Redis Streams are the bus, not PUB/SUB: a reader that reconnects resumes from its
//! last position instead of losing what was published meanwhile. Files:
//! - `publish.rs`: the script that numbers a message and appends it, sent in batches;
//! - `reader.rs`: every box reads every partition back and delivers it, gaps reported;
//! - `generation.rs`: new epochs when a Redis restart may have rolled numbers back;
//! - `repair.rs`: reading a topic's history back, to fill holes in a box's own;
//! - `lease.rs`: one box at a time (upstream bridges), by a lease with failover;
//! - `outbox.rs`: MQTT devices' publishes waiting on disk while Redis is unreachable;
//! - `retained.rs`: retained values kept in Redis, loaded by a box that starts later;
//! - `nodes.rs`: each box's heartbeat, and the list of live boxes;
//! - `presence.rs`: presence members of every box, dropped with a dead box;
//! - `direct.rs`: direct messages to clients and users on other boxes;
//! - `keys.rs`: topic → partition → Redis, and the key names;
//! - `connect.rs`: reaching a Redis or a Redis Cluster: URL, ACL credentials, TLS;
//! - `config.rs`: the `[cluster]` section.
//!
//! It never touches a socket of a client, the store or the history: delivery is the
//! Hub's, and what it holds is in Redis.

pub mod config;
pub mod connect;
mod direct;
mod generation;
pub mod keys;
pub mod lease;
pub mod nodes;
mod outbox;
mod presence;
mod publish;
mod reader;
mod repair;
mod retained;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::history::HistoryConfig;
use crate::hub::{Ack, Bus, BusMessage, Hub};
use crate::metrics::{Snapshot, Source};
use crate::store::Store;
use config::ClusterConfig;
use connect::{refused, Target};
use publish::Job;
use switchboard_core::protocol::{Member, Recipient};

/// What the writers and readers share.
struct Shared {
    config: ClusterConfig,
    node_id: String,
    history: HistoryConfig,
    shards: Vec<Target>,
    script_hash: String,
    stats: Stats,
    repair: repair::Repair,
    generation: generation::Generations,
    nodes: nodes::Registry,
    presence: presence::Presence,
}

/// Counters of the bus; shown at /metrics.
#[derive(Default)]
struct Stats {
    /// Per Redis: did the last command or connect succeed.
    reachable: Vec<AtomicBool>,
    published: Count,
    failed: Count,
    dropped: Count,
    gaps: Count,
    malformed: Count,
    reader_restarts: Count,
    /// Topic history ranges read back from Redis (`repair.rs`), and those that failed.
    history_reads: Count,
    history_read_failures: Count,
    /// Per Redis: devices' publishes waiting in its outbox.
    outbox: Vec<AtomicU64>,
    /// Per partition: ms between a message's entry on the bus and this box reading it.
    lag_ms: Vec<AtomicU64>,
}

#[derive(Default)]
struct Count(AtomicU64);

impl Count {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Stats {
    fn set_reachable(&self, shard: usize, up: bool) {
        if let Some(r) = self.reachable.get(shard) {
            r.store(up, Ordering::Relaxed);
        }
    }

    fn outbox(&self, shard: usize, depth: usize) {
        if let Some(o) = self.outbox.get(shard) {
            o.store(depth as u64, Ordering::Relaxed);
        }
    }

    fn outbox_depth(&self) -> u64 {
        self.outbox.iter().map(|o| o.load(Ordering::Relaxed)).sum()
    }

    fn lag(&self, partition: u32, ms: u64) {
        if let Some(l) = self.lag_ms.get(partition as usize) {
            l.store(ms, Ordering::Relaxed);
        }
    }
}

/// The running cluster link of this box.
pub struct Cluster {
    shared: Arc<Shared>,
    writers: Vec<mpsc::Sender<Job>>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    hub: Arc<Hub>,
    forgets: mpsc::Sender<retained::Forget>,
    direct: mpsc::Sender<direct::Outgoing>,
}

impl Cluster {
    /// Reaches every configured Redis (so a wrong URL, an unreachable server or refused
    /// credentials stop the daemon at startup with the reason), loads the publish
    /// script, starts the writers and the bus readers, and attaches the bus to the Hub.
    pub async fn start(
        config: &ClusterConfig,
        node_id: String,
        history: HistoryConfig,
        store: &Store,
        hub: &Arc<Hub>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut shards = Vec::new();
        let mut conns = Vec::new();
        let mut script_hash = String::new();
        for target in connect::targets(config)? {
            let mut conn = target
                .connect(config.connect_timeout)
                .await
                .map_err(|e| refused(&target.addr, e))?;
            let pong: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| refused(&target.addr, e))?;
            tracing::debug!(redis = %target.addr, %pong, "cluster: Redis answers");
            script_hash = publish::load_script(&mut conn)
                .await
                .map_err(|e| refused(&target.addr, e))?;
            shards.push(target);
            conns.push(conn);
        }
        let partitions = config.partitions.get();
        let shared = Arc::new(Shared {
            config: config.clone(),
            node_id,
            history,
            stats: Stats {
                reachable: shards.iter().map(|_| AtomicBool::new(true)).collect(),
                outbox: shards.iter().map(|_| AtomicU64::new(0)).collect(),
                lag_ms: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
                ..Stats::default()
            },
            repair: repair::Repair::new(partitions, shards.len()),
            generation: generation::Generations::new(shards.len()),
            shards,
            script_hash,
            nodes: nodes::Registry::default(),
            presence: presence::Presence::default(),
        });
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut writers = Vec::new();
        let mut readies = Vec::new();
        for (shard, conn) in conns.iter_mut().enumerate() {
            // Where this box starts reading, before its writer can publish anything
            // (its outbox included), so all it publishes is delivered here too.
            let mine: Vec<u32> = (0..partitions)
                .filter(|p| keys::shard(*p, shared.shards.len()) == shard)
                .collect();
            let cursors = reader::start_at(conn, &shared, shard, &mine, hub)
                .await
                .map_err(|e| refused(&shared.shards[shard].addr, e))?;
            let (tx, rx) = mpsc::channel(config.outbox_max.get());
            writers.push(tx);
            let outbox = outbox::Outbox::open(store, shard, config.outbox_max.get())
                .context("cannot open the cluster's outbox in the store")?;
            tasks.push(tokio::spawn(publish::write_loop(
                shared.clone(),
                shard,
                rx,
                outbox,
                stop.clone(),
            )));
            // On a Redis Cluster one read cannot span slots: a reader per partition.
            let readers: Vec<(Vec<u32>, Vec<reader::Cursor>)> = if shared.shards[shard].is_cluster()
            {
                mine.into_iter()
                    .zip(cursors)
                    .map(|(p, c)| (vec![p], vec![c]))
                    .collect()
            } else if mine.is_empty() {
                Vec::new()
            } else {
                vec![(mine, cursors)]
            };
            for (mine, cursors) in readers {
                let (ready, loaded) = oneshot::channel();
                readies.push(loaded);
                tasks.push(tokio::spawn(reader::read_loop(
                    shared.clone(),
                    shard,
                    mine,
                    cursors,
                    hub.clone(),
                    stop.clone(),
                    ready,
                )));
            }
        }
        tasks.push(tokio::spawn(nodes::beat_loop(
            shared.clone(),
            hub.clone(),
            switchboard_core::clock::now_ms(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(presence::write_loop(
            shared.clone(),
            hub.clone(),
            format!("{:016x}", rand::random::<u64>()),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(presence::read_loop(
            shared.clone(),
            hub.clone(),
            stop.clone(),
        )));
        let (direct, outgoing) = mpsc::channel(direct::QUEUE);
        tasks.push(tokio::spawn(direct::write_loop(
            shared.clone(),
            outgoing,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(direct::read_loop(
            shared.clone(),
            hub.clone(),
            stop.clone(),
        )));
        // Serve once the retained values are loaded, so the first subscribers get them.
        let patience = config.connect_timeout + config.command_timeout;
        if tokio::time::timeout(patience, futures_util::future::join_all(readies))
            .await
            .is_err()
        {
            tracing::warn!(
                "cluster: retained values not loaded within {patience:?}; serving, they follow"
            );
        }
        tracing::info!(
            node = %shared.node_id,
            redis = %shared.shards.iter().map(|s| s.addr.as_str()).collect::<Vec<_>>().join(","),
            partitions,
            "cluster: on"
        );
        let (forgets, queued) = mpsc::channel(retained::FORGET_QUEUE);
        tasks.push(tokio::spawn(retained::forget_loop(
            shared.clone(),
            queued,
            stop.clone(),
        )));
        let cluster = Arc::new(Self {
            forgets,
            shared,
            writers,
            stop,
            tasks: Mutex::new(tasks),
            hub: hub.clone(),
            direct,
        });
        hub.set_bus(cluster.clone());
        Ok(cluster)
    }

    /// Stops the writers and readers and waits for them; publishes still queued fail.
    pub async fn stop(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Whether every Redis answered its last command.
    pub fn reachable(&self) -> bool {
        self.shared
            .stats
            .reachable
            .iter()
            .all(|r| r.load(Ordering::Relaxed))
    }

    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// This box's HTTP address, for its heartbeat (known once the listener is bound).
    pub fn set_http(&self, addr: String) {
        self.shared.nodes.set_http(addr);
    }

    /// The boxes whose heartbeat is live (this one included while Redis answers).
    pub fn nodes(&self) -> Vec<nodes::NodeInfo> {
        let s = &self.shared;
        s.nodes.live(
            &s.node_id,
            s.config.node_ttl,
            switchboard_core::clock::now_ms(),
        )
    }

    /// The cluster's health as `/healthz` and `/api/v1/info` show it.
    pub fn health(&self) -> serde_json::Value {
        let st = &self.shared.stats;
        serde_json::json!({
            "node": self.shared.node_id,
            "redis_reachable": self.reachable(),
            "nodes_seen": self.nodes().len(),
            "gaps": st.gaps.get() + self.hub.bus_gaps(),
            "publish_failures": st.failed.get(),
            "mqtt_dropped": st.dropped.get(),
            "outbox": st.outbox_depth(),
            "bus_lag_ms_max": st.lag_ms.iter().map(|l| l.load(Ordering::Relaxed)).max().unwrap_or(0),
        })
    }
}

impl Bus for Cluster {
    fn history(&self, range: crate::hub::RemoteRange) -> Option<crate::hub::RemoteFetch> {
        Some(repair::fetch(self.shared.clone(), range))
    }

    fn delivered(&self, topic: &str) -> Option<(String, u64)> {
        let partition = keys::partition(topic, self.shared.config.partitions.get());
        self.shared.repair.delivered(partition)
    }

    fn submit(&self, message: BusMessage) -> Ack {
        let (reply, ack) = oneshot::channel();
        let partition = keys::partition(&message.topic, self.shared.config.partitions.get());
        let shard = keys::shard(partition, self.writers.len());
        let job = Job {
            id: publish::retry_id(&message),
            message,
            partition,
            reply,
        };
        if let Err(e) = self.writers[shard].try_send(job) {
            let (job, why) = match e {
                mpsc::error::TrySendError::Full(job) => (
                    job,
                    "the cluster's publish queue is full (cluster.outbox_max)",
                ),
                mpsc::error::TrySendError::Closed(job) => (job, "the cluster link stopped"),
            };
            if job.message.acked {
                self.shared.stats.failed.add(1);
            } else {
                self.shared.stats.dropped.add(1);
            }
            let _ = job.reply.send(Err(why.into()));
        }
        ack
    }

    fn forget_retained(&self, topic: &str, epoch: &str, seq: u64) {
        let _ = self.forgets.try_send(retained::Forget {
            topic: topic.to_owned(),
            epoch: epoch.to_owned(),
            seq,
        });
    }

    fn presence_changed(&self, topic: &str, member: &Member<'_>, joined: bool) {
        self.shared.presence.changed(topic, member, joined);
    }

    fn direct(&self, to: &Recipient, may_send_to: Option<&[String]>, frame: &str) {
        let m = direct::Outgoing::new(to, may_send_to, frame);
        if self.direct.try_send(m).is_err() {
            static FULL: switchboard_core::quiet::Throttle =
                switchboard_core::quiet::Throttle::per_secs(10);
            if let Some(held_back) = FULL.admit() {
                tracing::warn!(
                    held_back,
                    "cluster: direct messages for other boxes dropped: Redis is behind"
                );
            }
        }
    }

    fn remote_members(&self, topic: &str) -> Vec<(String, Member<'static>)> {
        self.shared.presence.members(topic)
    }
}

/// The cluster link (`[cluster]`), shown only when it is on.
impl Source for Cluster {
    fn collect(&self, s: &mut Snapshot) {
        let st = &self.shared.stats;
        s.gauge(
            "cluster_redis_reachable",
            "1 when every Redis of the cluster answered its last command.",
            u64::from(self.reachable()),
        );
        s.counter(
            "cluster_published",
            "Messages Redis took onto the bus from this box.",
            st.published.get(),
        );
        s.counter(
            "cluster_publish_failures",
            "Publishes refused to their publisher because Redis did not take them.",
            st.failed.get(),
        );
        s.counter(
            "cluster_mqtt_dropped",
            "MQTT device publishes (already acknowledged) lost: the outbox was full (cluster.outbox_max).",
            st.dropped.get(),
        );
        s.gauge(
            "cluster_outbox",
            "MQTT device publishes waiting on disk for Redis to answer again.",
            st.outbox_depth(),
        );
        s.counter(
            "cluster_gaps",
            "Gaps detected: bus positions skipped or lost, topic numbers skipped or restarted.",
            st.gaps.get() + self.hub.bus_gaps(),
        );
        s.counter(
            "cluster_reader_restarts",
            "Bus reader connections dropped and made again (errors, stalls).",
            st.reader_restarts.get(),
        );
        s.counter(
            "cluster_history_reads",
            "Topic history ranges read from Redis to fill holes in this box's history or find a topic's position.",
            st.history_reads.get(),
        );
        s.counter(
            "cluster_history_read_failures",
            "Of those, reads Redis did not answer (the box answered from its own history).",
            st.history_read_failures.get(),
        );
        s.counter(
            "cluster_malformed",
            "Bus entries skipped because this box could not read them.",
            st.malformed.get(),
        );
        s.gauge(
            "cluster_nodes_seen",
            "Boxes whose heartbeat in Redis is live (cluster.node_ttl), this one included.",
            self.nodes().len() as u64,
        );
        s.gauges(
            "cluster_bus_lag_ms",
            "Per partition: ms from a message's entry on the bus to this box reading it (last read).",
            "partition",
            st.lag_ms
                .iter()
                .enumerate()
                .map(|(p, l)| (p.to_string(), l.load(Ordering::Relaxed))),
        );
    }
}
