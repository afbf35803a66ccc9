//! Numbers Redis may issue twice: a restart that kept a stale tail.
//!
//! A Redis that restarts from an AOF written with `appendfsync everysec` (or from an
//! RDB snapshot, or a replica promoted while behind) comes back without its last
//! writes: a topic's meta hash and a bus's meta hash count from an older number, and
//! the next publishes would get `(epoch, seq)` and bus positions that boxes already
//! delivered for other messages; they would drop them as read twice, silently.
//!
//! So every meta hash records the *generation* that wrote it: the server's `run_id`,
//! which changes at every restart. A box reads it when it connects, and only where the
//! server may lose acknowledged writes (anything but `appendonly yes` with
//! `appendfsync always`): where it cannot, a restart loses nothing and the generation
//! is left out (empty), so nothing changes. A meta hash written by an earlier
//! generation starts a new epoch, numbered from 1, reported as a gap like any new
//! epoch: the publish script does it for a topic at its next publish, [`claim`] for
//! each bus stream when a box's writer or reader connects (before it reads or writes
//! a position), whichever comes first; the first one wins, the others find the
//! generation current.

use std::sync::Mutex;

use super::connect::Conn;
use super::{keys, publish, Shared};

/// KEYS: a bus meta hash, its stream. ARGV: the generation, a new epoch. A meta hash
/// of an earlier generation starts the new epoch from position 1 (the stream starts
/// again with it); one without a generation takes this one. Returns 1 when it started
/// a new epoch.
const CLAIM: &str = r#"
local g = redis.call('HGET', KEYS[1], 'g')
if g == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[1])
if not g then return 0 end
redis.call('HSET', KEYS[1], 'e', ARGV[2], 's', 0)
redis.call('DEL', KEYS[2])
return 1
"#;

/// Per Redis: the generation its connections write (empty: restarts lose nothing).
#[derive(Default)]
pub(super) struct Generations(Vec<Mutex<String>>);

impl Generations {
    pub(super) fn new(shards: usize) -> Generations {
        Generations((0..shards).map(|_| Mutex::default()).collect())
    }

    pub(super) fn get(&self, shard: usize) -> String {
        self.0
            .get(shard)
            .map(|g| g.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    fn set(&self, shard: usize, generation: &str) {
        if let Some(g) = self.0.get(shard) {
            *g.lock().unwrap_or_else(|p| p.into_inner()) = generation.to_owned();
        }
    }
}

/// The generation of the server behind `conn`: its `run_id`, or empty when it keeps
/// every acknowledged write across a restart (`appendonly yes`, `appendfsync always`).
/// A server that refuses `CONFIG GET` (managed services rename it) counts as one that
/// may lose writes. On a Redis Cluster each partition's node has its own `run_id`, and
/// one connection answers for many nodes: no generation there (docs/cluster.md).
async fn generation(conn: &mut Conn) -> redis::RedisResult<String> {
    if matches!(conn, Conn::Cluster(_)) {
        return Ok(String::new());
    }
    let durable: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await;
    let durable = durable.is_ok_and(|pairs| {
        let get = |k: &str| {
            pairs
                .chunks(2)
                .find(|p| p[0] == k)
                .and_then(|p| p.get(1).cloned())
        };
        get("appendonly").as_deref() == Some("yes")
            && get("appendfsync").as_deref() == Some("always")
    });
    if durable {
        return Ok(String::new());
    }
    let info: String = match redis::cmd("INFO").arg("server").query_async(conn).await {
        Ok(info) => info,
        Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => return Err(e),
        Err(e) => {
            // An ACL that refuses INFO: publishing goes on, restarts are not detected.
            static REFUSED: switchboard_core::quiet::Throttle =
                switchboard_core::quiet::Throttle::per_secs(600);
            if let Some(held_back) = REFUSED.admit() {
                tracing::warn!(error = %e, held_back, "cluster: Redis refused INFO; a restart that rolls numbers back cannot be detected");
            }
            return Ok(String::new());
        }
    };
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|r| r.trim().to_owned())
        .unwrap_or_default())
}

/// On a new connection to Redis `shard`: learns its generation and brings the bus
/// streams of `partitions` to it. True when a bus stream started a new epoch.
pub(super) async fn claim(
    conn: &mut Conn,
    shared: &Shared,
    shard: usize,
    partitions: &[u32],
) -> redis::RedisResult<bool> {
    let generation = generation(conn).await?;
    shared.generation.set(shard, &generation);
    if generation.is_empty() {
        return Ok(false);
    }
    let script = redis::Script::new(CLAIM);
    let mut restarted = false;
    for p in partitions {
        let started: u8 = script
            .key(keys::bus_meta(*p))
            .key(keys::bus(*p))
            .arg(&generation)
            .arg(publish::new_epoch())
            .invoke_async(conn)
            .await?;
        restarted |= started == 1;
    }
    Ok(restarted)
}
