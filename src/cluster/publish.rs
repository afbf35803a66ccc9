//! The way onto the bus: one Lua script per message, sent in ordered batches.
//!
//! The script gives the message its topic's next `(epoch, seq)`, appends it to the
//! topic's history stream when the topic keeps one, and to its partition's bus stream
//! under the partition's next position, all at once (a script runs atomically), so no
//! box can see a number without its message or a message out of its topic's order.
//! One writer task per Redis takes whatever is queued (up to [`BATCH`]) and sends it as
//! one pipeline: messages stay in the order they were submitted (one publisher's order
//! is kept), and a busy box pays one round trip per batch, not per message. The
//! acknowledgement mode adds `WAIT` or `WAITAOF` at the end of the same pipeline: they
//! cover every write this connection made before them.
//!
//! Sending again is idempotent: a message this box may send more than once (an MQTT
//! device's, kept in the outbox when Redis did not answer) carries an id, and the
//! script keeps its answer under a result key for 5 minutes; a second run with
//! the same id returns that answer and appends nothing. Redis may have run the script
//! whose answer was lost with the connection, so without this the retry would be a
//! second message with the next number.

use std::time::{Duration, Instant};

use redis::{ErrorKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::config::AckMode;
use super::connect::Conn;
use super::outbox::Outbox;
use super::{generation, keys, Shared};
use crate::hub::BusMessage;

/// Messages sent in one pipeline at most.
const BATCH: usize = 256;

/// After a failed connect, publishes fail at once for this long instead of each
/// waiting out its own connect timeout.
const FAIL_FAST: Duration = Duration::from_millis(250);

/// KEYS: topic meta, topic history, bus, bus meta, the partition's retained values,
/// [the result key]. ARGV: a new topic epoch, a new bus epoch, the history's `keep` (0:
/// no history), the bus's `keep`, the Redis server's generation (`generation.rs`; empty:
/// none), how long (ms) the meta of a topic without history outlives its last publish,
/// then the entry's field/value pairs. A meta hash that is missing (new topic, or Redis
/// lost it) starts a new epoch, and the stream it numbers is started again with it, so
/// numbers of two epochs never mix. With a result key that holds an answer, the message
/// was taken already: that answer, nothing written; the key lives 300 s. Returns
/// `{seq, epoch}`.
pub(super) const SCRIPT: &str = r#"
if KEYS[6] then
  local done = redis.call('HMGET', KEYS[6], 's', 'e')
  if done[1] then return {tonumber(done[1]), done[2]} end
end
local e = redis.call('HGET', KEYS[1], 'e')
if not e then e = ARGV[1]; redis.call('HSET', KEYS[1], 'e', e) end
-- The generation (generation.rs): numbers of an earlier server run may have been
-- issued and then lost; start a new epoch rather than issue them again.
if ARGV[5] ~= '' then
  local g = redis.call('HGET', KEYS[1], 'g')
  if g ~= ARGV[5] then
    if g then e = ARGV[1]; redis.call('HSET', KEYS[1], 'e', e, 's', 0) end
    redis.call('HSET', KEYS[1], 'g', ARGV[5])
  end
end
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
local be = redis.call('HGET', KEYS[4], 'e')
if not be then be = ARGV[2]; redis.call('HSET', KEYS[4], 'e', be) end
local bs = redis.call('HINCRBY', KEYS[4], 's', 1)
local keep = tonumber(ARGV[3])
-- A topic without history: its numbering is forgotten after ARGV[6] ms without a publish.
if keep == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
if keep > 0 then
  if s == 1 then redis.call('DEL', KEYS[2]) end
  -- `bp`/`be`: the entry's bus position, so a repair (repair.rs) can tell what a box's
  -- reader has yet to deliver from what only Redis has.
  redis.call('XADD', KEYS[2], 'MAXLEN', keep, s .. '-0', 'bp', bs, 'be', be, unpack(ARGV, 7))
end
if bs == 1 then redis.call('DEL', KEYS[3]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], bs .. '-0', 'e', e, 's', s, 'be', be, unpack(ARGV, 7))
-- Retained values (retained.rs): a retained message's fields, with its epoch and seq,
-- packed under its topic in the partition's retained hash (KEYS[5]), in the topic's
-- order because it is written here; an empty one (`""`) clears it. Past RETAINED_CAP
-- user topics in the hash, new ones are not kept (`$` notices are bounded by their maker).
local r, t, d = false, nil, nil
for i = 7, #ARGV - 1, 2 do
  local f = ARGV[i]
  if f == 'r' then r = true elseif f == 't' then t = ARGV[i + 1] elseif f == 'd' then d = ARGV[i + 1] end
end
if r and t then
  if d == '""' then
    redis.call('HDEL', KEYS[5], t)
  elseif string.sub(t, 1, 1) == '$' or redis.call('HEXISTS', KEYS[5], t) == 1
      or redis.call('HLEN', KEYS[5]) < RETAINED_CAP then
    local packed = {}
    local function put(v) v = tostring(v); packed[#packed + 1] = #v .. ':' .. v end
    put('e'); put(e); put('s'); put(s)
    for i = 7, #ARGV do put(ARGV[i]) end
    redis.call('HSET', KEYS[5], t, table.concat(packed))
  end
end
if KEYS[6] then
  redis.call('HSET', KEYS[6], 's', s, 'e', e)
  redis.call('EXPIRE', KEYS[6], 300)
end
return {s, e}
"#;

/// One message waiting for its Redis.
pub(super) struct Job {
    /// Set when this box may send the message again (see the module's comment).
    pub id: Option<String>,
    pub message: BusMessage,
    pub partition: u32,
    pub reply: oneshot::Sender<Result<u64, String>>,
}

/// An id for a message this box may send again: a device's publish (already
/// acknowledged, so kept in the outbox rather than refused when Redis does not answer).
/// Others are refused to their publisher, who sends a new message.
pub(super) fn retry_id(m: &BusMessage) -> Option<String> {
    (!m.acked).then(|| format!("{:032x}", rand::random::<u128>()))
}

/// A random epoch, 16 hex digits, never zero (as the local history's).
pub(super) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>() | 1)
}

/// Sends the queued messages for one Redis until stopped. Devices' publishes that
/// Redis did not take wait in `outbox` and go first when it answers again; while any
/// wait there, newer ones from devices join them, so a device's order is kept.
pub(super) async fn write_loop(
    shared: std::sync::Arc<Shared>,
    shard: usize,
    mut jobs: mpsc::Receiver<Job>,
    mut outbox: Outbox,
    stop: CancellationToken,
) {
    let mut conn: Option<Conn> = None;
    let mut failed_at: Option<Instant> = None;
    let mut batch = Vec::with_capacity(BATCH);
    shared.stats.outbox(shard, outbox.len());
    loop {
        let failing = failed_at.is_some_and(|t| t.elapsed() < FAIL_FAST) && conn.is_none();
        if !outbox.is_empty() && !failing {
            flush(&shared, shard, &mut conn, &mut outbox).await;
            failed_at = conn
                .is_none()
                .then(|| failed_at.unwrap_or_else(Instant::now));
        }
        let retry = shared.config.probe_interval.min(Duration::from_millis(250));
        let n = tokio::select! {
            _ = stop.cancelled() => 0,
            n = jobs.recv_many(&mut batch, BATCH) => n,
            _ = tokio::time::sleep(retry), if !outbox.is_empty() => continue,
        };
        if n == 0 {
            return;
        }
        if !outbox.is_empty() {
            // Behind what waits: devices' publishes queue up after it.
            batch.retain(|job| {
                if job.message.acked {
                    return true;
                }
                keep(&shared, &mut outbox, job);
                false
            });
            shared.stats.outbox(shard, outbox.len());
            if batch.is_empty() {
                continue;
            }
        }
        let outcome = match failed_at {
            Some(t) if t.elapsed() < FAIL_FAST && conn.is_none() => Err(format!(
                "Redis {} is unreachable",
                shared.shards[shard].addr
            )),
            _ => send(&shared, shard, &mut conn, &batch).await,
        };
        failed_at = if conn.is_none() {
            Some(failed_at.unwrap_or_else(Instant::now))
        } else {
            None
        };
        shared.stats.set_reachable(shard, outcome.is_ok());
        match outcome {
            Ok(seqs) => {
                shared.stats.published.add(seqs.len() as u64);
                for (job, seq) in batch.drain(..).zip(seqs) {
                    let _ = job.reply.send(Ok(seq));
                }
            }
            Err(why) => {
                static FAILED: switchboard_core::quiet::Throttle =
                    switchboard_core::quiet::Throttle::per_secs(10);
                if let Some(held_back) = FAILED.admit() {
                    tracing::warn!(error = %why, held_back, "cluster: publishes not taken by Redis");
                }
                for job in batch.drain(..) {
                    if job.message.acked {
                        shared.stats.failed.add(1);
                    } else {
                        keep(&shared, &mut outbox, &job);
                    }
                    let _ = job.reply.send(Err(why.clone()));
                }
                shared.stats.outbox(shard, outbox.len());
            }
        }
    }
}

/// A device's publish kept for later, or counted as lost when the outbox is full.
fn keep(shared: &Shared, outbox: &mut Outbox, job: &Job) {
    if !outbox.push(&job.message, job.id.as_deref()) {
        shared.stats.dropped.add(1);
        static FULL: switchboard_core::quiet::Throttle =
            switchboard_core::quiet::Throttle::per_secs(10);
        if let Some(held_back) = FULL.admit() {
            tracing::warn!(
                held_back,
                "cluster: an MQTT publish waiting for Redis was lost (outbox full: cluster.outbox_max)"
            );
        }
    }
}

/// Sends what waits in the outbox, oldest first, a batch at a time, while Redis takes it.
async fn flush(shared: &Shared, shard: usize, conn: &mut Option<Conn>, outbox: &mut Outbox) {
    while !outbox.is_empty() {
        let waiting = outbox.oldest(BATCH);
        if waiting.is_empty() {
            return;
        }
        let partitions = shared.config.partitions.get();
        let (keys, jobs): (Vec<u64>, Vec<Job>) = waiting
            .into_iter()
            .map(|(k, message, id)| {
                let partition = keys::partition(&message.topic, partitions);
                let (reply, _) = oneshot::channel();
                (
                    k,
                    Job {
                        id,
                        message,
                        partition,
                        reply,
                    },
                )
            })
            .unzip();
        match send(shared, shard, conn, &jobs).await {
            Ok(seqs) => {
                shared.stats.published.add(seqs.len() as u64);
                outbox.remove(keys);
                shared.stats.outbox(shard, outbox.len());
                shared.stats.set_reachable(shard, true);
            }
            Err(_) => {
                shared.stats.set_reachable(shard, false);
                return;
            }
        }
    }
}

/// One batch as one pipeline; the topic numbers, in order, or why none was taken.
/// On a Redis Cluster a pipeline must stay within one slot: one per partition, sent
/// together (a topic's order is kept within its partition's pipeline).
async fn send(
    shared: &Shared,
    shard: usize,
    conn: &mut Option<Conn>,
    batch: &[Job],
) -> Result<Vec<u64>, String> {
    if !shared.shards[shard].is_cluster() {
        let all: Vec<&Job> = batch.iter().collect();
        return send_slot(shared, shard, conn, &all).await;
    }
    let mut groups: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, job) in batch.iter().enumerate() {
        groups.entry(job.partition).or_default().push(i);
    }
    let target = &shared.shards[shard];
    let c = match conn {
        Some(c) => c.clone(),
        None => conn
            .insert(
                target
                    .connect(shared.config.connect_timeout)
                    .await
                    .map_err(|e| format!("Redis {} is unreachable: {e}", target.addr))?,
            )
            .clone(),
    };
    let answers = futures_util::future::join_all(groups.values().map(|idx| {
        let mut c = Some(c.clone());
        async move {
            let jobs: Vec<&Job> = idx.iter().map(|i| &batch[*i]).collect();
            let answer = send_slot(shared, shard, &mut c, &jobs).await;
            (answer, c.is_none())
        }
    }))
    .await;
    let mut seqs = vec![0; batch.len()];
    let mut failed = None;
    for (idx, (answer, dropped)) in groups.values().zip(answers) {
        if dropped {
            *conn = None;
        }
        match answer {
            Ok(got) => idx.iter().zip(got).for_each(|(i, s)| seqs[*i] = s),
            Err(why) => failed = Some(why),
        }
    }
    failed.map_or(Ok(seqs), Err)
}

async fn send_slot(
    shared: &Shared,
    shard: usize,
    conn: &mut Option<Conn>,
    batch: &[&Job],
) -> Result<Vec<u64>, String> {
    let target = &shared.shards[shard];
    let timeout = shared.config.command_timeout;
    for attempt in 0..2 {
        let c = match conn {
            Some(c) => c,
            None => {
                let mut c = target
                    .connect(shared.config.connect_timeout)
                    .await
                    .map_err(|e| format!("Redis {} is unreachable: {e}", target.addr))?;
                let partitions: Vec<u32> = (0..shared.config.partitions.get())
                    .filter(|p| keys::shard(*p, shared.shards.len()) == shard)
                    .collect();
                generation::claim(&mut c, shared, shard, &partitions)
                    .await
                    .map_err(|e| format!("Redis {}: {e}", target.addr))?;
                conn.insert(c)
            }
        };
        let pipe = pipeline(shared, shard, batch);
        let answer = tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(c)).await;
        let values = match answer {
            Err(_) => {
                *conn = None;
                return Err(format!(
                    "Redis {} did not answer within {timeout:?}",
                    target.addr
                ));
            }
            Ok(Err(e)) if e.kind() == ErrorKind::NoScriptError && attempt == 0 => {
                // Redis restarted and forgot the script: nothing of the batch ran.
                load_script(c).await.map_err(|e| e.to_string())?;
                continue;
            }
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    *conn = None;
                }
                return Err(format!("Redis {}: {e}", target.addr));
            }
            Ok(Ok(values)) => values,
        };
        return numbers(shared.config.ack, batch.len(), &values);
    }
    Err(format!(
        "Redis {} keeps losing the publish script",
        target.addr
    ))
}

fn pipeline(shared: &Shared, shard: usize, batch: &[&Job]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    let now_ms = switchboard_core::clock::now_ms();
    let generation = shared.generation.get(shard);
    for &job in batch {
        let m = &job.message;
        let p = job.partition;
        let keep = shared
            .history
            .rule(&m.topic)
            .map_or(0, |r| r.keep.map_or(10_000, |k| k.get()));
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(&shared.script_hash)
            .arg(if job.id.is_some() { 6 } else { 5 })
            .arg(keys::topic_meta(p, &m.topic))
            .arg(keys::topic_history(p, &m.topic))
            .arg(keys::bus(p))
            .arg(keys::bus_meta(p))
            .arg(keys::retained(p));
        if let Some(id) = &job.id {
            cmd.arg(keys::result(p, id));
        }
        cmd.arg(new_epoch())
            .arg(new_epoch())
            .arg(keep)
            .arg(shared.config.bus_keep.get())
            .arg(&generation)
            .arg(shared.config.topic_meta_ttl.as_millis() as u64)
            .arg("t")
            .arg(&m.topic)
            .arg("d")
            .arg(&m.data)
            .arg("f")
            .arg(&m.from)
            .arg("o")
            .arg(m.origin as u8)
            .arg("n")
            .arg(&shared.node_id)
            .arg("ts")
            .arg(now_ms);
        if let Some(event) = &m.event {
            cmd.arg("ev").arg(event);
        }
        if m.retain {
            cmd.arg("r").arg(1);
        }
        if let Some(sent) = &m.as_sent {
            cmd.arg("q")
                .arg(sent.qos)
                .arg("p")
                .arg(sent.payload.as_ref())
                .arg("pp")
                .arg(sent.properties.as_ref());
        }
    }
    let wait_ms = shared.config.command_timeout.as_millis() as u64;
    match shared.config.ack {
        AckMode::Redis => {}
        AckMode::Wait => {
            pipe.cmd("WAIT").arg(1).arg(wait_ms);
        }
        AckMode::Waitaof => {
            pipe.cmd("WAITAOF").arg(1).arg(0).arg(wait_ms);
        }
    }
    pipe
}

/// The topic numbers of a batch's answers, once the acknowledgement mode is satisfied.
fn numbers(ack: AckMode, n: usize, values: &[Value]) -> Result<Vec<u64>, String> {
    let mut seqs = Vec::with_capacity(n);
    for v in values.iter().take(n) {
        let (seq, _epoch): (u64, String) = redis::from_redis_value(v)
            .map_err(|e| format!("unexpected answer from the publish script: {e}"))?;
        seqs.push(seq);
    }
    let confirmed = match (ack, values.get(n)) {
        (AckMode::Redis, _) => true,
        (AckMode::Wait, Some(v)) => redis::from_redis_value::<u64>(v).is_ok_and(|r| r >= 1),
        (AckMode::Waitaof, Some(v)) => {
            redis::from_redis_value::<(u64, u64)>(v).is_ok_and(|(local, _)| local >= 1)
        }
        _ => false,
    };
    if !confirmed {
        return Err(format!(
            "Redis took the messages but did not confirm them as `cluster.ack = {ack:?}` asks \
             (they may still be delivered)"
        ));
    }
    Ok(seqs)
}

/// Makes the script known to Redis (again, after a restart).
pub(super) async fn load_script(c: &mut Conn) -> redis::RedisResult<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(super::retained::script(SCRIPT))
        .query_async(c)
        .await
}
