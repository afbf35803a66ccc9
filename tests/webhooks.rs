//! Outbound webhooks against a real receiver: an axum server in the test that checks the
//! signature of every request and answers as the test tells it (200, 500, or hang past
//! the daemon's timeout).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use common::{mosquitto_pub, Daemon, Raw};
use switchboard::outbound_webhooks::signature::verify_standard;

const SECRET: &str = "webhook-test-secret-0123456789";
const ADMIN: &str = "admin-token-for-the-webhook-tests";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Fail,
    /// Answers only after the daemon's timeout: the daemon counts it as failed.
    Hang,
}

#[derive(Debug, Clone)]
struct Arrival {
    id: String,
    body: Value,
    /// The body as it came off the wire, for byte-for-byte checks.
    raw: String,
    /// How the receiver answered; only `Mode::Ok` arrivals count as delivered.
    answer: Mode,
    signed: bool,
}

#[derive(Default)]
struct Log {
    mode: Option<Mode>,
    arrivals: Vec<Arrival>,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

async fn receive(
    State(log): State<Arc<Mutex<Log>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = header("webhook-id");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = verify_standard(
        SECRET.as_bytes(),
        &id,
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        &body,
        now,
        300,
    )
    .is_ok();
    let raw = String::from_utf8_lossy(&body).into_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = {
        let mut log = log.lock().unwrap();
        let answer = log.mode.unwrap_or(Mode::Ok);
        log.arrivals.push(Arrival {
            id,
            body,
            raw,
            answer,
            signed,
        });
        answer
    };
    match answer {
        Mode::Ok => StatusCode::OK,
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK
        }
    }
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let log = Arc::new(Mutex::new(Log {
            mode: Some(mode),
            arrivals: Vec::new(),
        }));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set(&self, mode: Mode) {
        self.log.lock().unwrap().mode = Some(mode);
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.log.lock().unwrap().arrivals.clone()
    }

    fn count(&self, answer: Mode) -> usize {
        self.arrivals()
            .iter()
            .filter(|a| a.answer == answer)
            .count()
    }

    /// Events of the deliveries answered 200, in arrival order.
    fn delivered(&self) -> Vec<Value> {
        self.arrivals()
            .iter()
            .filter(|a| a.answer == Mode::Ok)
            .flat_map(|a| a.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    async fn wait(&self, what: &str, wait: Duration, done: impl Fn(&Receiver) -> bool) {
        let deadline = Instant::now() + wait;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; arrivals: {:#?}",
                self.arrivals()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every request was signed with the secret, and every webhook-id was answered 200
    /// at most once; retries of one id carried the same body.
    fn check_signed_and_once(&self) {
        let arrivals = self.arrivals();
        assert!(arrivals.iter().all(|a| a.signed), "unsigned: {arrivals:#?}");
        let mut ok_ids: Vec<&str> = arrivals
            .iter()
            .filter(|a| a.answer == Mode::Ok)
            .map(|a| a.id.as_str())
            .collect();
        ok_ids.sort();
        let n = ok_ids.len();
        ok_ids.dedup();
        assert_eq!(ok_ids.len(), n, "a webhook-id was delivered twice");
        for a in &arrivals {
            for b in arrivals.iter().filter(|b| b.id == a.id) {
                assert_eq!(a.body, b.body, "retries of {} differ", a.id);
            }
        }
    }
}

/// Files of a test: the webhook secret and the admin token.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook.secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN).unwrap();
        Files { dir }
    }

    fn secret(&self) -> String {
        self.dir.path().join("hook.secret").display().to_string()
    }

    /// A configuration with the admin token and one webhook `main` whose extra keys
    /// are `extra`.
    fn config(&self, url: &str, extra: &str) -> String {
        format!(
            "[auth]\nadmin_token_file = \"{}\"\n\n[[webhooks]]\nname = \"main\"\nurl = \"{url}\"\nsecret_file = \"{}\"\n{extra}\n",
            self.dir.path().join("admin.token").display(),
            self.secret(),
        )
    }
}

fn api(d: &Daemon, path: &str) -> String {
    format!("http://{}/api/v1{path}", d.http)
}

async fn publish(d: &Daemon, topic: &str, data: Value) {
    let r = reqwest::Client::new()
        .post(api(d, "/publish"))
        .bearer_auth(ADMIN)
        .json(&json!({"topic": topic, "data": data}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn call(method: reqwest::Method, url: String, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

const QUICK_RETRIES: &str =
    "timeout = \"300ms\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\nmax_attempts = 1000";

#[tokio::test]
async fn messages_and_lifecycle_events_arrive_signed() {
    let rx = Receiver::start(Mode::Ok).await;
    let files = Files::new();
    let d = Daemon::start(&files.config(
        &rx.url(),
        &format!("topics = [\"t/#\"]\nevents = [\"*\"]\n{QUICK_RETRIES}"),
    ));

    let mut ws = Raw::subscribed(&d.ws_url(), "t/a").await;
    let r = ws
        .request(json!({"op":"pub","topic":"t/a","event":"note","data":{"x":1}}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    let r = ws.request(json!({"op":"unsub","topic":"t/a"})).await;
    assert_eq!(r["op"], "ok", "{r}");
    let client = ws.client_id.clone();
    drop(ws);
    let port = d.mqtt.expect("mqtt").port();
    assert!(mosquitto_pub(port, &["-i", "node-7", "-t", "t/dev", "-m", "{\"v\":2}"]).await);
    publish(&d, "other/x", json!(0)).await;

    let expected = [
        "client.connected",
        "client.subscribed",
        "message",
        "client.unsubscribed",
        "client.disconnected",
        "device.online",
        "message",
        "device.offline",
    ];
    rx.wait("8 events", Duration::from_secs(10), |rx| {
        rx.delivered().len() >= expected.len()
    })
    .await;
    let events = rx.delivered();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, expected, "{events:#?}");
    let msg = &events[2];
    assert_eq!(
        (&msg["topic"], &msg["event"], &msg["data"], &msg["from"]),
        (
            &json!("t/a"),
            &json!("note"),
            &json!({"x": 1}),
            &json!(client)
        )
    );
    assert!(msg["seq"].as_u64().is_some() && msg["ts"].as_u64().is_some());
    assert!(msg["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(events[1]["filter"], "t/a");
    assert_eq!(events[0]["client"], json!(client));
    assert_eq!(events[5]["client_id"], "node-7");
    assert_eq!(events[6]["data"], json!({"v": 2}));
    let body = &rx.arrivals()[0].body;
    assert_eq!(body["webhook"], "main");
    rx.check_signed_and_once();

    // Status in /healthz and the API.
    // The receiver may see the last request before the daemon has read its answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let health = loop {
        let health = d.healthz().await;
        if health["webhooks"][0]["delivered"] == 8 || tokio::time::Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["webhooks"][0]["name"], "main");
    assert_eq!(health["webhooks"][0]["delivered"], 8);
    let metrics = d.metrics_text().await;
    assert!(
        metrics.contains("switchboard_webhook_events_delivered_total{webhook=\"main\"} 8"),
        "{metrics}"
    );
    let (status, list) = call(reqwest::Method::GET, api(&d, "/webhooks"), Some(ADMIN)).await;
    assert_eq!(status, 200);
    assert_eq!(list["webhooks"][0]["pending"], 0);
    assert!(list["webhooks"][0]["last_success"].as_u64().is_some());
}

/// The receiver answers 500, then hangs past the daemon's timeout, across a graceful
/// restart, then recovers. Tolerated: a webhook-id arriving several times while it is
/// refused (500) or left hanging, since those are retries of a delivery the receiver
/// did not accept (a hung request's late 200 reaches no one, and this receiver counts
/// it as not processed). Not tolerated: any webhook-id answered 200 twice, a retry
/// whose body differs, a missing or reordered event, a bad signature.
#[tokio::test]
async fn fails_hangs_restarts_and_recovers_with_every_event_once_in_order() {
    let rx = Receiver::start(Mode::Fail).await;
    let files = Files::new();
    let mut d =
        Daemon::start(&files.config(&rx.url(), &format!("topics = [\"t/#\"]\n{QUICK_RETRIES}")));
    for i in 0..20 {
        publish(&d, "t/x", json!({"i": i})).await;
    }
    rx.wait("3 failures", Duration::from_secs(10), |rx| {
        rx.count(Mode::Fail) >= 3
    })
    .await;
    rx.set(Mode::Hang);
    rx.wait("2 hangs", Duration::from_secs(10), |rx| {
        rx.count(Mode::Hang) >= 2
    })
    .await;
    let first_id = rx.arrivals()[0].id.clone();
    // Graceful restart while the head delivery is being retried.
    d.restart();
    for i in 20..40 {
        publish(&d, "t/x", json!({"i": i})).await;
    }
    rx.wait("2 more hangs", Duration::from_secs(10), |rx| {
        rx.count(Mode::Hang) >= 4
    })
    .await;
    rx.set(Mode::Ok);
    rx.wait("40 events", Duration::from_secs(20), |rx| {
        rx.delivered().len() >= 40
    })
    .await;
    // Nothing more comes: give a duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<u64> = rx
        .delivered()
        .iter()
        .map(|e| e["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..40).collect::<Vec<u64>>());
    rx.check_signed_and_once();
    // The delivery that failed before the restart kept its webhook-id after it.
    let first_ok = rx
        .arrivals()
        .into_iter()
        .find(|a| a.answer == Mode::Ok)
        .unwrap();
    assert_eq!(first_ok.id, first_id);
    let health = d.healthz().await;
    assert_eq!(health["webhooks"][0]["pending"], 0, "{health}");
}

#[tokio::test]
async fn dead_letters_are_listed_retried_and_deleted_through_the_api() {
    let rx = Receiver::start(Mode::Fail).await;
    let files = Files::new();
    let d = Daemon::start(&files.config(
        &rx.url(),
        "topics = [\"t/#\"]\ntimeout = \"1s\"\nretry_initial = \"20ms\"\nretry_max = \"50ms\"\nmax_attempts = 3",
    ));
    for i in 0..3 {
        publish(&d, "t/x", json!({"i": i})).await;
    }
    let dead_url = api(&d, "/webhooks/main/dead");
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let (status, body) = call(reqwest::Method::GET, dead_url.clone(), Some(ADMIN)).await;
        assert_eq!(status, 200, "{body}");
        if body["dead"].as_array().unwrap().len() == 3 {
            break body["dead"].as_array().unwrap().clone();
        }
        assert!(Instant::now() < deadline, "no 3 dead letters: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rx.count(Mode::Fail), 9, "3 attempts each");
    for (i, letter) in dead.iter().enumerate() {
        assert_eq!(
            letter["events"][0]["data"]["i"], i,
            "oldest first: {letter}"
        );
        assert_eq!(letter["attempts"], 3);
        assert_eq!(letter["last_status"], 500);
        assert!(letter["last_error"].as_str().unwrap().contains("500"));
    }
    let (_, one) = call(
        reqwest::Method::GET,
        format!("{dead_url}?limit=1"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(one["dead"].as_array().unwrap().len(), 1);

    // Admin only, and JSON errors.
    let (status, body) = call(reqwest::Method::GET, dead_url.clone(), None).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, body) = call(reqwest::Method::GET, dead_url.clone(), Some("wrong")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, body) = call(
        reqwest::Method::GET,
        api(&d, "/webhooks/nope/dead"),
        Some(ADMIN),
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{dead_url}/msg_0_0/retry"),
        Some(ADMIN),
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let (status, body) = call(
        reqwest::Method::GET,
        format!("{dead_url}?limit=0"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_request"))
    );

    // Forget the last, retry the first alone, then all the rest.
    rx.set(Mode::Ok);
    let id = |i: usize| dead[i]["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{dead_url}/{}", id(2)),
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{dead_url}/{}/retry", id(0)),
        Some(ADMIN),
    )
    .await;
    assert_eq!((status, &body["retried"]), (200, &json!(1)), "{body}");
    rx.wait("the retried event", Duration::from_secs(5), |rx| {
        rx.delivered().len() == 1
    })
    .await;
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{dead_url}/retry"),
        Some(ADMIN),
    )
    .await;
    assert_eq!((status, &body["retried"]), (200, &json!(1)), "{body}");
    rx.wait("both retried events", Duration::from_secs(5), |rx| {
        rx.delivered().len() == 2
    })
    .await;
    let delivered = rx.delivered();
    assert_eq!(delivered[0]["data"]["i"], 0);
    assert_eq!(delivered[1]["data"]["i"], 1);
    // An event keeps its id through the dead-letter list and back.
    assert_eq!(delivered[0]["id"], dead[0]["events"][0]["id"]);
    let (_, body) = call(reqwest::Method::GET, dead_url, Some(ADMIN)).await;
    assert_eq!(body["dead"], json!([]));
    rx.check_signed_and_once();
    let (_, list) = call(reqwest::Method::GET, api(&d, "/webhooks"), Some(ADMIN)).await;
    let stats = &list["webhooks"][0];
    assert_eq!(
        (
            &stats["dead"],
            &stats["pending"],
            &stats["delivered"],
            &stats["failed_attempts"]
        ),
        (&json!(0), &json!(0), &json!(2), &json!(9)),
        "{stats}"
    );
}

#[tokio::test]
async fn batches_carry_several_events_in_order() {
    let rx = Receiver::start(Mode::Ok).await;
    let files = Files::new();
    let d = Daemon::start(&files.config(
        &rx.url(),
        "topics = [\"t/#\"]\nbatch_max = 10\nbatch_wait = \"300ms\"",
    ));
    let mut ws = Raw::connect(&d.ws_url()).await;
    ws.flood("t/x", 25, 0).await;
    rx.wait("25 events", Duration::from_secs(10), |rx| {
        rx.delivered().len() >= 25
    })
    .await;
    let got: Vec<u64> = rx
        .delivered()
        .iter()
        .map(|e| e["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..25).collect::<Vec<u64>>());
    let sizes: Vec<usize> = rx
        .arrivals()
        .iter()
        .map(|a| a.body["events"].as_array().unwrap().len())
        .collect();
    assert!(
        sizes.len() <= 5 && sizes.iter().all(|&n| n <= 10),
        "{sizes:?}"
    );
    rx.check_signed_and_once();
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_slow_websocket_delivery() {
    let rx = Receiver::start(Mode::Hang).await;
    let files = Files::new();
    // A second endpoint where nothing listens at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let config = format!(
        "{}\n[[webhooks]]\nname = \"gone\"\nurl = \"{closed_url}\"\nsecret_file = \"{}\"\ntopics = [\"#\"]\n",
        files.config(&rx.url(), "topics = [\"#\"]\ntimeout = \"10s\""),
        files.secret(),
    );
    let d = Daemon::start(&config);
    let mut sub = Raw::subscribed(&d.ws_url(), "t/#").await;
    let mut publisher = Raw::connect(&d.ws_url()).await;
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        for i in 0..1000u64 {
            let m = sub.next_msg().await;
            assert_eq!(m["data"]["i"], i);
        }
    });
    publisher.flood("t/x", 1000, 16).await;
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("1,000 messages within 10 s")
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // Meanwhile the hanging endpoint's events were all stored, none dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health = d.healthz().await;
        let pending = |i: usize| health["webhooks"][i]["pending"].as_u64().unwrap();
        if pending(0) >= 999 && pending(1) >= 999 {
            break health;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["webhooks"][0]["dropped"], 0, "{health}");
    assert!(
        health["webhooks"][1]["failed_attempts"].as_u64().unwrap() >= 1,
        "{health}"
    );
    let err = health["webhooks"][1]["last_error"].as_str().unwrap_or("");
    assert!(err.contains("cannot connect"), "{health}");
}

/// Runs `serve` with a configuration that must be refused; its stderr.
fn refused(config: &str, dir: &Path) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("SWITCHBOARD_DATA_DIR", dir.join("data"))
        .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "accepted: {config}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_webhook_configuration_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.secret");
    let err = refused(
        &format!(
            "[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"{}\"\n",
            missing.display()
        ),
        dir.path(),
    );
    assert!(
        err.contains("webhook `a`") && err.contains(&missing.display().to_string()),
        "{err}"
    );
    let err = refused(
        "[[webhooks]]\nname = \"a\"\nurl = \"mqtt://broker/\"\nsecret_file = \"x\"\n",
        dir.path(),
    );
    assert!(
        err.contains("http:// or https://") && err.contains(":3:"),
        "{err}"
    );
}

/// An end-to-end envelope reaches the endpoint byte for byte and opens there
/// (docs/e2e.md, "Everywhere a message goes").
#[tokio::test]
async fn an_end_to_end_envelope_arrives_byte_for_byte() {
    use switchboard_e2e::{seal, Binding, Inbox, KeyPair, Kind, Reading, Received};
    let rx = Receiver::start(Mode::Ok).await;
    let files = Files::new();
    let d = Daemon::start(&files.config(&rx.url(), "topics = [\"dm/#\"]"));
    let receiver = KeyPair::generate(2048).unwrap();
    let jwe = seal(
        b"for the webhook",
        &[receiver.public().clone()],
        Binding::new(Kind::Sealed, "dm/hook", "alice"),
    )
    .unwrap();
    let text = serde_json::to_string(&jwe).unwrap();
    let r = reqwest::Client::new()
        .post(api(&d, "/publish"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(format!(r#"{{"topic":"dm/hook","data":{text}}}"#))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    rx.wait("the envelope", Duration::from_secs(10), |rx| {
        !rx.delivered().is_empty()
    })
    .await;
    let arrival = &rx.arrivals()[0];
    assert!(
        arrival.raw.contains(&format!(r#""data":{text}"#)),
        "not byte-identical: {}",
        arrival.raw
    );
    let data = &arrival.body["events"][0]["data"];
    match Inbox::new(receiver).open("dm/hook", None, data, Reading::Live) {
        Ok(Received::Message(m)) => assert_eq!(m.plaintext, b"for the webhook"),
        other => panic!("{other:?}"),
    }
    rx.check_signed_and_once();
}
