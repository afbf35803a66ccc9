//! `[store]`: how often the local store flushes and how much it keeps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::positive_duration;

/// The local store (`crate::store`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// How often writes are flushed to disk: at most this much is lost in a crash.
    #[serde(with = "positive_duration")]
    pub flush_interval: Duration,
    /// Bytes of stored messages (history and recordings) kept at most; the oldest are
    /// evicted past it. From `quota::DISK_BOUND_FROM` up it holds sled's files too.
    pub max_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(100),
            max_bytes: 1 << 30,
        }
    }
}
