//! Whatever a client sends, it gets a clear answer; the connection survives whatever
//! is recoverable, and no other client notices.

mod common;

use std::time::Duration;

use common::{Daemon, Raw};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The connection still works: a ping is answered.
async fn still_alive(c: &mut Raw) {
    let r = c.request(json!({"op":"ping"})).await;
    assert_eq!(r["op"], "ok", "{r}");
}

#[tokio::test]
async fn recoverable_mistakes_get_errors_and_the_connection_stays() {
    let d = Daemon::start("[ws]\nmax_subscriptions = 3\n");
    let mut bystander = Raw::connect(&d.ws_url()).await;
    bystander.request(json!({"op":"sub","topic":"ok/#"})).await;
    let mut c = Raw::connect(&d.ws_url()).await;

    // (frame, expected code, whether the id is echoed)
    let cases: Vec<(String, &str, bool)> = vec![
        ("this is not json".into(), "bad_json", false),
        (
            "{\"op\":\"sub\",\"id\":\"1\",\"topic\":".into(),
            "bad_json",
            false,
        ),
        ("[1,2,3]".into(), "bad_request", false),
        ("42".into(), "bad_request", false),
        (
            json!({"id":"1","topic":"a"}).to_string(),
            "bad_request",
            true,
        ),
        (
            json!({"op":"dance","id":"1"}).to_string(),
            "unknown_op",
            true,
        ),
        (json!({"op":7,"id":"1"}).to_string(), "bad_request", true),
        (
            json!({"op":"sub","id":"1"}).to_string(),
            "bad_request",
            true,
        ),
        (
            json!({"op":"sub","id":"1","topic":5}).to_string(),
            "bad_request",
            true,
        ),
        (
            json!({"op":"pub","id":"1","topic":["a"]}).to_string(),
            "bad_request",
            true,
        ),
        (
            json!({"op":"pub","id":"1","topic":"a","event":3}).to_string(),
            "bad_request",
            true,
        ),
        (
            json!({"op":"sub","id":"1","topic":""}).to_string(),
            "invalid_topic",
            true,
        ),
        (
            json!({"op":"sub","id":"1","topic":"a/#/b"}).to_string(),
            "invalid_topic",
            true,
        ),
        (
            json!({"op":"sub","id":"1","topic":"a/b+"}).to_string(),
            "invalid_topic",
            true,
        ),
        (
            json!({"op":"pub","id":"1","topic":"a/+","data":1}).to_string(),
            "invalid_topic",
            true,
        ),
        (
            json!({"op":"pub","id":"1","topic":"a/#","data":1}).to_string(),
            "invalid_topic",
            true,
        ),
        (
            json!({"op":"pub","id":"1","topic":"x".repeat(2000)}).to_string(),
            "invalid_topic",
            true,
        ),
        (
            json!({"op":"pub","id":"1","topic":"a\u{0}b"}).to_string(),
            "invalid_topic",
            true,
        ),
        (
            json!({"op":"unsub","id":"1","topic":"never/subscribed"}).to_string(),
            "not_subscribed",
            true,
        ),
        (
            json!({"op":"send","id":"1","client":"a","user":"b"}).to_string(),
            "bad_request",
            true,
        ),
        (
            json!({"op":"info","id":"1"}).to_string(),
            "bad_request",
            true,
        ),
    ];
    for (frame, code, echoes_id) in &cases {
        c.send_text(frame).await;
        let reply = c.recv().await;
        assert_eq!(reply["op"], "error", "{frame} -> {reply}");
        assert_eq!(reply["code"], *code, "{frame} -> {reply}");
        assert!(
            !reply["message"].as_str().unwrap_or("").is_empty(),
            "{reply}"
        );
        if *echoes_id {
            assert_eq!(reply["id"], "1", "{frame} -> {reply}");
        }
        still_alive(&mut c).await;
    }

    // Binary frames are answered, not fatal.
    c.ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    let reply = c.recv().await;
    assert_eq!(reply["code"], "binary_unsupported", "{reply}");
    still_alive(&mut c).await;

    // Too many subscriptions.
    for t in ["a", "b", "c"] {
        assert_eq!(c.request(json!({"op":"sub","topic":t})).await["op"], "ok");
    }
    let r = c.request(json!({"op":"sub","topic":"d"})).await;
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
    // …and freeing one makes room again.
    assert_eq!(
        c.request(json!({"op":"unsub","topic":"a"})).await["op"],
        "ok"
    );
    assert_eq!(c.request(json!({"op":"sub","topic":"d"})).await["op"], "ok");

    // The bystander saw none of it and still gets its messages.
    assert!(bystander
        .try_recv(Duration::from_millis(200))
        .await
        .is_none());
    c.request(json!({"op":"pub","topic":"ok/1","data":"fine"}))
        .await;
    assert_eq!(bystander.recv().await["data"], "fine");
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_others_are_untouched() {
    let d = Daemon::start("[ws]\nmax_message_size = 4096\n");
    let mut bystander = Raw::connect(&d.ws_url()).await;
    bystander.request(json!({"op":"sub","topic":"t"})).await;
    let mut c = Raw::connect(&d.ws_url()).await;
    // Just under the limit works.
    let fits = json!({"op":"pub","id":"1","topic":"t","data":"x".repeat(3900)}).to_string();
    assert!(fits.len() < 4096);
    c.send_text(&fits).await;
    assert_eq!(c.recv().await["op"], "ok");
    assert_eq!(
        bystander.recv().await["data"].as_str().map(str::len),
        Some(3900)
    );

    let too_big = json!({"op":"pub","topic":"t","data":"x".repeat(10_000)}).to_string();
    // The server may close before the whole frame is written; that is fine.
    let _ = c.ws.send(Message::text(too_big)).await;
    assert_eq!(c.close_code(Duration::from_secs(5)).await, Some(1009));

    assert!(
        bystander
            .try_recv(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing leaked"
    );
    let mut other = Raw::connect(&d.ws_url()).await;
    other
        .request(json!({"op":"pub","topic":"t","data":"after"}))
        .await;
    assert_eq!(bystander.recv().await["data"], "after");
}

#[tokio::test]
async fn garbage_instead_of_websocket_is_refused_and_survived() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start("");
    // Raw bytes that are not HTTP.
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    s.write_all(b"\x10\x20MQTT\x04\x02\x00\x3c garbage\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    // An HTTP upgrade request without the WebSocket headers.
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    // A bad ?user= is refused before the upgrade.
    let err = tokio_tungstenite::connect_async(format!("{}?user=", d.ws_url())).await;
    assert!(err.is_err());
    // A WebSocket frame that is masked wrongly (client frames must be masked): protocol error.
    let (mut ws, _) = tokio_tungstenite::connect_async(d.ws_url()).await.unwrap();
    let stream = ws.get_mut();
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = stream {
        // FIN + text opcode, unmasked, length 2.
        tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    }
    let mut raw = Raw {
        ws,
        client_id: String::new(),
    };
    let code = raw.close_code(Duration::from_secs(5)).await;
    assert_eq!(code, Some(1002));
    // The daemon is fine.
    let mut c = Raw::connect(&d.ws_url()).await;
    still_alive(&mut c).await;
    assert_eq!(d.healthz().await["status"], "ok");
}

#[tokio::test]
async fn random_frames_never_hurt_the_daemon() {
    use rand::{Rng, SeedableRng};
    let d = Daemon::start("[presence]\ntopics = [\"#\"]\n");
    let mut watcher = Raw::connect(&d.ws_url()).await;
    watcher.request(json!({"op":"sub","topic":"w"})).await;
    let mut c = Raw::connect(&d.ws_url()).await;
    // Pieces of JSON and protocol words, glued at random into mostly-broken frames.
    let fragments: Vec<&str> = r##"{ } [ ] "op" : , "sub" "pub" "send" "presence" "info" "topic"
        "a/+/#" "#" "data" null 1e999 -0 "\u0000" "\ud800" "id" true {} "client" "user" "x"
        9999999999999999999999"##
        .split_whitespace()
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let n = rng.gen_range(1..12);
        let frame: String = (0..n)
            .map(|_| fragments[rng.gen_range(0..fragments.len())])
            .collect();
        c.send_text(&frame).await;
    }
    // Every frame is answered, in order; the last one is our ping.
    let r = c.request(json!({"op":"ping"})).await;
    assert_eq!(r["op"], "ok");
    // The other client is unaffected and the daemon serves on.
    c.request(json!({"op":"pub","topic":"w","data":"ok"})).await;
    assert_eq!(watcher.recv().await["data"], "ok");
    assert_eq!(d.healthz().await["status"], "ok");
}
