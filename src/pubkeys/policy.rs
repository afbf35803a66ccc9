//! Encrypted-only topics: the one check every way in applies before a message is routed.
//!
//! The gateway cannot decrypt, so "encrypted" means "shaped like an envelope for this
//! topic" (`switchboard_e2e::shape`): it catches plaintext sent by mistake, not a sender
//! set on leaking (docs/e2e.md, "Enforcement").

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::value::RawValue;
use switchboard_core::topic::Filter;

use super::config::E2eConfig;

/// Why a message was refused: a plaintext message on an encrypted-only topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{topic}` accepts end-to-end envelopes only ([e2e] encrypted_only): {why}")]
pub struct NotEncrypted {
    pub topic: String,
    pub why: &'static str,
}

#[derive(Debug, Default)]
pub struct EncryptedOnly {
    filters: Vec<Filter>,
    refused: AtomicU64,
}

impl EncryptedOnly {
    pub fn from_config(config: &E2eConfig) -> EncryptedOnly {
        EncryptedOnly {
            filters: config.encrypted_only.clone(),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether `topic` is encrypted-only: the cheap question, asked first.
    pub fn covers(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| f.matches(topic))
    }

    /// Refuses, and counts, a message on an encrypted-only topic that is not an envelope
    /// bound to it.
    pub fn check(&self, topic: &str, data: &RawValue) -> Result<(), NotEncrypted> {
        if !self.covers(topic) {
            return Ok(());
        }
        switchboard_e2e::shape::check(data.get(), topic)
            .map(drop)
            .map_err(|e| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                NotEncrypted {
                    topic: topic.to_owned(),
                    why: e.0,
                }
            })
    }

    /// Messages refused so far, from every way in.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
