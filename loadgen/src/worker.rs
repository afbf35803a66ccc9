//! A worker process: holds a share of the subscribers (or idle connections) of a
//! point, so that the load generator is not capped by one process's open-file limit
//! (about 20,000 here). The coordinator re-executes its own binary as `worker SPEC`
//! and talks to it in lines: the worker prints one JSON line when its connections are
//! up, then answers commands read from stdin:
//!
//! - `window LO HI`: count and time messages with sequence numbers in `LO..HI` from
//!   now on (histogram and counters reset); answered `ok`;
//! - `report EXPECTED`: wait until `EXPECTED` messages of the window arrived, or until
//!   nothing arrived for a while; answered with a [`Report`] line;
//! - `quit` or end of input: exit.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::client::{self, Target};
use crate::read_buf::number_after;

/// What one worker holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub target: Target,
    /// Connections to open, and the index of the first (for topics and client ids).
    pub count: usize,
    pub first: usize,
    /// Every connection subscribes to this topic; `None`: each to `idle/<index>`.
    pub topic: Option<String>,
    /// Source addresses 127.0.0.2 … 127.0.0.(1 + source_ips), round robin.
    pub source_ips: u8,
}

/// The worker's first line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
}

/// The answer to `report`: messages of the window received, and their latency
/// histogram (µs) as (value, count) pairs to merge.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub received: u64,
    pub closed: u64,
    pub latency_us: Vec<(u64, u64)>,
}

/// Nanoseconds since the Unix epoch: a clock every process of the machine shares, so a
/// payload stamped by the coordinator is timed by a worker.
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

struct Counter {
    lo: Cell<u64>,
    hi: Cell<u64>,
    received: Cell<u64>,
    closed: Cell<u64>,
    hist: RefCell<Histogram<u64>>,
}

impl Counter {
    fn on_payload(&self, payload: &[u8], now: u64) {
        let Some(n) = number_after(payload, b"\"n\":") else {
            return;
        };
        if n < self.lo.get() || n >= self.hi.get() {
            return;
        }
        self.received.set(self.received.get() + 1);
        if let Some(t) = number_after(payload, b"\"t\":") {
            let us = now.saturating_sub(t) / 1000;
            self.hist.borrow_mut().saturating_record(us.max(1));
        }
    }
}

/// Source address `i` of the round robin.
pub fn source_ip(index: usize, ips: u8) -> Option<IpAddr> {
    (ips > 0).then(|| {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (index % usize::from(ips)) as u8,
        ))
    })
}

/// Runs a worker until its input ends.
pub fn run(spec_json: &str) -> Result<()> {
    let spec: Spec = serde_json::from_str(spec_json).context("bad worker spec")?;
    crate::host::raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the worker runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(spec))
}

async fn serve(spec: Spec) -> Result<()> {
    let counter = Rc::new(Counter {
        lo: Cell::new(u64::MAX),
        hi: Cell::new(u64::MAX),
        received: Cell::new(0),
        closed: Cell::new(0),
        hist: RefCell::new(histogram()),
    });
    let started = Instant::now();
    let (connected, failed, first_error) = connect_all(&spec, &counter).await;
    let mut stdout = tokio::io::stdout();
    let ready = Ready {
        connected,
        failed,
        first_error,
        seconds: started.elapsed().as_secs_f64(),
    };
    let line = serde_json::to_string(&ready)? + "\n";
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("window"), Some(lo), Some(hi)) => {
                counter.lo.set(lo.parse().context("window LO")?);
                counter.hi.set(hi.parse().context("window HI")?);
                counter.received.set(0);
                counter.hist.borrow_mut().reset();
                "ok".to_owned()
            }
            (Some("report"), Some(expected), quiet) => {
                let expected: u64 = expected.parse().context("report EXPECTED")?;
                let quiet = match quiet {
                    Some(ms) => Duration::from_millis(ms.parse().context("report QUIET_MS")?),
                    None => QUIET,
                };
                wait_for(&counter, expected, quiet).await;
                let hist = counter.hist.borrow();
                let report = Report {
                    received: counter.received.get(),
                    closed: counter.closed.get(),
                    latency_us: hist
                        .iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect(),
                };
                serde_json::to_string(&report)?
            }
            (Some("quit"), _, _) => break,
            _ => anyhow::bail!("unknown worker command: {line}"),
        };
        stdout.write_all((reply + "\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// How long a report waits without progress before the rest counts as lost, unless the
/// coordinator says otherwise (`report N QUIET_MS`).
pub const QUIET: Duration = Duration::from_millis(1500);

/// Waits for `expected` window messages; gives up after `quiet` without progress (the
/// rest is lost) or 30 s in all.
async fn wait_for(counter: &Counter, expected: u64, quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (counter.received.get(), Instant::now());
    while counter.received.get() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = counter.received.get();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > quiet {
            break;
        }
    }
}

/// Opens the connections, 128 at a time, and starts a receiving task for each.
async fn connect_all(spec: &Spec, counter: &Rc<Counter>) -> (usize, usize, Option<String>) {
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    let indices: Vec<usize> = (spec.first..spec.first + spec.count).collect();
    for chunk in indices.chunks(128) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let target = spec.target.clone();
            let topic = spec.topic.clone().unwrap_or_else(|| format!("idle/{i}"));
            let bind = source_ip(i, spec.source_ips);
            set.spawn_local(async move {
                client::subscribe(&target, bind, &topic, &format!("bench-{i}")).await
            });
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(sub)) => {
                    connected += 1;
                    let c = counter.clone();
                    tokio::task::spawn_local(async move {
                        let _ = sub.receive(|p| c.on_payload(p, wall_ns())).await;
                        c.closed.set(c.closed.get() + 1);
                    });
                }
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    (connected, failed, first_error)
}
