//! The store recovering by itself from a failure of its disk (a full disk, an I/O
//! error): a task that, while the store is failing, checks every so often whether the
//! disk takes writes again and then reopens the database.
//!
//! sled keeps its first write error forever (see [`super::handle`]), so the only way
//! back is a new open, which sled grants once every handle of the old one is gone: the
//! task empties every [`super::Tree`]'s slot, opens the directory again (waiting for
//! operations in flight to let go of the old handles), fills the slots from the new
//! database and tells the users that keep figures in memory ([`Reopened`]) to check them
//! against what the store holds now: what sled had not yet written when the disk failed
//! is gone, and they must say so rather than count it. Until then delivery goes on
//! without the store, as it does while the store is failing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use super::handle::Handles;
use super::{catch_quietly, Health, StoreError, FORMAT_VERSION, VERSION_KEY};
use crate::background::Background;

/// How often the task looks at the store's health.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The first wait after a failure before trying to reopen, doubled after each attempt
/// up to [`MAX_BACKOFF`]: writes resume at most this long after space is back.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Bytes the disk must take before a reopen is tried: two segments of the largest size a
/// store has (sled's 512 KiB default, [`super::segments`]), so that the open itself
/// (which starts a new segment) does not fail at once.
const PROBE_BYTES: usize = 1 << 20;
/// How long a reopen waits for operations in flight to drop the old database.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A user of the store that keeps figures in memory about what it stored, told after
/// the store reopened so it can check them against what the store holds.
pub trait Reopened: Send + Sync {
    fn reopened(&self);
}

/// What the recovery task works on; the store holds it, the task holds it weakly.
pub(super) struct Shared {
    pub(super) handles: Handles,
    path: PathBuf,
    health: Arc<Health>,
    sled_config: sled::Config,
    /// Weak, as the quota's owners: a user holds the store.
    users: RwLock<Vec<Weak<dyn Reopened>>>,
    backoff: Mutex<Backoff>,
    task: Background,
}

struct Backoff {
    next: Instant,
    delay: Duration,
}

impl Shared {
    pub(super) fn new(
        db: sled::Db,
        path: PathBuf,
        health: Arc<Health>,
        sled_config: sled::Config,
    ) -> Shared {
        Shared {
            handles: Handles::new(db),
            path,
            health,
            sled_config,
            users: RwLock::default(),
            backoff: Mutex::new(Backoff {
                next: Instant::now(),
                delay: FIRST_BACKOFF,
            }),
            task: Background::new(),
        }
    }

    pub(super) fn register(&self, user: Weak<dyn Reopened>) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        // A reload opens a bridge's queue again: users that are gone make room.
        users.retain(|u| u.strong_count() > 0);
        users.push(user);
    }

    pub(super) fn start(self: &Arc<Self>) {
        self.task
            .every(self, CHECK_EVERY, "store recovery", Shared::step);
    }

    pub(super) async fn stop(&self) {
        self.task.stop().await;
    }

    /// One look: while the store fails, and once the backoff allows, tries to reopen.
    fn step(&self) -> Result<(), StoreError> {
        let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if !self.health.is_failing() {
            backoff.delay = FIRST_BACKOFF;
            backoff.next = Instant::now() + FIRST_BACKOFF;
            return Ok(());
        }
        if Instant::now() < backoff.next {
            return Ok(());
        }
        backoff.next = Instant::now() + backoff.delay;
        backoff.delay = (backoff.delay * 2).min(MAX_BACKOFF);
        drop(backoff);
        if let Err(e) = probe(&self.path) {
            tracing::debug!(error = %e, "store: the disk does not take writes yet");
            return Ok(());
        }
        self.reopen()
    }

    /// Gives up the failed database, opens the directory again and hands the new
    /// database to every tree.
    fn reopen(&self) -> Result<(), StoreError> {
        self.handles.release();
        let db = self.open_when_released()?;
        let damaged = |detail: String| StoreError::Damaged {
            path: self.path.clone(),
            detail,
        };
        let version = db.get(VERSION_KEY).map_err(|e| self.io(e))?;
        if version.as_deref() != Some(&FORMAT_VERSION.to_be_bytes()[..]) {
            return Err(damaged(
                "its format version record is gone after reopening it".into(),
            ));
        }
        self.handles.install(db).map_err(|e| self.io(e))?;
        let failed_for = self.health.recovered();
        tracing::warn!(
            path = %self.path.display(),
            failed_for_ms = failed_for,
            "store: reopened after a failure; writes resume (what sled had not written before the failure is lost, and says so)"
        );
        let users: Vec<_> = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for user in users {
            user.reopened();
        }
        Ok(())
    }

    /// Opens the directory, retrying while operations in flight still hold the old
    /// database's lock.
    fn open_when_released(&self) -> Result<sled::Db, StoreError> {
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            let opened = catch_quietly(|| self.sled_config.open()).map_err(|detail| {
                StoreError::Damaged {
                    path: self.path.clone(),
                    detail: format!("sled failed reading it: {detail}"),
                }
            })?;
            match opened {
                Ok(db) => return Ok(db),
                Err(e) if is_locked(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    fn io(&self, source: sled::Error) -> StoreError {
        self.health.failed(&source);
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// sled's error when another open of the directory is still alive.
pub(super) fn is_locked(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

/// Whether the store's directory takes [`PROBE_BYTES`] again, written and synced.
fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join("switchboard.probe");
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    written
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::{Store, StoreConfig};

    #[derive(Default)]
    struct User(AtomicU64);

    impl Reopened for User {
        fn reopened(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_reopen_hands_every_tree_the_new_database_and_tells_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let tree = store.tree("t").unwrap();
        tree.current().unwrap().insert("k", "v").unwrap();
        tree.current().unwrap().flush().unwrap();
        let user = Arc::new(User::default());
        store.on_reopen(&user);

        // While the database is given up, operations fail and say why.
        store.shared.handles.release();
        assert!(matches!(tree.current(), Err(StoreError::Reopening { .. })));
        assert!(store.next_id().is_err());

        // Reopening waits for sled's lock, then the same handle reads the same data.
        store.shared.reopen().unwrap();
        assert_eq!(user.0.load(Ordering::Relaxed), 1);
        let read = tree.current().unwrap().get("k").unwrap();
        assert_eq!(read.as_deref(), Some(&b"v"[..]));
        assert!(store.next_id().is_ok());
        assert_eq!(store.health().view().recoveries, 1);
    }
}
