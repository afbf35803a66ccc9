//! The JWE envelope and the *sealed* kind: a fresh 64-byte content key per message,
//! wrapped with RSA-OAEP-256 for each recipient (RFC 7516 §7.2.1, General JSON
//! Serialization). Room messages (`room.rs`) share the same [`Jwe`] shape without
//! `recipients` (Flattened, `alg: "dir"`).

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::jwk::{wrap_key, JwkError, KeyPair, PublicJwk};
use crate::{b64, cipher, OpenError, ALG_RSA_OAEP_256, ENC};

/// What an envelope carries; in the protected header, so it cannot be relabelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Sealed,
    Room,
    RoomKey,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sealed => "sealed",
            Kind::Room => "room",
            Kind::RoomKey => "room-key",
        }
    }
}

/// The protected header's `sb` member: where, under which key epoch, from whom and
/// which message. Authenticated with the content, so a receiver that compares it with
/// how the message arrived detects moves, relabelling and replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub kind: Kind,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub from: String,
    /// 16 random bytes, base64url: the id replays are recognised by.
    pub mid: String,
}

impl Binding {
    pub fn new(kind: Kind, topic: &str, from: &str) -> Binding {
        let mut mid = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut mid);
        Binding {
            kind,
            topic: topic.into(),
            epoch: None,
            from: from.into(),
            mid: b64::encode(mid),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Protected {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    pub enc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    pub sb: Binding,
}

impl Protected {
    /// The base64url text, which is also the AAD (RFC 7516 §5.1 step 14).
    pub fn encode(&self) -> String {
        // A struct of strings and integers always serializes.
        b64::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Only for headers the tag has vouched for, or to find a room key by `kid` (any
    /// failure there is reported as the opaque [`OpenError::Undecryptable`]).
    pub fn decode(text: &str) -> Option<Protected> {
        serde_json::from_slice(&b64::decode(text)?).ok()
    }
}

/// A JWE in JSON serialization. With `recipients` it is the General form (sealed and
/// room-key envelopes); without, the Flattened form of a `dir` room message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwe {
    pub protected: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<Recipient>,
    pub iv: String,
    pub ciphertext: String,
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub header: RecipientHeader,
    pub encrypted_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientHeader {
    pub alg: String,
    pub kid: String,
}

/// Why an envelope could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a sealed envelope needs at least one recipient")]
    NoRecipients,
    #[error("a {0} binding cannot be sealed to recipients")]
    Kind(&'static str),
    #[error("recipient key: {0}")]
    Key(#[from] JwkError),
    #[error("wrapping the content key: {0}")]
    Wrap(#[from] rsa::Error),
}

/// What an envelope said, once its tag verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub binding: Binding,
    pub plaintext: Vec<u8>,
    /// The recipient key or room key it was opened with.
    pub kid: String,
}

impl Opened {
    /// The binding against how the message was delivered: the topic it arrived on and,
    /// when known, the sender the gateway authenticated.
    pub fn check_delivery(&self, topic: &str, from: Option<&str>) -> Result<(), OpenError> {
        if self.binding.topic != topic {
            return Err(OpenError::WrongTopic {
                sealed: self.binding.topic.clone(),
                delivered: topic.into(),
            });
        }
        match from {
            Some(from) if from != self.binding.from => Err(OpenError::WrongSender {
                sealed: self.binding.from.clone(),
                delivered: from.into(),
            }),
            _ => Ok(()),
        }
    }
}

impl Jwe {
    pub fn parse(bytes: &[u8]) -> Result<Jwe, OpenError> {
        serde_json::from_slice(bytes).map_err(|_| {
            OpenError::Malformed("expected a JSON object with protected, iv, ciphertext and tag")
        })
    }

    pub fn from_value(value: &serde_json::Value) -> Result<Jwe, OpenError> {
        Jwe::deserialize(value).map_err(|_| {
            OpenError::Malformed("expected a JSON object with protected, iv, ciphertext and tag")
        })
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The kind, when the header parses; a hint for dispatch only, vouched for by nothing.
    pub fn claimed_kind(&self) -> Option<Kind> {
        Protected::decode(&self.protected).map(|p| p.sb.kind)
    }
}

pub(crate) fn random_key() -> [u8; cipher::KEY_LEN] {
    let mut k = [0u8; cipher::KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

/// The deterministic half: encrypts under a given key and IV with the header as AAD.
pub(crate) fn encrypt_content(
    protected: String,
    cek: &[u8; cipher::KEY_LEN],
    iv: &[u8; cipher::IV_LEN],
    plaintext: &[u8],
    recipients: Vec<Recipient>,
) -> Jwe {
    let sealed = cipher::encrypt(cek, iv, protected.as_bytes(), plaintext);
    Jwe {
        protected,
        recipients,
        iv: b64::encode(iv),
        ciphertext: b64::encode(sealed.ciphertext),
        tag: b64::encode(sealed.tag),
    }
}

/// Checks the tag and decrypts; every failure here is the opaque error.
pub(crate) fn decrypt_content(
    jwe: &Jwe,
    cek: &[u8; cipher::KEY_LEN],
) -> Result<Vec<u8>, OpenError> {
    let iv = b64::decode(&jwe.iv).ok_or(OpenError::Undecryptable)?;
    let ciphertext = b64::decode(&jwe.ciphertext).ok_or(OpenError::Undecryptable)?;
    let tag = b64::decode(&jwe.tag).ok_or(OpenError::Undecryptable)?;
    cipher::decrypt(cek, &iv, jwe.protected.as_bytes(), &ciphertext, &tag)
}

/// Seals `plaintext` for every key in `to` (a `sealed` or `room-key` binding).
pub fn seal(plaintext: &[u8], to: &[PublicJwk], binding: Binding) -> Result<Jwe, SealError> {
    if to.is_empty() {
        return Err(SealError::NoRecipients);
    }
    if binding.kind == Kind::Room {
        return Err(SealError::Kind(binding.kind.name()));
    }
    let cek = random_key();
    let mut recipients = Vec::with_capacity(to.len());
    for jwk in to {
        let wrapped = wrap_key(&jwk.key()?, &cek)?;
        recipients.push(Recipient {
            header: RecipientHeader {
                alg: ALG_RSA_OAEP_256.into(),
                kid: jwk.kid.clone(),
            },
            encrypted_key: b64::encode(wrapped),
        });
    }
    let protected = Protected {
        alg: None,
        enc: ENC.into(),
        kid: None,
        sb: binding,
    }
    .encode();
    let mut iv = [0u8; cipher::IV_LEN];
    rand::rngs::OsRng.fill_bytes(&mut iv);
    Ok(encrypt_content(protected, &cek, &iv, plaintext, recipients))
}

/// Opens a sealed or room-key envelope addressed to `me`.
///
/// A content key that does not unwrap is replaced by a random one and the tag check
/// goes on (RFC 7516 §11.5), so a bad wrapping and a bad tag fail alike and take alike.
pub fn open_sealed(jwe: &Jwe, me: &KeyPair) -> Result<Opened, OpenError> {
    let recipient = jwe
        .recipients
        .iter()
        .find(|r| r.header.kid == me.kid())
        .ok_or_else(|| OpenError::NotAddressed {
            kid: me.kid().into(),
            recipients: jwe.recipients.len(),
        })?;
    if recipient.header.alg != ALG_RSA_OAEP_256 {
        return Err(OpenError::Unsupported(
            recipient.header.alg.chars().take(32).collect(),
        ));
    }
    let unwrapped = b64::decode(&recipient.encrypted_key).and_then(|w| me.unwrap_key(&w));
    let cek: [u8; cipher::KEY_LEN] =
        match unwrapped.as_deref().map(<[u8; cipher::KEY_LEN]>::try_from) {
            Some(Ok(cek)) => cek,
            _ => random_key(),
        };
    let plaintext = decrypt_content(jwe, &cek)?;
    let header = Protected::decode(&jwe.protected).ok_or(OpenError::Inconsistent(
        "the authenticated header is not a JSON object with enc and sb",
    ))?;
    if header.enc != ENC {
        return Err(OpenError::Unsupported(header.enc));
    }
    if !matches!(header.sb.kind, Kind::Sealed | Kind::RoomKey) {
        return Err(OpenError::WrongKind {
            expected: Kind::Sealed.name(),
            found: header.sb.kind.name(),
        });
    }
    Ok(Opened {
        binding: header.sb,
        plaintext,
        kid: me.kid().into(),
    })
}
