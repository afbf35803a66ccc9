//! Rooms: one symmetric key per room and epoch, shared to each member in a sealed
//! *room-key* envelope, used directly (`alg: "dir"`) for the room's messages. A new
//! epoch replaces the key whenever a member leaves, so what they hold stops working
//! for new messages; old epochs stay in the [`Keyring`] to read history.

use std::collections::{BTreeMap, HashMap};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::envelope::{
    decrypt_content, encrypt_content, open_sealed, random_key, seal, Jwe, Protected, SealError,
};
use crate::jwk::{KeyPair, PublicJwk};
use crate::{cipher, Binding, Kind, OpenError, Opened, ENC};

/// One epoch of a room's key. `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomKey {
    pub room: String,
    pub epoch: u64,
    #[serde(with = "key_b64")]
    pub k: [u8; cipher::KEY_LEN],
    /// When it took over, milliseconds since the Unix epoch (informational).
    pub nbf: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<u64>,
    /// Set by a rotation that removed nobody (a scheduled one): live messages under the
    /// previous epoch still open while this one is current, so members who sent before
    /// the share reached them are not refused as stale. A rotation on removal leaves it
    /// unset, and the removed member's key stops writing at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prev_open: bool,
}

impl std::fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomKey")
            .field("room", &self.room)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl RoomKey {
    /// Epoch 1 of a new room.
    pub fn create(room: &str, now_ms: u64) -> RoomKey {
        RoomKey {
            room: room.into(),
            epoch: 1,
            k: random_key(),
            nbf: now_ms,
            prev: None,
            prev_open: false,
        }
    }

    /// The next epoch: a fresh key nobody who left can derive.
    pub fn rotate(&self, now_ms: u64) -> RoomKey {
        RoomKey {
            room: self.room.clone(),
            epoch: self.epoch + 1,
            k: random_key(),
            nbf: now_ms,
            prev: Some(self.epoch),
            prev_open: false,
        }
    }

    /// The next epoch of a rotation that removed nobody: the previous epoch stays open
    /// for live messages in flight (see [`RoomKey::prev_open`]).
    pub fn rotate_scheduled(&self, now_ms: u64) -> RoomKey {
        RoomKey {
            prev_open: true,
            ..self.rotate(now_ms)
        }
    }

    /// `room#epoch`: the `kid` of the room's messages.
    pub fn kid(&self) -> String {
        format!("{}#{}", self.room, self.epoch)
    }

    /// A room message for `topic` (Flattened JWE, `alg: "dir"`).
    pub fn encrypt(&self, topic: &str, from: &str, plaintext: &[u8]) -> Jwe {
        let mut iv = [0u8; cipher::IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let mut sb = Binding::new(Kind::Room, topic, from);
        sb.epoch = Some(self.epoch);
        let protected = Protected {
            alg: Some("dir".into()),
            enc: ENC.into(),
            kid: Some(self.kid()),
            sb,
        }
        .encode();
        encrypt_content(protected, &self.k, &iv, plaintext, Vec::new())
    }

    /// The room-key envelope that gives this epoch to `members`, sent on `topic`.
    pub fn share(&self, members: &[PublicJwk], topic: &str, from: &str) -> Result<Jwe, SealError> {
        let mut sb = Binding::new(Kind::RoomKey, topic, from);
        sb.epoch = Some(self.epoch);
        let plaintext = serde_json::to_vec(self).unwrap_or_default();
        seal(&plaintext, members, sb)
    }
}

mod key_b64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::b64::encode(k))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let text = String::deserialize(d)?;
        crate::b64::decode(&text)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| D::Error::custom("k must be 64 bytes of base64url"))
    }
}

/// Whether a room message is read as it arrives or from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Only the room's current epoch: after a rotation, a removed member's old key
    /// cannot inject new messages.
    Live,
    /// Any epoch held: history stays readable across rotations.
    History,
}

/// The room keys a member holds, by room and epoch.
#[derive(Debug, Default)]
pub struct Keyring {
    rooms: HashMap<String, BTreeMap<u64, RoomKey>>,
}

impl Keyring {
    /// Adds a key. A different key for an epoch already held is refused: a member who
    /// shares a second key for the same epoch is trying to split the room.
    pub fn insert(&mut self, key: RoomKey) -> Result<(), OpenError> {
        let epochs = self.rooms.entry(key.room.clone()).or_default();
        match epochs.get(&key.epoch) {
            Some(held) if held.k != key.k => Err(OpenError::Inconsistent(
                "a different key for a room epoch already held",
            )),
            Some(_) => Ok(()),
            None => {
                epochs.insert(key.epoch, key);
                Ok(())
            }
        }
    }

    pub fn current(&self, room: &str) -> Option<&RoomKey> {
        self.rooms.get(room)?.values().next_back()
    }

    /// Opens a room message. Before the tag verifies, every failure is opaque; an
    /// unknown `kid` is its own error so the reader knows to wait for a key share.
    pub fn open(&self, jwe: &Jwe, reading: Reading) -> Result<Opened, OpenError> {
        if !jwe.recipients.is_empty() {
            return Err(OpenError::WrongKind {
                expected: Kind::Room.name(),
                found: Kind::Sealed.name(),
            });
        }
        let header = Protected::decode(&jwe.protected).ok_or(OpenError::Undecryptable)?;
        let kid = header.kid.clone().ok_or(OpenError::Undecryptable)?;
        let (room, epoch) = kid
            .rsplit_once('#')
            .and_then(|(room, epoch)| Some((room, epoch.parse::<u64>().ok()?)))
            .ok_or(OpenError::Undecryptable)?;
        let key = self
            .rooms
            .get(room)
            .and_then(|epochs| epochs.get(&epoch))
            .ok_or_else(|| OpenError::UnknownRoomKey { kid: kid.clone() })?;
        let plaintext = decrypt_content(jwe, &key.k)?;
        // Authenticated from here on.
        if header.alg.as_deref() != Some("dir") || header.enc != ENC {
            return Err(OpenError::Unsupported(format!(
                "{:?}/{}",
                header.alg, header.enc
            )));
        }
        if header.sb.kind != Kind::Room {
            return Err(OpenError::WrongKind {
                expected: Kind::Room.name(),
                found: header.sb.kind.name(),
            });
        }
        if header.sb.epoch != Some(epoch) {
            return Err(OpenError::Inconsistent(
                "the header's epoch is not its key's",
            ));
        }
        if reading == Reading::Live {
            if let Some(current) = self.current(room) {
                let open_before = if current.prev_open { 1 } else { 0 };
                let current = current.epoch;
                if epoch + open_before < current {
                    return Err(OpenError::StaleEpoch {
                        room: room.into(),
                        epoch,
                        current,
                    });
                }
            }
        }
        Ok(Opened {
            binding: header.sb,
            plaintext,
            kid,
        })
    }

    /// Opens a room-key envelope sent to `me` and keeps the key it carries.
    pub fn accept_share(
        &mut self,
        jwe: &Jwe,
        me: &KeyPair,
    ) -> Result<(Opened, RoomKey), OpenError> {
        let opened = open_sealed(jwe, me)?;
        let key = self.take_share(&opened)?;
        Ok((opened, key))
    }

    /// Keeps the room key an opened room-key envelope carries.
    pub fn take_share(&mut self, opened: &Opened) -> Result<RoomKey, OpenError> {
        if opened.binding.kind != Kind::RoomKey {
            return Err(OpenError::WrongKind {
                expected: Kind::RoomKey.name(),
                found: opened.binding.kind.name(),
            });
        }
        let key: RoomKey = serde_json::from_slice(&opened.plaintext)
            .map_err(|_| OpenError::Inconsistent("a room-key envelope without a room key"))?;
        if opened.binding.epoch != Some(key.epoch) {
            return Err(OpenError::Inconsistent(
                "the header's epoch is not the shared key's",
            ));
        }
        self.insert(key.clone())?;
        Ok(key)
    }
}

/// The key-id text of a room message, for display ("encrypted with chat/lobby#3").
pub fn kid_of(jwe: &Jwe) -> Option<String> {
    Protected::decode(&jwe.protected)?.kid
}
