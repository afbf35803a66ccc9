//! `[recording]`: the queue between the Hub and the recording writer, and replay
//! progress.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{nz, positive_duration};

/// Recordings and replays (`crate::recordings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// Messages waiting between the Hub and the recording writer; past it messages are
    /// dropped from recordings (and counted) rather than the Hub slowed.
    pub queue: NonZeroUsize,
    /// Least time between two progress events of a replay on `$replays/<id>`.
    #[serde(with = "positive_duration")]
    pub progress_interval: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            queue: nz(65_536),
            progress_interval: Duration::from_secs(1),
        }
    }
}
