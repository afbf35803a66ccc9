//! A publish Redis took whose answer was lost is not appended twice when the box sends
//! it again (docs/cluster.md, "Idempotent retries"): real `redis-server`, a relay that
//! throws Redis's answers away, two real daemons, a device publishing with mosquitto_pub.

mod common;

use std::time::Duration;

use common::redis::{node, Redis, Relay};
use common::Raw;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publish_whose_answer_was_lost_is_appended_once() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let relay = Relay::start(redis.port).await;
    let a = node(&format!("redis://127.0.0.1:{}", relay.port), "a");
    let b = node(&redis.url(), "b");
    let mut sub = Raw::subscribed(&b.ws_url(), "d/1").await;
    // A device on box a, connected (its online notice on the bus) before the fault.
    let port = a.mqtt.expect("mqtt listener").port();
    let mut device = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
        .args(["-t", "d/1", "-i", "dev"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut lines = device.stdin.take().expect("stdin");
    // Box a's writer has its connection and the device's online notice is taken.
    let mut ws = Raw::connect(&a.ws_url()).await;
    let ok = ws
        .request(serde_json::json!({"op":"pub","topic":"warm","data":0}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    for _ in 0..250 {
        if a.metric("switchboard_cluster_published_total").await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.metric("switchboard_cluster_published_total").await, 2);
    // Redis runs box a's script for the device's publish; the answer never comes back.
    relay.deafen();
    lines.write_all(b"{\"n\":1}\n").await.expect("write");
    let first = sub.next_msg().await;
    assert_eq!(
        (first["seq"].as_u64(), first["data"]["n"].as_u64()),
        (Some(1), Some(1))
    );
    // Box a gave up waiting and keeps the device's publish for later.
    for _ in 0..250 {
        if a.metric("switchboard_cluster_outbox").await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.metric("switchboard_cluster_outbox").await, 1);
    // Redis answers again: the kept publish is sent again, and not appended again.
    relay.mend();
    for _ in 0..250 {
        if a.metric("switchboard_cluster_outbox").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.metric("switchboard_cluster_outbox").await, 0);
    lines.write_all(b"{\"n\":2}\n").await.expect("write");
    let next = sub.next_msg().await;
    assert_eq!(
        (next["seq"].as_u64(), next["data"]["n"].as_u64()),
        (Some(2), Some(2)),
        "the first publish came again: {next}"
    );
    drop(lines);
    assert!(device.wait().await.expect("mosquitto_pub").success());
}
