//! Several boxes as one through Redis (`[cluster]`, docs/cluster.md): real daemons
//! sharing a real `redis-server` that each test starts on a free port with its own
//! directory, real clients over WebSocket, HTTP and MQTT.
//!
//! Each test runs a workload (publishers numbering their messages, subscribers on
//! every box on exact and wildcard filters), injects one fault in the middle, and
//! then checks what "no acknowledged message silently lost" means: every acknowledged
//! message reached every subscriber, or that subscriber was told of a gap (`lagged`);
//! per topic the numbers are contiguous between gap notices and identical on every
//! box; no duplicates; each publisher's order kept. The counts are printed.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{positioned, pub_one, resume_beyond_keep};
use common::redis::{node, node_with, Redis, Relay};
use common::{http, Daemon, Raw};
use serde_json::{json, Value};

/// A subscriber whose frames are collected by a task until the test reads them.
struct Sub {
    name: String,
    frames: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sub {
    async fn start(d: &Daemon, name: &str, filter: &str) -> Sub {
        let mut ws = Raw::subscribed(&d.ws_url(), filter).await;
        let frames = Arc::new(Mutex::new(Vec::new()));
        let sink = frames.clone();
        let task = tokio::spawn(async move {
            while let Some(f) = ws.try_recv(Duration::from_secs(60)).await {
                sink.lock().unwrap().push(f);
            }
        });
        Sub {
            name: name.into(),
            frames,
            task,
        }
    }

    fn msgs(&self) -> Vec<Value> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["op"] == "msg")
            .cloned()
            .collect()
    }

    fn lagged(&self) -> usize {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["op"] == "lagged")
            .count()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Acknowledged messages: (topic, publisher, n) → the seq the publisher was told.
type Acked = Arc<Mutex<BTreeMap<(String, String, u64), u64>>>;

/// Messages refused at least once before they were acknowledged: Redis may have taken
/// the refused attempt (its answer lost with the connection), so the retry may be
/// delivered twice, and only these may (docs/cluster.md).
static REFUSED: Mutex<Vec<(String, String, u64)>> = Mutex::new(Vec::new());

fn refused_once(topic: &str, publisher: &str, n: u64) {
    REFUSED
        .lock()
        .unwrap()
        .push((topic.into(), publisher.into(), n));
}

/// A WebSocket publisher: `count` messages `{"p": name, "n": i}`, each retried until
/// acknowledged (a refused publish was not acknowledged, so it may be sent again).
async fn ws_publisher(d: &Daemon, name: &str, topic: &str, count: u64, acked: Acked) -> u64 {
    let url = d.ws_url();
    let mut ws = Raw::connect(&url).await;
    let mut refused = 0;
    for n in 1..=count {
        loop {
            let r = ws
                .request(json!({"op":"pub","topic":topic,"data":{"p":name,"n":n}}))
                .await;
            if r["op"] == "ok" {
                let seq = r["seq"].as_u64().expect("seq in ok");
                acked
                    .lock()
                    .unwrap()
                    .insert((topic.into(), name.into(), n), seq);
                break;
            }
            assert_eq!(r["code"], "internal", "{r}");
            refused_once(topic, name, n);
            refused += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    refused
}

/// An HTTP publisher, as [`ws_publisher`].
async fn http_publisher(d: &Daemon, name: &str, topic: &str, count: u64, acked: Acked) -> u64 {
    let url = http::api(d, "/publish");
    let mut refused = 0;
    for n in 1..=count {
        loop {
            let body = json!({"topic":topic,"data":{"p":name,"n":n}}).to_string();
            let (status, v) = http::post(&url, None, &body).await;
            if status.is_success() {
                let seq = v["seq"].as_u64().expect("seq");
                acked
                    .lock()
                    .unwrap()
                    .insert((topic.into(), name.into(), n), seq);
                break;
            }
            assert_eq!(status.as_u16(), 503, "{v}");
            refused_once(topic, name, n);
            refused += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    refused
}

/// An MQTT device publishing at QoS 1 with mosquitto_pub (one line, one message); its
/// messages count as acknowledged once mosquitto_pub exits successfully (every PUBACK).
async fn mqtt_publisher(d: &Daemon, name: &str, topic: &str, count: u64, acked: Acked) {
    let port = d.mqtt.expect("mqtt listener").port();
    let mut child = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
        .args(["-t", topic, "-i", name])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = String::new();
    for n in 1..=count {
        lines.push_str(&format!("{}\n", json!({"p":name,"n":n})));
    }
    tokio::io::AsyncWriteExt::write_all(&mut stdin, lines.as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let status = child.wait().await.expect("mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
    let mut acked = acked.lock().unwrap();
    for n in 1..=count {
        // The device is not told a seq; 0 marks "acknowledged, number unknown".
        acked.insert((topic.into(), name.into(), n), 0);
    }
}

/// What the check found, summed over subscribers.
#[derive(Debug, Default)]
struct Counts {
    acknowledged: usize,
    delivered: usize,
    reported_missing: usize,
    lagged_notices: usize,
    /// Deliveries of a retried publish whose refused attempt Redis had taken too.
    retried_duplicates: usize,
}

/// Waits until every subscriber has every acknowledged message it should see (or a
/// few seconds passed), then checks the invariants and returns the counts.
async fn settle_and_check(subs: &[(&Sub, &str)], acked: &Acked) -> Counts {
    let acked = acked.lock().unwrap().clone();
    let wanted = |filter: &str| -> HashSet<(String, String, u64)> {
        acked
            .keys()
            .filter(|(t, _, _)| filter_matches(filter, t))
            .cloned()
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = subs.iter().all(|(s, f)| {
            let got: HashSet<_> = s.msgs().iter().map(key).collect();
            wanted(f).is_subset(&got) || s.lagged() > 0
        });
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Quiet a little more, so late duplicates would be seen too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut counts = Counts {
        acknowledged: acked.len(),
        ..Counts::default()
    };
    // (topic, publisher, n) → the seq each box gave it, which must be one.
    let mut seqs: HashMap<(String, String, u64), u64> = HashMap::new();
    // A retried publish may have been taken twice (see REFUSED): its first copy has
    // another number than the one its publisher was told, so only boxes are compared.
    let refused = REFUSED.lock().unwrap().clone();
    for (n, seq) in acked
        .iter()
        .filter(|(k, s)| **s > 0 && !refused.contains(k))
    {
        seqs.insert(n.clone(), *seq);
    }
    for (s, filter) in subs {
        let frames = s.frames.lock().unwrap().clone();
        let lagged = frames.iter().filter(|f| f["op"] == "lagged").count();
        counts.lagged_notices += lagged;
        let mut seen = HashSet::new();
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        let mut last_n: HashMap<(String, String), u64> = HashMap::new();
        let mut gap_since: HashSet<String> = HashSet::new();
        let mut had_gap = false;
        for f in &frames {
            if f["op"] == "lagged" {
                had_gap = true;
                // A gap notice covers every topic of this subscriber from here on.
                for t in last_seq.keys() {
                    gap_since.insert(t.clone());
                }
                continue;
            }
            if f["op"] != "msg" {
                continue;
            }
            let k = key(f);
            let (topic, publisher, n) = k.clone();
            let seq = f["seq"].as_u64().expect("seq");
            if let Some(prev) = last_seq.insert(topic.clone(), seq) {
                assert!(
                    seq == prev + 1 || gap_since.remove(&topic),
                    "{}: {topic} went from seq {prev} to {seq} without a gap notice",
                    s.name
                );
            }
            if !seen.insert(k.clone()) {
                let retried = REFUSED.lock().unwrap().contains(&k);
                assert!(retried, "{}: duplicate {k:?}", s.name);
                counts.retried_duplicates += 1;
                continue;
            }
            if let Some(prev) = last_n.insert((topic.clone(), publisher.clone()), n) {
                assert!(
                    n > prev,
                    "{}: {publisher} out of order: {prev} then {n}",
                    s.name
                );
            }
            // A retried message has two copies when Redis took the refused attempt; a
            // subscriber told of a gap may have missed the first copy (Redis lost it
            // before its box read it) and sees the retry, under its own number.
            let other_copy = had_gap && refused.contains(&k);
            match seqs.get(&k) {
                Some(_) if other_copy => {}
                Some(expected) => assert_eq!(
                    *expected, seq,
                    "{}: {k:?} has another seq than on another box",
                    s.name
                ),
                None => {
                    seqs.insert(k, seq);
                }
            }
        }
        let want = wanted(filter);
        let got = want.intersection(&seen).count();
        counts.delivered += got;
        let missing = want.len() - got;
        assert!(
            missing == 0 || lagged > 0,
            "{}: {missing} acknowledged messages lost silently",
            s.name
        );
        counts.reported_missing += missing;
    }
    eprintln!("{counts:?}");
    counts
}

fn key(f: &Value) -> (String, String, u64) {
    (
        f["topic"].as_str().unwrap_or_default().to_owned(),
        f["data"]["p"].as_str().unwrap_or_default().to_owned(),
        f["data"]["n"].as_u64().unwrap_or_default(),
    )
}

fn filter_matches(filter: &str, topic: &str) -> bool {
    match filter.strip_suffix('#') {
        Some(prefix) => topic.starts_with(prefix),
        None => filter == topic,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_way_in_reaches_every_box_in_one_order() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let (a, b) = (node(&redis.url(), "a"), node(&redis.url(), "b"));
    let sa = Sub::start(&a, "a:t/#", "t/#").await;
    let sb = Sub::start(&b, "b:t/#", "t/#").await;
    let sb_exact = Sub::start(&b, "b:t/http", "t/http").await;
    let sa_hist = Sub::start(&a, "a:h/1", "h/1").await;
    let acked: Acked = Arc::default();
    tokio::join!(
        ws_publisher(&a, "wsA", "t/ws", 60, acked.clone()),
        ws_publisher(&b, "wsB", "t/ws", 60, acked.clone()),
        http_publisher(&b, "http", "t/http", 40, acked.clone()),
        mqtt_publisher(&a, "mqtt", "t/mqtt", 60, acked.clone()),
        ws_publisher(&b, "hist", "h/1", 30, acked.clone()),
    );
    let c = settle_and_check(
        &[
            (&sa, "t/#"),
            (&sb, "t/#"),
            (&sb_exact, "t/http"),
            (&sa_hist, "h/1"),
        ],
        &acked,
    )
    .await;
    assert_eq!((c.reported_missing, c.lagged_notices), (0, 0));
    assert_eq!(c.delivered, 2 * 220 + 40 + 30);
    // Both publishers of t/ws were numbered by one counter: 1..=120, no matter the box.
    let seqs: HashSet<u64> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|((t, _, _), _)| t == "t/ws")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(seqs, (1..=120).collect());
    assert!(a.metric("switchboard_cluster_published_total").await > 0);
    assert_eq!(b.metric("switchboard_cluster_nodes_seen").await, 2);
    let health = b.healthz().await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["cluster"]["node"], "b", "{health}");
    assert_eq!(health["cluster"]["redis_reachable"], true, "{health}");
    assert_eq!(health["cluster"]["nodes_seen"], 2, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_bus_reader_resumes_where_it_stopped() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let (a, b) = (node(&redis.url(), "a"), node(&redis.url(), "b"));
    let sa = Sub::start(&a, "a:t/#", "t/#").await;
    let sb = Sub::start(&b, "b:t/#", "t/#").await;
    let acked: Acked = Arc::default();
    let killer = async {
        let mut killed = 0;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            killed += redis.kill_readers();
        }
        killed
    };
    let (killed, _, _) = tokio::join!(
        killer,
        ws_publisher(&a, "wsA", "t/ws", 150, acked.clone()),
        http_publisher(&b, "http", "t/http", 100, acked.clone()),
    );
    assert!(killed >= 4, "killed {killed} reader connections");
    let c = settle_and_check(&[(&sa, "t/#"), (&sb, "t/#")], &acked).await;
    assert_eq!((c.reported_missing, c.lagged_notices), (0, 0));
    assert!(a.metric("switchboard_cluster_reader_restarts_total").await >= 1);
}

/// Two boxes under load (WebSocket on box a to `t/ws`, HTTP on box b to `b_topic`)
/// while Redis is killed and restarted; box a and the counts, once settled, of a
/// subscriber to `t/#` on box a and one to `b_filter` on box b.
async fn through_a_redis_crash(
    redis: &mut Redis,
    b_topic: &str,
    b_filter: &str,
) -> (Daemon, Counts) {
    let (a, b) = (node(&redis.url(), "a"), node(&redis.url(), "b"));
    let sa = Sub::start(&a, "a:t/#", "t/#").await;
    let sb = Sub::start(&b, &format!("b:{b_filter}"), b_filter).await;
    let acked: Acked = Arc::default();
    let load = async {
        tokio::join!(
            ws_publisher(&a, "wsA", "t/ws", 150, acked.clone()),
            http_publisher(&b, "http", b_topic, 100, acked.clone()),
        )
    };
    let fault = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| redis.crash_and_restart());
    };
    let ((r1, r2), ()) = tokio::join!(load, fault);
    eprintln!("publishes refused while Redis was down: {}", r1 + r2);
    let c = settle_and_check(&[(&sa, "t/#"), (&sb, b_filter)], &acked).await;
    (a, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_with_fsync_always_loses_nothing() {
    let Some(mut redis) = Redis::start(true) else {
        return;
    };
    let (_, c) = through_a_redis_crash(&mut redis, "h/1", "h/#").await;
    assert_eq!((c.reported_missing, c.lagged_notices), (0, 0));
    assert_eq!(c.delivered, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_without_persistence_reports_the_gap() {
    let Some(mut redis) = Redis::start(false) else {
        return;
    };
    let (a, c) = through_a_redis_crash(&mut redis, "t/http", "t/#").await;
    // Redis forgot the topics' numbers: each box saw new epochs and said so.
    assert!(c.lagged_notices >= 2, "{c:?}");
    assert!(a.metric("switchboard_cluster_gaps_total").await >= 1);
    assert_eq!(c.acknowledged, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_redis_fails_publishes_clearly_then_recovers() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let (a, b) = (node(&redis.url(), "a"), node(&redis.url(), "b"));
    let sb = Sub::start(&b, "b:t/#", "t/#").await;
    let mut ws = Raw::connect(&a.ws_url()).await;
    let ok = ws
        .request(json!({"op":"pub","topic":"t/x","data":{"p":"x","n":1}}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    redis.signal("STOP");
    let refused = ws
        .request(json!({"op":"pub","topic":"t/x","data":{"p":"x","n":2}}))
        .await;
    assert_eq!(refused["code"], "internal", "{refused}");
    let health = a.healthz().await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["cluster"]["redis_reachable"], false, "{health}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer"),
        "{refused}"
    );
    redis.signal("CONT");
    let acked: Acked = Arc::default();
    ws_publisher(&a, "after", "t/y", 20, acked.clone()).await;
    let c = settle_and_check(&[(&sb, "t/y")], &acked).await;
    assert_eq!(c.reported_missing, 0);
    assert!(a.metric("switchboard_cluster_publish_failures_total").await >= 1);
}

#[test]
fn bad_urls_unreachable_redis_and_refused_credentials_stop_the_start() {
    let Some(redis) = Redis::start_with(false, &["--requirepass", "right"]) else {
        return;
    };
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong\n").expect("write");
    let right = dir.path().join("right");
    std::fs::write(&right, "right\n").expect("write");
    let cluster = |body: &str| format!("[cluster]\nenabled = true\n{body}\n");
    // Refused when the file is read: check-config says so too.
    let bad = cluster(r#"redis = ["http://127.0.0.1:1"]"#);
    let path: PathBuf = dir.path().join("bad.toml");
    std::fs::write(&path, &bad).expect("write");
    let out = Command::new(common::BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a redis:// URL"),
        "{err}"
    );
    common::assert_startup_errors(&[
        (&bad, "not a redis:// URL"),
        (
            &cluster(&format!(
                "redis_cluster = [\"redis://127.0.0.1:{dead}\"]\nconnect_timeout = \"300ms\""
            )),
            &format!("cannot reach Redis at 127.0.0.1:{dead} (Redis Cluster)"),
        ),
        (
            &cluster(&format!(
                "redis = [\"redis://127.0.0.1:{dead}\"]\nconnect_timeout = \"300ms\""
            )),
            &format!("cannot reach Redis at 127.0.0.1:{dead}"),
        ),
        (
            &cluster(&format!(
                "redis = [\"{}\"]\npassword_file = \"{}\"",
                redis.url(),
                wrong.display()
            )),
            "refused the credentials",
        ),
        (
            &cluster(&format!("redis = [\"{}\"]", redis.url())),
            "refused the credentials",
        ),
    ]);
    // The right password starts.
    let d = Daemon::start(&cluster(&format!(
        "redis = [\"{}\"]\npassword_file = \"{}\"",
        redis.url(),
        right.display()
    )));
    drop(d);
}

/// Box a on Redis directly, box b through a relay the test can cut.
async fn a_and_b_behind_a_relay(redis: &Redis, more: &str) -> (Daemon, Daemon, Relay) {
    let relay = Relay::start(redis.port).await;
    let a = node_with(&redis.url(), "a", more);
    let b = node_with(&format!("redis://127.0.0.1:{}", relay.port), "b", more);
    (a, b, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_box_cut_from_redis_catches_up_from_its_last_position() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let (a, b, relay) = a_and_b_behind_a_relay(&redis, "").await;
    let sa = Sub::start(&a, "a:t/#", "t/#").await;
    let sb = Sub::start(&b, "b:t/#", "t/#").await;
    let acked: Acked = Arc::default();
    let fault = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay.cut();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        relay.mend();
    };
    let (_, r1, r2) = tokio::join!(
        fault,
        ws_publisher(&a, "wsA", "t/ws", 200, acked.clone()),
        http_publisher(&b, "http", "t/http", 60, acked.clone()),
    );
    eprintln!("refused on the cut box: {r2} (on the other: {r1})");
    assert!(r2 > 0, "the cut box refused nothing: was it cut?");
    // Box b read nothing while cut, then everything it missed, from its last position.
    let c = settle_and_check(&[(&sa, "t/#"), (&sb, "t/#")], &acked).await;
    assert_eq!((c.reported_missing, c.lagged_notices), (0, 0));
    assert!(b.metric("switchboard_cluster_reader_restarts_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_box_that_fell_behind_the_trimmed_bus_is_told_how_much_it_missed() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    // A short bus: what a box cut off misses is trimmed before it is back.
    let (a, b, relay) = a_and_b_behind_a_relay(&redis, "bus_keep = 10").await;
    let sb = Sub::start(&b, "b:t/#", "t/#").await;
    let acked: Acked = Arc::default();
    ws_publisher(&a, "before", "t/x", 5, acked.clone()).await;
    relay.cut();
    // Trimming is approximate (whole stream nodes of 100 entries): publish well past it.
    ws_publisher(&a, "while", "t/x", 400, acked.clone()).await;
    relay.mend();
    ws_publisher(&a, "after", "t/x", 5, acked.clone()).await;
    let c = settle_and_check(&[(&sb, "t/#")], &acked).await;
    let dropped: u64 = sb
        .frames
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f["op"] == "lagged")
        .map(|f| f["dropped"].as_u64().unwrap_or_default())
        .sum();
    // Told, with the count: the bus positions it missed are exactly what it lacks.
    assert!(c.reported_missing > 0 && c.lagged_notices > 0, "{c:?}");
    assert!(
        dropped >= c.reported_missing as u64,
        "told {dropped}, missing {c:?}"
    );
    // And what came after is delivered.
    let got: HashSet<_> = sb.msgs().iter().map(key).collect();
    assert!((1..=5).all(|n| got.contains(&("t/x".into(), "after".into(), n))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mqtt_publishes_wait_on_disk_while_redis_is_unreachable() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let (a, b, relay) = a_and_b_behind_a_relay(&redis, "").await;
    let sa = Sub::start(&a, "a:t/#", "t/#").await;
    let acked: Acked = Arc::default();
    mqtt_publisher(&b, "dev1", "t/dev", 20, acked.clone()).await;
    relay.cut();
    // Acknowledged by the device's session while box b cannot reach Redis.
    mqtt_publisher(&b, "dev2", "t/dev", 50, acked.clone()).await;
    let waiting = b.healthz().await;
    assert!(
        waiting["cluster"]["outbox"].as_u64().unwrap_or(0) > 0,
        "{waiting}"
    );
    relay.mend();
    mqtt_publisher(&b, "dev3", "t/dev", 20, acked.clone()).await;
    let c = settle_and_check(&[(&sa, "t/#")], &acked).await;
    assert_eq!((c.reported_missing, c.lagged_notices), (0, 0));
    assert_eq!(c.delivered, 90);
    // Sent in the order they came: every dev2 message before every dev3 one.
    let order: Vec<String> = sa
        .msgs()
        .iter()
        .map(|m| m["data"]["p"].as_str().unwrap_or_default().to_owned())
        .collect();
    let last_dev2 = order.iter().rposition(|p| p == "dev2");
    let first_dev3 = order.iter().position(|p| p == "dev3");
    assert!(last_dev2 < first_dev3, "{order:?}");
    assert_eq!(b.metric("switchboard_cluster_outbox").await, 0);
    assert_eq!(b.metric("switchboard_cluster_mqtt_dropped_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_fire_once_per_message_for_the_cluster() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    // A webhook endpoint that counts the message events it gets.
    let (url, bodies, server) = http::webhook_sink().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").expect("write");
    let hook = format!(
        "[[webhooks]]\nname = \"main\"\nurl = \"{url}\"\nsecret_file = \"{}\"\ntopics = [\"t/#\"]\n",
        secret.display()
    );
    // The same configuration on both boxes, as a site would have it.
    let (a, b) = (
        node_with(&redis.url(), "a", &format!("\n{hook}")),
        node_with(&redis.url(), "b", &format!("\n{hook}")),
    );
    let acked: Acked = Arc::default();
    tokio::join!(
        ws_publisher(&a, "wsA", "t/x", 10, acked.clone()),
        http_publisher(&b, "http", "t/x", 10, acked.clone()),
    );
    // Each delivery carries a batch: `{"webhook": …, "events": [...]}`.
    let messages = || -> Vec<Value> {
        bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["type"] == "message")
            .collect()
    };
    let count = || messages().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count() < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for a second copy from the other box to arrive, if one were sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seqs: HashSet<u64> = messages()
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(count(), 20, "each message once, not once per box");
    assert_eq!(seqs, (1..=20).collect());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resumes_on_another_box_where_it_stopped() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    // `k/#` keeps 5: the range a client asks for there is beyond what is kept.
    let keep5 = "[[history.topics]]\nfilter = \"k/#\"\nkeep = 5\n";
    let a = node_with(&redis.url(), "a", keep5);
    let b = node_with(&redis.url(), "b", keep5);
    let mut publisher = Raw::connect(&b.ws_url()).await;
    pub_one(&mut publisher, "h/r", 1).await;
    pub_one(&mut publisher, "k/r", 1).await;
    let (mut client, epoch, mut last) = positioned(&a, "h/r").await;
    let (_kept, k_epoch, k_last) = positioned(&a, "k/r").await;
    // A topic has one position on every box.
    let (_, b_epoch, _) = positioned(&b, "h/r").await;
    assert_eq!(b_epoch, epoch);
    for n in 2..=10 {
        pub_one(&mut publisher, "h/r", n).await;
        let m = client.next_msg().await;
        assert_eq!(m["data"]["n"], n, "{m}");
        last = m["seq"].as_u64().expect("seq");
    }
    // A topic box a had not read a message of yet: its `sub` answered with box a's own
    // epoch, which stays good there once the first message brought the cluster's.
    let mut early = Raw::connect(&a.ws_url()).await;
    let ok = early.request(json!({"op":"sub","topic":"h/new"})).await;
    assert_eq!(ok["seq"], 0, "{ok}");
    for n in 1..=3 {
        pub_one(&mut publisher, "h/new", n).await;
        assert_eq!(early.next_msg().await["seq"], n);
    }
    let again = json!({"op":"sub","topic":"h/new","since":1,"epoch":ok["epoch"]});
    let ok = Raw::connect(&a.ws_url()).await.request(again).await;
    assert_eq!(
        (&ok["recovered"], &ok["history"]),
        (&json!(true), &json!(2)),
        "{ok}"
    );

    a.signal("KILL");
    while client.try_recv(Duration::from_secs(5)).await.is_some() {}
    for n in 11..=30 {
        pub_one(&mut publisher, "h/r", n).await;
    }
    for n in 2..=20 {
        pub_one(&mut publisher, "k/r", n).await;
    }

    // On box b, from the position box a gave: every missed message once, then live ones.
    let mut resumed = Raw::connect(&b.ws_url()).await;
    let ok = resumed
        .request(json!({"op":"sub","topic":"h/r","since":last,"epoch":epoch}))
        .await;
    assert_eq!(
        (&ok["op"], &ok["recovered"], &ok["history"], &ok["epoch"]),
        (&json!("ok"), &json!(true), &json!(20), &json!(epoch)),
        "{ok}"
    );
    pub_one(&mut publisher, "h/r", 31).await;
    for n in 11..=31 {
        let m = resumed.next_msg().await;
        assert_eq!(
            (m["data"]["n"].as_u64(), m["seq"].as_u64()),
            (Some(n), Some(n)),
            "{m}"
        );
        assert_eq!(m["history"].as_bool(), (n <= 30).then_some(true), "{m}");
    }
    pub_one(&mut publisher, "h/r", 32).await;
    let m = resumed.next_msg().await;
    assert_eq!(m["data"]["n"], 32, "no duplicate before it: {m}");

    // Beyond what is kept: told so, and given what is left.
    resume_beyond_keep(&mut resumed, "k/r", k_last, &k_epoch, 16..=20, 20).await;
}
