//! One fan-out case: N subscribers on one topic and one publisher, all on the bench's
//! single-threaded runtime (one core), against one server.
//!
//! Two phases per case. *Saturation*: the publisher keeps at most `window` messages
//! per subscriber in flight (published but not yet received, and not yet acked), so
//! the server is never idle yet its per-connection queues (1,024 frames) never fill;
//! the figure is deliveries per second. *Light load*: a fixed publish rate far below
//! saturation, for latency that is not mostly queueing. Latency is publish-to-receive
//! on one clock: the publisher writes nanoseconds since
//! [`EPOCH`](switchboard_bench::clock::EPOCH) at the start of `data`, and a subscriber subtracts it from the time its read returned. Saturation
//! samples one frame in 4 (one subscriber) or in 16 per subscriber, light load every
//! frame, so sampling stays a small part of the client's work.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::procs::{self, Kind, Server};
use switchboard_bench::clock::{now_ns, percentile_us};
use switchboard_bench::host;
use switchboard_bench::read_buf::{find, invalid};
use switchboard_bench::wire::{Conn, Frame, Reader};
use switchboard_bench::ws_frame::{close_reason, encode_pong, encode_text};

/// Length of the `data` string: 20 digits of timestamp, a space, padding.
pub const DATA_BYTES: usize = 100;
/// Messages per subscriber in flight during the saturation phase, by default: a
/// quarter of switchboard's outbound queue, so no frame is dropped.
pub const WINDOW: u64 = 256;
/// In flight cap during the light phase: only reached if the server stalls.
const LIGHT_WINDOW: u64 = 4096;
/// Publishes written with one `write` at most.
const BATCH: u64 = 64;
/// Latency samples kept per phase at most.
const MAX_SAMPLES: usize = 4_000_000;
/// Subscribers connecting at once during setup.
const CONNECT_CONCURRENCY: usize = 100;

const MSG: &[u8] = br#"{"op":"msg""#;
const OK: &[u8] = br#"{"op":"ok""#;
const ERROR: &[u8] = br#"{"op":"error""#;
const LAGGED: &[u8] = br#"{"op":"lagged""#;

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
    pub light_warmup: Duration,
    pub light_measure: Duration,
}

/// State shared by the tasks of one case; single-threaded, hence `Cell`.
struct Shared {
    subs: u64,
    window: Cell<u64>,
    delivered: Cell<u64>,
    published: Cell<u64>,
    acked: Cell<u64>,
    recording: Cell<bool>,
    /// A subscriber samples one frame in `sample_mask + 1` while recording.
    sample_mask: Cell<u64>,
    samples: RefCell<Vec<u64>>,
    publisher_waiting: Cell<bool>,
    wake: Notify,
    stop: Cell<bool>,
    /// A ping the publisher's connection must answer with its next write.
    pong_due: RefCell<Option<Vec<u8>>>,
    /// Frames the server reported dropped in `lagged` notices.
    lagged: Cell<u64>,
    /// Connections that ended or failed while they should have been running.
    failures: Cell<u64>,
    first_failure: RefCell<Option<String>>,
    ending: Cell<bool>,
}

impl Shared {
    /// How many more messages the publisher may send now.
    fn credit(&self) -> u64 {
        let published = self.published.get();
        let behind = (published * self.subs).saturating_sub(self.delivered.get());
        let lag = behind.div_ceil(self.subs);
        let unacked = published.saturating_sub(self.acked.get());
        self.window.get().saturating_sub(lag.max(unacked))
    }

    /// Wakes a waiting publisher once half its window is free again.
    fn progressed(&self) {
        if self.publisher_waiting.get() && self.credit() >= self.window.get() / 2 {
            self.publisher_waiting.set(false);
            self.wake.notify_one();
        }
    }

    fn sample(&self, latency_ns: u64) {
        let mut s = self.samples.borrow_mut();
        if s.len() < MAX_SAMPLES {
            s.push(latency_ns);
        }
    }

    fn fail(&self, what: String) {
        if self.ending.get() {
            return;
        }
        self.failures.set(self.failures.get() + 1);
        self.first_failure.borrow_mut().get_or_insert(what);
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub deliveries_per_sec: f64,
    pub publishes_per_sec: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub samples: usize,
    /// CPU used in the window as a fraction of one core.
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// Busy CPU of the whole machine that was neither, in cores.
    pub other_cpu: f64,
    /// Messages published in the phase that some subscriber never received.
    pub lost: u64,
    /// switchboard's `dropped` counter over the phase (`None` for the baseline).
    pub server_dropped: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Case {
    /// Which round of the run this was (set by the caller).
    pub round: usize,
    pub kind: Kind,
    pub subs: usize,
    pub saturation: Phase,
    pub light: Phase,
    pub light_rate: f64,
    pub lagged_notices: u64,
    pub failures: u64,
    pub first_failure: Option<String>,
}

impl Case {
    /// The most CPU other work used during either measuring window, in cores.
    pub fn other_cpu(&self) -> f64 {
        self.saturation.other_cpu.max(self.light.other_cpu)
    }
}

/// Publishes per second for the light phase: 100,000 deliveries/s, at most 10,000
/// publishes/s.
pub fn light_rate(subs: usize) -> f64 {
    (100_000.0 / subs as f64).min(10_000.0)
}

pub async fn run(
    server: &Server,
    subs: usize,
    timing: Timing,
    window: u64,
    deflate: bool,
) -> io::Result<Case> {
    let shared = Rc::new(Shared {
        subs: subs as u64,
        window: Cell::new(window),
        delivered: Cell::new(0),
        published: Cell::new(0),
        acked: Cell::new(0),
        recording: Cell::new(false),
        sample_mask: Cell::new(0),
        samples: RefCell::new(Vec::new()),
        publisher_waiting: Cell::new(false),
        wake: Notify::new(),
        stop: Cell::new(false),
        pong_due: RefCell::new(None),
        lagged: Cell::new(0),
        failures: Cell::new(0),
        first_failure: RefCell::new(None),
        ending: Cell::new(false),
    });

    let mut tasks = Vec::with_capacity(subs + 1);
    let mut remaining = subs;
    while remaining > 0 {
        let n = remaining.min(CONNECT_CONCURRENCY);
        remaining -= n;
        let conns =
            futures_util::future::try_join_all((0..n).map(|_| subscribe(server.addr, deflate)))
                .await?;
        for conn in conns {
            tasks.push(tokio::task::spawn_local(subscriber(conn, shared.clone())));
        }
    }

    let mut publisher = Conn::connect(server.addr, None, 64 * 1024).await?;
    publisher.wait_for(br#"{"op":"welcome""#).await?;
    let Conn { rx, tx } = publisher;
    tasks.push(tokio::task::spawn_local(acks(rx, shared.clone())));

    // About a million samples per window either way.
    let sat_mask = if subs == 1 { 3 } else { 15 };
    let (saturation, tx) = phase(
        &shared,
        server,
        tx,
        Pace::Window,
        timing.warmup,
        timing.measure,
        sat_mask,
    )
    .await?;
    let rate = light_rate(subs);
    shared.window.set(LIGHT_WINDOW);
    let (light, _tx) = phase(
        &shared,
        server,
        tx,
        Pace::Rate(rate),
        timing.light_warmup,
        timing.light_measure,
        0,
    )
    .await?;

    shared.ending.set(true);
    for t in &tasks {
        t.abort();
    }
    let first_failure = shared.first_failure.borrow_mut().take();
    Ok(Case {
        round: 0,
        kind: server.kind,
        subs,
        saturation,
        light,
        light_rate: rate,
        lagged_notices: shared.lagged.get(),
        failures: shared.failures.get(),
        first_failure,
    })
}

async fn subscribe(addr: std::net::SocketAddr, deflate: bool) -> io::Result<Conn> {
    let mut conn = if deflate {
        Conn::connect_deflate(addr, None, 16 * 1024).await?
    } else {
        Conn::connect(addr, None, 16 * 1024).await?
    };
    conn.wait_for(br#"{"op":"welcome""#).await?;
    conn.send_text(r#"{"op":"sub","id":"1","topic":"bench"}"#)
        .await?;
    conn.wait_for(OK).await?;
    Ok(conn)
}

#[derive(Debug, Clone, Copy)]
enum Pace {
    /// As fast as the window allows.
    Window,
    /// This many publishes per second, on a 1 ms timer (so in small bursts).
    Rate(f64),
}

/// Runs the publisher through a warm-up and a measuring window, then stops it and
/// waits for every message to arrive (or not).
async fn phase(
    shared: &Rc<Shared>,
    server: &Server,
    tx: OwnedWriteHalf,
    pace: Pace,
    warmup: Duration,
    measure: Duration,
    sample_mask: u64,
) -> io::Result<(Phase, OwnedWriteHalf)> {
    let health0 = health(server).await;
    let missing0 = missing(shared);
    shared.stop.set(false);
    shared.sample_mask.set(sample_mask);
    shared.samples.borrow_mut().clear();
    let task = tokio::task::spawn_local(publish(tx, shared.clone(), pace));

    tokio::time::sleep(warmup).await;
    let (t0, d0, p0) = (
        Instant::now(),
        shared.delivered.get(),
        shared.published.get(),
    );
    let (s0, c0, m0) = (
        server.cpu(),
        host::cpu_time("/proc/self/stat"),
        host::machine_busy(),
    );
    shared.recording.set(true);
    tokio::time::sleep(measure).await;
    shared.recording.set(false);
    let elapsed = t0.elapsed().as_secs_f64();
    let (d1, p1) = (shared.delivered.get(), shared.published.get());
    let (s1, c1, m1) = (
        server.cpu(),
        host::cpu_time("/proc/self/stat"),
        host::machine_busy(),
    );

    shared.stop.set(true);
    shared.wake.notify_one();
    let tx = task
        .await
        .map_err(|e| io::Error::other(format!("publisher task: {e}")))??;
    let deadline = Instant::now() + Duration::from_secs(5);
    while missing(shared) > missing0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let health1 = health(server).await;

    let mut samples = std::mem::take(&mut *shared.samples.borrow_mut());
    samples.sort_unstable();
    let result = Phase {
        deliveries_per_sec: (d1 - d0) as f64 / elapsed,
        publishes_per_sec: (p1 - p0) as f64 / elapsed,
        p50_us: percentile_us(&samples, 50),
        p99_us: percentile_us(&samples, 99),
        samples: samples.len(),
        server_cpu: (s1 - s0).as_secs_f64() / elapsed,
        client_cpu: (c1 - c0).as_secs_f64() / elapsed,
        other_cpu: ((m1 - m0).as_secs_f64() - (s1 - s0).as_secs_f64() - (c1 - c0).as_secs_f64())
            .max(0.0)
            / elapsed,
        lost: missing(shared).saturating_sub(missing0),
        server_dropped: match (health0, health1) {
            (Some(a), Some(b)) => Some(b.dropped - a.dropped),
            _ => None,
        },
    };
    Ok((result, tx))
}

/// Deliveries still owed: messages published times subscribers, minus received.
fn missing(shared: &Shared) -> u64 {
    (shared.published.get() * shared.subs).saturating_sub(shared.delivered.get())
        + shared.published.get().saturating_sub(shared.acked.get())
}

async fn health(server: &Server) -> Option<procs::Health> {
    if server.kind != Kind::Switchboard {
        return None;
    }
    procs::healthz(server.addr).await.ok()
}

/// The publisher: pipelined `pub` frames, paced by credit or by rate. Returns the
/// write half so the next phase can reuse the connection.
async fn publish(
    mut tx: OwnedWriteHalf,
    shared: Rc<Shared>,
    pace: Pace,
) -> io::Result<OwnedWriteHalf> {
    let pad = "x".repeat(DATA_BYTES - 21);
    let mut text = String::with_capacity(DATA_BYTES + 64);
    let mut out = Vec::with_capacity(BATCH as usize * (DATA_BYTES + 80));
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    while !shared.stop.get() {
        let credit = shared.credit();
        let n = match pace {
            Pace::Window => credit.min(BATCH),
            Pace::Rate(rate) => {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                due.saturating_sub(sent).min(credit).min(BATCH)
            }
        };
        if n == 0 {
            match pace {
                Pace::Window => {
                    shared.publisher_waiting.set(true);
                    let _ = tokio::time::timeout(Duration::from_millis(10), shared.wake.notified())
                        .await;
                }
                Pace::Rate(rate) => {
                    let next = start + Duration::from_secs_f64((sent + 1) as f64 / rate);
                    tokio::time::sleep_until(next).await;
                }
            }
            continue;
        }
        out.clear();
        if let Some(ping) = shared.pong_due.borrow_mut().take() {
            encode_pong(&ping, &mut out);
        }
        let first = shared.published.get();
        for id in first + 1..=first + n {
            text.clear();
            let _ = write!(
                text,
                r#"{{"op":"pub","id":"{id}","topic":"bench","data":"{:020} {pad}"}}"#,
                now_ns()
            );
            encode_text(text.as_bytes(), &mut out);
        }
        // Counted before the write: subscribers may run while it waits for room.
        shared.published.set(first + n);
        sent += n;
        tx.write_all(&out).await?;
    }
    Ok(tx)
}

/// Reads the publisher's acks.
async fn acks(mut rx: Reader, shared: Rc<Shared>) {
    let result: io::Result<()> = async {
        loop {
            let mut n = 0;
            while let Some(frame) = rx.next_frame()? {
                match frame {
                    Frame::Text(t) if t.starts_with(OK) => n += 1,
                    Frame::Text(t) if t.starts_with(ERROR) => {
                        shared.fail(format!("publish refused: {}", String::from_utf8_lossy(t)));
                        n += 1;
                    }
                    Frame::Ping(p) => *shared.pong_due.borrow_mut() = Some(p.to_vec()),
                    Frame::Close(c) => {
                        return Err(invalid(format!(
                            "server closed the publisher: {}",
                            close_reason(c)
                        )))
                    }
                    Frame::Text(_) | Frame::Other => {}
                }
            }
            if n > 0 {
                shared.acked.set(shared.acked.get() + n);
                shared.progressed();
            }
            if !rx.fill().await? {
                return Err(invalid("publisher connection ended"));
            }
        }
    }
    .await;
    if let Err(e) = result {
        shared.fail(e.to_string());
    }
}

/// One subscriber's receive loop: count `msg` frames, sample latency, answer pings.
async fn subscriber(mut conn: Conn, shared: Rc<Shared>) {
    let mut seen = 0u64;
    let mut pong = Vec::new();
    let result: io::Result<()> = async {
        loop {
            let mut frames = 0;
            // One clock read per socket read: every frame in it had arrived by then.
            let mut now = None;
            while let Some(frame) = conn.rx.next_frame()? {
                match frame {
                    Frame::Text(t) if t.starts_with(MSG) => {
                        frames += 1;
                        if shared.recording.get() {
                            seen += 1;
                            if seen & shared.sample_mask.get() == 0 {
                                if let Some(ts) = switchboard_bench::wire::data_timestamp(t) {
                                    let now = *now.get_or_insert_with(now_ns);
                                    shared.sample(now.saturating_sub(ts));
                                }
                            }
                        }
                    }
                    Frame::Text(t) if t.starts_with(LAGGED) => {
                        shared.lagged.set(shared.lagged.get() + lagged_count(t));
                    }
                    Frame::Ping(p) => encode_pong(p, &mut pong),
                    Frame::Close(c) => {
                        return Err(invalid(format!(
                            "server closed a subscriber: {}",
                            close_reason(c)
                        )))
                    }
                    Frame::Text(_) | Frame::Other => {}
                }
            }
            if frames > 0 {
                shared.delivered.set(shared.delivered.get() + frames);
                shared.progressed();
            }
            if !pong.is_empty() {
                conn.tx.write_all(&pong).await?;
                pong.clear();
            }
            if !conn.rx.fill().await? {
                return Err(invalid("subscriber connection ended"));
            }
        }
    }
    .await;
    if let Err(e) = result {
        shared.fail(e.to_string());
    }
}

/// The `dropped` count of a `lagged` notice (1 if unreadable: it still says drops).
fn lagged_count(frame: &[u8]) -> u64 {
    find(frame, b"\"dropped\":")
        .map(|at| {
            frame[at + 10..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .fold(0u64, |n, &c| n.saturating_mul(10) + u64::from(c - b'0'))
        })
        .filter(|&n| n > 0)
        .unwrap_or(1)
}
