//! `switchboard check-config` reports every file the configuration names that the daemon
//! could not read, so that a configuration that passes the check starts (docs/systemd.md).
//! The real binary, on files a newcomer gets wrong.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn run(args: &[&str], config: &std::path::Path, data: &std::path::Path) -> Output {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .arg(config)
        .env("SWITCHBOARD_DATA_DIR", data)
        // Free ports, in case `serve` gets as far as binding.
        .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run switchboard")
}

#[test]
fn missing_files_fail_the_check_and_a_passing_config_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let token = d.join("admin.token");
    let secret = d.join("jwt.secret");
    let hook_secret = d.join("hook.secret");
    let config = d.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nadmin_token_file = {token:?}\n\n\
             [[auth.jwt]]\nalgorithm = \"HS256\"\nsecret_file = {secret:?}\n\n\
             [[hooks]]\nname = \"gh\"\ntopic = \"hooks/gh\"\nsignature = \"github\"\nsecret_file = {hook_secret:?}\n",
            token = token.display().to_string(),
            secret = secret.display().to_string(),
            hook_secret = hook_secret.display().to_string(),
        ),
    )
    .expect("write config");
    let data = d.join("data");

    // None of the three exists: each is named, with its key.
    let out = run(&["check-config"], &config, &data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    for key in [
        "auth.admin_token_file",
        "auth.jwt[0].secret_file",
        "hooks[0].secret_file",
    ] {
        assert!(err.contains(key), "{key} not reported: {err}");
    }
    assert!(err.contains("No such file"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("is valid"));
    // And `serve` indeed refuses it.
    let out = run(&["serve", "--config"], &config, &data);
    assert!(!out.status.success(), "serve started with missing files");

    // Present but wrong: a JWT secret shorter than 32 bytes is refused by the loader.
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
    std::fs::write(&secret, "short").expect("secret");
    std::fs::write(&hook_secret, "a-hook-secret-0123456789abcdef\n").expect("hook secret");
    let out = run(&["check-config"], &config, &data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a short JWT secret accepted: {err}");
    assert!(err.contains("[auth]"), "{err}");

    // All good: the check passes, and the daemon starts with that file.
    std::fs::write(&secret, "a-test-secret-that-is-long-enough-0123456789\n").expect("secret");
    let out = run(&["check-config"], &config, &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("SWITCHBOARD_DATA_DIR", &data)
        .env("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MQTT_WS_LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let stderr = child.stderr.take().expect("stderr");
    let listening = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .any(|l| l.contains("listening "));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        listening,
        "a configuration that passed the check did not start"
    );
}
