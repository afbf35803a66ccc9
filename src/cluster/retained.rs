//! Retained values cluster-wide: kept in Redis, loaded by a box that starts later.
//!
//! The publish script (`publish.rs`) keeps each retained message, with its topic's
//! `(epoch, seq)`, under its topic in the partition's retained hash (`keys::retained`),
//! and deletes it when an empty retained message clears it; written by the script, the
//! hash follows the topic's one order. Every box still takes retained values from the
//! bus as they pass; this file loads what was retained before it started reading (at
//! startup, and again when its reader missed part of the bus: a gap), so a new
//! subscriber on any box gets the topic's current value. The Hub keeps the newer of
//! what it loaded and what the bus brought (`Hub::restore_retained`), by `(epoch, seq)`.
//!
//! Bounded: the hash keeps at most [`CAP`] user topics per partition (new ones beyond are
//! not kept in Redis, as one box refuses them beyond `MAX_RETAINED`), and a box loads at
//! most [`LOAD_MAX`] user values and as many `$` notices per Redis, [`SCAN`] at a time.

use std::collections::HashMap;

use redis::Value;

use super::connect::Conn;
use super::{keys, reader, Shared};
use crate::hub::{Hub, MAX_RETAINED};

/// User topics a partition's retained hash keeps at most.
pub(super) const CAP: usize = MAX_RETAINED;

/// User retained values (and, separately, `$` notices) a box loads per Redis at most.
pub(super) const LOAD_MAX: usize = MAX_RETAINED;

/// Hash entries asked for per `HSCAN`.
const SCAN: usize = 512;

/// The publish script with this file's bound filled in.
pub(super) fn script(base: &str) -> String {
    base.replace("RETAINED_CAP", &CAP.to_string())
}

/// Deletes a topic's stored value if it is still the one numbered as given: KEYS the
/// retained hash; ARGV the topic and the packed value's start (its epoch and seq).
const FORGET: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, #ARGV[2]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"#;

/// Forgets queued at most; beyond, a forget is skipped (the value stays in Redis).
pub(super) const FORGET_QUEUE: usize = 1024;

/// A retained value this box forgot (an old offline notice), to forget in Redis.
pub(super) struct Forget {
    pub topic: String,
    pub epoch: String,
    pub seq: u64,
}

/// Sends the forgets, one `EVAL` each, on a connection per Redis made when needed.
pub(super) async fn forget_loop(
    shared: std::sync::Arc<Shared>,
    mut forgets: tokio::sync::mpsc::Receiver<Forget>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut conns: Vec<Option<Conn>> = shared.shards.iter().map(|_| None).collect();
    loop {
        let f = tokio::select! {
            _ = stop.cancelled() => return,
            f = forgets.recv() => match f { Some(f) => f, None => return },
        };
        let p = keys::partition(&f.topic, shared.config.partitions.get());
        let shard = keys::shard(p, conns.len());
        let target = &shared.shards[shard];
        let conn = match &mut conns[shard] {
            Some(c) => c,
            slot => match target.connect(shared.config.connect_timeout).await {
                Ok(c) => slot.insert(c),
                Err(_) => continue,
            },
        };
        let (e, s) = (f.epoch, f.seq.to_string());
        let start = format!("1:e{}:{e}1:s{}:{s}", e.len(), s.len());
        let mut eval = redis::cmd("EVAL");
        eval.arg(FORGET)
            .arg(1)
            .arg(keys::retained(p))
            .arg(&f.topic)
            .arg(start);
        let done =
            tokio::time::timeout(shared.config.command_timeout, eval.query_async::<u64>(conn))
                .await;
        if !matches!(done, Ok(Ok(_))) {
            conns[shard] = None;
            static FAILED: switchboard_core::quiet::Throttle =
                switchboard_core::quiet::Throttle::per_secs(10);
            if let Some(held_back) = FAILED.admit() {
                tracing::warn!(redis = %target.addr, held_back, "cluster: a forgotten retained value stays in Redis (Redis did not answer)");
            }
        }
    }
}

/// What a box loaded; for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Loaded {
    pub kept: usize,
    pub skipped: usize,
    /// Values left in Redis because [`LOAD_MAX`] was reached.
    pub beyond: bool,
}

/// Loads the retained values of `partitions` into the Hub, oldest knowledge losing to
/// newer: a value the bus already brought a newer one of is skipped.
pub(super) async fn load(
    conn: &mut Conn,
    shared: &Shared,
    partitions: &[u32],
    hub: &Hub,
) -> redis::RedisResult<Loaded> {
    let mut loaded = Loaded::default();
    let (mut users, mut notices) = (0usize, 0usize);
    for p in partitions {
        let key = keys::retained(*p);
        let mut cursor = 0u64;
        loop {
            let (next, entries): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN)
                .query_async(conn)
                .await?;
            for pair in entries.chunks_exact(2) {
                let system = pair[0].first() == Some(&b'$');
                let count = if system { &mut notices } else { &mut users };
                if *count >= LOAD_MAX {
                    loaded.beyond = true;
                    continue;
                }
                *count += 1;
                let restored = unpack(&pair[1]).and_then(|map| {
                    let ts = reader::text(&map, "ts").and_then(|t| t.parse().ok());
                    let m = reader::from_bus(&map)?;
                    Some(hub.restore_retained(m, ts.unwrap_or(0)))
                });
                match restored {
                    Some(true) => loaded.kept += 1,
                    Some(false) => loaded.skipped += 1,
                    None => shared.stats.malformed.add(1),
                }
            }
            cursor = next;
            if cursor == 0 || (users >= LOAD_MAX && notices >= LOAD_MAX) {
                break;
            }
        }
    }
    Ok(loaded)
}

/// A value the script packed: fields and values, each `<length>:<bytes>`.
fn unpack(mut packed: &[u8]) -> Option<HashMap<String, Value>> {
    let mut parts = Vec::new();
    while !packed.is_empty() {
        let colon = packed.iter().position(|b| *b == b':')?;
        let len: usize = std::str::from_utf8(&packed[..colon]).ok()?.parse().ok()?;
        let rest = &packed[colon + 1..];
        if rest.len() < len {
            return None;
        }
        parts.push(rest[..len].to_vec());
        packed = &rest[len..];
    }
    if parts.len() % 2 != 0 {
        return None;
    }
    let mut map = HashMap::with_capacity(parts.len() / 2);
    let mut it = parts.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(String::from_utf8(k).ok()?, Value::BulkString(v));
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_values_read_back_and_bad_ones_are_refused() {
        let map = unpack(b"1:e2:ab1:s1:71:d4:\"x:\"").expect("reads");
        assert_eq!(reader::text(&map, "e").as_deref(), Some("ab"));
        assert_eq!(reader::text(&map, "s").as_deref(), Some("7"));
        assert_eq!(reader::text(&map, "d").as_deref(), Some("\"x:\""));
        assert!(unpack(b"1:e9:ab").is_none(), "short");
        assert!(unpack(b"1:e").is_none(), "odd");
        assert!(unpack(b"x:e").is_none(), "not a length");
        assert!(script(super::super::publish::SCRIPT).contains(&format!("< {CAP} then")));
    }
}
