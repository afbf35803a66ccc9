//! Credentials for tests: an admin token and a JWT secret in files, the `[auth]` section
//! that uses them, and JWTs signed by hand (not with the daemon's code, so the two
//! cannot share a bug).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

pub const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
pub const ADMIN: &str = "admin-token-for-the-tests-0123456789";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs a JWT by hand (not with the daemon's code, so the two cannot share a bug).
pub fn sign(header: &Value, claims: &Value, secret: &str) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!("{}.{}", b64(header), b64(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{sig}")
}

pub fn token(claims: Value) -> String {
    sign(&json!({"alg":"HS256","typ":"JWT"}), &claims, SECRET)
}

/// A token for `sub` valid for an hour, with these grants.
pub fn user_token(sub: &str, grants: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 3600});
    for (k, v) in grants.as_object().unwrap() {
        claims[k] = v.clone();
    }
    token(claims)
}

/// Files the daemon's configuration points at, kept for the test's duration.
pub struct Secrets {
    pub dir: tempfile::TempDir,
}

impl Secrets {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwt.secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN).unwrap();
        Secrets { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An `[auth]` section requiring credentials, plus `extra` settings.
    pub fn config(&self, extra: &str) -> String {
        format!(
            r#"
[presence]
topics = ["room/+"]

[auth]
allow_anonymous = false
admin_token_file = "{admin}"
api_keys_file = "{keys}"
auth_timeout = "1s"
leeway = "1s"
allowed_origins = ["https://app.example.com"]

[[auth.jwt]]
algorithm = "HS256"
secret_file = "{secret}"
{extra}
"#,
            admin = self.path("admin.token").display(),
            keys = self.path("api_keys.json").display(),
            secret = self.path("jwt.secret").display(),
        )
    }
}

/// A password file made with `switchboard passwd`, as an operator makes one; its path.
pub fn password_file(dir: &std::path::Path, users: &[(&str, &str)]) -> String {
    let path = dir.join("passwd");
    for (i, (user, pass)) in users.iter().enumerate() {
        let mut cmd = std::process::Command::new(super::BIN);
        cmd.arg("passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&path)
            .args([user, pass])
            .stdin(std::process::Stdio::null())
            .status()
            .expect("switchboard passwd");
        assert!(status.success());
    }
    path.to_str().unwrap().to_owned()
}
