//! API keys for servers and scripts: long-lived credentials with explicit scopes, kept
//! in one JSON file that `switchboard apikey` edits and the daemon re-reads while it
//! runs, so a revoked key stops working without a restart.
//!
//! # Keys
//!
//! `sbk_<id>_<secret>`. The id is 12 lowercase hex characters (6 random bytes) and is
//! public: lists show it, revocation names it, logs may carry it. The secret is 32
//! random bytes in base64url without padding (43 characters) and is shown once, when
//! the key is created. The file keeps only SHA-256 of the secret's bytes: 256 random
//! bits cannot be recovered from their hash, so the slow, salted hashes that protect
//! human passwords would only cost CPU on every connect here.
//!
//! # File
//!
//! ```json
//! {"version": 1, "keys": [{"id": "0123456789ab", "name": "backend",
//!   "hash": "<sha-256 of the secret, 64 hex>", "publish": ["orders/#"],
//!   "subscribe": ["orders/#"], "send": ["*"], "created": 1700000000, "revoked": null}]}
//! ```
//!
//! `created` and `revoked` are Unix seconds. Revoked keys stay in the file so that a
//! client presenting one is told it was revoked, not that it is unknown. The file is
//! replaced atomically with mode 0600 whenever it is written; a version other than 1 is
//! refused rather than half-understood.
//!
//! Scopes are explicit: there is no "everything" key (that is the admin token's job).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use anyhow::{anyhow, bail};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::principal::{unix_now, ClientLimits};
use super::{AuthError, Kind, Principal};
use switchboard_core::grants::Grants;
use switchboard_core::topic;

/// Every API key starts with this, which tells it apart from a JWT or the admin token.
pub const PREFIX: &str = "sbk_";

/// The file format this code reads and writes.
pub const FILE_VERSION: u64 = 1;

/// Longest key name, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Random bytes in an id (shown as twice as many hex characters).
const ID_BYTES: usize = 6;
/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;
/// Length of a secret in base64url without padding.
const SECRET_CHARS: usize = 43;

/// How many times [`update`] starts over when another writer changed the file
/// between our read and our write.
const UPDATE_ATTEMPTS: usize = 10;

/// What the management functions and the CLI show of a key: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub send: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds when it was revoked; None while it is valid.
    pub revoked: Option<u64>,
}

impl KeyInfo {
    pub fn is_revoked(&self) -> bool {
        self.revoked.is_some()
    }
}

/// The verified keys of one file, swapped whole when the file changes.
pub struct ApiKeys {
    path: PathBuf,
    /// Read on every connect, written on reload only.
    table: RwLock<Table>,
    /// The file as last read (None: it did not exist). The lock also keeps two reloads
    /// from racing each other.
    seen: Mutex<Option<Stamp>>,
}

impl ApiKeys {
    /// Reads the file now. A missing file means no keys (nobody has created one yet); a
    /// file that cannot be read or understood is an error naming it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let (text, stamp) = read(path)?;
        let table = match text {
            Some(text) => Table::new(&parse(&text, path)?),
            None => Table::default(),
        };
        Ok(ApiKeys {
            path: path.to_owned(),
            table: RwLock::new(table),
            seen: Mutex::new(stamp),
        })
    }

    /// The file these keys come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks a presented key. Unknown ids, wrong secrets and anything malformed are
    /// all [`AuthError::UnknownApiKey`], so a guesser learns nothing; only the holder
    /// of the right secret is told that its key was revoked.
    pub fn verify(&self, key: &str) -> Result<Principal, AuthError> {
        let (id, secret) = split_key(key).ok_or(AuthError::UnknownApiKey)?;
        let digest: [u8; 32] = Sha256::digest(secret).into();
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let entry = table.keys.get(id).ok_or(AuthError::UnknownApiKey)?;
        if !bool::from(digest.ct_eq(&entry.hash)) {
            return Err(AuthError::UnknownApiKey);
        }
        if entry.revoked {
            return Err(AuthError::Revoked);
        }
        Ok(Principal {
            kind: Kind::ApiKey { id: id.to_owned() },
            user: Some(format!("apikey:{}", entry.name)),
            grants: entry.grants.clone(),
            expires_at: None,
            info: None,
            limits: ClientLimits::default(),
        })
    }

    /// Keys that are not revoked.
    pub fn active(&self) -> usize {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table.keys.values().filter(|e| !e.revoked).count()
    }

    /// Reads the file again if its size, modification time or inode changed since it
    /// was last read; cheap enough (one `stat`) to call every second. Returns the ids
    /// that were valid before and are not any more (revoked, deleted, or given another
    /// secret), so that the caller can close connections still using them.
    ///
    /// A file that became broken leaves the keys as they were and is reported once:
    /// the next call is a no-op until the file changes again.
    pub fn reload_if_changed(&self) -> anyhow::Result<Vec<String>> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamp_of(&self.path).map_err(|e| io_error("read", &self.path, e))?;
        if now == *seen {
            return Ok(Vec::new());
        }
        self.reload_locked(&mut seen)
    }

    /// Reads the file again whatever its timestamps say (SIGHUP), without putting the
    /// keys in force: a reload checks every file before it changes anything.
    pub fn read_again(&self) -> anyhow::Result<KeyFile> {
        let (text, stamp) = read(&self.path)?;
        let table = match text {
            Some(text) => Table::new(&parse(&text, &self.path)?),
            None => Table::default(),
        };
        Ok(KeyFile { table, stamp })
    }

    /// Puts keys read by [`ApiKeys::read_again`] in force. Same result as
    /// [`reload_if_changed`](Self::reload_if_changed).
    pub fn install(&self, file: KeyFile) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        *seen = file.stamp;
        self.swap(file.table)
    }

    fn reload_locked(&self, seen: &mut Option<Stamp>) -> anyhow::Result<Vec<String>> {
        let (text, stamp) = read(&self.path)?;
        let parsed = match text {
            Some(text) => parse(&text, &self.path).map(|keys| Table::new(&keys)),
            None => Ok(Table::default()),
        };
        // Remember even a broken file, so that polling reports it once, not every time.
        *seen = stamp;
        Ok(self.swap(parsed?))
    }

    /// Puts `new` in force; returns the ids valid before and not any more.
    fn swap(&self, new: Table) -> Vec<String> {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *table, new);
        let mut gone: Vec<String> = old
            .keys
            .iter()
            .filter(|(_, before)| !before.revoked)
            .filter(|(id, before)| match table.keys.get(*id) {
                Some(after) => after.revoked || after.hash != before.hash,
                None => true,
            })
            .map(|(id, _)| id.clone())
            .collect();
        gone.sort();
        gone
    }
}

/// The API key file as read on reload, not yet in force.
pub struct KeyFile {
    table: Table,
    stamp: Option<Stamp>,
}

/// Shows the file and how many keys are active: never a hash.
impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("path", &self.path)
            .field("active", &self.active())
            .finish()
    }
}

/// Creates a key and adds it to the file (created if missing, with its directory).
/// Returns what lists show of it and the full key, which exists nowhere else: the file
/// keeps only its hash.
pub fn create(
    path: &Path,
    name: &str,
    publish: Vec<String>,
    subscribe: Vec<String>,
    send: Vec<String>,
) -> anyhow::Result<(KeyInfo, String)> {
    check_name(name).map_err(|reason| anyhow!("invalid key name {name:?}: {reason}"))?;
    check_scopes(&publish, &subscribe, &send).map_err(|reason| anyhow!(reason))?;
    if publish.is_empty() && subscribe.is_empty() && send.is_empty() {
        bail!("a key needs at least one publish, subscribe or send scope: without one it may do nothing");
    }
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|e| anyhow!("cannot generate a random secret: {e}"))?;
    let hash = crate::hex::encode(&Sha256::digest(secret));
    let info = update(path, |keys| {
        if let Some(same) = keys.iter().find(|k| k.revoked.is_none() && k.name == name) {
            bail!(
                "an active key is already named {name:?} (id {}); revoke it or choose another name",
                same.id
            );
        }
        let id = loop {
            let mut bytes = [0u8; ID_BYTES];
            rand::rngs::OsRng
                .try_fill_bytes(&mut bytes)
                .map_err(|e| anyhow!("cannot generate a random id: {e}"))?;
            let id = crate::hex::encode(&bytes);
            if !keys.iter().any(|k| k.id == id) {
                break id;
            }
        };
        let key = StoredKey {
            id,
            name: name.to_owned(),
            hash: hash.clone(),
            publish: publish.clone(),
            subscribe: subscribe.clone(),
            send: send.clone(),
            created: unix_now(),
            revoked: None,
        };
        let info = key.info();
        keys.push(key);
        Ok(info)
    })?;
    let key = format!("{PREFIX}{}_{}", info.id, URL_SAFE_NO_PAD.encode(secret));
    Ok((info, key))
}

/// Every key in the file, revoked ones included, in the order they were created.
/// A missing file has none.
pub fn list(path: &Path) -> anyhow::Result<Vec<KeyInfo>> {
    let (text, _) = read(path)?;
    let keys = match text {
        Some(text) => parse(&text, path)?,
        None => Vec::new(),
    };
    Ok(keys.iter().map(StoredKey::info).collect())
}

/// Marks a key revoked, now. The key stays in the file so that clients presenting it
/// are told why they are refused; a running daemon closes its connections when it
/// reads the file again.
pub fn revoke(path: &Path, id: &str) -> anyhow::Result<KeyInfo> {
    let id = id.trim().to_ascii_lowercase();
    if id.starts_with(PREFIX) {
        // Someone pasted the whole key: do not echo it.
        bail!("give the key's id (12 hex characters, as `switchboard apikey list` shows it), not the key itself");
    }
    if !is_id(&id) {
        bail!("not a key id: ids are 12 hex characters, as `switchboard apikey list` shows them");
    }
    update(path, |keys| {
        let Some(key) = keys.iter_mut().find(|k| k.id == id) else {
            bail!("there is no API key with id {id} in {}", path.display());
        };
        if let Some(at) = key.revoked {
            bail!(
                "key {id} ({:?}) is already revoked (since {})",
                key.name,
                format_time(at)
            );
        }
        key.revoked = Some(unix_now());
        Ok(key.info())
    })
}

/// `2024-05-01T12:00:00Z` for Unix seconds: how lists and messages show times.
pub fn format_time(unix_secs: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs);
    humantime_serde::re::humantime::format_rfc3339_seconds(at).to_string()
}

/// One key as the file stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    id: String,
    name: String,
    /// SHA-256 of the secret's bytes, 64 lowercase hex characters.
    hash: String,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    send: Vec<String>,
    created: u64,
    #[serde(default)]
    revoked: Option<u64>,
}

impl StoredKey {
    fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            publish: self.publish.clone(),
            subscribe: self.subscribe.clone(),
            send: self.send.clone(),
            created: self.created,
            revoked: self.revoked,
        }
    }

    /// Why this entry cannot be used, if it cannot.
    fn check(&self) -> Result<[u8; 32], String> {
        if !is_id(&self.id) {
            return Err("its id is not 12 lowercase hex characters".into());
        }
        check_name(&self.name).map_err(|reason| format!("its name {:?}: {reason}", self.name))?;
        let hash = crate::hex::decode32(&self.hash)
            .ok_or_else(|| "its hash is not 64 lowercase hex characters".to_owned())?;
        check_scopes(&self.publish, &self.subscribe, &self.send)?;
        Ok(hash)
    }
}

/// The whole file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    version: u64,
    keys: Vec<StoredKey>,
}

/// Just the version, read first so that a newer file is refused for its version and
/// not for whatever field it added.
#[derive(Deserialize)]
struct Header {
    version: serde_json::Value,
}

/// What verification needs, by id.
#[derive(Default)]
struct Table {
    keys: HashMap<String, Entry>,
}

struct Entry {
    name: String,
    hash: [u8; 32],
    grants: Grants,
    revoked: bool,
}

impl Table {
    /// Keys already checked by [`parse`].
    fn new(keys: &[StoredKey]) -> Self {
        let keys = keys
            .iter()
            .filter_map(|k| {
                let hash = crate::hex::decode32(&k.hash)?;
                let grants = Grants::new(k.publish.clone(), k.subscribe.clone(), k.send.clone());
                let entry = Entry {
                    name: k.name.clone(),
                    hash,
                    grants,
                    revoked: k.revoked.is_some(),
                };
                Some((k.id.clone(), entry))
            })
            .collect();
        Table { keys }
    }
}

/// The file's size, modification time and identity: what tells that it changed. The
/// inode catches a rewrite within the clock's resolution, since every write renames a
/// new file into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            dev,
            ino,
        }
    }
}

/// The stamp of the file at `path` now; None if it does not exist.
fn stamp_of(path: &Path) -> io::Result<Option<Stamp>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(Stamp::of(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file's text and the stamp of what was read (taken from the open file, so they
/// belong together); None for both if it does not exist.
fn read(path: &Path) -> anyhow::Result<(Option<String>, Option<Stamp>)> {
    let failed = |e| io_error("read", path, e);
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(failed(e)),
    };
    let stamp = Stamp::of(&file.metadata().map_err(failed)?);
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(failed)?;
    Ok((Some(text), Some(stamp)))
}

/// Parses and checks a file's text; errors name the file and the line or the key.
fn parse(text: &str, path: &Path) -> anyhow::Result<Vec<StoredKey>> {
    let broken =
        |e: serde_json::Error| anyhow!("{} is not a valid API key file: {e}", path.display());
    let header: Header = serde_json::from_str(text).map_err(broken)?;
    if header.version.as_u64() != Some(FILE_VERSION) {
        bail!(
            "{}: version {} is not supported (this switchboard reads version {FILE_VERSION}; \
             was the file written by a newer one?)",
            path.display(),
            header.version
        );
    }
    let file: KeysFile = serde_json::from_str(text).map_err(broken)?;
    let mut ids = HashSet::new();
    for (n, key) in file.keys.iter().enumerate() {
        let n = n + 1;
        key.check()
            .map_err(|reason| anyhow!("{}: key {n}: {reason}", path.display()))?;
        if !ids.insert(key.id.as_str()) {
            bail!("{}: key {n}: id {} appears twice", path.display(), key.id);
        }
    }
    Ok(file.keys)
}

/// Reads the file, lets `change` edit its keys, and writes it back atomically.
///
/// Writers in this process (the HTTP API serving several requests) take turns. A
/// writer in another process (the CLI next to the daemon) is detected: if the file was
/// replaced between our read and our write, we start over from its new content rather
/// than overwrite that change. What remains is the instant between that check and our
/// rename; closing it would need a file lock, which std offers only from Rust 1.89.
fn update<T>(
    path: &Path,
    mut change: impl FnMut(&mut Vec<StoredKey>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    static WRITER: Mutex<()> = Mutex::new(());
    let _turn = WRITER.lock().unwrap_or_else(PoisonError::into_inner);
    for attempt in 0..UPDATE_ATTEMPTS {
        if attempt > 0 {
            // Let the other writer finish; the jitter keeps two of us from colliding again.
            let pause = 10 + rand::random::<u64>() % 40;
            std::thread::sleep(std::time::Duration::from_millis(pause));
        }
        let (text, stamp) = read(path)?;
        let mut keys = match text {
            Some(text) => parse(&text, path)?,
            None => Vec::new(),
        };
        let out = change(&mut keys)?;
        let file = KeysFile {
            version: FILE_VERSION,
            keys,
        };
        let mut text = serde_json::to_string_pretty(&file)
            .map_err(|e| anyhow!("cannot encode the keys: {e}"))?;
        text.push('\n');
        if write_atomic(path, text.as_bytes(), stamp)? {
            return Ok(out);
        }
    }
    bail!(
        "{} kept changing while it was being updated; try again",
        path.display()
    )
}

/// Replaces the key file (see [`super::private_file`]) if it is still the one
/// `expected` describes; false if another writer got there first.
fn write_atomic(path: &Path, contents: &[u8], expected: Option<Stamp>) -> anyhow::Result<bool> {
    super::private_file::replace(path, contents, true, |target| {
        Ok(stamp_of(target)? == expected)
    })
    .map_err(|e| io_error(e.action, path, e.source))
}

/// An I/O failure as one message naming the file, so that logging the error without
/// its chain (`%e`) still says what went wrong.
fn io_error(action: &str, path: &Path, error: io::Error) -> anyhow::Error {
    anyhow!("cannot {action} {}: {error}", path.display())
}

/// The id and the secret's bytes of a well-formed key; None for anything else. Bounds
/// the work done on garbage before it is decoded.
fn split_key(key: &str) -> Option<(&str, [u8; SECRET_BYTES])> {
    let rest = key.strip_prefix(PREFIX)?;
    // The id has no `_`; the secret may (base64url), so split at the first one.
    let (id, secret) = rest.split_once('_')?;
    if !is_id(id) || secret.len() != SECRET_CHARS {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(secret).ok()?;
    Some((id, bytes.try_into().ok()?))
}

/// 12 lowercase hex characters.
fn is_id(id: &str) -> bool {
    id.len() == ID_BYTES * 2 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why `name` cannot name a key, if it cannot.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name.chars().count() > MAX_NAME_LEN {
        Err("it is longer than 64 characters")
    } else if name.chars().any(char::is_control) {
        Err("it contains a control character or line break")
    } else if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        Err("it starts or ends with a blank")
    } else {
        Ok(())
    }
}

/// Why these scopes cannot be granted, naming the first bad one.
fn check_scopes(publish: &[String], subscribe: &[String], send: &[String]) -> Result<(), String> {
    for filter in publish {
        topic::validate_filter(filter)
            .map_err(|e| format!("invalid publish filter {filter:?}: {e}"))?;
        if filter.starts_with('$') {
            return Err(format!(
                "invalid publish filter {filter:?}: topics starting with `$` are reserved for the server"
            ));
        }
    }
    for filter in subscribe {
        topic::validate_filter(filter)
            .map_err(|e| format!("invalid subscribe filter {filter:?}: {e}"))?;
    }
    for user in send {
        if user.is_empty() {
            return Err("invalid send recipient: it is empty (use `*` for anyone)".into());
        }
        if user.chars().any(char::is_control) {
            return Err(format!(
                "invalid send recipient {user:?}: it contains a control character"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn temp_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api_keys.json");
        (dir, path)
    }

    fn backend(path: &Path) -> (KeyInfo, String) {
        create(
            path,
            "backend",
            strings(&["orders/#"]),
            strings(&["orders/#", "status/+"]),
            strings(&["alice"]),
        )
        .unwrap()
    }

    #[test]
    fn created_key_verifies_with_its_scopes() {
        let (_dir, path) = temp_file();
        let (info, key) = backend(&path);
        assert!(key.starts_with(&format!("{PREFIX}{}_", info.id)));
        assert_eq!(key.len(), PREFIX.len() + 12 + 1 + 43);
        assert!(is_id(&info.id));
        assert_eq!(info.name, "backend");
        assert!(!info.is_revoked());

        let keys = ApiKeys::open(&path).unwrap();
        assert_eq!(keys.active(), 1);
        let p = keys.verify(&key).unwrap();
        assert_eq!(
            p.kind,
            Kind::ApiKey {
                id: info.id.clone()
            }
        );
        assert_eq!(p.user.as_deref(), Some("apikey:backend"));
        assert_eq!(p.expires_at, None);
        assert!(!p.grants.is_all());
        assert!(p.grants.check_publish("orders/1").is_ok());
        assert!(p.grants.check_publish("status/1").is_err());
        assert!(p.grants.check_subscribe("status/+").is_ok());
        assert!(p.grants.check_subscribe("#").is_err());
        assert!(p.grants.check_send(Some("alice")).is_ok());
        assert!(p.grants.check_send(Some("bob")).is_err());

        // The file holds the hash, never the secret.
        let text = fs::read_to_string(&path).unwrap();
        // The secret itself may contain `_` (URL-safe base64): cut at the fixed offset.
        let secret = &key[PREFIX.len() + 13..];
        assert!(!text.contains(secret));
        assert!(!text.contains(&key));
    }

    #[test]
    fn wrong_unknown_and_malformed_keys_are_unknown() {
        let (_dir, path) = temp_file();
        let (info, key) = backend(&path);
        let keys = ApiKeys::open(&path).unwrap();
        let secret = &key[PREFIX.len() + 13..];

        let other_secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let bad = [
            format!("{PREFIX}{}_{other_secret}", info.id),
            format!("{PREFIX}000000000000_{secret}"),
            format!("{PREFIX}{}{secret}", info.id),
            format!("{PREFIX}{}", info.id),
            format!("{PREFIX}{}_{}", info.id, "!".repeat(43)),
            format!("{PREFIX}{}_{}", info.id, &secret[..42]),
            format!("{PREFIX}{}_{secret}A", info.id),
            format!("{PREFIX}{}_{secret}", info.id.to_uppercase()),
            key.replacen(PREFIX, "xyz_", 1),
            PREFIX.to_owned(),
            String::new(),
            format!("{PREFIX}é_{secret}"),
        ];
        for k in &bad {
            assert_eq!(keys.verify(k).unwrap_err(), AuthError::UnknownApiKey, "{k}");
        }
        // Non-canonical base64 (trailing bits set) is not a different spelling of it.
        let last = secret.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.find(last).unwrap();
        let twin = alphabet.chars().nth(pos ^ 1).unwrap();
        let noncanonical = format!("{}{twin}", &key[..key.len() - 1]);
        assert_eq!(
            keys.verify(&noncanonical).unwrap_err(),
            AuthError::UnknownApiKey
        );
        assert!(keys.verify(&key).is_ok());
    }

    #[test]
    fn revoked_key_is_refused_and_reload_reports_it() {
        let (_dir, path) = temp_file();
        let (info, key) = backend(&path);
        let (other, other_key) = create(&path, "other", vec![], strings(&["a/#"]), vec![]).unwrap();
        let keys = ApiKeys::open(&path).unwrap();
        assert_eq!(keys.reload_if_changed().unwrap(), Vec::<String>::new());

        let revoked = revoke(&path, &info.id).unwrap();
        assert!(revoked.is_revoked());
        assert_eq!(keys.reload_if_changed().unwrap(), vec![info.id.clone()]);
        assert_eq!(keys.reload_if_changed().unwrap(), Vec::<String>::new());
        assert_eq!(keys.verify(&key).unwrap_err(), AuthError::Revoked);
        assert!(keys.verify(&other_key).is_ok());
        assert_eq!(keys.active(), 1);

        // A fresh load agrees, and a wrong secret for a revoked id is still unknown.
        let fresh = ApiKeys::open(&path).unwrap();
        assert_eq!(fresh.verify(&key).unwrap_err(), AuthError::Revoked);
        let wrong = format!("{PREFIX}{}_{}", info.id, URL_SAFE_NO_PAD.encode([1u8; 32]));
        assert_eq!(fresh.verify(&wrong).unwrap_err(), AuthError::UnknownApiKey);

        // Revoking twice says so; unknown and malformed ids are errors.
        let e = revoke(&path, &info.id).unwrap_err().to_string();
        assert!(e.contains("already revoked"), "{e}");
        let e = revoke(&path, "0123456789ab").unwrap_err().to_string();
        assert!(e.contains("no API key with id 0123456789ab"), "{e}");
        let e = revoke(&path, &other_key).unwrap_err().to_string();
        assert!(!e.contains(&other_key), "{e}");
        assert!(revoke(&path, "nope").is_err());

        // A deleted file takes every key with it.
        fs::remove_file(&path).unwrap();
        assert_eq!(keys.install(keys.read_again().unwrap()), vec![other.id]);
        assert_eq!(keys.active(), 0);
    }

    #[test]
    fn broken_file_keeps_the_old_keys() {
        let (_dir, path) = temp_file();
        let (_, key) = backend(&path);
        let keys = ApiKeys::open(&path).unwrap();
        fs::write(&path, "{\"version\": 1, \"keys\": [").unwrap();
        let e = keys.reload_if_changed().unwrap_err().to_string();
        // One message, without the chain, says which file and where: the daemon logs `%e`.
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("line 1 column"), "{e}");
        assert!(keys.verify(&key).is_ok());
        // Reported once; SIGHUP retries.
        assert_eq!(keys.reload_if_changed().unwrap(), Vec::<String>::new());
        assert!(keys.read_again().is_err());
        assert!(keys.verify(&key).is_ok());
        assert!(ApiKeys::open(&path).is_err());
    }

    #[test]
    fn unknown_version_and_bad_entries_are_refused() {
        let (_dir, path) = temp_file();
        fs::write(&path, r#"{"version": 2, "keys": []}"#).unwrap();
        let e = ApiKeys::open(&path).unwrap_err().to_string();
        assert!(e.contains("version 2 is not supported"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(list(&path).is_err());
        assert!(create(&path, "x", vec![], strings(&["a"]), vec![]).is_err());

        let entry = |extra: &str| {
            format!(
                r#"{{"version":1,"keys":[{{"id":"0123456789ab","name":"n","hash":"{}","created":1{extra}}}]}}"#,
                "ab".repeat(32)
            )
        };
        fs::write(&path, entry("")).unwrap();
        assert_eq!(ApiKeys::open(&path).unwrap().active(), 1);
        for (extra, expected) in [
            (r#","publish":["a/#/b"]"#, "invalid publish filter"),
            (r#","subscribe":["x+"]"#, "invalid subscribe filter"),
            (r#","colour":"red""#, "unknown field"),
        ] {
            fs::write(&path, entry(extra)).unwrap();
            let e = ApiKeys::open(&path).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
        fs::write(&path, entry("").replace(&"ab".repeat(32), &"AB".repeat(32))).unwrap();
        let e = ApiKeys::open(&path).unwrap_err().to_string();
        assert!(e.contains("hash"), "{e}");
    }

    #[test]
    fn missing_file_has_no_keys_and_create_makes_it_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("api_keys.json");
        let keys = ApiKeys::open(&path).unwrap();
        assert_eq!(keys.active(), 0);
        assert!(list(&path).unwrap().is_empty());
        let (info, key) = backend(&path);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(keys.reload_if_changed().unwrap(), Vec::<String>::new());
        assert!(keys.verify(&key).is_ok());
        assert_eq!(list(&path).unwrap(), vec![info]);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn names_and_scopes_are_checked() {
        let (_dir, path) = temp_file();
        let sub = || strings(&["a/#"]);
        for name in ["", " x", "x\n", &"n".repeat(65)] {
            assert!(
                create(&path, name, vec![], sub(), vec![]).is_err(),
                "{name:?}"
            );
        }
        assert!(create(&path, &"é".repeat(64), vec![], sub(), vec![]).is_ok());
        let e = create(&path, "p", strings(&["a/#/b"]), vec![], vec![]).unwrap_err();
        assert!(e.to_string().contains("\"a/#/b\""), "{e}");
        assert!(create(&path, "p", strings(&["$devices/x"]), vec![], vec![]).is_err());
        assert!(create(&path, "s", vec![], strings(&["x+"]), vec![]).is_err());
        assert!(create(&path, "u", vec![], vec![], strings(&[""])).is_err());
        assert!(create(&path, "none", vec![], vec![], vec![]).is_err());

        // Names are unique among active keys, free again once revoked.
        let (first, _) = create(&path, "dup", vec![], sub(), vec![]).unwrap();
        let e = create(&path, "dup", vec![], sub(), vec![]).unwrap_err();
        assert!(e.to_string().contains("already named"), "{e}");
        revoke(&path, &first.id).unwrap();
        create(&path, "dup", vec![], sub(), vec![]).unwrap();
        assert_eq!(list(&path).unwrap().len(), 3);
    }

    #[test]
    fn concurrent_creates_do_not_lose_keys() {
        let (_dir, path) = temp_file();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..5 {
                        create(&path, &format!("k{t}-{i}"), vec![], strings(&["a"]), vec![])
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(list(&path).unwrap().len(), 20);
    }
}
