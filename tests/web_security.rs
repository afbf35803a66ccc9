//! What a web page on another site can and cannot do to a daemon on the user's machine,
//! and the small promises of the wire protocol a third-party client relies on.

mod common;

use common::{Daemon, Raw};
use serde_json::json;

#[tokio::test]
async fn a_null_id_is_echoed_and_a_mistyped_field_is_named() {
    let d = Daemon::start("");
    let mut c = Raw::connect(&d.ws_url()).await;

    c.send_text(r#"{"op":"ping","id":null}"#).await;
    let reply = c.recv().await;
    assert_eq!(reply["op"], "ok", "{reply}");
    assert!(
        reply
            .as_object()
            .is_some_and(|o| o.get("id") == Some(&json!(null))),
        "the null id is not echoed: {reply}"
    );

    c.send_text(r#"{"op":"sub","id":7,"topic":42}"#).await;
    let reply = c.recv().await;
    assert_eq!(reply["id"], 7, "{reply}");
    assert_eq!(reply["code"], "bad_request", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`topic`"),
        "the field is not named: {message}"
    );

    // The HTTP API names it the same way.
    let (status, body) = common::http::post(
        &common::http::api(&d, "/publish"),
        None,
        r#"{"topic":"a/b","retain":"yes"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`retain`"),
        "the field is not named: {message}"
    );
}

/// One HTTP/1.1 request over a plain TCP socket, with exactly the headers given (a
/// browser's `Host` and `Origin` among them): the status, the headers (names in lower
/// case) and the body.
async fn raw_http(
    addr: std::net::SocketAddr,
    head: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A WebSocket handshake with the headers a browser adds; the HTTP status it got
/// (101 when it was accepted).
async fn ws_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("request");
    for (k, v) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

const EVIL: &str = "http://evil.example";

#[tokio::test]
async fn mqtt_over_websocket_refuses_a_foreign_page() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let d = Daemon::start("[auth]\nallowed_origins = [\"https://app.example.com\"]\n");
    let addr = d.mqtt_ws.expect("MQTT over WebSocket listens by default");
    let url = format!("ws://{addr}/mqtt");
    let mqtt = ("sec-websocket-protocol", "mqtt");

    // A page from another site, as a browser sends it: refused at the upgrade.
    assert_eq!(ws_status(&url, &[mqtt, ("origin", EVIL)]).await, 403);
    // A name that is not this machine's (DNS rebinding): refused too.
    let rebound = [mqtt, ("host", "rebind.attacker.example:8083")];
    assert_eq!(ws_status(&url, &rebound).await, 421);
    // The configured origin may.
    let app = [mqtt, ("origin", "https://app.example.com")];
    assert_eq!(ws_status(&url, &app).await, 101);
    // paho-mqtt sends an Origin made of its own URL: the same origin is always allowed.
    let own = format!("http://{addr}");
    assert_eq!(
        ws_status(&url, &[mqtt, ("origin", own.as_str())]).await,
        101
    );

    // An MQTT client outside a browser sends no Origin and is served as before.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("a client without Origin connects");
    // CONNECT, MQTT 3.1.1, clean session, client id "t".
    let connect = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b't',
    ];
    ws.send(Message::binary(connect.to_vec())).await.unwrap();
    let connack = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => break b,
            Some(Ok(_)) => continue,
            other => panic!("no CONNACK: {other:?}"),
        }
    };
    assert_eq!(&connack[..], &[0x20, 2, 0, 0]);
}

#[tokio::test]
async fn a_cross_site_simple_post_publishes_nothing() {
    let d = Daemon::start("");
    let mut watcher = Raw::subscribed(&d.ws_url(), "csrf/#").await;
    let host = format!("Host: {}", d.http);
    let body = r#"{"topic":"csrf/a","data":"forged"}"#;

    // What a page can send without a CORS preflight: text/plain or a form.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let head =
            format!("POST /api/v1/publish HTTP/1.1\r\n{host}\r\nContent-Type: {content_type}");
        let (status, _, reply) = raw_http(d.http, &head, body).await;
        assert_eq!(status, 415, "{content_type}: {reply}");
        assert!(reply.contains("application/json"), "{reply}");
        let head = format!("{head}\r\nOrigin: {EVIL}");
        let (status, _, reply) = raw_http(d.http, &head, body).await;
        assert_eq!(status, 403, "{content_type} from {EVIL}: {reply}");
    }
    // A body with no Content-Type at all is no better.
    let head = format!("POST /api/v1/send HTTP/1.1\r\n{host}");
    let (status, _, reply) = raw_http(d.http, &head, r#"{"user":"u","data":1}"#).await;
    assert_eq!(status, 415, "{reply}");
    // JSON from a foreign page: refused for what it would change.
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\n{host}\r\nOrigin: {EVIL}\r\nContent-Type: application/json"
    );
    let (status, _, reply) = raw_http(d.http, &head, body).await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply.contains("auth.allowed_origins"), "{reply}");

    // A script (no Origin) and a page of this very server publish as before.
    let (status, reply) = common::http::post(
        &common::http::api(&d, "/publish"),
        None,
        r#"{"topic":"csrf/ok","data":1}"#,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\n{host}\r\nOrigin: http://{}\r\nContent-Type: application/json; charset=utf-8",
        d.http
    );
    let (status, _, reply) = raw_http(d.http, &head, r#"{"topic":"csrf/same","data":2}"#).await;
    assert_eq!(status, 200, "{reply}");
    // Only the two accepted messages arrived, in order.
    assert_eq!(watcher.next_msg().await["topic"], "csrf/ok");
    assert_eq!(watcher.next_msg().await["topic"], "csrf/same");
}

#[tokio::test]
async fn a_rebound_host_name_is_refused_with_the_setting_to_change() {
    let d = Daemon::start("");
    let rebound = "Host: rebind.attacker.example:8700";
    let (status, _, reply) = raw_http(
        d.http,
        &format!("GET /api/v1/info HTTP/1.1\r\n{rebound}"),
        "",
    )
    .await;
    assert_eq!(status, 421, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).expect("a JSON error");
    assert_eq!(reply["error"]["code"], "misdirected", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("http.allowed_hosts"), "{message}");
    // The page of a rebound name is "same-origin" to itself: /ws refuses it all the same.
    let url = d.ws_url();
    let page = [
        ("host", "rebind.attacker.example:8700"),
        ("origin", "http://rebind.attacker.example:8700"),
    ];
    assert_eq!(ws_status(&url, &page).await, 421);

    // Loopback names and addresses work by default.
    for host in ["localhost:8700", "127.0.0.1", "[::1]:8700"] {
        let head = format!("GET /api/v1/info HTTP/1.1\r\nHost: {host}");
        let (status, _, reply) = raw_http(d.http, &head, "").await;
        assert_eq!(status, 200, "{host}: {reply}");
    }

    // An operator who reaches the box by name lists the name.
    let d = Daemon::start("[http]\nallowed_hosts = [\"gateway.lan\"]\n");
    let head = "GET /api/v1/info HTTP/1.1\r\nHost: gateway.lan:8700";
    assert_eq!(raw_http(d.http, head, "").await.0, 200);
    let gw = [
        ("host", "gateway.lan:8700"),
        ("origin", "http://gateway.lan:8700"),
    ];
    assert_eq!(ws_status(&d.ws_url(), &gw).await, 101);
}

#[tokio::test]
async fn cors_answers_the_configured_origins_only() {
    let d = Daemon::start("[auth]\nallowed_origins = [\"https://app.example.com\"]\n");
    let host = format!("Host: {}", d.http);
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /api/v1/publish HTTP/1.1\r\n{host}\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization, content-type"
        )
    };
    let (status, headers, reply) =
        raw_http(d.http, &preflight("https://app.example.com"), "").await;
    assert_eq!(status, 204, "{reply}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let methods = header(&headers, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = header(&headers, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(header(&headers, "vary").is_some_and(|v| v.to_ascii_lowercase().contains("origin")));

    // The request itself carries the allowance, so the page can read the answer.
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\n{host}\r\nOrigin: https://app.example.com\r\nContent-Type: application/json"
    );
    let (status, headers, reply) = raw_http(d.http, &head, r#"{"topic":"cors/a"}"#).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );

    // Another site gets no allowance.
    let (status, headers, _) = raw_http(d.http, &preflight(EVIL), "").await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);

    // A refused browser WebSocket sees only close 1006; the log says why.
    assert_eq!(ws_status(&d.ws_url(), &[("origin", EVIL)]).await, 403);
    d.wait_log("websocket refused").await;
    let logs = d.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("websocket refused"))
        .unwrap_or_default();
    assert!(
        line.contains("INFO") && line.contains("evil.example"),
        "{line}"
    );
    assert!(line.contains("auth.allowed_origins"), "{line}");
}

#[tokio::test]
async fn one_address_cannot_take_every_connection_by_default() {
    // The default total is 20,000; one address gets a twentieth of it.
    let d = Daemon::start("");
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(
            tokio::net::TcpStream::connect(d.http)
                .await
                .expect("connect"),
        );
    }
    // Each connection is counted once accepted: wait until the next one is refused.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while ws_status(&d.ws_url(), &[]).await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a 1001st connection was served"
        );
    }
    drop(held);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let health = loop {
        let (status, _, body) = raw_http(
            d.http,
            &format!("GET /healthz HTTP/1.1\r\nHost: {}", d.http),
            "",
        )
        .await;
        if status == 200 {
            break serde_json::from_str::<serde_json::Value>(&body).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        health["http"]["refused_per_ip"].as_u64() >= Some(1),
        "{health}"
    );
    assert_eq!(health["http"]["refused_total_cap"], 0, "{health}");
}

#[tokio::test]
async fn a_token_without_kid_is_not_tried_against_keys_that_have_one() {
    use common::creds::{now, sign, Secrets, SECRET};
    let secrets = Secrets::new();
    // The only key has a kid: a token must name it.
    let config = secrets.config("").replace(
        "[[auth.jwt]]\nalgorithm",
        "[[auth.jwt]]\nkid = \"k1\"\nalgorithm",
    );
    let d = Daemon::start(&config);
    let claims = json!({"sub":"ann","exp": now() + 600});
    let named = sign(&json!({"alg":"HS256","kid":"k1"}), &claims, SECRET);
    let unnamed = sign(&json!({"alg":"HS256"}), &claims, SECRET);
    let info = common::http::api(&d, "/info");
    assert_eq!(common::http::get(&info, Some(&named)).await.0, 200);
    let (status, reply) = common::http::get(&info, Some(&unnamed)).await;
    assert_eq!(status, 401, "{reply}");
}
