//! Cluster tests' client steps (`tests/cluster*.rs`); the Redis and the boxes are in
//! `redis.rs`.

use std::time::Duration;

use serde_json::json;

use super::{Daemon, Raw};

/// A WebSocket publish on `d`, acknowledged; its seq.
pub async fn pub_one(ws: &mut Raw, topic: &str, n: u64) -> u64 {
    let r = ws
        .request(json!({"op":"pub","topic":topic,"data":{"n":n}}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    r["seq"].as_u64().expect("seq")
}

/// Subscribes `topic` on `d` once its first message reached `d`; the client and its
/// position (epoch, seq).
pub async fn positioned(d: &Daemon, topic: &str) -> (Raw, String, u64) {
    let mut c = Raw::connect(&d.ws_url()).await;
    for _ in 0..250 {
        let ok = c.request(json!({"op":"sub","topic":topic})).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        let seq = ok["seq"].as_u64().expect("seq");
        if seq > 0 {
            return (c, ok["epoch"].as_str().expect("epoch").to_owned(), seq);
        }
        c.request(json!({"op":"unsub","topic":topic})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{topic} never reached the box");
}

/// Resumes `topic` from a position older than what it keeps: told so
/// (`recovered: false`), given what is left (`kept`, by `n`), at position `last`.
pub async fn resume_beyond_keep(
    c: &mut Raw,
    topic: &str,
    since: u64,
    epoch: &str,
    kept: std::ops::RangeInclusive<u64>,
    last: u64,
) {
    let ok = c
        .request(json!({"op":"sub","topic":topic,"since":since,"epoch":epoch}))
        .await;
    assert_eq!(
        (&ok["recovered"], &ok["history"], &ok["seq"]),
        (&json!(false), &json!(kept.clone().count()), &json!(last)),
        "{ok}"
    );
    for n in kept {
        assert_eq!(c.next_msg().await["data"]["n"], n);
    }
}
