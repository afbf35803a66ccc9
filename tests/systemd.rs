//! The daemon under a service manager: what it tells systemd through `NOTIFY_SOCKET`
//! (readiness, status, watchdog pings, reload and stop), checked on a socket of our
//! own, so no systemd is needed.

mod common;

use std::time::Duration;

use common::notify::{status, NotifySocket};
use common::{Daemon, Raw};
use tokio::time::Instant;

/// Starts the daemon with `config`, reporting to `notify`, with a 400 ms watchdog.
fn start(config: &str, notify: &NotifySocket) -> Daemon {
    Daemon::start_with_env(
        config,
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
}

/// Waits for the daemon to exit, off the async runtime.
async fn exit_code(mut d: Daemon) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let status = d.wait_exit(Duration::from_secs(10));
        (status.and_then(|s| s.code()), d.logs())
    })
    .await
    .expect("wait task")
}

#[tokio::test]
async fn ready_comes_once_the_listeners_accept_and_says_what_listens() {
    let notify = NotifySocket::bind();
    let d = start("", &notify);
    // The first thing systemd hears is READY: no watchdog ping or status before it.
    let first = notify
        .recv(Duration::from_secs(10))
        .await
        .expect("a notification");
    assert!(first.iter().any(|l| l == "READY=1"), "{first:?}");
    // Right now, not after a retry: the HTTP listener serves when READY arrives.
    let health = common::http_get_json(d.http, "/healthz").await;
    assert_eq!(health["status"], "ok", "{health}");
    let mqtt = d.mqtt.expect("MQTT listens by default");
    tokio::net::TcpStream::connect(mqtt)
        .await
        .expect("the MQTT listener accepts at READY");
    let status = status(&first).expect("STATUS= with READY");
    assert!(status.starts_with("listening "), "{status}");
    assert!(status.contains(&format!("http={}", d.http)), "{status}");
    assert!(status.contains(&format!("mqtt={mqtt}")), "{status}");
}

#[tokio::test]
async fn watchdog_pings_come_at_half_the_interval() {
    let notify = NotifySocket::bind();
    let d = start("", &notify);
    notify.wait_for("READY=1").await;
    // WATCHDOG_USEC=400000: a ping every 200 ms, so about 7 in 1.5 s. A loaded machine
    // may delay some; a ping per tick of a wrong unit (µs as ms…) would be far off.
    let window = Duration::from_millis(1500);
    let end = Instant::now() + window;
    let mut pings = 0;
    while let Some(notice) = notify
        .recv(end.saturating_duration_since(Instant::now()))
        .await
    {
        assert_eq!(notice, ["WATCHDOG=1"], "only pings while idle");
        pings += 1;
    }
    assert!((4..=10).contains(&pings), "{pings} pings in {window:?}");
    d.wait_log("systemd watchdog on").await;
}

#[tokio::test]
async fn watchdog_meant_for_another_process_is_not_pinged() {
    let notify = NotifySocket::bind();
    let d = Daemon::start_with_env(
        "",
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "100000"),
            // systemd sets WATCHDOG_PID to the main process; here it is not us.
            ("WATCHDOG_PID", "1"),
        ],
    );
    notify.wait_for("READY=1").await;
    // Four periods at least, had it been on: the daemon logs its watchdog at READY.
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.signal("TERM");
    let until_stop = notify.until("STOPPING=1").await;
    assert!(
        until_stop
            .iter()
            .all(|n| !n.contains(&"WATCHDOG=1".to_owned())),
        "{until_stop:?}"
    );
    // The last line of a shutdown: every line before it has been read.
    d.wait_log("stopped").await;
    assert!(!d.logs().contains("systemd watchdog on"), "{}", d.logs());
}

#[tokio::test]
async fn sighup_reloads_between_reloading_and_ready_and_refuses_a_broken_config() {
    let notify = NotifySocket::bind();
    let d = start("", &notify);
    notify.wait_for("READY=1").await;
    let mut client = Raw::connect(&d.ws_url()).await;

    std::fs::write(&d.config_path, "[shutdown]\ngrace = \"3s\"\n").expect("write config");
    d.signal("HUP");
    let reloading = notify.wait_for("RELOADING=1").await;
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "systemd 253+ needs the time with RELOADING=1: {reloading:?}"
    );
    let ready = notify.wait_for("READY=1").await;
    let applied = status(&ready).expect("STATUS= after the reload");
    assert!(applied.starts_with("reload applied"), "{applied}");
    assert!(applied.contains("serving 1 clients"), "{applied}");

    std::fs::write(&d.config_path, "[shutdown\ngrace = 3\n").expect("write config");
    d.signal("HUP");
    notify.wait_for("RELOADING=1").await;
    let ready = notify.wait_for("READY=1").await;
    let refused = status(&ready).expect("STATUS= after the refused reload");
    assert!(refused.starts_with("reload refused"), "{refused}");
    d.wait_log("reload refused").await;
    // Still serving, connection and all.
    let pong = client.request(serde_json::json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "ok", "{pong}");
    assert_eq!(d.healthz().await["status"], "ok");
}

#[tokio::test]
async fn sigterm_says_stopping_with_the_clients_it_closes() {
    let notify = NotifySocket::bind();
    let d = start("", &notify);
    notify.wait_for("READY=1").await;
    let _a = Raw::connect(&d.ws_url()).await;
    let _b = Raw::connect(&d.ws_url()).await;
    assert_eq!(d.wait_for_connections(2, Duration::from_secs(5)).await, 2);
    d.signal("TERM");
    let stopping = notify.wait_for("STOPPING=1").await;
    assert_eq!(
        status(&stopping),
        Some("shutting down: closing 2 clients"),
        "{stopping:?}"
    );
    let (code, logs) = exit_code(d).await;
    assert_eq!(code, Some(0), "{logs}");
}

#[test]
fn an_inherited_journal_stream_that_is_not_stderr_keeps_the_text_logs() {
    // The harness reads the `listening` line from stderr: it would not start otherwise.
    let d = Daemon::start_with_env("", &[("JOURNAL_STREAM", "1:1")]);
    assert_eq!(d.listening("http"), Some(d.http), "{}", d.logs());
}

/// The unit in packaging/ as the .deb installs it.
const UNIT: &str = include_str!("../packaging/switchboard.service");

#[test]
fn the_unit_waits_for_ready_and_keeps_its_hardening() {
    let settings: Vec<&str> = UNIT
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for wanted in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "ExecReload=/bin/sh -c \"kill -HUP $MAINPID\"",
        "User=switchboard",
        "StateDirectory=switchboard",
        "Environment=SWITCHBOARD_DATA_DIR=/var/lib/switchboard",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "SystemCallFilter=@system-service",
    ] {
        assert!(settings.contains(&wanted), "{wanted} missing from the unit");
    }
    assert!(
        settings.iter().any(|l| l.starts_with("ExecStart=")
            && l.ends_with("--config /etc/switchboard/switchboard.toml")),
        "ExecStart names the packaged config"
    );
}

/// `systemd-analyze` (Debian's `systemd` package, which scripts/test.sh installs) checks
/// the unit; it needs no running systemd.
#[test]
fn systemd_analyze_accepts_the_unit_and_scores_it_2_or_better() {
    analyze("switchboard.service", UNIT, "switchboard.service");
}

/// The template unit in packaging/, for several daemons on one box.
const TEMPLATE: &str = include_str!("../packaging/switchboard@.service");

/// What an instance changes: its name, its config file and its data directory.
/// Everything else (readiness, watchdog, hardening) must stay the main unit's.
#[test]
fn the_template_unit_is_the_main_unit_but_for_config_and_data() {
    let settings = |unit: &'static str| -> Vec<&'static str> {
        unit.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter(|l| !l.starts_with("Description=") && !l.starts_with("Documentation="))
            .collect()
    };
    let instance: Vec<String> = settings(TEMPLATE)
        .iter()
        .map(|l| l.replace("%i.toml", "switchboard.toml").replace("/%i", ""))
        .collect();
    assert_eq!(instance, settings(UNIT), "the units drifted apart");
    for wanted in [
        "ExecStart=/usr/bin/switchboard serve --config /etc/switchboard/%i.toml",
        "Environment=SWITCHBOARD_DATA_DIR=/var/lib/switchboard/%i",
        "StateDirectory=switchboard/%i",
    ] {
        assert!(settings(TEMPLATE).contains(&wanted), "{wanted} missing");
    }
}

#[test]
fn systemd_analyze_accepts_the_template_unit_and_scores_it_2_or_better() {
    // systemd-analyze checks a template as its instance `i`.
    analyze("switchboard@.service", TEMPLATE, "switchboard@i.service");
}

/// `systemd-analyze verify` and `security` on `unit` written as `file`: no complaint,
/// and an exposure of 2.0 or better for `shown` (the name systemd reports).
fn analyze(file: &str, unit: &str, shown: &str) {
    let probe = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "systemd-analyze is not installed: run `bash scripts/test.sh`, which installs it"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(file);
    // verify wants ExecStart to exist: point it at the binary under test.
    std::fs::write(&path, unit.replace("/usr/bin/switchboard", common::BIN)).expect("write unit");
    // verify also looks up `Documentation=man:switchboard(1)`: show it the packaged page.
    let man1 = dir.path().join("man").join("man1");
    std::fs::create_dir_all(&man1).expect("man dir");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/switchboard.1"),
        man1.join("switchboard.1"),
    )
    .expect("copy the man page");
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze verify");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let level = format!("Overall exposure level for {shown}: ");
    let score: f64 = report
        .lines()
        .find_map(|l| l.split(level.as_str()).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(score <= 2.0, "exposure {score}:\n{report}");
}
