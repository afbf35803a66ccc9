//! Who is on the other end of a connection or request, once authenticated.

use std::fmt;
use std::num::NonZeroU32;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;

use switchboard_core::grants::Grants;

/// An authenticated identity and everything it was granted.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: Kind,
    /// The user this identity acts for (a token's `sub`); direct messages and presence
    /// show it. None for anonymous clients.
    pub user: Option<String>,
    pub grants: Grants,
    /// Unix seconds after which the identity is no longer valid (a token's `exp`).
    pub expires_at: Option<u64>,
    /// Presence info set by the issuer; when present, the client may not replace it.
    pub info: Option<Box<RawValue>>,
    pub limits: ClientLimits,
}

/// How the identity was proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Anonymous,
    /// The admin credential.
    Admin,
    /// An API key, by its public id (revocation finds live connections by it).
    ApiKey {
        id: String,
    },
    /// A client JWT.
    Token,
}

/// Limits an issuer set for one identity, overriding the configured ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientLimits {
    pub publish_rate: Option<NonZeroU32>,
    pub publish_burst: Option<NonZeroU32>,
    pub max_subscriptions: Option<usize>,
}

impl Principal {
    pub fn anonymous(grants: Grants) -> Self {
        Principal {
            kind: Kind::Anonymous,
            user: None,
            grants,
            expires_at: None,
            info: None,
            limits: ClientLimits::default(),
        }
    }

    pub fn admin() -> Self {
        Principal {
            kind: Kind::Admin,
            user: Some("admin".into()),
            grants: Grants::all(),
            expires_at: None,
            info: None,
            limits: ClientLimits::default(),
        }
    }

    /// Who this is for ownership (idempotency keys, recordings): `admin`, `key:<id>`,
    /// `user:<sub>` or `anonymous`. Stable across tokens of one user.
    pub fn identity(&self) -> String {
        match (&self.kind, &self.user) {
            (Kind::ApiKey { id }, _) => format!("key:{id}"),
            (Kind::Admin, _) => "admin".into(),
            (_, Some(user)) => format!("user:{user}"),
            (_, None) => "anonymous".into(),
        }
    }

    /// Whether `self` may replace `current` on a live connection (`refresh`): the same
    /// kind of credential for the same user.
    pub fn continues(&self, current: &Principal) -> bool {
        self.kind == current.kind && self.user == current.user
    }

    /// Time left before expiry, if it expires.
    pub fn time_left(&self) -> Option<std::time::Duration> {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(self.expires_at?);
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(std::time::Duration::ZERO),
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Anonymous => f.write_str("anonymous"),
            Kind::Admin => f.write_str("admin"),
            Kind::ApiKey { id } => write!(f, "api key {id}"),
            Kind::Token => f.write_str("token"),
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
