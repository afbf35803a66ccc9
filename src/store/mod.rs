//! The local event store: one sled database at `<data_dir>/store`, shared by everything
//! that must survive a restart (webhook deliveries, history, recordings).
//!
//! Owns opening, the on-disk format version, flushing, the layout of a stored message
//! ([`message`]), the cap on stored bytes ([`quota`]) and reopening itself after a
//! failed disk ([`recovery`]). Each user keeps its data in its own named trees, held as
//! [`Tree`] handles that follow the store across a reopen ([`handle`]), and owns their
//! layout. Writes reach disk within `[store] flush_interval` (sled's background flush),
//! and at once on [`Store::flush`], which shutdown calls.

pub mod config;
pub mod handle;
pub mod health;
pub mod manifest;
pub mod message;
pub mod metrics;
pub mod quota;
pub mod recovery;
pub mod run_files;
pub mod salvage;
pub mod segments;
pub mod writer;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use config::StoreConfig;
pub use handle::Tree;
pub use health::Health;
use manifest::Manifest;
pub use message::StoredMessage;
pub use quota::{Evictable, Evicted, Quota};
pub use recovery::Reopened;
use recovery::Shared;
pub use run_files::RunTree;
pub use salvage::SalvageReport;

/// The layout this build reads and writes. Raised when a change would confuse an older
/// build; an older build then refuses the store instead of misreading it, and this
/// build brings an older store up to date with [`MIGRATIONS`].
///
/// 2: message history and recordings. An older build would not withdraw the history's
/// clean-stop marker, so a crash under it would leave stale positions trusted.
/// 3: the history keeps runs of messages per record; an older build would take a run
/// for one unreadable message.
/// 4: the history's runs live in files beside sled, which holds pointers to them
/// ([`run_files`]); an older build would take a pointer for an unreadable run.
pub const FORMAT_VERSION: u32 = 4;

/// A step from one format version to the next, applied in order at open.
struct Migration {
    from: u32,
    what: &'static str,
    run: fn(&sled::Db) -> sled::Result<()>,
}

/// Every step, oldest first; `from` runs 1, 2, … up to `FORMAT_VERSION - 1`.
const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 1,
        what: "history and recordings get their own trees; version 1 data is kept as is",
        run: |_| Ok(()),
    },
    Migration {
        from: 2,
        what:
            "the history stores runs of messages; version 2's single messages read as runs of one",
        run: |_| Ok(()),
    },
    Migration {
        from: 3,
        what:
            "the history keeps new runs in files beside sled; version 3's runs in sled still read",
        run: |_| Ok(()),
    },
];

const VERSION_KEY: &[u8] = b"switchboard.format_version";
/// The generation of the last open, matched against the manifest's ([`manifest`]).
const GENERATION_KEY: &[u8] = b"switchboard.generation";

/// What to do about a damaged store; every message about one ends with it.
const MOVE_ASIDE: &str = "stop switchboard and move the directory aside (for example `mv store store.damaged` in the data directory) to start with an empty store; `switchboard store check` shows what is wrong";

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
    #[error("the store at {} is damaged ({detail}): {MOVE_ASIDE}", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error("the store at {} lost data ({detail}): {MOVE_ASIDE}", path.display())]
    Lost { path: PathBuf, detail: String },
    #[error("the store at {} is being reopened after a failure", path.display())]
    Reopening { path: PathBuf },
    #[error("store at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
}

/// Exit status of the daemon and of `switchboard store check` when the store cannot be
/// used as it is (damaged, lost data, a newer or unknown format): starting again will not
/// help, so the packaged unit lists it in `RestartPreventExitStatus=` (EX_DATAERR).
pub const EXIT_UNUSABLE: u8 = 65;

impl StoreError {
    /// Whether the store itself is the problem (rather than, say, a full disk or a
    /// lock held by another process): starting again cannot help.
    pub fn is_unusable(&self) -> bool {
        matches!(
            self,
            StoreError::Damaged { .. }
                | StoreError::Lost { .. }
                | StoreError::NewerVersion { .. }
                | StoreError::NoMigration { .. }
                | StoreError::BadVersion { .. }
        )
    }
}

/// What a readable store holds.
#[derive(Debug)]
pub struct CheckReport {
    pub path: PathBuf,
    /// None: a store nothing was ever written to.
    pub version: Option<u32>,
    pub generation: Option<u64>,
    /// Every tree by name, with its entries.
    pub trees: Vec<(String, u64)>,
    /// Every tree with runs in files ([`run_files`]): how many, and why each of those
    /// that does not read back does not (their messages are lost; the daemon says so
    /// to a client resuming across them).
    pub runs: Vec<(String, u64, Vec<run_files::Unreadable>)>,
}

fn on_disk(shared: &Shared) -> u64 {
    shared
        .handles
        .db()
        .map_or(0, |db| db.size_on_disk().unwrap_or(0))
}

/// The store's files: sled's and the run files' ([`run_files`]), for the metric and the
/// cap alike.
fn disk_bytes(shared: &Shared, run_bytes: &AtomicU64) -> u64 {
    on_disk(shared) + run_bytes.load(Ordering::Relaxed)
}

/// The open store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The current database, the trees handed out, the recovery task.
    shared: Arc<Shared>,
    path: PathBuf,
    quota: Arc<Quota>,
    /// This open's generation, recorded in the manifest at a clean stop.
    generation: u64,
    /// Failures of the running store, for health and metrics.
    health: Arc<Health>,
    /// Bytes in the run files beside sled's ([`run_files`]), kept by their trees.
    run_bytes: Arc<AtomicU64>,
    flush_interval: Duration,
}

impl Store {
    /// Opens (or creates) the store in `data_dir/store`, checks its format version and
    /// that it holds what the manifest says it held, and starts a new generation.
    pub fn open(data_dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        let mut store = Store::open_as_is(data_dir, config)?;
        let manifest = store.manifest()?;
        store.check_version(manifest.is_some())?;
        store.check_manifest(manifest)?;
        store.generation = store.begin_generation(manifest)?;
        Ok(store)
    }

    /// Opens sled's files and nothing more. sled panics on some damaged files (a zeroed
    /// page: "tried to serialize Uninitialized"); the panic is caught here, without the
    /// default hook's message, and becomes an error that names the directory.
    fn open_as_is(data_dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        let flush_ms = u64::try_from(config.flush_interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let sled_config = segments::sled_config(&path).flush_every_ms(Some(flush_ms));
        let opened =
            catch_quietly(|| sled_config.clone().open()).map_err(|detail| StoreError::Damaged {
                path: path.clone(),
                detail: format!("sled failed reading it: {detail}"),
            })?;
        let db = opened.map_err(|source| match source {
            sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => StoreError::Damaged {
                path: path.clone(),
                detail: source.to_string(),
            },
            source => StoreError::Open {
                path: path.clone(),
                source,
            },
        })?;
        let health = Arc::<Health>::default();
        let shared = Arc::new(Shared::new(db, path.clone(), health.clone(), sled_config));
        let quota = Arc::new(Quota::new(config.max_bytes));
        if config.max_bytes < quota::DISK_BOUND_FROM {
            tracing::warn!(
                max_bytes = config.max_bytes,
                disk_bound_from = quota::DISK_BOUND_FROM,
                "[store] max_bytes is below the smallest cap the store's files are held to: it counts stored bytes, and sled's files take some megabytes more"
            );
        }
        let files = Arc::downgrade(&shared);
        let run_bytes = Arc::<AtomicU64>::default();
        let runs = run_bytes.clone();
        quota.measure_disk(move || files.upgrade().map_or(0, |s| disk_bytes(&s, &runs)));
        Ok(Store {
            shared,
            path,
            quota,
            generation: 0,
            health,
            run_bytes,
            flush_interval: config.flush_interval,
        })
    }

    fn manifest(&self) -> Result<Option<Manifest>, StoreError> {
        Manifest::read(&self.path).map_err(|e| StoreError::Damaged {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// `written`: the manifest says switchboard wrote this store before, so a missing
    /// version record means lost data, not a new store.
    fn check_version(&self, written: bool) -> Result<(), StoreError> {
        match self.db()?.get(VERSION_KEY).map_err(|e| self.io(e))? {
            None if written => Err(StoreError::Lost {
                path: self.path.clone(),
                detail: "it has no format version record although switchboard wrote it before: the data file was probably cut short".into(),
            }),
            None => {
                self.db()?
                    .insert(VERSION_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(|e| self.io(e))?;
                self.db()?.flush().map_err(|e| self.io(e))?;
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

    fn stored_generation(&self) -> Result<Option<u64>, StoreError> {
        let found = self.db()?.get(GENERATION_KEY).map_err(|e| self.io(e))?;
        Ok(found.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok().map(u64::from_be_bytes)))
    }

    /// The store must show the manifest's generation (or the next: a crash between
    /// writing it to the store and to the manifest) and, after a clean stop, at least
    /// the entries counted then.
    fn check_manifest(&self, manifest: Option<Manifest>) -> Result<(), StoreError> {
        let Some(m) = manifest else {
            return Ok(());
        };
        let lost = |detail: String| StoreError::Lost {
            path: self.path.clone(),
            detail,
        };
        let found = self.stored_generation()?;
        match found {
            Some(g) if g == m.generation + 1 => return Ok(()),
            Some(g) if g == m.generation => {}
            found => {
                return Err(lost(format!(
                    "its generation record is {} where the manifest says {}: what was written since is gone",
                    found.map_or("missing".to_string(), |g| g.to_string()),
                    m.generation
                )))
            }
        }
        if let Some(expected) = m.entries {
            // More is not a loss: a write after the count (none should come) adds one.
            let found = self.count_entries()?;
            if found < expected {
                return Err(lost(format!(
                    "it holds {found} entries where {expected} were counted at the last clean stop"
                )));
            }
        }
        Ok(())
    }

    /// Records a new generation in the store, then in the manifest.
    fn begin_generation(&self, manifest: Option<Manifest>) -> Result<u64, StoreError> {
        let last = manifest
            .map(|m| m.generation)
            .max(self.stored_generation()?)
            .unwrap_or(0);
        let generation = last + 1;
        self.db()?
            .insert(GENERATION_KEY, &generation.to_be_bytes())
            .map_err(|e| self.io(e))?;
        self.db()?.flush().map_err(|e| self.io(e))?;
        self.write_manifest(Manifest {
            generation,
            entries: None,
        })?;
        Ok(generation)
    }

    fn write_manifest(&self, manifest: Manifest) -> Result<(), StoreError> {
        manifest
            .write(&self.path)
            .map_err(|e| self.io(sled::Error::Io(e)))
    }

    /// Entries in every tree, reading each one: an unreadable entry, or a panic of sled
    /// on one, is an error.
    pub fn count_entries(&self) -> Result<u64, StoreError> {
        Ok(self.tree_entries()?.iter().map(|(_, n)| n).sum())
    }

    /// Every tree by name, with the entries read from it.
    fn tree_entries(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let count = || -> Result<Vec<(String, u64)>, StoreError> {
            let mut trees = Vec::new();
            for name in self.db()?.tree_names() {
                let tree = self.db()?.open_tree(&name).map_err(|e| self.io(e))?;
                let mut n = 0u64;
                for item in tree.iter() {
                    item.map_err(|e| self.io(e))?;
                    n += 1;
                }
                trees.push((String::from_utf8_lossy(&name).into_owned(), n));
            }
            Ok(trees)
        };
        catch_quietly(count).map_err(|detail| StoreError::Damaged {
            path: self.path.clone(),
            detail: format!("sled failed reading it: {detail}"),
        })?
    }

    /// Flushes and records in the manifest what the store holds, so the next open can
    /// tell whether it all came back. The last thing shutdown does with the store.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.flush().await?;
        let entries = self.count_entries()?;
        self.write_manifest(Manifest {
            generation: self.generation,
            entries: Some(entries),
        })
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
            (step.run)(&*self.db()?).map_err(|e| self.io(e))?;
            version += 1;
            self.db()?
                .insert(VERSION_KEY, &version.to_be_bytes())
                .map_err(|e| self.io(e))?;
            self.db()?.flush().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// What `switchboard store check` reports: opens the store as the daemon would,
    /// without starting a generation or writing anything of ours, and reads every entry.
    pub fn check(data_dir: &Path, config: &StoreConfig) -> Result<CheckReport, StoreError> {
        let store = Store::open_as_is(data_dir, config)?;
        let manifest = store.manifest()?;
        let version = store.db()?.get(VERSION_KEY).map_err(|e| store.io(e))?;
        if version.is_none() && manifest.is_some() {
            // What `open` would refuse.
            store.check_version(true)?;
        }
        store.check_manifest(manifest)?;
        let trees = store.tree_entries()?;
        let mut runs = Vec::new();
        for (name, _) in &trees {
            let tree = store.db()?.open_tree(name).map_err(|e| store.io(e))?;
            let (n, unreadable) =
                run_files::verify(&store.path, name, &tree).map_err(|e| store.io(e))?;
            if n > 0 {
                runs.push((name.clone(), n, unreadable));
            }
        }
        Ok(CheckReport {
            runs,
            path: store.path.clone(),
            version: version
                .and_then(|b| <[u8; 4]>::try_from(b.as_ref()).ok().map(u32::from_be_bytes)),
            generation: store.stored_generation()?,
            trees,
        })
    }

    /// A named tree, created if missing. Names are namespaced by their user
    /// (`webhook/<name>/pending`), so users never collide.
    pub fn tree(&self, name: &str) -> Result<Tree, StoreError> {
        let slot = self.shared.handles.open(name).map_err(|e| self.io(e))?;
        Ok(Tree::new(slot, self.clone()))
    }

    /// The current database; an error while the store reopens.
    fn db(&self) -> Result<Arc<sled::Db>, StoreError> {
        self.shared.handles.db().ok_or_else(|| self.reopening())
    }

    /// The error of an operation tried while the store reopens.
    fn reopening(&self) -> StoreError {
        self.health.refused();
        StoreError::Reopening {
            path: self.path.clone(),
        }
    }

    /// Starts the task that reopens the store after a failure ([`recovery`]).
    pub fn start_recovery(&self) {
        self.shared.start();
    }

    /// Stops it, waiting for a reopen in progress. Called at shutdown before the
    /// store's final flush.
    pub async fn stop_recovery(&self) {
        self.shared.stop().await;
    }

    /// Tells `user` whenever the store reopened after a failure.
    pub fn on_reopen<T: Reopened + 'static>(&self, user: &Arc<T>) {
        let user: Arc<dyn Reopened> = user.clone();
        self.shared.register(Arc::downgrade(&user));
    }

    /// A number never handed out before by this store, even across crashes (sled
    /// persists a high-water mark and skips ahead on recovery).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.db()?.generate_id().map_err(|e| self.io(e))
    }

    /// Writes everything to disk now.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db()?
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| self.io(e))
    }

    /// Bytes on disk (sled's log and `blobs/`, and the run files), for metrics and the
    /// cap; sled's part is 0 when its files cannot be read.
    pub fn size_on_disk(&self) -> u64 {
        disk_bytes(&self.shared, &self.run_bytes)
    }

    /// The run trees' count of their files' bytes, which they keep up to date.
    pub(crate) fn run_file_bytes(&self) -> Arc<AtomicU64> {
        self.run_bytes.clone()
    }

    /// How long a write may wait before it is on disk (`[store] flush_interval`).
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval
    }

    /// The shortest time between two writes of a writer under a flood (group commit):
    /// each write costs a thread hop, a file write and a sled batch whatever it holds.
    /// A tenth of the flush interval, from 1 to 10 ms, so it adds little to what a
    /// SIGKILL may lose.
    pub fn group_commit(&self) -> Duration {
        (self.flush_interval / 10).clamp(Duration::from_millis(1), Duration::from_millis(10))
    }

    /// The cap on stored messages; owners of growing data register with it.
    pub fn quota(&self) -> &Arc<Quota> {
        &self.quota
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether writes succeed, and the last failure.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Wraps an error of a running store with its path, and records it in the store's
    /// [`Health`]. sled reports damage it finds while reading as corruption; that is
    /// [`StoreError::Damaged`], with what to do.
    pub fn io(&self, source: sled::Error) -> StoreError {
        self.health.failed(&source);
        match source {
            sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => StoreError::Damaged {
                path: self.path.clone(),
                detail: source.to_string(),
            },
            source => StoreError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }
}

thread_local! {
    /// Set while [`catch_quietly`] runs on this thread.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into an error with the panic's message, and keeps the
/// panic hook quiet for panics on this thread meanwhile: the operator should read our
/// error, not a backtrace hint from inside sled. The hook installed here once passes
/// every other panic to the hook that was there before.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// Runs `f`, which may wait for the disk, without taking a runtime thread from the
/// other connections: on an async worker, tokio moves them to another thread first.
pub fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Opens a store in tests that reopen one: sled lets go of the directory's lock shortly
/// after the last handle is dropped (its flusher notices on its next round), so a lock
/// error is retried for a while; any other outcome is returned.
#[cfg(test)]
pub(crate) fn reopen(dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
    for _ in 0..250 {
        match Store::open(dir, config) {
            Err(StoreError::Open { ref source, .. }) if recovery::is_locked(source) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
    panic!("the store at {} stayed locked", dir.display());
}

/// [`reopen`], for tests that expect the store to open.
#[cfg(test)]
pub(crate) fn open_when_free(dir: &Path, config: &StoreConfig) -> Store {
    match reopen(dir, config) {
        Ok(store) => store,
        Err(e) => panic!("the store at {} did not open: {e}", dir.display()),
    }
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

    fn read(store: &Store, tree: &str, key: &str) -> Option<sled::IVec> {
        store
            .tree(tree)
            .unwrap()
            .current()
            .unwrap()
            .get(key)
            .unwrap()
    }

    #[test]
    fn records_its_version_and_refuses_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config()).unwrap();
        let a = store.next_id().unwrap();
        assert!(store.next_id().unwrap() > a);
        store
            .db()
            .unwrap()
            .insert(VERSION_KEY, &(FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        store.db().unwrap().flush().unwrap();
        drop(store);
        let err = reopen(dir.path(), &config())
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
            .current()
            .unwrap()
            .insert("k", "v")
            .unwrap();
        store
            .db()
            .unwrap()
            .insert(VERSION_KEY, &1u32.to_be_bytes())
            .unwrap();
        store.db().unwrap().flush().unwrap();
        drop(store);
        let store = open_when_free(dir.path(), &config());
        let version = store.db().unwrap().get(VERSION_KEY).unwrap().unwrap();
        assert_eq!(version.as_ref(), FORMAT_VERSION.to_be_bytes());
        assert_eq!(
            read(&store, "webhook/a/pending", "k").as_deref(),
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
        store
            .tree("t")
            .unwrap()
            .current()
            .unwrap()
            .insert("k", "v")
            .unwrap();
        drop(store);
        let store = open_when_free(dir.path(), &config());
        assert_eq!(read(&store, "t", "k").as_deref(), Some(&b"v"[..]));
    }
}
