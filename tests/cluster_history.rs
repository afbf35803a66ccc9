//! History and positions across boxes (`[cluster]`, docs/cluster.md "History and
//! resume on any box"): one real `redis-server`, real daemons, real WebSocket and HTTP
//! clients. A box that was down, or started later, answers a resume across its hole
//! from the topic's history stream in Redis, under the numbers every box uses; a plain
//! `sub` on a topic a box has not read yet answers with the cluster's position.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{positioned, pub_one, resume_beyond_keep};
use common::redis::{node_with, Redis};
use common::{http_get_json, Daemon, Raw};
use serde_json::{json, Value};

/// `h/#` keeps 10000 (set by `node_with`); `k/#` keeps 5, less than a box misses.
const KEEP5: &str = "[[history.topics]]\nfilter = \"k/#\"\nkeep = 5\n";

/// Publishes `n` in `range` on `topic` through `ws`; n → the seq it was given.
async fn publish(
    ws: &mut Raw,
    topic: &str,
    range: std::ops::RangeInclusive<u64>,
) -> BTreeMap<u64, u64> {
    let mut seqs = BTreeMap::new();
    for n in range {
        seqs.insert(n, pub_one(ws, topic, n).await);
    }
    seqs
}

/// Waits until box `d` has read message `seq` of `topic` (its `sub` answers it).
async fn reached(d: &Daemon, topic: &str, seq: u64) {
    let mut c = Raw::connect(&d.ws_url()).await;
    for _ in 0..250 {
        let ok = c.request(json!({"op":"sub","topic":topic})).await;
        if ok["seq"].as_u64() >= Some(seq) {
            return;
        }
        c.request(json!({"op":"unsub","topic":topic})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{topic} {seq} never reached the box");
}

/// The `msg` frames a resumed client gets: each checked against what was published
/// (same data, same seq as the publisher was told), in order, no duplicate.
async fn take(
    c: &mut Raw,
    seqs: &BTreeMap<u64, u64>,
    ns: std::ops::RangeInclusive<u64>,
    history: bool,
) {
    for n in ns {
        let m = c.next_msg().await;
        assert_eq!(
            (m["data"]["n"].as_u64(), m["seq"].as_u64()),
            (Some(n), seqs.get(&n).copied()),
            "{m}"
        );
        assert_eq!(m["history"].as_bool(), history.then_some(true), "{m}");
    }
}

/// A client resuming `topic` on `d` from (`epoch`, `since`): told the recovery is
/// complete, and given the messages `ns` (checked by [`take`]); the client.
async fn resumed(
    d: &Daemon,
    topic: &str,
    since: &Value,
    epoch: &Value,
    seqs: &BTreeMap<u64, u64>,
    ns: std::ops::RangeInclusive<u64>,
) -> Raw {
    let mut c = Raw::connect(&d.ws_url()).await;
    let ok = c
        .request(json!({"op":"sub","topic":topic,"since":since,"epoch":epoch}))
        .await;
    let count = ns.clone().count();
    assert_eq!(
        (&ok["recovered"], &ok["history"]),
        (&json!(true), &json!(count)),
        "{ok}"
    );
    take(&mut c, seqs, ns, true).await;
    c
}

/// `GET /api/v1/history?{query}` on `d`: the reply and the seqs of its messages.
async fn http_history(d: &Daemon, query: &str) -> (Value, Vec<u64>) {
    let h = http_get_json(d.http, &format!("/api/v1/history?{query}")).await;
    let seqs = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    (h, seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_box_that_was_down_or_started_later_repairs_its_hole_from_redis() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mut a = node_with(&redis.url(), "a", KEEP5);
    let b = node_with(&redis.url(), "b", KEEP5);
    let mut publisher = Raw::connect(&b.ws_url()).await;
    let mut seqs = publish(&mut publisher, "h/r", 1..=10).await;
    pub_one(&mut publisher, "k/r", 1).await;
    pub_one(&mut publisher, "k/r", 2).await;
    reached(&a, "h/r", 10).await;
    reached(&a, "k/r", 2).await;
    let (_c, epoch, last) = positioned(&a, "h/r").await;
    let (_k, k_epoch, k_last) = positioned(&a, "k/r").await;
    assert_eq!((last, k_last), (10, 2));

    // Box a is killed; 20 messages pass while it is down; it comes back and reads on.
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(5));
    seqs.extend(publish(&mut publisher, "h/r", 11..=30).await);
    for n in 3..=20 {
        pub_one(&mut publisher, "k/r", n).await;
    }
    a.respawn();
    let mut live_b = Raw::subscribed(&b.ws_url(), "h/r").await;
    // Box c starts after all of it.
    let c = node_with(&redis.url(), "c", KEEP5);
    seqs.extend(publish(&mut publisher, "h/r", 31..=33).await);
    reached(&a, "h/r", 33).await;
    reached(&c, "h/r", 33).await;

    // On a, across its hole (11..30): every missed message once, from Redis and from
    // its own history, then live ones, each under the seq every box uses.
    let mut delivered = 0;
    for d in [&a, &c] {
        let mut resumed = Raw::connect(&d.ws_url()).await;
        let ok = resumed
            .request(json!({"op":"sub","topic":"h/r","since":last,"epoch":epoch}))
            .await;
        assert_eq!(
            (
                &ok["op"],
                &ok["recovered"],
                &ok["history"],
                &ok["epoch"],
                &ok["seq"]
            ),
            (
                &json!("ok"),
                &json!(true),
                &json!(23),
                &json!(epoch),
                &json!(33)
            ),
            "{ok}"
        );
        take(&mut resumed, &seqs, 11..=33, true).await;
        delivered += 23;
        resumed.request(json!({"op":"unsub","topic":"h/r"})).await;
    }
    let mut resumed_a = resumed(&a, "h/r", &json!(20), &json!(epoch), &seqs, 21..=33).await;
    seqs.extend(publish(&mut publisher, "h/r", 34..=35).await);
    take(&mut resumed_a, &seqs, 34..=35, false).await;
    // The same live messages, under the same numbers, on b.
    take(&mut live_b, &seqs, 31..=35, false).await;
    assert!(
        resumed_a
            .try_recv(Duration::from_millis(200))
            .await
            .is_none(),
        "no duplicate"
    );

    // The HTTP history of a and c across the hole, too: whole, and page by page
    // (`last`: the oldest first, `recovered` once the page reaches the newest).
    for d in [&a, &c] {
        for (query, seqs, recovered) in [
            ("since=5", 6..=35, true),
            ("since=5&last=10", 6..=15, false),
            ("since=15&last=10", 16..=25, false),
            ("since=25&last=10", 26..=35, true),
        ] {
            let (h, got) = http_history(d, &format!("topic=h/r&epoch={epoch}&{query}")).await;
            assert_eq!(
                (&h["recovered"], &h["seq"]),
                (&json!(recovered), &json!(35)),
                "{query}: {h}"
            );
            assert_eq!(got, seqs.collect::<Vec<_>>(), "{query}");
        }
    }

    for d in [&a, &c] {
        assert!(d.metric("switchboard_cluster_history_reads_total").await >= 5);
        assert_eq!(
            d.metric("switchboard_cluster_history_read_failures_total")
                .await,
            0
        );
    }

    // Beyond what Redis keeps (k/r keeps 5): what is left, and `recovered: false`.
    resume_beyond_keep(&mut resumed_a, "k/r", k_last, &k_epoch, 16..=20, 20).await;
    println!(
        "h/r: acknowledged {}, recovered across the hole on a and c {delivered} and by HTTP 120, 0 missing, 0 duplicates; k/r: 5 recovered, 13 reported missing (beyond keep)",
        seqs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sub_on_a_topic_the_box_has_not_read_answers_the_cluster_position() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let b = node_with(&redis.url(), "b", "");
    let mut publisher = Raw::connect(&b.ws_url()).await;
    let seqs = publish(&mut publisher, "h/p", 1..=7).await;
    // Even the box a message was published through learns of it from the bus: an
    // acknowledgement can come before that box has read the message back.
    reached(&b, "h/p", 7).await;
    let (_on_b, epoch, last) = positioned(&b, "h/p").await;
    assert_eq!(last, 7);

    // Box a starts later: it has read nothing of h/p, and answers with the cluster's
    // position, not one of its own.
    let a = node_with(&redis.url(), "a", "");
    let mut on_a = Raw::connect(&a.ws_url()).await;
    let ok: Value = on_a.request(json!({"op":"sub","topic":"h/p"})).await;
    assert_eq!(
        (&ok["epoch"], &ok["seq"]),
        (&json!(epoch), &json!(7)),
        "{ok}"
    );
    // Its HTTP history, a page at a time, from the cluster's copy.
    let (h, got) = http_history(&a, &format!("topic=h/p&epoch={epoch}&since=2&last=3")).await;
    assert_eq!(
        (&h["epoch"], &h["seq"], &h["recovered"]),
        (&json!(epoch), &json!(7), &json!(false)),
        "{h}"
    );
    assert_eq!(got, [3, 4, 5]);
    let mut all = seqs.clone();
    all.extend(publish(&mut publisher, "h/p", 8..=9).await);
    take(&mut on_a, &all, 8..=9, false).await;

    // That position resumes seamlessly on the other box, once it has read 9 back.
    reached(&b, "h/p", 9).await;
    resumed(&b, "h/p", &ok["seq"], &ok["epoch"], &all, 8..=9).await;
    println!(
        "acknowledged {}, position answered by the late box 7 = the cluster's",
        all.len()
    );
}

/// Publishes until Redis takes it (publishes fail while a box reconnects); its seq.
async fn pub_retried(ws: &mut Raw, topic: &str, n: u64) -> u64 {
    for _ in 0..100 {
        let r = ws
            .request(json!({"op":"pub","topic":topic,"data":{"n":n}}))
            .await;
        if r["op"] == "ok" {
            return r["seq"].as_u64().expect("seq");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{topic} {n} never taken");
}

/// The frames a subscriber gets up to and including the message with `n`.
async fn frames_until(c: &mut Raw, n: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let f = c.recv().await;
        let last = f["op"] == "msg" && f["data"]["n"] == n;
        frames.push(f);
        if last {
            return frames;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_back_with_a_stale_tail_starts_a_new_epoch_instead_of_reusing_numbers() {
    let Some(mut redis) =
        Redis::start_with(false, &["--appendonly", "yes", "--appendfsync", "everysec"])
    else {
        return;
    };
    let mut a = node_with(&redis.url(), "a", "");
    let b = node_with(&redis.url(), "b", "");
    let mut subs = Vec::new();
    for d in [&a, &b] {
        let mut c = Raw::connect(&d.ws_url()).await;
        let ok = c.request(json!({"op":"sub","topic":"h/s"})).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        subs.push(c);
    }
    let mut publisher = Raw::connect(&b.ws_url()).await;
    publish(&mut publisher, "h/s", 1..=5).await;
    let saved = redis.save_aof();
    let before = publish(&mut publisher, "h/s", 6..=10).await;
    assert_eq!(
        before.values().copied().collect::<Vec<_>>(),
        (6..=10).collect::<Vec<_>>()
    );
    for c in &mut subs {
        for n in 1..=10 {
            assert_eq!(c.next_msg().await["seq"], n);
        }
    }
    let (_, old_epoch, _) = positioned(&a, "h/s").await;

    // Redis comes back without 6..10: its counters say 5.
    redis.restart_from(&saved);
    let mut after = BTreeMap::new();
    for n in 11..=15 {
        after.insert(n, pub_retried(&mut publisher, "h/s", n).await);
    }
    // Not 6..10 again under the old epoch (boxes would drop them as read twice): a new
    // epoch from 1, and every subscriber told of the gap, then given every message.
    assert_eq!(
        after.values().copied().collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>()
    );
    let mut delivered = 0;
    for c in &mut subs {
        let frames = frames_until(c, 15).await;
        let first = frames.iter().position(|f| f["op"] == "msg").expect("a msg");
        assert!(
            frames[..first].iter().any(|f| f["op"] == "lagged"),
            "told of the gap first: {frames:?}"
        );
        let got: Vec<(u64, u64)> = frames
            .iter()
            .filter(|f| f["op"] == "msg")
            .map(|f| {
                (
                    f["data"]["n"].as_u64().unwrap_or(0),
                    f["seq"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(got, (11..=15).map(|n| (n, n - 10)).collect::<Vec<_>>());
        delivered += got.len();
    }
    // The new epoch on both boxes, and their histories hold only its messages.
    let (_, new_epoch, seq) = positioned(&a, "h/s").await;
    let (_, b_epoch, _) = positioned(&b, "h/s").await;
    assert_ne!(new_epoch, old_epoch);
    assert_eq!((&b_epoch, seq), (&new_epoch, 5));
    for d in [&a, &b] {
        resumed(d, "h/s", &json!(2), &json!(new_epoch), &after, 13..=15).await;
    }
    // Also once stored: box a stopped and started again answers from its own history.
    a.restart();
    resumed(&a, "h/s", &json!(2), &json!(new_epoch), &after, 13..=15).await;
    println!(
        "acknowledged 15 (5 lost by Redis after delivery), delivered after the restart {delivered}, 0 missing, gap reported to every subscriber"
    );
}

/// A topic's meta hash in Redis: its key and its time to live in ms (-1: none).
fn meta_ttl(redis: &Redis, topic: &str) -> Option<(String, i64)> {
    let pattern = format!("sb:*:t:{topic}:meta");
    let keys = redis.cmd(&["KEYS", &pattern]);
    let key = keys.lines().find(|l| l.starts_with("sb:"))?.to_owned();
    let ttl = redis.cmd(&["PTTL", &key]);
    Some((key, ttl.trim().trim_start_matches(':').parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_topic_without_history_forgets_its_numbering_after_topic_meta_ttl() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let a = node_with(&redis.url(), "a", "topic_meta_ttl = \"300ms\"");
    let mut sub = Raw::subscribed(&a.ws_url(), "t/x").await;
    let mut publisher = Raw::connect(&a.ws_url()).await;
    let first = publish(&mut publisher, "t/x", 1..=2).await;
    pub_one(&mut publisher, "h/y", 1).await;
    let (key, ttl) = meta_ttl(&redis, "t/x").expect("t/x has a meta hash");
    assert!(ttl > 0 && ttl <= 300, "t/x's numbering expires: {ttl}");
    let (_, kept) = meta_ttl(&redis, "h/y").expect("h/y has a meta hash");
    assert_eq!(kept, -1, "a history topic's numbering is kept");

    // Idle past the TTL: the numbering is gone, and starts again under a new epoch.
    for _ in 0..100 {
        if redis.cmd(&["EXISTS", &key]).contains(":0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(redis.cmd(&["EXISTS", &key]).contains(":0"), "{key} expired");
    let again = pub_one(&mut publisher, "t/x", 3).await;
    assert_eq!(
        (first.values().copied().collect::<Vec<_>>(), again),
        (vec![1, 2], 1)
    );
    let frames = frames_until(&mut sub, 3).await;
    let ops: Vec<String> = frames
        .iter()
        .map(|f| match f["op"].as_str() {
            Some("msg") => format!("msg {}", f["seq"]),
            other => other.unwrap_or("?").to_owned(),
        })
        .collect();
    assert_eq!(ops, ["msg 1", "msg 2", "lagged", "msg 1"], "{frames:?}");
    println!(
        "t/x: 3 published, 3 delivered, numbering restarted once after its TTL (told: lagged)"
    );
}
