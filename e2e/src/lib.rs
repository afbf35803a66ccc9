//! End-to-end encryption for switchboard messages, in a form the gateway cannot read.
//!
//! Every envelope is a JWE in JSON serialization (RFC 7516 §7.2): content encrypted with
//! `A256CBC-HS512` (RFC 7518 §5.2.5: AES-256-CBC, then an HMAC-SHA-512 tag over the
//! protected header, IV and ciphertext) and, where keys are sent, wrapped with
//! `RSA-OAEP-256` (SHA-256, MGF1-SHA-256, empty label). Standard JOSE, so any JOSE
//! library, WebCrypto or Python's `cryptography` reads what this crate writes.
//!
//! Three kinds ([`Kind`]): *sealed* (a fresh content key per message, wrapped for each
//! recipient), *room* (the room's current symmetric key, named by room and epoch) and
//! *room-key* (a sealed envelope whose plaintext is a room key). The protected header
//! ([`Binding`]) names the topic, the epoch, the sender and a message id; it is the AAD, so
//! none of them can be changed without the tag failing.
//!
//! The daemon uses only [`jwk`] (validating and naming public keys) and [`shape`]
//! (whether a message on an encrypted-only topic is an envelope at all); it never holds a
//! private key or a room key. Opening happens in clients: the CLI, the Rust client, the
//! browser (`clients/js/src/e2e.js` implements the same format).

pub mod b64;
pub mod cipher;
pub mod envelope;
mod error;
pub mod inbox;
pub mod jwk;
pub mod replay;
pub mod room;
pub mod shape;

pub use envelope::{open_sealed, seal, Binding, Jwe, Kind, Opened, SealError};
pub use error::OpenError;
pub use inbox::{Inbox, Received};
pub use jwk::{JwkError, KeyPair, PublicJwk};
pub use replay::ReplayGuard;
pub use room::{Keyring, Reading, RoomKey};

/// The key-wrapping algorithm, as JOSE names it.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// The content-encryption algorithm, as JOSE names it.
pub const ENC: &str = "A256CBC-HS512";
