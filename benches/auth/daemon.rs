//! The auth bench's daemon configuration: one file shared by every point of the run
//! (each point gets a fresh process from `switchboard_bench::daemon`).
//!
//! One configuration serves every credential the bench presents (anonymous clients
//! allowed, an admin token, an HS256 and an RS256 key told apart by `kid`, an API key
//! file), so the only thing that changes between the points of a table is what the
//! client presents.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The benches' `[ws]` settings and an `[auth]` section naming the files in `dir`.
pub fn config(dir: &Path) -> String {
    format!(
        r#"{ws}
[auth]
allow_anonymous = true
admin_token_file = "{admin}"
api_keys_file = "{keys}"

[[auth.jwt]]
kid = "hs"
algorithm = "HS256"
secret_file = "{secret}"

[[auth.jwt]]
kid = "rs"
algorithm = "RS256"
public_key_file = "{public}"
"#,
        ws = switchboard_bench::daemon::SWITCHBOARD_WS_CONFIG,
        admin = dir.join("admin.token").display(),
        keys = dir.join("api_keys.json").display(),
        secret = dir.join("jwt.secret").display(),
        public = dir.join("rs256.pub.pem").display(),
    )
}

/// Creates an API key in the configuration's key file with `switchboard apikey
/// create`, as an operator would, and returns the key the command prints.
pub fn create_api_key(config: &Path, data_dir: PathBuf, publish: &str, subscribe: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["apikey", "create", "auth-bench", "--publish", publish])
        .args(["--subscribe", subscribe, "--config"])
        .arg(config)
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("cannot run `switchboard apikey create`");
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && key.starts_with("sbk_"),
        "`switchboard apikey create` failed ({})",
        out.status
    );
    key
}
