//! Webhook delivery rate: events per second from a WebSocket publisher, through the
//! daemon's store and delivery task, to a local receiver that checks every signature,
//! one event per request (`batch_max = 1`) and in batches, in the same run. See
//! docs/webhooks.md for what a delivery involves.
//!
//! Run: `cargo bench --bench webhooks` or `cargo bench --bench webhooks -- --quick`.
//! Options: `--events 20000` (per point), `--batch 100` (the batched point's
//! `batch_max`). Each point gets a fresh daemon (pinned to core 0 when `taskset` is
//! there) and data directory; the publisher and receiver share core 1. The rate is
//! counted from the first publish to the last event received, so it includes storing.

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use switchboard::outbound_webhooks::signature::verify_standard;
use switchboard_bench::daemon::Daemon;
use switchboard_bench::harness::{self, thousands};
use switchboard_bench::host;

const SECRET: &str = "bench-webhook-secret-0123456789";

struct Options {
    events: u64,
    batch: usize,
}

fn options() -> Options {
    let mut o = Options {
        events: 20_000,
        batch: 100,
    };
    let mut args = std::env::args().skip(1);
    let number = harness::number_arg;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => o.events = 2_000,
            "--events" => o.events = number("--events", args.next()),
            "--batch" => o.batch = number("--batch", args.next()) as usize,
            other => {
                eprintln!("unknown argument {other:?}; see benches/webhooks/main.rs");
                std::process::exit(2);
            }
        }
    }
    o
}

/// What the receiver counts: events and requests with a valid signature, and any
/// without.
#[derive(Default)]
struct Counts {
    events: AtomicU64,
    requests: AtomicU64,
    bad: AtomicU64,
}

async fn receive(State(c): State<Arc<Counts>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ok = verify_standard(
        SECRET.as_bytes(),
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
        &body,
        now,
        300,
    )
    .is_ok();
    let events = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["events"].as_array().map(|a| a.len() as u64))
        .unwrap_or(0);
    if ok {
        c.events.fetch_add(events, Ordering::Relaxed);
        c.requests.fetch_add(1, Ordering::Relaxed);
    } else {
        c.bad.fetch_add(1, Ordering::Relaxed);
    }
    StatusCode::NO_CONTENT
}

/// The daemon with one `[[webhooks]]` endpoint pointing at `receiver`; the directory
/// holding its configuration and secret lives as long as it does.
fn start_daemon(receiver: SocketAddr, batch_max: usize, pin: bool) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let config = dir.path().join("switchboard.toml");
    let text = format!(
        "{ws}\n[[webhooks]]\nname = \"bench\"\nurl = \"http://{receiver}/hook\"\nsecret_file = \"{secret}\"\ntopics = [\"bench/#\"]\nbatch_max = {batch_max}\nmax_pending = 10000000\n",
        ws = switchboard_bench::daemon::SWITCHBOARD_WS_CONFIG,
        secret = secret.display(),
    );
    std::fs::write(&config, text).expect("write the configuration");
    (
        Daemon::start(env!("CARGO_BIN_EXE_switchboard"), &config, pin),
        dir,
    )
}

struct Point {
    batch_max: usize,
    events: u64,
    requests: u64,
    publish_s: f64,
    deliver_s: f64,
    bad: u64,
}

async fn point(batch_max: usize, events: u64, pin: bool) -> Point {
    let counts = Arc::new(Counts::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let receiver = listener.local_addr().expect("receiver address");
    let server = tokio::task::spawn_local(async move { axum::serve(listener, app).await });
    let (d, _dir) = start_daemon(receiver, batch_max, pin);

    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.addr))
        .await
        .expect("connect to the daemon");
    let (mut sink, mut stream) = ws.split();
    // Replies are read and thrown away so the daemon never waits on this client.
    let acks = Rc::new(Cell::new(0u64));
    let seen = acks.clone();
    tokio::task::spawn_local(async move {
        while let Some(Ok(m)) = stream.next().await {
            if m.is_text() {
                seen.set(seen.get() + 1);
            }
        }
    });
    let started = Instant::now();
    for i in 0..events {
        let frame = json!({"op":"pub","topic":"bench/x","data":{"i":i,"v":21.5}});
        sink.feed(Message::text(frame.to_string()))
            .await
            .expect("publish");
    }
    sink.flush().await.expect("publish");
    let publish_s = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(600);
    while counts.events.load(Ordering::Relaxed) < events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliver_s = started.elapsed().as_secs_f64();
    drop(d);
    server.abort();
    Point {
        batch_max,
        events: counts.events.load(Ordering::Relaxed),
        requests: counts.requests.load(Ordering::Relaxed),
        publish_s,
        deliver_s,
        bad: counts.bad.load(Ordering::Relaxed),
    }
}

fn main() {
    let o = options();
    let machine = format!("{}, {}", harness::utc_date(), host::machine());
    let pinned = host::taskset_available() && host::pin_self(1);
    let mut head = String::new();
    let _ = writeln!(head, "switchboard webhook delivery benchmark, {machine}");
    let _ = writeln!(
        head,
        "{}",
        harness::pinning_line(
            pinned,
            "daemon pinned to core 0 (taskset -c 0), publisher and receiver to core 1"
        )
    );
    print!("{head}");
    let (rt, local) = harness::local_runtime();
    let points = local.block_on(&rt, async {
        let mut points = Vec::new();
        for batch in [1, o.batch] {
            points.push(point(batch, o.events, pinned).await);
        }
        points
    });
    println!(
        "{:>9} {:>9} {:>9} {:>12} {:>14}",
        "batch_max", "events", "requests", "publish s", "events/s"
    );
    let mut rows = Vec::new();
    for p in &points {
        let rate = p.events as f64 / p.deliver_s;
        println!(
            "{:>9} {:>9} {:>9} {:>12.2} {:>14}",
            p.batch_max,
            p.events,
            p.requests,
            p.publish_s,
            thousands(rate)
        );
        if p.events < o.events || p.bad > 0 {
            println!(
                "  INCOMPLETE: {} of {} events, {} badly signed requests",
                p.events, o.events, p.bad
            );
        }
        rows.push(json!({
            "batch_max": p.batch_max, "events": p.events, "requests": p.requests,
            "publish_s": p.publish_s, "deliver_s": p.deliver_s, "events_per_s": rate,
            "bad_signatures": p.bad,
        }));
    }
    harness::write_results(
        env!("CARGO_TARGET_TMPDIR"),
        "webhooks-bench.json",
        &json!({"machine": machine, "pinned": pinned, "points": rows}),
    );
}
