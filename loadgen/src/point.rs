//! One measured point: a running system, subscribers held by worker processes, and
//! publishers paced at a fixed offered rate by this (coordinator) process.
//!
//! Each payload is JSON that starts with its send time and sequence number
//! (`{"t":<ns since the epoch>,"n":<seq>,…}`); workers count the messages of the
//! measured window by sequence number and time them against the same wall clock. A
//! point publishes a warm-up (not counted), then the window, then waits for the
//! stragglers: what a subscriber never got is lost.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::client::Pub;
use crate::peers::Server;
use crate::results::Row;
use crate::worker::{self, Ready, Report, Spec};

/// Connections one worker process holds: well under the 20,000 open files a process
/// may have here, with room for the runtime's own.
pub const PER_WORKER: usize = 15_000;
/// Loopback source addresses the connections are spread over (127.0.0.2 …): each has
/// about 28,000 ephemeral ports.
pub const SOURCE_IPS: u8 = 8;
/// A p99 above this means the subscribers are falling behind: not sustained.
pub const BEHIND_P99_US: f64 = 100_000.0;
pub const TOPIC: &str = "bench/x";

/// The shape of the published payload.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Plain: bytes of the JSON payload. End-to-end: bytes of the plaintext sealed.
    pub size: usize,
    /// A real end-to-end envelope (a room message, JWE with A256CBC-HS512, docs/e2e.md)
    /// of `size` plaintext bytes, carried as `"e"` after the stamp.
    pub e2e: bool,
}

/// A room message of `size` plaintext bytes, encrypted once per size and reused: the
/// gateway relays it as opaque JSON whatever its message id, and encrypting in the
/// publish loop would measure the harness's AES, not the gateway.
fn envelope(size: usize) -> std::sync::Arc<[u8]> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static MADE: OnceLock<Mutex<HashMap<usize, Arc<[u8]>>>> = OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    let mut made = made
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    made.entry(size)
        .or_insert_with(|| {
            let key = switchboard_e2e::RoomKey::create(TOPIC, 1);
            let jwe = key.encrypt(TOPIC, "bench", &vec![b'x'; size]);
            serde_json::to_vec(&jwe).unwrap_or_default().into()
        })
        .clone()
}

/// Writes a payload stamped with time `t` and sequence `n` into `out` (cleared).
pub fn payload(t: u64, n: u64, shape: Shape, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.clear();
    let _ = write!(out, "{{\"t\":{t},\"n\":{n},");
    if shape.e2e {
        out.extend_from_slice(b"\"e\":");
        out.extend_from_slice(&envelope(shape.size));
        out.push(b'}');
    } else {
        out.extend_from_slice(b"\"p\":\"");
        let pad = shape.size.saturating_sub(out.len() + 2);
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(b"\"}");
    }
}

/// The bytes of a payload of `shape` (for the record).
pub fn payload_len(shape: Shape) -> usize {
    let mut out = Vec::new();
    payload(worker::wall_ns(), 1_000_000, shape, &mut out);
    out.len()
}

/// What one point offers.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Publishes per second, over all publishers.
    pub rate: f64,
    pub shape: Shape,
    pub warmup: Duration,
    pub measure: Duration,
    /// Run a window again when other work disturbed it (off in quick mode).
    pub retry_noisy: bool,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    subs: usize,
}

impl Worker {
    async fn ask(&mut self, command: &str) -> Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("worker input closed")?;
        self.lines
            .next_line()
            .await
            .context("worker output")?
            .context("the worker process ended")
    }
}

/// A system with its subscribers and publishers, for a series of points.
pub struct Rig {
    pub server: Server,
    /// More boxes of the same system holding the subscribers (the `cluster` scenario);
    /// empty when the subscribers are on `server`.
    pub others: Vec<Server>,
    workers: Vec<Worker>,
    pubs: Vec<Pub>,
    subs: usize,
    seq: u64,
    /// How long the workers wait for stragglers without progress before the rest of a
    /// window counts as lost.
    pub quiet: Duration,
}

/// Starts worker processes holding `count` connections to `server` (subscribed to
/// `topic`, or idle each on its own topic), spread over source addresses.
async fn spawn_workers(
    server: &Server,
    count: usize,
    topic: Option<&str>,
) -> Result<(Vec<Worker>, f64)> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut first = 0;
    while first < count {
        let n = PER_WORKER.min(count - first);
        let spec = Spec {
            target: server.target.clone(),
            count: n,
            first,
            topic: topic.map(str::to_owned),
            source_ips: SOURCE_IPS,
        };
        let mut child = tokio::process::Command::new(&exe)
            .arg("worker")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("worker pipes missing");
        };
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            subs: n,
        });
        first += n;
    }
    for w in &mut workers {
        let line = w
            .lines
            .next_line()
            .await?
            .context("a worker ended before its connections were up")?;
        let ready: Ready = serde_json::from_str(&line).context("worker ready line")?;
        if ready.failed > 0 {
            bail!(
                "{} of {} connections failed: {}",
                ready.failed,
                w.subs,
                ready.first_error.unwrap_or_default()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    Ok((workers, count as f64 / secs))
}

impl Rig {
    /// `subs` subscribers of [`TOPIC`] and `publishers` publishing connections.
    pub async fn new(server: Server, subs: usize, publishers: usize) -> Result<Rig> {
        Rig::across(server, Vec::new(), subs, publishers).await
    }

    /// [`Rig::new`] with the subscribers shared out over `others` (boxes that get the
    /// publishes from `server` through Redis), or on `server` when there are none.
    pub async fn across(
        server: Server,
        others: Vec<Server>,
        subs: usize,
        publishers: usize,
    ) -> Result<Rig> {
        let mut workers = Vec::new();
        if others.is_empty() {
            workers = spawn_workers(&server, subs, Some(TOPIC)).await?.0;
        }
        for (i, box_) in others.iter().enumerate() {
            let share = subs / others.len() + usize::from(i < subs % others.len());
            workers.extend(spawn_workers(box_, share, Some(TOPIC)).await?.0);
        }
        let mut pubs = Vec::with_capacity(publishers);
        for i in 0..publishers {
            pubs.push(
                Pub::connect(&server.target, &format!("bench-pub-{i}"))
                    .await
                    .with_context(|| format!("publisher {i} of {}", server.target.system.name()))?,
            );
        }
        Ok(Rig {
            server,
            others,
            workers,
            pubs,
            subs,
            seq: 1,
            quiet: worker::QUIET,
        })
    }

    /// Publishes `count` payloads from sequence `first` at `rate` per second, round
    /// robin over the publishers, in a burst per 1 ms tick. Returns the time taken.
    async fn publish(
        &mut self,
        rate: f64,
        first: u64,
        count: u64,
        shape: Shape,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut sent, mut next) = (0u64, 0usize);
        let mut buf = Vec::new();
        while sent < count {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(count);
            while sent < due {
                payload(worker::wall_ns(), first + sent, shape, &mut buf);
                self.pubs[next].add(TOPIC, &buf);
                next = (next + 1) % self.pubs.len();
                sent += 1;
            }
            for p in &mut self.pubs {
                p.flush().await.context("publishing")?;
            }
        }
        Ok(start.elapsed())
    }

    /// Runs one point and measures it.
    pub async fn point(&mut self, load: Load) -> Result<Row> {
        let warm = ((load.rate * load.warmup.as_secs_f64()) as u64).max(1);
        let window = ((load.rate * load.measure.as_secs_f64()) as u64).max(1);
        let lo = self.seq + warm;
        let hi = lo + window;
        for w in &mut self.workers {
            let ok = w.ask(&format!("window {lo} {hi}")).await?;
            if ok != "ok" {
                bail!("worker: {ok}");
            }
        }
        self.publish(load.rate, self.seq, warm, load.shape).await?;
        let busy0 = crate::host::machine_busy();
        let (cpu0, client0) = (self.servers_cpu(), self.client_cpu());
        let elapsed = self.publish(load.rate, lo, window, load.shape).await?;
        let cpu = self.servers_cpu().saturating_sub(cpu0);
        let client_cpu = self.client_cpu().saturating_sub(client0);
        let other = crate::host::machine_busy()
            .saturating_sub(busy0)
            .saturating_sub(cpu + client_cpu);
        self.seq = hi;

        let mut hist = worker::histogram();
        let (mut received, mut closed) = (0, 0);
        for w in &mut self.workers {
            let expected = window * w.subs as u64;
            let quiet = self.quiet.as_millis();
            let line = w.ask(&format!("report {expected} {quiet}")).await?;
            let report: Report = serde_json::from_str(&line).context("worker report")?;
            received += report.received;
            closed += report.closed;
            for (v, c) in report.latency_us {
                hist.saturating_record_n(v, c);
            }
        }
        let expected = window * self.subs as u64;
        let secs = elapsed.as_secs_f64();
        let planned = load.measure.as_secs_f64();
        let q = |p: f64| hist.value_at_quantile(p) as f64;
        let mut row = Row {
            system: self.server.target.system.name().to_owned(),
            subscribers: self.subs,
            publishers: self.pubs.len(),
            payload_bytes: payload_len(load.shape),
            offered_per_s: load.rate * self.subs as f64,
            delivered_per_s: received as f64 / secs.max(planned),
            lost: expected.saturating_sub(received),
            loss: expected.saturating_sub(received) as f64 / expected.max(1) as f64,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: hist.max() as f64,
            server_cpu_pct: 100.0 * cpu.as_secs_f64() / secs.max(1e-9),
            client_cpu_pct: 100.0 * client_cpu.as_secs_f64() / secs.max(1e-9),
            other_cpu_pct: 100.0 * other.as_secs_f64() / secs.max(1e-9),
            server_peak_rss_kib: self.server.peak_rss_kib(),
            ..Row::default()
        };
        let mut notes = Vec::new();
        if row.lost > 0 {
            notes.push(format!("{} lost", row.lost));
        }
        if closed > 0 {
            notes.push(format!("{closed} connections closed"));
        }
        if secs > planned * 1.1 + 0.005 {
            notes.push(format!("publisher behind ({secs:.2} s for {planned:.2} s)"));
        }
        if row.p99_us > BEHIND_P99_US {
            notes.push("p99 > 100 ms".into());
        }
        row.sustained = notes.is_empty();
        row.note = notes.join("; ");
        Ok(row)
    }

    /// How many subscribers the rig holds.
    pub fn subscribers(&self) -> usize {
        self.subs
    }

    /// CPU time of every box of the system so far.
    fn servers_cpu(&self) -> Duration {
        self.others.iter().map(Server::cpu).sum::<Duration>() + self.server.cpu()
    }

    /// CPU time of the load generator so far: this process and its workers. Near
    /// 100% of its core, the figures are the client's limit, not the server's.
    fn client_cpu(&self) -> Duration {
        let workers = self
            .workers
            .iter()
            .filter_map(|w| w.child.id())
            .map(|pid| crate::host::cpu_time(&format!("/proc/{pid}/stat")));
        workers.sum::<Duration>() + crate::host::cpu_time("/proc/self/stat")
    }

    /// Stops the workers.
    pub async fn stop(mut self) {
        for w in &mut self.workers {
            let _ = w.stdin.write_all(b"quit\n").await;
            let _ = w.child.wait().await;
        }
    }
}

/// Opens `count` idle connections to `server` (each subscribed to a topic of its own)
/// and measures what they cost it: RSS per connection and connections set up per
/// second. Returns the row and keeps nothing open.
pub async fn idle(server: Server, count: usize) -> Result<Row> {
    let before = server.rss_kib();
    let (workers, connect_rate) = spawn_workers(&server, count, None).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_kib();
    let row = Row {
        system: server.target.system.name().to_owned(),
        subscribers: count,
        held: Some(count),
        connect_per_s: Some(connect_rate),
        rss_per_conn_kib: Some(after.saturating_sub(before) as f64 / count.max(1) as f64),
        server_peak_rss_kib: server.peak_rss_kib(),
        sustained: true,
        ..Row::default()
    };
    let rig = Rig {
        server,
        others: Vec::new(),
        workers,
        pubs: Vec::new(),
        subs: count,
        seq: 0,
        quiet: worker::QUIET,
    };
    rig.stop().await;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_e2e_payload_is_stamped_and_carries_a_real_room_envelope() {
        let mut out = Vec::new();
        payload(
            7,
            9,
            Shape {
                size: 1024,
                e2e: true,
            },
            &mut out,
        );
        assert!(out.starts_with(b"{\"t\":7,\"n\":9,\"e\":{"));
        let json: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        let envelope = json["e"].to_string();
        assert_eq!(
            switchboard_e2e::shape::check(&envelope, TOPIC),
            Ok(switchboard_e2e::Kind::Room)
        );
        // 1,024 bytes pad to 1,040 of ciphertext: 1,387 characters of base64url.
        assert_eq!(json["e"]["ciphertext"].as_str().map(str::len), Some(1387));
    }
}
