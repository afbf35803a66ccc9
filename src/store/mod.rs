//! The local event store: one sled database at `<data_dir>/store`, shared by everything
//! that must survive a restart (webhook deliveries, history, recordings).
//!
//! Owns opening, the on-disk format version, flushing, the layout of a stored message
//! ([`message`]) and the cap on stored bytes ([`quota`]). Each user keeps its data in
//! its own named trees and owns their layout. Writes reach disk within `[store] flush_interval` (sled's background flush),
//! and at once on [`Store::flush`], which shutdown calls.

pub mod config;
pub mod message;
pub mod metrics;
pub mod quota;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::StoreConfig;
pub use message::StoredMessage;
pub use quota::{Evictable, Evicted, Quota};

/// The layout this build reads and writes. Raised when a change would confuse an older
/// build; an older build then refuses the store instead of misreading it, and this
/// build brings an older store up to date with [`MIGRATIONS`].
///
/// 2: message history and recordings. An older build would not withdraw the history's
/// clean-stop marker, so a crash under it would leave stale positions trusted.
pub const FORMAT_VERSION: u32 = 2;

/// A step from one format version to the next, applied in order at open.
struct Migration {
    from: u32,
    what: &'static str,
    run: fn(&sled::Db) -> sled::Result<()>,
}

/// Every step, oldest first; `from` runs 1, 2, … up to `FORMAT_VERSION - 1`.
const MIGRATIONS: &[Migration] = &[Migration {
    from: 1,
    what: "history and recordings get their own trees; version 1 data is kept as is",
    run: |_| Ok(()),
}];

const VERSION_KEY: &[u8] = b"switchboard.format_version";

/// Why the store cannot be used. Every variant names the store's path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "the store at {} has format version {found}; this build understands version {FORMAT_VERSION} only (it was written by a newer switchboard: upgrade, or move the directory away)",
        path.display()
    )]
    NewerVersion { path: PathBuf, found: u32 },
    #[error(
        "the store at {} has format version {found}, which this build cannot migrate (move the directory away to start afresh)",
        path.display()
    )]
    NoMigration { path: PathBuf, found: u32 },
    #[error("the store at {} has an unreadable format version record", path.display())]
    BadVersion { path: PathBuf },
    #[error("store at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
}

/// The open store. Cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    quota: Arc<Quota>,
}

impl Store {
    /// Opens (or creates) the store in `data_dir/store` and checks its format version.
    pub fn open(data_dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        let flush_ms = u64::try_from(config.flush_interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(Some(flush_ms))
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let store = Store {
            db,
            path,
            quota: Arc::new(Quota::new(config.max_bytes)),
        };
        store.check_version()?;
        Ok(store)
    }

    fn check_version(&self) -> Result<(), StoreError> {
        match self.db.get(VERSION_KEY).map_err(|e| self.io(e))? {
            None => {
                self.db
                    .insert(VERSION_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(|e| self.io(e))?;
                self.db.flush().map_err(|e| self.io(e))?;
                Ok(())
            }
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::BadVersion {
                        path: self.path.clone(),
                    })?;
                if found > FORMAT_VERSION || found == 0 {
                    return Err(StoreError::NewerVersion {
                        path: self.path.clone(),
                        found,
                    });
                }
                self.migrate(found)
            }
        }
    }

    /// Brings a store of an older format up to this build's, one step at a time, and
    /// records each step as it completes: a crash in between resumes from there.
    fn migrate(&self, mut version: u32) -> Result<(), StoreError> {
        while version < FORMAT_VERSION {
            let step =
                MIGRATIONS
                    .iter()
                    .find(|m| m.from == version)
                    .ok_or(StoreError::NoMigration {
                        path: self.path.clone(),
                        found: version,
                    })?;
            tracing::info!(
                path = %self.path.display(),
                from = version,
                to = version + 1,
                "migrating the store: {}",
                step.what
            );
            (step.run)(&self.db).map_err(|e| self.io(e))?;
            version += 1;
            self.db
                .insert(VERSION_KEY, &version.to_be_bytes())
                .map_err(|e| self.io(e))?;
            self.db.flush().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// A named tree, created if missing. Names are namespaced by their user
    /// (`webhook/<name>/pending`), so users never collide.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|e| self.io(e))
    }

    /// A number never handed out before by this store, even across crashes (sled
    /// persists a high-water mark and skips ahead on recovery).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(|e| self.io(e))
    }

    /// Writes everything to disk now.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| self.io(e))
    }

    /// Bytes on disk, for metrics; 0 when it cannot be read.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The cap on stored messages; owners of growing data register with it.
    pub fn quota(&self) -> &Arc<Quota> {
        &self.quota
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps an error of a running store with its path.
    pub fn io(&self, source: sled::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Opens a store in tests that reopen one: sled lets go of the directory's lock shortly
/// after the last handle is dropped (its flusher notices on its next round).
#[cfg(test)]
pub(crate) fn open_when_free(dir: &Path, config: &StoreConfig) -> Store {
    for _ in 0..250 {
        if let Ok(store) = Store::open(dir, config) {
            return store;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the store at {} stayed locked", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StoreConfig {
        StoreConfig {
            flush_interval: std::time::Duration::from_millis(100),
            ..StoreConfig::default()
        }
    }

    #[test]
    fn records_its_version_and_refuses_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config()).unwrap();
        let a = store.next_id().unwrap();
        assert!(store.next_id().unwrap() > a);
        store
            .db
            .insert(VERSION_KEY, &(FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        store.db.flush().unwrap();
        drop(store);
        let err = Store::open(dir.path(), &config())
            .err()
            .expect("a newer store is refused");
        let text = err.to_string();
        assert!(
            text.contains(&format!("format version {}", FORMAT_VERSION + 1)),
            "{text}"
        );
        assert!(
            text.contains(&dir.path().join("store").display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn migrates_a_version_1_store_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config()).unwrap();
        store
            .tree("webhook/a/pending")
            .unwrap()
            .insert("k", "v")
            .unwrap();
        store.db.insert(VERSION_KEY, &1u32.to_be_bytes()).unwrap();
        store.db.flush().unwrap();
        drop(store);
        let store = Store::open(dir.path(), &config()).unwrap();
        let version = store.db.get(VERSION_KEY).unwrap().unwrap();
        assert_eq!(version.as_ref(), FORMAT_VERSION.to_be_bytes());
        assert_eq!(
            store
                .tree("webhook/a/pending")
                .unwrap()
                .get("k")
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
        // Every version from 1 up has its step.
        for from in 1..FORMAT_VERSION {
            assert!(
                MIGRATIONS.iter().any(|m| m.from == from),
                "no step from {from}"
            );
        }
    }

    #[test]
    fn reopens_a_store_of_its_own_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config()).unwrap();
        store.tree("t").unwrap().insert("k", "v").unwrap();
        drop(store);
        let store = Store::open(dir.path(), &config()).unwrap();
        assert_eq!(
            store.tree("t").unwrap().get("k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
}
