//! The shipped load-balancer configurations, run for real: Debian's HAProxy with
//! deploy/haproxy/switchboard.cfg and nginx with deploy/nginx/switchboard.conf in front
//! of two real daemons, the files changed only where they name the example boxes and
//! listen ports (docs/deployment-multi-box.md).
//!
//! Without `[cluster]` the two daemons share nothing, so these tests check what the
//! load balancer promises: WebSocket upgrades pass, a client keeps its box across
//! reconnects, a dead box gets no new clients and a restarted one gets them again, the
//! REST API and MQTT pass. The last test runs the boxes with `[cluster]` (issue 26) on a
//! redis-server of its own.
//!
//! HAProxy and nginx come from apt (scripts/test.sh installs them); when one is missing
//! its tests skip, unless `CLUSTER_TOOLS=required` (scripts/test.sh sets it) makes that a
//! failure.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::creds::{Secrets, ADMIN};
use common::redis::Redis;
use common::{Daemon, Raw};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const HAPROXY_CFG: &str = include_str!("../deploy/haproxy/switchboard.cfg");
const NGINX_CONF: &str = include_str!("../deploy/nginx/switchboard.conf");
const HAPROXY: &str = "/usr/sbin/haproxy";
const NGINX: &str = "/usr/sbin/nginx";

/// Whether `path` (from Debian's `package`) is installed; missing, the test skips, or
/// fails when `CLUSTER_TOOLS=required`.
fn installed(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assert!(
        std::env::var("CLUSTER_TOOLS").as_deref() != Ok("required"),
        "{path} is missing and CLUSTER_TOOLS=required: apt-get install {package} (scripts/test.sh does)"
    );
    eprintln!("skipped: {path} is not installed (apt-get install {package})");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Two daemons ("boxes") on fixed free ports, so one restarted keeps its address in the
/// load balancer's configuration. `extra` goes into both configurations, `{box}`
/// replaced by the box's name (`a`, `b`).
fn two_boxes(secrets: &Secrets, extra: &str) -> [Daemon; 2] {
    ["a", "b"].map(|name| {
        let http = format!("127.0.0.1:{}", free_port());
        let mqtt = format!("127.0.0.1:{}", free_port());
        let config = secrets.config(&format!(
            "[mqtt]\nallow_anonymous = true\n{}",
            extra.replace("{box}", name)
        ));
        Daemon::start_with_env(
            &config,
            &[
                ("SWITCHBOARD_HTTP_LISTEN", &http),
                ("SWITCHBOARD_MQTT_LISTEN", &mqtt),
            ],
        )
    })
}

/// A shipped file with the example boxes (10.0.0.11, 10.0.0.12) replaced by `boxes` and
/// the public ports by free local ones.
fn templated(text: &str, boxes: &[Daemon; 2], http: u16, mqtt: u16) -> String {
    let mut out = text.to_owned();
    for (i, d) in boxes.iter().enumerate() {
        let ip = format!("10.0.0.1{}", i + 1);
        let d_mqtt = d.mqtt.expect("MQTT listener");
        out = out
            .replace(&format!("{ip}:8700"), &d.http.to_string())
            .replace(&format!("{ip}:1883"), &d_mqtt.to_string())
            .replace(
                &format!("addr {ip} port 8700"),
                &format!("addr 127.0.0.1 port {}", d.http.port()),
            );
    }
    let out = out
        .replace("bind :80\n", &format!("bind 127.0.0.1:{http}\n"))
        .replace("bind :1883\n", &format!("bind 127.0.0.1:{mqtt}\n"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{http};"));
    let settings = out.lines().filter(|l| !l.trim_start().starts_with('#'));
    for line in settings {
        for example in ["10.0.0.", "bind :", "listen 80"] {
            assert!(!line.contains(example), "`{example}` left in: {line}");
        }
    }
    out
}

/// Waits up to 10 s for `child` (`what`) to accept connections on `addr`.
fn wait_listening(child: &mut Child, addr: SocketAddr, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} does not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running load balancer, killed when dropped.
struct Lb {
    child: Child,
    http: SocketAddr,
    mqtt: SocketAddr,
    /// HAProxy's admin socket.
    stats: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lb {
    /// HAProxy on the shipped file, once its checks found both boxes up.
    async fn haproxy(boxes: &[Daemon; 2]) -> Lb {
        let dir = tempfile::tempdir().expect("tempdir");
        let (http, mqtt) = (free_port(), free_port());
        let sock = dir.path().join("admin.sock");
        // Debian's haproxy.cfg brings a `global` section; here only the admin socket the
        // test reads the servers' health from.
        let config = format!(
            "global\n    stats socket {} mode 600 level admin\n\n{}",
            sock.display(),
            templated(HAPROXY_CFG, boxes, http, mqtt)
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        let lb = Lb::ready(child, http, mqtt, Some(sock), dir);
        lb.wait_server("sb1", "UP").await;
        lb.wait_server("sb2", "UP").await;
        lb
    }

    fn nginx(boxes: &[Daemon; 2]) -> Lb {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = free_port();
        let site = dir.path().join("switchboard.conf");
        std::fs::write(&site, templated(NGINX_CONF, boxes, http, 0)).expect("write site");
        // What Debian's nginx.conf provides around a conf.d file, in the temporary
        // directory: one process, no daemonizing, logs to stderr.
        let d = dir.path().display();
        let main = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n include {};\n}}\n",
            site.display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, main).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        // No MQTT: nginx here proxies HTTP only.
        Lb::ready(child, http, 0, None, dir)
    }

    /// Waits for the HTTP frontend to accept connections.
    fn ready(
        mut child: Child,
        http: u16,
        mqtt: u16,
        stats: Option<PathBuf>,
        dir: tempfile::TempDir,
    ) -> Lb {
        let http = SocketAddr::from(([127, 0, 0, 1], http));
        wait_listening(&mut child, http, "the load balancer");
        Lb {
            child,
            http,
            mqtt: SocketAddr::from(([127, 0, 0, 1], mqtt)),
            stats,
            _dir: dir,
        }
    }

    /// HAProxy's view of `server` in `backend` (`show stat`): its status (`UP`,
    /// `DOWN`, …) and how the last check went (`L7OK` is an HTTP check that passed).
    async fn server_status(&self, backend: &str, server: &str) -> (String, String) {
        let sock = self.stats.as_ref().expect("HAProxy's admin socket");
        let mut s = tokio::net::UnixStream::connect(sock)
            .await
            .expect("connect to HAProxy's admin socket");
        s.write_all(b"show stat\n").await.expect("show stat");
        let mut csv = String::new();
        s.read_to_string(&mut csv).await.expect("read stats");
        let header: Vec<&str> = csv
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .unwrap_or_default()
            .split(',')
            .collect();
        let column = |name| header.iter().position(|h| *h == name);
        let (Some(status), Some(check)) = (column("status"), column("check_status")) else {
            panic!("no status columns in:\n{csv}")
        };
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > check && f[0] == backend && f[1] == server)
            .map(|f| (f[status].to_owned(), f[check].to_owned()))
            .unwrap_or_else(|| panic!("no {backend}/{server} in:\n{csv}"))
    }

    /// Waits until HAProxy reports `server` as `status` in both backends, after a
    /// check of its `/healthz` (an HTTP check: `L7…`, not a bare TCP connect).
    async fn wait_server(&self, server: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for backend in ["switchboard_http", "switchboard_mqtt"] {
            loop {
                let (now, check) = self.server_status(backend, server).await;
                let checked = if status == "UP" {
                    check == "L7OK"
                } else {
                    !check.is_empty() && !check.starts_with("INI")
                };
                if now.starts_with(status) && checked {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{backend}/{server} stays {now} ({check}), not {status}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A WebSocket client through the load balancer, sending `cookie` if given; also returns
/// the `name=value` the load balancer set, if it set one.
async fn ws_via(lb: &Lb, cookie: Option<&str>) -> (Raw, Option<String>) {
    let url = format!("ws://{}/ws?token={ADMIN}", lb.http);
    let mut request = url.into_client_request().expect("request");
    if let Some(c) = cookie {
        request
            .headers_mut()
            .insert("cookie", c.parse().expect("cookie header"));
    }
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade through the load balancer");
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let mut raw = Raw {
        ws,
        client_id: String::new(),
    };
    let welcome = raw.recv().await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    (raw, set)
}

/// The WebSocket connections each box counts now.
async fn counts(boxes: &[Daemon; 2]) -> [u64; 2] {
    let mut now = [0; 2];
    for (i, d) in boxes.iter().enumerate() {
        now[i] = d.healthz().await["connections"].as_u64().unwrap_or(0);
    }
    now
}

/// The WebSocket connections each box counts, once they are `want` (or after 5 s).
async fn connections(boxes: &[Daemon; 2], want: [u64; 2]) -> [u64; 2] {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = counts(boxes).await;
        if now == want || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// The index of the box holding one more connection than `before`.
async fn box_of_new(boxes: &[Daemon; 2], before: [u64; 2]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = counts(boxes).await;
        let total = |c: [u64; 2]| c[0] + c[1];
        if total(now) == total(before) + 1 {
            return usize::from(now[1] > before[1]);
        }
        assert!(Instant::now() < deadline, "{before:?} → {now:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// POST /api/v1/publish through the load balancer with `cookie`; the reply.
async fn publish_via(lb: &Lb, cookie: &str, topic: &str, data: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/publish", lb.http))
        .bearer_auth(ADMIN)
        .header("cookie", cookie)
        .json(&json!({"topic": topic, "data": data}))
        .send()
        .await
        .expect("publish through the load balancer");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("JSON reply")
}

/// Subscribes `sub` to `lb/rest` and publishes `data` there over REST through the load
/// balancer with `cookie`: the box of that cookie delivers it to `sub`, and to no one
/// else (the boxes share nothing without `[cluster]`).
async fn rest_reaches(lb: &Lb, cookie: &str, sub: &mut Raw, data: &str) {
    let ok = sub.request(json!({"op":"sub","topic":"lb/rest"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let reply = publish_via(lb, cookie, "lb/rest", json!(data)).await;
    assert_eq!(reply["delivered"], 1, "{reply}");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_msg())
        .await
        .expect("the published message");
    assert_eq!(m["data"], data);
}

/// MQTT messages each of `boxes` took in, once their sum reaches `total` (or after 5 s).
async fn mqtt_in(boxes: &[&Daemon], total: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut now = Vec::new();
        for d in boxes {
            now.push(
                d.healthz().await["mqtt"]["messages_in"]
                    .as_u64()
                    .unwrap_or(0),
            );
        }
        if now.iter().sum::<u64>() >= total || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn haproxy_keeps_a_websocket_client_on_its_box_and_passes_rest_and_mqtt() {
    if !installed(HAPROXY, "haproxy") {
        return;
    }
    let secrets = Secrets::new();
    let boxes = two_boxes(&secrets, "");
    let lb = Lb::haproxy(&boxes).await;

    // The first connection gets a cookie naming its box; three more with that cookie
    // land on the same box, although leastconn would send them to the empty one.
    let (_first, cookie) = ws_via(&lb, None).await;
    let cookie = cookie.expect("HAProxy sets its cookie on the WebSocket handshake");
    let home = box_of_new(&boxes, [0, 0]).await;
    assert_eq!(cookie, format!("SBNODE=sb{}", home + 1));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_via(&lb, Some(&cookie)).await.0);
    }
    let mut want = [0, 0];
    want[home] = 4;
    assert_eq!(connections(&boxes, want).await, want, "sticky by cookie");

    // Without the cookie, a client goes to the least loaded box and gets its cookie.
    let (mut other, other_cookie) = ws_via(&lb, None).await;
    want[1 - home] = 1;
    assert_eq!(connections(&boxes, want).await, want, "leastconn");
    let other_cookie = other_cookie.expect("a cookie for the other box");
    assert_eq!(other_cookie, format!("SBNODE=sb{}", 2 - home));

    // REST follows the cookie too: a publish with the other box's cookie reaches the
    // subscriber there, and only it (the boxes share nothing without [cluster]).
    let mut home_sub = held.pop().expect("a connection on the home box");
    let ok = home_sub
        .request(json!({"op":"sub","topic":"lb/rest"}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    rest_reaches(&lb, &other_cookie, &mut other, "via haproxy").await;

    // MQTT over TCP: by client address, so one device's connections share a box.
    let port = lb.mqtt.port();
    for n in 0..2 {
        let m = format!("m{n}");
        assert!(common::mosquitto_pub(port, &["-t", "lb/mqtt", "-m", &m]).await);
    }
    let seen = mqtt_in(&[&boxes[0], &boxes[1]], 2).await;
    assert!(
        seen == [2, 0] || seen == [0, 2],
        "one box took both: {seen:?}"
    );
}

#[tokio::test]
async fn haproxy_takes_a_dead_box_out_by_healthz_and_back_when_it_returns() {
    if !installed(HAPROXY, "haproxy") {
        return;
    }
    let secrets = Secrets::new();
    let mut boxes = two_boxes(&secrets, "");
    let lb = Lb::haproxy(&boxes).await;
    let (first, _) = ws_via(&lb, Some("SBNODE=sb1")).await;
    assert_eq!(connections(&boxes, [1, 0]).await, [1, 0]);
    drop(first);
    assert_eq!(connections(&boxes, [0, 0]).await, [0, 0]);

    // Box a dies: its /healthz stops answering, HAProxy marks it down in both backends,
    // and clients pinned to it are sent to box b.
    boxes[0].signal("KILL");
    assert!(boxes[0].wait_exit(Duration::from_secs(5)).is_some());
    lb.wait_server("sb1", "DOWN").await;
    let (_pinned, moved) = ws_via(&lb, Some("SBNODE=sb1")).await;
    assert_eq!(moved.as_deref(), Some("SBNODE=sb2"), "re-pinned to box b");
    let (_fresh, _) = ws_via(&lb, None).await;
    let count = boxes[1]
        .wait_for_connections(2, Duration::from_secs(5))
        .await;
    assert_eq!(count, 2, "both new clients on box b");
    assert!(common::mosquitto_pub(lb.mqtt.port(), &["-t", "lb/down", "-m", "x"]).await);
    assert_eq!(mqtt_in(&[&boxes[1]], 1).await, [1], "MQTT goes to box b");

    // Box a back on its address: HAProxy sees /healthz answer and sends its clients
    // there again.
    boxes[0].respawn();
    lb.wait_server("sb1", "UP").await;
    let (_back, _) = ws_via(&lb, Some("SBNODE=sb1")).await;
    assert_eq!(
        boxes[0]
            .wait_for_connections(1, Duration::from_secs(5))
            .await,
        1
    );
}

#[tokio::test]
async fn nginx_keeps_a_websocket_client_on_its_box_passes_rest_and_fails_over() {
    if !installed(NGINX, "nginx") {
        return;
    }
    let secrets = Secrets::new();
    let mut boxes = two_boxes(&secrets, "");
    let lb = Lb::nginx(&boxes);

    let (mut first, cookie) = ws_via(&lb, None).await;
    let cookie = cookie.expect("nginx sets sb_client on the WebSocket handshake");
    assert!(cookie.starts_with("sb_client="), "{cookie}");
    let home = box_of_new(&boxes, [0, 0]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (c, set) = ws_via(&lb, Some(&cookie)).await;
        assert_eq!(set, None, "a client with a cookie keeps it");
        held.push(c);
    }
    let mut want = [0, 0];
    want[home] = 4;
    assert_eq!(connections(&boxes, want).await, want, "sticky by cookie");

    // REST with the cookie reaches the same box.
    rest_reaches(&lb, &cookie, &mut first, "via nginx").await;

    // Other clients' cookies spread them over both boxes.
    let mut now = want;
    for k in 0..32 {
        if now[1 - home] > 0 {
            break;
        }
        held.push(ws_via(&lb, Some(&format!("sb_client=k{k}"))).await.0);
        let before = now;
        now[box_of_new(&boxes, before).await] += 1;
    }
    assert!(
        now[1 - home] > 0,
        "32 cookies all hashed to one box: {now:?}"
    );

    // The home box dies: the same client's next connection lands on the other.
    drop(first);
    drop(held);
    boxes[home].signal("KILL");
    assert!(boxes[home].wait_exit(Duration::from_secs(5)).is_some());
    let (_moved, _) = ws_via(&lb, Some(&cookie)).await;
    assert_eq!(
        boxes[1 - home]
            .wait_for_connections(1, Duration::from_secs(5))
            .await,
        1,
        "failed over to the other box"
    );
}

/// What `[cluster]` the boxes get (issue 26), `{box}` and `{redis}` filled in.
const CLUSTER: &str = r#"
[cluster]
enabled = true
redis = ["redis://{redis}"]
node_id = "{box}"
partitions = 16
ack = "redis"
"#;

/// `switchboard check-config` accepts the `[cluster]` the boxes get: a refusal fails the
/// test with the daemon's reason rather than skipping it (the section is built).
fn assert_cluster_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cluster.toml");
    let text = CLUSTER
        .replace("{redis}", "127.0.0.1:6379")
        .replace("{box}", "a");
    std::fs::write(&config, text).expect("write config");
    let out = Command::new(common::BIN)
        .arg("check-config")
        .arg(&config)
        .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
        .output()
        .expect("switchboard check-config");
    assert!(
        out.status.success(),
        "check-config refuses [cluster]: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

#[tokio::test]
async fn with_cluster_a_publish_on_box_a_reaches_a_subscriber_on_box_b() {
    assert_cluster_accepted();
    if !installed(HAPROXY, "haproxy") {
        return;
    }
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let secrets = Secrets::new();
    let cluster = CLUSTER.replace("{redis}", &format!("127.0.0.1:{}", redis.port));
    let boxes = two_boxes(&secrets, &cluster);
    let lb = Lb::haproxy(&boxes).await;

    let (mut sub, _) = ws_via(&lb, Some("SBNODE=sb2")).await;
    assert_eq!(connections(&boxes, [0, 1]).await, [0, 1], "subscriber on b");
    let ok = sub.request(json!({"op":"sub","topic":"lb/cluster"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    publish_via(&lb, "SBNODE=sb1", "lb/cluster", json!("from a")).await;
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_msg())
        .await
        .expect("box b delivers what box a accepted");
    assert_eq!(m["data"], "from a");
}
