//! The way off the bus: every box reads every partition and delivers what it reads.
//!
//! One reader per Redis, on a connection of its own (a blocking `XREAD` would hold up
//! every publish sharing it), reads all that Redis's partitions with one
//! `XREAD BLOCK` from the last position it delivered, so a reconnect resumes exactly
//! where it stopped. Positions are checked, never trusted: Redis answers a read past a
//! trimmed position with the next surviving entry and no error, so a position that
//! skips ahead is a gap; a bus whose epoch changed (Redis lost its data) is a gap of
//! unknown size, read from its start. Gaps reach clients as `lagged` (`Hub::bus_gap`).
//!
//! Liveness: each read blocks for at most `probe_interval`, so a healthy connection
//! answers (if only with nothing) at least that often; a read that has not answered
//! within that plus `command_timeout` (Redis stalled, the network cut silently) drops
//! the connection and starts again from the last position.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamReadReply;
use redis::Value;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::connect::Conn;
use super::{keys, Shared};
use crate::hub::{AsSent, BusMessage, FromBus, Hub};
use switchboard_core::message::Origin;
use switchboard_core::quiet::Throttle;

/// Entries taken per read at most.
const COUNT: usize = 512;

/// Where the reader is in one partition's bus stream.
#[derive(Default)]
pub(super) struct Cursor {
    /// The bus stream's epoch, once known.
    epoch: Option<String>,
    /// The last position delivered (0: none).
    last: u64,
    /// Retained values to load again from Redis (`retained.rs`): at startup, and after
    /// a gap, which may have carried retained messages this box never read.
    stale_retained: bool,
}

/// Where the readers of `partitions` start: each bus stream's end, taken while the box
/// starts (`Cluster::start`), before it can take a publish of its own, so everything
/// published once it serves is delivered here too.
pub(super) async fn start_at(
    conn: &mut Conn,
    shared: &Shared,
    shard: usize,
    partitions: &[u32],
    hub: &Hub,
) -> redis::RedisResult<Vec<Cursor>> {
    super::generation::claim(conn, shared, shard, partitions).await?;
    let mut cursors: Vec<Cursor> = partitions
        .iter()
        .map(|_| Cursor {
            stale_retained: true,
            ..Cursor::default()
        })
        .collect();
    sync_epochs(conn, partitions, &mut cursors, false, hub, shared).await?;
    Ok(cursors)
}

/// Reads `partitions` from `cursors` ([`start_at`]) until stopped.
pub(super) async fn read_loop(
    shared: Arc<Shared>,
    shard: usize,
    partitions: Vec<u32>,
    mut cursors: Vec<Cursor>,
    hub: Arc<Hub>,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let streams: Vec<String> = partitions.iter().map(|p| keys::bus(*p)).collect();
    let index: HashMap<String, usize> = streams
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i))
        .collect();
    let started = true;
    let mut backoff = Duration::from_millis(50);
    let target = &shared.shards[shard];
    static DOWN: Throttle = Throttle::per_secs(10);
    while !stop.is_cancelled() {
        let mut conn = match target.connect(shared.config.connect_timeout).await {
            Ok(c) => c,
            Err(e) => {
                shared.stats.set_reachable(shard, false);
                if let Some(held_back) = DOWN.admit() {
                    tracing::warn!(redis = %target.addr, error = %e, held_back, "cluster: bus reader cannot reach Redis; retrying");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(shared.config.probe_interval);
                continue;
            }
        };
        let name = format!("sb-reader-{}", shared.node_id.replace(' ', "_"));
        let named: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&name)
            .query_async(&mut conn)
            .await;
        if let Err(e) = super::generation::claim(&mut conn, &shared, shard, &partitions).await {
            tracing::warn!(redis = %target.addr, error = %e, "cluster: bus reader lost its connection; reconnecting");
            continue;
        }
        if let Err(e) =
            sync_epochs(&mut conn, &partitions, &mut cursors, started, &hub, &shared).await
        {
            tracing::warn!(redis = %target.addr, error = %e, "cluster: bus reader lost its connection; reconnecting");
            continue;
        }
        if named.is_err() {
            continue;
        }
        backoff = Duration::from_millis(50);
        shared.stats.set_reachable(shard, true);
        let wait = shared.config.probe_interval + shared.config.command_timeout;
        loop {
            if !load_retained(&mut conn, &shared, &partitions, &mut cursors, &hub).await {
                break;
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            let ids: Vec<String> = cursors.iter().map(|c| format!("{}-0", c.last)).collect();
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(shared.config.probe_interval.as_millis() as u64)
                .arg("STREAMS")
                .arg(&streams)
                .arg(&ids);
            let read = xread.query_async::<Option<StreamReadReply>>(&mut conn);
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                a = tokio::time::timeout(wait, read) => a,
            };
            match answer {
                Err(_) => {
                    tracing::warn!(redis = %target.addr, "cluster: bus reader got no answer within {wait:?}; reconnecting");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(redis = %target.addr, error = %e, "cluster: bus reader lost its connection; reconnecting");
                    break;
                }
                Ok(Ok(None)) => {}
                Ok(Ok(Some(reply))) => {
                    for stream in reply.keys {
                        let Some(&i) = index.get(&stream.key) else {
                            continue;
                        };
                        for entry in stream.ids {
                            deliver(&shared, &hub, partitions[i], &mut cursors[i], entry);
                        }
                    }
                }
            }
        }
        shared.stats.reader_restarts.add(1);
        shared.stats.set_reachable(shard, false);
    }
}

/// Loads the retained values of the partitions marked stale; false when the
/// connection failed (they stay marked).
async fn load_retained(
    conn: &mut Conn,
    shared: &Shared,
    partitions: &[u32],
    cursors: &mut [Cursor],
    hub: &Hub,
) -> bool {
    let stale: Vec<u32> = partitions
        .iter()
        .zip(cursors.iter())
        .filter(|(_, c)| c.stale_retained)
        .map(|(p, _)| *p)
        .collect();
    if stale.is_empty() {
        return true;
    }
    match super::retained::load(conn, shared, &stale, hub).await {
        Ok(loaded) => {
            tracing::debug!(
                ?loaded,
                partitions = stale.len(),
                "cluster: retained values loaded"
            );
            if loaded.beyond {
                tracing::warn!(
                    "cluster: more retained values in Redis than a box loads ({}); the rest were left there",
                    super::retained::LOAD_MAX
                );
            }
            cursors.iter_mut().for_each(|c| c.stale_retained = false);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cluster: retained values not loaded; reconnecting");
            false
        }
    }
}

/// On every (re)connect: compares each bus stream's epoch with the one read so far. At
/// the start ([`start_at`]), reading starts at the stream's end (what was published
/// before this box started is not its to deliver); later, the same epoch resumes from
/// the last position, another epoch (Redis lost the stream) is a gap and is read from
/// its start.
async fn sync_epochs(
    conn: &mut Conn,
    partitions: &[u32],
    cursors: &mut [Cursor],
    started: bool,
    hub: &Hub,
    shared: &Shared,
) -> redis::RedisResult<()> {
    for (p, cursor) in partitions.iter().zip(cursors.iter_mut()) {
        let (epoch, last): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(keys::bus_meta(*p))
            .arg("e")
            .arg("s")
            .query_async(conn)
            .await?;
        if !started {
            cursor.epoch = epoch;
            cursor.last = last.unwrap_or(0);
        } else if cursor.epoch.is_some() && cursor.epoch != epoch {
            tracing::warn!(
                partition = p,
                "cluster: a bus stream lost its data (Redis restarted without it); clients told of a gap"
            );
            shared.stats.gaps.add(1);
            hub.bus_gap(0);
            cursor.epoch = epoch;
            cursor.last = 0;
            cursor.stale_retained = true;
        }
        shared
            .repair
            .passed(*p, cursor.epoch.as_deref(), cursor.last);
    }
    Ok(())
}

fn deliver(
    shared: &Shared,
    hub: &Hub,
    partition: u32,
    cursor: &mut Cursor,
    entry: redis::streams::StreamId,
) {
    let Some(position) = id_number(&entry.id) else {
        return;
    };
    let map = &entry.map;
    let bus_epoch = text(map, "be");
    match (&cursor.epoch, &bus_epoch) {
        (Some(known), Some(now)) if known != now => {
            // The stream was recreated under this reader (FLUSHALL, a failover).
            shared.stats.gaps.add(1);
            hub.bus_gap(0);
            cursor.last = 0;
            cursor.epoch = bus_epoch;
            cursor.stale_retained = true;
        }
        (None, Some(_)) => cursor.epoch = bus_epoch,
        _ => {}
    }
    if position <= cursor.last {
        return;
    }
    if position > cursor.last + 1 {
        let dropped = position - cursor.last - 1;
        shared.stats.gaps.add(1);
        static GAP: Throttle = Throttle::per_secs(10);
        if let Some(held_back) = GAP.admit() {
            tracing::warn!(
                partition,
                dropped,
                held_back,
                "cluster: bus positions skipped (trimmed before this box read them); clients told of a gap"
            );
        }
        hub.bus_gap(dropped);
        cursor.stale_retained = true;
    }
    cursor.last = position;
    let now_ms = switchboard_core::clock::now_ms();
    if let Some(ts) = text(map, "ts").and_then(|t| t.parse::<u64>().ok()) {
        shared.stats.lag(partition, now_ms.saturating_sub(ts));
    }
    match from_bus(map) {
        Some(m) => {
            hub.deliver_from_bus(m);
        }
        None => {
            shared.stats.malformed.add(1);
            static BAD: Throttle = Throttle::per_secs(10);
            if let Some(held_back) = BAD.admit() {
                tracing::warn!(
                    partition,
                    position,
                    held_back,
                    "cluster: a bus entry this version cannot read; skipped"
                );
            }
        }
    }
    shared
        .repair
        .passed(partition, cursor.epoch.as_deref(), position);
}

/// The number of a stream entry id `<n>-0` (bus positions, topic seqs).
pub(super) fn id_number(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(n, _)| n.parse().ok())
}

pub(super) fn from_bus(map: &HashMap<String, Value>) -> Option<FromBus> {
    let message = message_of(map)?;
    let data = RawValue::from_string(message.data.clone()).ok()?;
    Some(FromBus {
        message,
        data,
        epoch: text(map, "e")?,
        seq: text(map, "s")?.parse().ok()?,
    })
}

/// The message of a bus entry, or of a topic history entry (the same fields).
pub(super) fn message_of(map: &HashMap<String, Value>) -> Option<BusMessage> {
    let origin = text(map, "o")
        .and_then(|o| o.parse::<usize>().ok())
        .and_then(|o| Origin::ALL.get(o).copied())?;
    let as_sent = match text(map, "q") {
        Some(q) => Some(AsSent {
            qos: q.parse().ok()?,
            payload: bytes(map, "p")?.into(),
            properties: bytes(map, "pp")?.into(),
        }),
        None => None,
    };
    Some(BusMessage {
        topic: text(map, "t")?,
        event: text(map, "ev"),
        data: text(map, "d")?,
        from: text(map, "f")?,
        origin,
        retain: map.contains_key("r"),
        as_sent,
        acked: false,
    })
}

fn bytes(map: &HashMap<String, Value>, field: &str) -> Option<Vec<u8>> {
    match map.get(field)? {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

pub(super) fn text(map: &HashMap<String, Value>, field: &str) -> Option<String> {
    String::from_utf8(bytes(map, field)?).ok()
}
