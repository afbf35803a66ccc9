//! `switchboard store salvage`: copies whatever still reads from a damaged store into a
//! new one, entry by entry, and leaves the damaged one as it was.
//!
//! sled may write to a store while it opens it (recovery rewrites the end of its log),
//! so salvage never opens the damaged directory itself: it copies its files aside and
//! reads the copy. A tree whose reading fails (an error, or a panic inside sled) keeps
//! what was copied before the failure; the rest of it is lost, and the report says
//! how much was copied and where each tree stopped.

use std::path::{Path, PathBuf};

use super::{catch_quietly, manifest, segments, StoreError, FORMAT_VERSION, VERSION_KEY};

/// What salvage copied.
#[derive(Debug)]
pub struct SalvageReport {
    /// The new store.
    pub into: PathBuf,
    /// Every tree by name: entries copied, and why reading stopped early, if it did.
    pub trees: Vec<(String, u64, Option<String>)>,
}

impl SalvageReport {
    pub fn copied(&self) -> u64 {
        self.trees.iter().map(|(_, n, _)| n).sum()
    }
}

/// Copies what reads from the store at `from` into a new store at `into`, which must
/// not exist.
pub fn salvage(from: &Path, into: &Path) -> Result<SalvageReport, StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| StoreError::Io {
            path: path.clone(),
            source: sled::Error::Io(e),
        }
    };
    if into.exists() {
        return Err(io(into)(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the salvage target exists already: name a new directory",
        )));
    }
    let copy = into.with_extension("reading");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(from, &copy).map_err(io(from))?;
    let report = copy_entries(&copy, into);
    let _ = std::fs::remove_dir_all(&copy);
    report
}

fn copy_entries(copy: &Path, into: &Path) -> Result<SalvageReport, StoreError> {
    let damaged = |detail: String| StoreError::Damaged {
        path: copy.to_path_buf(),
        detail,
    };
    let source = catch_quietly(|| segments::sled_config(copy).open())
        .map_err(|panic| {
            damaged(format!(
                "sled cannot open it at all ({panic}): nothing can be salvaged"
            ))
        })?
        .map_err(|e| {
            damaged(format!(
                "sled cannot open it at all ({e}): nothing can be salvaged"
            ))
        })?;
    let target = segments::sled_config(into)
        .open()
        .map_err(|source| StoreError::Open {
            path: into.to_path_buf(),
            source,
        })?;
    let fail = |source: sled::Error| StoreError::Io {
        path: into.to_path_buf(),
        source,
    };
    let mut trees = Vec::new();
    for name in source.tree_names() {
        let (mut copied, mut stopped) = (0u64, None);
        let read = catch_quietly(|| -> Result<(), StoreError> {
            let from = source
                .open_tree(&name)
                .map_err(|e| damaged(e.to_string()))?;
            let to = target.open_tree(&name).map_err(fail)?;
            for item in from.iter() {
                let (key, value) = item.map_err(|e| damaged(e.to_string()))?;
                to.insert(key, value).map_err(fail)?;
                copied += 1;
            }
            Ok(())
        });
        match read {
            Ok(Ok(())) => {}
            Ok(Err(e @ StoreError::Io { .. })) => return Err(e),
            Ok(Err(e)) => stopped = Some(e.to_string()),
            Err(panic) => stopped = Some(format!("sled failed reading it: {panic}")),
        }
        trees.push((String::from_utf8_lossy(&name).into_owned(), copied, stopped));
    }
    // A store whose version record was lost is still this build's layout.
    if target.get(VERSION_KEY).map_err(fail)?.is_none() {
        target
            .insert(VERSION_KEY, &FORMAT_VERSION.to_be_bytes())
            .map_err(fail)?;
    }
    target.flush().map_err(fail)?;
    // The runs' files as they are: the pointers copied above name them, and a run
    // that does not read back fails its checksum there as it did here.
    let runs = super::run_files::runs_dir(copy);
    if runs.exists() {
        copy_dir(&runs, &super::run_files::runs_dir(into)).map_err(|e| fail(sled::Error::Io(e)))?;
    }
    Ok(SalvageReport {
        into: into.to_path_buf(),
        trees,
    })
}

/// Copies sled's files (not the manifest, which describes the damaged store).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != manifest::FILE {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
