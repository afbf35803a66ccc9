//! The size of sled's log segments, the one sled setting that moves the store's bytes on
//! disk: sled reclaims space a whole segment at a time, so its files stay some segments
//! above the live data, and smaller segments keep them closer (docs/benchmarks.md,
//! "Disk bytes").
//!
//! sled refuses to open a store under a segment size other than the one it was created
//! with, so a new store gets [`SEGMENT_SIZE`] and an existing one keeps what sled
//! recorded in its `conf` file (stores created before this setting have sled's default
//! of 512 KiB). `switchboard store salvage` writes a new store, so it also moves a store
//! to the current size.

use std::path::Path;

/// The segment size of a store created by this build.
pub const SEGMENT_SIZE: usize = 256 * 1024;

/// sled's own default, which stores created before [`SEGMENT_SIZE`] have.
const SLED_DEFAULT: usize = 512 * 1024;

/// The segment size to open the store at `path` with: what sled recorded for an existing
/// store, [`SEGMENT_SIZE`] for a new one. A `conf` file that does not say leaves the
/// choice to sled's default, under which such a store was written (sled itself reads a
/// short or unreadable `conf` as absent and rewrites it).
pub fn for_store(path: &Path) -> usize {
    match std::fs::read(path.join("conf")) {
        Ok(bytes) => recorded(&bytes).unwrap_or(SLED_DEFAULT),
        Err(_) if path.join("db").exists() => SLED_DEFAULT,
        Err(_) => SEGMENT_SIZE,
    }
}

/// The `segment_size: N` line of sled's `conf` file (text lines, then a 4-byte checksum).
fn recorded(conf: &[u8]) -> Option<usize> {
    let text = conf.get(..conf.len().checked_sub(4)?)?;
    String::from_utf8_lossy(text).lines().find_map(|line| {
        let size: usize = line.strip_prefix("segment_size:")?.trim().parse().ok()?;
        (size.is_power_of_two() && (256..=1 << 24).contains(&size)).then_some(size)
    })
}

/// sled's configuration for the store at `path`.
pub fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new().path(path).segment_size(for_store(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_size_sled_recorded() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store");
        assert_eq!(for_store(&path), SEGMENT_SIZE);
        let db = sled::Config::new()
            .path(&path)
            .segment_size(128 * 1024)
            .open()
            .expect("open");
        db.insert(b"k", b"v").expect("insert");
        db.flush().expect("flush");
        drop(db);
        assert_eq!(for_store(&path), 128 * 1024);
        // Opening with what was read is what sled accepts.
        sled_config(&path)
            .open()
            .expect("reopen at the recorded size");
    }

    #[test]
    fn an_unreadable_conf_means_sleds_default() {
        assert_eq!(
            recorded(b"segment_size: 131072\nuse_compression: false\n1234"),
            Some(131072)
        );
        assert_eq!(recorded(b"segment_size: 1000\n1234"), None);
        assert_eq!(recorded(b"xx"), None);
    }
}
