//! The public-key registry for end-to-end encryption (docs/e2e.md): each user's RSA
//! public keys as JWKs, named by their RFC 7638 thumbprint, in the store's `e2e/keys`
//! tree, so clients can seal messages to one another; and each room's current key epoch
//! (`e2e/rooms`), so rotations are ordered — one winner per epoch — and a member knows
//! which key share to wait for. Room keys themselves never come here.
//!
//! Public keys only: [`switchboard_e2e::PublicJwk::parse`] refuses private members, weak
//! and odd keys, and the daemon never sees a private key or a room key. Nothing here
//! logs key material; the thumbprint (`kid`) is a hash of the public key.
//!
//! It also owns `[e2e]` and its encrypted-only topics ([`policy::EncryptedOnly`]), the
//! one check the Hub and the MQTT seam apply before a message is routed.

pub mod config;
pub mod policy;

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use switchboard_e2e::jwk::fingerprint;
use switchboard_e2e::{JwkError, PublicJwk};

use crate::store::handle::Tree;
use crate::store::{Store, StoreError};

/// Keys one user may hold at once: a handful of devices and a rotation in progress.
/// Bounds what one account can make the daemon store.
pub const MAX_KEYS_PER_USER: usize = 16;

const TREE: &str = "e2e/keys";
const ROOMS: &str = "e2e/rooms";

/// A room's current key epoch, as the daemon orders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEpoch {
    pub room: String,
    pub epoch: u64,
    /// Who moved it there (`user:<sub>`, `key:<id>`, `admin`).
    pub by: String,
    /// Unix ms.
    pub updated: u64,
}

/// One registered key, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The RFC 7638 SHA-256 thumbprint, as in `jwk.kid`: the key's name in envelopes.
    pub kid: String,
    /// The key in the one form the registry serves (`alg`, `use` and `kid` filled in).
    pub jwk: PublicJwk,
    /// Modulus size, for display.
    pub bits: usize,
    /// The thumbprint as grouped hex, the form people read aloud to compare.
    pub fingerprint: String,
    /// Unix ms when it was registered.
    pub created: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(#[from] JwkError),
    #[error("user {user:?} already has {MAX_KEYS_PER_USER} keys; revoke one first")]
    Full { user: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a room's epoch did not move.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("room {room:?} is at epoch {current}; the next rotation is epoch {}", current + 1)]
    Conflict { room: String, current: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct KeyRegistry {
    store: Store,
    tree: Tree,
    rooms: Tree,
    /// Serialises changes, so the per-user cap holds under concurrent registrations.
    changing: Mutex<()>,
}

impl KeyRegistry {
    pub fn open(store: &Store) -> Result<KeyRegistry, StoreError> {
        Ok(KeyRegistry {
            store: store.clone(),
            tree: store.tree(TREE)?,
            rooms: store.tree(ROOMS)?,
            changing: Mutex::new(()),
        })
    }

    /// Registers `jwk` (as sent by the client) for `user`. Returns the record and
    /// whether it is new; registering a key again changes nothing.
    pub fn register(
        &self,
        user: &str,
        jwk: &serde_json::Value,
        now_ms: u64,
    ) -> Result<(KeyRecord, bool), RegistryError> {
        let jwk = PublicJwk::parse(jwk)?;
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = self.get(user, &jwk.kid)? {
            return Ok((held, false));
        }
        if self.list(user)?.len() >= MAX_KEYS_PER_USER {
            return Err(RegistryError::Full { user: user.into() });
        }
        let record = KeyRecord {
            kid: jwk.kid.clone(),
            bits: jwk.bits(),
            fingerprint: fingerprint(&jwk.kid),
            jwk,
            created: now_ms,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.tree
            .current()?
            .insert(key(user, &record.jwk.kid), value)
            .map_err(|e| self.store.io(e))?;
        // A key someone is about to seal to must survive a crash.
        self.tree.current()?.flush().map_err(|e| self.store.io(e))?;
        Ok((record, true))
    }

    /// A user's keys, oldest first.
    pub fn list(&self, user: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys = Vec::new();
        for item in self.tree.current()?.scan_prefix(prefix(user)) {
            let (_, value) = item.map_err(|e| self.store.io(e))?;
            keys.push(self.decode::<KeyRecord>(&value)?);
        }
        keys.sort_by_key(|k| k.created);
        Ok(keys)
    }

    pub fn get(&self, user: &str, kid: &str) -> Result<Option<KeyRecord>, StoreError> {
        match self
            .tree
            .current()?
            .get(key(user, kid))
            .map_err(|e| self.store.io(e))?
        {
            Some(value) => Ok(Some(self.decode(&value)?)),
            None => Ok(None),
        }
    }

    /// Removes a key; false when the user had no such key.
    pub fn revoke(&self, user: &str, kid: &str) -> Result<bool, StoreError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let removed = self
            .tree
            .current()?
            .remove(key(user, kid))
            .map_err(|e| self.store.io(e))?
            .is_some();
        if removed {
            self.tree.current()?.flush().map_err(|e| self.store.io(e))?;
        }
        Ok(removed)
    }

    /// Every user with keys and how many.
    pub fn users(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let mut users: Vec<(String, usize)> = Vec::new();
        for item in self.tree.current()?.iter() {
            let (k, _) = item.map_err(|e| self.store.io(e))?;
            let Some(user) = user_of(&k) else { continue };
            match users.last_mut() {
                Some((last, n)) if *last == user => *n += 1,
                _ => users.push((user, 1)),
            }
        }
        Ok(users)
    }

    pub fn room(&self, room: &str) -> Result<Option<RoomEpoch>, StoreError> {
        match self
            .rooms
            .current()?
            .get(room)
            .map_err(|e| self.store.io(e))?
        {
            Some(value) => Ok(Some(self.decode(&value)?)),
            None => Ok(None),
        }
    }

    /// Moves `room` to `epoch`, which must be the next one (1 for a new room): of two
    /// members rotating at once, one wins and the other learns it must share the
    /// winner's epoch instead of splitting the room.
    pub fn advance(
        &self,
        room: &str,
        epoch: u64,
        by: &str,
        now_ms: u64,
    ) -> Result<RoomEpoch, EpochError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.room(room)?.map_or(0, |r| r.epoch);
        if epoch != current + 1 {
            return Err(EpochError::Conflict {
                room: room.into(),
                current,
            });
        }
        let record = RoomEpoch {
            room: room.into(),
            epoch,
            by: by.into(),
            updated: now_ms,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.rooms
            .current()?
            .insert(room, value)
            .map_err(|e| self.store.io(e))?;
        self.rooms
            .current()?
            .flush()
            .map_err(|e| self.store.io(e))?;
        Ok(record)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, value: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(value).map_err(|e| StoreError::Damaged {
            path: self.store.path().to_path_buf(),
            detail: format!("an unreadable end-to-end registry record: {e}"),
        })
    }
}

/// `len(user) ‖ user ‖ kid`: the length prefix keeps one user's keys from matching
/// another user's prefix, whatever bytes the names hold.
fn prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + user.len());
    k.extend_from_slice(&(user.len() as u32).to_be_bytes());
    k.extend_from_slice(user.as_bytes());
    k
}

fn key(user: &str, kid: &str) -> Vec<u8> {
    let mut k = prefix(user);
    k.extend_from_slice(kid.as_bytes());
    k
}

fn user_of(k: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(k.get(..4)?.try_into().ok()?) as usize;
    String::from_utf8(k.get(4..4 + len)?.to_vec()).ok()
}
