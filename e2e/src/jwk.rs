//! Public keys as JWKs (RFC 7517), named by their RFC 7638 thumbprint, and the key
//! pair a client keeps. The daemon's key registry uses [`PublicJwk::parse`] to refuse
//! anything but an RSA public key of a size worth encrypting to.

use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{b64, ALG_RSA_OAEP_256};

/// Below 2048 bits RSA is disallowed (NIST SP 800-131A); above 4096 only costs time.
/// Every size in between is accepted, counted as the modulus's bit length, including
/// sizes that are not a multiple of 8: OpenSSL, Python's `cryptography` and Node's
/// WebCrypto make them when asked (2050, 2304, …), and refusing them buys nothing.
pub const MIN_BITS: usize = 2048;
pub const MAX_BITS: usize = 4096;
/// Members a public RSA JWK may carry (RFC 7517 §4, RFC 7518 §6.3.1; `ext` is
/// WebCrypto's). Anything else is refused rather than stored unread.
const PUBLIC_MEMBERS: [&str; 8] = ["kty", "n", "e", "alg", "use", "kid", "key_ops", "ext"];
/// What `keygen` makes: 128-bit security.
pub const DEFAULT_BITS: usize = 3072;

/// Members that only a private JWK has (RFC 7518 §6.3.2), and `k` of a symmetric one.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a JWK is refused. Names the member at fault; never echoes key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("a JWK is a JSON object")]
    NotObject,
    #[error("this JWK holds private key material (member {0:?}); publish only the public key")]
    Private(&'static str),
    #[error("key type {0:?} is not supported; use an RSA key (kty \"RSA\")")]
    KeyType(String),
    #[error("member {0:?} is missing or not a string")]
    Missing(&'static str),
    #[error("member {0:?} is not unpadded base64url")]
    Base64(&'static str),
    #[error("member \"n\" has a leading zero byte; RFC 7518 wants the shortest encoding")]
    LeadingZero,
    #[error("the public exponent must be 65537 (\"AQAB\")")]
    Exponent,
    #[error("RSA key of {0} bits is too small: at least {MIN_BITS} bits")]
    TooSmall(usize),
    #[error("RSA key of {0} bits is too large: at most {MAX_BITS} bits")]
    TooLarge(usize),
    #[error("member {0:?} is not part of an RSA public JWK")]
    Unknown(String),
    #[error("\"key_ops\" must list only \"encrypt\" or \"wrapKey\"")]
    KeyOps,
    #[error("\"ext\" must be true or false")]
    Ext,
    #[error("the modulus is not a valid RSA modulus")]
    Modulus,
    #[error("\"alg\" {0:?} is not supported; omit it or use \"RSA-OAEP-256\"")]
    Alg(String),
    #[error("\"use\" {0:?} is not \"enc\"")]
    Use(String),
    #[error("\"kid\" {given:?} is not the key's RFC 7638 thumbprint {thumbprint:?}; omit it and the server names the key")]
    Kid { given: String, thumbprint: String },
}

/// An RSA public key for `RSA-OAEP-256`, as the registry keeps and serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    pub n: String,
    pub e: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
    /// The RFC 7638 SHA-256 thumbprint: what users compare to trust a key.
    pub kid: String,
}

impl PublicJwk {
    /// Checks a JWK someone wants to publish and returns it in the one form the
    /// registry serves: `alg` and `use` filled in, `kid` set to the thumbprint, any
    /// other member dropped.
    pub fn parse(value: &Value) -> Result<PublicJwk, JwkError> {
        let map = value.as_object().ok_or(JwkError::NotObject)?;
        if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| map.contains_key(**m)) {
            return Err(JwkError::Private(member));
        }
        let kty = string(map, "kty")?;
        if kty != "RSA" {
            return Err(JwkError::KeyType(kty.chars().take(16).collect()));
        }
        if let Some(member) = map.keys().find(|m| !PUBLIC_MEMBERS.contains(&m.as_str())) {
            return Err(JwkError::Unknown(member.chars().take(32).collect()));
        }
        if map.get("ext").is_some_and(|ext| !ext.is_boolean()) {
            return Err(JwkError::Ext);
        }
        if let Some(ops) = map.get("key_ops") {
            let ops = ops.as_array().ok_or(JwkError::KeyOps)?;
            if !ops
                .iter()
                .all(|op| matches!(op.as_str(), Some("encrypt" | "wrapKey")))
            {
                return Err(JwkError::KeyOps);
            }
        }
        let n = string(map, "n")?;
        let e = string(map, "e")?;
        let key = public_key(n, e)?;
        if let Some(alg) = map.get("alg") {
            if alg.as_str() != Some(ALG_RSA_OAEP_256) {
                return Err(JwkError::Alg(short(alg)));
            }
        }
        if let Some(use_) = map.get("use") {
            if use_.as_str() != Some("enc") {
                return Err(JwkError::Use(short(use_)));
            }
        }
        let jwk = PublicJwk::from_key(&key);
        if let Some(given) = map.get("kid") {
            if given.as_str() != Some(jwk.kid.as_str()) {
                return Err(JwkError::Kid {
                    given: short(given),
                    thumbprint: jwk.kid,
                });
            }
        }
        Ok(jwk)
    }

    pub fn from_key(key: &RsaPublicKey) -> PublicJwk {
        let n = b64::encode(key.n().to_bytes_be());
        let e = b64::encode(key.e().to_bytes_be());
        let kid = thumbprint(&n, &e);
        PublicJwk {
            kty: "RSA".into(),
            n,
            e,
            alg: ALG_RSA_OAEP_256.into(),
            use_: "enc".into(),
            kid,
        }
    }

    /// The key, for wrapping content keys to its owner. Checks again, so a JWK built
    /// by hand (not through [`PublicJwk::parse`]) cannot smuggle in a weak key.
    pub fn key(&self) -> Result<RsaPublicKey, JwkError> {
        public_key(&self.n, &self.e)
    }

    pub fn bits(&self) -> usize {
        b64::decode(&self.n).map_or(0, |n| BigUint::from_bytes_be(&n).bits())
    }
}

/// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
pub fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    b64::encode(Sha256::digest(canonical.as_bytes()))
}

fn public_key(n: &str, e: &str) -> Result<RsaPublicKey, JwkError> {
    let n_bytes = b64::decode(n).ok_or(JwkError::Base64("n"))?;
    let e_bytes = b64::decode(e).ok_or(JwkError::Base64("e"))?;
    if e_bytes != [1, 0, 1] {
        return Err(JwkError::Exponent);
    }
    if n_bytes.first() == Some(&0) {
        return Err(JwkError::LeadingZero);
    }
    let n = BigUint::from_bytes_be(&n_bytes);
    let bits = n.bits();
    if bits < MIN_BITS {
        return Err(JwkError::TooSmall(bits));
    }
    if bits > MAX_BITS {
        return Err(JwkError::TooLarge(bits));
    }
    RsaPublicKey::new(n, BigUint::from_bytes_be(&e_bytes)).map_err(|_| JwkError::Modulus)
}

fn string<'a>(map: &'a Map<String, Value>, member: &'static str) -> Result<&'a str, JwkError> {
    map.get(member)
        .and_then(Value::as_str)
        .ok_or(JwkError::Missing(member))
}

/// A value from the request, cut short for an error message.
fn short(value: &Value) -> String {
    value.to_string().chars().take(40).collect()
}

/// A client's own key pair. Its `Debug` shows the thumbprint only.
#[derive(Clone)]
pub struct KeyPair {
    private: RsaPrivateKey,
    public: PublicJwk,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

/// Why a private JWK could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PrivateJwkError {
    #[error(transparent)]
    Public(#[from] JwkError),
    #[error("member {0:?} of the private key is missing or not base64url")]
    Member(&'static str),
    #[error("the private key is not consistent with its public key: {0}")]
    Invalid(rsa::Error),
}

impl KeyPair {
    pub fn generate(bits: usize) -> Result<KeyPair, rsa::Error> {
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(rsa::Error::InvalidArguments);
        }
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)?;
        Ok(KeyPair::from_private(private))
    }

    fn from_private(private: RsaPrivateKey) -> KeyPair {
        let public = PublicJwk::from_key(&private.to_public_key());
        KeyPair { private, public }
    }

    pub fn public(&self) -> &PublicJwk {
        &self.public
    }

    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    /// The private JWK (RFC 7518 §6.3.2), for a file only its owner can read.
    pub fn to_private_jwk(&self) -> Value {
        let k = &self.private;
        let mut map = match serde_json::to_value(&self.public) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let primes = k.primes();
        let mut put = |name: &str, v: &BigUint| {
            map.insert(name.into(), Value::String(b64::encode(v.to_bytes_be())));
        };
        put("d", k.d());
        put("p", &primes[0]);
        put("q", &primes[1]);
        if let (Some(dp), Some(dq)) = (k.dp(), k.dq()) {
            put("dp", dp);
            put("dq", dq);
        }
        if let Some(qi) = k.crt_coefficient() {
            put("qi", &qi);
        }
        Value::Object(map)
    }

    pub fn from_private_jwk(value: &Value) -> Result<KeyPair, PrivateJwkError> {
        let map = value.as_object().ok_or(JwkError::NotObject)?;
        let num = |name: &'static str| {
            map.get(name)
                .and_then(Value::as_str)
                .and_then(b64::decode)
                .map(|b| BigUint::from_bytes_be(&b))
                .ok_or(PrivateJwkError::Member(name))
        };
        let n_text = string(map, "n")?;
        let e_text = string(map, "e")?;
        let public = public_key(n_text, e_text)?;
        let private = RsaPrivateKey::from_components(
            public.n().clone(),
            public.e().clone(),
            num("d")?,
            vec![num("p")?, num("q")?],
        )
        .map_err(PrivateJwkError::Invalid)?;
        private.validate().map_err(PrivateJwkError::Invalid)?;
        Ok(KeyPair::from_private(private))
    }

    /// Unwraps a content key (RSA-OAEP-256, empty label). Any failure is `None`,
    /// whatever the cause: see RUSTSEC-2023-0071 in docs/e2e.md for why callers must
    /// not tell causes apart, nor answer anyone differently.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Option<Vec<u8>> {
        self.private.decrypt(Oaep::new::<Sha256>(), wrapped).ok()
    }
}

/// Wraps a content key for one recipient with RSA-OAEP-256.
pub fn wrap_key(key: &RsaPublicKey, cek: &[u8]) -> Result<Vec<u8>, rsa::Error> {
    key.encrypt(&mut rand::rngs::OsRng, Oaep::new::<Sha256>(), cek)
}

/// A thumbprint as people compare it: the hex of its 32 bytes in groups of four
/// (`3f2a 9c01 …`). Empty for text that is not a thumbprint.
pub fn fingerprint(kid: &str) -> String {
    let Some(bytes) = b64::decode(kid) else {
        return String::new();
    };
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.chunks(2)
        .map(|c| c.concat())
        .collect::<Vec<_>>()
        .join(" ")
}
