//! Every credential the bench presents, made before anything is measured: the key
//! files the daemon reads, one token per connection for each JWT algorithm, an API key,
//! and the publisher's and subscriber's credentials for the permission-check test.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use switchboard::auth::config::JwtAlgorithm;
use switchboard::auth::jwt::{mint, MintKey};

/// 48 bytes: more than HS256's minimum of 32.
const HS_SECRET: &str = "auth-bench-hs256-shared-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "auth-bench-admin-token-0123456789abcdef";

/// Filters in the permission-check test's grants: this many in all, the matching one
/// last, so a check walks the whole list.
pub const GRANT_FILTERS: usize = 20;
/// What the publisher publishes to and the subscriber subscribes to.
pub const TOPIC: &str = "bench/t";
pub const FILTER: &str = "bench/#";

pub struct Credentials {
    /// Holds the configuration and the key files for the whole run.
    _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin: String,
    pub api_key: String,
    /// One HS256 token per connection (`kid` `hs`), each for its own user.
    pub hs256: Vec<String>,
    /// The same, RS256 with a 2048-bit key (`kid` `rs`).
    pub rs256: Vec<String>,
    /// An HS256 token whose `publish` and `subscribe` claims hold
    /// [`GRANT_FILTERS`] filters each, the one that matches last.
    pub scoped: String,
    /// The same with only the matching filter: a token session whose check stops at
    /// the first filter.
    pub scoped_one: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a backend would put in a chat user's token.
fn user_claims(i: usize) -> Value {
    let now = unix_now();
    json!({
        "sub": format!("user{i}"),
        "iat": now,
        "exp": now + 3600,
        "publish": ["chat/{sub}/#"],
        "subscribe": ["chat/#"],
    })
}

/// Mints `n` tokens, one per user, on two threads (RSA signing costs milliseconds).
fn mint_many(key: &MintKey, n: usize) -> Vec<String> {
    let half = n / 2;
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            (0..half)
                .map(|i| mint(key, &user_claims(i)).expect("cannot mint a token"))
                .collect::<Vec<_>>()
        });
        let second: Vec<String> = (half..n)
            .map(|i| mint(key, &user_claims(i)).expect("cannot mint a token"))
            .collect();
        let mut all = first.join().expect("the minting thread panicked");
        all.extend(second);
        all
    })
}

/// Writes the daemon's files, makes an RSA key pair and an API key, and mints
/// `connections` tokens per algorithm. Spawns threads: call before pinning.
pub fn make(connections: usize) -> Credentials {
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let path = |name: &str| dir.path().join(name);
    let write = |name: &str, text: &str| {
        std::fs::write(path(name), text).unwrap_or_else(|e| panic!("cannot write {name}: {e}"))
    };
    write("jwt.secret", HS_SECRET);
    write("admin.token", ADMIN_TOKEN);
    let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key generation");
    let private = rsa
        .to_pkcs8_pem(LineEnding::LF)
        .expect("cannot encode the RSA private key");
    let public = rsa
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("cannot encode the RSA public key");
    // The daemon gets the public key only.
    write("rs256.pub.pem", &public);
    let config = path("switchboard.toml");
    write("switchboard.toml", &crate::daemon::config(dir.path()));

    let api_key = crate::daemon::create_api_key(&config, path("data"), "chat/#", "chat/#");

    let hs =
        MintKey::from_secret("hs", JwtAlgorithm::HS256, HS_SECRET.as_bytes()).expect("HS256 key");
    let rs = MintKey::from_private_pem("rs", JwtAlgorithm::RS256, private.as_bytes())
        .expect("RS256 key");

    // `bench/n0/#` … `bench/n18/#` share the topic's first level, so each is refused at
    // the second; `bench/#` matches.
    let filters: Vec<String> = (0..GRANT_FILTERS - 1)
        .map(|i| format!("bench/n{i}/#"))
        .chain([FILTER.to_owned()])
        .collect();
    let mut claims = user_claims(0);
    claims["publish"] = json!(filters);
    claims["subscribe"] = json!(filters);
    let scoped = mint(&hs, &claims).expect("cannot mint the scoped token");
    claims["publish"] = json!([FILTER]);
    claims["subscribe"] = json!([FILTER]);
    let scoped_one = mint(&hs, &claims).expect("cannot mint the scoped token");

    Credentials {
        config,
        admin: ADMIN_TOKEN.to_owned(),
        api_key,
        hs256: mint_many(&hs, connections),
        rs256: mint_many(&rs, connections),
        scoped,
        scoped_one,
        _dir: dir,
    }
}
