//! Whether the store's writes succeed, for `/healthz` and `/metrics`.
//!
//! Every error of the running store passes through [`super::Store::io`], which records
//! it here: delivery goes on without the store (a full disk must not stop a
//! gateway), so the operator learns of the failure from health and metrics, with the
//! last error and since when, rather than from a journal flooded with one line per
//! failed write. sled keeps its first write error and fails every later write with it,
//! so the store stays failing until the daemon reopens it (see docs/history.md).

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
        }
    }
}
