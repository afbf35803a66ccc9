//! Recording and replay rates: messages per second from a WebSocket publisher to a
//! WebSocket subscriber with and without a recording of the topic (the ratio is the
//! cost of recording), how long the recording takes to be all on disk, the replay rate
//! as fast as possible, and disk bytes per message. See docs/recordings.md.
//!
//! Run: `cargo bench --bench recording` or `cargo bench --bench recording -- --quick`.
//! Options: `--messages 50000` (per point), `--rounds 3`. Each point gets a fresh
//! daemon (pinned to core 0 when `taskset` is there) and data directory; the publisher
//! and subscriber share core 1. `BENCH_DAEMON=/path/to/switchboard` runs another build
//! of the daemon under the same bench, for A/B runs on a shared machine (not named
//! `SWITCHBOARD_…`: the daemon refuses settings it does not know).

use std::cell::Cell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use switchboard_bench::daemon::Daemon;
use switchboard_bench::harness::{self, thousands};
use switchboard_bench::host;

struct Options {
    messages: u64,
    rounds: u64,
}

fn options() -> Options {
    let mut o = Options {
        messages: 50_000,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => (o.messages, o.rounds) = (5_000, 1),
            "--messages" => o.messages = harness::number_arg("--messages", args.next()),
            "--rounds" => o.rounds = harness::number_arg("--rounds", args.next()),
            other => {
                eprintln!("unknown argument {other:?}; see benches/recording/main.rs");
                std::process::exit(2);
            }
        }
    }
    o
}

/// The benchmarked `[ws]` settings with queues deep enough that the subscriber drops
/// nothing: what is measured is routing and recording, not the slow-consumer policy.
fn start_daemon(pin: bool) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("switchboard.toml");
    let ws = switchboard_bench::daemon::SWITCHBOARD_WS_CONFIG
        .replace(
            "outbound_queue_messages = 1024",
            "outbound_queue_messages = 10000000",
        )
        .replace(
            "outbound_queue_bytes = 1048576",
            "outbound_queue_bytes = 4000000000",
        );
    std::fs::write(&config, ws).expect("write the configuration");
    let bin = std::env::var_os("BENCH_DAEMON")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchboard").into());
    (Daemon::start(bin, &config, pin), dir)
}

async fn call(d: &Daemon, method: reqwest::Method, path: &str, body: Value) -> Value {
    reqwest::Client::new()
        .request(method, format!("http://{}/api/v1{path}", d.addr))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("API request")
        .json()
        .await
        .expect("API answer")
}

/// The store's size on disk, from /metrics.
async fn disk_bytes(d: &Daemon) -> u64 {
    d.metric("switchboard_store_disk_bytes").await.unwrap_or(0)
}

/// A subscriber that counts `msg` frames (and messages reported lost by `lagged`).
async fn subscriber(d: &Daemon, filter: &str) -> Rc<Cell<u64>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.addr))
        .await
        .expect("connect the subscriber");
    let (mut sink, mut stream) = ws.split();
    let sub = json!({"op":"sub","id":1,"topic":filter}).to_string();
    sink.send(Message::text(sub)).await.expect("subscribe");
    while let Some(Ok(m)) = stream.next().await {
        if m.to_text().is_ok_and(|t| t.contains(r#""op":"ok""#)) {
            break;
        }
    }
    let count = Rc::new(Cell::new(0u64));
    let seen = count.clone();
    tokio::task::spawn_local(async move {
        let _sink = sink;
        while let Some(Ok(m)) = stream.next().await {
            if m.to_text().is_ok_and(|t| t.starts_with(r#"{"op":"msg""#)) {
                seen.set(seen.get() + 1);
            }
        }
    });
    count
}

async fn wait_for(count: &Cell<u64>, n: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.get() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    count.get() >= n
}

/// Publishes `n` messages of about 64 bytes as fast as the socket takes them.
async fn publish(d: &Daemon, n: u64) {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.addr))
        .await
        .expect("connect the publisher");
    let (mut sink, mut stream) = ws.split();
    tokio::task::spawn_local(async move { while let Some(Ok(_)) = stream.next().await {} });
    for i in 0..n {
        let frame = json!({"op":"pub","topic":"bench/x","data":{"i":i,"v":21.5,"unit":"C","pad":"0123456789"}});
        sink.feed(Message::text(frame.to_string()))
            .await
            .expect("publish");
    }
    sink.flush().await.expect("publish");
}

#[derive(Default)]
struct Point {
    plain_s: f64,
    /// The daemon's CPU time (all threads) from the first publish to the last delivery.
    plain_cpu_s: f64,
    recorded_deliver_s: f64,
    recorded_cpu_s: f64,
    /// The same until the recording's stop answered (everything stored).
    recorded_stored_cpu_s: f64,
    /// From the first publish to the recording's stop answering (all stored).
    recorded_stored_s: f64,
    recorded: u64,
    dropped: u64,
    stored_bytes: u64,
    disk_delta: u64,
    replay_s: f64,
    replayed: u64,
}

async fn round(n: u64, pin: bool) -> Point {
    let mut p = Point::default();
    {
        let (d, _dir) = start_daemon(pin);
        let count = subscriber(&d, "bench/#").await;
        let cpu = d.cpu_clock();
        let (started, cpu0) = (Instant::now(), cpu());
        publish(&d, n).await;
        assert!(wait_for(&count, n).await, "the plain run lost messages");
        p.plain_s = started.elapsed().as_secs_f64();
        p.plain_cpu_s = (cpu() - cpu0).as_secs_f64();
    }
    let (d, _dir) = start_daemon(pin);
    let count = subscriber(&d, "bench/#").await;
    let before = disk_bytes(&d).await;
    let rec = call(
        &d,
        reqwest::Method::POST,
        "/recordings",
        json!({"name":"bench","topics":["bench/#"]}),
    )
    .await;
    let id = rec["id"].as_u64().expect("recording id");
    let cpu = d.cpu_clock();
    let (started, cpu0) = (Instant::now(), cpu());
    publish(&d, n).await;
    assert!(wait_for(&count, n).await, "the recorded run lost messages");
    p.recorded_deliver_s = started.elapsed().as_secs_f64();
    p.recorded_cpu_s = (cpu() - cpu0).as_secs_f64();
    let stopped = call(
        &d,
        reqwest::Method::POST,
        &format!("/recordings/{id}/stop"),
        json!({}),
    )
    .await;
    p.recorded_stored_s = started.elapsed().as_secs_f64();
    p.recorded_stored_cpu_s = (cpu() - cpu0).as_secs_f64();
    p.recorded = stopped["messages"].as_u64().unwrap_or(0);
    p.dropped = stopped["dropped"].as_u64().unwrap_or(0);
    p.stored_bytes = stopped["bytes"].as_u64().unwrap_or(0);
    // sled flushes every 100 ms; give it a few.
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.disk_delta = disk_bytes(&d).await.saturating_sub(before);

    let replayed = subscriber(&d, "replay/#").await;
    let started = Instant::now();
    call(
        &d,
        reqwest::Method::POST,
        &format!("/recordings/{id}/replay"),
        json!({"max": true, "prefix": "replay/"}),
    )
    .await;
    wait_for(&replayed, p.recorded).await;
    p.replay_s = started.elapsed().as_secs_f64();
    p.replayed = replayed.get();
    p
}

fn main() {
    let o = options();
    let machine = format!("{}, {}", harness::utc_date(), host::machine());
    let pinned = host::taskset_available() && host::pin_self(1);
    let mut head = String::new();
    let _ = writeln!(head, "switchboard recording benchmark, {machine}");
    let _ = writeln!(
        head,
        "{}",
        harness::pinning_line(
            pinned,
            "daemon pinned to core 0 (taskset -c 0), publisher and subscriber to core 1"
        )
    );
    let _ = writeln!(head, "{} messages of ~90 bytes per point", o.messages);
    print!("{head}");
    let (rt, local) = harness::local_runtime();
    let n = o.messages;
    let points = local.block_on(&rt, async {
        let mut points = Vec::new();
        for _ in 0..o.rounds {
            points.push(round(n, pinned).await);
        }
        points
    });
    println!(
        "{:>12} {:>12} {:>6} {:>9} {:>9} {:>9} {:>12} {:>9} {:>12} {:>10} {:>10}",
        "plain msg/s",
        "rec msg/s",
        "ratio",
        "plain µs",
        "rec µs",
        "stored µs",
        "stored msg/s",
        "dropped",
        "replay msg/s",
        "B/msg",
        "disk B/msg"
    );
    let mut rows = Vec::new();
    for p in &points {
        let plain = n as f64 / p.plain_s;
        let recorded = n as f64 / p.recorded_deliver_s;
        let stored = p.recorded as f64 / p.recorded_stored_s;
        let replay = p.replayed as f64 / p.replay_s;
        let per = p.stored_bytes as f64 / p.recorded.max(1) as f64;
        let disk = p.disk_delta as f64 / p.recorded.max(1) as f64;
        // Daemon CPU per delivered message: steadier than a rate on a shared machine.
        let plain_us = p.plain_cpu_s * 1e6 / n as f64;
        let recorded_us = p.recorded_cpu_s * 1e6 / n as f64;
        let stored_us = p.recorded_stored_cpu_s * 1e6 / n as f64;
        println!(
            "{:>12} {:>12} {:>6.2} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>9} {:>12} {:>10.1} {:>10.1}",
            thousands(plain),
            thousands(recorded),
            recorded / plain,
            plain_us,
            recorded_us,
            stored_us,
            thousands(stored),
            p.dropped,
            thousands(replay),
            per,
            disk
        );
        if p.recorded + p.dropped < n || p.replayed < p.recorded {
            println!(
                "  INCOMPLETE: {} recorded + {} dropped of {n}; {} replayed",
                p.recorded, p.dropped, p.replayed
            );
        }
        rows.push(json!({
            "messages": n, "plain_per_s": plain, "recorded_per_s": recorded,
            "ratio": recorded / plain, "plain_cpu_us_per_message": plain_us,
            "recorded_cpu_us_per_message": recorded_us,
            "stored_cpu_us_per_message": stored_us, "stored_per_s": stored, "recorded": p.recorded,
            "dropped": p.dropped, "replay_per_s": replay, "stored_bytes_per_message": per,
            "disk_bytes_per_message": disk,
        }));
    }
    harness::write_results(
        env!("CARGO_TARGET_TMPDIR"),
        "recording-bench.json",
        &json!({"machine": machine, "pinned": pinned, "points": rows}),
    );
}
