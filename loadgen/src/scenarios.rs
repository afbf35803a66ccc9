//! The scenarios of issue 9, each a function of one system that returns its rows, and
//! the runner that races every available system through one scenario and writes the
//! results and charts to `<out>/<scenario>/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::chart::{self, Metric};
use crate::client::System;
use crate::peers::{Server, Setup};
use crate::point::{self, Load, Rig, Shape};
use crate::proto::Ws;
use crate::read_buf::{find, invalid};
use crate::results::{self, Results, Row, Skipped};
use crate::worker;
use crate::ws_frame::OP_TEXT;

mod cluster;

/// The scenarios, in the order `all` runs them.
pub const ALL: [&str; 7] = [
    "fanout",
    "fanin",
    "latency",
    "payload",
    "http",
    "connections",
    "e2e",
];

/// How a run is sized.
#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    pub repeats: usize,
    pub out: PathBuf,
    pub systems: Vec<System>,
    /// Subscriber counts for `fanout` and `latency`, when given.
    pub subs: Option<Vec<usize>>,
    pub warmup: Duration,
    pub measure: Duration,
    /// Idle connections the `connections` scenario tries to hold.
    pub connections: usize,
    pub setup: Setup,
    pub machine: String,
    pub pinned: bool,
}

impl Opts {
    pub(crate) fn load(&self, rate: f64, shape: Shape) -> Load {
        Load {
            rate,
            shape,
            warmup: self.warmup,
            measure: self.measure,
            retry_noisy: !self.quick,
        }
    }

    pub(crate) fn pick<T: Clone>(&self, full: &[T], quick: &[T]) -> Vec<T> {
        if self.quick { quick } else { full }.to_vec()
    }
}

pub(crate) const PLAIN_64: Shape = Shape {
    size: 64,
    e2e: false,
};

/// Runs scenario `name` over every selected system; writes results and charts.
pub async fn run(name: &str, opts: &Opts) -> Result<Results> {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    println!("== {name}");
    for &system in &opts.systems {
        let not_here = (name == "http" && !matches!(system, System::Switchboard | System::NodeWs))
            .then(|| "no HTTP publish endpoint".to_owned())
            .or_else(|| {
                (name == "cluster")
                    .then(|| cluster::not_here(system, &opts.setup))
                    .flatten()
            });
        if let Some(reason) = not_here.or_else(|| opts.setup.missing(system)) {
            println!("  {:<24} skipped: {reason}", system.name());
            skipped.push(Skipped {
                system: system.name().into(),
                reason,
            });
            continue;
        }
        // Rows measured before a failure are kept; the failure is recorded.
        let mut got = Vec::new();
        let outcome = match name {
            "fanout" => fanout(system, opts, &mut got).await,
            "fanin" => fanin(system, opts, &mut got).await,
            "latency" => latency(system, opts, &mut got).await,
            "payload" => payload(system, opts, &mut got).await,
            "http" => http(system, opts, &mut got).await,
            "connections" => connections(system, opts, &mut got).await,
            "e2e" => e2e(system, opts, &mut got).await,
            "cluster" => cluster::run(system, opts, &mut got).await,
            _ => bail!("unknown scenario {name}"),
        };
        for r in &mut got {
            r.scenario = name.into();
        }
        rows.extend(got);
        if let Err(e) = outcome {
            let reason = format!("failed: {e:#}");
            println!("  {:<24} {reason}", system.name());
            skipped.push(Skipped {
                system: system.name().into(),
                reason,
            });
        }
    }
    let results = Results {
        scenario: name.into(),
        quick: opts.quick,
        machine: opts.machine.clone(),
        pinned: opts.pinned,
        versions: crate::peers::versions(&opts.setup),
        skipped,
        rows,
    };
    let dir = opts.out.join(name);
    results.write(&dir)?;
    charts(name, &results.rows, &dir)?;
    println!("  written: {}", dir.display());
    Ok(results)
}

/// Draws the charts of the results in `dir` again (after a change to the charts, or
/// to put a point from another run in).
pub fn redraw(dir: &std::path::Path) -> Result<()> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let results: Results = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a results file", path.display()))?;
    charts(&results.scenario, &results.rows, dir)?;
    println!("  charts redrawn: {}", dir.display());
    Ok(())
}

/// The charts of a scenario, next to its data.
fn charts(name: &str, rows: &[Row], dir: &std::path::Path) -> Result<()> {
    let all: Vec<&Row> = rows.iter().collect();
    match name {
        "fanout" => {
            let mut ns: Vec<usize> = rows.iter().map(|r| r.subscribers).collect();
            ns.sort_unstable();
            ns.dedup();
            for n in &ns {
                let of_n: Vec<&Row> = rows.iter().filter(|r| r.subscribers == *n).collect();
                let title = format!("fan-out to {n} subscribers");
                chart::draw(
                    &dir.join(format!("fanout-{n}-delivered.svg")),
                    &title,
                    &of_n,
                    Metric::Delivered,
                )?;
                chart::draw(
                    &dir.join(format!("fanout-{n}-p99.svg")),
                    &title,
                    &of_n,
                    Metric::P99,
                )?;
            }
            // The headline: the highest sustained rate of each system per subscriber count.
            let mut best: Vec<Row> = Vec::new();
            for r in rows.iter().filter(|r| r.sustained) {
                match best
                    .iter_mut()
                    .find(|b| b.series == r.series && b.subscribers == r.subscribers)
                {
                    Some(b) if b.delivered_per_s >= r.delivered_per_s => {}
                    Some(b) => *b = r.clone(),
                    None => best.push(r.clone()),
                }
            }
            for b in &mut best {
                b.x = b.subscribers as f64;
                b.x_label = "subscribers".into();
            }
            let best: Vec<&Row> = best.iter().collect();
            chart::draw(
                &dir.join("fanout-saturation.svg"),
                "fan-out: highest sustained deliveries/s",
                &best,
                Metric::Delivered,
            )?;
        }
        "connections" => {
            chart::draw(
                &dir.join("connections-rss.svg"),
                "idle WebSocket connections",
                &all,
                Metric::RssPerConn,
            )?;
        }
        _ => {
            chart::draw(
                &dir.join(format!("{name}-delivered.svg")),
                name,
                &all,
                Metric::Delivered,
            )?;
            chart::draw(
                &dir.join(format!("{name}-p99.svg")),
                name,
                &all,
                Metric::P99,
            )?;
        }
    }
    Ok(())
}

/// Repeats a point and keeps the median, printing it.
async fn measured(rig: &mut Rig, load: Load, repeats: usize, x_label: &str, x: f64) -> Result<Row> {
    measured_as(rig, load, repeats, x_label, x, None).await
}

/// [`measured`] for a chart line other than the system's own.
pub(crate) async fn measured_as(
    rig: &mut Rig,
    load: Load,
    repeats: usize,
    x_label: &str,
    x: f64,
    series: Option<String>,
) -> Result<Row> {
    let mut runs = Vec::new();
    for _ in 0..repeats.max(1) {
        // This machine is shared: a window during which other work took a share of a
        // core is run again (up to three tries), and the quietest try is kept.
        let mut best = rig.point(load).await?;
        for _ in 1..3 {
            if !load.retry_noisy || best.other_cpu_pct <= results::NOISY_PCT {
                break;
            }
            let again = rig.point(load).await?;
            if again.other_cpu_pct < best.other_cpu_pct {
                best = again;
            }
        }
        runs.push(best);
    }
    let mut row = results::median(runs).context("no runs")?;
    row.x_label = x_label.into();
    row.x = x;
    row.series = series.unwrap_or_else(|| row.system.clone());
    results::print_row(&row);
    Ok(row)
}

/// 1 publisher → N subscribers, offered deliveries/s stepped up until a point is not
/// sustained. The highest sustained point is the saturation point.
async fn fanout(system: System, opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let subs = opts
        .subs
        .clone()
        .unwrap_or_else(|| opts.pick(&[1, 100, 1000, 10_000], &[1, 100]));
    let steps = opts.pick(
        &[
            10e3, 20e3, 50e3, 100e3, 200e3, 400e3, 700e3, 1e6, 1.5e6, 2e6, 3e6, 4e6, 6e6, 8e6,
        ],
        &[10e3, 50e3],
    );
    for n in subs {
        let mut rig = Rig::new(Server::start(system, &opts.setup)?, n, 1).await?;
        ladder(&mut rig, &steps, opts, None, rows).await?;
        rig.stop().await;
    }
    Ok(())
}

/// Offered deliveries/s stepped up on `rig` until a point is not sustained (in quick
/// mode, after two points at least); the rows go to `rows`, on chart line `series`.
pub(crate) async fn ladder(
    rig: &mut Rig,
    steps: &[f64],
    opts: &Opts,
    series: Option<&str>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let n = rig.subscribers();
    for (i, &deliveries) in steps.iter().enumerate() {
        let load = opts.load(deliveries / n as f64, PLAIN_64);
        let label = "offered deliveries/s";
        let series = series.map(str::to_owned);
        let mut row =
            measured_as(rig, load, opts.repeats, label, deliveries, series.clone()).await?;
        if !row.sustained && !opts.quick {
            // One bad window on a shared machine should not end the ladder.
            row = measured_as(rig, load, opts.repeats, label, deliveries, series).await?;
        }
        let stop = !row.sustained && (!opts.quick || i >= 1);
        rows.push(row);
        if stop {
            break;
        }
    }
    Ok(())
}

/// Many MQTT sensors (WebSocket publishers for the Node peers) → a few dashboards.
async fn fanin(system: System, opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let (sensors, dashboards) = if opts.quick { (50, 2) } else { (1000, 4) };
    let mut rig = Rig::new(Server::start(system, &opts.setup)?, dashboards, sensors).await?;
    for per_sensor in opts.pick(&[1.0, 10.0, 100.0], &[1.0, 10.0]) {
        let load = opts.load(per_sensor * sensors as f64, PLAIN_64);
        rows.push(
            measured(
                &mut rig,
                load,
                opts.repeats,
                "messages/s per sensor",
                per_sensor,
            )
            .await?,
        );
    }
    rig.stop().await;
    Ok(())
}

/// Latency at a fixed 100,000 deliveries/s (10,000 in quick mode) against the number
/// of subscribers.
async fn latency(system: System, opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let subs = opts
        .subs
        .clone()
        .unwrap_or_else(|| opts.pick(&[1, 100, 1000, 10_000], &[1, 50]));
    let deliveries = if opts.quick { 10e3 } else { 100e3 };
    for n in subs {
        let mut rig = Rig::new(Server::start(system, &opts.setup)?, n, 1).await?;
        let load = opts.load(deliveries / n as f64, PLAIN_64);
        rows.push(measured(&mut rig, load, opts.repeats, "subscribers", n as f64).await?);
        rig.stop().await;
    }
    Ok(())
}

/// Latency and rate against payload size, 64 B to 1 MiB, at up to 100,000
/// deliveries/s and at most 400 MB/s delivered.
async fn payload(system: System, opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let n = if opts.quick { 10 } else { 100 };
    let sizes = opts.pick(&[64, 1024, 16 << 10, 256 << 10, 1 << 20], &[64, 16 << 10]);
    for size in sizes {
        // A fresh server per size: a backlog left by one size must not colour the next.
        let mut rig = Rig::new(Server::start(system, &opts.setup)?, n, 1).await?;
        let load = opts.load(capped_rate(size, n, opts), Shape { size, e2e: false });
        rows.push(measured(&mut rig, load, opts.repeats, "payload bytes", size as f64).await?);
        rig.stop().await;
    }
    Ok(())
}

/// Publishes per second for `n` subscribers of `size`-byte payloads: 100,000
/// deliveries/s (10,000 in quick mode), at most 400 MB/s delivered, at least 2/s.
fn capped_rate(size: usize, n: usize, opts: &Opts) -> f64 {
    let deliveries = (400e6 / size as f64).min(if opts.quick { 10e3 } else { 100e3 });
    (deliveries / n as f64).max(2.0)
}

/// Plain payloads against real end-to-end envelopes (room messages) of the same
/// plaintext. switchboard relays an envelope as opaque JSON and never decrypts
/// (docs/e2e.md), so this measures what the envelope's size costs the gateway.
async fn e2e(system: System, opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let n = if opts.quick { 10 } else { 100 };
    for e2e in [false, true] {
        for size in opts.pick(&[64, 1024, 16 << 10], &[1024]) {
            let mut rig = Rig::new(Server::start(system, &opts.setup)?, n, 1).await?;
            let shape = Shape { size, e2e };
            let load = opts.load(capped_rate(point::payload_len(shape), n, opts), shape);
            let series = format!("{} {}", system.name(), if e2e { "e2e" } else { "plain" });
            rows.push(
                measured_as(
                    &mut rig,
                    load,
                    opts.repeats,
                    "plaintext bytes",
                    size as f64,
                    Some(series),
                )
                .await?,
            );
            rig.stop().await;
        }
    }
    Ok(())
}

/// Idle connections: as many as asked for (halved once if the system refuses).
async fn connections(system: System, opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let mut count = opts.connections;
    let mut attempt = 0;
    loop {
        let server = Server::start(system, &opts.setup)?;
        match point::idle(server, count).await {
            Ok(mut row) => {
                row.x_label = "connections".into();
                row.x = count as f64;
                row.series = system.name().into();
                results::print_row(&row);
                rows.push(row);
                return Ok(());
            }
            Err(e) if attempt == 0 => {
                println!(
                    "  {:<24} {count} connections failed ({e:#}); trying {}",
                    system.name(),
                    count / 2
                );
                count /= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One way to make the same publish request.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `POST` on a keep-alive HTTP/1.1 connection.
    Http,
    /// switchboard's `http` op over an open WebSocket.
    HttpOp,
    /// The `pub` op with an id, answered `ok`.
    PubOp,
}

/// Publish requests in a closed loop (each connection sends the next request when the
/// previous is answered) over HTTP and over the open WebSocket, at several
/// concurrencies. No subscribers: this is the cost of the request path.
async fn http(system: System, opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let vias: &[(Via, &str)] = match system {
        System::Switchboard => &[
            (Via::Http, "http"),
            (Via::HttpOp, "ws http op"),
            (Via::PubOp, "ws pub op"),
        ],
        System::NodeWs => &[(Via::Http, "http"), (Via::PubOp, "ws pub op")],
        _ => bail!("no HTTP publish endpoint"),
    };
    let server = Server::start(system, &opts.setup)?;
    let http = server.http.context("no HTTP listener")?;
    for &(via, label) in vias {
        for conc in opts.pick(&[1, 16, 64], &[1, 4]) {
            let mut runs = Vec::new();
            for _ in 0..opts.repeats.max(1) {
                let self_stat = "/proc/self/stat";
                let (cpu0, client0) = (server.cpu(), crate::host::cpu_time(self_stat));
                let (count, hist, secs) = closed_loop(system, http, via, conc, opts).await?;
                // CPU over warm-up and window both: the loop runs them back to back.
                let both = (opts.warmup + opts.measure).as_secs_f64();
                let cpu = server.cpu().saturating_sub(cpu0).as_secs_f64() / both;
                let client = crate::host::cpu_time(self_stat).saturating_sub(client0);
                let client = client.as_secs_f64() / both;
                let q = |p: f64| hist.value_at_quantile(p) as f64;
                runs.push(Row {
                    system: system.name().into(),
                    series: format!("{} {label}", system.name()),
                    publishers: conc,
                    payload_bytes: 64,
                    offered_per_s: count as f64 / secs,
                    delivered_per_s: count as f64 / secs,
                    p50_us: q(0.5),
                    p90_us: q(0.9),
                    p99_us: q(0.99),
                    p999_us: q(0.999),
                    max_us: hist.max() as f64,
                    server_cpu_pct: 100.0 * cpu,
                    client_cpu_pct: 100.0 * client,
                    server_peak_rss_kib: server.peak_rss_kib(),
                    sustained: true,
                    ..Row::default()
                });
            }
            let mut row = results::median(runs).context("no runs")?;
            row.x_label = "concurrent requests".into();
            row.x = conc as f64;
            results::print_row(&row);
            rows.push(row);
        }
    }
    Ok(())
}

/// `conc` connections each sending requests back to back for the warm-up and the
/// measured window. Returns requests answered in the window, their latency (µs) and
/// the window's length.
async fn closed_loop(
    system: System,
    addr: std::net::SocketAddr,
    via: Via,
    conc: usize,
    opts: &Opts,
) -> Result<(u64, Histogram<u64>, f64)> {
    let start = Instant::now();
    let window_start = start + opts.warmup;
    let end = window_start + opts.measure;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..conc {
        set.spawn_local(async move {
            let mut hist = worker::histogram();
            let mut count = 0u64;
            let mut conn = Requester::connect(system, addr, via).await?;
            let mut payload = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                point::payload(worker::wall_ns(), n, PLAIN_64, &mut payload);
                let t0 = Instant::now();
                conn.request(c, n, &payload).await?;
                if t0 >= window_start {
                    count += 1;
                    hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                }
            }
            anyhow::Ok((count, hist))
        });
    }
    let mut hist = worker::histogram();
    let mut count = 0;
    while let Some(done) = set.join_next().await {
        let (c, h) = done.context("request task")??;
        count += c;
        hist.add(&h)
            .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    }
    Ok((count, hist, opts.measure.as_secs_f64()))
}

/// A connection that makes publish requests one at a time.
enum Requester {
    Http(TcpStream, Vec<u8>, &'static str),
    Ws(Ws, Via),
}

impl Requester {
    async fn connect(
        system: System,
        addr: std::net::SocketAddr,
        via: Via,
    ) -> std::io::Result<Requester> {
        Ok(match via {
            Via::Http => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let path = if system == System::Switchboard {
                    "/api/v1/publish"
                } else {
                    "/publish"
                };
                Requester::Http(s, Vec::with_capacity(4096), path)
            }
            Via::HttpOp | Via::PubOp => Requester::Ws(Ws::connect(addr, "/ws", None).await?, via),
        })
    }

    async fn request(&mut self, conn: usize, n: u64, payload: &[u8]) -> Result<()> {
        let data = String::from_utf8_lossy(payload);
        let topic = format!("bench/h{conn}");
        match self {
            Requester::Http(stream, buf, path) => {
                let body = format!(r#"{{"topic":"{topic}","data":{data}}}"#);
                let req = format!(
                    "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(req.as_bytes()).await?;
                read_response(stream, buf).await
            }
            Requester::Ws(ws, via) => {
                let req = if *via == Via::HttpOp {
                    format!(
                        r#"{{"op":"http","id":{n},"method":"POST","path":"/api/v1/publish","body":{{"topic":"{topic}","data":{data}}}}}"#
                    )
                } else {
                    format!(r#"{{"op":"pub","id":{n},"topic":"{topic}","data":{data}}}"#)
                };
                ws.send(OP_TEXT, req.as_bytes()).await?;
                loop {
                    let reply = ws.next_data().await?;
                    if reply.starts_with(br#"{"op":"error""#) {
                        bail!("{}", String::from_utf8_lossy(&reply));
                    }
                    if reply.starts_with(br#"{"op":"http""#) || reply.starts_with(br#"{"op":"ok""#)
                    {
                        if find(&reply, br#""status":2"#).is_none() && *via == Via::HttpOp {
                            bail!("http op: {}", String::from_utf8_lossy(&reply));
                        }
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length` body; fails unless it is 2xx.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 2") {
                bail!("HTTP: {}", head.lines().next().unwrap_or_default());
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(invalid("HTTP connection closed").into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
