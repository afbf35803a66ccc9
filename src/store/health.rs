//! Whether the store's writes succeed, for `/healthz` and `/metrics`.
//!
//! Every error of the running store passes through [`super::Store::io`], which records
//! it here: delivery goes on without the store (a full disk must not stop a
//! gateway), so the operator learns of the failure from health and metrics, with the
//! last error and since when, rather than from a journal flooded with one line per
//! failed write. sled keeps its first write error and fails every later write with it,
//! so the store stays failing until [`super::recovery`] reopens it, which shows here
//! as a recovery (see docs/history.md, "A full disk").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// The store's write failures.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix ms of the first failure; 0 while the store works.
    failing_since_ms: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Reopens after a failure, and Unix ms of the last.
    recoveries: AtomicU64,
    recovered_at_ms: AtomicU64,
}

/// What `/healthz` shows under `store`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthView {
    /// `ok` or `failing`.
    pub status: &'static str,
    /// Failed store operations since start.
    pub errors: u64,
    pub last_error: Option<String>,
    /// Unix ms of the first failure, while failing.
    pub failing_since: Option<u64>,
    /// Times the store reopened itself after failing, since start.
    pub recoveries: u64,
    /// Unix ms of the last of them.
    pub recovered_at: Option<u64>,
}

impl Health {
    /// Records a failed store operation.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let _ = self.failing_since_ms.compare_exchange(
            0,
            switchboard_core::clock::now_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
    }

    /// Counts an operation refused while the store reopens: it fails for the same
    /// reason as the failure being recovered from, which it must not outlive.
    pub fn refused(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The store works again; returns for how long it had failed (ms).
    pub fn recovered(&self) -> u64 {
        let now = switchboard_core::clock::now_ms().max(1);
        let since = self.failing_since_ms.swap(0, Ordering::Relaxed);
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        self.recovered_at_ms.store(now, Ordering::Relaxed);
        now.saturating_sub(since)
    }

    pub fn is_failing(&self) -> bool {
        self.failing_since_ms.load(Ordering::Relaxed) != 0
    }

    pub fn view(&self) -> HealthView {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        HealthView {
            status: if since == 0 { "ok" } else { "failing" },
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            failing_since: (since != 0).then_some(since),
            recoveries: self.recoveries.load(Ordering::Relaxed),
            recovered_at: Some(self.recovered_at_ms.load(Ordering::Relaxed)).filter(|&t| t != 0),
        }
    }
}
