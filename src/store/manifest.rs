//! The store's manifest: a small text file beside sled's own files
//! (`<data_dir>/store/switchboard.manifest`) recording what the store held when the
//! daemon last opened and last stopped it.
//!
//! sled cannot tell a store that lost its data from one that never had any: a data file
//! cut to half its length opens as an empty store, with no error. The manifest can. Each
//! open raises a *generation*, written into the store (and flushed) before the manifest,
//! and a clean stop writes how many entries the store holds. At the next open the store
//! must show the manifest's generation (or the one after, when a crash fell between the
//! two writes) and, after a clean stop, at least that many entries. Moving the store
//! directory aside takes the manifest with it, so an operator who does starts afresh.

use std::io::Write;
use std::path::Path;

/// The manifest's file name inside the store directory.
pub const FILE: &str = "switchboard.manifest";

/// What the daemon recorded about its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Raised at every open of the store by the daemon.
    pub generation: u64,
    /// Entries in every tree at the last clean stop; `None` while a daemon has the store
    /// open, and after a crash.
    pub entries: Option<u64>,
}

const HEADER: &str = "# written by switchboard: what this store held (docs/history.md, \"A damaged store\"); do not edit\n";

impl Manifest {
    /// The manifest in `dir`; `Ok(None)` when there is none (a new store, or one from a
    /// build that wrote none). An unreadable one is an error of kind `InvalidData`.
    pub fn read(dir: &Path) -> std::io::Result<Option<Manifest>> {
        let text = match std::fs::read_to_string(dir.join(FILE)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let invalid = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is unreadable: {what}", dir.join(FILE).display()),
            )
        };
        let mut generation = None;
        let mut entries = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(' ').ok_or_else(|| invalid(line))?;
            let value: u64 = value.trim().parse().map_err(|_| invalid(line))?;
            match key {
                "generation" => generation = Some(value),
                "entries" => entries = Some(value),
                _ => return Err(invalid(line)),
            }
        }
        Ok(Some(Manifest {
            generation: generation.ok_or_else(|| invalid("no generation"))?,
            entries,
        }))
    }

    /// Replaces the manifest in `dir` atomically (a new file renamed over the old one,
    /// both synced), so a crash leaves the old manifest or the new one.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut text = format!("{HEADER}generation {}\n", self.generation);
        if let Some(n) = self.entries {
            text.push_str(&format!("entries {n}\n"));
        }
        let tmp = dir.join(format!("{FILE}.new"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dir.join(FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);
        for m in [
            Manifest {
                generation: 3,
                entries: None,
            },
            Manifest {
                generation: 4,
                entries: Some(1234),
            },
        ] {
            m.write(dir.path()).unwrap();
            assert_eq!(Manifest::read(dir.path()).unwrap(), Some(m));
        }
        std::fs::write(dir.path().join(FILE), "generation x\n").unwrap();
        let err = Manifest::read(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
