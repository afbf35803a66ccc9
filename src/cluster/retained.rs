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

use redis::aio::MultiplexedConnection;
use redis::Value;

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
    conn: &mut MultiplexedConnection,
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
                    let m = reader::from_bus(&map, &shared.node_id)?;
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
