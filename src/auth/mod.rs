//! Who may connect and what they may do.
//!
//! Every credential — the admin token, an API key, a client JWT, an MQTT password —
//! ends as a [`Principal`] carrying [`Grants`]; the Hub (and, for devices, the broker
//! session) checks requests against those grants and nothing else. This module proves
//! identities; it never routes a message.

pub mod acl;
pub mod apikeys;
pub mod config;
pub mod devices;
pub mod jwt;
pub mod metrics;
pub mod passwd;
pub mod patterns;
pub mod principal;
pub mod private_file;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use config::AuthConfig;
pub use principal::{Kind, Principal};
use switchboard_core::grants::Grants;

/// Why a credential was not accepted. Messages say what is wrong with it, never what
/// it was: a token is not echoed back or logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials are required")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("no configured key verifies this token")]
    UnknownKey,
    #[error("the token's claims are invalid: {0}")]
    Claims(String),
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("the API key has been revoked")]
    Revoked,
}

/// Shortest admin token accepted: anything shorter could be guessed.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Turns a presented credential into a [`Principal`].
pub struct Authenticator {
    /// What the configuration accepts; replaced whole on reload.
    accepted: RwLock<Arc<Accepted>>,
    api_keys: apikeys::ApiKeys,
    /// Every refusal, counted; shown in `/healthz`.
    pub rejections: Rejections,
}

/// Counts of refused clients and requests, by reason.
#[derive(Debug, Default)]
pub struct Rejections {
    bad_credentials: AtomicU64,
    auth_timeouts: AtomicU64,
    origins_refused: AtomicU64,
    rate_limited: AtomicU64,
    rate_limit_closes: AtomicU64,
    expired_closes: AtomicU64,
    revoked_closes: AtomicU64,
}

/// A snapshot of [`Rejections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RejectionCounts {
    pub bad_credentials: u64,
    pub auth_timeouts: u64,
    pub origins_refused: u64,
    pub rate_limited: u64,
    pub rate_limit_closes: u64,
    pub expired_closes: u64,
    pub revoked_closes: u64,
}

impl Rejections {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_auth_timeout(&self) {
        Self::bump(&self.auth_timeouts);
    }

    pub fn count_origin_refused(&self) {
        Self::bump(&self.origins_refused);
    }

    /// A publish refused for rate; `closed` when it also ended the connection.
    pub fn count_rate_limited(&self, closed: bool) {
        Self::bump(&self.rate_limited);
        if closed {
            Self::bump(&self.rate_limit_closes);
        }
    }

    pub fn count_expired_close(&self) {
        Self::bump(&self.expired_closes);
    }

    pub fn count_revoked_closes(&self, n: usize) {
        self.revoked_closes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RejectionCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RejectionCounts {
            bad_credentials: get(&self.bad_credentials),
            auth_timeouts: get(&self.auth_timeouts),
            origins_refused: get(&self.origins_refused),
            rate_limited: get(&self.rate_limited),
            rate_limit_closes: get(&self.rate_limit_closes),
            expired_closes: get(&self.expired_closes),
            revoked_closes: get(&self.revoked_closes),
        }
    }
}

/// The credentials `[auth]` accepts besides API keys: the admin token, the JWT keys and
/// what anonymous clients may do. Built whole from files, so a reload that cannot read
/// one of them changes nothing.
pub struct Accepted {
    /// SHA-256 of the admin token; compared in constant time.
    admin: Option<[u8; 32]>,
    /// Shared with the MQTT gate, which accepts the same tokens as passwords.
    jwt: Arc<jwt::JwtVerifier>,
    anonymous: Option<Arc<Principal>>,
}

impl Accepted {
    /// Reads the admin token and JWT key files named in `[auth]`.
    pub fn from_config(auth: &AuthConfig) -> anyhow::Result<Self> {
        let admin = if auth.admin_token_file.as_os_str().is_empty() {
            None
        } else {
            Some(read_admin_token(&auth.admin_token_file)?)
        };
        let jwt =
            Arc::new(jwt::JwtVerifier::from_config(auth).context("cannot load the JWT keys")?);
        Ok(Accepted {
            admin,
            jwt,
            anonymous: anonymous(auth),
        })
    }

    pub fn jwt(&self) -> &Arc<jwt::JwtVerifier> {
        &self.jwt
    }
}

impl Authenticator {
    /// Reads every credential file now, so a missing or broken one stops startup with
    /// its name instead of refusing every client later.
    /// `api_keys_file` is the composition root's choice (`Config::api_keys_file`): the
    /// default lies in the data directory, outside `[auth]`.
    pub fn from_config(auth: &AuthConfig, api_keys_file: &Path) -> anyhow::Result<Self> {
        let accepted = Accepted::from_config(auth)?;
        let api_keys = apikeys::ApiKeys::open(api_keys_file).context("cannot load the API keys")?;
        Ok(Authenticator {
            accepted: RwLock::new(Arc::new(accepted)),
            api_keys,
            rejections: Rejections::default(),
        })
    }

    fn accepted(&self) -> Arc<Accepted> {
        self.accepted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts new `[auth]` credentials in force for the next client (reload). Connected
    /// clients keep the identity they proved.
    pub fn replace(&self, accepted: Accepted) {
        *self
            .accepted
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(accepted);
    }

    /// Checks one presented credential: an API key (by its prefix), the admin token,
    /// or else a JWT. Refusals are counted.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, AuthError> {
        let result = self.prove(credential);
        if let Err(e) = &result {
            Rejections::bump(&self.rejections.bad_credentials);
            tracing::debug!(reason = %e, "credential refused");
        }
        result
    }

    fn prove(&self, credential: &str) -> Result<Principal, AuthError> {
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(AuthError::Missing);
        }
        if credential.starts_with(apikeys::PREFIX) {
            return self.api_keys.verify(credential);
        }
        let accepted = self.accepted();
        if let Some(admin) = &accepted.admin {
            let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
            if bool::from(digest.ct_eq(admin)) {
                return Ok(Principal::admin());
            }
        }
        accepted.jwt.verify(credential)
    }

    /// The identity of a client that presents nothing, if anonymous clients are allowed.
    pub fn anonymous(&self) -> Option<Arc<Principal>> {
        self.accepted().anonymous.clone()
    }

    /// The JWT keys in force now.
    pub fn jwt(&self) -> Arc<jwt::JwtVerifier> {
        self.accepted().jwt.clone()
    }

    pub fn api_keys(&self) -> &apikeys::ApiKeys {
        &self.api_keys
    }

    /// One line for the startup log saying who may connect.
    pub fn describe(&self) -> String {
        let accepted = self.accepted();
        let mut ways = Vec::new();
        if accepted.admin.is_some() {
            ways.push("admin token".to_owned());
        }
        if !accepted.jwt.is_empty() {
            ways.push(format!("JWTs ({} keys)", accepted.jwt.len()));
        }
        ways.push(format!("API keys ({} active)", self.api_keys.active()));
        let anonymous = if accepted.anonymous.is_some() {
            "anonymous clients allowed"
        } else {
            "anonymous clients refused"
        };
        format!("{anonymous}; accepted: {}", ways.join(", "))
    }
}

fn anonymous(auth: &AuthConfig) -> Option<Arc<Principal>> {
    if !auth.allow_anonymous {
        return None;
    }
    let filters =
        |v: &[switchboard_core::topic::Filter]| v.iter().map(|f| f.as_str().to_owned()).collect();
    let grants = Grants::new(
        filters(&auth.anonymous.publish),
        filters(&auth.anonymous.subscribe),
        auth.anonymous.send.clone(),
    );
    Some(Arc::new(Principal::anonymous(grants)))
}

fn read_admin_token(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        anyhow::bail!(
            "the admin token in {} is shorter than {MIN_ADMIN_TOKEN_LEN} characters",
            path.display()
        );
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}
