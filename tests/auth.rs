//! Authentication and permissions against the real daemon: tokens presented every way
//! a client can, forged and broken tokens, per-topic permissions over WebSocket and
//! HTTP, refresh and expiry, origins, rate limits, and API key revocation.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::creds::{now, sign, token, user_token, Secrets, ADMIN, SECRET};
use common::{Daemon, Raw, BIN};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket with optional headers; returns the socket without reading.
async fn open(url: &str, headers: &[(&'static str, &str)]) -> Ws {
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        request
            .headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// Every text frame until the close, and the close code.
async fn frames_until_close(ws: &mut Ws, wait: Duration) -> (Vec<Value>, Option<u16>) {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                frames.push(serde_json::from_str(t.as_str()).unwrap())
            }
            Ok(Some(Ok(Message::Close(f)))) => return (frames, f.map(|f| f.code.into())),
            Ok(Some(Ok(_))) => {}
            _ => return (frames, None),
        }
    }
}

fn wrap(ws: Ws, welcome: &Value) -> Raw {
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    Raw {
        ws,
        client_id: welcome["client"].as_str().unwrap().to_owned(),
    }
}

async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed: {f:?}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no frame: {other:?}"),
        }
    }
}

/// Connects with `?token=` and returns the served connection.
async fn connect_as(d: &Daemon, credential: &str) -> Raw {
    let mut ws = open(&format!("{}?token={credential}", d.ws_url()), &[]).await;
    let welcome = next_frame(&mut ws).await;
    wrap(ws, &welcome)
}

#[tokio::test]
async fn broken_tokens_are_refused_with_a_reason_and_close_4001() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let claims = json!({"sub":"alice","exp": now() + 3600, "subscribe":["#"]});
    let good = token(claims.clone());
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let tampered_claims = URL_SAFE_NO_PAD
        .encode(json!({"sub":"mallory","exp": now() + 3600, "subscribe":["#"]}).to_string());
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let cases = [
        (
            "forged",
            sign(
                &json!({"alg":"HS256"}),
                &claims,
                "another-secret-another-secret-1234",
            ),
        ),
        ("expired", token(json!({"sub":"alice","exp": now() - 120}))),
        (
            "not yet valid",
            token(json!({"sub":"alice","exp": now() + 3600, "nbf": now() + 600})),
        ),
        ("alg none", none_alg),
        ("tampered", format!("{head}.{tampered_claims}.{sig}")),
        (
            "wrong algorithm",
            sign(&json!({"alg":"HS512"}), &claims, SECRET),
        ),
        ("garbage", "not.a.token".to_owned()),
        (
            "unknown api key",
            "sbk_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        ),
    ];
    for (what, credential) in cases {
        let mut ws = open(&format!("{}?token={credential}", d.ws_url()), &[]).await;
        let (frames, code) = frames_until_close(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(code, Some(4001), "{what}: {frames:?}");
        assert_eq!(frames.len(), 1, "{what}: {frames:?}");
        assert_eq!(frames[0]["code"], "unauthorized", "{what}");
        let message = frames[0]["message"].as_str().unwrap();
        assert!(
            !message.contains(&credential),
            "{what}: the token is echoed"
        );
    }
    // The same claims, correctly signed, are accepted.
    let raw = connect_as(&d, &good).await;
    assert!(!raw.client_id.is_empty());
    let health = d.healthz().await;
    assert!(
        health["auth"]["bad_credentials"].as_u64().unwrap() >= 8,
        "{health}"
    );
    assert!(
        !d.logs().contains(sig),
        "a token signature appeared in the logs"
    );
}

#[tokio::test]
async fn credentials_by_header_query_or_first_frame() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let t = user_token("alice", json!({"subscribe":["chat/#"]}));

    let mut ws = open(&d.ws_url(), &[("authorization", &format!("Bearer {t}"))]).await;
    let welcome = next_frame(&mut ws).await;
    assert_eq!(welcome["op"], "welcome");
    assert_eq!(welcome["user"], "alice");
    assert!(welcome["expires_at"].as_u64().unwrap() > now());

    let raw = connect_as(&d, &t).await;
    drop(raw);

    // No credential: the first frame must be `auth`, answered before `welcome`.
    let mut ws = open(&d.ws_url(), &[]).await;
    ws.send(Message::text(
        json!({"op":"auth","id":1,"token":t}).to_string(),
    ))
    .await
    .unwrap();
    let ok = next_frame(&mut ws).await;
    assert_eq!(
        (ok["op"].clone(), ok["id"].clone()),
        (json!("ok"), json!(1)),
        "{ok}"
    );
    let welcome = next_frame(&mut ws).await;
    assert_eq!(welcome["user"], "alice", "{welcome}");

    // Anything else first is refused.
    let mut ws = open(&d.ws_url(), &[]).await;
    ws.send(Message::text(
        json!({"op":"sub","id":2,"topic":"chat/x"}).to_string(),
    ))
    .await
    .unwrap();
    let (frames, code) = frames_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(code, Some(4001));
    assert_eq!(frames[0]["code"], "unauthorized");
    assert_eq!(frames[0]["id"], 2);

    // Silence past the auth timeout.
    let mut ws = open(&d.ws_url(), &[]).await;
    let (frames, code) = frames_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!((frames.len(), code), (0, Some(4002)));
    assert_eq!(d.healthz().await["auth"]["auth_timeouts"], 1);

    // The admin token is a credential too.
    let mut admin = connect_as(&d, ADMIN).await;
    let ok = admin
        .request(json!({"op":"sub","topic":"$devices/#"}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
}

#[tokio::test]
async fn permissions_apply_to_every_websocket_request_and_the_connection_stays() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let alice = user_token(
        "alice",
        json!({"publish":["chat/{sub}/#"], "subscribe":["chat/#"], "send":["bob"]}),
    );
    let bob = user_token("bob", json!({"subscribe":["room/+"]}));
    let carol = user_token("carol", json!({}));
    let mut a = connect_as(&d, &alice).await;
    let mut b = connect_as(&d, &bob).await;
    let _c = connect_as(&d, &carol).await;

    let denied = [
        json!({"op":"pub","topic":"chat/bob/x","data":1}),
        json!({"op":"pub","topic":"$devices/x","data":1}),
        json!({"op":"sub","topic":"news/#"}),
        json!({"op":"sub","topic":"#"}),
        json!({"op":"presence","topic":"room/1"}),
        json!({"op":"send","user":"carol","data":"hi"}),
    ];
    for request in denied {
        let reply = a.request(request.clone()).await;
        assert_eq!(reply["code"], "forbidden", "{request} → {reply}");
    }
    // Still connected, and what is allowed works.
    let ok = a.request(json!({"op":"sub","topic":"chat/+/x"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let ok = a
        .request(json!({"op":"pub","topic":"chat/alice/x","data":1}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let msg = a.recv().await;
    assert_eq!(msg["topic"], "chat/alice/x");
    let ok = a
        .request(json!({"op":"send","user":"bob","data":"hi"}))
        .await;
    assert_eq!(ok["delivered"], 1, "{ok}");
    let dm = b.recv().await;
    assert_eq!(
        (dm["op"].clone(), dm["from_user"].clone()),
        (json!("dm"), json!("alice"))
    );
    // By client id, the recipient's user decides.
    let reply = b
        .request(json!({"op":"send","client": a.client_id, "data":"x"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    // Bob may see presence where he may subscribe.
    let ok = b.request(json!({"op":"presence","topic":"room/1"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(d.healthz().await["forbidden"], 7);
}

/// A request to the daemon's HTTP API: (status, JSON body).
async fn http(
    d: &Daemon,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Asserts an API request is refused with this status and error code.
async fn refused(
    d: &Daemon,
    (method, path): (&str, &str),
    bearer: Option<&str>,
    body: Option<&str>,
    want: (u16, &str),
) {
    let (status, reply) = http(d, method, path, bearer, body).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str().unwrap_or("")),
        want,
        "{method} {path}: {reply}"
    );
}

const PUBLISH: (&str, &str) = ("POST", "/api/v1/publish");

#[tokio::test]
async fn permissions_apply_over_http() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let alice = user_token("alice", json!({"publish":["chat/#"], "send":["bob"]}));
    let alice = Some(alice.as_str());
    let mut watcher = connect_as(&d, ADMIN).await;
    watcher.request(json!({"op":"sub","topic":"#"})).await;

    let publish = |topic: &str| json!({"topic": topic, "data": {"n": 1}}).to_string();
    let (status, body) = http(
        &d,
        "POST",
        "/api/v1/publish",
        alice,
        Some(&publish("chat/a")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let msg = watcher.recv().await;
    assert_eq!(
        (msg["topic"].clone(), msg["from"].clone()),
        (json!("chat/a"), json!("http:alice"))
    );

    let forbidden = (403, "forbidden");
    refused(&d, PUBLISH, alice, Some(&publish("news/a")), forbidden).await;
    let carol = r#"{"user":"carol","data":1}"#;
    refused(&d, ("POST", "/api/v1/send"), alice, Some(carol), forbidden).await;
    let presence = ("GET", "/api/v1/presence?topic=room/1");
    refused(&d, presence, alice, None, forbidden).await;

    // Missing and bad credentials; bad bodies.
    let unauthorized = (401, "unauthorized");
    refused(&d, PUBLISH, None, Some(&publish("chat/a")), unauthorized).await;
    let forged = sign(
        &json!({"alg":"HS256"}),
        &json!({"sub":"alice","exp":now()+60}),
        "x".repeat(40).as_str(),
    );
    refused(
        &d,
        PUBLISH,
        Some(&forged),
        Some(&publish("chat/a")),
        unauthorized,
    )
    .await;
    refused(&d, PUBLISH, alice, Some("{nope"), (400, "bad_json")).await;
    refused(
        &d,
        PUBLISH,
        alice,
        Some(r#"{"topic":7}"#),
        (400, "bad_request"),
    )
    .await;
    let huge = json!({"topic":"chat/a","data":"x".repeat(70_000)}).to_string();
    let (status, _) = http(&d, "POST", "/api/v1/publish", alice, Some(&huge)).await;
    assert_eq!(status, 413);
    // Nothing refused reached the subscriber.
    assert!(watcher.try_recv(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn refresh_extends_a_connection_and_expiry_closes_it() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let short = |sub: &str, subscribe: Value| {
        token(json!({"sub": sub, "exp": now() + 2, "subscribe": subscribe}))
    };
    let mut kept = connect_as(&d, &short("alice", json!(["a/#", "b/#"]))).await;
    let mut lapsed = connect_as(&d, &short("bob", json!(["a/#"]))).await;
    for f in ["a/1", "b/1"] {
        let ok = kept.request(json!({"op":"sub","topic":f})).await;
        assert_eq!(ok["op"], "ok");
    }
    // Another user's token cannot take over the connection.
    let reply = kept
        .request(json!({"op":"refresh","token": user_token("bob", json!({}))}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = kept
        .request(json!({"op":"refresh","token": "garbage"}))
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    // A fresh token with narrower grants: the lost subscription is dropped and said so.
    let fresh = token(json!({"sub":"alice","exp": now() + 3600, "subscribe":["a/#"]}));
    let reply = kept.request(json!({"op":"refresh","token": fresh})).await;
    assert_eq!(reply["op"], "ok", "{reply}");
    assert_eq!(reply["unsubscribed"], json!(["b/1"]));
    assert!(reply["expires_at"].as_u64().unwrap() > now() + 3000);

    assert_eq!(lapsed.close_code(Duration::from_secs(6)).await, Some(4003));
    // The refreshed connection outlives its first token.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok = kept.request(json!({"op":"ping"})).await;
    assert_eq!(ok["op"], "ok");
    assert_eq!(d.healthz().await["auth"]["expired_closes"], 1);
}

#[tokio::test]
async fn browser_origins_are_checked_on_upgrade() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let t = user_token("alice", json!({}));
    let url = format!("{}?token={t}", d.ws_url());
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static("https://evil.example"));
    let refused = tokio_tungstenite::connect_async(request).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut ws = open(&url, &[("origin", "https://app.example.com")]).await;
    assert_eq!(next_frame(&mut ws).await["op"], "welcome");
    assert_eq!(d.healthz().await["auth"]["origins_refused"], 1);
}

#[tokio::test]
async fn publish_rate_is_limited_per_connection_then_abusers_are_closed() {
    let secrets = Secrets::new();
    let d = Daemon::start(
        &secrets.config("[ws]\npublish_rate = 5\npublish_burst = 5\nrate_limit_strikes = 20\n"),
    );
    let t = user_token("alice", json!({"publish":["t/#"], "subscribe":["t/#"]}));
    let mut abuser = connect_as(&d, &t).await;
    let mut polite = connect_as(&d, &t).await;
    for i in 0..30 {
        abuser
            .send(json!({"op":"pub","id":i,"topic":"t/a","data":i}))
            .await;
    }
    let (frames, code) = frames_until_close(&mut abuser.ws, Duration::from_secs(5)).await;
    let ok = frames.iter().filter(|f| f["op"] == "ok").count();
    let limited = frames
        .iter()
        .filter(|f| f["code"] == "rate_limited")
        .count();
    assert!((5..=6).contains(&ok), "{ok} accepted: {frames:?}");
    assert_eq!(limited, 20, "{frames:?}");
    assert_eq!(code, Some(4008));
    // Another connection of the same user was never limited.
    for i in 0..3 {
        let reply = polite
            .request(json!({"op":"pub","topic":"t/b","data":i}))
            .await;
        assert_eq!(reply["op"], "ok", "{reply}");
    }
    let health = d.healthz().await;
    assert_eq!(health["auth"]["rate_limited"], 20, "{health}");
    assert_eq!(health["auth"]["rate_limit_closes"], 1, "{health}");
}

#[tokio::test]
async fn a_token_can_limit_its_own_rate_and_subscriptions() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let t = user_token(
        "alice",
        // Subscriptions draw on the same rate as publishes: a burst of three covers the
        // two `sub`s and the first `pub`.
        json!({"publish":["#"], "subscribe":["#"], "limits":{"publish_rate":1,"publish_burst":3,"max_subscriptions":1}}),
    );
    let mut a = connect_as(&d, &t).await;
    assert_eq!(a.request(json!({"op":"sub","topic":"x"})).await["op"], "ok");
    let reply = a.request(json!({"op":"sub","topic":"y"})).await;
    assert_eq!(reply["code"], "too_many_subscriptions", "{reply}");
    assert_eq!(
        a.request(json!({"op":"pub","topic":"x","data":1})).await["op"],
        "ok"
    );
    let reply = a.request(json!({"op":"pub","topic":"x","data":2})).await;
    assert_eq!(reply["code"], "rate_limited", "{reply}");
}

fn apikey(args: &[&str], config: &Path) -> String {
    let out = std::process::Command::new(BIN)
        .arg("apikey")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn revoking_an_api_key_closes_its_live_connections() {
    let secrets = Secrets::new();
    let config = secrets.config("");
    let config_path = secrets.path("cli.toml");
    std::fs::write(&config_path, &config).unwrap();
    let key = apikey(
        &["create", "ingest", "--publish", "sensors/#"],
        &config_path,
    );
    let other = apikey(&["create", "other", "--publish", "sensors/#"], &config_path);
    let d = Daemon::start(&config);

    let mut live = connect_as(&d, &key).await;
    let mut unaffected = connect_as(&d, &other).await;
    let ok = live
        .request(json!({"op":"pub","topic":"sensors/1","data":1}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let reply = live
        .request(json!({"op":"pub","topic":"other/1","data":1}))
        .await;
    assert_eq!(reply["code"], "forbidden");
    let (status, _) = http(
        &d,
        "POST",
        "/api/v1/publish",
        Some(&key),
        Some(r#"{"topic":"sensors/2"}"#),
    )
    .await;
    assert_eq!(status, 200);

    let id = key.split('_').nth(1).unwrap();
    apikey(&["revoke", id], &config_path);
    assert_eq!(live.close_code(Duration::from_secs(5)).await, Some(4004));
    let body = Some(r#"{"topic":"sensors/2"}"#);
    refused(&d, PUBLISH, Some(&key), body, (401, "unauthorized")).await;
    let mut ws = open(&format!("{}?token={key}", d.ws_url()), &[]).await;
    let (frames, code) = frames_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(code, Some(4001), "{frames:?}");
    let ok = unaffected
        .request(json!({"op":"pub","topic":"sensors/3","data":1}))
        .await;
    assert_eq!(ok["op"], "ok", "the other key still works: {ok}");
    assert_eq!(d.healthz().await["auth"]["revoked_closes"], 1);
}

#[tokio::test]
async fn anonymous_connections_may_authenticate_before_subscribing() {
    let secrets = Secrets::new();
    let config = secrets
        .config("")
        .replace("allow_anonymous = false", "allow_anonymous = true");
    let config = config.replace(
        "[[auth.jwt]]",
        "[auth.anonymous]\npublish = []\nsubscribe = [\"public/#\"]\nsend = []\n\n[[auth.jwt]]",
    );
    let d = Daemon::start(&config);
    let mut anon = Raw::connect(&d.ws_url()).await;
    let reply = anon.request(json!({"op":"sub","topic":"private/x"})).await;
    assert_eq!(reply["code"], "forbidden");
    let reply = anon
        .request(json!({"op":"pub","topic":"public/x","data":1}))
        .await;
    assert_eq!(reply["code"], "forbidden");
    let t = user_token("alice", json!({"subscribe":["private/#"]}));
    let reply = anon.request(json!({"op":"auth","token": t})).await;
    assert_eq!(reply["op"], "ok", "{reply}");
    let welcome = anon.recv().await;
    assert_eq!(
        (welcome["op"].clone(), welcome["user"].clone()),
        (json!("welcome"), json!("alice"))
    );
    assert_ne!(welcome["client"], json!(anon.client_id));
    assert_eq!(
        anon.request(json!({"op":"sub","topic":"private/x"})).await["op"],
        "ok"
    );
    // Only once, and not after subscribing.
    let mut other = Raw::connect(&d.ws_url()).await;
    assert_eq!(
        other.request(json!({"op":"sub","topic":"public/x"})).await["op"],
        "ok"
    );
    let reply = other.request(json!({"op":"auth","token": t})).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    // `?user=` is refused once anonymous clients are not allowed; here it names one.
    let mut named = Raw::connect(&format!("{}?user=guest", d.ws_url())).await;
    assert_eq!(named.request(json!({"op":"ping"})).await["op"], "ok");
}

#[tokio::test]
async fn websocket_connections_hold_their_place_in_the_per_ip_cap() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config("[http]\nmax_connections_per_ip = 2\n"));
    let url = format!("{}?token={ADMIN}", d.ws_url());
    let first = connect_as(&d, ADMIN).await;
    let second = connect_as(&d, ADMIN).await;
    // Both upgraded connections still count: a third is refused before the upgrade.
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    // The refused client did not disturb the others; closing one frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let third = loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => break ws,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the place was not freed: {e}"),
        }
    };
    // /healthz is a connection from this IP too: make room for it.
    drop((second, third));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = d.healthz().await;
    // One refusal above, and maybe more while the dropped connection was released.
    assert!(
        health["http"]["refused_per_ip"].as_u64() >= Some(1),
        "{health}"
    );
}

#[tokio::test]
async fn the_cli_presents_a_token_from_the_environment() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let publisher = user_token("alice", json!({"publish":["cli/#"]}));
    let mut watcher = connect_as(&d, ADMIN).await;
    watcher.request(json!({"op":"sub","topic":"cli/#"})).await;
    let run = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["pub", "cli/x", "7", "--url", &d.ws_url()])
            .env_remove("SWITCHBOARD_TOKEN");
        if let Some(t) = token {
            cmd.env("SWITCHBOARD_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = run(Some(&publisher));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = watcher.next_msg().await;
    assert_eq!(
        (msg["topic"].clone(), msg["data"].clone()),
        (json!("cli/x"), json!(7))
    );
    let out = run(None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("4001") || stderr.contains("authenticat"),
        "{stderr}"
    );
    assert!(!stderr.contains(&publisher));
}
