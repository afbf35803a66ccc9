//! `[presence]`: which topics the Hub tracks members of.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use crate::settings::nz;
use switchboard_core::topic::Filter;

/// Presence: members of matching topics are tracked and their joins and leaves
/// announced (docs/presence.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Topics matching these filters track members and announce joins and leaves.
    pub topics: Vec<Filter>,
    /// Largest `info` object a client may attach, in bytes.
    pub max_info_bytes: NonZeroUsize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            max_info_bytes: nz(1024),
        }
    }
}
