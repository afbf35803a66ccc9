//! `systemctl reload` as an operator uses it: edit the configuration, send SIGHUP, and
//! see the change in force for new and connected clients alike, with the connections
//! made before the reload still open; a broken edit is refused whole.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use switchboard::auth::passwd::PasswordFile;
use switchboard_client::{Client, Event};

use common::{mosquitto_pub, Daemon, MosquittoSub, Raw};

const WAIT: Duration = Duration::from_secs(10);

/// Writes a password file with cheap hashes (the tests need not be slow to crack).
fn write_passwords(path: &Path, users: &[(&str, &str)]) {
    let mut file = PasswordFile::new();
    for (user, password) in users {
        file.set_with_iterations(user, password, 1_000)
            .expect("set password");
    }
    file.save(path).expect("save password file");
}

/// Replaces the configuration file and sends SIGHUP; waits for the `n`th reload to end.
async fn reload(d: &Daemon, config: &str, n: usize) {
    std::fs::write(&d.config_path, config).expect("write config");
    d.signal("HUP");
    d.wait_log_count("reload done", n).await;
}

/// Publishes one message over MQTT as `user`; whether the broker accepted the CONNECT.
async fn publish_as(port: u16, user: &str, password: &str, topic: &str, payload: &str) -> bool {
    mosquitto_pub(
        port,
        &[
            "-u", user, "-P", password, "-t", topic, "-m", payload, "-q", "1",
        ],
    )
    .await
}

fn mqtt_config(passwords: &Path) -> String {
    format!(
        "[mqtt]\nallow_anonymous = false\npassword_file = \"{}\"\n",
        passwords.display()
    )
}

#[tokio::test]
async fn a_changed_mqtt_password_admits_the_new_one_and_closes_the_device_that_used_the_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("passwd");
    write_passwords(&passwords, &[("alice", "alice-1"), ("bob", "bob-1")]);
    let config = mqtt_config(&passwords);
    let d = Daemon::start(&config);
    let port = d.mqtt.expect("mqtt").port();
    // Bob keeps his password: his subscriber must live through the reload.
    let mut bob = MosquittoSub::start(
        port,
        &["-u", "bob", "-P", "bob-1", "-i", "bob-sub", "-t", "t/#"],
    )
    .await;
    let _alice = MosquittoSub::start(
        port,
        &[
            "-u",
            "alice",
            "-P",
            "alice-1",
            "-i",
            "alice-sub",
            "-t",
            "t/#",
        ],
    )
    .await;

    // A new password for alice; bob's entry stays as it was.
    let mut file = PasswordFile::load(&passwords).expect("load");
    file.set_with_iterations("alice", "alice-2", 1_000)
        .expect("set");
    file.save(&passwords).expect("save");
    reload(&d, &config, 1).await;
    d.wait_log("closing MQTT connection: no longer authorized")
        .await;
    let closed: Vec<String> = d
        .logs()
        .lines()
        .filter(|l| l.contains("no longer authorized"))
        .map(str::to_owned)
        .collect();
    assert!(
        closed.iter().all(|l| l.contains("alice-sub")),
        "only the device whose password changed is closed: {closed:?}"
    );

    assert!(!publish_as(port, "alice", "alice-1", "t/x", "old").await);
    assert!(publish_as(port, "alice", "alice-2", "t/x", "new").await);
    let (topic, payload) = bob.message(WAIT).await.expect("bob still receives");
    assert_eq!((topic.as_str(), payload.as_slice()), ("t/x", &b"new"[..]));
}

#[tokio::test]
async fn narrowed_permissions_drop_the_subscriptions_they_no_longer_allow_and_keep_the_rest() {
    let grants = |subscribe: &str| {
        format!(
            r##"
[auth]
allow_anonymous = true
[auth.anonymous]
publish = ["#"]
subscribe = [{subscribe}]
[mqtt]
allow_anonymous = true
[[mqtt.acl]]
user = "*"
publish = ["#"]
subscribe = [{subscribe}]
"##
        )
    };
    let d = Daemon::start(&grants(r#""a/#", "b/#""#));
    let port = d.mqtt.expect("mqtt").port();
    let mut ws = Raw::subscribed(&d.ws_url(), "a/1").await;
    let ok = ws.request(json!({"op": "sub", "topic": "b/1"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    // The crate's client: its `b/#` subscription ends, its `a/#` one goes on.
    let client = Client::connect(d.ws_url()).await.expect("client");
    let mut events = client.events();
    let mut client_a = client.subscribe("a/#").await.expect("sub a");
    let mut client_b = client.subscribe("b/#").await.expect("sub b");
    let mut mqtt_a = MosquittoSub::start(port, &["-i", "sub-a", "-t", "a/#"]).await;
    let _mqtt_b = MosquittoSub::start(port, &["-i", "sub-b", "-t", "b/#"]).await;

    reload(&d, &grants(r#""a/#""#), 1).await;
    // The WebSocket client is told which subscription went, on the same connection.
    let notice = ws.recv().await;
    assert_eq!(notice["op"], "unsubscribed", "{notice}");
    assert_eq!(notice["unsubscribed"], json!(["b/1"]), "{notice}");
    let event = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(Event::Unsubscribed { filters, .. }) => return filters,
                Ok(_) => continue,
                Err(e) => panic!("events ended: {e}"),
            }
        }
    })
    .await
    .expect("an Unsubscribed event");
    assert_eq!(event, ["b/#"]);
    assert!(
        client_b.recv().await.is_none(),
        "the dropped subscription ends"
    );
    // MQTT cannot take one subscription away and say so: that device is closed.
    d.wait_log("no longer authorized").await;
    let closed = d
        .logs()
        .lines()
        .filter(|l| l.contains("no longer authorized"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(
        closed.iter().all(|l| l.contains("sub-b")),
        "only the device that lost a subscription: {closed:?}"
    );

    // The kept subscriptions still deliver, on the connections made before the reload.
    assert!(mosquitto_pub(port, &["-t", "a/1", "-m", "after", "-q", "1"]).await);
    assert_eq!(ws.next_msg().await["data"], "after");
    let (topic, _) = mqtt_a.message(WAIT).await.expect("MQTT subscriber kept");
    assert_eq!(topic, "a/1");
    let kept = tokio::time::timeout(WAIT, client_a.recv()).await;
    assert_eq!(kept.ok().flatten().map(|m| m.topic), Some("a/1".to_owned()));
    // And the new rules apply to new operations of existing connections.
    let refused = ws.request(json!({"op": "sub", "topic": "b/2"})).await;
    assert_eq!(refused["op"], "error", "{refused}");
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test]
async fn a_raised_log_level_shows_debug_lines_without_a_restart() {
    let d = Daemon::start("log_level = \"info\"\n[auth]\nallow_anonymous = true\n");
    let mut ws = Raw::connect(&d.ws_url()).await;
    let refused = |d: &Daemon| {
        let url = common::http::api(d, "/info");
        async move { common::http::get(&url, Some("not-a-valid-token")).await }
    };
    refused(&d).await;
    reload(
        &d,
        "log_level = \"debug\"\n[auth]\nallow_anonymous = true\n",
        1,
    )
    .await;
    d.wait_log("log level applied").await;
    refused(&d).await;
    d.wait_log("credential refused").await;
    assert_eq!(
        d.logs().matches("credential refused").count(),
        1,
        "the request before the reload logged nothing at info:\n{}",
        d.logs()
    );
    // The WebSocket opened before the reload is still served.
    let pong = ws.request(json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "ok", "{pong}");
}

#[tokio::test]
async fn a_broken_configuration_is_refused_whole_and_the_running_one_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("passwd");
    write_passwords(&passwords, &[("alice", "alice-1")]);
    let config = mqtt_config(&passwords);
    let d = Daemon::start(&config);
    let port = d.mqtt.expect("mqtt").port();
    let mut ws = Raw::connect(&d.ws_url()).await;

    let missing = mqtt_config(&dir.path().join("no-such-file"));
    let broken = [
        "[mqtt\nallow_anonymous = true\n".to_owned(),
        format!("{config}colour = \"blue\"\n"),
        missing,
    ];
    for (i, text) in broken.iter().enumerate() {
        reload(&d, text, i + 1).await;
        d.wait_log_count("reload refused", i + 1).await;
    }
    let logs = d.logs();
    assert!(logs.contains("unknown field `colour`"), "{logs}");
    assert!(
        logs.contains("no-such-file"),
        "the error names the file: {logs}"
    );
    assert!(
        logs.contains("ERROR"),
        "a refused reload is an error: {logs}"
    );
    // Nothing of the refused files applied: the password file still decides.
    assert!(publish_as(port, "alice", "alice-1", "t/x", "1").await);
    assert!(!publish_as(port, "mallory", "x", "t/x", "1").await);
    let pong = ws.request(json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "ok", "{pong}");

    // A setting only a restart applies is named, and the rest still reloads.
    reload(&d, &format!("{config}[ws]\nmax_subscriptions = 7\n"), 4).await;
    d.wait_log("take effect at the next restart").await;
    let warning = d
        .logs()
        .lines()
        .find(|l| l.contains("take effect at the next restart"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(warning.contains("ws.max_subscriptions"), "{warning}");
    assert!(!warning.contains("mqtt.password_file"), "{warning}");
}

/// Publishes over the WebSocket and checks that the same connection, subscribed since
/// before the reloads, still gets the message.
async fn publish_seen(ws: &mut Raw, topic: &str) {
    let ok = ws
        .request(json!({"op": "pub", "topic": topic, "data": 1}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(
        ws.next_msg().await["topic"],
        topic,
        "the subscriber still receives"
    );
}

/// An HTTP endpoint that hands over the body of every POST it gets.
async fn webhook_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or_default());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// The topics of the message events in a delivery body.
fn delivered_topics(body: &serde_json::Value) -> Vec<String> {
    body.to_string()
        .split("\"topic\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Waits for a delivery that carries `topic`.
async fn delivery_of(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    topic: &str,
) {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(body) = rx.recv().await {
            if delivered_topics(&body).iter().any(|t| t == topic) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no delivery of {topic}");
}

#[tokio::test]
async fn webhooks_added_changed_and_removed_take_effect_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "a-webhook-secret-for-reload-tests").expect("write");
    let (first_url, mut first) = webhook_receiver().await;
    let (second_url, mut second) = webhook_receiver().await;
    let hook = |url: &str| {
        format!(
            "[[webhooks]]\nname = \"main\"\nurl = \"{url}\"\nsecret_file = \"{}\"\ntopics = [\"t/#\"]\n",
            secret.display()
        )
    };
    let d = Daemon::start("");
    let mut ws = Raw::subscribed(&d.ws_url(), "t/#").await;

    reload(&d, &hook(&first_url), 1).await;
    d.wait_log("webhook endpoint").await;
    publish_seen(&mut ws, "t/1").await;
    delivery_of(&mut first, "t/1").await;

    reload(&d, &hook(&second_url), 2).await;
    d.wait_log("webhook endpoint changed").await;
    publish_seen(&mut ws, "t/2").await;
    delivery_of(&mut second, "t/2").await;

    reload(&d, "", 3).await;
    d.wait_log("webhook endpoint removed").await;
    publish_seen(&mut ws, "t/3").await;
    let stats = common::http_get_json(d.http, "/healthz").await;
    assert!(
        stats["webhooks"].as_array().is_some_and(|w| w.is_empty()),
        "{stats}"
    );
}

#[tokio::test]
async fn bridges_added_removed_and_changed_while_unchanged_ones_stay_connected() {
    use switchboard_bench::mosquitto::{Mosquitto, Subscriber};

    let (a, b) = (Mosquitto::start(""), Mosquitto::start(""));
    let bridge = |name: &str, port: u16, prefix: &str| {
        format!(
            "[[bridges]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n[[bridges.topics]]\npattern = \"data/#\"\ndirection = \"out\"\nqos = 1\nremote_prefix = \"{prefix}\"\n"
        )
    };
    let d = Daemon::start(&bridge("a", a.port, "edge/"));
    let mut up_a = Subscriber::start(a.port, "#").await;
    let mut ws = Raw::subscribed(&d.ws_url(), "data/#").await;
    publish_seen(&mut ws, "data/1").await;
    assert_eq!(up_a.next().await.0, "edge/data/1");
    let connections_to_a = a.connection_attempts();

    // Added: b connects and forwards; a is not touched.
    let mut up_b = Subscriber::start(b.port, "#").await;
    let both = format!(
        "{}{}",
        bridge("a", a.port, "edge/"),
        bridge("b", b.port, "site/")
    );
    reload(&d, &both, 1).await;
    publish_seen(&mut ws, "data/2").await;
    assert_eq!(up_b.next().await.0, "site/data/2");
    assert_eq!(up_a.next().await.0, "edge/data/2");
    assert_eq!(
        a.connection_attempts(),
        connections_to_a,
        "a unchanged, not reconnected"
    );

    // b removed, a changed: a restarts with its new prefix.
    reload(&d, &bridge("a", a.port, "edge2/"), 2).await;
    d.wait_log("bridge removed").await;
    publish_seen(&mut ws, "data/3").await;
    assert_eq!(up_a.next().await.0, "edge2/data/3");
    assert!(
        a.connection_attempts() > connections_to_a,
        "a reconnected with its new settings"
    );
}
