//! `[e2e]`: which topics accept end-to-end envelopes only (docs/e2e.md, "Enforcement").

use serde::{Deserialize, Serialize};
use switchboard_core::topic::Filter;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct E2eConfig {
    /// Topics matching these filters refuse any message that is not an envelope bound to
    /// that topic, from every way in (WebSocket, HTTP, MQTT). None by default.
    pub encrypted_only: Vec<Filter>,
}
