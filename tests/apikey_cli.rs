//! `switchboard apikey` as an operator uses it: the real binary creating, listing and
//! revoking keys in the file the configuration names, and the library that the daemon
//! verifies with agreeing on the result.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use switchboard::auth::apikeys::ApiKeys;
use switchboard::auth::{AuthError, Kind};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Runs `switchboard apikey ARGS --config CONFIG`.
fn apikey(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("apikey")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SWITCHBOARD_CONFIG")
        .env_remove("SWITCHBOARD_DATA_DIR")
        .env_remove("SWITCHBOARD_AUTH_API_KEYS_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_ok(output: &Output) {
    assert!(output.status.success(), "failed: {}", stderr(output));
}

/// Asserts a failure whose message contains `expected`.
#[track_caller]
fn assert_fails(output: &Output, expected: &str) {
    let message = stderr(output);
    assert!(!output.status.success(), "succeeded: {message}");
    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
}

/// Creates a key and returns it: stdout is the key alone on one line.
#[track_caller]
fn create(config: &Path, args: &[&str]) -> String {
    let output = apikey(config, &[&["create"], args].concat());
    assert_ok(&output);
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 1, "{out:?}");
    let key = out.trim_end_matches('\n').to_owned();
    assert!(key.starts_with("sbk_"), "{key}");
    let note = stderr(&output);
    assert!(note.contains("not be shown again"), "{note}");
    assert!(!note.contains(&key), "the note repeats the key");
    key
}

/// The id in `sbk_<id>_<secret>`.
fn id_of(key: &str) -> &str {
    &key["sbk_".len().."sbk_".len() + 12]
}

/// A row of `list` output for `id`.
#[track_caller]
fn row<'a>(list: &'a str, id: &str) -> &'a str {
    list.lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

#[test]
fn create_list_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n", dir.path().display().to_string()),
    )
    .unwrap();
    let file = dir.path().join("api_keys.json");

    let backend = create(
        &config,
        &[
            "backend",
            "--publish",
            "orders/#",
            "--subscribe",
            "orders/#",
            "--subscribe",
            "status/+",
            "--send",
            "alice",
        ],
    );
    let cron = create(&config, &["cron job", "--publish", "jobs/done"]);
    assert_ne!(id_of(&backend), id_of(&cron));
    assert!(file.exists(), "keys go to <data_dir>/api_keys.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let secret = |key: &str| key["sbk_".len() + 13..].to_owned();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&secret(&backend)) && !text.contains(&secret(&cron)));

    // The table shows both, with scopes, and no secret.
    let output = apikey(&config, &["list"]);
    assert_ok(&output);
    let list = stdout(&output);
    assert!(list.starts_with("ID"), "{list}");
    assert_eq!(list.lines().count(), 3, "{list}");
    let b = row(&list, id_of(&backend));
    assert!(b.contains("backend"), "{b}");
    assert!(
        b.contains("publish=orders/# subscribe=orders/#,status/+ send=alice"),
        "{b}"
    );
    assert!(b.trim_end().ends_with('-'), "not revoked: {b}");
    assert!(row(&list, id_of(&cron)).contains("cron job"));
    for key in [&backend, &cron] {
        assert!(!list.contains(&secret(key)), "{list}");
    }

    let output = apikey(&config, &["revoke", id_of(&cron)]);
    assert_ok(&output);
    assert!(stdout(&output).contains(id_of(&cron)));

    // Listed as revoked, with a time; JSON says the same and has no secret or hash.
    let list = stdout(&apikey(&config, &["list"]));
    let c = row(&list, id_of(&cron));
    assert!(!c.trim_end().ends_with('-'), "revoked: {c}");
    assert!(c.trim_end().ends_with('Z'), "{c}");
    assert!(row(&list, id_of(&backend)).trim_end().ends_with('-'));
    let output = apikey(&config, &["list", "--json"]);
    assert_ok(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let keys = json.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[0]["revoked"].is_null());
    assert!(keys[1]["revoked"].is_u64());
    assert!(keys[0].get("hash").is_none());
    assert!(!stdout(&output).contains(&secret(&backend)));

    // What the daemon would load refuses the revoked key and accepts the other.
    let keys = ApiKeys::open(&file).unwrap();
    assert_eq!(keys.active(), 1);
    assert_eq!(keys.verify(&cron).unwrap_err(), AuthError::Revoked);
    let p = keys.verify(&backend).unwrap();
    assert_eq!(
        p.kind,
        Kind::ApiKey {
            id: id_of(&backend).to_owned()
        }
    );
    assert_eq!(p.user.as_deref(), Some("apikey:backend"));
    assert!(p.grants.check_publish("orders/42").is_ok());
    assert!(p.grants.check_publish("status/42").is_err());
    assert!(p.grants.check_subscribe("status/+").is_ok());
    assert!(p.grants.check_subscribe("jobs/#").is_err());
    assert!(p.grants.check_send(Some("alice")).is_ok());
    assert!(p.grants.check_send(Some("bob")).is_err());

    // Revoking again says it already is.
    let output = apikey(&config, &["revoke", id_of(&cron)]);
    assert_fails(&output, "already revoked");
}

#[test]
fn bad_input_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    let file = dir.path().join("keys").join("api.json");
    std::fs::write(
        &config,
        format!("[auth]\napi_keys_file = {:?}\n", file.display().to_string()),
    )
    .unwrap();

    let output = apikey(&config, &["create", "x", "--subscribe", "a/#/b"]);
    assert_fails(&output, "a/#/b");
    assert!(stdout(&output).is_empty());
    let output = apikey(&config, &["create", "x", "--publish", "sensors/+x"]);
    assert_fails(&output, "sensors/+x");
    assert_fails(&apikey(&config, &["create", "x"]), "scope");
    assert_fails(
        &apikey(&config, &["create", "", "--subscribe", "a"]),
        "name",
    );
    assert!(!file.exists(), "nothing was written");

    assert_fails(
        &apikey(&config, &["revoke", "0123456789ab"]),
        "0123456789ab",
    );
    let key = create(&config, &["x", "--subscribe", "a/#"]);
    assert_fails(&apikey(&config, &["revoke", "0123456789ab"]), "no API key");
    // A whole key pasted by mistake is refused without being echoed.
    let output = apikey(&config, &["revoke", &key]);
    assert_fails(&output, "id");
    assert!(!stderr(&output).contains(&key));
    assert_fails(
        &apikey(&config, &["create", "x", "--subscribe", "a"]),
        "already named",
    );

    // The configured file, not the data dir.
    assert!(file.exists());
    let keys = ApiKeys::open(&file).unwrap();
    assert!(keys.verify(&key).is_ok());

    // A broken file is named.
    std::fs::write(&file, "{\"version\": 2, \"keys\": []}").unwrap();
    let output = apikey(&config, &["list"]);
    assert_fails(&output, "version 2");
    assert!(stderr(&output).contains("api.json"));
}
