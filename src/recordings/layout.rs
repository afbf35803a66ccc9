//! How recordings sit in their sled tree, `recordings`: one tree, so that a message and
//! the figures that count it are written by one atomic `sled::Batch` (sled batches are
//! atomic per tree, also across a crash).
//!
//! Keys, all big-endian so that sled's order is numeric order:
//! - `r` + id → [`Meta`] (JSON): what the recording is, written at start, stop, import;
//! - `s` + id → [`Figures`] (JSON): counts and bytes, rewritten with every batch;
//! - `m` + id + n → a pointer to a run of [`crate::store::StoredMessage`]s numbered `n`,
//!   `n + 1`, … ([`crate::store::message::run`]) in the tree's run files
//!   ([`crate::store::run_files`]; a store of format 3 holds the run itself, one of
//!   format 2 runs of one), `n`
//!   counting from 0 in arrival order, so one recording's messages are one contiguous
//!   range, oldest first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const META: u8 = b'r';
const FIGURES: u8 = b's';
const MESSAGE: u8 = b'm';

pub fn meta_key(id: u64) -> [u8; 9] {
    prefixed(META, id)
}

pub fn figures_key(id: u64) -> [u8; 9] {
    prefixed(FIGURES, id)
}

/// The prefix every message of one recording starts with.
pub fn messages_prefix(id: u64) -> [u8; 9] {
    prefixed(MESSAGE, id)
}

pub fn message_key(id: u64, n: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..9].copy_from_slice(&prefixed(MESSAGE, id));
    key[9..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The recording id of a meta key; None for the other kinds of key.
pub fn id_of_meta(key: &[u8]) -> Option<u64> {
    match key {
        [META, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

fn prefixed(kind: u8, id: u64) -> [u8; 9] {
    let mut key = [kind; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// What a recording is; changes only at start, stop and import.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub name: String,
    #[serde(default)]
    pub notes: String,
    /// The topic filters recorded.
    pub topics: Vec<String>,
    /// Whose recording it is ([`crate::auth::Principal::identity`]).
    pub owner: String,
    /// Unix ms.
    pub started_at: u64,
    /// Unix ms; None while recording.
    pub stopped_at: Option<u64>,
    /// Set when the recording came from `import`.
    #[serde(default)]
    pub imported: bool,
}

/// What a recording holds, kept equal to its stored messages by writing both in one
/// batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Messages stored now.
    pub messages: u64,
    /// Bytes of those messages' records ([`record_bytes`]).
    pub bytes: u64,
    /// The `n` the next message gets.
    pub next: u64,
    /// `ts` (µs) of the oldest and newest stored message.
    pub first_us: Option<u64>,
    pub last_us: Option<u64>,
    /// Messages stored now, by topic.
    pub topics: BTreeMap<String, u64>,
    /// Messages left out because the writer was behind (as of the last write).
    pub dropped: u64,
    /// Messages removed by the store's cap.
    pub evicted: u64,
}

/// The size a message record counts for in [`Figures::bytes`] and the store's cap: the
/// record and its framing in a run. A run's own key (18 bytes for up to
/// `run::FILE_MAX_BYTES` of records) is not counted.
pub fn record_bytes(record_len: usize) -> u64 {
    (crate::store::message::run::PER_RECORD + record_len) as u64
}

/// The recording number `n` of a message key.
pub fn number_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_kind_then_id_then_number() {
        assert!(message_key(1, 255) < message_key(1, 256));
        assert!(message_key(1, u64::MAX) < message_key(2, 0));
        assert!(message_key(7, 3).starts_with(&messages_prefix(7)));
        assert_eq!(id_of_meta(&meta_key(42)), Some(42));
        assert_eq!(id_of_meta(&figures_key(42)), None);
    }
}
