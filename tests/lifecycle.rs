//! The daemon's life as an operator sees it: start with no configuration, refuse a
//! broken one, drop dead peers, shut down gracefully.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Daemon, Raw, BIN};
use serde_json::json;

#[test]
fn serve_with_no_configuration_at_all() {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // Port 0 through the environment only, so the default ports stay free for users.
        .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines: Vec<String> = {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let done = line.contains("listening ");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    };
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("anonymous clients are allowed"), "{text}");
    let data_dir = home.path().join(".local/share/switchboard");
    assert!(text.contains(&data_dir.display().to_string()), "{text}");
    assert!(data_dir.is_dir(), "data directory created");
    let listening = lines.last().unwrap().split("listening ").nth(1).unwrap();
    for name in ["http", "mqtt", "mqtt_ws"] {
        let addr = common::parse_listening(listening, name)
            .unwrap_or_else(|| panic!("{name} in {listening}"));
        assert!(addr.ip().is_loopback(), "localhost only by default: {addr}");
        assert_ne!(addr.port(), 0);
    }
}

#[test]
fn xdg_data_home_is_respected() {
    let xdg = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--print", "/dev/null"])
        .env("XDG_DATA_HOME", xdg.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&xdg.path().join("switchboard").display().to_string()),
        "{text}"
    );
}

#[test]
fn broken_configuration_is_reported_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[http]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
            "3:1",
            "did you mean `listen`",
        ),
        ("[ws]\nheartbeat_interval = 30\n", "2:", "hint:"),
        ("[ws]\nmax_message_size = 0\n", "2:", "at least 1"),
        (
            "[presence]\ntopics = [\"a/#/b\"]\n",
            "2:",
            "`#` must be the last level",
        ),
        ("[[http]]\n", "1:", ""),
        ("nonsense\n", "1:", ""),
    ];
    for (i, (text, position, hint)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} accepted");
        assert!(
            err.contains(&format!("{}:{position}", path.display())),
            "{text}: {err}"
        );
        assert!(err.contains(hint), "{text}: {err}");

        // `serve` refuses the same file without binding anything.
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve started with {text}");
        assert!(!err.contains("listening"), "{err}");
    }
    // A missing file, and a bad environment override.
    let out = Command::new(BIN)
        .args(["check-config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent.toml"));
    let out = Command::new(BIN)
        .args(["check-config", "/dev/null"])
        .env("SWITCHBOARD_WS_MAX_SUBSCRIPTIONS", "many")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SWITCHBOARD_WS_MAX_SUBSCRIPTIONS"));
    // And the annotated default configuration is itself valid, given the credential
    // files the package makes at install (here in the test's directory).
    let annotated = dir.path().join("default.toml");
    let out = Command::new(BIN).arg("default-config").output().unwrap();
    std::fs::write(&annotated, &out.stdout).unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&annotated)
        .env("SWITCHBOARD_AUTH_ADMIN_TOKEN_FILE", &token)
        .env("SWITCHBOARD_MQTT_PASSWORD_FILE", &passwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn port_in_use_stops_startup_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .env("SWITCHBOARD_HTTP_LISTEN", addr.to_string())
        .env("SWITCHBOARD_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot listen for HTTP on {addr}")),
        "{err}"
    );
}

#[test]
fn mqtt_port_in_use_stops_startup_with_a_clear_error() {
    // rumqttd's own listeners only log a bind failure and run on without it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for var in ["SWITCHBOARD_MQTT_LISTEN", "SWITCHBOARD_MQTT_WS_LISTEN"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_DATA_DIR", dir.path())
            .env(var, addr.to_string());
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: {err}");
        assert!(
            err.contains(&format!("cannot listen for MQTT on {addr}")),
            "{var}: {err}"
        );
        assert!(!err.contains("listening http="), "nothing served: {err}");
    }
}

#[test]
fn a_missing_or_broken_password_file_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("passwd");
    std::fs::write(&broken, "node-1:$7$101$notbase64\nnode-2\n").unwrap();
    for (file, expect) in [
        (dir.path().join("absent"), "absent".to_owned()),
        (broken.clone(), format!("{}:1", broken.display())),
    ] {
        let config = dir.path().join("switchboard.toml");
        std::fs::write(
            &config,
            format!("[mqtt]\npassword_file = {:?}\n", file.display().to_string()),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("cannot load the MQTT password file"), "{err}");
        assert!(err.contains(&expect), "names {expect}: {err}");
        assert!(!err.contains("listening http="), "nothing served: {err}");
    }
}

#[test]
fn mqtt_listeners_can_be_turned_off() {
    let d = Daemon::start_with_env(
        "[mqtt]\nws_listen = \"\"\n",
        &[("SWITCHBOARD_MQTT_WS_LISTEN", "")],
    );
    assert!(d.mqtt.is_some());
    assert!(d.mqtt_ws.is_none(), "{}", d.logs());
    let d = Daemon::start_with_env(
        "",
        &[
            ("SWITCHBOARD_MQTT_LISTEN", ""),
            ("SWITCHBOARD_MQTT_WS_LISTEN", ""),
        ],
    );
    assert!(d.mqtt.is_none() && d.mqtt_ws.is_none());
    assert!(d.logs().contains("MQTT is turned off"), "{}", d.logs());
}

#[tokio::test]
async fn dead_peers_are_dropped_after_missed_heartbeats() {
    let d = Daemon::start("[ws]\nheartbeat_interval = \"200ms\"\nheartbeat_misses = 2\n[presence]\ntopics = [\"room\"]\n");
    let mut watcher = Raw::connect(&d.ws_url()).await;
    watcher.request(json!({"op":"sub","topic":"room"})).await;
    // This client joins, then stops reading its socket: it never answers a ping.
    let mut silent = Raw::connect(&d.ws_url()).await;
    silent.request(json!({"op":"sub","topic":"room"})).await;
    assert_eq!(watcher.recv().await["op"], "join");
    // The watcher keeps reading, so tungstenite answers its pings and it stays.
    let leave = watcher.recv().await;
    assert_eq!(leave["op"], "leave", "{leave}");
    assert_eq!(leave["client"], silent.client_id);
    let r = watcher.request(json!({"op":"ping"})).await;
    assert_eq!(r["op"], "ok", "a live peer is kept");
    assert_eq!(d.healthz().await["connections"], 1);
}

#[tokio::test]
async fn graceful_shutdown_flushes_and_closes_with_1001() {
    let mut d = Daemon::start("");
    let mut subs = Vec::new();
    for _ in 0..20 {
        let mut c = Raw::connect(&d.ws_url()).await;
        c.request(json!({"op":"sub","topic":"bye"})).await;
        subs.push(c);
    }
    let mut publisher = Raw::connect(&d.ws_url()).await;
    for i in 0..200 {
        publisher
            .send(json!({"op":"pub","topic":"bye","data":i}))
            .await;
    }
    publisher.request(json!({"op":"ping"})).await;
    d.signal("TERM");
    for c in subs.iter_mut() {
        let mut got = 0;
        let code = loop {
            match tokio::time::timeout(
                Duration::from_secs(10),
                futures_util::StreamExt::next(&mut c.ws),
            )
            .await
            {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                    let f: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if f["op"] == "msg" {
                        assert_eq!(f["data"], got);
                        got += 1;
                    }
                }
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f)))) => {
                    break f.map(|f| u16::from(f.code))
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("connection ended without a close frame: {other:?}"),
            }
        };
        assert_eq!(got, 200, "every queued message was written before closing");
        assert_eq!(code, Some(1001));
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = d.wait_exit(Duration::from_secs(10));
        (s, d.logs())
    })
    .await
    .unwrap();
    let (status, logs) = status;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit 0 after SIGTERM; logs:\n{logs}"
    );
    assert!(logs.contains("shutting down"), "{logs}");
}

#[tokio::test]
async fn sigint_also_stops_cleanly_with_no_clients() {
    let mut d = Daemon::start("");
    d.signal("INT");
    let status = tokio::task::spawn_blocking(move || d.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}
