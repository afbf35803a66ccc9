//! Presence across boxes: members of a presence topic on every box are members
//! everywhere, and a dead box's members leave everywhere.
//!
//! What a box holds is its own state in Redis, not a log: the hash
//! `sb:{presence}:n:<node>` (field `["<topic>","<client>"]` → the member as JSON), whose
//! TTL (`node_ttl`) the box renews every third of it, like its heartbeat. Changes are
//! announced on the stream `sb:{presence}:ev` so other boxes tell their subscribers at
//! once; each event carries its box's incarnation and a number counting up, so a reader
//! that missed one (trimmed, a reconnect, a box's writer that reconnected) sees the skip
//! and reads that box's hash again instead. A leave therefore cannot be lost silently:
//! it reaches a box as an event, or as a member missing from a hash read again, or as
//! the box leaving the live node list (`nodes.rs`), which drops all its members.
//!
//! Every difference found by reading a hash again is told to this box's subscribers as
//! a `join` or `leave`, so a client sees the same events whichever way a box learned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::streams::{StreamId, StreamReadReply};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connect::Conn;
use super::Shared;
use crate::hub::Hub;
use switchboard_core::protocol::Member;
use switchboard_core::quiet::Throttle;

const EVENTS: &str = "sb:{presence}:ev";

/// Events kept in the stream (approximately); a reader further behind reads hashes again.
const EVENTS_KEEP: u64 = 10_000;

/// Changes waiting for Redis at most; beyond, the box's hash is written again whole.
const QUEUE: usize = 10_000;

fn hash(node: &str) -> String {
    format!("sb:{{presence}}:n:{node}")
}

/// A change of this box's presence, on its way to Redis.
pub(super) struct Change {
    topic: String,
    client: String,
    /// The member as JSON; `None`: it left.
    member: Option<String>,
}

/// Who is where on other boxes: topic → (node, client) → the member as JSON.
type Table = HashMap<String, BTreeMap<(String, String), String>>;

#[derive(Default)]
pub(super) struct Presence {
    remote: Mutex<Table>,
    /// `None` until started; a full queue sets `resend`.
    tx: Mutex<Option<mpsc::Sender<Change>>>,
    resend: tokio::sync::Notify,
}

/// A member as it travels.
#[derive(Deserialize)]
struct Wire {
    client: String,
    user: Option<String>,
    info: Option<Box<RawValue>>,
}

fn to_member(json: &str) -> Option<Member<'static>> {
    let w: Wire = serde_json::from_str(json).ok()?;
    Some(Member {
        client: w.client.into(),
        user: w.user.map(Into::into),
        info: w.info.map(std::borrow::Cow::Owned),
    })
}

impl Presence {
    /// Queues a change of this box; never waits.
    pub(super) fn changed(&self, topic: &str, member: &Member<'_>, joined: bool) {
        let change = Change {
            topic: topic.to_owned(),
            client: member.client.to_string(),
            member: joined.then(|| serde_json::to_string(member).unwrap_or_default()),
        };
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            if tx.try_send(change).is_err() {
                self.resend.notify_one();
            }
        }
    }

    pub(super) fn members(&self, topic: &str) -> Vec<(String, Member<'static>)> {
        let remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        remote
            .get(topic)
            .map(|m| {
                m.iter()
                    .filter_map(|((node, _), j)| Some((node.clone(), to_member(j)?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces what `node` has with `now` (topic, client → JSON), telling the differences.
    fn replace(&self, hub: &Hub, node: &str, now: BTreeMap<(String, String), String>) {
        let mut told = Vec::new();
        {
            let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
            for (topic, members) in remote.iter_mut() {
                members.retain(|(n, client), json| {
                    if n != node || now.contains_key(&(topic.clone(), client.clone())) {
                        return true;
                    }
                    told.push((topic.clone(), json.clone(), false));
                    false
                });
            }
            for ((topic, client), json) in now {
                let slot = remote.entry(topic.clone()).or_default();
                let key = (node.to_owned(), client);
                if slot.get(&key) != Some(&json) {
                    slot.insert(key, json.clone());
                    told.push((topic, json, true));
                }
            }
            remote.retain(|_, m| !m.is_empty());
        }
        tell(hub, told);
    }

    /// One event of `node`: a join (with the member) or a leave.
    fn apply(&self, hub: &Hub, node: &str, topic: &str, client: &str, member: Option<String>) {
        let told = {
            let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
            let key = (node.to_owned(), client.to_owned());
            match member {
                Some(json) => {
                    let slot = remote.entry(topic.to_owned()).or_default();
                    if slot.get(&key) == Some(&json) {
                        None
                    } else {
                        slot.insert(key, json.clone());
                        Some((topic.to_owned(), json, true))
                    }
                }
                None => {
                    let gone = remote.get_mut(topic).and_then(|m| m.remove(&key));
                    if remote.get(topic).is_some_and(BTreeMap::is_empty) {
                        remote.remove(topic);
                    }
                    gone.map(|json| (topic.to_owned(), json, false))
                }
            }
        };
        tell(hub, told.into_iter().collect());
    }

    fn nodes(&self) -> HashSet<String> {
        let remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        remote
            .values()
            .flat_map(|m| m.keys().map(|(n, _)| n.clone()))
            .collect()
    }
}

fn tell(hub: &Hub, told: Vec<(String, String, bool)>) {
    for (topic, json, joined) in told {
        if let Some(member) = to_member(&json) {
            hub.announce_remote(&topic, member, joined);
        }
    }
}

/// Writes this box's changes: its hash and an event each; the whole hash again on every
/// (re)connect and when changes were dropped, with a `sync` event; its TTL renewed.
pub(super) async fn write_loop(
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    incarnation: String,
    stop: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    *shared.presence.tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    let every = shared.config.node_ttl / 3;
    let ttl = shared.config.node_ttl.as_millis() as u64;
    let me = hash(&shared.node_id);
    let mut events = Events {
        node: shared.node_id.clone(),
        incarnation,
        number: 0,
    };
    let mut conn: Option<Conn> = None;
    static DOWN: Throttle = Throttle::per_secs(10);
    loop {
        let mut pipe = redis::pipe();
        if conn.is_none() {
            conn = shared.shards[0]
                .connect(shared.config.connect_timeout)
                .await
                .ok();
            if conn.is_some() {
                // Whole, from the Hub: what was queued meanwhile is in it.
                while rx.try_recv().is_ok() {}
                pipe.del(&me);
                for (topic, member) in hub.local_presence() {
                    let json = serde_json::to_string(&member).unwrap_or_default();
                    pipe.hset(&me, field(&topic, &member.client), json);
                }
                events.sync(&mut pipe);
            }
        }
        let Some(c) = conn.as_mut() else {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every.min(Duration::from_millis(500))) => continue,
            }
        };
        pipe.pexpire(&me, ttl as i64);
        let wrote =
            tokio::time::timeout(shared.config.command_timeout, pipe.query_async::<()>(c)).await;
        if !matches!(wrote, Ok(Ok(()))) {
            conn = None;
            if let Some(held_back) = DOWN.admit() {
                tracing::warn!(
                    held_back,
                    "cluster: presence writer lost Redis; will write again whole"
                );
            }
            continue;
        }
        let mut batch = Vec::new();
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
            _ = shared.presence.resend.notified() => conn = None,
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    break;
                }
            }
        }
        if conn.is_none() {
            continue;
        }
        let mut pipe = redis::pipe();
        for ch in batch {
            match &ch.member {
                Some(json) => pipe.hset(&me, field(&ch.topic, &ch.client), json),
                None => pipe.hdel(&me, field(&ch.topic, &ch.client)),
            };
            let kind = if ch.member.is_some() { "j" } else { "l" };
            let json = ch.member.as_deref().unwrap_or("");
            events.push(&mut pipe, kind, &ch.topic, &ch.client, json);
        }
        if let Some(c) = conn.as_mut() {
            pipe.pexpire(&me, ttl as i64);
            let wrote =
                tokio::time::timeout(shared.config.command_timeout, pipe.query_async::<()>(c))
                    .await;
            if !matches!(wrote, Ok(Ok(()))) {
                conn = None;
            }
        }
    }
    // Stopped cleanly: the members leave everywhere now, not after the TTL.
    if let Some(c) = conn.as_mut() {
        let mut pipe = redis::pipe();
        pipe.del(&me);
        events.sync(&mut pipe);
        let _ =
            tokio::time::timeout(shared.config.command_timeout, pipe.query_async::<()>(c)).await;
    }
}

fn field(topic: &str, client: &str) -> String {
    serde_json::to_string(&(topic, client)).unwrap_or_default()
}

/// This box's events, numbered so a reader sees one it missed.
struct Events {
    node: String,
    incarnation: String,
    number: u64,
}

impl Events {
    /// A join (`j`, with the member), a leave (`l`) or a `sync` (`s`: read my hash again).
    fn push(
        &mut self,
        pipe: &mut redis::Pipeline,
        kind: &str,
        topic: &str,
        client: &str,
        member: &str,
    ) {
        self.number += 1;
        pipe.cmd("XADD")
            .arg(EVENTS)
            .arg("MAXLEN")
            .arg("~")
            .arg(EVENTS_KEEP)
            .arg("*")
            .arg(&[
                ("n", self.node.as_str()),
                ("i", self.incarnation.as_str()),
                ("k", kind),
                ("t", topic),
                ("c", client),
                ("m", member),
            ])
            .arg("s")
            .arg(self.number)
            .ignore();
    }

    fn sync(&mut self, pipe: &mut redis::Pipeline) {
        self.push(pipe, "s", "", "", "");
    }
}

/// Reads the other boxes' events and applies them; reads a box's hash again when its
/// events skipped or it came back, and drops a box that left the live node list.
pub(super) async fn read_loop(shared: Arc<Shared>, hub: Arc<Hub>, stop: CancellationToken) {
    let wait = shared.config.probe_interval + shared.config.command_timeout;
    // Node → (incarnation, last number) of its events.
    let mut last: HashMap<String, (String, u64)> = HashMap::new();
    // Node → when this box first found it in the table but not in the live list (ms).
    let mut absent: HashMap<String, u64> = HashMap::new();
    while !stop.is_cancelled() {
        let Some(mut conn) = connect(&shared, &stop).await else {
            continue;
        };
        let name = format!("sb-presence-{}", shared.node_id.replace(' ', "_"));
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&name)
            .query_async(&mut conn)
            .await;
        // The position first, then every hash: events after it apply again, harmlessly.
        let mut position = match tokio::time::timeout(wait, newest(&mut conn, EVENTS)).await {
            Ok(Ok(p)) => p,
            _ => continue,
        };
        last.clear();
        let live = live_others(&shared);
        let mut known = shared.presence.nodes();
        known.extend(live.iter().cloned());
        let mut failed = false;
        for node in known {
            let now = if live.contains(&node) {
                match tokio::time::timeout(wait, read_hash(&mut conn, &node)).await {
                    Ok(Ok(m)) => m,
                    _ => {
                        failed = true;
                        break;
                    }
                }
            } else {
                BTreeMap::new()
            };
            shared.presence.replace(&hub, &node, now);
        }
        if failed {
            continue;
        }
        let mut live_before = live;
        loop {
            let read = read_after(&mut conn, EVENTS, &position, &shared);
            let entries = tokio::select! {
                _ = stop.cancelled() => return,
                a = read => match a {
                    Some(entries) => entries,
                    None => break,
                },
            };
            let mut reread: HashSet<String> = HashSet::new();
            for entry in entries {
                position = entry.id.clone();
                let Some(node) = text(&entry, "n") else {
                    continue;
                };
                if node == shared.node_id {
                    continue;
                }
                let incarnation = text(&entry, "i").unwrap_or_default();
                let number = text(&entry, "s")
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let follows = last
                    .get(&node)
                    .is_some_and(|(i, n)| *i == incarnation && number == n + 1);
                last.insert(node.clone(), (incarnation, number));
                let kind = text(&entry, "k").unwrap_or_default();
                if !follows || kind == "s" {
                    reread.insert(node);
                    continue;
                }
                let (Some(topic), Some(client)) = (text(&entry, "t"), text(&entry, "c")) else {
                    continue;
                };
                let member = (kind == "j").then(|| text(&entry, "m").unwrap_or_default());
                shared.presence.apply(&hub, &node, &topic, &client, member);
            }
            // Boxes that joined or left the live list.
            let live = live_others(&shared);
            let now_ms = switchboard_core::clock::now_ms();
            for node in live.difference(&live_before) {
                reread.insert(node.clone());
            }
            for node in shared.presence.nodes() {
                if live.contains(&node) {
                    absent.remove(&node);
                    continue;
                }
                let since = *absent.entry(node.clone()).or_insert(now_ms);
                let ttl = shared.config.node_ttl.as_millis() as u64;
                if live_before.contains(&node) || now_ms.saturating_sub(since) >= ttl {
                    reread.remove(&node);
                    absent.remove(&node);
                    shared.presence.replace(&hub, &node, BTreeMap::new());
                }
            }
            live_before = live;
            for node in reread {
                match tokio::time::timeout(wait, read_hash(&mut conn, &node)).await {
                    Ok(Ok(now)) => shared.presence.replace(&hub, &node, now),
                    _ => break,
                }
            }
        }
    }
}

fn live_others(shared: &Shared) -> HashSet<String> {
    let now = switchboard_core::clock::now_ms();
    shared
        .nodes
        .live(&shared.node_id, shared.config.node_ttl, now)
        .into_iter()
        .map(|n| n.node)
        .filter(|n| *n != shared.node_id)
        .collect()
}

/// A connection to the first Redis for a reader; `None` after waiting `probe_interval`
/// when there is none (or at once when stopping: the caller's loop then ends).
pub(super) async fn connect(shared: &Shared, stop: &CancellationToken) -> Option<Conn> {
    if let Ok(c) = shared.shards[0]
        .connect(shared.config.connect_timeout)
        .await
    {
        return Some(c);
    }
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(shared.config.probe_interval) => {}
    }
    None
}

/// A stream's entries after `from`, waiting up to `probe_interval` for some; `None`
/// when the connection failed or did not answer in time (then it is made again).
pub(super) async fn read_after(
    conn: &mut Conn,
    stream: &str,
    from: &str,
    shared: &Shared,
) -> Option<Vec<StreamId>> {
    let wait = shared.config.probe_interval + shared.config.command_timeout;
    let mut xread = redis::cmd("XREAD");
    xread
        .arg("COUNT")
        .arg(512)
        .arg("BLOCK")
        .arg(shared.config.probe_interval.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(from);
    let read = xread.query_async::<Option<StreamReadReply>>(conn);
    match tokio::time::timeout(wait, read).await {
        Ok(Ok(reply)) => Some(
            reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect(),
        ),
        _ => None,
    }
}

/// The id of a stream's newest entry, or `0-0`.
pub(super) async fn newest(conn: &mut Conn, stream: &str) -> redis::RedisResult<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .first()
        .map(|e| e.id.clone())
        .unwrap_or_else(|| "0-0".into()))
}

async fn read_hash(
    conn: &mut Conn,
    node: &str,
) -> redis::RedisResult<BTreeMap<(String, String), String>> {
    let all: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(hash(node))
        .query_async(conn)
        .await?;
    Ok(all
        .into_iter()
        .filter_map(|(f, json)| {
            let (topic, client): (String, String) = serde_json::from_str(&f).ok()?;
            Some(((topic, client), json))
        })
        .collect())
}

pub(super) fn text(entry: &StreamId, field: &str) -> Option<String> {
    match entry.map.get(field)? {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
