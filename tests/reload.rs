//! `systemctl reload` as an operator uses it: edit the configuration, send SIGHUP, and
//! see the change in force for new and connected clients alike, with the connections
//! made before the reload still open; a broken edit is refused whole.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use switchboard::auth::passwd::PasswordFile;

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
    d.wait_log_count("SIGHUP: reloading", n).await;
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
    let mut mqtt_a = MosquittoSub::start(port, &["-i", "sub-a", "-t", "a/#"]).await;
    let _mqtt_b = MosquittoSub::start(port, &["-i", "sub-b", "-t", "b/#"]).await;

    reload(&d, &grants(r#""a/#""#), 1).await;
    // The WebSocket client is told which subscription went, on the same connection.
    let notice = ws.recv().await;
    assert_eq!(notice["op"], "unsubscribed", "{notice}");
    assert_eq!(notice["unsubscribed"], json!(["b/1"]), "{notice}");
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
