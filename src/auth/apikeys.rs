//! API keys for servers and scripts. (Being written.)

use std::path::Path;

use super::{AuthError, Principal};

/// Every API key starts with this, which tells it apart from a JWT or the admin token.
pub const PREFIX: &str = "sbk_";

pub struct ApiKeys {}

impl ApiKeys {
    pub fn open(_path: &Path) -> anyhow::Result<Self> {
        Ok(ApiKeys {})
    }

    pub fn verify(&self, _key: &str) -> Result<Principal, AuthError> {
        Err(AuthError::UnknownApiKey)
    }

    pub fn active(&self) -> usize {
        0
    }
}
