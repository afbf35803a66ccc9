//! The HTTP API from tests: a real HTTP client (reqwest), JSON in and out.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{Daemon, Raw};

/// The URL of an API path (`/publish`) on the daemon.
pub fn api(d: &Daemon, path: &str) -> String {
    format!("http://{}/api/v1{path}", d.http)
}

/// Sends a request and returns the status and the JSON body (`null` when empty).
pub async fn call(
    method: reqwest::Method,
    url: &str,
    credential: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(c) = credential {
        request = request.bearer_auth(c);
    }
    if let Some(b) = body {
        request = request
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, json, headers)
}

pub async fn post(url: &str, credential: Option<&str>, body: &str) -> (StatusCode, Value) {
    let (s, v, _) = call(reqwest::Method::POST, url, credential, Some(body)).await;
    (s, v)
}

pub async fn get(url: &str, credential: Option<&str>) -> (StatusCode, Value) {
    let (s, v, _) = call(reqwest::Method::GET, url, credential, None).await;
    (s, v)
}

/// Connects with a credential and subscribes to `topic`.
pub async fn subscribed_as(d: &Daemon, credential: &str, topic: &str) -> Raw {
    let mut ws = Raw::connect(&format!("{}?token={credential}", d.ws_url())).await;
    let ok = ws.request(json!({"op":"sub","topic":topic})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    ws
}

/// The stable code of an error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A webhook endpoint on a free port that keeps every request body it gets (answering
/// 204): its URL, the bodies, and its task (abort it when done).
pub async fn webhook_sink() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    let bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let sink = bodies.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                if let Ok(v) = serde_json::from_str::<Value>(&body) {
                    sink.lock().unwrap().push(v);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, bodies, server)
}
