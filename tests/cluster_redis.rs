//! The cluster bus on a Redis Cluster (`redis_cluster` seeds, docs/cluster.md): three
//! real `redis-server` primaries joined by `redis-cli --cluster create`, two real
//! daemons given one seed each. Every key of a partition shares one hash tag, so each
//! publish script and each bus read lands on one slot; partitions spread over the nodes.

mod common;

use std::collections::BTreeMap;

use common::redis::{node_with, RedisCluster};
use common::{Daemon, Raw};
use serde_json::json;

/// A box given one seed of the Redis Cluster (`redis_cluster` wins over `redis`).
fn node(seed: &str, name: &str) -> Daemon {
    node_with(seed, name, &format!("redis_cluster = [\"{seed}\"]"))
}

const TOPICS: u64 = 12;

/// Message `n` on every topic, half of them published on each box; each acknowledged
/// with the topic's next number.
async fn round(pa: &mut Raw, pb: &mut Raw, n: u64) {
    for t in 0..TOPICS {
        let p = if t % 2 == 0 { &mut *pa } else { &mut *pb };
        let r = p
            .request(json!({"op":"pub","topic":format!("h/rc/{t}"),"data":{"n":n}}))
            .await;
        assert_eq!(
            (r["op"].as_str(), r["seq"].as_u64()),
            (Some("ok"), Some(n)),
            "{r}"
        );
    }
}

/// Every message once, each topic numbered `from`, `from + 1`, … in publish order.
async fn received(sub: &mut Raw, from: u64, to: u64) {
    let mut seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for _ in 0..TOPICS * (to - from + 1) {
        let m = sub.next_msg().await;
        seen.entry(m["topic"].as_str().expect("topic").to_owned())
            .or_default()
            .push((
                m["seq"].as_u64().expect("seq"),
                m["data"]["n"].as_u64().expect("n"),
            ));
    }
    assert_eq!(seen.len() as u64, TOPICS);
    for (topic, got) in &seen {
        let want: Vec<(u64, u64)> = (from..=to).map(|n| (n, n)).collect();
        assert_eq!(got, &want, "{topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boxes_share_one_order_through_a_redis_cluster_and_its_failover() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    let seeds = cluster.seeds();
    let a = node(&seeds[0], "a");
    let b = node(&seeds[1], "b");
    let mut on_a = Raw::subscribed(&a.ws_url(), "h/rc/#").await;
    let mut on_b = Raw::subscribed(&b.ws_url(), "h/rc/#").await;
    let mut pa = Raw::connect(&a.ws_url()).await;
    let mut pb = Raw::connect(&b.ws_url()).await;
    for n in 1..=5 {
        round(&mut pa, &mut pb, n).await;
    }
    received(&mut on_a, 1, 5).await;
    received(&mut on_b, 1, 5).await;
    // The partitions really are spread: more than one node holds bus streams.
    let holding = cluster
        .nodes
        .iter()
        .filter(|r| !r.cmd(&["DBSIZE"]).starts_with(":0"))
        .count();
    assert!(holding >= 2, "only {holding} node(s) hold data");

    // A replica of the first node takes over (CLUSTER FAILOVER): the boxes follow
    // MOVED to the new primary, readers reconnect and resume; nothing lost or repeated.
    assert!(!cluster.nodes[0].cmd(&["DBSIZE"]).starts_with(":0"));
    let replica = cluster.add_replica(0);
    round(&mut pa, &mut pb, 6).await;
    cluster.failover(replica);
    for n in 7..=10 {
        round(&mut pa, &mut pb, n).await;
    }
    received(&mut on_a, 6, 10).await;
    received(&mut on_b, 6, 10).await;
}
