//! One box at a time: a lease in Redis per job (an upstream bridge), so every box may
//! carry the same config and exactly one runs it, the others standing by to take over.
//!
//! The lease is a key `sb:{pN}:lease:<name>` holding `<node>|<generation>` with a TTL.
//! One script both takes a free lease (`SET … PX`, a new generation from an `INCR`
//! counter that never goes back) and renews one this box still holds (compare the whole
//! value, then `PEXPIRE`): a box that lost its lease and got it back has a new
//! generation, so a renewal of the old one fails.
//!
//! Fencing: the holder counts its lease as valid until `ttl - ttl/5` after it *sent*
//! the successful request (Redis started the TTL later), on its own monotonic clock.
//! The job checks [`Lease::valid`] with the generation it started under before each
//! message it lets through, so a box that was paused (or cut from Redis) stops the
//! moment it wakes up past that point, before another box can have taken over.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::connect::Conn;
use super::{keys, Shared};

/// KEYS: the lease, its generation counter. ARGV: this node, the TTL in ms, the
/// generation this box holds ("0": none). Returns `{held, generation, holder, pttl}`.
const SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local n, g = string.match(v, '^(.*)|(%d+)$')
  if n == ARGV[1] and g == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, g, n, tonumber(ARGV[2])}
  end
  return {0, g or '0', n or v, redis.call('PTTL', KEYS[1])}
end
local g = tostring(redis.call('INCR', KEYS[2]))
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. g, 'PX', ARGV[2])
return {1, g, ARGV[1], tonumber(ARGV[2])}
"#;

/// KEYS: the lease. ARGV: the value this box holds. Frees it so a standby need not
/// wait out the TTL after a clean stop.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// What a lease looks like from this box.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseState {
    /// This box holds it (and its validity has not run out).
    pub leader: bool,
    /// The holder's node id, as Redis last said; None: free, or Redis not reached.
    pub holder: Option<String>,
    /// The generation of the holder's lease.
    pub generation: u64,
}

/// One lease, kept (taken, renewed, given up) by [`Lease::keep`].
pub struct Lease {
    shared: Arc<Shared>,
    shard: usize,
    key: String,
    generation_key: String,
    ttl: Duration,
    /// When this box's lease stops counting (monotonic ms since `epoch`); 0: not held.
    valid_until: AtomicU64,
    /// The generation this box holds; 0: none.
    mine: AtomicU64,
    epoch: Instant,
    /// Wall ms at which the other holder last renewed, as far as this box saw.
    other_renewed_ms: AtomicU64,
    state: watch::Sender<LeaseState>,
    /// How often this box became the holder.
    pub acquired: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl super::Cluster {
    /// The lease named `name` (such as `bridge:north`), on the Redis its name hashes to.
    pub fn lease(&self, name: &str) -> Arc<Lease> {
        let partition = keys::partition(name, self.shared.config.partitions.get());
        let shard = keys::shard(partition, self.shared.shards.len());
        Arc::new(Lease {
            shared: self.shared.clone(),
            shard,
            key: format!("sb:{{p{partition}}}:lease:{name}"),
            generation_key: format!("sb:{{p{partition}}}:lease:{name}:gen"),
            ttl: self.shared.config.lease_ttl,
            valid_until: AtomicU64::new(0),
            mine: AtomicU64::new(0),
            epoch: Instant::now(),
            other_renewed_ms: AtomicU64::new(0),
            state: watch::channel(LeaseState::default()).0,
            acquired: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }
}

impl Lease {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether this box holds the lease under `generation` right now: the check a job
    /// makes before each thing it lets through.
    pub fn valid(&self, generation: u64) -> bool {
        generation != 0
            && self.mine.load(Ordering::Acquire) == generation
            && self.now() < self.valid_until.load(Ordering::Acquire)
    }

    /// The generation this box holds, 0 when none.
    pub fn generation(&self) -> u64 {
        self.mine.load(Ordering::Acquire)
    }

    pub fn watch(&self) -> watch::Receiver<LeaseState> {
        self.state.subscribe()
    }

    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Wall ms at which another box last renewed the lease (as this box saw it): what
    /// it routed after that may not have been forwarded by the holder.
    pub fn other_renewed_ms(&self) -> u64 {
        self.other_renewed_ms.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes and renews the lease every third of its TTL until `stop`, then frees it.
    /// Gives it up (as far as this box is concerned) the moment its validity runs out,
    /// also when Redis does not answer.
    pub async fn keep(self: Arc<Self>, stop: CancellationToken) {
        let script = redis::Script::new(SCRIPT);
        let every = (self.ttl / 3).max(Duration::from_millis(50));
        let mut conn: Option<Conn> = None;
        loop {
            let sent = self.now();
            let answer = self.attempt(&script, &mut conn).await;
            match answer {
                Ok((held, generation, holder, pttl)) => {
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    if held {
                        let margin = self.ttl.as_millis() as u64 / 5;
                        let until = sent + self.ttl.as_millis() as u64 - margin;
                        if self.mine.swap(generation, Ordering::AcqRel) != generation {
                            self.acquired.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(lease = %self.key, generation, "cluster: lease taken; this box runs it");
                        }
                        self.valid_until.store(until, Ordering::Release);
                    } else {
                        self.step_down();
                        if pttl > 0 {
                            let renewed = switchboard_core::clock::now_ms()
                                .saturating_sub(self.ttl.as_millis() as u64)
                                .saturating_add(pttl as u64);
                            self.other_renewed_ms.fetch_max(renewed, Ordering::Relaxed);
                        }
                    }
                    self.publish(LeaseState {
                        leader: held,
                        holder: Some(holder),
                        generation,
                    });
                }
                Err(e) => {
                    conn = None;
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                    tracing::debug!(lease = %self.key, error = %e, "cluster: lease not renewed");
                }
            }
            // Wake up when the validity runs out, if that comes before the next try.
            let left = self
                .valid_until
                .load(Ordering::Acquire)
                .saturating_sub(self.now());
            let wait = if self.generation() != 0 && left > 0 {
                every.min(Duration::from_millis(left))
            } else {
                every
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
            if self.generation() != 0 && self.now() >= self.valid_until.load(Ordering::Acquire) {
                tracing::warn!(lease = %self.key, "cluster: lease not renewed in time; this box stops running it");
                self.step_down();
                self.publish(LeaseState::default());
            }
        }
        self.release(conn).await;
    }

    async fn attempt(
        &self,
        script: &redis::Script,
        conn: &mut Option<Conn>,
    ) -> Result<(bool, u64, String, i64), redis::RedisError> {
        let timeout = self.shared.config.command_timeout;
        if conn.is_none() {
            *conn = Some(
                self.shared.shards[self.shard]
                    .connect(self.shared.config.connect_timeout)
                    .await?,
            );
        }
        let Some(c) = conn.as_mut() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "no connection",
            )));
        };
        let mut invocation = script.key(&self.key);
        invocation
            .key(&self.generation_key)
            .arg(&self.shared.node_id)
            .arg(self.ttl.as_millis() as u64)
            .arg(self.generation().to_string());
        let call = invocation.invoke_async::<(i64, String, String, i64)>(c);
        let (held, generation, holder, pttl) =
            tokio::time::timeout(timeout, call).await.map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::IoError, "lease: Redis did not answer"))
            })??;
        Ok((held == 1, generation.parse().unwrap_or(0), holder, pttl))
    }

    fn step_down(&self) {
        self.valid_until.store(0, Ordering::Release);
        if self.mine.swap(0, Ordering::AcqRel) != 0 {
            tracing::warn!(lease = %self.key, "cluster: lease lost; this box stands by");
        }
    }

    fn publish(&self, state: LeaseState) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// Gives the lease up in Redis (after a clean stop), so a standby takes over at its
    /// next try instead of after the TTL.
    async fn release(&self, conn: Option<Conn>) {
        let generation = self.generation();
        self.step_down();
        self.publish(LeaseState::default());
        let (Some(mut conn), true) = (conn, generation != 0) else {
            return;
        };
        let value = format!("{}|{generation}", self.shared.node_id);
        let script = redis::Script::new(RELEASE);
        let mut invocation = script.key(&self.key);
        invocation.arg(value);
        let call = invocation.invoke_async::<i64>(&mut conn);
        if tokio::time::timeout(self.shared.config.command_timeout, call)
            .await
            .is_err()
        {
            tracing::debug!(lease = %self.key, "cluster: lease not freed; it runs out on its own");
        }
    }
}

/// A takeover hands on from this long before the old holder's last renewal: what the
/// old holder had routed but not yet stored on disk (the store flushes every 100 ms),
/// or read from the bus later than this box.
const HAND_ON_MARGIN_MS: u64 = 500;

/// What a standby keeps of the work the holder does, so that a takeover loses none:
/// items routed while this box stands by, in memory, the last three TTLs at most and
/// at most [`Shadow::MAX`]. At a takeover, [`Shadow::take_unsent`] gives those routed
/// after the old holder's last renewal this box saw (less a margin): the ones the old
/// holder may not have handed on before it died. At least once, then: a few may be
/// handed on by both.
pub struct Shadow<T> {
    lease: Arc<Lease>,
    /// (wall ms routed, item), oldest first.
    items: Mutex<VecDeque<(u64, T)>>,
}

impl<T> Shadow<T> {
    pub const MAX: usize = 50_000;

    pub fn new(lease: Arc<Lease>) -> Self {
        Shadow {
            lease,
            items: Mutex::new(VecDeque::new()),
        }
    }

    pub fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// Whether this box holds the lease right now.
    pub fn leader(&self) -> bool {
        self.lease.valid(self.lease.generation())
    }

    /// Keeps `item` unless this box holds a valid lease (then gives it back): a box
    /// whose lease ran out while it was paused shadows too, so what it routes on
    /// waking is left to the new holder. Checked under the lock [`Shadow::take_unsent`]
    /// takes too (after the lease became valid), so nothing is left behind between the
    /// two.
    pub fn keep(&self, item: T) -> Option<T> {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if self.leader() {
            return Some(item);
        }
        let now = switchboard_core::clock::now_ms();
        let keep_ms = 3 * self.lease.ttl.as_millis() as u64;
        while items
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > keep_ms)
            || items.len() >= Self::MAX
        {
            items.pop_front();
        }
        items.push_back((now, item));
        None
    }

    /// At a takeover: the items the old holder may not have handed on, oldest first.
    pub fn take_unsent(&self) -> Vec<T> {
        let since = self
            .lease
            .other_renewed_ms()
            .saturating_sub(HAND_ON_MARGIN_MS);
        let items = std::mem::take(&mut *self.items.lock().unwrap_or_else(|p| p.into_inner()));
        items
            .into_iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, item)| item)
            .collect()
    }
}
