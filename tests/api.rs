//! The HTTP API against the real daemon with a real HTTP client: every endpoint, bad
//! input of every kind, and the same API carried over an open WebSocket.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::creds::{user_token, Secrets, ADMIN};
use common::http::{api, call, code, get, post, subscribed_as};
use common::{Daemon, Raw};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A daemon that requires credentials, with presence on `room/+`.
fn daemon(secrets: &Secrets) -> Daemon {
    Daemon::start(&secrets.config(""))
}

async fn admin_ws(d: &Daemon) -> Raw {
    Raw::connect(&format!("{}?token={ADMIN}", d.ws_url())).await
}

#[tokio::test]
async fn publish_reaches_subscribers_and_idempotency_keys_drop_repeats() {
    let secrets = Secrets::new();
    let d = daemon(&secrets);
    let mut sub = subscribed_as(&d, ADMIN, "orders/#").await;

    let (s, v) = post(
        &api(&d, "/publish"),
        Some(ADMIN),
        r#"{"topic":"orders/1","event":"created","data":{"n":1}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["seq"].as_u64(), v["delivered"].as_u64()),
        (Some(1), Some(1))
    );
    let m = sub.next_msg().await;
    assert_eq!(
        (m["topic"].as_str(), m["event"].as_str()),
        (Some("orders/1"), Some("created"))
    );
    assert_eq!(m["data"], json!({"n":1}));
    assert_eq!(m["from"], "http:admin");

    // The same key twice, by body field and by header: published once.
    let keyed = r#"{"topic":"orders/2","data":"a","idempotency_key":"k-1"}"#;
    let (_, first) = post(&api(&d, "/publish"), Some(ADMIN), keyed).await;
    let (s, again) = post(&api(&d, "/publish"), Some(ADMIN), keyed).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["seq"], first["seq"]);
    assert!(first.get("duplicate").is_none(), "{first}");
    let by_header = reqwest::Client::new()
        .post(api(&d, "/publish"))
        .bearer_auth(ADMIN)
        .header("Idempotency-Key", "k-1")
        .header("content-type", "application/json")
        .body(r#"{"topic":"orders/2","data":"b"}"#)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(by_header["duplicate"], true, "the header is the same key");
    // Another caller's identical key is its own.
    let alice = user_token("alice", json!({"publish":["orders/#"]}));
    let (_, theirs) = post(&api(&d, "/publish"), Some(&alice), keyed).await;
    assert!(theirs.get("duplicate").is_none(), "{theirs}");

    post(
        &api(&d, "/publish"),
        Some(ADMIN),
        r#"{"topic":"orders/end"}"#,
    )
    .await;
    let got: Vec<String> = [
        sub.next_msg().await,
        sub.next_msg().await,
        sub.next_msg().await,
    ]
    .iter()
    .map(|m| format!("{}={}", m["topic"].as_str().unwrap(), m["data"]))
    .collect();
    assert_eq!(got, ["orders/2=\"a\"", "orders/2=\"a\"", "orders/end=null"]);
}

#[tokio::test]
async fn batches_publish_in_order_and_report_each_message() {
    let secrets = Secrets::new();
    let d = daemon(&secrets);
    let mut sub = subscribed_as(&d, ADMIN, "b/#").await;
    let writer = user_token("writer", json!({"publish":["b/ok/#"]}));
    let body = json!({"messages":[
        {"topic":"b/ok/1","data":1},
        {"topic":"b/other","data":2},
        {"topic":"b/ok/+","data":3},
        {"topic":"b/ok/2","data":4,"idempotency_key":"x"},
        {"topic":"b/ok/2","data":5,"idempotency_key":"x"},
    ]});
    let (s, v) = post(&api(&d, "/publish/batch"), Some(&writer), &body.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["seq"], 1);
    assert_eq!(code(&results[1]), "forbidden");
    assert_eq!(code(&results[2]), "invalid_topic");
    assert_eq!(results[3]["seq"], 1);
    assert_eq!(results[4]["duplicate"], true);
    assert_eq!(sub.next_msg().await["data"], 1);
    assert_eq!(sub.next_msg().await["data"], 4);
    assert!(sub.try_recv(Duration::from_millis(200)).await.is_none());

    let too_many = json!({"messages": vec![json!({"topic":"b/ok/1"}); 1001]});
    let (s, v) = post(
        &api(&d, "/publish/batch"),
        Some(&writer),
        &too_many.to_string(),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "too_large"));
    let huge = json!({"messages":[{"topic":"b/ok/1","data":"x".repeat(2 << 20)}]});
    let (s, v) = post(&api(&d, "/publish/batch"), Some(&writer), &huge.to_string()).await;
    assert_eq!((s, code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_stable_codes() {
    let secrets = Secrets::new();
    let d = daemon(&secrets);
    let publish = api(&d, "/publish");
    let cases: &[(&str, StatusCode, &str)] = &[
        ("{not json", StatusCode::BAD_REQUEST, "bad_json"),
        ("", StatusCode::BAD_REQUEST, "bad_json"),
        (r#"{"topic":5}"#, StatusCode::BAD_REQUEST, "bad_request"),
        (r#"{"data":1}"#, StatusCode::BAD_REQUEST, "bad_request"),
        (
            r#"{"topic":"a","colour":"red"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"topic":"a","retain":"yes"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"topic":"a/#"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_topic",
        ),
        (
            r#"{"topic":"$devices/x"}"#,
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        ("[1,2]", StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (body, status, want) in cases {
        let (s, v) = post(&publish, Some(ADMIN), body).await;
        assert_eq!((s, code(&v)), (*status, *want), "body {body}: {v}");
    }
    let big = json!({"topic":"a","data":"x".repeat(70_000)}).to_string();
    let (s, v) = post(&publish, Some(ADMIN), &big).await;
    assert_eq!((s, code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));

    // Credentials: missing, malformed, wrong.
    let (s, v, headers) = call(
        reqwest::Method::POST,
        &publish,
        None,
        Some(r#"{"topic":"a"}"#),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert_eq!(headers["www-authenticate"], "Bearer");
    for wrong in ["not-a-token", "sbk_000000000000_nope", "a.b.c"] {
        let (s, v) = post(&publish, Some(wrong), r#"{"topic":"a"}"#).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{wrong}"
        );
    }
    let basic = reqwest::Client::new()
        .post(&publish)
        .basic_auth("admin", Some(ADMIN))
        .header("content-type", "application/json")
        .body(r#"{"topic":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);

    // Paths and methods.
    let (s, v) = get(&api(&d, "/nothing/here"), Some(ADMIN)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v, headers) = call(reqwest::Method::PUT, &publish, Some(ADMIN), Some("{}")).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert_eq!(headers["allow"], "POST");
    let (s, v) = get(&api(&d, "/presence?nope=1"), Some(ADMIN)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{v}"
    );
    let (s, v) = get(&api(&d, "/presence"), Some(ADMIN)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{v}"
    );
    let (s, v) = post(
        &api(&d, "/send"),
        Some(ADMIN),
        r#"{"client":"a","user":"b"}"#,
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    let (s, v) = post(&api(&d, "/send"), Some(ADMIN), r#"{"user":"nobody"}"#).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "no_recipient"));

    // None of it published anything, and the daemon still serves.
    let (s, v) = get(&api(&d, "/info"), Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["name"], "switchboard");
    assert_eq!(d.healthz().await["published"], 0);
}

#[tokio::test]
async fn topics_presence_and_info() {
    let secrets = Secrets::new();
    let d = daemon(&secrets);
    let _a = subscribed_as(&d, ADMIN, "room/1").await;
    let _b = subscribed_as(&d, ADMIN, "room/1").await;
    let _c = subscribed_as(&d, ADMIN, "secret/+").await;
    let (s, v) = get(&api(&d, "/topics"), Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["topics"],
        json!([{"filter":"room/1","subscribers":2},{"filter":"secret/+","subscribers":1}])
    );
    let (_, v) = get(&api(&d, "/topics?prefix=sec"), Some(ADMIN)).await;
    assert_eq!(v["topics"].as_array().unwrap().len(), 1);
    // A caller sees only filters it could subscribe to itself.
    let reader = user_token("reader", json!({"subscribe":["room/#"]}));
    let (_, v) = get(&api(&d, "/topics"), Some(&reader)).await;
    assert_eq!(v["topics"], json!([{"filter":"room/1","subscribers":2}]));

    let (s, v) = get(&api(&d, "/presence?topic=room/1"), Some(&reader)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    let (s, v) = get(&api(&d, "/presence?topic=secret/1"), Some(&reader)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));

    let (s, v) = get(&api(&d, "/info"), Some(&reader)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["limits"]["max_batch_messages"], 1000);
    assert_eq!(v["limits"]["max_message_size"], 65536);
    assert_eq!(v["mqtt"], true);
}

#[tokio::test]
async fn admins_list_and_disconnect_clients() {
    let secrets = Secrets::new();
    let d = daemon(&secrets);
    let alice = user_token("alice", json!({"subscribe":["room/#"]}));
    let mut a = subscribed_as(&d, &alice, "room/1").await;
    let _other = admin_ws(&d).await;

    let (s, v) = get(&api(&d, "/clients?user=alice"), Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let clients = v["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["id"], a.client_id.as_str());
    assert_eq!(clients[0]["credential"], "token");
    assert_eq!(clients[0]["subscriptions"], json!(["room/1"]));
    assert!(clients[0]["expires_at"].as_u64().is_some());
    let (_, all) = get(&api(&d, "/clients"), Some(ADMIN)).await;
    assert_eq!(all["clients"].as_array().unwrap().len(), 2);

    // Only the admin may.
    let (s, v) = get(&api(&d, "/clients"), Some(&alice)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let url = api(&d, &format!("/clients/{}", a.client_id));
    let (s, _, _) = call(reqwest::Method::DELETE, &url, Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, v) = get(&url, Some(ADMIN)).await;
    assert_eq!((s, v["user"].as_str()), (StatusCode::OK, Some("alice")));
    let (s, _, _) = call(reqwest::Method::DELETE, &url, Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(a.close_code(Duration::from_secs(5)).await, Some(4005));
    d.wait_for_connections(1, Duration::from_secs(5)).await;
    let (s, v) = get(&url, Some(ADMIN)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}

/// Sends a carried request and waits for the reply with its id.
async fn carried(ws: &mut Raw, request: Value) -> Value {
    let id = request["id"].clone();
    ws.send(request).await;
    loop {
        let frame = ws.recv().await;
        if frame["id"] == id {
            return frame;
        }
    }
}

#[tokio::test]
async fn http_requests_ride_the_websocket_with_the_connections_identity() {
    let secrets = Secrets::new();
    let d = daemon(&secrets);
    let mut watcher = subscribed_as(&d, ADMIN, "w/#").await;
    let alice = user_token(
        "alice",
        json!({"publish":["w/alice/#"],"subscribe":["w/#"]}),
    );
    let mut ws = Raw::connect(&format!("{}?token={alice}", d.ws_url())).await;

    let reply = carried(
        &mut ws,
        json!({"op":"http","id":"p1","method":"POST","path":"/api/v1/publish",
               "body":{"topic":"w/alice/1","data":{"via":"ws"}}}),
    )
    .await;
    assert_eq!(reply["op"], "http");
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(reply["body"]["seq"], 1);
    assert!(reply["headers"]["content-type"]
        .as_str()
        .unwrap()
        .starts_with("application/json"));
    let m = watcher.next_msg().await;
    assert_eq!(
        (m["data"].clone(), m["from"].as_str()),
        (json!({"via":"ws"}), Some("http:alice"))
    );

    // Her grants, not more: an Authorization header in the carried request is ignored.
    let reply = carried(
        &mut ws,
        json!({"op":"http","id":2,"method":"POST","path":"/api/v1/publish",
               "headers":{"authorization":format!("Bearer {ADMIN}")},
               "body":{"topic":"w/bob/1"}}),
    )
    .await;
    assert_eq!(reply["status"], 403, "{reply}");
    assert_eq!(reply["body"]["error"]["code"], "forbidden");
    let reply = carried(
        &mut ws,
        json!({"op":"http","id":3,"method":"GET","path":"/api/v1/clients"}),
    )
    .await;
    assert_eq!(reply["status"], 403);

    // Not found, a query string, a bad method, no id.
    let reply = carried(
        &mut ws,
        json!({"op":"http","id":4,"method":"GET","path":"/api/v1/nope"}),
    )
    .await;
    assert_eq!(
        (
            reply["status"].as_u64(),
            reply["body"]["error"]["code"].as_str()
        ),
        (Some(404), Some("not_found"))
    );
    let reply = carried(
        &mut ws,
        json!({"op":"http","id":5,"method":"GET","path":"/api/v1/topics?prefix=w"}),
    )
    .await;
    assert_eq!(reply["body"]["topics"][0]["filter"], "w/#", "{reply}");
    let reply = carried(
        &mut ws,
        json!({"op":"http","id":6,"method":"GE T","path":"/"}),
    )
    .await;
    assert_eq!(
        (reply["op"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    ws.send(json!({"op":"http","method":"GET","path":"/api/v1/info"}))
        .await;
    let reply = ws.recv().await;
    assert_eq!(
        (reply["op"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    // Any route of the listener, not only the API.
    let reply = carried(
        &mut ws,
        json!({"op":"http","id":7,"method":"GET","path":"/healthz"}),
    )
    .await;
    assert_eq!(reply["status"], 200);
    assert_eq!(reply["body"]["status"], "ok");
}

#[tokio::test]
async fn carried_responses_that_are_not_json_come_back_as_text() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config("[metrics]\npublic = false\n"));
    let mut admin = admin_ws(&d).await;
    let reply = carried(
        &mut admin,
        json!({"op":"http","id":1,"method":"GET","path":"/metrics"}),
    )
    .await;
    assert_eq!(
        reply["status"], 200,
        "the connection's admin identity is the caller: {reply}"
    );
    let text = reply["body"].as_str().expect("a text body");
    assert!(
        text.contains("switchboard_connections{transport=\"ws\"} 1"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));
    let alice = user_token("alice", json!({"subscribe":["a/#"]}));
    let mut ws = Raw::connect(&format!("{}?token={alice}", d.ws_url())).await;
    let reply = carried(
        &mut ws,
        json!({"op":"http","id":2,"method":"GET","path":"/metrics"}),
    )
    .await;
    assert_eq!(reply["status"], 403, "{reply}");
}

#[tokio::test]
async fn a_hundred_carried_requests_in_flight_at_once() {
    let secrets = Secrets::new();
    let d = daemon(&secrets);
    let mut watcher = subscribed_as(&d, ADMIN, "many/#").await;
    let mut ws = admin_ws(&d).await;
    // All sent before any reply is read.
    let frames: Vec<Message> = (0..100)
        .map(|i| {
            let request = json!({"op":"http","id":format!("r{i}"),"method":"POST",
                "path":"/api/v1/publish","body":{"topic":format!("many/{}", i % 10),"data":i}});
            Message::text(request.to_string())
        })
        .collect();
    use futures_util::SinkExt;
    for f in frames {
        ws.ws.feed(f).await.unwrap();
    }
    ws.ws.flush().await.unwrap();
    let mut replies: HashMap<String, Value> = HashMap::new();
    while replies.len() < 100 {
        let frame = ws.recv().await;
        if frame["op"] == "http" {
            let id = frame["id"].as_str().unwrap().to_owned();
            assert!(replies.insert(id, frame).is_none(), "one reply per id");
        }
    }
    assert!(replies.values().all(|r| r["status"] == 200));
    // Ten topics, ten messages each: sequence numbers 1..=10 on every topic.
    let mut seqs: Vec<u64> = replies
        .values()
        .map(|r| r["body"]["seq"].as_u64().unwrap())
        .collect();
    seqs.sort();
    let want: Vec<u64> = (1..=10).flat_map(|s| std::iter::repeat_n(s, 10)).collect();
    assert_eq!(seqs, want);
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(watcher.next_msg().await["data"].as_u64().unwrap());
    }
    got.sort();
    assert_eq!(got, (0..100).collect::<Vec<u64>>());
}

#[tokio::test]
async fn every_documented_operation_exists() {
    let secrets = Secrets::new();
    let d = daemon(&secrets);
    let (s, doc) = get(&api(&d, "/openapi.json"), None).await;
    assert_eq!(s, StatusCode::OK, "the document is public");
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 8, "{:?}", paths.keys());
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = path.replace("{id}", "x").replace("{name}", "x");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (s, v, _) = call(m, &api(&d, &concrete), Some(ADMIN), Some("{}")).await;
            let fallback = (s == StatusCode::NOT_FOUND && v["error"]["message"] == "no such path")
                || s == StatusCode::METHOD_NOT_ALLOWED;
            assert!(
                !fallback,
                "{method} {path} is documented but not served: {s} {v}"
            );
        }
    }
}
