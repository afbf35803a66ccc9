//! A tree of runs ([`super::message::run`]) whose bytes live in append-only files beside
//! sled, sled holding only where each run is: its file, offset, length and CRC-32.
//!
//! Why not in sled: sled 0.34 splits a leaf past 16 entries and writes any page over a
//! quarter of a segment to a blob file of its own, so a tree of 16 KiB runs made every
//! split create, fill and later delete a file of some 136 KiB, on the writer's thread.
//! That was 31% of the daemon under a history flood and the whole gap to the plain
//! path (docs/benchmarks.md, "The wall, measured in the daemon"). Here a burst of runs
//! is one `pwrite` at the end of the current file and one sled batch of 25-byte
//! pointers.
//!
//! Order on disk: a burst's bytes are written before the batch that points to them, so
//! a SIGKILL loses neither (both are in the page cache; sled loses at most its flush
//! interval, as before, which leaves bytes that no pointer names). A background thread
//! syncs the files written to every flush interval, then flushes sled; after a power
//! loss a pointer whose bytes never reached the disk fails its CRC and the run reads
//! as lost, never as other messages.
//!
//! Space: each file's live bytes are counted, from the pointers at open and then on
//! every write and removal. A file with none left is deleted once a sled flush made the
//! removals durable (a crash must not bring back pointers into a deleted file). When
//! the dead bytes outweigh half the live ones, the emptiest file's live runs are copied
//! to the current file, each pointer swapped only if it did not change, and the file
//! goes too. Every change goes through one lock, so the counts stay exact.
//!
//! A value that is not a pointer is a run kept in sled itself (format 3), read as is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use sled::IVec;

use super::message::run;
use super::{Store, StoreError, Tree};

/// The first byte of a pointer; a run starts with 2 and a lone message with 1.
const POINTER: u8 = 3;
const POINTER_LEN: usize = 1 + 8 + 8 + 4 + 4;

/// A file takes bursts until it holds a sixty-fourth of the store's cap, within these
/// bounds; then the next one starts. Small files free a small cap's space in small
/// steps; large ones are created seldom (creating one took half a millisecond of the
/// writer's thread on ext4 under the history bench).
const FILE_BYTES: (u64, u64) = (1 << 20, 16 << 20);

fn file_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 64).clamp(FILE_BYTES.0, FILE_BYTES.1)
}

/// Files kept open for reading; past this a read opens its file for itself, so a very
/// large store does not hold a descriptor per file.
const KEPT_OPEN: usize = 256;

/// Dead bytes are left in place up to this many files' worth, or half the live bytes
/// if more.
const DEAD_FILES: u64 = 2;

const SUFFIX: &str = "run";

/// Where one run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pointer {
    file: u64,
    offset: u64,
    len: u32,
    crc: u32,
}

impl Pointer {
    fn encode(&self) -> [u8; POINTER_LEN] {
        let mut out = [0u8; POINTER_LEN];
        out[0] = POINTER;
        out[1..9].copy_from_slice(&self.file.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out[21..25].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// None for a value kept in sled itself.
    fn decode(value: &[u8]) -> Option<Pointer> {
        if value.len() != POINTER_LEN || value[0] != POINTER {
            return None;
        }
        let u64_at = |at: usize| {
            value
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let u32_at = |at: usize| {
            value
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
        };
        Some(Pointer {
            file: u64_at(1)?,
            offset: u64_at(9)?,
            len: u32_at(17)?,
            crc: u32_at(21)?,
        })
    }
}

/// A run whose bytes cannot be read back: its file is gone or short, or the bytes are
/// not what was written.
#[derive(Debug, thiserror::Error)]
#[error("run file {file:016x}.{SUFFIX} at {offset} ({len} bytes): {why}")]
pub struct Unreadable {
    file: u64,
    offset: u64,
    len: u32,
    why: String,
}

/// One file's figures.
#[derive(Debug)]
struct Figures {
    size: u64,
    live: u64,
}

/// What the lock guards: every file's figures and where the next burst goes.
struct Files {
    figures: BTreeMap<u64, Figures>,
    current: Option<u64>,
    next_id: u64,
    /// Files with no live run, deleted after the next sled flush.
    doomed: BTreeSet<u64>,
    /// Files written to since the last sync.
    unsynced: BTreeSet<u64>,
    /// One burst's bytes, kept to spare an allocation per burst.
    buffer: Vec<u8>,
}

impl Files {
    /// Keeps the larger of the buffer held and `bytes` for the next burst: a change with
    /// no runs (a removal) brings back an empty one.
    fn keep_buffer(&mut self, bytes: Vec<u8>) {
        if bytes.capacity() > self.buffer.capacity() {
            self.buffer = bytes;
        }
    }

    fn live(&self) -> u64 {
        self.figures.values().map(|f| f.live).sum()
    }

    fn dead(&self) -> u64 {
        self.figures
            .values()
            .map(|f| f.size - f.live.min(f.size))
            .sum()
    }

    /// Counts a run out of its file; a file left with nothing, and not taking bursts,
    /// is doomed.
    fn release(&mut self, p: &Pointer) {
        if let Some(f) = self.figures.get_mut(&p.file) {
            f.live = f.live.saturating_sub(u64::from(p.len));
            if f.live == 0 && self.current != Some(p.file) {
                self.doomed.insert(p.file);
            }
        }
    }
}

struct Inner {
    tree: Tree,
    dir: PathBuf,
    /// Where a file stops taking bursts ([`file_bytes`]).
    file_bytes: u64,
    files: Mutex<Files>,
    /// Open files for readers, who never take the writers' lock.
    open: RwLock<HashMap<u64, Arc<File>>>,
    /// The store's bytes in run files, for its disk figure.
    on_disk: Arc<AtomicU64>,
}

/// Runs laid out back to back in one buffer, as they go to a file: a writer starts each
/// run ([`RunBuffer::start`]) and adds records already framed
/// ([`RunBuffer::extend_frames`]), or adds a whole run ([`RunBuffer::add`]), with no
/// buffer per run. [`RunTree::buffer`] lends the buffer the last burst used.
#[derive(Default)]
pub struct RunBuffer {
    bytes: Vec<u8>,
    /// Each run's key and where its bytes start; a run ends where the next starts.
    starts: Vec<(Vec<u8>, usize)>,
}

impl RunBuffer {
    /// Starts a run under `key`; the run before it ends.
    pub fn start(&mut self, key: Vec<u8>) {
        self.starts.push((key, self.bytes.len()));
        run::start_in(&mut self.bytes);
    }

    /// Adds records already framed ([`run::push_with`]) to the run started last: a
    /// tail that keeps its messages framed is stored with one copy per run.
    pub fn extend_frames(&mut self, frames: &[u8]) {
        self.bytes.extend_from_slice(frames);
    }

    /// Adds a whole run, built elsewhere.
    pub fn add(&mut self, key: Vec<u8>, run: &[u8]) {
        self.starts.push((key, self.bytes.len()));
        self.bytes.extend_from_slice(run);
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Each run's key and bytes, copied: for tests of what a writer built.
    #[cfg(test)]
    pub fn to_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.runs()
            .map(|(key, at)| (key.to_vec(), self.bytes[at].to_vec()))
            .collect()
    }

    /// Each run's key and bytes, in order.
    fn runs(&self) -> impl Iterator<Item = (&[u8], std::ops::Range<usize>)> + '_ {
        let ends = self
            .starts
            .iter()
            .skip(1)
            .map(|&(_, at)| at)
            .chain(std::iter::once(self.bytes.len()));
        self.starts
            .iter()
            .zip(ends)
            .map(|((key, at), end)| (key.as_slice(), *at..end))
    }
}

/// One atomic change to a run tree, applied by [`RunTree::apply`].
#[derive(Default)]
pub struct Change {
    /// Runs stored in a file, sled keeping a pointer under each one's key.
    pub runs: RunBuffer,
    /// (key, value) kept in sled as they are: figures, metadata. A value must not
    /// read as a pointer (25 bytes starting with 3); JSON never does.
    pub inline: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys removed, runs or not.
    pub removed: Vec<Vec<u8>>,
}

/// A tree of runs kept in files (see the module's notes). Cheap to clone.
#[derive(Clone)]
pub struct RunTree {
    inner: Arc<Inner>,
}

fn file_name(id: u64) -> String {
    format!("{id:016x}.{SUFFIX}")
}

fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SUFFIX)?.strip_suffix('.')?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

impl RunTree {
    /// Opens the tree `name` with its files in `<store>/runs/<name>` (`/` read as `-`):
    /// counts every file's live bytes from the pointers, deletes files none points into
    /// (bytes of bursts whose batch a crash lost), and starts the thread that syncs and
    /// cleans.
    pub fn open(store: &Store, name: &str) -> Result<RunTree, StoreError> {
        let tree = store.tree(name)?;
        let dir = files_of(store.path(), name);
        let io = |e: std::io::Error| tree.io(sled::Error::Io(e));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let inner = Arc::new(Inner {
            tree: tree.clone(),
            dir,
            file_bytes: file_bytes(store.quota().max_bytes()),
            files: Mutex::new(Files {
                figures: BTreeMap::new(),
                current: None,
                next_id: 1,
                doomed: BTreeSet::new(),
                unsynced: BTreeSet::new(),
                buffer: Vec::new(),
            }),
            open: RwLock::default(),
            on_disk: store.run_file_bytes(),
        });
        let runs = RunTree { inner };
        runs.recount()?;
        runs.inner.sweep(true);
        spawn_syncer(Arc::downgrade(&runs.inner), store.flush_interval());
        Ok(runs)
    }

    /// The tree of pointers, for iterating keys; read values with [`RunTree::resolve`].
    pub fn current(&self) -> Result<Arc<sled::Tree>, StoreError> {
        self.inner.tree.current()
    }

    /// Wraps a sled error as the store does.
    pub fn io(&self, source: sled::Error) -> StoreError {
        self.inner.tree.io(source)
    }

    /// The run a value read under `key` stands for. A pointer whose file was compacted
    /// away meanwhile is looked up again.
    pub fn resolve(&self, key: &[u8], value: IVec) -> Result<IVec, Unreadable> {
        let Some(p) = Pointer::decode(&value) else {
            return Ok(value);
        };
        match self.inner.read(&p) {
            Err(e) if !self.inner.is_open(p.file) => {
                let again = self
                    .current()
                    .ok()
                    .and_then(|t| t.get(key).ok().flatten())
                    .and_then(|v| Pointer::decode(&v));
                match again {
                    Some(q) if q != p => self.inner.read(&q),
                    _ => Err(e),
                }
            }
            read => read,
        }
    }

    /// Applies `change` in one sled batch, the runs' bytes written first, in one burst
    /// at the end of the current file: a failed write changes nothing. Every write of
    /// a key that may hold a run goes through here or [`RunTree::remove`], which keep
    /// the files' counts.
    pub fn apply(&self, change: Change) -> Result<(), StoreError> {
        let Change {
            runs,
            inline,
            removed,
        } = change;
        let inner = &self.inner;
        let mut files = inner.lock();
        let tree = self.current()?;
        // What the batch replaces or removes is counted out of its file once it lands.
        let mut freed = Vec::with_capacity(removed.len());
        let keys = runs.starts.iter().map(|(key, _)| key);
        for key in removed.iter().chain(keys) {
            if let Some(p) = tree.get(key).map_err(|e| self.io(e))?.as_deref() {
                freed.extend(Pointer::decode(p));
            }
        }
        let mut batch = sled::Batch::default();
        let mut written = None;
        if !runs.is_empty() {
            let total = runs.bytes.len() as u64;
            let (id, start) = inner.reserve(&mut files, total)?;
            for (key, span) in runs.runs() {
                let p = Pointer {
                    file: id,
                    offset: start + span.start as u64,
                    len: u32::try_from(span.len()).unwrap_or(u32::MAX),
                    crc: crc32fast::hash(&runs.bytes[span]),
                };
                batch.insert(key, &p.encode()[..]);
            }
            let put = inner.append(&mut files, id, start, &runs.bytes);
            files.keep_buffer(runs.bytes);
            put?;
            written = Some((id, total));
        } else {
            files.keep_buffer(runs.bytes);
        }
        for key in &removed {
            batch.remove(key.as_slice());
        }
        for (key, value) in inline {
            batch.insert(key, value);
        }
        tree.apply_batch(batch).map_err(|e| self.io(e))?;
        if let Some((id, total)) = written {
            if let Some(f) = files.figures.get_mut(&id) {
                f.live += total;
            }
        }
        for p in &freed {
            files.release(p);
        }
        Ok(())
    }

    /// An empty [`RunBuffer`] on the buffer the last burst used, which [`RunTree::apply`]
    /// keeps: a writer's burst of a megabyte then costs no allocation (and no fresh
    /// pages to zero).
    pub fn buffer(&self) -> RunBuffer {
        let mut bytes = std::mem::take(&mut self.inner.lock().buffer);
        bytes.clear();
        RunBuffer {
            bytes,
            starts: Vec::new(),
        }
    }

    /// Removes the run under `key`.
    pub fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        let mut files = self.inner.lock();
        let old = self.current()?.remove(key).map_err(|e| self.io(e))?;
        if let Some(p) = old.as_deref().and_then(Pointer::decode) {
            files.release(&p);
        }
        Ok(())
    }

    /// Syncs every file written to; the store's flush follows at close.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync().map_err(|e| self.io(sled::Error::Io(e)))
    }

    /// Counts every file's live bytes from the pointers again: at open, and after the
    /// store reopened (what sled had not written when its disk failed is gone, and so
    /// is what it pointed to).
    pub fn recount(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut files = inner.lock();
        let mut found: BTreeMap<u64, u64> = BTreeMap::new();
        let io = |e: std::io::Error| self.io(sled::Error::Io(e));
        for entry in std::fs::read_dir(&inner.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(parse_name) {
                found.insert(id, entry.metadata().map_err(io)?.len());
            }
        }
        let mut live: HashMap<u64, u64> = HashMap::new();
        for item in self.current()?.iter() {
            let (_, value) = item.map_err(|e| self.io(e))?;
            if let Some(p) = Pointer::decode(&value) {
                *live.entry(p.file).or_default() += u64::from(p.len);
            }
        }
        let before: u64 = files.figures.values().map(|f| f.size).sum();
        files.figures = found
            .iter()
            .map(|(&id, &size)| {
                let live = live.get(&id).copied().unwrap_or(0);
                (id, Figures { size, live })
            })
            .collect();
        files.next_id = files.next_id.max(found.keys().max().map_or(1, |m| m + 1));
        let current = files.current;
        files.doomed = files
            .figures
            .iter()
            .filter(|(id, f)| f.live == 0 && Some(**id) != current)
            .map(|(id, _)| *id)
            .collect();
        let after: u64 = files.figures.values().map(|f| f.size).sum();
        inner.on_disk.fetch_add(after, Ordering::Relaxed);
        inner.on_disk.fetch_sub(before, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes in this tree's files, live or not.
    pub fn file_bytes(&self) -> u64 {
        self.inner.lock().figures.values().map(|f| f.size).sum()
    }
}

/// The directory of every run tree's files in the store at `store`.
pub fn runs_dir(store: &Path) -> PathBuf {
    store.join("runs")
}

/// The directory of the tree `name`'s files.
fn files_of(store: &Path, name: &str) -> PathBuf {
    runs_dir(store).join(name.replace('/', "-"))
}

/// Reads the run `p` from `file`, checking its length and checksum.
fn read_from(file: &File, p: &Pointer) -> Result<IVec, Unreadable> {
    let fail = |why: String| Unreadable {
        file: p.file,
        offset: p.offset,
        len: p.len,
        why,
    };
    let mut bytes = vec![0u8; p.len as usize];
    file.read_exact_at(&mut bytes, p.offset).map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the file is cut short".into(),
            _ => e.to_string(),
        })
    })?;
    if crc32fast::hash(&bytes) != p.crc {
        return Err(fail("its checksum does not match".into()));
    }
    Ok(IVec::from(bytes))
}

/// What `store check` finds of the tree `name`'s runs: how many are kept in files, and
/// those that do not read back. A tree with no pointers has no files to check.
pub fn verify(store: &Path, name: &str, tree: &sled::Tree) -> sled::Result<(u64, Vec<Unreadable>)> {
    let dir = files_of(store, name);
    let mut open: HashMap<u64, Option<File>> = HashMap::new();
    let (mut runs, mut bad) = (0u64, Vec::new());
    for item in tree.iter() {
        let (_, value) = item?;
        let Some(p) = Pointer::decode(&value) else {
            continue;
        };
        runs += 1;
        let file = open
            .entry(p.file)
            .or_insert_with(|| File::open(dir.join(file_name(p.file))).ok());
        let read = match file {
            Some(f) => read_from(f, &p).map(|_| ()),
            None => Err(Unreadable {
                file: p.file,
                offset: p.offset,
                len: p.len,
                why: "the file is missing".into(),
            }),
        };
        bad.extend(read.err());
    }
    Ok((runs, bad))
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_open(&self, id: u64) -> bool {
        self.open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(file_name(id))
    }

    /// The file `id`, opened once and kept for readers and the writer.
    fn handle(&self, id: u64) -> std::io::Result<Arc<File>> {
        if let Some(f) = self.open.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(f.clone());
        }
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(id))?,
        );
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        if open.len() >= KEPT_OPEN && !open.contains_key(&id) {
            return Ok(file);
        }
        Ok(open.entry(id).or_insert(file).clone())
    }

    fn read(&self, p: &Pointer) -> Result<IVec, Unreadable> {
        let file = self.handle(p.file).map_err(|e| Unreadable {
            file: p.file,
            offset: p.offset,
            len: p.len,
            why: e.to_string(),
        })?;
        read_from(&file, p)
    }

    /// Where a burst of `len` bytes goes: the end of the current file, or of a new one
    /// when the current one is full.
    fn reserve(&self, files: &mut Files, len: u64) -> Result<(u64, u64), StoreError> {
        if let Some(id) = files.current {
            let size = files.figures.get(&id).map_or(u64::MAX, |f| f.size);
            if size == 0 || size + len <= self.file_bytes {
                return Ok((id, size));
            }
            files.current = None;
            if files.figures.get(&id).is_some_and(|f| f.live == 0) {
                files.doomed.insert(id);
            }
        }
        let id = files.next_id;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(id))
            .map_err(|e| self.tree.io(sled::Error::Io(e)))?;
        files.next_id += 1;
        files.figures.insert(id, Figures { size: 0, live: 0 });
        files.current = Some(id);
        Ok((id, 0))
    }

    /// Writes `bytes` at `at` in file `id`. A failed write leaves the size as it was, so
    /// the next burst writes over whatever part landed.
    fn append(&self, files: &mut Files, id: u64, at: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let io = |e: std::io::Error| self.tree.io(sled::Error::Io(e));
        self.handle(id)
            .and_then(|f| f.write_all_at(bytes, at))
            .map_err(io)?;
        if let Some(f) = files.figures.get_mut(&id) {
            f.size = at + bytes.len() as u64;
        }
        files.unsynced.insert(id);
        self.on_disk
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Syncs the files written since the last sync, outside the lock.
    fn sync(&self) -> std::io::Result<()> {
        let ids = std::mem::take(&mut self.lock().unsynced);
        for &id in &ids {
            if let Ok(f) = self.handle(id) {
                if let Err(e) = f.sync_data() {
                    self.lock().unsynced.extend(ids.iter().copied());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Deletes the doomed files once a sled flush made their removals durable; `now`:
    /// at open, where sled's state is what is on disk already.
    fn sweep(&self, now: bool) {
        let doomed: Vec<u64> = self.lock().doomed.iter().copied().collect();
        if doomed.is_empty() {
            return;
        }
        if !now {
            let flushed = self
                .tree
                .current()
                .and_then(|t| t.flush().map(|_| ()).map_err(|e| self.tree.io(e)));
            if let Err(e) = flushed {
                tracing::warn!(error = %e, "run files: cannot flush before deleting empty files; trying again later");
                return;
            }
        }
        let mut files = self.lock();
        for id in doomed {
            // A file can take live runs again only as the current one, which is never
            // doomed; still, look again under the lock.
            if !files.doomed.remove(&id) || files.figures.get(&id).is_some_and(|f| f.live > 0) {
                continue;
            }
            match std::fs::remove_file(self.path(id)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %self.path(id).display(), error = %e, "run files: cannot delete an empty file");
                    files.doomed.insert(id);
                    continue;
                }
            }
            if let Some(f) = files.figures.remove(&id) {
                self.on_disk.fetch_sub(f.size, Ordering::Relaxed);
            }
            files.unsynced.remove(&id);
            self.open
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }

    /// Copies the live runs of the emptiest full file to the current one when the dead
    /// bytes outweigh [`DEAD_FILES`] files and half the live ones. One file per call.
    fn compact(&self) -> Result<(), StoreError> {
        let mut files = self.lock();
        let (live, dead) = (files.live(), files.dead());
        if dead <= (DEAD_FILES * self.file_bytes).max(live / 2) {
            return Ok(());
        }
        let current = files.current;
        let Some(victim) = files
            .figures
            .iter()
            .filter(|(id, f)| Some(**id) != current && f.live > 0 && f.size > 0)
            .min_by_key(|(_, f)| f.live * 1024 / f.size)
            .map(|(id, _)| *id)
        else {
            return Ok(());
        };
        let tree = self.tree.current()?;
        let mut moving = Vec::new();
        for item in tree.iter() {
            let (key, value) = item.map_err(|e| self.tree.io(e))?;
            if let Some(p) = Pointer::decode(&value).filter(|p| p.file == victim) {
                moving.push((key, p));
            }
        }
        let mut bytes = Vec::new();
        let mut moved = Vec::new();
        for (key, p) in moving {
            match self.read(&p) {
                Ok(run) => {
                    moved.push((key, p, bytes.len() as u64));
                    bytes.extend_from_slice(&run);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "run files: an unreadable run stays where it is")
                }
            }
        }
        if !bytes.is_empty() {
            let (id, start) = self.reserve(&mut files, bytes.len() as u64)?;
            self.append(&mut files, id, start, &bytes)?;
            for (key, old, at) in moved {
                let new = Pointer {
                    file: id,
                    offset: start + at,
                    ..old
                };
                let swapped = tree
                    .compare_and_swap(&key, Some(&old.encode()[..]), Some(&new.encode()[..]))
                    .map_err(|e| self.tree.io(e))?;
                if swapped.is_ok() {
                    files.release(&old);
                    if let Some(f) = files.figures.get_mut(&id) {
                        f.live += u64::from(old.len);
                    }
                }
            }
        }
        let unreadable_only = files.figures.get(&victim).map_or(0, |f| f.live);
        if unreadable_only > 0 {
            tracing::debug!(
                file = victim,
                live = unreadable_only,
                "run files: a compacted file keeps runs that cannot be read"
            );
        }
        Ok(())
    }
}

/// Every flush interval: syncs the files written to, then deletes empty files after a
/// sled flush, then compacts one file if the dead bytes call for it. Holds the tree only
/// for a round, so a dropped store is let go.
fn spawn_syncer(inner: Weak<Inner>, every: Duration) {
    let every = every.max(Duration::from_millis(1));
    let spawned = std::thread::Builder::new()
        .name("run-files".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if let Err(e) = inner.sync() {
                tracing::error!(dir = %inner.dir.display(), error = %e, "run files: sync failed");
                inner.tree.io(sled::Error::Io(e));
            }
            inner.sweep(false);
            if let Err(e) = inner.compact() {
                tracing::warn!(error = %e, "run files: compaction failed; trying again later");
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "run files: cannot start the sync thread; files are synced at close only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open_when_free, StoreConfig};

    /// A cap of 64 MiB: files of 1 MiB.
    fn config() -> StoreConfig {
        StoreConfig {
            flush_interval: Duration::from_millis(50),
            max_bytes: 64 << 20,
        }
    }

    fn run_of(i: u32, len: usize) -> Vec<u8> {
        let mut v = i.to_be_bytes().to_vec();
        v.resize(len, (i % 251) as u8);
        v
    }

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:08}").into_bytes()
    }

    /// A buffer of whole runs: (key, run).
    fn whole_runs(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> RunBuffer {
        let mut buffer = RunBuffer::default();
        for (key, run) in pairs {
            buffer.add(key, &run);
        }
        buffer
    }

    fn read_back(runs: &RunTree, i: u32) -> Result<IVec, Unreadable> {
        let value = runs
            .current()
            .expect("tree")
            .get(key(i))
            .expect("get")
            .expect("a pointer");
        runs.resolve(&key(i), value)
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        found.sort();
        found
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn runs_built_from_frames_read_back_as_built_on_a_reused_buffer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_when_free(dir.path(), &config());
        let runs = RunTree::open(&store, "t").expect("open");
        for round in 0..2u32 {
            let mut buffer = runs.buffer();
            assert!(buffer.is_empty() && buffer.bytes.is_empty());
            // Runs of 1, 3 and 2 records, the second added whole.
            let records = |i: u32, n: usize| -> Vec<Vec<u8>> {
                (0..n)
                    .map(|j| run_of(i * 10 + j as u32 + round, 20 + j))
                    .collect()
            };
            let frames = |records: Vec<Vec<u8>>| {
                let mut frames = Vec::new();
                for r in records {
                    run::push(&mut frames, &r);
                }
                frames
            };
            buffer.start(key(0));
            buffer.extend_frames(&frames(records(0, 1)));
            let mut whole = run::start(0);
            for r in records(1, 3) {
                run::push(&mut whole, &r);
            }
            buffer.add(key(1), &whole);
            buffer.start(key(2));
            let mut last_records = records(2, 2);
            let second = last_records.split_off(1);
            buffer.extend_frames(&frames(last_records));
            buffer.extend_frames(&frames(second));
            let last = 1 + 4 + 20 + 4 + 21;
            assert_eq!(buffer.bytes.len(), (1 + 4 + 20) + whole.len() + last);
            runs.apply(Change {
                runs: buffer,
                ..Change::default()
            })
            .expect("write");
            for (i, n) in [(0, 1), (1, 3), (2, 2)] {
                let value = read_back(&runs, i).expect("read");
                let read: Vec<Vec<u8>> = run::records(&value)
                    .map(|r| r.expect("record").to_vec())
                    .collect();
                assert_eq!(read, records(i, n), "run {i}, round {round}");
            }
        }
        // A change without runs (a removal) leaves the last burst's buffer to the next.
        runs.apply(Change {
            removed: vec![key(0)],
            ..Change::default()
        })
        .expect("remove");
        assert!(runs.buffer().bytes.capacity() >= 1 + 4 + 20);
    }

    #[test]
    fn runs_read_back_after_a_reopen_and_inline_runs_read_as_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_when_free(dir.path(), &config());
        let runs = RunTree::open(&store, "t").expect("open");
        runs.apply(Change {
            runs: whole_runs((0..10).map(|i| (key(i), run_of(i, 1000)))),
            ..Change::default()
        })
        .expect("write");
        // A run of format 3, kept in sled itself.
        runs.current()
            .expect("tree")
            .insert(key(99), &b"\x02inline"[..])
            .expect("insert");
        assert_eq!(
            read_back(&runs, 3).expect("read").as_ref(),
            &run_of(3, 1000)[..]
        );
        assert!(store.size_on_disk() >= 10_000);
        runs.sync().expect("sync");
        drop(runs);
        drop(store);
        let store = open_when_free(dir.path(), &config());
        let runs = RunTree::open(&store, "t").expect("reopen");
        for i in 0..10 {
            assert_eq!(
                read_back(&runs, i).expect("read").as_ref(),
                &run_of(i, 1000)[..]
            );
        }
        assert_eq!(
            read_back(&runs, 99).expect("inline").as_ref(),
            b"\x02inline"
        );
        assert_eq!(runs.file_bytes(), 10_000);
    }

    #[test]
    fn a_run_written_again_under_its_key_counts_the_old_bytes_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_when_free(dir.path(), &config());
        let runs = RunTree::open(&store, "t").expect("open");
        let len = (runs.inner.file_bytes / 2) as usize;
        for round in 0..4u32 {
            runs.apply(Change {
                runs: whole_runs([(key(1), run_of(round, len))]),
                ..Change::default()
            })
            .expect("write");
        }
        assert_eq!(
            read_back(&runs, 1).expect("read").as_ref(),
            &run_of(3, len)[..]
        );
        let files = runs_dir(store.path()).join("t");
        // Only the last copy is live: the files holding the others go.
        wait_for("the files of the replaced copies are deleted", || {
            files_in(&files).len() == 1
        });
        assert_eq!(runs.inner.lock().live(), len as u64);
    }

    #[test]
    fn a_damaged_run_reads_as_lost_never_as_other_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_when_free(dir.path(), &config());
        let runs = RunTree::open(&store, "t").expect("open");
        runs.apply(Change {
            runs: whole_runs((0..4).map(|i| (key(i), run_of(i, 100)))),
            ..Change::default()
        })
        .expect("write");
        let file = files_in(&runs_dir(store.path()).join("t"))
            .pop()
            .expect("a run file");
        // One flipped byte in run 1; then the file cut inside run 3.
        let mut bytes = std::fs::read(&file).expect("read");
        bytes[150] ^= 0xff;
        bytes.truncate(350);
        std::fs::write(&file, &bytes).expect("write");
        assert_eq!(
            read_back(&runs, 0).expect("intact").as_ref(),
            &run_of(0, 100)[..]
        );
        let flipped = read_back(&runs, 1).expect_err("a flipped byte");
        assert!(flipped.to_string().contains("checksum"), "{flipped}");
        assert_eq!(
            read_back(&runs, 2).expect("intact").as_ref(),
            &run_of(2, 100)[..]
        );
        let cut = read_back(&runs, 3).expect_err("cut short");
        assert!(cut.to_string().contains("cut short"), "{cut}");
    }

    #[test]
    fn files_with_no_live_run_are_deleted_and_orphans_go_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_when_free(dir.path(), &config());
        let runs = RunTree::open(&store, "t").expect("open");
        let files = runs_dir(store.path()).join("t");
        // Two full files of four runs each and half a third.
        let big = (runs.inner.file_bytes / 4) as usize;
        for i in 0..10 {
            runs.apply(Change {
                runs: whole_runs([(key(i), run_of(i, big))]),
                ..Change::default()
            })
            .expect("write");
        }
        assert_eq!(files_in(&files).len(), 3);
        // Emptied one run at a time: the first file goes once a flush made it so.
        runs.remove(&key(0)).expect("remove");
        runs.apply(Change {
            removed: vec![key(1), key(2)],
            ..Change::default()
        })
        .expect("remove");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            files_in(&files).len(),
            3,
            "one run is left in the first file"
        );
        runs.remove(&key(3)).expect("remove");
        wait_for("the emptied file is deleted", || {
            files_in(&files).len() == 2
        });
        assert_eq!(runs.file_bytes(), 6 * big as u64);
        assert_eq!(
            read_back(&runs, 4).expect("read").as_ref(),
            &run_of(4, big)[..]
        );
        // Bytes no pointer names (a crash lost their batch) go at the next open.
        std::fs::write(files.join(file_name(1000)), b"orphan").expect("orphan");
        drop(runs);
        drop(store);
        let store = open_when_free(dir.path(), &config());
        let runs = RunTree::open(&store, "t").expect("reopen");
        assert!(!files.join(file_name(1000)).exists());
        assert_eq!(files_in(&files).len(), 2);
        assert_eq!(
            read_back(&runs, 9).expect("read").as_ref(),
            &run_of(9, big)[..]
        );
    }

    #[test]
    fn scattered_dead_runs_are_compacted_and_the_live_ones_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_when_free(dir.path(), &config());
        let runs = RunTree::open(&store, "t").expect("open");
        let files = runs_dir(store.path()).join("t");
        // 16 files, each with one run in eight kept: nothing empties a file.
        let len = (runs.inner.file_bytes / 8) as usize;
        for i in 0..128 {
            runs.apply(Change {
                runs: whole_runs([(key(i), run_of(i, len))]),
                ..Change::default()
            })
            .expect("write");
        }
        let gone: Vec<Vec<u8>> = (0..128).filter(|i| i % 8 != 0).map(key).collect();
        runs.apply(Change {
            removed: gone,
            ..Change::default()
        })
        .expect("remove");
        let live = 16 * len as u64;
        wait_for("compaction brings the files near the live bytes", || {
            runs.file_bytes() <= live + (DEAD_FILES * runs.inner.file_bytes).max(live / 2)
        });
        wait_for("the compacted files are deleted", || {
            let on_disk: u64 = files_in(&files)
                .iter()
                .map(|f| f.metadata().map_or(0, |m| m.len()))
                .sum();
            on_disk == runs.file_bytes()
        });
        for i in (0..128).step_by(8) {
            assert_eq!(
                read_back(&runs, i).expect("read").as_ref(),
                &run_of(i, len)[..]
            );
        }
        assert_eq!(
            store.size_on_disk() - crate::store::on_disk(&store.shared),
            runs.file_bytes()
        );
    }
}
