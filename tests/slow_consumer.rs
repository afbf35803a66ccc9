//! A subscriber that cannot keep up costs bounded memory and never slows the others.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, Raw};
use serde_json::json;

const MESSAGES: u64 = 100_000;
/// 1 KiB per message: 100k of them queued without a bound would be over 100 MB.
const PAYLOAD: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_while_100k_messages_flow() {
    let d = Daemon::start("[ws]\nslow_consumer = \"drop_oldest\"\noutbound_queue_messages = 1024\noutbound_queue_bytes = 1048576\npublish_rate = 1000000\npublish_burst = 1000000\n");
    let url = d.ws_url();

    // The stalled one subscribes, then never reads again.
    let mut stalled = Raw::connect(&url).await;
    stalled.request(json!({"op":"sub","topic":"flood"})).await;

    let received: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut readers = Vec::new();
    for count in &received {
        let mut c = Raw::connect(&url).await;
        c.request(json!({"op":"sub","topic":"flood"})).await;
        let count = count.clone();
        readers.push(tokio::spawn(async move {
            let mut expected = 0u64;
            while expected < MESSAGES {
                let m = c.recv().await;
                assert_eq!(m["op"], "msg", "a reading subscriber must not lag: {m}");
                assert_eq!(m["data"]["i"], expected, "in order, none missing");
                expected += 1;
                count.store(expected, Ordering::Relaxed);
            }
        }));
    }

    let rss_before = d.rss_kib();
    let mut publisher = Raw::connect(&url).await;
    let pad = "p".repeat(PAYLOAD);
    for i in 0..MESSAGES {
        publisher
            .send(json!({"op":"pub","topic":"flood","data":{"i":i,"pad":pad}}))
            .await;
        if i % 256 == 255 {
            // Pace on the slowest *reading* subscriber only, so they stay within their
            // queue; the stalled one is left behind on purpose.
            while received
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0)
                + 512
                < i
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    for r in readers {
        tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .expect("readers finish")
            .unwrap();
    }
    let rss_after = d.rss_kib();
    let growth_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    eprintln!("daemon RSS: {rss_before} KiB before, {rss_after} KiB after {MESSAGES} x {PAYLOAD} B with a stalled subscriber (+{growth_mib:.1} MiB)");
    // Bounded: the stalled queue is capped at 1 MiB; the rest is allocator slack and
    // socket buffers. Unbounded queueing would add ~100 MiB.
    assert!(growth_mib < 40.0, "daemon grew by {growth_mib:.1} MiB");

    let health = d.healthz().await;
    assert!(health["dropped"].as_u64().unwrap() > 50_000, "{health}");

    // When the stalled client finally reads, it learns it lagged, then gets the newest.
    let mut saw_lagged = false;
    let mut last_i = 0;
    while let Some(f) = stalled.try_recv(Duration::from_millis(500)).await {
        match f["op"].as_str() {
            Some("lagged") => {
                assert!(f["dropped"].as_u64().unwrap() > 0);
                saw_lagged = true;
            }
            Some("msg") => last_i = f["data"]["i"].as_u64().unwrap(),
            _ => {}
        }
    }
    assert!(saw_lagged, "a lagged notice was sent");
    assert_eq!(last_i, MESSAGES - 1, "the newest message is kept");
}

#[tokio::test]
async fn close_policy_disconnects_a_slow_consumer_with_4100() {
    let d = Daemon::start("[ws]\nslow_consumer = \"close\"\noutbound_queue_messages = 64\noutbound_queue_bytes = 65536\npublish_rate = 1000000\npublish_burst = 1000000\n");
    let url = d.ws_url();
    let mut stalled = Raw::connect(&url).await;
    stalled.request(json!({"op":"sub","topic":"flood"})).await;
    let mut fine = Raw::connect(&url).await;
    fine.request(json!({"op":"sub","topic":"other"})).await;
    let mut publisher = Raw::connect(&url).await;
    // Enough to fill the kernel's socket buffers and then the 64 KiB queue.
    publisher.flood("flood", 4000, 4096).await;
    // The daemon drops the connection once its queue passes the limit. A peer that reads
    // nothing cannot be sent the close frame (its socket buffers are full), so only a
    // close frame that does arrive is checked for its code.
    let connections = d.wait_for_connections(2, Duration::from_secs(10)).await;
    assert_eq!(connections, 2, "the slow consumer was disconnected");
    let health = d.healthz().await;
    assert_eq!(health["slow_consumer_closes"], 1, "{health}");
    if let Some(code) = stalled.close_code(Duration::from_secs(10)).await {
        assert_eq!(code, 4100);
    }
    // The other client is unaffected.
    publisher
        .request(json!({"op":"pub","topic":"other","data":"still here"}))
        .await;
    assert_eq!(fine.recv().await["data"], "still here");
}

#[tokio::test]
async fn a_client_that_pipelines_without_reading_is_slowed_then_dropped() {
    use futures_util::SinkExt;
    let d = Daemon::start("[ws]\nheartbeat_interval = \"300ms\"\nheartbeat_misses = 2\n");
    let mut greedy = Raw::connect(&d.ws_url()).await;
    let request = json!({"op":"ping","id":"x","pad":"p".repeat(1000)}).to_string();
    // Send far more requests than the replies the server will buffer, never reading.
    // The server stops reading us, so our own sends eventually block: bound the time.
    let sending = async {
        for _ in 0..200_000 {
            if greedy
                .ws
                .send(tokio_tungstenite::tungstenite::Message::text(
                    request.clone(),
                ))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), sending).await;
    let gone = d.wait_for_connections(0, Duration::from_secs(5)).await == 0;
    assert!(
        gone,
        "a client that reads nothing is dropped like a dead one"
    );
    assert!(
        d.rss_kib() < 64 * 1024,
        "no unbounded buffering: {} KiB",
        d.rss_kib()
    );
}

#[tokio::test]
async fn a_backlog_of_pushes_does_not_stop_the_daemon_hearing_that_client() {
    let d = Daemon::start("[ws]\npublish_rate = 1000000\npublish_burst = 1000000\n");
    let url = d.ws_url();
    let mut watcher = Raw::connect(&url).await;
    watcher.request(json!({"op":"sub","topic":"status"})).await;
    // A subscriber that reads nothing for now: pushes pile up for it.
    let mut slow = Raw::connect(&url).await;
    slow.request(json!({"op":"sub","topic":"flood"})).await;
    let mut publisher = Raw::connect(&url).await;
    publisher.flood("flood", 20_000, 2048).await;
    // Its own requests are still read and acted on at once.
    for n in 0..3 {
        slow.send(json!({"op":"pub","topic":"status","data":n}))
            .await;
        let m = tokio::time::timeout(Duration::from_secs(2), watcher.recv())
            .await
            .expect("the slow subscriber's publish went through");
        assert_eq!(m["data"], n);
    }
    let health = d.healthz().await;
    assert!(health["dropped"].as_u64().unwrap_or(0) > 0, "{health}");
    assert_eq!(health["connections"], 3, "{health}");
}

/// docs/protocol.md, "Memory per connection": what the daemon holds for a subscriber is
/// its unwritten frames, counted in bytes until its socket takes them. With large
/// messages the byte limit (1 MiB by default) is what trips, long before the frame
/// limit (1,024): a subscriber that reads nothing is closed with 4100 and counted,
/// while one that reads, though many times 1 MiB passes through its queue, is never
/// closed (its bytes are released as they are written), and a probe keeps its answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_reads_nothing_is_closed_at_its_byte_limit_and_a_reader_is_not() {
    /// 48 KB a message: 22 of them pass the 1 MiB limit, 1,024 would be 48 MB.
    const BIG: usize = 48_000;
    /// In steps the reader keeps up with, so it never has 1 MiB unread.
    const STEP: u64 = 10;
    let d = Daemon::start("[ws]\nslow_consumer = \"close\"\n");
    let url = d.ws_url();
    let mut stalled = Raw::subscribed(&url, "big").await;
    let mut reader = Raw::subscribed(&url, "big").await;
    let mut probe = Raw::connect(&url).await;
    let mut publisher = Raw::connect(&url).await;
    let mut published = 0u64;
    // The stalled subscriber's socket buffers take a few MB before its queue grows;
    // 600 messages (29 MB) are far more than they and 1 MiB hold, and far fewer than
    // the 1,024 frames of the frame limit.
    while d.healthz().await["connections"] == 4 {
        assert!(published < 600, "not closed after {published} messages");
        publisher
            .flood_from("big", published, published + STEP, BIG)
            .await;
        for i in published..published + STEP {
            assert_eq!(reader.next_msg().await["data"]["i"], i);
        }
        published += STEP;
        let pong = probe.request(json!({"op":"ping"})).await;
        assert_eq!(pong["op"], "ok", "{pong}");
    }
    eprintln!("the non-reader was closed after {published} messages of {BIG} bytes");
    let health = d.healthz().await;
    assert_eq!(health["slow_consumer_closes"], 1, "{health}");
    assert_eq!(
        health["connections"], 3,
        "the reader is still there: {health}"
    );
    let metrics = d.metrics_text().await;
    assert!(
        metrics.contains("switchboard_ws_closes_total{reason=\"slow_consumer\"} 1"),
        "{metrics}"
    );
    // The reader goes on receiving, the probe answering.
    publisher
        .flood_from("big", published, published + 50, BIG)
        .await;
    for i in published..published + 50 {
        assert_eq!(reader.next_msg().await["data"]["i"], i);
    }
    let pong = probe.request(json!({"op":"ping"})).await;
    assert_eq!(pong["op"], "ok", "{pong}");
    // A non-reader cannot be sent the close frame when its buffers are full; one that
    // arrives says 4100.
    if let Some(code) = stalled.close_code(Duration::from_secs(5)).await {
        assert_eq!(code, 4100);
    }
}
