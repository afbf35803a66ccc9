//! `switchboard token create` as an operator uses it: the real binary mints a token with
//! the key in a configuration file, and the daemon's own verifier accepts it with the
//! subject, permissions and expiry that were asked for.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use switchboard::auth::jwt::JwtVerifier;
use switchboard::auth::principal::unix_now;
use switchboard::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A configuration with one HS256 key `k1`, its secret written as an editor would
/// (with a trailing newline).
fn setup(dir: &Path) -> PathBuf {
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, "a-test-secret-that-is-long-enough-0123456789\n").expect("secret");
    let config = dir.join("switchboard.toml");
    let toml = format!(
        "data_dir = {data:?}\n\n[[auth.jwt]]\nkid = \"k1\"\nalgorithm = \"HS256\"\nsecret_file = {secret:?}\n",
        data = dir.join("data").display().to_string(),
        secret = secret.display().to_string(),
    );
    std::fs::write(&config, toml).expect("config");
    config
}

/// Runs `switchboard token create ARGS` without any SWITCHBOARD_* variables from the
/// environment of the test run.
fn token_create(config: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command
        .args(["token", "create", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run switchboard")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_minted_token_is_accepted_with_what_was_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = setup(dir.path());
    let before = unix_now();
    let output = token_create(
        &config_path,
        &[
            "--sub",
            "alice",
            "--ttl",
            "1h",
            "--publish",
            "chat/{sub}/#",
            "--subscribe",
            "chat/#",
            "--send",
            "*",
            "--kid",
            "k1",
            "--info",
            r#"{"name":"Alice"}"#,
            "--publish-rate",
            "5",
            "--max-subscriptions",
            "10",
        ],
    );
    assert!(output.status.success(), "failed: {}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    // Only the token, so that `TOKEN=$(switchboard token create …)` works.
    let token = stdout.strip_suffix('\n').expect("one line");
    assert_eq!(token.matches('.').count(), 2, "{stdout:?}");
    assert!(!token.contains(char::is_whitespace));

    let config = Config::load(Some(&config_path)).expect("config");
    let verifier = JwtVerifier::from_config(&config.auth).expect("keys");
    let principal = verifier.verify(token).expect("the daemon accepts it");
    assert_eq!(principal.user.as_deref(), Some("alice"));
    assert!(principal.grants.check_publish("chat/alice/general").is_ok());
    assert!(principal.grants.check_publish("chat/bob/general").is_err());
    assert!(principal.grants.check_subscribe("chat/+/general").is_ok());
    assert!(principal.grants.check_subscribe("news").is_err());
    assert!(principal.grants.check_send(Some("bob")).is_ok());
    let expires = principal.expires_at.expect("exp");
    assert!(
        (before + 3600..=unix_now() + 3600).contains(&expires),
        "exp {expires} is not one hour from {before}"
    );
    assert_eq!(
        principal.info.as_ref().map(|i| i.get()),
        Some(r#"{"name":"Alice"}"#)
    );
    assert_eq!(principal.limits.publish_rate.map(|n| n.get()), Some(5));
    assert_eq!(principal.limits.max_subscriptions, Some(10));

    // Without --kid the first HS* key signs.
    let output = token_create(&config_path, &["--sub", "bob"]);
    assert!(output.status.success(), "failed: {}", stderr(&output));
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let principal = verifier.verify(token.trim_end()).expect("accepted");
    assert_eq!(principal.user.as_deref(), Some("bob"));
    assert!(principal.grants.check_publish("chat/bob/x").is_err());
}

#[test]
fn bad_input_fails_with_a_message_and_no_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = setup(dir.path());

    let output = token_create(&config_path, &["--sub", "alice", "--kid", "k9"]);
    assert!(!output.status.success(), "an unknown kid succeeded");
    assert!(output.stdout.is_empty(), "printed {:?}", output.stdout);
    let message = stderr(&output);
    assert!(
        message.contains("no key has kid `k9`") && message.contains("`k1`"),
        "{message:?}"
    );

    let output = token_create(&config_path, &["--sub", "alice", "--info", "[1]"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--info must be a JSON object"));

    let output = token_create(&config_path, &["--sub", "bad\u{7}user"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("control characters"),
        "{:?}",
        stderr(&output)
    );
}
