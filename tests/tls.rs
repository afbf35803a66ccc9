//! TLS on every listener, as an operator and a client would see it: certificates made
//! here with rcgen, real TLS clients (rustls, mosquitto_pub/sub), a certificate reloaded
//! with SIGHUP, and the HTTP listener's connection limits.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::certs::{Ca, Leaf};
use common::{mosquitto_pub, Daemon, MosquittoSub, Raw};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// Files of one test: the server certificate and key, the CA, and a config.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn server(&self, leaf: &Leaf) {
        self.write("server.pem", &leaf.cert_pem);
        self.write("server.key", &leaf.key_pem);
    }

    /// The `[tls]` section for the server files (and a client CA if given).
    fn tls_section(&self, client_ca: Option<&str>) -> String {
        let mut s = format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.path("server.pem").display(),
            self.path("server.key").display()
        );
        if let Some(ca) = client_ca {
            s.push_str(&format!("client_ca_file = \"{ca}\"\n"));
        }
        s
    }
}

fn client_config(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

type Wss = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn wss_connect(addr: SocketAddr, roots: &[CertificateDer<'static>]) -> Result<Wss, String> {
    let url = format!("wss://localhost:{}/ws", addr.port());
    let connector = Connector::Rustls(client_config(roots));
    tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector)),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map(|(ws, _)| ws)
    .map_err(|e| e.to_string())
}

async fn recv_json(ws: &mut Wss) -> Value {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("no error");
        if let Message::Text(t) = next {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Sends a request and returns its reply, skipping pushes.
async fn request(ws: &mut Wss, mut frame: Value) -> Value {
    let id = format!("r{}", rand::random::<u32>());
    frame["id"] = json!(id);
    ws.send(Message::text(frame.to_string())).await.unwrap();
    loop {
        let f = recv_json(ws).await;
        if f["id"] == json!(id) {
            return f;
        }
    }
}

async fn next_msg(ws: &mut Wss) -> Value {
    loop {
        let f = recv_json(ws).await;
        if f["op"] == "msg" {
            return f;
        }
    }
}

/// A WSS client that got its welcome.
async fn wss_welcomed(addr: SocketAddr, roots: &[CertificateDer<'static>]) -> Wss {
    let mut ws = wss_connect(addr, roots).await.expect("wss connect");
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    ws
}

/// A TLS connection to `addr` for `localhost`; the certificate the server presented.
async fn tls_connect(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = TlsConnector::from(client_config(roots));
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((tls, presented))
}

/// GET over any stream with `Connection: close`: (status line, body).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.lines().next().unwrap_or("").to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

async fn https_healthz(addr: SocketAddr, roots: &[CertificateDer<'static>]) -> Value {
    let (tls, _) = tls_connect(addr, roots).await.expect("tls");
    let (status, body) = get(tls, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A plain TCP connection from a chosen loopback address.
async fn connect_from(local: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((local, 0)))
        .expect("bind the client to a loopback address");
    socket.connect(to).await.expect("connect")
}

async fn healthz_from(local: [u8; 4], to: SocketAddr) -> Value {
    let (status, body) = get(connect_from(local, to).await, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    serde_json::from_str(&body).unwrap()
}

// ---------------------------------------------------------------------------------------
// HTTPS and WSS
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn wss_and_https_serve_and_plain_or_untrusting_clients_fail_cleanly() {
    let ca = Ca::new("switchboard test CA");
    let other = Ca::new("unrelated CA");
    let files = Files::new();
    files.server(&ca.server());
    let d = Daemon::start(&format!("[http]\ntls = true\n{}", files.tls_section(None)));
    let roots = [ca.der()];

    // A WSS subscriber and publisher: welcome and a round trip.
    let mut sub = wss_welcomed(d.http, &roots).await;
    let r = request(&mut sub, json!({"op":"sub","topic":"secure/#"})).await;
    assert_eq!(r["op"], "ok", "{r}");
    let mut publisher = wss_welcomed(d.http, &roots).await;
    let r = request(
        &mut publisher,
        json!({"op":"pub","topic":"secure/a","data":{"v":1}}),
    )
    .await;
    assert_eq!(r["op"], "ok", "{r}");
    let m = next_msg(&mut sub).await;
    assert_eq!(m["topic"], "secure/a");
    assert_eq!(m["data"], json!({"v":1}));

    // HTTPS health, with the listener's counters.
    let health = https_healthz(d.http, &roots).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert!(
        health["http"]["accepted"].as_u64().unwrap() >= 3,
        "{health}"
    );

    // Plain HTTP and plain WebSocket against the TLS port fail, and nothing breaks.
    let (status, _) = get(TcpStream::connect(d.http).await.unwrap(), "/healthz").await;
    assert!(
        !status.starts_with("HTTP/1.1 200"),
        "plain HTTP got {status}"
    );
    let plain = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(d.ws_url())).await;
    assert!(
        matches!(plain, Ok(Err(_))),
        "plain WebSocket must fail at once"
    );
    // A client that trusts only another CA refuses the server.
    let err = wss_connect(d.http, &[other.der()]).await.err();
    assert!(err.is_some(), "a client trusting another CA connected");

    let health = https_healthz(d.http, &roots).await;
    assert!(
        health["http"]["tls_handshake_failures"].as_u64().unwrap() >= 3,
        "{health}"
    );
    // The earlier connections still work.
    let r = request(
        &mut publisher,
        json!({"op":"pub","topic":"secure/b","data":2}),
    )
    .await;
    assert_eq!(r["op"], "ok");
    assert_eq!(next_msg(&mut sub).await["topic"], "secure/b");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections_only() {
    let ca = Ca::new("first CA");
    let second_ca = Ca::new("second CA");
    let files = Files::new();
    let first = ca.server();
    files.server(&first);
    let d = Daemon::start(&format!("[http]\ntls = true\n{}", files.tls_section(None)));
    let both = [ca.der(), second_ca.der()];

    let (_, presented) = tls_connect(d.http, &both).await.unwrap();
    assert_eq!(presented, first.der);
    let mut sub = wss_welcomed(d.http, &[ca.der()]).await;
    assert_eq!(
        request(&mut sub, json!({"op":"sub","topic":"t/#"})).await["op"],
        "ok"
    );

    // A certificate from another CA, then SIGHUP.
    let second = second_ca.server();
    files.server(&second);
    d.signal("HUP");
    d.wait_log("TLS certificate reloaded").await;
    let (_, presented) = tls_connect(d.http, &both).await.unwrap();
    assert_eq!(
        presented, second.der,
        "a new connection sees the new certificate"
    );
    assert!(
        wss_connect(d.http, &[ca.der()]).await.is_err(),
        "the old CA no longer vouches for the server"
    );

    // The connection made before the reload stays open and still gets messages.
    let mut publisher = wss_welcomed(d.http, &[second_ca.der()]).await;
    let r = request(
        &mut publisher,
        json!({"op":"pub","topic":"t/x","data":"after"}),
    )
    .await;
    assert_eq!(r["op"], "ok");
    assert_eq!(next_msg(&mut sub).await["data"], "after");

    // A broken key: logged, and the previous certificate is still served.
    files.write(
        "server.key",
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    files.write("server.pem", &ca.server().cert_pem);
    d.signal("HUP");
    d.wait_log("TLS certificate not reloaded").await;
    assert!(d.logs().contains("server.key"), "the error names the file");
    let (_, presented) = tls_connect(d.http, &both).await.unwrap();
    assert_eq!(presented, second.der, "the old certificate stays");
    assert!(
        d.logs().contains("ERROR"),
        "a failed reload is an error:\n{}",
        d.logs()
    );
}

#[test]
fn tls_without_a_certificate_is_a_startup_error() {
    common::assert_startup_errors(&[
        ("[http]\ntls = true\n", "set tls.cert_file and tls.key_file"),
        (
            "[mqtt]\ntls_listen = \"127.0.0.1:0\"\n",
            "mqtt.tls_listen needs a certificate",
        ),
        (
            "[mqtt]\nrequire_certificate = true\n",
            "tls.client_ca_file",
        ),
        (
            "[http]\ntls = true\n[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
            "/nonexistent/cert.pem",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// MQTT over TLS
// ---------------------------------------------------------------------------------------

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn mosquitto_over_mqtts_round_trips_with_websocket() {
    let ca = Ca::new("mqtt CA");
    let files = Files::new();
    files.server(&ca.server());
    let ca_file = files.write("ca.pem", &ca.pem());
    let d = Daemon::start(&format!(
        "[mqtt]\ntls_listen = \"127.0.0.1:0\"\nwss_listen = \"127.0.0.1:0\"\n{}",
        files.tls_section(None)
    ));
    let port = d
        .listening("mqtts")
        .expect("mqtts in the listening line")
        .port();
    assert!(d.listening("mqtt_wss").is_some(), "mqtt_wss listening");

    // MQTTS → WebSocket.
    let mut ws = Raw::subscribed(&d.ws_url(), "tls/#").await;
    assert!(
        mosquitto_pub(
            port,
            &args(&["--cafile", &ca_file, "-i", "tls-pub", "-t", "tls/in", "-m", "21"])
        )
        .await,
        "mosquitto_pub over TLS"
    );
    let m = ws.next_msg().await;
    assert_eq!(m["topic"], "tls/in");
    assert_eq!(m["data"], 21);
    assert_eq!(m["from"], "mqtt:tls-pub");

    // WebSocket → MQTTS.
    let mut sub = MosquittoSub::start(
        port,
        &["--cafile", &ca_file, "-i", "tls-sub", "-t", "tls/out"],
    )
    .await;
    let r = ws
        .request(json!({"op":"pub","topic":"tls/out","data":"hello"}))
        .await;
    assert_eq!(r["op"], "ok");
    let message = sub.message(Duration::from_secs(10)).await.expect("message");
    assert_eq!(message, ("tls/out".to_owned(), b"hello".to_vec()));

    // Plain MQTT on the TLS port is refused and counted; TLS still works after it.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = plain
        .write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0])
        .await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, plain.read(&mut buf)).await;
    assert!(
        !matches!(n, Ok(Ok(n)) if n > 0 && buf[0] == 0x20),
        "no CONNACK in plain text"
    );
    assert!(
        mosquitto_pub(
            port,
            &args(&["--cafile", &ca_file, "-t", "tls/in", "-m", "again"])
        )
        .await
    );
    loop {
        let m = ws.next_msg().await;
        if m["topic"] == "tls/in" {
            assert_eq!(m["data"], "again");
            break;
        }
    }

    // MQTT over WebSocket over TLS: CONNECT, CONNACK, and a publish that reaches the hub.
    let wss = d.listening("mqtt_wss").expect("mqtt_wss");
    let mut request = format!("wss://localhost:{}/mqtt", wss.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let connector = Connector::Rustls(client_config(&[ca.der()]));
    let (mut device, response) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
            .await
            .expect("MQTT over WSS");
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
    let connect = [
        0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'w', b's',
    ];
    device
        .send(Message::binary(connect.to_vec()))
        .await
        .unwrap();
    let connack = tokio::time::timeout(WAIT, device.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(connack.into_data().as_ref(), &[0x20, 2, 0, 0]);
    let publish = [0x30, 9, 0, 5, b't', b'l', b's', b'/', b'w', b'1', b'7'];
    device
        .send(Message::binary(publish.to_vec()))
        .await
        .unwrap();
    let m = ws.next_msg().await;
    assert_eq!(m["topic"], "tls/w", "{m}");
    assert_eq!(m["data"], 17, "{m}");
    assert_eq!(m["from"], "mqtt:ws");

    let mqtt = d.healthz().await["mqtt"].clone();
    assert!(
        mqtt["tls_handshake_failures"].as_u64().unwrap() >= 1,
        "{mqtt}"
    );
}

#[tokio::test]
async fn client_certificates_are_required_and_name_the_device() {
    let ca = Ca::new("device CA");
    let other = Ca::new("unrelated CA");
    let files = Files::new();
    files.server(&ca.server());
    let ca_file = files.write("ca.pem", &ca.pem());
    let client = ca.leaf("device-42", &[], true);
    let cert = files.write("client.pem", &client.cert_pem);
    let key = files.write("client.key", &client.key_pem);
    let stranger = other.leaf("device-42", &[], true);
    let stranger_cert = files.write("stranger.pem", &stranger.cert_pem);
    let stranger_key = files.write("stranger.key", &stranger.key_pem);
    let d = Daemon::start(&format!(
        r#"
[mqtt]
tls_listen = "127.0.0.1:0"
require_certificate = true
use_identity_as_username = true
allow_anonymous = false

[[mqtt.acl]]
user = "device-42"
publish = ["sensors/device-42/#"]

{}"#,
        files.tls_section(Some(&ca_file))
    ));
    let port = d.listening("mqtts").expect("mqtts").port();
    let mut ws = Raw::subscribed(&d.ws_url(), "sensors/#").await;
    let base = ["--cafile", ca_file.as_str(), "-i", "dev-a", "-t"];

    // No certificate: the handshake fails.
    let mut no_cert = args(&base);
    no_cert.extend(args(&["sensors/device-42/t", "-m", "nocert"]));
    assert!(
        !mosquitto_pub(port, &no_cert).await,
        "connected without a certificate"
    );
    // A certificate from another CA, with the same name: refused too.
    let mut foreign = args(&base);
    foreign.extend(args(&[
        "sensors/device-42/t",
        "-m",
        "foreign",
        "--cert",
        &stranger_cert,
        "--key",
        &stranger_key,
    ]));
    assert!(
        !mosquitto_pub(port, &foreign).await,
        "a foreign certificate was accepted"
    );

    // The right certificate, no password: its CN is the username the ACL knows.
    let with_cert = |topic: &str, payload: &str| {
        let mut a = args(&base);
        a.extend(args(&[
            topic, "-m", payload, "--cert", &cert, "--key", &key,
        ]));
        a
    };
    assert!(mosquitto_pub(port, &with_cert("sensors/other/t", "denied")).await);
    assert!(mosquitto_pub(port, &with_cert("sensors/device-42/t", "allowed")).await);
    let m = ws.next_msg().await;
    assert_eq!(m["topic"], "sensors/device-42/t", "{m}");
    assert_eq!(m["data"], "allowed");
    assert!(
        ws.try_recv(Duration::from_millis(300)).await.is_none(),
        "nothing else reached the hub"
    );
}

// ---------------------------------------------------------------------------------------
// Connection limits on the HTTP listener
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn per_ip_cap_refuses_with_503_and_frees_places() {
    let d = Daemon::start("[http]\nmax_connections_per_ip = 3\nhandshake_timeout = \"30s\"\n");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 1], d.http).await);
    }
    // Let the daemon accept them before the fourth arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    // Open counts the health check's own connection too.
    while healthz_from([127, 0, 0, 2], d.http).await["http"]["open"] != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "3 connections never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(connect_from([127, 0, 0, 1], d.http).await, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert_eq!(body, "too many connections\n");

    // Another address still gets in; the refusal is counted.
    let health = healthz_from([127, 0, 0, 2], d.http).await;
    assert_eq!(health["http"]["refused_per_ip"], 1, "{health}");
    assert_eq!(health["http"]["refused_total_cap"], 0, "{health}");

    // Closing one frees a place.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = get(connect_from([127, 0, 0, 1], d.http).await, "/healthz").await;
        if status.contains("200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place freed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn total_cap_refuses_and_counts() {
    let d = Daemon::start("[http]\nmax_connections = 2\nhandshake_timeout = \"30s\"\n");
    let _a = connect_from([127, 0, 0, 3], d.http).await;
    let _b = connect_from([127, 0, 0, 4], d.http).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = get(connect_from([127, 0, 0, 5], d.http).await, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = healthz_from([127, 0, 0, 1], d.http).await;
    assert_eq!(health["http"]["refused_total_cap"], 1, "{health}");
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    let ca = Ca::new("timeout CA");
    let files = Files::new();
    files.server(&ca.server());
    // Plain HTTP.
    let d = Daemon::start("[http]\nhandshake_timeout = \"1s\"\n");
    let mut silent = TcpStream::connect(d.http).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed within the wait");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    let health = d.healthz().await;
    assert_eq!(health["http"]["handshake_timeouts"], 1, "{health}");
    assert_eq!(
        health["http"]["open"], 1,
        "only the health check is open: {health}"
    );

    // HTTPS: a client that never starts the handshake.
    let d = Daemon::start(&format!(
        "[http]\ntls = true\nhandshake_timeout = \"1s\"\n{}",
        files.tls_section(None)
    ));
    let mut silent = TcpStream::connect(d.http).await.unwrap();
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed within the wait");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let health = https_healthz(d.http, &[ca.der()]).await;
    assert_eq!(health["http"]["handshake_timeouts"], 1, "{health}");
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: all an HTTP/2 client
/// must send before its first request.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Reads until the daemon closes `s`; how long that took, or None if it never did.
async fn closed_after<S: AsyncRead + Unpin>(
    mut s: S,
    started: std::time::Instant,
) -> Option<Duration> {
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| started.elapsed())
}

#[tokio::test]
async fn http2_clients_that_send_no_request_are_closed_after_the_handshake_timeout() {
    let ca = Ca::new("h2 timeout CA");
    let files = Files::new();
    files.server(&ca.server());
    let d = Daemon::start(&format!(
        "[http]\ntls = true\nhandshake_timeout = \"1s\"\n{}",
        files.tls_section(None)
    ));
    // Over TLS: the preface, then silence.
    let (mut tls, _) = tls_connect(d.http, &[ca.der()]).await.expect("tls");
    let started = std::time::Instant::now();
    tls.write_all(H2_PREFACE).await.expect("preface");
    let took = closed_after(tls, started)
        .await
        .expect("closed within the wait");
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    let health = https_healthz(d.http, &[ca.der()]).await;
    assert_eq!(health["http"]["handshake_timeouts"], 1, "{health}");

    let d = Daemon::start("[http]\nhandshake_timeout = \"1s\"\n");
    // h2c with prior knowledge: the preface, then silence.
    let mut silent = TcpStream::connect(d.http).await.unwrap();
    let started = std::time::Instant::now();
    silent.write_all(H2_PREFACE).await.expect("preface");
    let took = closed_after(silent, started)
        .await
        .expect("closed within the wait");
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    // The preface dribbled a byte every 200 ms (5 s for all of it).
    let dribbler = TcpStream::connect(d.http).await.unwrap();
    let (read, mut write) = dribbler.into_split();
    let dribble = tokio::spawn(async move {
        for byte in H2_PREFACE {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Then nothing, with the socket open.
        std::future::pending::<()>().await;
    });
    let took = closed_after(read, std::time::Instant::now()).await;
    dribble.abort();
    let took = took.expect("closed within the wait");
    assert!(took < Duration::from_secs(3), "held for {took:?}");
    let health = d.healthz().await;
    assert_eq!(health["http"]["handshake_timeouts"], 2, "{health}");
    // A client that sends its request in time is served over HTTP/2 as before.
    let mut h2 = TcpStream::connect(d.http).await.unwrap();
    h2.write_all(H2_PREFACE).await.expect("preface");
    // HEADERS on stream 1, END_STREAM | END_HEADERS: GET /healthz, literal fields
    // without indexing (HPACK), so no table is needed.
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/healthz"),
        (":authority", "localhost"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    h2.write_all(&frame).await.expect("request");
    // The answer: frames until a HEADERS frame (type 1) on stream 1 with status 200
    // (HPACK static index 8, `0x88`).
    let mut got = Vec::new();
    let answered = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = h2.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
            let mut at = 0;
            while got.len() >= at + 9 {
                let len = (usize::from(got[at]) << 16)
                    | (usize::from(got[at + 1]) << 8)
                    | usize::from(got[at + 2]);
                if got.len() < at + 9 + len {
                    break;
                }
                if got[at + 3] == 1 && got[at + 8] == 1 {
                    return got[at + 9..at + 9 + len].first().copied();
                }
                at += 9 + len;
            }
        }
    })
    .await
    .expect("answered within the wait");
    assert_eq!(answered, Some(0x88), "not a 200");
}

#[tokio::test]
async fn the_rust_client_and_the_cli_speak_wss_with_a_private_ca() {
    let ca = Ca::new("switchboard test CA");
    let files = Files::new();
    files.server(&ca.server());
    let ca_file = files.write("ca.pem", &ca.pem());
    let d = Daemon::start(&format!("[http]\ntls = true\n{}", files.tls_section(None)));
    let url = format!("wss://localhost:{}/ws", d.http.port());

    let options = switchboard_client::ClientOptions::new(url.as_str()).ca_file(&ca_file);
    let client = switchboard_client::Client::connect(options)
        .await
        .expect("wss with the private CA");
    let mut sub = client.subscribe("secure/cli").await.expect("subscribe");
    let out = std::process::Command::new(common::BIN)
        .args(["pub", "secure/cli", "42", "--url", &url])
        .env("SWITCHBOARD_CA_FILE", &ca_file)
        .output()
        .expect("run switchboard pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut sub),
    )
    .await
    .expect("message in time")
    .expect("message");
    assert_eq!(msg.data.get(), "42");

    // Without the CA the system roots do not know the certificate: refused, clearly.
    let refused = switchboard_client::Client::connect(
        switchboard_client::ClientOptions::new(url.as_str()).reconnect(false),
    )
    .await;
    let error = match refused {
        Ok(_) => panic!("an untrusted certificate must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}
