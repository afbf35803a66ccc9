//! Bridge forwarding: switchboard's `[[bridges]]` beside Mosquitto's own bridge
//! (`connection` with `topic t/# out 1 "" up/`), in the same run, to the same upstream
//! Mosquitto, where one subscriber (QoS 1) counts what arrives.
//!
//! Two figures per bridge:
//! - throughput: messages/s forwarded at QoS 1 while a publisher floods the local side
//!   (switchboard over WebSocket, Mosquitto over MQTT QoS 0, its bridge made to forward
//!   at QoS 1 with `upgrade_outgoing_qos`), counted from the first publish to the last
//!   message received upstream;
//! - drain: with the upstream down, a backlog is queued (switchboard: on disk, checked in
//!   its status; Mosquitto: in memory, published at QoS 1 and acknowledged), then the
//!   upstream starts and the time from the first to the last backlog message received
//!   is measured (reconnect delays are not counted).
//!
//! Run: `cargo bench --bench bridge` or `cargo bench --bench bridge -- --quick`.
//! Options: `--messages 50000` (throughput), `--backlog 100000`. The local broker
//! (switchboard or Mosquitto) is pinned to core 0 when `taskset` is there; the upstream
//! Mosquitto and the clients share core 1. `BENCH_DAEMON=/path/to/switchboard` runs
//! another build of the daemon under the same bench (A/B).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use switchboard_bench::daemon::Daemon;
use switchboard_bench::mosquitto::{Mosquitto, Subscriber};
use switchboard_bench::{harness, host};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "bench-admin-token-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(600);
/// The throughput flood's topic, and the backlog's.
const FLOOD: &str = "t/x";
const BACKLOG: &str = "t/b";

struct Options {
    messages: u64,
    backlog: u64,
}

fn options() -> Options {
    let mut o = Options {
        messages: 50_000,
        backlog: 100_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => {
                o.messages = 5_000;
                o.backlog = 10_000;
            }
            "--messages" => o.messages = harness::number_arg("--messages", args.next()),
            "--backlog" => o.backlog = harness::number_arg("--backlog", args.next()),
            other => {
                eprintln!("unknown argument {other:?}; see benches/bridge/main.rs");
                std::process::exit(2);
            }
        }
    }
    o
}

/// Counts what the upstream subscriber receives on one topic, with the times of the
/// first and last. One topic at a time: after the upstream restarts it sends its
/// subscriber again what was unacknowledged when it stopped (the flood's tail), which
/// must not start the drain's clock.
struct Counter {
    count: Arc<AtomicU64>,
    topic: Arc<Mutex<String>>,
    first_last: Arc<Mutex<Option<(Instant, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    async fn start(port: u16) -> Counter {
        let mut sub = Subscriber::start(port, "up/#").await;
        let count = Arc::new(AtomicU64::new(0));
        let first_last = Arc::new(Mutex::new(None));
        let topic = Arc::new(Mutex::new(format!("up/{FLOOD}")));
        let (c, fl, t) = (count.clone(), first_last.clone(), topic.clone());
        let task = tokio::spawn(async move {
            // The subscriber lives as long as this task.
            while let Some((got, _)) = sub.rx.recv().await {
                if *t.lock().unwrap_or_else(|p| p.into_inner()) != got {
                    continue;
                }
                let now = Instant::now();
                let mut fl = fl.lock().unwrap_or_else(|p| p.into_inner());
                *fl = Some(fl.map_or((now, now), |(first, _)| (first, now)));
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Counter {
            count,
            topic,
            first_last,
            task,
        }
    }

    async fn wait_for(&self, n: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        while self.count.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.count.load(Ordering::Relaxed)
    }

    /// Counts from zero, what arrives on `topic` only.
    fn reset(&self, topic: &str) {
        *self.topic.lock().unwrap_or_else(|p| p.into_inner()) = format!("up/{topic}");
        self.count.store(0, Ordering::Relaxed);
        *self.first_last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn span(&self) -> Duration {
        self.first_last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |(f, l)| l - f)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// switchboard with one bridge `up` to `port`.
fn switchboard(port: u16, pin: bool) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, ADMIN).expect("write the token");
    let config = dir.path().join("switchboard.toml");
    let text = format!(
        "{ws}\n[auth]\nadmin_token_file = \"{token}\"\n\n[[bridges]]\nname = \"up\"\naddress = \"127.0.0.1:{port}\"\nreconnect_min = \"50ms\"\nreconnect_max = \"200ms\"\n[[bridges.topics]]\npattern = \"t/#\"\ndirection = \"out\"\nqos = 1\nremote_prefix = \"up/\"\n",
        ws = switchboard_bench::daemon::SWITCHBOARD_WS_CONFIG,
        token = token.display(),
    );
    std::fs::write(&config, text).expect("write the configuration");
    (
        Daemon::start(
            std::env::var_os("BENCH_DAEMON")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchboard").into()),
            &config,
            pin,
        ),
        dir,
    )
}

async fn queued(d: &Daemon) -> u64 {
    let status: serde_json::Value = async {
        reqwest::Client::new()
            .get(format!("http://{}/api/v1/bridges/up", d.addr))
            .bearer_auth(ADMIN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
    .await
    .unwrap_or_default();
    status["queue_messages"].as_u64().unwrap_or(0)
}

/// Publishes `n` messages to switchboard over WebSocket, without waiting for replies.
async fn flood_switchboard(d: &Daemon, topic: &str, n: u64) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.addr))
        .await
        .expect("connect to the daemon");
    for i in 0..n {
        let frame = json!({"op":"pub","topic":topic,"data":{"i":i,"v":21.5}});
        ws.feed(Message::text(frame.to_string()))
            .await
            .expect("publish");
    }
    ws.flush().await.expect("publish");
    // Replies are not read: closing would lose nothing, but keep the socket for a
    // moment so the last frames are taken.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(ws);
    });
}

/// Publishes `n` messages to a Mosquitto at `qos`; with QoS 1, returns once all were
/// acknowledged.
async fn flood_mosquitto(port: u16, topic: &str, n: u64, qos: QoS) {
    let mut options = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    options.set_inflight(100);
    let (client, mut events) = AsyncClient::new(options, 1000);
    let acks = tokio::spawn(async move {
        let mut acked = 0u64;
        let mut sent = 0u64;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => sent += 1,
                Ok(_) => {}
                Err(_) => return,
            }
            let done = if qos == QoS::AtMostOnce { sent } else { acked };
            if done >= n {
                return;
            }
        }
    });
    for i in 0..n {
        let payload = json!({"i":i,"v":21.5}).to_string();
        client
            .publish(topic, qos, false, payload)
            .await
            .expect("publish to mosquitto");
    }
    let _ = tokio::time::timeout(WAIT, acks).await;
}

/// Mosquitto delivers at the lower of the message's and the subscription's QoS, and its
/// bridge is a subscriber: without `upgrade_outgoing_qos` the QoS 0 flood would go
/// upstream at QoS 0 (no PUBACKs), not at the QoS 1 switchboard's link forwards at.
fn mosquitto_bridge(upstream: u16, pin: bool) -> Mosquitto {
    Mosquitto::start_pinned(
        &format!(
            "upgrade_outgoing_qos true\nconnection up\naddress 127.0.0.1:{upstream}\ntopic t/# out 1 \"\" up/\ncleansession false\nrestart_timeout 1\n"
        ),
        pin,
    )
}

struct Figures {
    rate: f64,
    received: u64,
    drain: Duration,
    drained: u64,
}

/// The bridge under test: what it forwards from, and how to fill it.
enum Local {
    /// The daemon, and the directory of its configuration (kept while it runs).
    Switchboard(Daemon, #[allow(dead_code)] tempfile::TempDir),
    Mosquitto(Mosquitto),
}

impl Local {
    /// Publishes `n` messages to the local side, as fast as it takes them.
    async fn flood(&self, n: u64) {
        match self {
            Local::Switchboard(d, _) => flood_switchboard(d, FLOOD, n).await,
            Local::Mosquitto(m) => flood_mosquitto(m.port, FLOOD, n, QoS::AtMostOnce).await,
        }
    }

    /// Queues a backlog of `n` while the upstream is down, and returns once it is all
    /// held by the bridge.
    async fn backlog(&self, n: u64) {
        match self {
            Local::Switchboard(d, _) => {
                flood_switchboard(d, BACKLOG, n).await;
                let deadline = Instant::now() + WAIT;
                while queued(d).await < n && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Local::Mosquitto(m) => flood_mosquitto(m.port, BACKLOG, n, QoS::AtLeastOnce).await,
        }
    }
}

async fn run(o: &Options, start: impl FnOnce(u16) -> Local) -> Figures {
    let mut upstream = Mosquitto::start("");
    let counter = Counter::start(upstream.port).await;
    let local = start(upstream.port);
    // Warm up: the link is up once a message gets through.
    while counter.count.load(Ordering::Relaxed) == 0 {
        local.flood(1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    counter.reset(FLOOD);
    let started = Instant::now();
    local.flood(o.messages).await;
    let received = counter.wait_for(o.messages).await;
    let rate = received as f64 / started.elapsed().as_secs_f64();

    upstream.stop();
    counter.reset(BACKLOG);
    local.backlog(o.backlog).await;
    upstream.restart();
    let drained = counter.wait_for(o.backlog).await;
    Figures {
        rate,
        received,
        drain: counter.span(),
        drained,
    }
}

fn main() {
    let o = options();
    let machine = format!("{}, {}", harness::utc_date(), host::machine());
    let pinned = host::taskset_available() && host::pin_self(1);
    let mut head = String::new();
    let _ = writeln!(head, "bridge forwarding benchmark, {machine}");
    let _ = writeln!(
        head,
        "{}",
        harness::pinning_line(
            pinned,
            "the bridge under test (switchboard, or the local Mosquitto) pinned to core 0; upstream Mosquitto and clients on core 1"
        )
    );
    print!("{head}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (sb, mq) = rt.block_on(async {
        let sb = run(&o, |port| {
            let (d, dir) = switchboard(port, pinned);
            Local::Switchboard(d, dir)
        })
        .await;
        let mq = run(&o, |port| Local::Mosquitto(mosquitto_bridge(port, pinned))).await;
        (sb, mq)
    });
    println!(
        "{:>12} {:>14} {:>10} {:>16} {:>10}",
        "bridge", "forwarded/s", "received", "drain backlog s", "drained"
    );
    for (name, f) in [("switchboard", &sb), ("mosquitto", &mq)] {
        println!(
            "{:>12} {:>14} {:>10} {:>16.2} {:>10}",
            name,
            harness::thousands(f.rate),
            f.received,
            f.drain.as_secs_f64(),
            f.drained
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    println!(
        "switchboard / mosquitto: throughput {:.2}x, drain time {:.2}x",
        ratio(sb.rate, mq.rate),
        ratio(sb.drain.as_secs_f64(), mq.drain.as_secs_f64())
    );
    let row = |f: &Figures| {
        json!({"forwarded_per_s": f.rate, "received": f.received,
               "drain_s": f.drain.as_secs_f64(), "drained": f.drained})
    };
    harness::write_results(
        env!("CARGO_TARGET_TMPDIR"),
        "bridge-bench.json",
        &json!({"machine": machine, "pinned": pinned, "messages": o.messages,
                "backlog": o.backlog, "switchboard": row(&sb), "mosquitto": row(&mq)}),
    );
}
