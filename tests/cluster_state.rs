//! What several boxes share beyond messages (`[cluster]`, docs/cluster.md, "Per box and
//! cluster-wide"): retained values, device online/offline notices and the topics
//! listing. One `redis-server` for the file (one test, its steps in order), real
//! daemons, real clients over WebSocket, HTTP and MQTT (mosquitto_pub/mosquitto_sub).

mod common;

use std::time::Duration;

use common::redis::{node, node_with, Redis};
use common::{http, mosquitto_pub, Daemon, MosquittoSub, Raw};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

/// The retained values a new WebSocket subscription to `filter` gets, by topic, once
/// it has `n` of them (they arrive first, before anything live).
async fn retained_on(d: &Daemon, filter: &str, n: usize) -> Vec<Value> {
    let mut c = Raw::subscribed(&d.ws_url(), filter).await;
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(WAIT, c.next_msg())
            .await
            .unwrap_or_else(|_| panic!("{filter}: {} retained of {n}: {got:?}", got.len()));
        assert_eq!(m["retained"], true, "{m}");
        got.push(m);
    }
    assert!(
        c.try_recv(Duration::from_millis(200)).await.is_none(),
        "{filter}: more than {n} retained values"
    );
    got.sort_by_key(|m| m["topic"].as_str().unwrap_or_default().to_owned());
    got
}

/// Waits until `topic`'s retained value on `d` satisfies `pred` (it arrives from the bus).
async fn until_retained(d: &Daemon, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..250 {
        let mut c = Raw::subscribed(&d.ws_url(), topic).await;
        if let Some(m) = c.try_recv(Duration::from_millis(100)).await {
            if m["retained"] == true && pred(&m) {
                return m;
            }
        }
    }
    panic!("{topic}: the expected retained value never reached the box");
}

async fn ws_retain(ws: &mut Raw, topic: &str, data: Value) -> u64 {
    let r = ws
        .request(json!({"op":"pub","topic":topic,"data":data,"retain":true}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    r["seq"].as_u64().expect("seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_shared_by_boxes_started_later() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let a = node(&redis.url(), "box-a");
    let a_mqtt = a.mqtt.expect("mqtt listener").port();

    // Retained on box A from every way in: WebSocket (twice: the later wins), HTTP,
    // an MQTT device's retain flag; and one set then cleared by an empty retained value.
    let mut ws = Raw::connect(&a.ws_url()).await;
    ws_retain(&mut ws, "r/ws", json!("one")).await;
    let ws_seq = ws_retain(&mut ws, "r/ws", json!("two")).await;
    let (status, v) = http::post(
        &http::api(&a, "/publish"),
        None,
        &json!({"topic":"r/http","data":{"v":1},"retain":true}).to_string(),
    )
    .await;
    assert!(status.is_success(), "{status} {v}");
    ws_retain(&mut ws, "r/gone", json!("soon")).await;
    ws_retain(&mut ws, "r/gone", json!("")).await;
    assert!(
        mosquitto_pub(
            a_mqtt,
            &["-i", "pub-a", "-t", "r/mqtt", "-m", "hot", "-r", "-q", "1"]
        )
        .await
    );
    // A device's publish is not waited for: it is on the bus once box A read it back.
    until_retained(&a, "r/mqtt", |m| m["data"] == "hot").await;

    // A device that stays connected to box A, and one that came and went.
    let device = MosquittoSub::start(a_mqtt, &["-i", "dev-a", "-t", "cmd/dev-a"]).await;
    until_retained(&a, "$devices/dev-a", |m| m["data"]["online"] == true).await;
    assert!(mosquitto_pub(a_mqtt, &["-i", "dev-gone", "-t", "x", "-m", "1"]).await);
    until_retained(&a, "$devices/dev-gone", |m| m["data"]["online"] == false).await;

    // Box B starts now: a new subscriber there gets the current retained values, under
    // the numbers box A's publishers were given, and not the cleared one.
    let mut b = node(&redis.url(), "box-b");
    let got = retained_on(&b, "r/+", 3).await;
    let summary: Vec<(&str, &Value)> = got
        .iter()
        .map(|m| (m["topic"].as_str().unwrap_or_default(), &m["data"]))
        .collect();
    assert_eq!(
        summary,
        [
            ("r/http", &json!({"v":1})),
            ("r/mqtt", &json!("hot")),
            ("r/ws", &json!("two"))
        ],
        "{got:?}"
    );
    assert_eq!(got[2]["seq"].as_u64(), Some(ws_seq), "{got:?}");
    // MQTT subscribers on box B too, as the device sent it / as the payload rule makes it.
    let b_mqtt = b.mqtt.expect("mqtt listener").port();
    let mut sub = MosquittoSub::start(b_mqtt, &["-i", "sub-b", "-t", "r/#"]).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (t, p) = sub.message(WAIT).await.expect("retained value over MQTT");
        seen.push((t, String::from_utf8_lossy(&p).into_owned()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("r/http".to_owned(), "{\"v\":1}".to_owned()),
            ("r/mqtt".to_owned(), "hot".to_owned()),
            ("r/ws".to_owned(), "two".to_owned())
        ]
    );
    drop(sub);

    // Device notices: box B knows the device on box A is online, and the other is not.
    let on = retained_on(&b, "$devices/dev-a", 1).await;
    assert_eq!(on[0]["data"]["online"], true, "{on:?}");
    let off = retained_on(&b, "$devices/dev-gone", 1).await;
    assert_eq!(off[0]["data"]["online"], false, "{off:?}");

    // A value changed and one cleared on box B; box B restarted loads them again, and
    // box A, which took them from the bus, agrees.
    let mut wb = Raw::connect(&b.ws_url()).await;
    ws_retain(&mut wb, "r/ws", json!("three")).await;
    ws_retain(&mut wb, "r/http", json!("")).await;
    drop(device);
    until_retained(&a, "$devices/dev-a", |m| m["data"]["online"] == false).await;
    until_retained(&a, "r/ws", |m| m["data"] == "three").await;
    b.restart();
    let got = retained_on(&b, "r/+", 2).await;
    assert_eq!(
        (got[0]["topic"].clone(), got[1]["data"].clone()),
        (json!("r/mqtt"), json!("three")),
        "{got:?}"
    );
    let notices = retained_on(&b, "$devices/dev-a", 1).await;
    assert_eq!(notices[0]["data"]["online"], false, "{notices:?}");
    let on_a = retained_on(&a, "r/+", 2).await;
    assert_eq!(on_a[1]["data"], "three", "{on_a:?}");

    // The topics listing: each box counts its own subscribers and says which box it is.
    let _sub = Raw::subscribed(&b.ws_url(), "listing/+").await;
    let (status, on_b) = http::get(&http::api(&b, "/topics?prefix=listing"), None).await;
    assert!(status.is_success(), "{status} {on_b}");
    assert_eq!(
        on_b,
        json!({"node":"box-b","topics":[{"filter":"listing/+","subscribers":1}],"next":null})
    );
    let (_, on_a) = http::get(&http::api(&a, "/topics?prefix=listing"), None).await;
    assert_eq!(on_a, json!({"node":"box-a","topics":[],"next":null}));

    // Offline notices a box forgets past `mqtt.offline_notices` leave Redis too (the
    // bound one box keeps holds for Redis), unless a newer notice replaced them.
    let c = node_with(&redis.url(), "box-c", "\n[mqtt]\noffline_notices = 1\n");
    let c_mqtt = c.mqtt.expect("mqtt listener").port();
    let in_redis = |id: &str| {
        (0..4).any(|p| {
            redis
                .cmd(&[
                    "HEXISTS",
                    &format!("sb:{{p{p}}}:retained"),
                    &format!("$devices/{id}"),
                ])
                .contains(":1")
        })
    };
    assert!(mosquitto_pub(c_mqtt, &["-i", "old-1", "-t", "x", "-m", "1"]).await);
    until_retained(&c, "$devices/old-1", |m| m["data"]["online"] == false).await;
    assert!(in_redis("old-1"));
    assert!(mosquitto_pub(c_mqtt, &["-i", "old-2", "-t", "x", "-m", "1"]).await);
    until_retained(&c, "$devices/old-2", |m| m["data"]["online"] == false).await;
    for _ in 0..250 {
        if !in_redis("old-1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!in_redis("old-1"), "the forgotten notice is still in Redis");
    assert!(in_redis("old-2"));
}
