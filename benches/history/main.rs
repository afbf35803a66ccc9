//! Message history: what keeping a topic's history costs a publisher, how long a
//! subscriber waits for 1,000 recovered messages, and how many bytes a kept message
//! takes, in one run. See docs/history.md for what is stored.
//!
//! Run: `cargo bench --bench history` or `cargo bench --bench history -- --quick`.
//! Options: `--messages 50000` (per publish point), `--fetches 30` (recoveries timed),
//! `--rounds 2` (publish points of each kind, alternating; the best of each counts).
//! The daemon runs pinned to core 0 when `taskset` is there, the clients on core 1.
//! `BENCH_DAEMON=/path/to/switchboard` runs another build under the same clients (A/B).
//!
//! 1. Publish rate: one WebSocket publisher pipelines `--messages` publishes of a
//!    64-byte payload and waits for every ack, to a topic without a history and then
//!    to one with a history (`keep` larger than the run), on the same daemon, and
//!    again, `--rounds` times. The ratio of the best of each is the cost of keeping
//!    each message (its tail, and the writer's runs); more rounds steady it on a
//!    shared machine.
//! 2. Fetch latency: a new connection sends `sub` with `last: 1000`; the time from
//!    sending it to the 1,000th message arriving, over `--fetches` runs.
//! 3. Bytes per message: stored bytes (what `store.max_bytes` caps) and sled's files
//!    on disk, from `/metrics`, divided by the messages kept.
//! 4. The store beside a plain file, in this process: what sled costs per entry and per
//!    byte against an append-only file (`--store-only` runs only this part).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use switchboard_bench::daemon::Daemon;
use switchboard_bench::harness::{self, thousands};
use switchboard_bench::host;

struct Options {
    messages: u64,
    fetches: usize,
    rounds: u64,
    /// Only part 4, the store beside a plain file.
    store_only: bool,
}

fn options() -> Options {
    let mut o = Options {
        messages: 50_000,
        fetches: 30,
        rounds: 2,
        store_only: false,
    };
    let mut args = std::env::args().skip(1);
    let number = harness::number_arg;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => {
                o.messages = 5_000;
                o.fetches = 10;
            }
            "--messages" => o.messages = number("--messages", args.next()),
            "--fetches" => o.fetches = number("--fetches", args.next()) as usize,
            "--rounds" => o.rounds = number("--rounds", args.next()).max(1),
            "--store-only" => o.store_only = true,
            other => {
                eprintln!("unknown argument {other:?}; see benches/history/main.rs");
                std::process::exit(2);
            }
        }
    }
    o
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(d: &Daemon) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.addr))
        .await
        .expect("connect to the daemon");
    next_json(&mut ws).await; // welcome
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).expect("a JSON frame")
            }
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

/// Publishes `n` messages pipelined and returns the seconds until the last ack.
async fn publish_rate(d: &Daemon, topic: &str, n: u64) -> f64 {
    let mut ws = connect(d).await;
    let (mut sink, mut stream) = ws.split();
    let started = Instant::now();
    let writer = async {
        for i in 0..n {
            let frame = json!({"op":"pub","topic":topic,"data":{"i":i,"v":21.5,"unit":"C","node":"kitchen-7"}});
            sink.feed(Message::text(frame.to_string()))
                .await
                .expect("publish");
        }
        sink.flush().await.expect("publish");
    };
    let reader = async {
        let mut acks = 0;
        while acks < n {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    assert!(t.as_str().starts_with("{\"op\":\"ok\""), "{t}");
                    acks += 1;
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended: {other:?}"),
            }
        }
    };
    tokio::join!(writer, reader);
    let elapsed = started.elapsed().as_secs_f64();
    ws = sink.reunite(stream).expect("same socket");
    let _ = ws.close(None).await;
    elapsed
}

/// Seconds from `sub` with `last: 1000` to the 1,000th recovered message.
async fn fetch(d: &Daemon, topic: &str) -> f64 {
    let mut ws = connect(d).await;
    let started = Instant::now();
    ws.send(Message::text(
        json!({"op":"sub","id":1,"topic":topic,"last":1000}).to_string(),
    ))
    .await
    .expect("sub");
    let mut got = 0;
    while got < 1000 {
        let f = next_json(&mut ws).await;
        match f["op"].as_str() {
            Some("msg") => got += 1,
            Some("ok") => assert_eq!(f["history"], 1000, "{f}"),
            _ => panic!("unexpected {f}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    elapsed
}

/// One unlabelled figure from `/metrics`; the bench needs it.
async fn metric(d: &Daemon, name: &str) -> u64 {
    d.metric(name)
        .await
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One way of keeping `n` records: the seconds it took (the last flush included) and
/// the bytes its files hold afterwards.
struct Kept {
    name: &'static str,
    seconds: f64,
    disk: u64,
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The store beside a plain append-only file, in this process (the clients' core): `n`
/// records of `record` bytes under 16-byte keys (a topic, NUL, a number; the
/// history bench's sizes), kept four
/// ways. What sled costs per entry and per byte, apart from everything else the daemon
/// does: the figures the history's and the recordings' write paths are built from.
fn store_beside_a_file(n: u64, record: usize) -> Vec<Kept> {
    let value = vec![b'x'; record];
    let key = |i: u64| {
        let mut k = b"kept/x0\0".to_vec();
        k.extend_from_slice(&i.to_be_bytes());
        k
    };
    let sled_run = |name: &'static str, segment: usize, write: &dyn Fn(&sled::Tree)| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(Some(1000))
            .segment_size(segment)
            .open()
            .expect("open sled");
        let tree = db.open_tree("history/messages").expect("tree");
        let started = Instant::now();
        write(&tree);
        db.flush().expect("flush");
        let seconds = started.elapsed().as_secs_f64();
        drop(tree);
        drop(db);
        Kept {
            name,
            seconds,
            disk: dir_bytes(dir.path()),
        }
    };
    /// sled's default, which the store keeps.
    const SEGMENT: usize = 512 * 1024;
    let mut out = vec![
        sled_run("sled, one insert per record", SEGMENT, &|t| {
            for i in 0..n {
                t.insert(key(i), &value[..]).expect("insert");
            }
        }),
        sled_run("sled, one batch of 1,024 inserts", SEGMENT, &|t| {
            for chunk in (0..n).collect::<Vec<_>>().chunks(1024) {
                let mut batch = sled::Batch::default();
                for &i in chunk {
                    batch.insert(key(i), &value[..]);
                }
                t.apply_batch(batch).expect("batch");
            }
        }),
    ];
    // Runs as the history writes them, under sled's default segment size and two others.
    let runs = |t: &sled::Tree| {
        for chunk in (0..n).collect::<Vec<_>>().chunks(128) {
            let mut block = Vec::with_capacity(chunk.len() * (record + 4));
            for _ in chunk {
                block.extend_from_slice(&(record as u32).to_be_bytes());
                block.extend_from_slice(&value);
            }
            t.insert(key(chunk[0]), block).expect("insert");
        }
    };
    out.push(sled_run("sled, 128 records per value", SEGMENT, &runs));
    out.push(sled_run("  the same, 256 KiB segments", 256 * 1024, &runs));
    out.push(sled_run("  the same, 128 KiB segments", 128 * 1024, &runs));
    out.push(sled_run("  the same, 64 KiB segments", 64 * 1024, &runs));
    out.push(sled_run("  the same, 8 MiB segments", 8 << 20, &runs));
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("log");
    let started = Instant::now();
    {
        use std::io::Write as _;
        let file = std::fs::File::create(&path).expect("create the file");
        let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
        for i in 0..n {
            let k = key(i);
            w.write_all(&((k.len() + record) as u32).to_be_bytes())
                .expect("write");
            w.write_all(&k).expect("write");
            w.write_all(&value).expect("write");
        }
        let file = w.into_inner().expect("flush");
        file.sync_data().expect("sync");
    }
    out.push(Kept {
        name: "append-only file (length, key, record)",
        seconds: started.elapsed().as_secs_f64(),
        disk: dir_bytes(dir.path()),
    });
    out
}

/// Part 4: prints the store beside a plain file and returns it for the results file.
fn print_store(n: u64) -> Value {
    const RECORD: usize = 102;
    println!("store beside a file, {} records of {RECORD} bytes + 16-byte keys (118 stored bytes each), in the bench process:", thousands(n as f64));
    let kept = store_beside_a_file(n, RECORD);
    let mut out = Vec::new();
    for k in &kept {
        let per_s = n as f64 / k.seconds;
        let disk = k.disk as f64 / n as f64;
        println!(
            "  {:<40} {:>10} records/s ({:.2} us each), {disk:>6.0} B on disk per record ({:.2}x stored)",
            k.name,
            thousands(per_s),
            1e6 / per_s,
            disk / 118.0
        );
        out.push(json!({"how": k.name, "per_s": per_s, "disk_bytes_per_record": disk}));
    }
    Value::Array(out)
}

fn main() {
    let o = options();
    let machine = format!("{}, {}", harness::utc_date(), host::machine());
    let pinned = host::taskset_available() && host::pin_self(1);
    let mut head = String::new();
    let _ = writeln!(head, "switchboard message history benchmark, {machine}");
    let _ = writeln!(
        head,
        "{}",
        harness::pinning_line(
            pinned,
            "daemon pinned to core 0 (taskset -c 0), clients to core 1"
        )
    );
    print!("{head}");
    if o.store_only {
        print_store(o.messages * 2);
        return;
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("switchboard.toml");
    let text = format!(
        "{ws}\n[history]\n[[history.topics]]\nfilter = \"kept/#\"\nkeep = {keep}\n",
        ws = switchboard_bench::daemon::SWITCHBOARD_WS_CONFIG,
        keep = o.messages * 2,
    );
    std::fs::write(&config, text).expect("write the configuration");
    let bin = std::env::var_os("BENCH_DAEMON")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchboard").into());
    let d = Daemon::start(bin, &config, pinned);
    let (rt, local) = harness::local_runtime();
    let results = local.block_on(&rt, async {
        // Warm up both paths once, then measure plain and kept alternately.
        publish_rate(&d, "plain/warm", 2_000).await;
        publish_rate(&d, "kept/warm", 2_000).await;
        let disk_before = metric(&d, "switchboard_store_disk_bytes").await;
        let mut plain = Vec::new();
        let mut kept = Vec::new();
        for round in 0..o.rounds {
            plain.push(publish_rate(&d, "plain/x", o.messages).await);
            kept.push(publish_rate(&d, &format!("kept/x{round}"), o.messages).await);
        }
        let mut fetches = Vec::new();
        for _ in 0..o.fetches {
            fetches.push(fetch(&d, "kept/x0").await);
        }
        // Let sled's background flush catch up before sizing its files.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stored = metric(&d, "switchboard_history_bytes").await;
        let kept_messages = metric(&d, "switchboard_history_messages").await;
        let disk_after = metric(&d, "switchboard_store_disk_bytes").await;
        (
            plain,
            kept,
            fetches,
            stored,
            kept_messages,
            disk_before,
            disk_after,
        )
    });
    let (plain, kept, mut fetches, stored, kept_messages, disk_before, disk_after) = results;
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let plain_rate = o.messages as f64 / best(&plain);
    let kept_rate = o.messages as f64 / best(&kept);
    fetches.sort_by(f64::total_cmp);
    let median_ms = percentile(&fetches, 0.5) * 1000.0;
    let p90_ms = percentile(&fetches, 0.9) * 1000.0;
    let per_message = stored as f64 / kept_messages.max(1) as f64;
    let disk_per_message =
        disk_after.saturating_sub(disk_before) as f64 / (o.rounds * o.messages).max(1) as f64;

    println!(
        "publish, acked      {:>12} msg/s without history, {:>12} msg/s with ({:.2}x)",
        thousands(plain_rate),
        thousands(kept_rate),
        kept_rate / plain_rate
    );
    println!(
        "fetch 1,000         median {median_ms:.1} ms, p90 {p90_ms:.1} ms over {} recoveries",
        fetches.len()
    );
    println!(
        "bytes per message   {per_message:.0} stored (payload {} bytes of JSON), {disk_per_message:.0} on disk",
        json!({"i":12345,"v":21.5,"unit":"C","node":"kitchen-7"})
            .to_string()
            .len()
    );
    let store = print_store(o.messages * 2);
    harness::write_results(
        env!("CARGO_TARGET_TMPDIR"),
        "history-bench.json",
        &json!({
            "machine": machine, "pinned": pinned, "messages": o.messages,
            "publish_per_s": {"plain": plain_rate, "history": kept_rate, "ratio": kept_rate / plain_rate},
            "fetch_1000_ms": {"median": median_ms, "p90": p90_ms, "runs": fetches.len()},
            "bytes_per_message": {"stored": per_message, "disk": disk_per_message},
            "store_beside_a_file": store,
        }),
    );
}
