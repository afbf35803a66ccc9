//! Recordings and replays against the real daemon over real sockets: recording under
//! load, replay timing and controls, permissions, export/import, restarts, the `record`
//! op and the CLI. docs/recordings.md is what these check.

mod common;

use std::process::Command;
use std::time::Duration;

use common::creds::{user_token, Secrets, ADMIN};
use common::http::{api, call, code, get, post, subscribed_as};
use common::{mosquitto_pub, Daemon, MosquittoSub, Raw};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

fn daemon(secrets: &Secrets, extra: &str) -> Daemon {
    Daemon::start(&secrets.config(extra))
}

async fn start(d: &Daemon, who: &str, name: &str, topics: &[&str]) -> Value {
    let body = json!({"name": name, "notes": "from the tests", "topics": topics}).to_string();
    let (s, v) = post(&api(d, "/recordings"), Some(who), &body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn stop(d: &Daemon, who: &str, id: u64) -> Value {
    let (s, v) = post(&api(d, &format!("/recordings/{id}/stop")), Some(who), "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn publish(d: &Daemon, who: &str, topic: &str, data: &str) {
    let body = format!(r#"{{"topic":"{topic}","data":{data}}}"#);
    let (s, v) = post(&api(d, "/publish"), Some(who), &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn replay(d: &Daemon, who: &str, id: u64, body: Value) -> (StatusCode, Value) {
    let url = api(d, &format!("/recordings/{id}/replay"));
    post(&url, Some(who), &body.to_string()).await
}

/// Polls a replay until it has ended.
async fn ended(d: &Daemon, who: &str, replay: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = get(&api(d, &format!("/replays/{replay}")), Some(who)).await;
        if v["state"] == "finished" || v["state"] == "stopped" {
            return v;
        }
        assert!(Instant::now() < deadline, "replay did not end: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The export's text; `who` empty exports as an anonymous caller.
async fn export(d: &Daemon, who: &str, id: u64) -> String {
    let mut request = reqwest::Client::new().get(api(d, &format!("/recordings/{id}/export")));
    if !who.is_empty() {
        request = request.bearer_auth(who);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/x-ndjson",
        "export media type"
    );
    response.text().await.unwrap()
}

async fn import(d: &Daemon, who: &str, text: &str) -> (StatusCode, Value) {
    let (s, v, _) = call(
        Method::POST,
        &api(d, "/recordings/import"),
        Some(who),
        Some(text),
    )
    .await;
    (s, v)
}

/// The next `msg` frame's raw text, with the instant it arrived.
async fn raw_msg(ws: &mut Raw) -> (String, Instant) {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("connection open")
            .expect("frame");
        if let Message::Text(t) = next {
            if t.as_str().starts_with(r#"{"op":"msg""#) {
                return (t.as_str().to_owned(), Instant::now());
            }
        }
    }
}

/// The payload text of a raw `msg` frame, exactly as sent.
fn raw_data(frame: &str) -> &str {
    let start = frame.find(r#","data":"#).expect("data") + 8;
    let end = frame.rfind(r#","ts":"#).expect("ts");
    &frame[start..end]
}

/// Every message frame queued for `ws` so far: a ping's reply comes after them.
async fn drain(ws: &mut Raw) -> Vec<Value> {
    let id = "drain";
    ws.send(json!({"op":"ping","id":id})).await;
    let mut out = Vec::new();
    loop {
        let f = ws.recv().await;
        if f["id"] == id {
            return out;
        }
        if f["op"] == "msg" {
            out.push(f);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_every_message_under_load_while_subscribers_get_every_one() {
    // Anonymous, so the MQTT device may publish; a publish rate high enough to flood,
    // and a subscriber queue deep enough that the slow-consumer policy never applies:
    // what is checked is that recording takes nothing away from delivery.
    let d = Daemon::start(
        "[ws]\npublish_rate = 100000\npublish_burst = 100000\n\
         outbound_queue_messages = 100000\noutbound_queue_bytes = 100000000\n",
    );
    let url = d.ws_url();
    let mut sub = Raw::subscribed(&url, "load/#").await;
    let rec = start_anonymous(&d, &["load/#"]).await;
    let id = rec["id"].as_u64().unwrap();
    assert_eq!(
        (rec["state"].as_str(), rec["owner"].as_str()),
        (Some("recording"), Some("anonymous"))
    );

    const PER: u64 = 3000;
    let publishers = (0..3).map(|p| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut ws = Raw::connect(&url).await;
            ws.flood(&format!("load/ws{p}"), PER, 64).await;
        })
    });
    let port = d.mqtt.expect("mqtt").port();
    let binary = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = vec![0xff, 0x00, 0xfe, b'{', 0x80];
    std::fs::write(binary.path(), &bytes).unwrap();
    let path = binary.path().to_str().unwrap().to_owned();
    let mqtt = tokio::spawn(async move {
        assert!(mosquitto_pub(port, &["-t", "load/mqtt", "-m", "21.5", "--repeat", "500"]).await);
        assert!(mosquitto_pub(port, &["-t", "load/bin", "-f", &path]).await);
    });
    for p in publishers {
        p.await.unwrap();
    }
    mqtt.await.unwrap();
    let total = 3 * PER + 500 + 1;
    let mut got = 0;
    let mut delivered_bin = Value::Null;
    while got < total {
        let m = sub.next_msg().await;
        if m["topic"] == "load/bin" {
            delivered_bin = m;
        }
        got += 1;
    }
    let (s, v) = post(&api(&d, &format!("/recordings/{id}/stop")), None, "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["messages"], total, "{v}");
    assert_eq!(v["dropped"], 0);
    let (_, shown) = get(&api(&d, &format!("/recordings/{id}")), None).await;
    assert_eq!(shown["by_topic"]["load/ws1"], PER);
    assert_eq!(shown["by_topic"]["load/mqtt"], 500);
    assert!(shown["span_us"].as_u64().unwrap() > 0);
    // The binary MQTT payload is kept as the base64-marked value it was routed as.
    let text = export(&d, "", id).await;
    let bin: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["topic"] == "load/bin")
        .expect("the binary message");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    assert_eq!(bin["data"], json!({"$base64": b64}));
    assert_eq!(bin["origin"], "mqtt");
    // Stored as delivered: the same number, and the same clock reading (µs vs ms).
    assert_eq!(bin["seq"], delivered_bin["seq"], "{delivered_bin}");
    assert_eq!(
        bin["ts"].as_u64().map(|us| us / 1000),
        delivered_bin["ts"].as_u64(),
        "{bin} vs {delivered_bin}"
    );
    // Replayed, the binary payload reaches an MQTT device as the very bytes published.
    let mut device = MosquittoSub::start(port, &["-t", "again/load/bin"]).await;
    let body = json!({"max": true, "prefix": "again/"}).to_string();
    let (s, r) = post(&api(&d, &format!("/recordings/{id}/replay")), None, &body).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let (topic, payload) = device
        .message(Duration::from_secs(20))
        .await
        .expect("replayed to MQTT");
    assert_eq!((topic.as_str(), payload), ("again/load/bin", bytes));
    let metrics = d.metrics_text().await;
    let line = format!("switchboard_recorded_messages_total {total}\n");
    assert!(metrics.contains(&line), "{metrics}");
}

/// Starts a recording as an anonymous caller.
async fn start_anonymous(d: &Daemon, topics: &[&str]) -> Value {
    let body = json!({"name": "load", "topics": topics}).to_string();
    let (s, v) = post(&api(d, "/recordings"), None, &body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

/// Records messages at known gaps; returns the recording's id and its `ts` list (µs).
async fn recorded_with_gaps(d: &Daemon, gaps_ms: &[u64]) -> (u64, Vec<u64>) {
    let id = start(d, ADMIN, "timing", &["timed/#"]).await["id"]
        .as_u64()
        .unwrap();
    for (i, gap) in gaps_ms.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*gap)).await;
        publish(
            d,
            ADMIN,
            &format!("timed/{}", i % 2),
            &format!(r#"{{"i": {i}}}"#),
        )
        .await;
    }
    stop(d, ADMIN, id).await;
    let ts = export(d, ADMIN, id)
        .await
        .lines()
        .skip(1)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["ts"]
                .as_u64()
                .unwrap()
        })
        .collect();
    (id, ts)
}

/// Gaps between consecutive instants, in seconds.
fn gaps(at: &[Instant]) -> Vec<f64> {
    at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_keep_the_recorded_gaps_scaled_by_speed() {
    let secrets = Secrets::new();
    let d = daemon(&secrets, "");
    let (id, ts) = recorded_with_gaps(&d, &[0, 120, 300, 150, 250, 180]).await;
    let recorded: Vec<f64> = ts.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect();
    let span: f64 = recorded.iter().sum();
    let mut sub = subscribed_as(&d, ADMIN, "timed/#").await;

    // At the recorded speed, each gap within 15% (or 15 ms) of the recorded one.
    let (s, r) = replay(&d, ADMIN, id, json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let mut at = Vec::new();
    for i in 0..ts.len() {
        let (frame, when) = raw_msg(&mut sub).await;
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["from"], format!("replay:{}", r["id"]));
        assert_eq!(
            raw_data(&frame),
            format!(r#"{{"i": {i}}}"#),
            "payload kept byte for byte"
        );
        at.push(when);
    }
    for (got, want) in gaps(&at).iter().zip(&recorded) {
        let ratio = got / want;
        assert!(
            (0.85..1.15).contains(&ratio) || (got - want).abs() < 0.015,
            "gap {got:.3}s against {want:.3}s recorded"
        );
    }
    let done = ended(&d, ADMIN, r["id"].as_u64().unwrap()).await;
    assert_eq!(
        (done["state"].as_str(), done["sent"].as_u64()),
        (Some("finished"), Some(ts.len() as u64))
    );

    // Ten times as fast: the whole span about a tenth.
    let (_, r) = replay(&d, ADMIN, id, json!({"speed": 10})).await;
    let mut at = Vec::new();
    for _ in 0..ts.len() {
        at.push(raw_msg(&mut sub).await.1);
    }
    let ratio = gaps(&at).iter().sum::<f64>() / span;
    assert!(
        (0.07..0.15).contains(&ratio),
        "10x replay took {ratio:.3} of the span"
    );
    ended(&d, ADMIN, r["id"].as_u64().unwrap()).await;

    // As fast as possible, under a prefix: far quicker than at 10x, on the new topics.
    let mut prefixed = subscribed_as(&d, ADMIN, "again/#").await;
    let (s, r) = replay(&d, ADMIN, id, json!({"max": true, "prefix": "again"})).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["prefix"], "again/");
    let mut at = Vec::new();
    for i in 0..ts.len() {
        let (frame, when) = raw_msg(&mut prefixed).await;
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["topic"], format!("again/timed/{}", i % 2));
        at.push(when);
    }
    let ratio = gaps(&at).iter().sum::<f64>() / span;
    assert!(ratio < 0.05, "max replay took {ratio:.3} of the span");
    ended(&d, ADMIN, r["id"].as_u64().unwrap()).await;

    // Bad speeds and both ways at once are refused.
    for body in [
        json!({"speed": 0.01}),
        json!({"speed": 5000}),
        json!({"speed": 2, "max": true}),
    ] {
        let (s, v) = replay(&d, ADMIN, id, body).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_stop_and_progress_over_the_api_and_as_events() {
    let secrets = Secrets::new();
    let d = daemon(&secrets, "[recording]\nprogress_interval = \"100ms\"\n");
    let id = start(&d, ADMIN, "steady", &["steady/#"]).await["id"]
        .as_u64()
        .unwrap();
    // A running recording cannot be replayed.
    let (s, v) = replay(&d, ADMIN, id, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
    for i in 0..40 {
        publish(&d, ADMIN, "steady/x", &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop(&d, ADMIN, id).await;
    let mut sub = subscribed_as(&d, ADMIN, "steady/#").await;
    let mut events = subscribed_as(&d, ADMIN, "$replays/#").await;

    let (_, r) = replay(&d, ADMIN, id, json!({})).await;
    let rid = r["id"].as_u64().unwrap();
    let control = |action: &str| api(&d, &format!("/replays/{rid}/{action}"));
    for _ in 0..5 {
        sub.next_msg().await;
    }
    let (s, paused) = post(&control("pause"), Some(ADMIN), "").await;
    assert_eq!(
        (s, paused["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    let (s, v) = post(&control("pause"), Some(ADMIN), "").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // While paused nothing more is sent: what arrived equals what the API reports.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, during) = get(&api(&d, &format!("/replays/{rid}")), Some(ADMIN)).await;
    let arrived = 5 + drain(&mut sub).await.len() as u64;
    assert_eq!(during["sent"].as_u64(), Some(arrived), "{during}");
    assert!(arrived < 40);

    let (s, resumed) = post(&control("resume"), Some(ADMIN), "").await;
    assert_eq!(
        (s, resumed["state"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    sub.next_msg().await;
    let (_, stopped) = post(&control("stop"), Some(ADMIN), "").await;
    assert_eq!(stopped["state"], "stopped");
    let done = ended(&d, ADMIN, rid).await;
    assert!(done["sent"].as_u64().unwrap() < 40, "{done}");
    assert_eq!(done["total"], 40);
    let (_, listed) = get(&api(&d, "/replays"), Some(ADMIN)).await;
    assert!(listed["replays"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == rid));

    // Events on $replays/<id>: every state change in order, progress in between.
    let mut seen = Vec::new();
    let mut last_sent = 0;
    while seen.last().map(String::as_str) != Some("stopped") {
        let m = events.next_msg().await;
        assert_eq!(m["topic"], format!("$replays/{rid}"));
        let event = m["event"].as_str().unwrap().to_owned();
        let sent = m["data"]["sent"].as_u64().unwrap();
        assert!(sent >= last_sent, "progress goes forward");
        last_sent = sent;
        if event != "progress" {
            seen.push(event);
        }
    }
    assert_eq!(seen, ["started", "paused", "resumed", "stopped"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_and_recordings_are_held_to_the_callers_grants() {
    let secrets = Secrets::new();
    let d = daemon(&secrets, "");
    let alice = user_token("alice", json!({"subscribe":["s/#"], "publish":["s/a/#"]}));
    let bob = user_token("bob", json!({"subscribe":["s/#"], "publish":["s/#"]}));
    // Only filters she may subscribe to.
    let body = json!({"name":"x","topics":["x/#"]}).to_string();
    let (s, v) = post(&api(&d, "/recordings"), Some(&alice), &body).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");

    let id = start(&d, &alice, "mine", &["s/#"]).await["id"]
        .as_u64()
        .unwrap();
    for t in ["s/a/1", "s/b/1", "s/a/2", "s/b/2"] {
        publish(&d, ADMIN, t, "1").await;
    }
    // Others do not see it; the admin does.
    let (s, _) = get(&api(&d, &format!("/recordings/{id}")), Some(&bob)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = get(&api(&d, "/recordings"), Some(&bob)).await;
    assert_eq!(list["recordings"], json!([]));
    let (_, list) = get(&api(&d, "/recordings"), Some(ADMIN)).await;
    assert_eq!(list["recordings"][0]["owner"], "user:alice");
    let (s, _) = post(&api(&d, &format!("/recordings/{id}/stop")), Some(&bob), "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    stop(&d, &alice, id).await;

    // Under a prefix she may publish to nothing: refused outright.
    let (s, v) = replay(&d, &alice, id, json!({"prefix":"elsewhere/"})).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
    // Onto the original topics: s/a/* go out, s/b/* are refused and counted.
    let mut sub = subscribed_as(&d, ADMIN, "s/#").await;
    let (s, r) = replay(&d, &alice, id, json!({"max": true})).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let done = ended(&d, &alice, r["id"].as_u64().unwrap()).await;
    assert_eq!(
        (done["sent"].as_u64(), done["forbidden"].as_u64()),
        (Some(2), Some(2)),
        "{done}"
    );
    let got: Vec<Value> = drain(&mut sub)
        .await
        .into_iter()
        .map(|m| m["topic"].clone())
        .collect();
    assert_eq!(got, [json!("s/a/1"), json!("s/a/2")]);
    // Bob cannot control or see her replay.
    let (s, _) = get(&api(&d, &format!("/replays/{}", r["id"])), Some(&bob)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(
        Method::DELETE,
        &api(&d, &format!("/recordings/{id}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(
        Method::DELETE,
        &api(&d, &format!("/recordings/{id}")),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = get(&api(&d, &format!("/recordings/{id}")), Some(&alice)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Payloads whose exact text matters: spacing, key order, number forms, line breaks,
/// an end-to-end encrypted envelope.
const PAYLOADS: &[&str] = &[
    r#"{"v":"e2e1","iv":"3q2+7w==","ct":"q83vEjRWeJA=","mac":"AAECAwQ="}"#,
    r#"{ "b" : 1.50, "a" : [1e3, -0.0] }"#,
    "{\n  \"multi\": \"line\"\n}",
    r#""naïve ✓ \u00e9""#,
    "12345678901234567890",
];

#[tokio::test(flavor = "multi_thread")]
async fn export_then_import_is_byte_identical_and_replays_the_same_bytes() {
    let secrets = Secrets::new();
    let d = daemon(&secrets, "");
    let id = start(&d, ADMIN, "round trip", &["rt/#"]).await["id"]
        .as_u64()
        .unwrap();
    let mut ws = Raw::connect(&format!("{}?token={ADMIN}", d.ws_url())).await;
    for p in PAYLOADS {
        // Over WebSocket, so the text reaches the Hub exactly as written here.
        ws.send_text(&format!(
            r#"{{"op":"pub","topic":"rt/x","event":"e","data":{p}}}"#
        ))
        .await;
    }
    drain(&mut ws).await;
    stop(&d, ADMIN, id).await;
    let first = export(&d, ADMIN, id).await;
    assert_eq!(first.lines().count(), 1 + PAYLOADS.len(), "{first}");

    let (s, imported) = import(&d, ADMIN, &first).await;
    assert_eq!(s, StatusCode::CREATED, "{imported}");
    assert_eq!(
        (
            imported["imported"].as_bool(),
            imported["messages"].as_u64()
        ),
        (Some(true), Some(PAYLOADS.len() as u64))
    );
    assert_eq!(imported["state"], "stopped");
    let new = imported["id"].as_u64().unwrap();
    assert_ne!(new, id);
    let second = export(&d, ADMIN, new).await;
    assert_eq!(second, first, "export → import → export is byte-identical");

    // Replayed, subscribers get each payload's exact text back.
    let mut sub = subscribed_as(&d, ADMIN, "rt/#").await;
    let (_, r) = replay(&d, ADMIN, new, json!({"max": true})).await;
    for p in PAYLOADS {
        let (frame, _) = raw_msg(&mut sub).await;
        assert_eq!(raw_data(&frame), *p);
    }
    ended(&d, ADMIN, r["id"].as_u64().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_import_names_its_line_and_leaves_nothing_behind() {
    let secrets = Secrets::new();
    let d = daemon(&secrets, "");
    let head = r#"{"format":"switchboard-recording","version":1,"recording":{"name":"n","topics":["a/#"]}}"#;
    let good = r#"{"topic":"a/1","data":{"x":1},"ts":1000,"seq":1,"from":"c1","origin":"ws"}"#;
    let cases = [
        ("", "line 1"),
        ("not json", "line 1"),
        (&*format!("{head}\n{good}\n{{\"topic\":\"a/2\"}}"), "line 3"),
        (
            &*format!("{head}\n{good}\n{}", good.replace("a/1", "a/+")),
            "line 3",
        ),
        (
            &*format!("{head}\n{}", good.replace(r#"{"x":1}"#, "{bad")),
            "line 2",
        ),
        (
            &*format!("{head}\n{}", good.replace(r#""ws""#, r#""carrier pigeon""#)),
            "line 2",
        ),
        (&*head.replace("\"version\":1", "\"version\":2"), "line 1"),
    ];
    for (text, line) in cases {
        let (s, v) = import(&d, ADMIN, text).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{text}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(line), "{message} (wanted {line})");
    }
    let (_, list) = get(&api(&d, "/recordings"), Some(ADMIN)).await;
    assert_eq!(list["recordings"], json!([]));
    // A file with a topic the caller may not subscribe to is refused too.
    let alice = user_token("alice", json!({"subscribe":["b/#"]}));
    let (s, v) = import(&d, &alice, &format!("{head}\n{good}")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = import(&d, ADMIN, &format!("{head}\n{good}\n")).await;
    assert_eq!((s, v["messages"].as_u64()), (StatusCode::CREATED, Some(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_goes_on_after_a_restart_and_after_kill_9() {
    let secrets = Secrets::new();
    let mut d = daemon(&secrets, "");
    let id = start(&d, ADMIN, "long", &["long/#"]).await["id"]
        .as_u64()
        .unwrap();
    for i in 0..5 {
        publish(&d, ADMIN, "long/a", &i.to_string()).await;
    }
    d.restart();
    let (_, v) = get(&api(&d, &format!("/recordings/{id}")), Some(ADMIN)).await;
    assert_eq!(
        (v["state"].as_str(), v["messages"].as_u64()),
        (Some("recording"), Some(5))
    );
    for i in 0..50 {
        publish(&d, ADMIN, "long/b", &i.to_string()).await;
    }
    // Let sled's background flush (every 100 ms) reach the disk, then kill.
    tokio::time::sleep(Duration::from_millis(400)).await;
    d.signal("KILL");
    d.restart();
    let (_, v) = get(&api(&d, &format!("/recordings/{id}")), Some(ADMIN)).await;
    assert_eq!(v["state"], "recording", "{v}");
    let kept = v["messages"].as_u64().unwrap();
    assert!((5..=55).contains(&kept), "{v}");
    // What the API reports is what is stored, every message readable.
    let text = export(&d, ADMIN, id).await;
    assert_eq!(text.lines().count() as u64, 1 + kept);
    let sum: u64 = v["by_topic"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(sum, kept);
    assert!(!d.logs().contains("unreadable"), "{}", d.logs());
    publish(&d, ADMIN, "long/c", "1").await;
    let v = stop(&d, ADMIN, id).await;
    assert_eq!(v["messages"].as_u64(), Some(kept + 1));
}

/// A message recorded alone, with nothing after it to fill a burst, wakes the writer
/// and is stored at once: a SIGKILL one flush interval later (100 ms; the test waits
/// five) loses none of them, each sent when the writer had already gone idle.
#[tokio::test(flavor = "multi_thread")]
async fn lone_recorded_messages_survive_a_sigkill_after_the_flush_interval() {
    let secrets = Secrets::new();
    let mut d = daemon(&secrets, "[store]\nflush_interval = \"100ms\"\n");
    let id = start(&d, ADMIN, "lone", &["lone/#"]).await["id"]
        .as_u64()
        .unwrap();
    for i in 0..3 {
        publish(&d, ADMIN, "lone/a", &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.signal("KILL");
    d.restart();
    let (_, v) = get(&api(&d, &format!("/recordings/{id}")), Some(ADMIN)).await;
    assert_eq!(v["messages"].as_u64(), Some(3), "{v}");
    let text = export(&d, ADMIN, id).await;
    let values: Vec<Value> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["data"].clone())
        .collect();
    assert_eq!(values, [json!(0), json!(1), json!(2)], "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_record_op_starts_and_stops_a_recording_over_websocket() {
    let secrets = Secrets::new();
    let d = daemon(&secrets, "");
    let reader = user_token("reader", json!({"subscribe":["w/#"], "publish":["w/#"]}));
    let mut ws = Raw::connect(&format!("{}?token={reader}", d.ws_url())).await;
    let ok = ws
        .request(json!({"op":"record","action":"start","name":"ws","notes":"n","topics":["w/#"]}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(ok["recording"]["owner"], "user:reader");
    let id = ok["recording"]["id"].as_u64().unwrap();
    for i in 0..3 {
        let r = ws.request(json!({"op":"pub","topic":"w/1","data":i})).await;
        assert_eq!(r["op"], "ok");
    }
    let ok = ws
        .request(json!({"op":"record","action":"stop","recording":id}))
        .await;
    assert_eq!(
        (
            ok["recording"]["state"].as_str(),
            ok["recording"]["messages"].as_u64()
        ),
        (Some("stopped"), Some(3)),
        "{ok}"
    );
    let no = ws
        .request(json!({"op":"record","action":"start","name":"x","topics":["z/#"]}))
        .await;
    assert_eq!(
        (no["op"].as_str(), no["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{no}"
    );
    let no = ws
        .request(json!({"op":"record","action":"stop","recording":999999}))
        .await;
    assert_eq!(no["code"], "not_found", "{no}");
}

fn cli(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::BIN)
        .args(args)
        .env("SWITCHBOARD_URL", d.ws_url())
        .env("SWITCHBOARD_TOKEN", ADMIN)
        .output()
        .expect("run switchboard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_json(d: &Daemon, args: &[&str]) -> Value {
    let (ok, out, err) = cli(d, args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_records_exports_imports_and_replays() {
    let secrets = Secrets::new();
    let d = daemon(&secrets, "");
    let rec = cli_json(
        &d,
        &["record", "start", "--name", "cli", "--notes", "n", "cli/#"],
    );
    let id = rec["id"].to_string();
    publish(&d, ADMIN, "cli/a", r#"{"k": 1}"#).await;
    publish(&d, ADMIN, "cli/b", "2").await;
    let stopped = cli_json(&d, &["record", "stop", &id]);
    assert_eq!(stopped["messages"], 2);
    let (ok, list, _) = cli(&d, &["record", "list"]);
    assert!(
        ok && list.starts_with(&format!("{id}\tstopped\t2\t")),
        "{list}"
    );
    assert_eq!(
        cli_json(&d, &["record", "show", &id])["by_topic"]["cli/a"],
        1
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rec.jsonl");
    let file = file.to_str().unwrap();
    let (ok, _, err) = cli(&d, &["record", "export", &id, "-o", file]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(file).unwrap(),
        export(&d, ADMIN, id.parse().unwrap()).await
    );
    let imported = cli_json(&d, &["record", "import", file]);
    assert_eq!(imported["messages"], 2);

    let mut sub = subscribed_as(&d, ADMIN, "p/#").await;
    let r = cli_json(
        &d,
        &[
            "replay",
            &imported["id"].to_string(),
            "--max",
            "--prefix",
            "p/",
        ],
    );
    assert_eq!(raw_data(&raw_msg(&mut sub).await.0), r#"{"k": 1}"#);
    let rid = r["id"].to_string();
    ended(&d, ADMIN, r["id"].as_u64().unwrap()).await;
    assert_eq!(
        cli_json(&d, &["replay", "status", &rid])["state"],
        "finished"
    );
    let (ok, _, err) = cli(&d, &["replay", "pause", &rid]);
    assert!(!ok && err.contains("409"), "{err}");
    let (ok, _, err) = cli(&d, &["replay", "424242"]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = cli(&d, &["record", "delete", &id]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&d, &["record", "show", &id]);
    assert!(!ok && err.contains("no recording"), "{err}");
}
