//! Reading a topic's history back from Redis, to fill holes in a box's own
//! (`hub/repair.rs` decides what is needed and what may be used).
//!
//! The publish script keeps each history topic's messages in the topic's history
//! stream under ids `<seq>-0`, each with the bus position it was carried at (`bp`,
//! `be`). This file reads a range of it together with the topic's meta hash, in one
//! transaction (both share the partition's hash tag), and keeps, per partition, the
//! last bus position this box's reader delivered: a message at or below it will never
//! arrive here live.

use std::sync::{Arc, Mutex};

use redis::streams::StreamRangeReply;

use super::connect::Conn;
use super::reader::{id_number, message_of, text};
use super::{keys, Shared};
use crate::hub::{RemoteEntry, RemoteFetch, RemoteHistory, RemoteRange};
use crate::store::StoredMessage;

/// A topic's meta hash: its epoch and last number.
type Meta = (Option<String>, Option<u64>);

/// What repairs share: the readers' positions and a connection per Redis.
pub(super) struct Repair {
    /// Per partition: the bus epoch and the last position delivered on this box.
    delivered: Vec<Mutex<(String, u64)>>,
    /// Per Redis: a connection for history reads, made when first needed.
    conns: Vec<tokio::sync::Mutex<Option<Conn>>>,
}

impl Repair {
    pub(super) fn new(partitions: u32, shards: usize) -> Repair {
        Repair {
            delivered: (0..partitions).map(|_| Mutex::default()).collect(),
            conns: (0..shards).map(|_| tokio::sync::Mutex::default()).collect(),
        }
    }

    /// Called by the reader once it delivered (or, at its start, passed) `position`.
    pub(super) fn passed(&self, partition: u32, epoch: Option<&str>, position: u64) {
        if let Some(d) = self.delivered.get(partition as usize) {
            let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
            if d.0 != epoch.unwrap_or_default() {
                d.0 = epoch.unwrap_or_default().to_owned();
            }
            d.1 = position;
        }
    }

    pub(super) fn delivered(&self, partition: u32) -> Option<(String, u64)> {
        let d = self.delivered.get(partition as usize)?;
        Some(d.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Reads `range` of the topic's history stream and its meta hash; `None` when Redis
/// has no meta for the topic.
pub(super) fn fetch(shared: Arc<Shared>, range: RemoteRange) -> RemoteFetch {
    Box::pin(async move {
        let timeout = shared.config.command_timeout;
        shared.stats.history_reads.add(1);
        let answer = match tokio::time::timeout(timeout, read(&shared, &range)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("Redis did not answer within {timeout:?}")),
        };
        if answer.is_err() {
            shared.stats.history_read_failures.add(1);
        }
        answer
    })
}

async fn read(shared: &Shared, range: &RemoteRange) -> Result<Option<RemoteHistory>, String> {
    let partition = keys::partition(&range.topic, shared.config.partitions.get());
    let shard = keys::shard(partition, shared.shards.len());
    let target = &shared.shards[shard];
    if !shared
        .stats
        .reachable
        .get(shard)
        .is_some_and(|r| r.load(std::sync::atomic::Ordering::Relaxed))
    {
        // Not worth a connect timeout per request: the local answer stands meanwhile.
        return Err(format!("Redis {} is unreachable", target.addr));
    }
    let mut conn = {
        let mut slot = shared.repair.conns[shard].lock().await;
        match &*slot {
            Some(c) => c.clone(),
            None => slot
                .insert(
                    target
                        .connect(shared.config.connect_timeout)
                        .await
                        .map_err(|e| format!("Redis {}: {e}", target.addr))?,
                )
                .clone(),
        }
    };
    let from = (range.after + 1).to_string();
    let to = range.upto.map_or("+".to_owned(), |u| u.to_string());
    let hist = keys::topic_history(partition, &range.topic);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HMGET")
        .arg(keys::topic_meta(partition, &range.topic))
        .arg("e")
        .arg("s");
    if range.oldest_first {
        pipe.cmd("XRANGE").arg(&hist).arg(&from).arg(&to);
    } else {
        pipe.cmd("XREVRANGE").arg(&hist).arg(&to).arg(&from);
    }
    pipe.arg("COUNT").arg(range.count);
    let answer: redis::RedisResult<(Meta, StreamRangeReply)> = pipe.query_async(&mut conn).await;
    let ((epoch, last), reply) = match answer {
        Ok(a) => a,
        Err(e) => {
            if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                *shared.repair.conns[shard].lock().await = None;
            }
            return Err(format!("Redis {}: {e}", target.addr));
        }
    };
    let Some(epoch) = epoch else {
        return Ok(None);
    };
    let mut entries = Vec::with_capacity(reply.ids.len());
    for entry in reply.ids {
        let Some(seq) = id_number(&entry.id) else {
            continue;
        };
        let map = &entry.map;
        let (Some(m), Some(bus_epoch), Some(bus_position)) = (
            message_of(map),
            text(map, "be"),
            text(map, "bp").and_then(|p| p.parse().ok()),
        ) else {
            // Written before entries carried their bus position: not usable.
            continue;
        };
        let ts_ms: u64 = text(map, "ts").and_then(|t| t.parse().ok()).unwrap_or(0);
        entries.push(RemoteEntry {
            message: StoredMessage {
                topic: m.topic,
                event: m.event,
                data: m.data,
                ts_us: ts_ms.saturating_mul(1000),
                seq,
                from: m.from,
                origin: m.origin,
            },
            bus_epoch,
            bus_position,
        });
    }
    Ok(Some(RemoteHistory {
        epoch,
        last: last.unwrap_or(0),
        entries,
    }))
}
