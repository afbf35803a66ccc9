//! Routing through the real daemon: wildcards, ordering, fan-out, direct messages,
//! presence.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Daemon, Raw};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

/// Collects the topics of `msg` pushes until the connection is quiet.
async fn drain_topics(c: &mut Raw) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    while let Some(f) = c.try_recv(QUIET).await {
        if f["op"] == "msg" {
            let topic = f["topic"].as_str().unwrap().to_owned();
            assert!(got.insert(topic.clone()), "{topic} delivered twice");
        }
    }
    got
}

#[tokio::test]
async fn wildcard_routing_matrix() {
    let d = Daemon::start("");
    let filters = [
        "home/kitchen/temp",
        "home/+/temp",
        "home/#",
        "#",
        "+/+/+",
        "home/+",
        "$devices/#",
        "home/kitchen/+/x",
    ];
    let topics = [
        "home/kitchen/temp",
        "home/hall/temp",
        "home/kitchen",
        "home",
        "office/a/b",
        "home/kitchen/temp/x",
    ];
    let mut subs = Vec::new();
    for f in filters {
        let mut c = Raw::connect(&d.ws_url()).await;
        let r = c.request(json!({"op":"sub","topic":f})).await;
        assert_eq!(r["op"], "ok", "{f}: {r}");
        subs.push(c);
    }
    // A connection holding overlapping filters still gets one copy.
    let mut overlap = Raw::connect(&d.ws_url()).await;
    for f in ["home/#", "home/+/temp", "home/kitchen/temp"] {
        assert_eq!(
            overlap.request(json!({"op":"sub","topic":f})).await["op"],
            "ok"
        );
    }
    let mut publisher = Raw::connect(&d.ws_url()).await;
    // `$` topics carry what the server says (device status); clients may not forge them.
    let r = publisher
        .request(json!({"op":"pub","topic":"$SYS/uptime","data":1}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    for t in topics {
        let r = publisher
            .request(json!({"op":"pub","topic":t,"data":t}))
            .await;
        assert_eq!(r["op"], "ok", "{t}: {r}");
    }
    for (f, c) in filters.iter().zip(subs.iter_mut()) {
        let want: BTreeSet<String> = topics
            .iter()
            .filter(|t| switchboard_core::topic::matches(f, t))
            .map(|t| t.to_string())
            .collect();
        assert_eq!(drain_topics(c).await, want, "filter {f}");
    }
    let want: BTreeSet<String> = [
        "home/kitchen/temp",
        "home/hall/temp",
        "home/kitchen",
        "home",
        "home/kitchen/temp/x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(drain_topics(&mut overlap).await, want);
}

#[tokio::test]
async fn message_fields_and_sequence_numbers() {
    let d = Daemon::start("");
    let mut sub = Raw::connect(&d.ws_url()).await;
    sub.request(json!({"op":"sub","topic":"chat/+"})).await;
    let mut publisher = Raw::connect(&d.ws_url()).await;
    let r1 = publisher
        .request(json!({"op":"pub","topic":"chat/lobby","event":"message","data":{"text":"hi","n":[1,2.5,null]}}))
        .await;
    let r2 = publisher
        .request(json!({"op":"pub","topic":"chat/lobby"}))
        .await;
    let other = publisher
        .request(json!({"op":"pub","topic":"chat/other","data":1}))
        .await;
    assert_eq!(r1["seq"], 1);
    assert_eq!(r2["seq"], 2);
    assert_eq!(other["seq"], 1, "sequence numbers are per topic");
    let m = sub.recv().await;
    assert_eq!(m["op"], "msg");
    assert_eq!(m["topic"], "chat/lobby");
    assert_eq!(m["event"], "message");
    assert_eq!(m["data"], json!({"text":"hi","n":[1,2.5,null]}));
    assert_eq!(m["seq"], 1);
    assert_eq!(m["from"], Value::String(publisher.client_id.clone()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts = m["ts"].as_u64().unwrap();
    assert!(ts <= now && now - ts < 10_000, "ts {ts} vs now {now}");
    let m2 = sub.recv().await;
    assert_eq!((m2["seq"].as_u64(), &m2["data"]), (Some(2), &Value::Null));
    // Unsubscribe stops delivery.
    assert_eq!(
        sub.request(json!({"op":"unsub","topic":"chat/+"})).await["op"],
        "ok"
    );
    let _ = sub.try_recv(QUIET).await; // the chat/other message may be in flight
    publisher
        .request(json!({"op":"pub","topic":"chat/lobby","data":3}))
        .await;
    assert!(sub.try_recv(QUIET).await.is_none(), "delivery after unsub");
}

#[tokio::test]
async fn order_is_kept_under_concurrent_publishers() {
    let d = Daemon::start("");
    let mut sub = Raw::connect(&d.ws_url()).await;
    sub.request(json!({"op":"sub","topic":"order/test"})).await;
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 500;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let url = d.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(&url).await;
            // Fire without waiting for each ack: the order must hold anyway.
            for i in 0..EACH {
                c.send(json!({"op":"pub","topic":"order/test","data":{"p":p,"i":i}}))
                    .await;
            }
            let last = c.request(json!({"op":"ping"})).await;
            assert_eq!(last["op"], "ok");
            c
        }));
    }
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last_seq = 0;
    for _ in 0..PUBLISHERS * EACH {
        let m = sub.recv().await;
        assert_eq!(m["op"], "msg", "{m}");
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last_seq + 1, "seq has no gap and no reordering");
        last_seq = seq;
        let (p, i) = (
            m["data"]["p"].as_u64().unwrap(),
            m["data"]["i"].as_u64().unwrap(),
        );
        let expected = next.entry(p).or_insert(0);
        assert_eq!(i, *expected, "publisher {p} out of order");
        *expected += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(next.values().all(|n| *n == EACH));
}

#[tokio::test]
async fn one_message_fans_out_to_a_thousand_subscribers() {
    // Every client comes from 127.0.0.1, and 1,000 is the default per-address cap.
    let d = Daemon::start("[http]\nmax_connections_per_ip = 1100\n");
    let mut subs = Vec::new();
    for _ in 0..1000 {
        let mut c = Raw::connect(&d.ws_url()).await;
        c.send(json!({"op":"sub","id":"s","topic":"fan/out"})).await;
        subs.push(c);
    }
    for c in subs.iter_mut() {
        assert_eq!(c.recv().await["op"], "ok");
    }
    assert_eq!(d.healthz().await["subscriptions"], 1000);
    let mut publisher = Raw::connect(&d.ws_url()).await;
    let r = publisher
        .request(json!({"op":"pub","topic":"fan/out","data":"hello all"}))
        .await;
    assert_eq!(r["op"], "ok");
    let results = futures_util::future::join_all(subs.iter_mut().map(|c| async {
        let m = c.recv().await;
        (m["op"] == "msg" && m["data"] == "hello all") as usize
    }))
    .await;
    assert_eq!(results.iter().sum::<usize>(), 1000);
    let health = d.healthz().await;
    assert_eq!(health["delivered"], 1000);
}

#[tokio::test]
async fn direct_messages_to_a_client_and_to_a_user() {
    let d = Daemon::start("");
    let url = d.ws_url();
    let mut alice_phone = Raw::connect(&format!("{url}?user=alice")).await;
    let mut alice_laptop = Raw::connect(&format!("{url}?user=alice")).await;
    let mut bob = Raw::connect(&format!("{url}?user=bob")).await;

    let r = bob
        .request(json!({"op":"send","client":alice_phone.client_id,"event":"poke","data":{"x":1}}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["delivered"].as_u64()),
        (Some("ok"), Some(1)),
        "{r}"
    );
    let dm = alice_phone.recv().await;
    assert_eq!(dm["op"], "dm");
    assert_eq!(dm["from"], Value::String(bob.client_id.clone()));
    assert_eq!(dm["from_user"], "bob");
    assert_eq!(dm["event"], "poke");
    assert_eq!(dm["data"], json!({"x":1}));
    assert!(
        alice_laptop.try_recv(QUIET).await.is_none(),
        "only the named connection"
    );

    let r = bob
        .request(json!({"op":"send","user":"alice","data":"to all of alice"}))
        .await;
    assert_eq!(r["delivered"], 2, "{r}");
    assert_eq!(alice_phone.recv().await["data"], "to all of alice");
    assert_eq!(alice_laptop.recv().await["data"], "to all of alice");

    let r = bob
        .request(json!({"op":"send","user":"nobody","data":1}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("no_recipient"))
    );
    let r = bob
        .request(json!({"op":"send","client":"c-gone","data":1}))
        .await;
    assert_eq!(r["code"], "no_recipient");
    let r = bob.request(json!({"op":"send","data":1})).await;
    assert_eq!(r["code"], "bad_request");
}

#[tokio::test]
async fn presence_joins_leaves_and_display_names() {
    let d = Daemon::start("[presence]\ntopics = [\"room/+\"]\n");
    let url = d.ws_url();
    let mut ann = Raw::connect(&format!("{url}?user=ann")).await;
    assert_eq!(
        ann.request(json!({"op":"info","info":{"name":"Ann"}}))
            .await["op"],
        "ok"
    );
    assert_eq!(
        ann.request(json!({"op":"sub","topic":"room/1"})).await["op"],
        "ok"
    );
    // A dashboard watching every room by wildcard is told, but is not a member.
    let mut dash = Raw::connect(&url).await;
    dash.request(json!({"op":"sub","topic":"room/+"})).await;

    let mut bob = Raw::connect(&format!("{url}?user=bob")).await;
    bob.request(json!({"op":"info","info":{"name":"Bob"}}))
        .await;
    bob.request(json!({"op":"sub","topic":"room/1"})).await;

    for watcher in [&mut ann, &mut dash] {
        let join = watcher.recv().await;
        assert_eq!(join["op"], "join", "{join}");
        assert_eq!(join["topic"], "room/1");
        assert_eq!(join["client"], Value::String(bob.client_id.clone()));
        assert_eq!(join["user"], "bob");
        assert_eq!(join["info"]["name"], "Bob");
    }
    let r = dash
        .request(json!({"op":"presence","topic":"room/1"}))
        .await;
    let mut names: Vec<String> = r["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["info"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["Ann", "Bob"]);

    // Renaming re-announces; leaving announces.
    bob.request(json!({"op":"info","info":{"name":"Robert"}}))
        .await;
    assert_eq!(ann.recv().await["info"]["name"], "Robert");
    drop(bob);
    let leave = ann.recv().await;
    assert_eq!(
        (leave["op"].as_str(), leave["user"].as_str()),
        (Some("leave"), Some("bob")),
        "{leave}"
    );
    let r = ann.request(json!({"op":"presence","topic":"room/1"})).await;
    assert_eq!(r["members"].as_array().unwrap().len(), 1);

    let r = ann.request(json!({"op":"presence","topic":"lobby"})).await;
    assert_eq!(r["code"], "presence_disabled");
    let r = ann
        .request(json!({"op":"info","info":"not an object"}))
        .await;
    assert_eq!(r["code"], "invalid_info");
    let big = "x".repeat(2000);
    let r = ann.request(json!({"op":"info","info":{"name":big}})).await;
    assert_eq!(r["code"], "invalid_info");
}
