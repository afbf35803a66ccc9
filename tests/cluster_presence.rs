//! Clients across boxes (`[cluster]`, docs/cluster.md "Clients across boxes"): the
//! boxes' heartbeats, presence, direct messages and the `/api/v1` listings, with real
//! daemons sharing a real `redis-server`. One per test, not one per file: a static one
//! would outlive the test binary (statics are never dropped), and one starts in
//! milliseconds.

mod common;

use std::time::{Duration, Instant};

use common::creds::{user_token, Secrets, ADMIN};
use common::http::{api, get, subscribed_as};
use common::redis::{node_with, Redis};
use common::{Daemon, Raw};
use serde_json::{json, Value};

/// A box's heartbeat TTL in these tests: short, so a killed box is gone quickly.
const TTL: &str = "900ms";

/// A box named `name` with a short heartbeat, presence on `room/+` and the tests'
/// credentials (an admin token, JWTs for users).
fn box_named(redis: &Redis, secrets: &Secrets, name: &str) -> Daemon {
    node_with(
        &redis.url(),
        name,
        &format!("node_ttl = \"{TTL}\"\n{}", secrets.config("")),
    )
}

/// A Redis and two boxes on it, `<prefix>-a` and `<prefix>-b`; `None` without
/// redis-server (tests/cluster.rs's rule, CLUSTER_TOOLS).
fn two_boxes(prefix: &str) -> Option<(Redis, Secrets, Daemon, Daemon)> {
    let redis = Redis::start(false)?;
    let secrets = Secrets::new();
    let a = box_named(&redis, &secrets, &format!("{prefix}-a"));
    let b = box_named(&redis, &secrets, &format!("{prefix}-b"));
    Some((redis, secrets, a, b))
}

/// Polls `f` until it returns `Some`, for at most `secs`.
async fn until<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node ids `d` lists as live, among those starting with `prefix`.
async fn live(d: &Daemon, prefix: &str) -> Vec<String> {
    let (status, v) = get(&api(d, "/cluster/nodes"), Some(ADMIN)).await;
    assert_eq!(status.as_u16(), 200, "{v}");
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn boxes_see_each_other_by_heartbeat_and_a_killed_box_drops_out() {
    let Some((_redis, secrets, a, b)) = two_boxes("hb") else {
        return;
    };

    // Both listed on both, with what each says about itself; nothing was published,
    // so this comes from the heartbeats alone.
    until(5, "both boxes listed on a", || async {
        (live(&a, "hb-").await == ["hb-a", "hb-b"]).then_some(())
    })
    .await;
    let (_, v) = get(&api(&b, "/cluster/nodes"), Some(ADMIN)).await;
    assert_eq!(v["node"], "hb-b", "{v}");
    let listed_b = until(5, "b's HTTP address in its heartbeat", || async {
        let (_, v) = get(&api(&a, "/cluster/nodes"), Some(ADMIN)).await;
        let n = v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == "hb-b")?
            .clone();
        (n["http"] == b.http.to_string()).then_some(n)
    })
    .await;
    assert_eq!(listed_b["version"], env!("CARGO_PKG_VERSION"), "{listed_b}");
    assert!(
        listed_b["started_at"].as_u64().unwrap_or(0) > 0,
        "{listed_b}"
    );
    let (_, info) = get(&api(&a, "/info"), Some(ADMIN)).await;
    assert!(info["cluster"]["nodes_seen"].as_u64() >= Some(2), "{info}");

    // SIGKILL: b cannot say goodbye; its heartbeat expires within the TTL.
    let killed = Instant::now();
    drop(b);
    until(5, "b gone from a's list", || async {
        (live(&a, "hb-").await == ["hb-a"]).then_some(())
    })
    .await;
    println!(
        "killed box gone from the list after {:?} (node_ttl {TTL})",
        killed.elapsed()
    );

    // Off: no cluster, 404.
    let single = Daemon::start(&secrets.config(""));
    let (status, v) = get(&api(&single, "/cluster/nodes"), Some(ADMIN)).await;
    assert_eq!(status.as_u16(), 404, "{v}");
}

/// The next `join` or `leave` on `ws`, skipping anything else.
async fn next_presence(ws: &mut Raw, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = ws.try_recv(left).await.expect("a join or leave in time");
        if f["op"] == "join" || f["op"] == "leave" {
            return f;
        }
    }
}

/// The users `d` lists as present on `topic`, sorted.
async fn present(d: &Daemon, topic: &str) -> Vec<String> {
    let path = format!("/presence?topic={topic}");
    listed(d, &path, "members")
        .await
        .into_iter()
        .map(|(u, _)| u)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_spans_boxes_and_a_killed_box_members_leave_after_the_ttl() {
    let Some((_redis, _secrets, a, b)) = two_boxes("pr") else {
        return;
    };
    let grants = json!({"subscribe": ["room/#"], "publish": ["room/#"]});
    let token = |user: &str| user_token(user, grants.clone());
    let mut alice = subscribed_as(&a, &token("alice"), "room/1").await;
    // b's view of a takes one heartbeat; joins made before it still arrive.
    until(5, "a listed on b", || async {
        (live(&b, "pr-").await == ["pr-a", "pr-b"]).then_some(())
    })
    .await;

    // Bob on b: alice on a is told, with his user and info, and both boxes list both.
    let mut bob = Raw::connect(&format!("{}?token={}", b.ws_url(), token("bob"))).await;
    let ok = bob
        .request(json!({"op":"info","info":{"name":"Bob"}}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let ok = bob.request(json!({"op":"sub","topic":"room/1"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let join = next_presence(&mut alice, 5).await;
    assert_eq!(join["op"], "join", "{join}");
    assert_eq!(join["user"], "bob", "{join}");
    assert_eq!(join["client"], bob.client_id.as_str(), "{join}");
    assert_eq!(join["info"], json!({"name":"Bob"}), "{join}");
    assert_eq!(present(&a, "room/1").await, ["alice", "bob"]);
    until(5, "alice listed on b", || async {
        (present(&b, "room/1").await == ["alice", "bob"]).then_some(())
    })
    .await;

    // Carol comes and goes on b: a join, then a leave, in that order.
    let mut carol = subscribed_as(&b, &token("carol"), "room/1").await;
    let ok = carol.request(json!({"op":"unsub","topic":"room/1"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let (first, second) = (
        next_presence(&mut alice, 5).await,
        next_presence(&mut alice, 5).await,
    );
    assert_eq!(
        (&first["op"], &first["user"]),
        (&json!("join"), &json!("carol"))
    );
    assert_eq!(
        (&second["op"], &second["user"]),
        (&json!("leave"), &json!("carol"))
    );

    // b killed: bob cannot leave on his own; a tells alice within the TTL.
    let killed = Instant::now();
    drop(b);
    let leave = next_presence(&mut alice, 5).await;
    assert_eq!(
        (&leave["op"], &leave["user"]),
        (&json!("leave"), &json!("bob")),
        "{leave}"
    );
    println!(
        "a killed box's member left after {:?} (node_ttl {TTL})",
        killed.elapsed()
    );
    assert_eq!(present(&a, "room/1").await, ["alice"]);
}

/// Sends a direct message and checks the reply: `ok`, `delivered` connections here.
async fn sent(ws: &mut Raw, request: Value, delivered: u64) {
    let ok = ws.request(request).await;
    assert_eq!(
        (&ok["op"], &ok["delivered"]),
        (&json!("ok"), &json!(delivered)),
        "{ok}"
    );
}

/// The next `dm` on `ws`, skipping anything else.
async fn next_dm(ws: &mut Raw) -> Value {
    loop {
        let f = ws.recv().await;
        if f["op"] == "dm" {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_messages_reach_clients_and_users_on_other_boxes() {
    let Some((_redis, _secrets, a, b)) = two_boxes("dm") else {
        return;
    };
    let connect = |d: &Daemon, user: &str, send: Value| {
        let url = format!(
            "{}?token={}",
            d.ws_url(),
            user_token(user, json!({"send": send}))
        );
        async move { Raw::connect(&url).await }
    };
    let mut alice = connect(&a, "alice", json!(["*"])).await;
    let mut bob = connect(&b, "bob", json!([])).await;
    // Carol may write to alice only.
    let mut carol = connect(&a, "carol", json!(["alice"])).await;

    // To a user on another box: this box has no connection of bob's, so 0 here and
    // no `no_recipient`: the message went to the cluster.
    sent(
        &mut alice,
        json!({"op":"send","user":"bob","event":"hello","data":{"n":1}}),
        0,
    )
    .await;
    let dm = next_dm(&mut bob).await;
    assert_eq!(dm["data"], json!({"n":1}), "{dm}");
    assert_eq!(dm["event"], "hello", "{dm}");
    assert_eq!(dm["from"], alice.client_id.as_str(), "{dm}");
    assert_eq!(dm["from_user"], "alice", "{dm}");

    // Carol's grant travels with her message: bob's box refuses it to bob, and the
    // next message bob gets is alice's second one, sent after.
    let ok = carol
        .request(json!({"op":"send","client": bob.client_id, "data":"not for bob"}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    sent(
        &mut alice,
        json!({"op":"send","client": bob.client_id, "data":{"n":2}}),
        0,
    )
    .await;
    let dm = next_dm(&mut bob).await;
    assert_eq!(dm["data"], json!({"n":2}), "{dm}");

    // The other way, and to a client of the same box: delivered there, counted.
    let ok = bob
        .request(json!({"op":"send","user":"alice","data":{"n":3}}))
        .await;
    assert_eq!(ok["code"], "forbidden", "bob may send to nobody: {ok}");
    sent(
        &mut carol,
        json!({"op":"send","client": alice.client_id, "data":{"n":4}}),
        1,
    )
    .await;
    assert_eq!(next_dm(&mut alice).await["data"], json!({"n":4}));
}

/// `(user, node)` of what `d` lists at `path` under `key`, sorted.
async fn listed(d: &Daemon, path: &str, key: &str) -> Vec<(String, Value)> {
    let (status, v) = get(&api(d, path), Some(ADMIN)).await;
    assert_eq!(status.as_u16(), 200, "{v}");
    let mut all: Vec<(String, Value)> = v[key]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|m| Some((m["user"].as_str()?.to_owned(), m["node"].clone())))
        .collect();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_say_which_box_and_presence_aggregates() {
    let Some((_redis, secrets, a, b)) = two_boxes("ls") else {
        return;
    };
    let token = |user: &str| user_token(user, json!({"subscribe": ["room/#"]}));
    let _alice = subscribed_as(&a, &token("alice"), "room/1").await;
    let _bob = subscribed_as(&b, &token("bob"), "room/1").await;

    // Clients: each box its own, saying so.
    assert_eq!(
        listed(&a, "/clients", "clients").await,
        [("alice".into(), json!("ls-a"))]
    );
    assert_eq!(
        listed(&b, "/clients", "clients").await,
        [("bob".into(), json!("ls-b"))]
    );
    // Presence: every box's members, each with its box.
    let both = vec![
        ("alice".to_owned(), json!("ls-a")),
        ("bob".to_owned(), json!("ls-b")),
    ];
    for d in [&a, &b] {
        until(5, "both members listed", || async {
            (listed(d, "/presence?topic=room/1", "members").await == both).then_some(())
        })
        .await;
    }

    // One box, no `[cluster]`: the listings as they always were, no `node`.
    let single = Daemon::start(&secrets.config(""));
    let _carol = subscribed_as(&single, &token("carol"), "room/1").await;
    let no_node = vec![("carol".to_owned(), Value::Null)];
    assert_eq!(listed(&single, "/clients", "clients").await, no_node);
    assert_eq!(
        listed(&single, "/presence?topic=room/1", "members").await,
        no_node
    );
}
