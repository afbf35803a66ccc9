//! Publishes wait for Redis without holding a thread each (`Hub::publish_async`,
//! `Hub::publish_deferred`; docs/cluster.md): a real `redis-server` stalled with
//! SIGSTOP while many HTTP and WebSocket publishes wait on it; the daemon's thread
//! count (from /proc) stays bounded.

mod common;

use common::redis::{node, Redis};
use common::{http, Raw};

/// The daemon's threads, from /proc (Linux).
fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_waiting_on_a_stalled_redis_hold_no_thread_each() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let a = node(&redis.url(), "a");
    let Some(before) = threads(a.pid()) else {
        eprintln!("skipped: no /proc");
        return;
    };
    let url = http::api(&a, "/publish");
    let (status, _) = http::post(&url, None, r#"{"topic":"t","data":0}"#).await;
    assert_eq!(status, 200);
    let mut sockets = Vec::new();
    for _ in 0..50 {
        sockets.push(Raw::connect(&a.ws_url()).await);
    }
    // 100 publishes (50 HTTP, 50 WebSocket) wait on a Redis that does not answer
    // (command_timeout 500 ms); each is refused in the end.
    redis.signal("STOP");
    let mut waiting: Vec<_> = (0..50)
        .map(|n| {
            let url = url.clone();
            tokio::spawn(async move {
                let status = http::post(&url, None, &format!(r#"{{"topic":"t","data":{n}}}"#))
                    .await
                    .0;
                status == 503
            })
        })
        .collect();
    for mut ws in sockets {
        waiting.push(tokio::spawn(async move {
            let r = ws
                .request(serde_json::json!({"op":"pub","topic":"t","data":0}))
                .await;
            r["op"] == "error"
        }));
    }
    let mut most = before;
    while !waiting.iter().all(|w| w.is_finished()) {
        most = most.max(threads(a.pid()).unwrap_or(0));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for w in waiting {
        assert!(w.await.expect("publisher"), "a publish was not refused");
    }
    println!("threads: {before} before, at most {most} while 100 publishes waited");
    // Redis answers again: so do publishes (once the writer has reconnected).
    redis.signal("CONT");
    let mut status = 0;
    for _ in 0..250 {
        status = http::post(&url, None, r#"{"topic":"t","data":1}"#)
            .await
            .0
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    // A WebSocket publish waiting for Redis keeps replies in request order: the
    // request sent right after it is not answered before it.
    let mut ws = Raw::connect(&a.ws_url()).await;
    redis.signal("STOP");
    ws.send(serde_json::json!({"op":"pub","topic":"t","data":2,"id":"p"}))
        .await;
    ws.send(serde_json::json!({"op":"sub","topic":"u","id":"q"}))
        .await;
    let early = ws.try_recv(std::time::Duration::from_millis(150)).await;
    redis.signal("CONT");
    assert!(
        early.is_none(),
        "answered while the publish waited: {early:?}"
    );
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let f = ws.recv().await;
        if f.get("id").is_some() {
            assert_eq!(f["op"], "ok", "{f}");
            ids.push(f["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(ids, ["p", "q"]);
    assert!(
        most < before + 20,
        "threads grew from {before} to {most} while publishes waited"
    );
}
