//! The same API call over HTTP/1.1 keep-alive and over the open WebSocket (the `http`
//! op), with and without TLS: request latency, p50 and p99, and the ratio between the
//! two ways in the same run. The call is `POST /api/v1/publish`, served by the very
//! same handler both ways, so the difference is the transport alone.
//!
//! Run: `cargo bench --bench api` (about 30 s after the build), or
//! `cargo bench --bench api -- --quick` (smoke test). Options: `--requests 5000` per
//! point, `--rounds 3` (each point this many times, the order of the two ways swapped
//! every other round, the median reported).
//!
//! One request at a time on one connection: latency, not throughput. The daemon runs
//! on core 0 and the bench on core 1 when `taskset` is there.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

use switchboard_bench::daemon::Daemon;
use switchboard_bench::{harness, host};

struct Options {
    requests: usize,
    rounds: usize,
    quick: bool,
}

fn options() -> Options {
    let mut o = Options {
        requests: 5000,
        rounds: 3,
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--requests" => o.requests = harness::number_arg("--requests", args.next()) as usize,
            "--rounds" => o.rounds = harness::number_arg("--rounds", args.next()) as usize,
            // Passed by `cargo bench`, and anything else is not ours.
            _ => {}
        }
    }
    if o.quick {
        o.requests = 300;
        o.rounds = 1;
    }
    o
}

/// A CA and a server certificate for localhost, written into `dir`; returns the CA.
fn certificates(dir: &Path) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("leaf params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    std::fs::write(dir.join("server.pem"), leaf.pem()).expect("write certificate");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
    ca.der().clone()
}

fn config(dir: &Path, tls: bool) -> String {
    let mut c = switchboard_bench::daemon::SWITCHBOARD_WS_CONFIG.to_owned();
    if tls {
        let _ = write!(
            c,
            "\n[http]\ntls = true\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        );
    }
    c
}

fn body(i: usize) -> serde_json::Value {
    json!({"topic": "bench/api", "data": {"n": i, "text": "a reading of 64 bytes or so"}})
}

/// Latencies in nanoseconds of `n` sequential publishes over HTTP/1.1, on one
/// keep-alive connection, or on a new connection each (`keep_alive` false: what a
/// script calling `curl` per request pays).
async fn over_http(
    base: &str,
    ca: Option<&CertificateDer<'static>>,
    n: usize,
    keep_alive: bool,
) -> Vec<u64> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(usize::from(keep_alive))
        .tls_built_in_root_certs(false);
    if let Some(ca) = ca {
        let cert = reqwest::Certificate::from_der(ca).expect("CA certificate");
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().expect("HTTP client");
    let url = format!("{base}/api/v1/publish");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let body = body(i).to_string();
        let start = Instant::now();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.expect("response body");
        out.push(start.elapsed().as_nanos() as u64);
    }
    out
}

/// Latencies in nanoseconds of `n` sequential publishes over one WebSocket: carried as
/// HTTP requests (the `http` op), or as the protocol's own `pub` op (`native`), the
/// floor of what a request over the socket costs.
async fn over_ws(
    base: &str,
    ca: Option<&CertificateDer<'static>>,
    n: usize,
    native: bool,
) -> Vec<u64> {
    let url = format!("{}/ws", base.replacen("http", "ws", 1));
    let connector = ca.map(|ca| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).expect("CA certificate");
        Connector::Rustls(Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        ))
    });
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector)
        .await
        .expect("WebSocket connect");
    ws.next().await.expect("welcome").expect("welcome");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let request = if native {
            let mut r = body(i);
            r["op"] = "pub".into();
            r["id"] = i.into();
            r
        } else {
            json!({"op":"http","id":i,"method":"POST","path":"/api/v1/publish","body":body(i)})
        };
        let start = Instant::now();
        ws.send(Message::text(request.to_string()))
            .await
            .expect("send");
        loop {
            let Some(Ok(Message::Text(reply))) = ws.next().await else {
                panic!("the connection ended");
            };
            if native && reply.contains("\"op\":\"ok\"") {
                break;
            }
            if reply.contains("\"op\":\"http\"") {
                assert!(reply.contains("\"status\":200"), "{reply}");
                break;
            }
        }
        out.push(start.elapsed().as_nanos() as u64);
    }
    out
}

fn percentile_us(mut v: Vec<u64>, p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let o = options();
    let pin = host::taskset_available() && host::pin_self(1);
    let (rt, local) = harness::local_runtime();
    println!(
        "HTTP/1.1 keep-alive versus HTTP over the open WebSocket: {} sequential POST /api/v1/publish per point, median of {} round(s). {}\n{}",
        o.requests,
        o.rounds,
        host::machine(),
        harness::pinning_line(pin, "daemon pinned to core 0 (taskset -c 0), bench to core 1")
    );
    let mut table = String::new();
    let mut results = Vec::new();
    for tls in [false, true] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = certificates(dir.path());
        let config_path = dir.path().join("switchboard.toml");
        std::fs::write(&config_path, config(dir.path(), tls)).expect("write config");
        let daemon = Daemon::start(env!("CARGO_BIN_EXE_switchboard"), &config_path, pin);
        let scheme = if tls { "https" } else { "http" };
        let base = format!("{scheme}://localhost:{}", daemon.addr.port());
        let ca = tls.then_some(&ca);
        // Each way's (p50, p99) per round.
        let mut points: [Vec<(f64, f64)>; 4] = Default::default();
        local.block_on(&rt, async {
            // Warm-up: connections, TLS sessions, the lazily built router.
            over_http(&base, ca, 200, true).await;
            over_ws(&base, ca, 200, false).await;
            for round in 0..o.rounds {
                let mut order = [0usize, 1, 2, 3];
                if round % 2 == 1 {
                    order.reverse();
                }
                for way in order {
                    let fresh = o.requests / 10;
                    let latencies = match way {
                        0 => over_http(&base, ca, o.requests, true).await,
                        1 => over_ws(&base, ca, o.requests, false).await,
                        2 => over_ws(&base, ca, o.requests, true).await,
                        _ => over_http(&base, ca, fresh.max(50), false).await,
                    };
                    points[way].push((
                        percentile_us(latencies.clone(), 0.5),
                        percentile_us(latencies, 0.99),
                    ));
                }
            }
        });
        drop(daemon);
        let m = |way: usize| {
            (
                median(points[way].iter().map(|x| x.0).collect()),
                median(points[way].iter().map(|x| x.1).collect()),
            )
        };
        let ((h50, h99), (w50, w99), (n50, n99), (c50, c99)) = (m(0), m(1), m(2), m(3));
        let label = if tls { "TLS" } else { "plain" };
        let _ = writeln!(
            table,
            "| {label} | {h50:.0} / {h99:.0} | {w50:.0} / {w99:.0} | **{:.2}× / {:.2}×** | {n50:.0} / {n99:.0} | {c50:.0} / {c99:.0} | {:.1}× |",
            h50 / w50,
            h99 / w99,
            c50 / w50,
        );
        results.push(json!({
            "tls": tls,
            "http_keepalive_p50_us": h50, "http_keepalive_p99_us": h99,
            "http_over_ws_p50_us": w50, "http_over_ws_p99_us": w99,
            "ws_pub_op_p50_us": n50, "ws_pub_op_p99_us": n99,
            "http_new_connection_p50_us": c50, "http_new_connection_p99_us": c99,
            "ratio_keepalive_to_ws_p50": h50 / w50, "ratio_keepalive_to_ws_p99": h99 / w99,
            "ratio_new_connection_to_ws_p50": c50 / w50,
        }));
    }
    println!("\nµs, p50 / p99:\n");
    println!("| | HTTP/1.1 keep-alive | HTTP over the WebSocket | keep-alive ÷ over WS | WS `pub` op (floor) | HTTP, new connection each | new connection ÷ over WS (p50) |");
    println!("|---|---|---|---|---|---|---|");
    print!("{table}");
    harness::write_results(
        env!("CARGO_TARGET_TMPDIR"),
        "bench-api.json",
        &json!({"machine": host::machine(), "requests": o.requests, "rounds": o.rounds, "results": results}),
    );
}
