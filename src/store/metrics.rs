//! What the local store shows at /metrics: whether it works, its size on disk and its cap.

use super::Store;
use crate::metrics::{Snapshot, Source};

/// The local store (sled) under the data directory, and its cap.
impl Source for Store {
    fn collect(&self, s: &mut Snapshot) {
        let quota = self.quota();
        let evicted = quota.evicted();
        let health = self.health().view();
        s.gauge(
            "store_failing",
            "1 while the store's writes fail (a full disk, an I/O error): see /healthz for the last error.",
            u64::from(health.failing_since.is_some()),
        );
        s.gauge(
            "store_failing_since_seconds",
            "Unix time of the store's first failure while it is failing; 0 while it works.",
            health.failing_since.map_or(0, |ms| ms / 1000),
        );
        s.counter(
            "store_errors",
            "Failed store operations (each write that failed, each failed flush or read).",
            health.errors,
        );
        s.counter(
            "store_recoveries",
            "Times the store reopened itself after failing, once its disk took writes again.",
            health.recoveries,
        );
        s.gauge(
            "store_recovered_at_seconds",
            "Unix time of the store's last recovery; 0 when it never failed.",
            health.recovered_at.map_or(0, |ms| ms / 1000),
        );
        s.gauge(
            "store_disk_bytes",
            "Bytes the local store takes on disk.",
            self.size_on_disk(),
        );
        s.gauge(
            "store_stored_bytes",
            "Bytes of stored messages (history and recordings) counted against store.max_bytes.",
            quota.used(),
        );
        s.gauge(
            "store_max_bytes",
            "The cap on stored messages (store.max_bytes).",
            quota.max_bytes(),
        );
        s.counter(
            "store_evicted_messages",
            "Stored messages evicted, oldest first, to keep under store.max_bytes.",
            evicted.records,
        );
        s.counter(
            "store_evicted_bytes",
            "Bytes of stored messages evicted to keep under store.max_bytes.",
            evicted.bytes,
        );
    }
}
