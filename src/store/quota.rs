//! The cap on stored messages: `[store] max_bytes`, enforced by evicting the oldest data.
//!
//! Each user of the store whose data grows with traffic (history, recordings) registers
//! as an [`Evictable`] owner and keeps count of the bytes it holds. A janitor sums them
//! a few times a second and, while the total is over the cap, asks the owner holding
//! the oldest data to give some up, so "oldest first" holds across owners. The cap
//! counts the bytes of stored records (keys and values); sled's files are larger by its
//! own overhead and the space it has not cleaned yet, so from [`DISK_BOUND_FROM`] up the
//! janitor holds the stored bytes to a [`Quota::budget`] that leaves room for them and
//! the files stay within the cap too (docs/history.md, "The store's cap").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use super::StoreError;
use crate::background::Background;

/// The smallest budget of stored bytes is the cap divided by this.
pub const FLOOR: u64 = 4;

/// The budget also leaves the cap divided by this free: sled's files grow between two
/// measurements and while eviction catches up, so aiming at the cap itself left them
/// settling up to a fifth above it (docs/history.md, "The store's cap").
pub const HEADROOM: u64 = 8;

/// The smallest cap the files are held to. sled's files need some megabytes whatever
/// little they hold (the log's segments still being written and cleaned, measured at
/// 5-20 MB under a flood, docs/history.md): under a smaller cap, shrinking the budget
/// would evict down to the floor and still leave the files over the cap, so there the
/// cap counts stored bytes only.
pub const DISK_BOUND_FROM: u64 = 32 << 20;

/// How often the janitor checks the total.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Data that can be evicted, oldest first, to respect the cap.
pub trait Evictable: Send + Sync {
    /// Bytes of stored records this owner holds now.
    fn stored_bytes(&self) -> u64;
    /// When its oldest record was stored (µs since the Unix epoch); None when empty.
    fn oldest_us(&self) -> Option<u64>;
    /// Evicts its oldest records, about `at_least` bytes of them (fewer only if it has
    /// fewer). An owner must make progress when it holds anything.
    fn evict_oldest(&self, at_least: u64) -> Result<Evicted, StoreError>;
}

/// What one eviction freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    pub records: u64,
    pub bytes: u64,
}

/// The cap and its owners.
pub struct Quota {
    max_bytes: u64,
    /// Weak: an owner holds the store, and the store holds this, so a strong handle
    /// would keep both (and sled's lock on the directory) alive forever.
    owners: RwLock<Vec<Weak<dyn Evictable>>>,
    evicted_records: AtomicU64,
    evicted_bytes: AtomicU64,
    /// The janitor, from [`Quota::start`] to [`Quota::stop`].
    janitor: Background,
    /// The bytes of the store's files (sled's log and its `blobs/`), set by the store.
    on_disk: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

/// The bytes `owners` hold together.
fn total(owners: &[Arc<dyn Evictable>]) -> u64 {
    owners
        .iter()
        .map(|o| o.stored_bytes())
        .fold(0, u64::saturating_add)
}

impl Quota {
    pub fn new(max_bytes: u64) -> Quota {
        Quota {
            max_bytes,
            owners: RwLock::default(),
            evicted_records: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            janitor: Background::new(),
            on_disk: std::sync::OnceLock::new(),
        }
    }

    /// How to measure the store's files, so the cap holds on disk too.
    pub fn measure_disk(&self, on_disk: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.on_disk.set(Box::new(on_disk));
    }

    /// The stored bytes allowed now, given `used`: the cap less what sled's files hold
    /// beyond the stored bytes (its own overhead, and space it has not reclaimed yet),
    /// so the files stay within the cap; never below [`FLOOR`] of the cap, so a store
    /// whose files sled has not shrunk yet does not evict everything meanwhile.
    pub fn budget(&self, used: u64) -> u64 {
        let Some(on_disk) = self
            .on_disk
            .get()
            .filter(|_| self.max_bytes >= DISK_BOUND_FROM)
        else {
            return self.max_bytes;
        };
        let excess = on_disk().saturating_sub(used);
        self.max_bytes
            .saturating_sub(excess)
            .saturating_sub(self.max_bytes / HEADROOM)
            .max(self.max_bytes / FLOOR)
    }

    pub fn register<T: Evictable + 'static>(&self, owner: &Arc<T>) {
        let owner: Arc<dyn Evictable> = owner.clone();
        self.owners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&owner));
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes held by every owner.
    pub fn used(&self) -> u64 {
        total(&self.owners())
    }

    /// Records and bytes evicted since start.
    pub fn evicted(&self) -> Evicted {
        Evicted {
            records: self.evicted_records.load(Ordering::Relaxed),
            bytes: self.evicted_bytes.load(Ordering::Relaxed),
        }
    }

    /// The owners still alive.
    fn owners(&self) -> Vec<Arc<dyn Evictable>> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Evicts oldest data until the total is within the budget. Blocking (sled calls).
    /// The owners' bytes are summed once when there is nothing to evict, and sled's
    /// files are not measured at all while the total is at or under the floor (the
    /// least the budget ever is): measuring lists `blobs/`, and the janitor runs four
    /// times a second whatever the store holds.
    pub fn enforce(&self) -> Result<Evicted, StoreError> {
        let owners = self.owners();
        let sum = || total(&owners);
        let mut freed = Evicted::default();
        let mut used = sum();
        if used <= self.max_bytes / FLOOR {
            return Ok(freed);
        }
        // Measured once a pass: sled's files shrink only after it cleans, later.
        let budget = self.budget(used);
        loop {
            if used <= budget {
                break;
            }
            let Some(oldest) = owners
                .iter()
                .filter_map(|o| o.oldest_us().map(|at| (at, o)))
                .min_by_key(|(at, _)| *at)
                .map(|(_, o)| o)
            else {
                break;
            };
            // In steps of at most 1% of the cap, so the next step again takes whichever
            // owner then holds the oldest data.
            let want = (used - budget).min(self.max_bytes / 100).max(1);
            let step = oldest.evict_oldest(want)?;
            freed.records += step.records;
            freed.bytes += step.bytes;
            self.evicted_records
                .fetch_add(step.records, Ordering::Relaxed);
            self.evicted_bytes.fetch_add(step.bytes, Ordering::Relaxed);
            if step.records == 0 {
                break;
            }
            used = sum();
        }
        if freed.records > 0 {
            tracing::info!(
                records = freed.records,
                bytes = freed.bytes,
                max_bytes = self.max_bytes,
                budget,
                "store at its cap: evicted the oldest messages"
            );
        }
        Ok(freed)
    }

    /// Runs [`Quota::enforce`] every [`CHECK_EVERY`] until [`Quota::stop`].
    pub fn start(self: &Arc<Self>) {
        self.janitor
            .every(self, CHECK_EVERY, "store eviction", |quota: &Quota| {
                quota.enforce().map(|_| ())
            });
    }

    /// Stops the janitor and waits for an eviction in progress: nothing is evicted
    /// afterwards. Called at shutdown before the history saves its positions.
    pub async fn stop(&self) {
        self.janitor.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An owner holding records of 10 bytes stamped with the given times.
    struct Owner(Mutex<std::collections::VecDeque<u64>>);

    impl Evictable for Owner {
        fn stored_bytes(&self) -> u64 {
            self.0.lock().unwrap().len() as u64 * 10
        }
        fn oldest_us(&self) -> Option<u64> {
            self.0.lock().unwrap().front().copied()
        }
        fn evict_oldest(&self, at_least: u64) -> Result<Evicted, StoreError> {
            let mut q = self.0.lock().unwrap();
            let mut freed = Evicted::default();
            while freed.bytes < at_least && q.pop_front().is_some() {
                freed.records += 1;
                freed.bytes += 10;
            }
            Ok(freed)
        }
    }

    #[test]
    fn the_budget_leaves_room_for_sleds_own_bytes_down_to_a_floor() {
        let cap = DISK_BOUND_FROM;
        let quota = Quota::new(cap);
        assert_eq!(quota.budget(1000), cap);
        let disk = Arc::new(AtomicU64::new(0));
        let measured = disk.clone();
        quota.measure_disk(move || measured.load(Ordering::Relaxed));
        // Files 10 MB over the stored bytes: the stored bytes get 10 MB less, and the
        // headroom.
        disk.store(30_000_000, Ordering::Relaxed);
        assert_eq!(quota.budget(20_000_000), cap - 10_000_000 - cap / HEADROOM);
        // Never below a quarter, whatever sled has not given back yet.
        disk.store(10 * cap, Ordering::Relaxed);
        assert_eq!(quota.budget(1), cap / FLOOR);
        // Under the smallest cap held on disk, the cap counts stored bytes only.
        let small = Quota::new(DISK_BOUND_FROM - 1);
        small.measure_disk(|| u64::MAX);
        assert_eq!(small.budget(0), DISK_BOUND_FROM - 1);
    }

    /// Counts the owners' sums and the disk's measurements of one pass.
    struct Counted {
        bytes: u64,
        sums: AtomicU64,
    }

    impl Evictable for Counted {
        fn stored_bytes(&self) -> u64 {
            self.sums.fetch_add(1, Ordering::Relaxed);
            self.bytes
        }
        fn oldest_us(&self) -> Option<u64> {
            Some(0)
        }
        fn evict_oldest(&self, _: u64) -> Result<Evicted, StoreError> {
            Ok(Evicted::default())
        }
    }

    #[test]
    fn a_pass_with_nothing_to_evict_sums_once_and_measures_no_files_under_the_floor() {
        let cap = DISK_BOUND_FROM;
        let quota = Quota::new(cap);
        let measured = Arc::new(AtomicU64::new(0));
        let counter = measured.clone();
        quota.measure_disk(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            0
        });
        let owner = Arc::new(Counted {
            bytes: cap / FLOOR,
            sums: AtomicU64::new(0),
        });
        quota.register(&owner);
        assert_eq!(quota.enforce().unwrap(), Evicted::default());
        assert_eq!(owner.sums.load(Ordering::Relaxed), 1);
        assert_eq!(measured.load(Ordering::Relaxed), 0);
        // Over the floor and within the budget: the files are measured, once.
        let owner = Arc::new(Counted {
            bytes: cap / 2,
            sums: AtomicU64::new(0),
        });
        let quota = Quota::new(cap);
        let counter = measured.clone();
        quota.measure_disk(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            cap / 2
        });
        quota.register(&owner);
        assert_eq!(quota.enforce().unwrap(), Evicted::default());
        assert_eq!(owner.sums.load(Ordering::Relaxed), 1);
        assert_eq!(measured.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn evicts_the_oldest_data_across_owners_until_under_the_cap() {
        let a = Arc::new(Owner(Mutex::new((0..10).map(|i| i * 2).collect())));
        let b = Arc::new(Owner(Mutex::new((0..10).map(|i| i * 2 + 1).collect())));
        let quota = Quota::new(100);
        quota.register(&a);
        quota.register(&b);
        assert_eq!(quota.used(), 200);
        let freed = quota.enforce().unwrap();
        assert_eq!(
            freed,
            Evicted {
                records: 10,
                bytes: 100
            }
        );
        assert_eq!(quota.used(), 100);
        // The ten oldest stamps (0..10) went, whichever owner held them.
        assert_eq!(a.oldest_us(), Some(10));
        assert_eq!(b.oldest_us(), Some(11));
        assert_eq!(quota.evicted(), freed);
        assert_eq!(quota.enforce().unwrap(), Evicted::default());
    }
}
