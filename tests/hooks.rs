//! Inbound webhooks as a sender and a subscriber see them: a signed POST to
//! /hooks/<name> reaches WebSocket subscribers of the hook's topic; anything unsigned,
//! mis-signed, stale or replayed does not.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{Daemon, Raw, BIN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchboard::outbound_webhooks::signature::{github_signature, sign};

const GITHUB_SECRET: &[u8] = b"It's a Secret to Everybody";
/// The Standard Webhooks key; its file holds it as `whsec_<base64>`.
const STANDARD_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Two hooks, one per signature scheme, with their secret files in `dir`. Bodies are
/// limited to 1 KiB so the oversized case is cheap.
fn config(dir: &Path) -> String {
    let github = dir.join("github.secret");
    let standard = dir.join("billing.secret");
    std::fs::write(&github, GITHUB_SECRET).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(STANDARD_KEY);
    std::fs::write(&standard, format!("whsec_{encoded}\n")).unwrap();
    format!(
        r#"
[ws]
max_message_size = 1024

[[hooks]]
name = "github"
topic = "ci/github"
secret_file = "{}"
signature = "github"
event = "unknown"
event_header = "X-GitHub-Event"

[[hooks]]
name = "billing"
topic = "billing/events"
secret_file = "{}"
signature = "standard"
tolerance = "5m"
event = "billing"
"#,
        github.display(),
        standard.display()
    )
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A POST to a hook: the status and the JSON body.
async fn post(
    daemon: &Daemon,
    name: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/hooks/{name}", daemon.http))
        .body(body.to_vec());
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = request.send().await.expect("POST");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

async fn github(
    daemon: &Daemon,
    event: &str,
    signature: String,
    body: &[u8],
) -> (StatusCode, Value) {
    let headers = [
        ("X-GitHub-Event", event.to_owned()),
        ("X-Hub-Signature-256", signature),
    ];
    post(daemon, "github", &headers, body).await
}

async fn standard(
    daemon: &Daemon,
    id: &str,
    timestamp: u64,
    signature: String,
    body: &[u8],
) -> (StatusCode, Value) {
    let headers = [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    post(daemon, "billing", &headers, body).await
}

/// The 401 a refused delivery gets, with the problem named and no secret.
fn assert_unauthorized((status, body): &(StatusCode, Value), names: &str) {
    assert_eq!(*status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(names), "{body}");
    for secret in [GITHUB_SECRET, STANDARD_KEY] {
        let secret = String::from_utf8_lossy(secret);
        assert!(!body.to_string().contains(&*secret), "{body}");
    }
}

async fn hook_counts(daemon: &Daemon, name: &str) -> Value {
    daemon.healthz().await["hooks"][name].clone()
}

#[tokio::test]
async fn github_hook_publishes_signed_bodies_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&config(dir.path()));
    let mut sub = Raw::subscribed(&daemon.ws_url(), "ci/#").await;

    let body = br#"{"action":"opened","number":7}"#;
    let (status, reply) = github(
        &daemon,
        "pull_request",
        github_signature(GITHUB_SECRET, body),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(reply["delivered"], 1, "{reply}");
    let msg = sub.next_msg().await;
    assert_eq!(msg["topic"], "ci/github");
    assert_eq!(msg["event"], "pull_request");
    assert_eq!(msg["data"], json!({"action":"opened","number":7}));
    assert_eq!(msg["from"], "hook:github");
    assert_eq!(msg["seq"], reply["seq"]);

    // Not JSON: the text arrives as a string. Without the event header, the static event.
    let text = b"ping from ci";
    let (status, reply) = post(
        &daemon,
        "github",
        &[("X-Hub-Signature-256", github_signature(GITHUB_SECRET, text))],
        text,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let msg = sub.next_msg().await;
    assert_eq!(msg["data"], "ping from ci");
    assert_eq!(msg["event"], "unknown");

    // Every way of getting the signature wrong: 401, naming the problem.
    let wrong_key = github_signature(b"guess", body);
    assert_unauthorized(
        &github(&daemon, "push", wrong_key, body).await,
        "does not match",
    );
    let tampered = br#"{"action":"opened","number":8}"#;
    let signed_other = github_signature(GITHUB_SECRET, body);
    assert_unauthorized(
        &github(&daemon, "push", signed_other, tampered).await,
        "does not match",
    );
    assert_unauthorized(
        &github(&daemon, "push", "sha1=0123".into(), body).await,
        "x-hub-signature-256` is malformed",
    );
    let unsigned = post(
        &daemon,
        "github",
        &[("X-GitHub-Event", "push".into())],
        body,
    )
    .await;
    assert_unauthorized(&unsigned, "missing header `x-hub-signature-256`");

    // Nothing refused was published: the next message is the next good one.
    let last = b"after the refusals";
    let (status, _) = github(&daemon, "push", github_signature(GITHUB_SECRET, last), last).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(sub.next_msg().await["data"], "after the refusals");
    let counts = hook_counts(&daemon, "github").await;
    assert_eq!(counts["accepted"], 3, "{counts}");
    assert_eq!(counts["refused"]["bad_signature"], 2, "{counts}");
    assert_eq!(counts["refused"]["malformed_signature"], 1, "{counts}");
    assert_eq!(counts["refused"]["missing_signature"], 1, "{counts}");

    // Unknown hook, oversized body, wrong method: JSON errors with their codes.
    let (status, reply) =
        github(&daemon, "push", github_signature(GITHUB_SECRET, body), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    sub.next_msg().await;
    let (status, reply) = post(&daemon, "gitlab", &[], body).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found")),
        "{reply}"
    );
    let big = vec![b'x'; 2048];
    let (status, reply) =
        github(&daemon, "push", github_signature(GITHUB_SECRET, &big), &big).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("too_large")),
        "{reply}"
    );
    assert_eq!(
        hook_counts(&daemon, "github").await["refused"]["too_large"],
        1
    );
    let response = reqwest::get(format!("http://{}/hooks/github", daemon.http))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["error"]["code"], "method_not_allowed", "{reply}");
    assert!(
        sub.try_recv(Duration::from_millis(200)).await.is_none(),
        "nothing else published"
    );
    // The same counts in /metrics.
    let counts = hook_counts(&daemon, "github").await;
    let metrics = daemon.metrics_text().await;
    let accepted = format!(
        "switchboard_hook_requests_accepted_total{{hook=\"github\"}} {}",
        counts["accepted"]
    );
    assert!(metrics.contains(&accepted), "{accepted} in {metrics}");
    assert!(
        metrics.contains("switchboard_hook_requests_refused_total{reason=\"too_large\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn standard_hook_checks_the_timestamp_and_refuses_replays() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&config(dir.path()));
    let mut sub = Raw::subscribed(&daemon.ws_url(), "billing/events").await;
    let body = br#"{"invoice":"in_1","paid":true}"#;
    let now = now_s();

    let (status, reply) = standard(
        &daemon,
        "msg_1",
        now,
        sign(STANDARD_KEY, "msg_1", now, body),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let msg = sub.next_msg().await;
    assert_eq!(msg["data"], json!({"invoice":"in_1","paid":true}));
    assert_eq!(msg["event"], "billing");
    assert_eq!(msg["from"], "hook:billing");

    // The same delivery again: acknowledged, not published again.
    let (status, reply) = standard(
        &daemon,
        "msg_1",
        now,
        sign(STANDARD_KEY, "msg_1", now, body),
        body,
    )
    .await;
    assert_eq!(
        (status, reply),
        (StatusCode::OK, json!({"duplicate": true}))
    );

    let stale = now - 600;
    let signed_stale = sign(STANDARD_KEY, "msg_2", stale, body);
    assert_unauthorized(
        &standard(&daemon, "msg_2", stale, signed_stale, body).await,
        "tolerance",
    );
    let wrong_key = sign(b"not the key", "msg_3", now, body);
    assert_unauthorized(
        &standard(&daemon, "msg_3", now, wrong_key, body).await,
        "does not match",
    );
    let other_id = sign(STANDARD_KEY, "msg_4", now, body);
    assert_unauthorized(
        &standard(&daemon, "msg_5", now, other_id, body).await,
        "does not match",
    );
    let no_id = post(
        &daemon,
        "billing",
        &[("webhook-signature", "v1,AAAA".into())],
        body,
    )
    .await;
    assert_unauthorized(&no_id, "missing header `webhook-id`");

    let (status, _) = standard(
        &daemon,
        "msg_6",
        now,
        sign(STANDARD_KEY, "msg_6", now, b"2"),
        b"2",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        sub.next_msg().await["data"],
        2,
        "nothing refused or replayed came first"
    );
    let counts = hook_counts(&daemon, "billing").await;
    assert_eq!(counts["accepted"], 2, "{counts}");
    assert_eq!(counts["duplicates"], 1, "{counts}");
    assert_eq!(counts["refused"]["stale_timestamp"], 1, "{counts}");
    assert_eq!(counts["refused"]["bad_signature"], 2, "{counts}");
    assert_eq!(counts["refused"]["missing_signature"], 1, "{counts}");
}

#[tokio::test]
async fn a_secret_is_rotated_on_sighup_and_a_broken_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&config(dir.path()));
    let body = b"{}";
    let send =
        |secret: &'static [u8]| github(&daemon, "push", github_signature(secret, body), body);

    std::fs::write(dir.path().join("github.secret"), "rotated\n").unwrap();
    assert_eq!(
        send(GITHUB_SECRET).await.0,
        StatusCode::ACCEPTED,
        "not before the signal"
    );
    daemon.signal("HUP");
    daemon.wait_log("hook secrets reloaded").await;
    assert_eq!(send(b"rotated").await.0, StatusCode::ACCEPTED);
    assert_eq!(send(GITHUB_SECRET).await.0, StatusCode::UNAUTHORIZED);

    // A reload checks every file before it applies anything: a missing secret refuses
    // the whole reload, and the running secret stays.
    std::fs::remove_file(dir.path().join("github.secret")).unwrap();
    daemon.signal("HUP");
    daemon.wait_log("reload refused").await;
    assert!(
        daemon.logs().contains("github.secret"),
        "the error names the file"
    );
    assert!(
        !daemon.logs().contains("rotated"),
        "secrets are never logged"
    );
    assert_eq!(send(b"rotated").await.0, StatusCode::ACCEPTED);
}

#[test]
fn a_hook_whose_secret_cannot_be_read_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path());
    std::fs::remove_file(dir.path().join("billing.secret")).unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
        .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_LISTEN", "")
        .env("SWITCHBOARD_MQTT_WS_LISTEN", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot set up the inbound hook `billing`: cannot read the secret file"),
        "{err}"
    );
    assert!(err.contains("billing.secret"), "{err}");
    assert!(!err.contains("listening http="), "nothing served: {err}");
}
