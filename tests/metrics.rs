//! An operator scrapes `/metrics` and reads `/api/v1/stats`: the figures move with what
//! clients do, under the right labels, and both endpoints say the same.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{mosquitto_pub, Daemon, MosquittoSub, Raw};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-the-metrics-tests-0123";

/// A daemon whose admin token is `ADMIN`, with `extra` configuration appended.
struct Admin {
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Admin {
    fn start(extra: &str) -> Admin {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin.token");
        std::fs::write(&token, ADMIN).unwrap();
        let config = format!(
            "[auth]\nadmin_token_file = \"{}\"\n{extra}",
            token.display()
        );
        Admin {
            daemon: Daemon::start(&config),
            _dir: dir,
        }
    }
}

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: `# TYPE` per family and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Parses the text format strictly enough to catch a malformed line.
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                e.types.insert(name.into(), kind.into());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                e.helps.insert(name.into(), help.into());
            } else if line.starts_with('#') {
                continue;
            } else {
                e.samples.push(sample(line));
            }
        }
        e
    }

    /// The value of the sample with this name and (at most one) label.
    fn value(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.find(name, label)
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
    }

    fn find(&self, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && match label {
                        None => s.labels.is_empty(),
                        Some((k, v)) => s.labels.get(k).map(String::as_str) == Some(v),
                    }
            })
            .map(|s| s.value)
    }
}

fn sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("sample: series value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in `{line}`")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').expect("labels end with }");
            let labels = inner
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label k=v");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("quoted label value");
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            (name, labels)
        }
    };
    assert!(
        name.starts_with("switchboard_")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "metric name `{name}`"
    );
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

async fn get(d: &Daemon, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{}{path}", d.http));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("HTTP request")
}

async fn scrape(d: &Daemon) -> Exposition {
    let response = get(d, "/metrics", None).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    Exposition::parse(&response.text().await.unwrap())
}

/// Scrapes until `ready` holds (the writer records a batch just after flushing it).
async fn scrape_until(d: &Daemon, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = scrape(d).await;
        if ready(&e) || tokio::time::Instant::now() >= deadline {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const LATENCY: &str = "switchboard_delivery_latency_seconds";

fn messages_in(e: &Exposition, transport: &str) -> f64 {
    e.value(
        "switchboard_messages_in_total",
        Some(("transport", transport)),
    )
}

#[tokio::test]
async fn figures_move_under_the_transport_that_carried_them() {
    let d = Daemon::start("");
    let mqtt_port = d.mqtt.expect("MQTT listener").port();
    let mut sub = Raw::subscribed(&d.ws_url(), "m/#").await;
    let mut device = MosquittoSub::start(mqtt_port, &["-t", "m/#"]).await;
    let before = scrape(&d).await;
    assert_eq!(
        before
            .types
            .get("switchboard_messages_in")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        before
            .types
            .get("switchboard_connections")
            .map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        before.types.get(LATENCY).map(String::as_str),
        Some("histogram")
    );
    assert!(before.helps.values().all(|h| !h.is_empty()));
    assert_eq!(
        before.value("switchboard_connections", Some(("transport", "ws"))),
        1.0
    );
    assert_eq!(
        before.value("switchboard_connections", Some(("transport", "mqtt_tcp"))),
        1.0
    );
    assert_eq!(
        before.value("switchboard_connections", Some(("transport", "mqtt_ws"))),
        0.0
    );

    // One message in by each transport.
    let mut publisher = Raw::connect(&d.ws_url()).await;
    let ok = publisher
        .request(json!({"op":"pub","topic":"m/ws","data":1}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/publish", d.http))
        .json(&json!({"topic":"m/http","data":2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(mosquitto_pub(mqtt_port, &["-t", "m/mqtt", "-m", "3"]).await);
    for _ in 0..3 {
        sub.next_msg().await;
    }
    for _ in 0..2 {
        // The device sees the WS and HTTP messages (its own is not echoed to WS twice).
        device
            .message(Duration::from_secs(10))
            .await
            .expect("MQTT subscriber gets messages from other ways in");
    }

    let after = scrape_until(&d, |e| {
        e.value(&format!("{LATENCY}_count"), None)
            >= before.value(&format!("{LATENCY}_count"), None) + 3.0
    })
    .await;
    for transport in ["ws", "http", "mqtt"] {
        assert_eq!(
            messages_in(&after, transport) - messages_in(&before, transport),
            1.0,
            "messages_in{{transport={transport}}}"
        );
    }
    let out = |e: &Exposition, t| e.value("switchboard_messages_out_total", Some(("transport", t)));
    assert_eq!(out(&after, "ws") - out(&before, "ws"), 3.0);
    assert!(out(&after, "mqtt") - out(&before, "mqtt") >= 3.0);
    assert_eq!(
        after.value("switchboard_connections", Some(("transport", "ws"))),
        2.0
    );

    // The latency histogram counts the frames written, and its buckets are cumulative.
    let count = after.value(&format!("{LATENCY}_count"), None);
    assert!(count >= 3.0, "latency count {count}");
    let mut buckets: Vec<(f64, f64)> = after
        .samples
        .iter()
        .filter(|s| s.name == format!("{LATENCY}_bucket"))
        .map(|s| {
            let le = &s.labels["le"];
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, s.value)
        })
        .collect();
    assert!(buckets.len() > 5, "{buckets:?}");
    let in_order = buckets.clone();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets, in_order, "buckets in increasing `le`");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)));
    assert!(after.value(&format!("{LATENCY}_sum"), None) >= 0.0);

    // Gone clients leave the gauges.
    drop(device);
    drop(publisher);
    let gone = scrape_until(&d, |e| {
        e.value("switchboard_connections", Some(("transport", "mqtt_tcp"))) == 0.0
            && e.value("switchboard_connections", Some(("transport", "ws"))) == 1.0
    })
    .await;
    assert_eq!(
        gone.value("switchboard_connections", Some(("transport", "mqtt_tcp"))),
        0.0
    );
    assert_eq!(
        gone.value("switchboard_connections", Some(("transport", "ws"))),
        1.0
    );
}

/// A subscriber that stops reading while 24 MiB are published to it: more than the
/// socket buffers of a loopback connection hold. Returned so it stays connected.
async fn stall_one_subscriber(d: &Daemon) -> Raw {
    let url = d.ws_url();
    let mut stalled = Raw::connect(&url).await;
    stalled.request(json!({"op":"sub","topic":"flood"})).await;
    let mut publisher = Raw::connect(&url).await;
    publisher.flood("flood", 3000, 8192).await;
    stalled
}

const SLOW: &str =
    "[ws]\noutbound_queue_messages = 16\npublish_rate = 1000000\npublish_burst = 1000000\n";

#[tokio::test]
async fn drops_are_counted_by_reason() {
    let d = Daemon::start(&format!("{SLOW}slow_consumer = \"drop_oldest\"\n"));
    let _stalled = stall_one_subscriber(&d).await;
    let e = scrape(&d).await;
    let dropped = |reason| {
        e.value(
            "switchboard_messages_dropped_total",
            Some(("reason", reason)),
        )
    };
    assert!(dropped("drop_oldest") > 0.0, "drop_oldest");
    assert_eq!(dropped("slow_consumer_close"), 0.0);

    let d = Daemon::start(&format!("{SLOW}slow_consumer = \"close\"\n"));
    let _stalled = stall_one_subscriber(&d).await;
    let e = scrape(&d).await;
    assert!(
        e.value(
            "switchboard_messages_dropped_total",
            Some(("reason", "slow_consumer_close"))
        ) >= 1.0
    );
    assert_eq!(
        e.value(
            "switchboard_ws_closes_total",
            Some(("reason", "slow_consumer"))
        ),
        1.0
    );
}

#[tokio::test]
async fn a_backed_up_connection_shows_in_the_queue_depths() {
    let d = Daemon::start(&format!("{SLOW}slow_consumer = \"drop_oldest\"\n"));
    let stalled = stall_one_subscriber(&d).await;
    let e = scrape(&d).await;
    let max = e.value("switchboard_ws_outbox_frames_max", None);
    assert!((1.0..=16.0).contains(&max), "max depth {max}");
    assert!(e.value("switchboard_ws_outbox_frames", None) >= max);
    drop(stalled);
}

/// Every figure of the JSON as the exposition shows it.
fn agree(json: &Value, e: &Exposition) {
    let object = json.as_object().expect("stats object");
    let mut covered = 0;
    for (family, value) in object {
        // The one figure that moves on its own between the two reads: a connection of
        // an earlier request is counted down when the server notices it closed.
        if family == "http_connections_open" {
            assert!(value.is_u64(), "{family}");
            covered += 1;
            continue;
        }
        let name = format!("switchboard_{family}");
        let sample = match e.types.get(&name).map(String::as_str) {
            Some("counter") => format!("{name}_total"),
            Some(_) => name.clone(),
            None => panic!("{family} is in the JSON but not in /metrics"),
        };
        match value {
            Value::Number(n) => {
                assert_eq!(e.value(&sample, None), n.as_f64().unwrap(), "{family}");
                covered += 1;
            }
            Value::Object(h) if h.contains_key("buckets") => {
                assert_eq!(
                    e.value(&format!("{name}_count"), None),
                    h["count"].as_f64().unwrap()
                );
                assert_eq!(
                    e.value(&format!("{name}_sum"), None),
                    h["sum"].as_f64().unwrap()
                );
                covered += 2;
                for (le, n) in h["buckets"].as_object().unwrap() {
                    let got = e
                        .samples
                        .iter()
                        .find(|s| s.name == format!("{name}_bucket") && le_eq(&s.labels["le"], le))
                        .unwrap_or_else(|| panic!("{family} bucket {le}"));
                    assert_eq!(got.value, n.as_f64().unwrap(), "{family} le={le}");
                    covered += 1;
                }
            }
            Value::Object(by_label) => {
                for (label_value, n) in by_label {
                    let got = e
                        .samples
                        .iter()
                        .find(|s| {
                            s.name == sample
                                && s.labels.len() == 1
                                && s.labels.values().next() == Some(label_value)
                        })
                        .unwrap_or_else(|| panic!("{family}={label_value} not in /metrics"));
                    assert_eq!(got.value, n.as_f64().unwrap(), "{family} {label_value}");
                    covered += 1;
                }
            }
            other => panic!("{family}: unexpected {other}"),
        }
    }
    assert_eq!(
        covered,
        e.samples.len(),
        "every sample of /metrics is in the JSON"
    );
}

fn le_eq(a: &str, b: &str) -> bool {
    a == b || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
}

#[tokio::test]
async fn stats_json_agrees_with_the_exposition_and_needs_the_admin() {
    let a = Admin::start("");
    let d = &a.daemon;
    let mut sub = Raw::subscribed(&d.ws_url(), "a/#").await;
    let mut publisher = Raw::connect(&d.ws_url()).await;
    publisher
        .request(json!({"op":"pub","topic":"a/1","data":1}))
        .await;
    sub.next_msg().await;
    scrape_until(d, |e| e.value(&format!("{LATENCY}_count"), None) >= 1.0).await;

    let anonymous = get(d, "/api/v1/stats", None).await;
    assert_eq!(anonymous.status(), 403);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");

    // Nothing moves between the two requests but the HTTP connection figures, which
    // the comparison leaves out by asking both over one connection.
    let client = reqwest::Client::new();
    let stats: Value = client
        .get(format!("http://{}/api/v1/stats", d.http))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = client
        .get(format!("http://{}/metrics", d.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(stats["messages_in"]["ws"], 1, "{stats}");
    assert_eq!(stats["connections"]["ws"], 2, "{stats}");
    agree(&stats, &Exposition::parse(&text));
}

#[tokio::test]
async fn private_metrics_need_the_admin_token() {
    let a = Admin::start("[metrics]\npublic = false\n");
    let d = &a.daemon;
    for token in [None, Some("not-the-admin-token")] {
        let refused = get(d, "/metrics", token).await;
        assert_eq!(refused.status(), 401, "{token:?}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let allowed = get(d, "/metrics", Some(ADMIN)).await;
    assert_eq!(allowed.status(), 200);
    let text = allowed.text().await.unwrap();
    assert!(Exposition::parse(&text)
        .find("switchboard_connections", Some(("transport", "ws")))
        .is_some());
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let d = Daemon::start("[metrics]\nenabled = false\n");
    assert_eq!(get(&d, "/metrics", None).await.status(), 404);
}
