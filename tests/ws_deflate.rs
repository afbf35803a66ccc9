//! permessage-deflate (RFC 7692, `ws.compression`) through the real daemon: negotiated
//! with a third-party client, each publish compressed once for all its compressed
//! subscribers, and what a client's compressed frames may not do.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{Daemon, Raw};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_core::deflate::{compress, compressed_text, Inflating, CLIENT_OFFER};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const ON: &str = "[ws]\ncompression = true\n";
const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/ws_deflate/websockets_peer.py"
);

/// A tokio-tungstenite client that offered permessage-deflate, reading through the
/// same inflater the Rust client uses.
struct Deflating {
    ws: WebSocketStream<Inflating<TcpStream>>,
    /// The server's `Sec-WebSocket-Extensions` answer.
    extensions: Option<String>,
}

impl Deflating {
    async fn connect(d: &Daemon) -> Deflating {
        let tcp = TcpStream::connect(d.http).await.expect("connect");
        Self::handshake(d, tcp).await
    }

    /// [`Deflating::connect`] with a tiny socket receive buffer, so that while it does
    /// not read, the daemon's writes to it stall after a few KiB.
    async fn connect_narrow(d: &Daemon) -> Deflating {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = socket.connect(d.http).await.expect("connect");
        Self::handshake(d, tcp).await
    }

    async fn handshake(d: &Daemon, tcp: TcpStream) -> Deflating {
        let mut request = d.ws_url().into_client_request().expect("request");
        request.headers_mut().insert(
            "sec-websocket-extensions",
            HeaderValue::from_static(CLIENT_OFFER),
        );
        let (ws, response) =
            tokio_tungstenite::client_async(request, Inflating::client(tcp, 1 << 20))
                .await
                .expect("handshake");
        let extensions = response
            .headers()
            .get("sec-websocket-extensions")
            .map(|v| v.to_str().expect("header").to_owned());
        let mut c = Deflating { ws, extensions };
        assert_eq!(c.recv().await["op"], "welcome");
        c
    }

    async fn recv(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s")
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = next {
                return serde_json::from_str(t.as_str()).expect("JSON");
            }
        }
    }

    async fn send_frame(&mut self, opcode: OpCode, fin: bool, rsv1: bool, payload: Vec<u8>) {
        let header = FrameHeader {
            is_final: fin,
            rsv1,
            opcode,
            ..FrameHeader::default()
        };
        let frame = Frame::from_payload(header, Bytes::from(payload));
        self.ws.send(Message::Frame(frame)).await.expect("send");
    }

    /// Sends `frame` (compressed if that makes it smaller), then returns its reply.
    async fn request(&mut self, frame: Value) -> Value {
        let text = frame.to_string();
        let message = match compress(text.as_bytes(), 6) {
            Some(packed) => Message::Frame(compressed_text(packed)),
            None => Message::text(text),
        };
        self.ws.send(message).await.expect("send");
        loop {
            let reply = self.recv().await;
            if reply["id"] == frame["id"] {
                return reply;
            }
        }
    }

    /// The next `msg` push, skipping anything else.
    async fn next_msg(&mut self) -> Value {
        loop {
            let f = self.recv().await;
            if f["op"] == "msg" {
                return f;
            }
        }
    }

    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| f.code.into()),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }
}

/// A JSON telemetry batch as sensor nodes send it: big enough to be compressed.
fn readings(n: usize) -> Value {
    let rows: Vec<Value> = (0..n)
        .map(|i| json!({"node": format!("node-{i}"), "t": 21.5, "h": 40.25, "p": 1013.2}))
        .collect();
    json!({ "readings": rows })
}

/// Runs the Python `websockets` peer; returns its report.
fn python_peer(d: &Daemon, compression: &str) -> Value {
    let out = Command::new("python3")
        .arg(PEER)
        .arg(d.ws_url())
        .arg(compression)
        .output()
        .expect("run python3 (scripts/test.sh installs websockets)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "peer failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("peer report")
}

#[tokio::test]
async fn python_websockets_exchanges_compressed_messages_both_ways() {
    let d = Daemon::start(ON);
    let report = python_peer(&d, "on");
    let extensions = report["extensions"].as_str().unwrap_or_default();
    assert!(
        extensions.starts_with("permessage-deflate")
            && extensions.contains("server_no_context_takeover"),
        "{report}"
    );
    // Its `pub` went compressed (websockets compresses every frame) and came back
    // compressed: the daemon read it and sent it.
    assert_eq!(report["intact"], true, "{report}");
    assert!(d.metric("switchboard_ws_deflate_frames_total").await >= 1);

    // The same client with compression off still works, uncompressed.
    let report = python_peer(&d, "off");
    assert_eq!(report["extensions"], Value::Null, "{report}");
    assert_eq!(report["intact"], true, "{report}");
}

#[tokio::test]
async fn compression_off_by_default_is_not_offered() {
    let d = Daemon::start("");
    let report = python_peer(&d, "on");
    assert_eq!(report["extensions"], Value::Null, "{report}");
    assert_eq!(report["intact"], true, "{report}");
    let c = Deflating::connect(&d).await;
    assert_eq!(c.extensions, None);
    assert_eq!(
        d.metric("switchboard_ws_deflate_compressions_total").await,
        0
    );
}

#[tokio::test]
async fn a_publish_is_compressed_once_for_all_its_compressed_subscribers() {
    let d = Daemon::start(ON);
    let mut compressed = Vec::new();
    for _ in 0..2 {
        let mut c = Deflating::connect(&d).await;
        assert!(c.extensions.is_some());
        let r = c
            .request(json!({"op": "sub", "topic": "env/all", "id": "s"}))
            .await;
        assert_eq!(r["op"], "ok", "{r}");
        compressed.push(c);
    }
    let mut plain = Raw::subscribed(&d.ws_url(), "env/all").await;
    let before = d.metric("switchboard_ws_deflate_compressions_total").await;
    let data = readings(30);
    let mut publisher = Raw::connect(&d.ws_url()).await;
    let r = publisher
        .request(json!({"op": "pub", "topic": "env/all", "data": data}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    for c in &mut compressed {
        let msg = loop {
            let f = c.recv().await;
            if f["op"] == "msg" {
                break f;
            }
        };
        assert_eq!(msg["data"], data);
    }
    assert_eq!(plain.next_msg().await["data"], data);
    // One compression for the publish, however many compressed subscribers it has
    // (the `ok` replies were too small to compress).
    let after = d.metric("switchboard_ws_deflate_compressions_total").await;
    assert_eq!(after - before, 1);
    assert!(d.metric("switchboard_ws_deflate_frames_total").await >= 2);
}

/// 50,000 characters that differ from batch to batch and compress to about three
/// quarters: the daemon's socket buffers hold few frames of them.
fn noise(batch: u64) -> Value {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = batch.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let text: String = (0..50_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x >> 58) as usize])
        })
        .collect();
    json!({ "batch": batch, "noise": text })
}

#[tokio::test]
async fn a_subscriber_far_behind_gets_the_bytes_compressed_for_the_first() {
    // Room for everything the subscriber behind has not read: nothing is dropped.
    let d = Daemon::start("[ws]\ncompression = true\noutbound_queue_bytes = 67108864\n");
    let mut ahead = Deflating::connect(&d).await;
    let mut behind = Deflating::connect_narrow(&d).await;
    for c in [&mut ahead, &mut behind] {
        let r = c
            .request(json!({"op": "sub", "topic": "env/lag", "id": "s"}))
            .await;
        assert_eq!(r["op"], "ok", "{r}");
    }
    let mut plain = Raw::subscribed(&d.ws_url(), "env/lag").await;
    let before = d.metric("switchboard_ws_deflate_compressions_total").await;
    let frames_before = d.metric("switchboard_ws_deflate_frames_total").await;
    // 8 MB of publishes: more than a cache of recent compressions would hold, and
    // more than the socket buffers of the subscriber that does not read (the design
    // before this test kept at most 8 MiB of frames and their compressed bytes).
    const N: u64 = 160;
    let batches: Vec<Value> = (0..N).map(noise).collect();
    // The compressed subscriber ahead and the plain one read as it is published.
    let expected = batches.clone();
    let readers = tokio::spawn(async move {
        for data in &expected {
            assert_eq!(&ahead.next_msg().await["data"], data);
            assert_eq!(&plain.next_msg().await["data"], data);
        }
    });
    let mut publisher = Raw::connect(&d.ws_url()).await;
    for data in &batches {
        publisher
            .send(json!({"op": "pub", "topic": "env/lag", "data": data}))
            .await;
    }
    readers.await.expect("both read every publish intact");
    // Only now does the other compressed subscriber read: all but its first frames
    // waited in the daemon while the one ahead was sent them all.
    for data in &batches {
        assert_eq!(&behind.next_msg().await["data"], data);
    }
    let after = d.metric("switchboard_ws_deflate_compressions_total").await;
    assert_eq!(after - before, N, "one compression per publish");
    assert_eq!(
        d.metric("switchboard_ws_deflate_frames_total").await - frames_before,
        2 * N,
        "two compressed subscribers; the plain one got plain frames"
    );
}

#[tokio::test]
async fn frames_over_64_kib_go_uncompressed() {
    let d = Daemon::start("[ws]\ncompression = true\nmax_message_size = 262144\n");
    let mut c = Deflating::connect(&d).await;
    let r = c
        .request(json!({"op": "sub", "topic": "env/big", "id": "s"}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    let data = readings(2000); // about 100 KiB
    let mut publisher = Raw::connect(&d.ws_url()).await;
    let r = publisher
        .request(json!({"op": "pub", "topic": "env/big", "data": data}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    let msg = loop {
        let f = c.recv().await;
        if f["op"] == "msg" {
            break f;
        }
    };
    assert_eq!(msg["data"], data);
    // Compressing it would hold the connection's thread for milliseconds.
    assert_eq!(
        d.metric("switchboard_ws_deflate_compressions_total").await,
        0
    );
}

#[tokio::test]
async fn fragmented_compressed_messages_are_reassembled() {
    let d = Daemon::start(ON);
    let mut c = Deflating::connect(&d).await;
    let r = c
        .request(json!({"op": "sub", "topic": "env/frag", "id": "s"}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    let data = readings(50);
    let request = json!({"op": "pub", "topic": "env/frag", "data": data, "id": "p"});
    let packed = compress(request.to_string().as_bytes(), 6).expect("compressible");
    let third = packed.len() / 3;
    let text = OpCode::Data(Data::Text);
    let more = OpCode::Data(Data::Continue);
    c.send_frame(text, false, true, packed[..third].to_vec())
        .await;
    // A control frame may come between fragments (RFC 6455 §5.4).
    c.send_frame(OpCode::Control(Control::Ping), true, false, b"mid".to_vec())
        .await;
    c.send_frame(more, false, false, packed[third..2 * third].to_vec())
        .await;
    c.send_frame(more, true, false, packed[2 * third..].to_vec())
        .await;
    let (mut ok, mut msg) = (None, None);
    while ok.is_none() || msg.is_none() {
        let f = c.recv().await;
        match f["op"].as_str() {
            Some("ok") => ok = Some(f),
            Some("msg") => msg = Some(f),
            _ => panic!("unexpected {f}"),
        }
    }
    assert_eq!(ok.expect("ok")["id"], "p");
    assert_eq!(msg.expect("msg")["data"], data);
}

#[tokio::test]
async fn a_deflate_bomb_is_closed_with_1009() {
    let d = Daemon::start(ON);
    let mut c = Deflating::connect(&d).await;
    // 2 MiB of JSON inflated from about 2 KiB, against a 64 KiB limit.
    let bomb = format!(
        r#"{{"op":"pub","topic":"x","data":"{}"}}"#,
        " ".repeat(2 << 20)
    );
    let packed = compress(bomb.as_bytes(), 9).expect("compressible");
    assert!(packed.len() < 8 * 1024, "{}", packed.len());
    c.ws.send(Message::Frame(compressed_text(packed)))
        .await
        .expect("send");
    assert_eq!(c.close_code().await, Some(1009));
    // Nothing more: others are still served.
    Raw::connect(&d.ws_url()).await;
}

#[tokio::test]
async fn rsv1_garbage_is_closed_with_1002() {
    let d = Daemon::start(ON);
    let mut c = Deflating::connect(&d).await;
    assert!(c.extensions.is_some());
    c.send_frame(OpCode::Data(Data::Text), true, true, vec![0xff; 32])
        .await;
    assert_eq!(c.close_code().await, Some(1002));

    // RSV1 from a client that did not negotiate the extension is refused too.
    let mut plain = Raw::connect(&d.ws_url()).await;
    let packed = compress(&[b'a'; 400], 6).expect("compressible");
    plain
        .ws
        .send(Message::Frame(compressed_text(packed)))
        .await
        .expect("send");
    assert_eq!(plain.close_code(Duration::from_secs(5)).await, Some(1002));
}

#[tokio::test]
async fn the_rust_client_negotiates_compression_when_asked() {
    use switchboard_client::{Client, ClientOptions};
    let d = Daemon::start(ON);
    let options = ClientOptions::new(d.ws_url()).compression(true);
    let reader = Client::connect(options.clone()).await.expect("connect");
    let writer = Client::connect(options).await.expect("connect");
    let mut sub = reader.subscribe("env/rust").await.expect("sub");
    let data = readings(40);
    writer.publish("env/rust", &data).await.expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message")
        .expect("open");
    assert_eq!(m.decode::<Value>().expect("JSON"), data);
    // The push reached the reader compressed (the writer's `pub` went compressed too:
    // the daemon could read it).
    assert_eq!(d.metric("switchboard_ws_deflate_frames_total").await, 1);
    // A publisher that did not ask gets nothing compressed; its push to the reader is.
    let plain = Client::connect(d.ws_url()).await.expect("connect");
    plain.publish("env/rust", &data).await.expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message")
        .expect("open");
    assert_eq!(m.decode::<Value>().expect("JSON"), data);
    assert_eq!(d.metric("switchboard_ws_deflate_frames_total").await, 2);
}

#[tokio::test]
async fn chromium_negotiates_and_exchanges_compressed_frames() {
    let d = Daemon::start(ON);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/deflate.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(format!("http://{}", d.http))
        .output()
        .expect("run node (scripts/test.sh installs tests/browser's playwright-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("report");
    let extensions = report["extensions"].as_str().unwrap_or_default();
    assert!(
        extensions.starts_with("permessage-deflate")
            && extensions.contains("server_no_context_takeover"),
        "{report}"
    );
    // Chromium's `pub` came compressed and was read; the push went back compressed.
    assert_eq!(report["ok"], "ok", "{report}");
    assert_eq!(report["intact"], true, "{report}");
    assert!(d.metric("switchboard_ws_deflate_frames_total").await >= 1);
}

/// A socket that counts the bytes read from it: what the wire carried.
struct Counting {
    tcp: TcpStream,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl tokio::io::AsyncRead for Counting {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

impl tokio::io::AsyncWrite for Counting {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Bytes a subscriber reads per message of a stream, with the daemon's `[ws]` section
/// `ws` (and the client offering compression whenever the daemon has it on).
async fn wire_bytes_per_message(ws: &str, messages: &[Value]) -> f64 {
    let d = Daemon::start(ws);
    let mut request = d.ws_url().into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-extensions",
        HeaderValue::from_static(CLIENT_OFFER),
    );
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tcp = TcpStream::connect(d.http).await.expect("connect");
    let io = Counting {
        tcp,
        read: read.clone(),
    };
    let (ws, _) = tokio_tungstenite::client_async(request, Inflating::client(io, 1 << 20))
        .await
        .expect("handshake");
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text(
        r#"{"op":"sub","topic":"sensors/#","id":"s"}"#,
    ))
    .await
    .expect("sub");
    let mut publisher = Raw::connect(&d.ws_url()).await;
    let mut texts = 0;
    // welcome and the sub's ok
    while texts < 2 {
        if let Some(Ok(Message::Text(_))) = stream.next().await {
            texts += 1;
        }
    }
    let start = read.load(std::sync::atomic::Ordering::Relaxed);
    for (i, data) in messages.iter().enumerate() {
        let topic = format!("sensors/node-{}/env", i % 10);
        publisher
            .send(json!({"op": "pub", "topic": topic, "data": data}))
            .await;
    }
    let mut got = 0;
    while got < messages.len() {
        match stream.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().starts_with(r#"{"op":"msg""#) => got += 1,
            Some(Ok(_)) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
    let bytes = read.load(std::sync::atomic::Ordering::Relaxed) - start;
    bytes as f64 / messages.len() as f64
}

/// The bytes-on-the-wire figures of docs/benchmarks.md (a measurement, not a check):
/// `cargo test --test ws_deflate bytes_on_the_wire -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn bytes_on_the_wire() {
    let n = 500;
    // The MicroPython/Arduino firmware examples' reading, one per message.
    let firmware: Vec<Value> = (0..n)
        .map(|i| json!({"n": i, "t": 21.0 + (i % 37) as f64 * 0.13, "up": 60_000 + i * 5_000, "src": "chip"}))
        .collect();
    // A weather station's reading (docs/examples: weather/<station>/current).
    let weather: Vec<Value> = (0..n)
        .map(|i| json!({"t": 4.8 + (i % 11) as f64 * 0.1, "h": 61 + i % 7, "p": 1013.2, "wind": 3.4, "ts": 1_765_000_000_000u64 + i * 1000}))
        .collect();
    // A gateway's batch: 20 sensors' readings in one message.
    let batch: Vec<Value> = (0..n / 5)
        .map(|i| {
            let rows: Vec<Value> = (0..20)
                .map(|k| json!({"node": format!("node-{k}"), "t": 20.0 + ((i + k) % 50) as f64 * 0.1, "h": 40 + (i + k) % 20, "bat": 3.71}))
                .collect();
            json!({"readings": rows, "ts": 1_765_000_000_000u64 + i * 1000})
        })
        .collect();
    println!("| stream | off | on, threshold 256 | on, threshold 0 |");
    for (name, stream) in [
        ("firmware reading", &firmware),
        ("weather reading", &weather),
        ("20-sensor batch", &batch),
    ] {
        let off = wire_bytes_per_message("", stream).await;
        let on = wire_bytes_per_message(ON, stream).await;
        let all = wire_bytes_per_message(
            "[ws]\ncompression = true\ncompression_threshold = 0\n",
            stream,
        )
        .await;
        println!(
            "| {name} | {off:.0} | {on:.0} ({:.2}x) | {all:.0} ({:.2}x) |",
            off / on,
            off / all
        );
    }
}

/// Resident memory per idle connection, compressed or not, for docs/benchmarks.md (a
/// measurement, not a check; a debug build holds the same heap per connection):
/// `cargo test --test ws_deflate idle_memory -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn idle_memory() {
    let n = 2000;
    for offer in [false, true, false, true] {
        let d = Daemon::start(&format!("{ON}[http]\nmax_connections_per_ip = 5000\n"));
        // Warm up the runtime's threads and allocator before the baseline.
        let warm = Raw::connect(&d.ws_url()).await;
        let before = d.rss_kib();
        let (mut plain, mut compressed) = (Vec::new(), Vec::new());
        for _ in 0..n {
            if offer {
                compressed.push(Deflating::connect(&d).await);
            } else {
                plain.push(Raw::connect(&d.ws_url()).await);
            }
        }
        d.wait_for_connections(n as u64 + 1, Duration::from_secs(10))
            .await;
        let kib = (d.rss_kib() - before) as f64 / n as f64;
        println!("compressed: {offer}: {kib:.2} KiB per idle connection");
        drop((warm, plain, compressed));
    }
}
