//! The Rust client and the `sub`/`pub` tools against the real daemon: subscribe and
//! publish, many requests at once, direct messages, presence, errors, reconnecting
//! after the server goes away, and the command line as a shell user runs it.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, BIN};
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::{json, Value};
use switchboard_client::{Client, ClientError, ClientOptions, Event, Subscription};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);

/// The next message on a subscription, or a failed test.
async fn next(sub: &mut Subscription) -> switchboard_client::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within 10 s")
        .expect("the subscription is open")
}

/// The first event `pick` accepts, skipping others.
async fn event<T>(
    events: &mut broadcast::Receiver<Event>,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event channel: {e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the event within 10 s")
}

fn server_code(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribe_as_a_stream_and_publish_with_ack() {
    let d = Daemon::start("");
    let reader = Client::connect(d.ws_url()).await.unwrap();
    let writer = Client::connect(d.ws_url()).await.unwrap();
    let mut temps = reader.subscribe("home/+/temp").await.unwrap();
    let mut all = reader.subscribe("home/#").await.unwrap();

    let seq1 = writer.publish("home/kitchen/temp", &21.5).await.unwrap();
    let seq2 = writer
        .publish_event("home/kitchen/temp", "reading", &json!({"c": 22}))
        .await
        .unwrap();
    assert_eq!(seq2, seq1 + 1);
    writer.publish("home/door", "open").await.unwrap();

    let m = next(&mut temps).await;
    assert_eq!(
        (m.topic.as_str(), m.seq, m.event.as_deref()),
        ("home/kitchen/temp", seq1, None)
    );
    assert_eq!(m.decode::<f64>().unwrap(), 21.5);
    assert_eq!(m.from, writer.id());
    let m = next(&mut temps).await;
    assert_eq!(m.event.as_deref(), Some("reading"));
    assert_eq!(m.decode::<Value>().unwrap(), json!({"c": 22}));
    // The wider filter sees all three, in order.
    let topics: Vec<String> = all.by_ref().take(3).map(|m| m.topic).collect().await;
    assert_eq!(
        topics,
        ["home/kitchen/temp", "home/kitchen/temp", "home/door"]
    );

    // Unsubscribing the last local subscription of a filter unsubscribes at the server.
    temps.unsubscribe().await.unwrap();
    let again = reader
        .request(json!({"op": "unsub", "topic": "home/+/temp"}))
        .await;
    assert_eq!(server_code(again), "not_subscribed");
    // Dropping does too, a moment later.
    drop(all);
    wait_for_subscriptions(&d, 0).await;

    reader.close().await;
    assert!(matches!(
        reader.publish("home/x", &1).await,
        Err(ClientError::Closed {
            code: Some(1000),
            ..
        })
    ));
}

#[tokio::test]
async fn many_requests_in_flight_get_their_own_replies() {
    let d = Daemon::start("");
    let client = Client::connect(d.ws_url()).await.unwrap();
    let pubs = (0..200).map(|i| {
        let c = client.clone();
        async move {
            let topic = format!("load/{}", i % 10);
            let seq = c.publish(&topic, &i).await.unwrap();
            (topic, seq)
        }
    });
    let pings = (0..100).map(|_| client.ping());
    // `presence` on a topic without presence is an error: it must reach its own caller.
    let presences = (0..50).map(|_| client.presence("load/0"));
    let (seqs, pings, presences) =
        tokio::join!(join_all(pubs), join_all(pings), join_all(presences));

    let seqs: BTreeSet<(String, u64)> = seqs.into_iter().collect();
    let want: BTreeSet<(String, u64)> = (0..10)
        .flat_map(|t| (1..=20).map(move |s| (format!("load/{t}"), s)))
        .collect();
    assert_eq!(seqs, want, "every publish got its own seq");
    assert!(pings.iter().all(Result::is_ok));
    for p in presences {
        assert_eq!(server_code(p), "presence_disabled");
    }
}

#[tokio::test]
async fn a_flood_of_fire_and_forget_publishes_all_get_through() {
    // Far past the default publish rate limit, which is not what this test is about.
    let d = Daemon::start("[ws]\npublish_rate = 1000000\npublish_burst = 1000000\n");
    let client = Client::connect(d.ws_url()).await.unwrap();
    // Far more unread replies than the server queues: the client must keep reading
    // them while it writes, or both sides would wait for each other.
    for i in 0..20_000 {
        client.publish_nowait("flood", &i).await.unwrap();
    }
    assert_eq!(client.publish("flood", "last").await.unwrap(), 20_001);
}

#[tokio::test]
async fn direct_messages_to_a_client_and_to_a_user() {
    let d = Daemon::start("");
    let connect = |user: &str| Client::connect(ClientOptions::new(d.ws_url()).user(user));
    let ann1 = connect("ann").await.unwrap();
    let ann2 = connect("ann").await.unwrap();
    let bob = connect("bob").await.unwrap();
    let (mut ev1, mut ev2) = (ann1.events(), ann2.events());
    let dm = |e| match e {
        Event::Dm(m) => Some(m),
        _ => None,
    };

    let n = bob
        .send_to_client(&ann1.id(), Some("hello"), &json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let m = event(&mut ev1, dm).await;
    assert_eq!(
        (m.from.as_str(), m.from_user.as_deref()),
        (bob.id().as_str(), Some("bob"))
    );
    assert_eq!(m.event.as_deref(), Some("hello"));
    assert_eq!(m.decode::<Value>().unwrap(), json!({"text": "hi"}));

    assert_eq!(bob.send_to_user("ann", None, "to both").await.unwrap(), 2);
    for events in [&mut ev1, &mut ev2] {
        assert_eq!(
            event(events, dm).await.decode::<String>().unwrap(),
            "to both"
        );
    }
    // To one's own user: the other connections only.
    assert_eq!(ann1.send_to_user("ann", None, &1).await.unwrap(), 1);
    assert_eq!(event(&mut ev2, dm).await.from, ann1.id());

    assert_eq!(
        server_code(bob.send_to_user("nobody", None, &1).await),
        "no_recipient"
    );
    assert_eq!(server_code(bob.publish("a/#", &1).await), "invalid_topic");
    // The connection stays usable after an error.
    bob.ping().await.unwrap();
}

#[tokio::test]
async fn presence_events_and_info() {
    let d = Daemon::start("[presence]\ntopics = [\"room/+\"]\n");
    let ann = Client::connect(ClientOptions::new(d.ws_url()).user("ann"))
        .await
        .unwrap();
    let bob = Client::connect(ClientOptions::new(d.ws_url()).user("bob"))
        .await
        .unwrap();
    let mut events = ann.events();
    let _ann_in = ann.subscribe("room/1").await.unwrap();
    let bob_in = bob.subscribe("room/1").await.unwrap();

    let joined = event(&mut events, |e| match e {
        Event::Join { topic, member } => Some((topic, member)),
        _ => None,
    })
    .await;
    assert_eq!(joined.0, "room/1");
    assert_eq!(
        (joined.1.client, joined.1.user.as_deref()),
        (bob.id(), Some("bob"))
    );

    bob.set_info(&json!({"name": "Bob"})).await.unwrap();
    let info = event(&mut events, |e| match e {
        Event::Join { member, .. } => member.info,
        _ => None,
    })
    .await;
    assert_eq!(info, json!({"name": "Bob"}));
    let members = ann.presence("room/1").await.unwrap();
    assert_eq!(members.len(), 2);

    drop(bob_in);
    let left = event(&mut events, |e| match e {
        Event::Leave { member, .. } => Some(member.client),
        _ => None,
    })
    .await;
    assert_eq!(left, bob.id());
}

/// Options for a client that reconnects quickly, to keep the tests short.
fn quick(url: String) -> ClientOptions {
    ClientOptions {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientOptions::new(url)
    }
}

#[tokio::test]
async fn reconnects_and_resubscribes_after_a_server_restart() {
    let mut first = Daemon::start("");
    let addr = first.http.to_string();
    let client = Client::connect(quick(first.ws_url())).await.unwrap();
    let mut events = client.events();
    let mut news = client.subscribe("news/#").await.unwrap();
    let old_id = client.id();

    first.signal("TERM");
    first.wait_exit(WAIT).expect("the daemon exits");
    let (code, reason, reconnecting) = event(&mut events, |e| match e {
        Event::Disconnected {
            code,
            reason,
            reconnecting,
        } => Some((code, reason, reconnecting)),
        _ => None,
    })
    .await;
    assert!(reconnecting, "going away: reconnect with backoff");
    assert_eq!(code, Some(1001), "{reason}");
    // While the server is away, requests fail at once instead of hanging.
    assert_eq!(
        client.publish("news/x", &0).await,
        Err(ClientError::Disconnected)
    );

    let second = Daemon::start_with_env("", &[("SWITCHBOARD_HTTP_LISTEN", &addr)]);
    let new_id = event(&mut events, |e| match e {
        Event::Connected { client_id } => Some(client_id),
        _ => None,
    })
    .await;
    assert_ne!(new_id, old_id, "a new connection has a new id");
    assert_eq!(client.id(), new_id);
    // The `sub` was re-sent before this ping, so the server holds it now.
    client.ping().await.unwrap();

    let other = Client::connect(second.ws_url()).await.unwrap();
    other.publish("news/today", "back again").await.unwrap();
    let m = next(&mut news).await;
    assert_eq!(
        (m.topic.as_str(), m.decode::<String>().unwrap().as_str()),
        ("news/today", "back again")
    );
}

#[tokio::test]
async fn a_forced_close_fails_the_request_in_flight_then_recovers() {
    let d = Daemon::start("[ws]\nmax_message_size = 1024\n");
    let client = Client::connect(quick(d.ws_url())).await.unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("big/+").await.unwrap();

    // Too large a frame: the server closes with 1009 and never answers.
    let result = client.publish("big/one", &"x".repeat(4096)).await;
    assert_eq!(result, Err(ClientError::Disconnected));
    let (code, reason) = event(&mut events, |e| match e {
        Event::Disconnected { code, reason, .. } => Some((code, reason)),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(1009), "{reason}");
    event(&mut events, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;

    client.ping().await.unwrap();
    client.publish("big/two", "small").await.unwrap();
    assert_eq!(next(&mut sub).await.topic, "big/two");
}

/// Waits until the daemon holds exactly `n` subscriptions (a CLI subscriber is ready,
/// a dropped subscription is gone).
async fn wait_for_subscriptions(d: &Daemon, n: u64) {
    for _ in 0..200 {
        if d.healthz().await["subscriptions"].as_u64() == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the daemon never held exactly {n} subscriptions");
}

fn switchboard(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SWITCHBOARD_URL")
        .env_remove("RUST_LOG");
    cmd
}

#[tokio::test]
async fn the_cli_subscribes_and_publishes() {
    let d = Daemon::start("");
    let url = d.ws_url();
    let sub = switchboard(&["sub", "--url", &url, "-v", "-C", "4", "cli/#", "cli/+/x"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_subscriptions(&d, 2).await;

    let publish = |args: &[&str]| {
        let mut full = vec!["pub", "--url", url.as_str()];
        full.extend_from_slice(args);
        switchboard(&full).output().unwrap()
    };
    // Matches both filters, printed once.
    assert!(publish(&["cli/a/x", "{\"b\": 1, \"a\": [1, 2]}"])
        .status
        .success());
    assert!(publish(&["cli/text", "hello world", "--event", "note"])
        .status
        .success());
    let mut lines = switchboard(&["pub", "--url", &url, "cli/lines", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = lines.stdin.take().unwrap();
        stdin.write_all(b"42\n\n\"quoted\"\n").unwrap();
    }
    assert!(lines.wait().unwrap().success());

    let failed = publish(&["cli/#", "1"]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("invalid_topic"), "{stderr}");

    let out = tokio::task::spawn_blocking(move || sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cli/a/x {\"b\":1,\"a\":[1,2]}\ncli/text hello world\ncli/lines 42\ncli/lines quoted\n"
    );

    // --json prints the whole frame.
    let json_sub = switchboard(&["sub", "--url", &url, "--json", "-C", "1", "cli/j"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_subscriptions(&d, 1).await;
    assert!(publish(&["cli/j", "7"]).status.success());
    let out = tokio::task::spawn_blocking(move || json_sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let frame: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            frame["op"].clone(),
            frame["topic"].clone(),
            frame["data"].clone()
        ),
        (json!("msg"), json!("cli/j"), json!(7))
    );
    assert!(frame["seq"].is_u64() && frame["ts"].is_u64() && frame["from"].is_string());
}
