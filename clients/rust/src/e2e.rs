//! End-to-end encryption over a [`Client`] (feature `e2e`; docs/e2e.md): register a key,
//! seal messages to users, run rooms (create, share, rotate on removal) and open what
//! arrives, live or from history.
//!
//! The envelopes are `switchboard_e2e`'s; this module adds only the conversation with the
//! daemon (its key registry and room epochs, reached as HTTP carried over the same
//! WebSocket, so no second connection and no HTTP client) and one rule: a message that
//! does not open is handed back as [`Delivery::Undecryptable`] with its reason, never
//! dropped, so an application can show "a message you cannot read" instead of a gap.
//!
//! Rooms this `E2e` created are administered here: it remembers who was given the last
//! key and, with [`E2e::rotate_every`], moves the room to a new epoch on a schedule.
//!
//! Private-key work (unwrapping content keys) happens here, in the application's process;
//! see docs/e2e.md on the `rsa` crate's timing advisory and how exposure is limited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::{seal, Binding, Inbox, Received, SealError};
pub use switchboard_e2e::{KeyPair, Kind, OpenError, PublicJwk, Reading, RoomKey};

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::{Client, ClientError, Message};

/// How soon a scheduled rotation that failed (not lost to another admin: failed, e.g.
/// the connection was down) is tried again, if the interval itself is longer.
const RETRY: Duration = Duration::from_secs(30);

/// What became of one arrived message.
#[derive(Debug)]
pub enum Delivery {
    /// Opened, authenticated and bound to the topic it arrived on.
    Message {
        topic: String,
        seq: u64,
        kind: Kind,
        /// The sender as the envelope names them (authenticated by the tag, stated by
        /// the sender: see the threat model).
        from: String,
        plaintext: Vec<u8>,
    },
    /// A room key for us, now held: messages of that epoch open from here on.
    RoomKey {
        topic: String,
        room: String,
        epoch: u64,
    },
    /// Did not open; `error` says why (not addressed to us, a key share not yet seen,
    /// tampered, moved from another topic, replayed, a retired epoch, not an envelope).
    Undecryptable {
        topic: String,
        seq: u64,
        error: OpenError,
    },
}

/// Why an end-to-end operation failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("could not seal: {0}")]
    Seal(#[from] SealError),
    #[error("{user} has no registered key")]
    NoKeys { user: String },
    #[error("no key held for room {0}: create it, or wait for its share")]
    NoRoomKey(String),
    #[error("room {0} is administered elsewhere: only the E2e that created it keeps its members and rotates it on a schedule")]
    NotAdmin(String),
    /// Another member moved the room first; wait for that epoch's share.
    #[error("room {room} is already at epoch {current}")]
    Conflict { room: String, current: u64 },
    #[error("{what}: the server answered {status}: {body}")]
    Http {
        what: String,
        status: u16,
        body: String,
    },
}

pub type Result<T, E = E2eError> = std::result::Result<T, E>;

/// One user's end-to-end side of a [`Client`]: their key pair, the room keys they were
/// given and the replay window. Share it behind an `Arc`.
pub struct E2e {
    client: Client,
    user: String,
    inbox: Mutex<Inbox>,
    /// Rooms created here, by name.
    rooms: Mutex<HashMap<String, Admin>>,
    /// One rotation at a time: a removal must not race the schedule to the same epoch
    /// (the loser would be refused, and the removed member could get the winner's key).
    rotating: tokio::sync::Mutex<()>,
}

/// A room this `E2e` administers: who holds its current key, where shares go, and when
/// it next rotates on its own.
struct Admin {
    members: Vec<String>,
    key_topic: String,
    every: Option<Duration>,
    /// When the scheduled rotation is due: a full interval after the current epoch
    /// began, whoever began it.
    due: Instant,
    schedule: Option<AbortHandle>,
}

impl Drop for E2e {
    fn drop(&mut self) {
        let rooms = self.rooms.get_mut().unwrap_or_else(PoisonError::into_inner);
        for admin in rooms.values() {
            if let Some(task) = &admin.schedule {
                task.abort();
            }
        }
    }
}

impl std::fmt::Debug for E2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2e")
            .field("user", &self.user)
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl E2e {
    /// `user` is the name this user's keys are registered under, and the `from` their
    /// envelopes state.
    pub fn new(client: Client, user: impl Into<String>, me: KeyPair) -> E2e {
        E2e {
            client,
            user: user.into(),
            inbox: Mutex::new(Inbox::new(me)),
            rooms: Mutex::new(HashMap::new()),
            rotating: tokio::sync::Mutex::new(()),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Admin>> {
        // Each update is one assignment, so a poisoned lock still holds whole entries.
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        // Every update leaves the inbox whole, so a poisoned lock is safe to keep using.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This key pair's thumbprint, as envelopes name it.
    pub fn kid(&self) -> String {
        self.inbox().me().kid().to_owned()
    }

    /// Registers this key pair's public key under the user (the server accepts it from
    /// the user or the admin).
    pub async fn register(&self) -> Result<()> {
        let jwk = serde_json::to_value(self.inbox().me().public()).map_err(ClientError::from)?;
        let path = format!("/api/v1/e2e/keys/{}", segment(&self.user));
        self.http("POST", &path, Some(jwk), "registering the key")
            .await?;
        Ok(())
    }

    /// Every key `user` registered, checked (a key the registry should never have
    /// accepted is skipped, not sealed to).
    pub async fn keys_of(&self, user: &str) -> Result<Vec<PublicJwk>> {
        let path = format!("/api/v1/e2e/keys/{}", segment(user));
        let body = self.http("GET", &path, None, "fetching keys").await?;
        let keys: Vec<PublicJwk> = body["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| PublicJwk::parse(&k["jwk"]).ok())
            .collect();
        if keys.is_empty() {
            return Err(E2eError::NoKeys { user: user.into() });
        }
        Ok(keys)
    }

    async fn keys_of_all(&self, users: &[&str]) -> Result<Vec<PublicJwk>> {
        let mut keys = Vec::new();
        for user in users {
            keys.extend(self.keys_of(user).await?);
        }
        Ok(keys)
    }

    /// Seals `plaintext` to every key of every user in `to` and publishes it on `topic`;
    /// the message's sequence number.
    pub async fn publish_sealed(&self, topic: &str, to: &[&str], plaintext: &[u8]) -> Result<u64> {
        let keys = self.keys_of_all(to).await?;
        let jwe = seal(
            plaintext,
            &keys,
            Binding::new(Kind::Sealed, topic, &self.user),
        )?;
        Ok(self.client.publish(topic, &jwe).await?)
    }

    /// Creates a room's first key and shares it to `members` (user names; this user
    /// holds it already) on `key_topic`. The daemon orders epochs: a room that exists
    /// already is [`E2eError::Conflict`]. This `E2e` is then the room's admin: it
    /// remembers the members for [`E2e::rotate_every`].
    pub async fn create_room(&self, room: &str, members: &[&str], key_topic: &str) -> Result<u64> {
        let key = RoomKey::create(room, switchboard_core::clock::now_ms());
        let keys = self.keys_of_all(members).await?;
        self.move_to(&key).await?;
        let epoch = self.share(key, &keys, key_topic).await?;
        self.administer(room, members, key_topic);
        Ok(epoch)
    }

    /// Moves the room to a new epoch with a fresh key, shared to `members` only: after a
    /// member is removed, pass the remaining ones, and the removed member can read
    /// nothing sent from now on (nor will a scheduled rotation share to them again).
    /// The new epoch.
    pub async fn rotate_room(&self, room: &str, members: &[&str], key_topic: &str) -> Result<u64> {
        let _turn = self.rotating.lock().await;
        self.rotate(room, members, key_topic, RoomKey::rotate).await
    }

    async fn rotate(
        &self,
        room: &str,
        members: &[&str],
        key_topic: &str,
        next: fn(&RoomKey, u64) -> RoomKey,
    ) -> Result<u64> {
        let next = self
            .inbox()
            .keys
            .current(room)
            .map(|k| next(k, switchboard_core::clock::now_ms()))
            .ok_or_else(|| E2eError::NoRoomKey(room.into()))?;
        // Keys first: a room moved to an epoch whose key is never shared would be stuck.
        let keys = self.keys_of_all(members).await?;
        if let Err(e) = self.move_to(&next).await {
            if matches!(e, E2eError::Conflict { .. }) {
                // Another admin began the epoch: the schedule counts from there.
                self.restart_schedule(room);
            }
            return Err(e);
        }
        let epoch = self.share(next, &keys, key_topic).await?;
        self.administer(room, members, key_topic);
        Ok(epoch)
    }

    /// Records who holds the room's new epoch; the schedule counts from now.
    fn administer(&self, room: &str, members: &[&str], key_topic: &str) {
        let mut rooms = self.rooms();
        let admin = rooms.entry(room.to_owned()).or_insert_with(|| Admin {
            members: Vec::new(),
            key_topic: String::new(),
            every: None,
            due: Instant::now(),
            schedule: None,
        });
        admin.members = members.iter().map(|m| (*m).to_owned()).collect();
        admin.key_topic = key_topic.to_owned();
        if let Some(every) = admin.every {
            admin.due = Instant::now() + every;
        }
    }

    fn restart_schedule(&self, room: &str) {
        if let Some(admin) = self.rooms().get_mut(room) {
            if let Some(every) = admin.every {
                admin.due = Instant::now() + every;
            }
        }
    }

    /// Rotates a room this `E2e` created every `every` (`None` stops it): a new epoch
    /// with a fresh key, shared to the members of the last share, so that whoever
    /// obtains one epoch's key reads at most one interval of messages. Old epochs stay
    /// in the keyring for history. A manual [`E2e::rotate_room`], or a new epoch another
    /// admin began, restarts the interval.
    ///
    /// Several admins (this user's other devices, say) may run the same schedule: the
    /// daemon takes one rotation per epoch, and the others, refused with
    /// [`E2eError::Conflict`], skip their turn and wait for the winner's share. A
    /// rotation that fails otherwise is logged and retried after 30 s (or the interval,
    /// if shorter). The schedule stops when this `E2e` is dropped.
    pub fn rotate_every(self: &Arc<Self>, room: &str, every: Option<Duration>) -> Result<()> {
        let mut rooms = self.rooms();
        let admin = rooms
            .get_mut(room)
            .ok_or_else(|| E2eError::NotAdmin(room.into()))?;
        if let Some(task) = admin.schedule.take() {
            task.abort();
        }
        admin.every = every;
        if let Some(every) = every {
            admin.due = Instant::now() + every;
            let task = tokio::spawn(keep_rotating(Arc::downgrade(self), room.to_owned()));
            admin.schedule = Some(task.abort_handle());
        }
        Ok(())
    }

    /// When the room's scheduled rotation is due, with what it needs; `None` once the
    /// schedule is off.
    fn due(&self, room: &str) -> Option<(Instant, Duration, Vec<String>, String)> {
        let rooms = self.rooms();
        let admin = rooms.get(room)?;
        Some((
            admin.due,
            admin.every?,
            admin.members.clone(),
            admin.key_topic.clone(),
        ))
    }

    /// Asks the daemon to move the room to this key's epoch (one winner per epoch).
    async fn move_to(&self, key: &RoomKey) -> Result<()> {
        let body = json!({"room": key.room, "epoch": key.epoch});
        match self
            .http(
                "POST",
                "/api/v1/e2e/rooms",
                Some(body),
                "moving the room's epoch",
            )
            .await
        {
            Err(E2eError::Http { status: 409, .. }) => {
                let path = format!("/api/v1/e2e/rooms?room={}", segment(&key.room));
                let now = self
                    .http("GET", &path, None, "reading the room's epoch")
                    .await?;
                Err(E2eError::Conflict {
                    room: key.room.clone(),
                    current: now["epoch"].as_u64().unwrap_or_default(),
                })
            }
            other => other.map(drop),
        }
    }

    async fn share(&self, key: RoomKey, keys: &[PublicJwk], key_topic: &str) -> Result<u64> {
        let envelope = key.share(keys, key_topic, &self.user)?;
        let epoch = key.epoch;
        // A key we made ourselves cannot contradict one we hold: its epoch is new.
        let _ = self.inbox().keys.insert(key);
        self.client.publish(key_topic, &envelope).await?;
        Ok(epoch)
    }

    /// Encrypts `plaintext` with the room's current key and publishes it on `topic`.
    pub async fn publish_room(&self, room: &str, topic: &str, plaintext: &[u8]) -> Result<u64> {
        let jwe = self
            .inbox()
            .keys
            .current(room)
            .map(|k| k.encrypt(topic, &self.user, plaintext))
            .ok_or_else(|| E2eError::NoRoomKey(room.into()))?;
        Ok(self.client.publish(topic, &jwe).await?)
    }

    /// The room's current epoch as this user holds it.
    pub fn room_epoch(&self, room: &str) -> Option<u64> {
        self.inbox().keys.current(room).map(|k| k.epoch)
    }

    /// Opens a delivered message. Recovered and retained messages are read as history
    /// (old epochs open, a re-read is not a replay); live ones get every check.
    pub fn open(&self, msg: &Message) -> Delivery {
        let reading = if msg.history || msg.retained {
            Reading::History
        } else {
            Reading::Live
        };
        let undecryptable = |error| Delivery::Undecryptable {
            topic: msg.topic.clone(),
            seq: msg.seq,
            error,
        };
        let data: Value = match serde_json::from_str(msg.data.get()) {
            Ok(data) => data,
            Err(_) => return undecryptable(OpenError::Malformed("not JSON")),
        };
        // The gateway names a connection, not a user, so the sender is not compared.
        match self.inbox().open(&msg.topic, None, &data, reading) {
            Ok(Received::Message(m)) => Delivery::Message {
                topic: msg.topic.clone(),
                seq: msg.seq,
                kind: m.binding.kind,
                from: m.binding.from,
                plaintext: m.plaintext,
            },
            Ok(Received::RoomKey(_, key)) => {
                if reading == Reading::Live {
                    // Another admin of a room we administer rotated it.
                    self.restart_schedule(&key.room);
                }
                Delivery::RoomKey {
                    topic: msg.topic.clone(),
                    room: key.room,
                    epoch: key.epoch,
                }
            }
            Err(error) => undecryptable(error),
        }
    }

    /// One API call carried over the WebSocket; the body of a 2xx answer.
    async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value> {
        let mut request = json!({"op": "http", "method": method, "path": path});
        if let Some(body) = body {
            request["body"] = body;
        }
        let reply = self.client.request(request).await?;
        let status = reply.status.unwrap_or_default();
        let body = reply.body.map(|b| b.get().to_owned()).unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(E2eError::Http {
                what: what.into(),
                status,
                body: body.chars().take(300).collect(),
            });
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// The scheduled rotation of one room; holds the `E2e` only while rotating. Stopping
/// the schedule aborts this task only while it waits: each rotation runs as a task of
/// its own, so it is never cut between moving the epoch and sharing its key.
async fn keep_rotating(me: Weak<E2e>, room: String) {
    loop {
        let Some((due, ..)) = me.upgrade().and_then(|e2e| e2e.due(&room)) else {
            return;
        };
        tokio::time::sleep_until(due).await;
        let Some(e2e) = me.upgrade() else { return };
        let room = room.clone();
        let turn = tokio::spawn(async move { e2e.scheduled_rotation(&room).await });
        if !matches!(turn.await, Ok(true)) {
            return;
        }
    }
}

impl E2e {
    /// One turn of the schedule, if it is still due; whether the schedule goes on.
    async fn scheduled_rotation(&self, room: &str) -> bool {
        let _turn = self.rotating.lock().await;
        let Some((due, every, members, key_topic)) = self.due(room) else {
            return false;
        };
        if due > Instant::now() {
            return true; // someone began an epoch meanwhile
        }
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        // Nobody was removed: the previous epoch stays open for messages in flight.
        let rotated = self
            .rotate(room, &members, &key_topic, RoomKey::rotate_scheduled)
            .await;
        match rotated {
            Ok(epoch) => tracing::debug!(room, epoch, "room key rotated on schedule"),
            Err(E2eError::Conflict { current, .. }) => {
                tracing::debug!(room, current, "another admin rotated the room first");
            }
            Err(error) => {
                tracing::warn!(room, %error, "scheduled room key rotation failed; trying again");
                if let Some(admin) = self.rooms().get_mut(room) {
                    admin.due = Instant::now() + every.min(RETRY);
                }
            }
        }
        true
    }
}

/// A user name as one URL path segment (unreserved characters kept, the rest escaped).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
