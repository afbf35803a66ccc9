//! Replacing a file of secrets (password hashes, API key hashes) safely: written to a
//! temporary file beside it, flushed, then renamed over it. A crash leaves the old
//! file or the new one and never half of one, and a daemon reading the file never
//! sees a partial write. On Unix the file is mode 0600 (it holds hashes an attacker can
//! brute-force offline) and keeps the owner and group of the file it replaces when we
//! may set them, so that root editing a file owned by the daemon's user does not lock
//! the daemon out. For the same reason a file its group could read (the package's
//! `root:switchboard 0640`) stays readable by that group; no other bit is ever given.
//! A symlink is followed, not replaced.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What failed, on which file.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct WriteError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Replaces `path` with `contents`. `still_current` runs on the resolved target just
/// before the rename; when it says false (another writer got there first) nothing is
/// replaced and `Ok(false)` is returned. A missing directory is created (mode 0700)
/// only when `create_dir` is set.
pub fn replace(
    path: &Path,
    contents: &[u8],
    create_dir: bool,
    still_current: impl FnOnce(&Path) -> io::Result<bool>,
) -> Result<bool, WriteError> {
    let fail = |action, source| WriteError {
        action,
        path: path.to_owned(),
        source,
    };
    let target = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(fail("resolve", e)),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(name) = target.file_name() else {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a file name");
        return Err(fail("write", e));
    };
    let name = name.to_string_lossy().into_owned();
    if create_dir && !dir.exists() {
        make_private_dir(&dir).map_err(|e| fail("create the directory of", e))?;
    }
    let temp = dir.join(format!(
        ".{name}.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = write_new(&temp, &target, contents).and_then(|()| {
        if !still_current(&target).map_err(|e| ("check", e))? {
            return Ok(false);
        }
        fs::rename(&temp, &target).map_err(|e| ("replace", e))?;
        Ok(true)
    });
    match result {
        Ok(true) => {}
        Ok(false) => {
            let _ = fs::remove_file(&temp);
            return Ok(false);
        }
        Err((action, e)) => {
            let _ = fs::remove_file(&temp);
            return Err(fail(action, e));
        }
    }
    // The rename is durable only once the directory entry is on disk too.
    sync_dir(&dir).map_err(|e| fail("sync the directory of", e))?;
    Ok(true)
}

/// Creates `temp` (which must not exist) with `contents`, mode 0600 (0640 if `target`
/// exists and its group may read it), the owner of `target` if it exists, and flushes
/// it to disk.
fn write_new(temp: &Path, target: &Path, contents: &[u8]) -> Result<(), (&'static str, io::Error)> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(temp)
        .map_err(|e| ("create a temporary file for", e))?;
    #[cfg(unix)]
    if let Ok(meta) = fs::metadata(target) {
        use std::os::unix::fs::MetadataExt;
        // Best effort: only root may give a file away, and that is the case it matters.
        let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
        let group_read = meta.mode() & 0o040;
        if group_read != 0 {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600 | group_read))
                .map_err(|e| ("set the mode of", e))?;
        }
    }
    #[cfg(not(unix))]
    let _ = target;
    file.write_all(contents).map_err(|e| ("write", e))?;
    file.sync_all().map_err(|e| ("flush", e))
}

/// Only the owner may enter a directory made for secrets.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn a_new_file_is_private_and_a_group_readable_one_stays_group_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("passwd");
        assert!(replace(&path, b"one\n", false, |_| Ok(true)).expect("create"));
        assert_eq!(mode(&path), 0o600);

        // The package's root:switchboard 0640: the daemon's group keeps reading it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(replace(&path, b"two\n", false, |_| Ok(true)).expect("replace"));
        assert_eq!(mode(&path), 0o640, "group read kept, world read dropped");
        assert_eq!(fs::read(&path).expect("read"), b"two\n");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(replace(&path, b"three\n", false, |_| Ok(true)).expect("replace"));
        assert_eq!(mode(&path), 0o600);
    }
}
