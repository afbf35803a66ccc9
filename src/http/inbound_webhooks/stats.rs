//! Per-hook counters, shown under `hooks` in `/healthz`: an operator whose sender
//! reports failures sees here whether the requests arrive and why they are refused.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a request to a known hook was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingSignature,
    MalformedSignature,
    BadSignature,
    StaleTimestamp,
    TooLarge,
}

#[derive(Debug, Default)]
pub struct Counters {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    missing_signature: AtomicU64,
    malformed_signature: AtomicU64,
    bad_signature: AtomicU64,
    stale_timestamp: AtomicU64,
    too_large: AtomicU64,
}

/// A snapshot of one hook's [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HookCounts {
    /// Requests published.
    pub accepted: u64,
    /// Replayed `webhook-id`s, answered without publishing again.
    pub duplicates: u64,
    pub refused: RefusedCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RefusedCounts {
    pub missing_signature: u64,
    pub malformed_signature: u64,
    pub bad_signature: u64,
    pub stale_timestamp: u64,
    pub too_large: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn accepted(&self) {
        bump(&self.accepted);
    }

    pub fn duplicate(&self) {
        bump(&self.duplicates);
    }

    pub fn refused(&self, why: Refusal) {
        bump(match why {
            Refusal::MissingSignature => &self.missing_signature,
            Refusal::MalformedSignature => &self.malformed_signature,
            Refusal::BadSignature => &self.bad_signature,
            Refusal::StaleTimestamp => &self.stale_timestamp,
            Refusal::TooLarge => &self.too_large,
        });
    }

    pub fn snapshot(&self) -> HookCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HookCounts {
            accepted: get(&self.accepted),
            duplicates: get(&self.duplicates),
            refused: RefusedCounts {
                missing_signature: get(&self.missing_signature),
                malformed_signature: get(&self.malformed_signature),
                bad_signature: get(&self.bad_signature),
                stale_timestamp: get(&self.stale_timestamp),
                too_large: get(&self.too_large),
            },
        }
    }
}

impl From<&crate::outbound_webhooks::signature::SignatureError> for Refusal {
    fn from(e: &crate::outbound_webhooks::signature::SignatureError) -> Self {
        use crate::outbound_webhooks::signature::SignatureError as E;
        match e {
            E::Missing(_) => Refusal::MissingSignature,
            E::Malformed(_) => Refusal::MalformedSignature,
            E::Stale(_) => Refusal::StaleTimestamp,
            E::Mismatch => Refusal::BadSignature,
        }
    }
}
