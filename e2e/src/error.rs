//! Why an envelope was not opened.

/// Before the tag verifies, every failure is [`OpenError::Undecryptable`] and nothing
/// more: a flipped bit in the header, IV, ciphertext or tag, a key wrapped for someone
/// else, bad padding, truncation. Telling them apart would give an attacker an oracle.
/// After the tag verifies, the envelope is known to come from a holder of the key, and
/// the errors say exactly what is wrong (moved to another topic, replayed, old epoch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a JWE envelope: {0}")]
    Malformed(&'static str),
    #[error(
        "unsupported algorithm {0:?} (this version speaks RSA-OAEP-256, dir and A256CBC-HS512)"
    )]
    Unsupported(String),
    #[error("not sealed for key {kid} (it is for {recipients} other recipient(s))")]
    NotAddressed { kid: String, recipients: usize },
    #[error("no room key {kid}: its key share has not been received yet")]
    UnknownRoomKey { kid: String },
    #[error("cannot decrypt: the envelope was altered or damaged, or not sealed for this key")]
    Undecryptable,
    #[error("expected a {expected} envelope, got a {found} one")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("sealed for topic {sealed:?} but delivered on {delivered:?}: moved to another topic")]
    WrongTopic { sealed: String, delivered: String },
    #[error("sealed by {sealed:?} but delivered as from {delivered:?}")]
    WrongSender { sealed: String, delivered: String },
    #[error("message {mid} from {from:?} was seen before: a replay")]
    Replayed { from: String, mid: String },
    #[error(
        "room {room} is at epoch {current}; a new message under epoch {epoch} uses a retired key"
    )]
    StaleEpoch {
        room: String,
        epoch: u64,
        current: u64,
    },
    #[error("inconsistent envelope: {0}")]
    Inconsistent(&'static str),
}
