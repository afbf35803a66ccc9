//! `[auth]`, who may connect over WebSocket and HTTP, and the device permissions of
//! `[[mqtt.acl]]`, which the `[mqtt]` section holds but this module enforces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::settings::positive_duration;
use switchboard_core::topic::Filter;

/// Who may connect over WebSocket and HTTP, and with what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Clients without credentials may connect, with the `anonymous` grants.
    pub allow_anonymous: bool,
    /// What an anonymous client may do.
    pub anonymous: GrantsConfig,
    /// File holding the admin token (everything allowed); empty for no admin.
    pub admin_token_file: PathBuf,
    /// API keys (`switchboard apikey`); empty means `<data_dir>/api_keys.json`.
    pub api_keys_file: PathBuf,
    /// Keys that verify client JWTs; several at once, chosen by `kid`, for rotation.
    pub jwt: Vec<JwtKeyConfig>,
    /// Tolerated clock difference for `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Time a connection without credentials has to send its `auth` frame.
    #[serde(with = "positive_duration")]
    pub auth_timeout: Duration,
    /// Browser origins allowed to open a WebSocket; empty means same-origin only,
    /// `*` any. Clients that send no `Origin` (not browsers) are not affected.
    pub allowed_origins: Vec<String>,
}

/// Topic filters and recipients one identity is allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantsConfig {
    /// Filters covering the topics it may publish to.
    pub publish: Vec<Filter>,
    /// Filters within which it may subscribe (and ask for presence).
    pub subscribe: Vec<Filter>,
    /// Users it may send direct messages to; `*` for anyone.
    pub send: Vec<String>,
}

/// One JWT verification key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Matched against the token's `kid` header; empty accepts tokens without one.
    #[serde(default)]
    pub kid: String,
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `ES256` or `EdDSA`.
    pub algorithm: JwtAlgorithm,
    /// HS*: a file holding the shared secret.
    #[serde(default)]
    pub secret_file: PathBuf,
    /// RS*, ES256, EdDSA: a PEM file holding the public key.
    #[serde(default)]
    pub public_key_file: PathBuf,
}

/// The signature algorithms switchboard verifies. `none` is not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    ES256,
    EdDSA,
}

impl JwtAlgorithm {
    /// Whether the key is a shared secret rather than a public key.
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

/// Topic permissions for the devices a rule applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// `*` for every device, `anonymous` for devices without a username, or a username.
    pub user: String,
    /// Filters the device may publish to; `%c` is its client id, `%u` its username.
    #[serde(default)]
    pub publish: Vec<TopicPattern>,
    /// Filters the device may subscribe within; same substitutions.
    #[serde(default)]
    pub subscribe: Vec<TopicPattern>,
}

/// A topic filter that may contain `%c` (client id) and `%u` (username) as whole levels
/// or inside one, validated with the placeholders filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TopicPattern(String);

impl TopicPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TopicPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let filled = s.replace("%c", "c").replace("%u", "u");
        switchboard_core::topic::validate_filter(&filled)
            .map_err(|e| serde::de::Error::custom(format!("invalid topic pattern `{s}`: {e}")))?;
        Ok(TopicPattern(s))
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            anonymous: GrantsConfig::default(),
            admin_token_file: PathBuf::new(),
            api_keys_file: PathBuf::new(),
            jwt: Vec::new(),
            leeway: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for GrantsConfig {
    /// Everything a client can do, for the no-config localhost default.
    fn default() -> Self {
        let filter = |f: &str| Filter::new(f).expect("a valid built-in filter");
        Self {
            publish: vec![filter("#")],
            subscribe: vec![filter("#"), filter("$devices/#"), filter("$bridges/#")],
            send: vec!["*".into()],
        }
    }
}

/// The `[mqtt]` settings that decide which devices may connect and what they may do.
/// The root picks them out of the section (`MqttConfig::devices`), so device
/// authentication depends on its own settings and not on the broker's listeners.
#[derive(Debug, Clone, Copy)]
pub struct DeviceAuthConfig<'a> {
    /// Devices without a username may connect.
    pub allow_anonymous: bool,
    /// Password file (`switchboard passwd`); empty for none.
    pub password_file: &'a Path,
    /// Topic permissions; none means every device may publish and subscribe anywhere.
    pub acl: &'a [AclRule],
    /// A verified client certificate's common name is the username.
    pub use_identity_as_username: bool,
}
