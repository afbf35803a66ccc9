//! Client JWTs: verification against the configured keys, and minting for the CLI.
//!
//! An application backend that already knows its users signs a short-lived token for
//! each of them; switchboard checks the signature with a key from `auth.jwt` and takes
//! the permissions from the claims. Nothing is looked up per connection.
//!
//! # Keys
//!
//! Every `[[auth.jwt]]` entry is one key, read at startup (a missing or unusable file
//! stops the daemon with its name):
//! * `HS256`/`HS384`/`HS512`: `secret_file` holds the shared secret, used as raw bytes
//!   (not base64-decoded) after one trailing line ending is removed. It must be at least
//!   as long as the hash (32, 48, 64 bytes; RFC 7518 §3.2).
//! * `RS256`/`RS384`/`RS512` (RSA, at least 2048 bits), `ES256` (P-256) and `EdDSA`
//!   (Ed25519): `public_key_file` holds the PEM public key (`PUBLIC KEY`, or
//!   `RSA PUBLIC KEY` for RSA). A private key there is refused: the daemon never signs.
//!
//! Several keys may be configured at once, for rotation. A token whose header has a
//! `kid` is checked only with the key of that `kid` (none: refused as an unknown key).
//! A token without `kid` is checked only with the keys that have no `kid` (none: refused
//! as an unknown key). Either way the header's `alg` must be the key's configured
//! algorithm: the header never chooses how a key is used, so an RSA public key can never
//! be used as an HMAC secret, and `alg: none` is never accepted.
//!
//! # Claims
//!
//! | claim | type | meaning |
//! | --- | --- | --- |
//! | `sub` | string, required | the user: 1 to 128 bytes, no control characters |
//! | `exp` | number, required | Unix seconds after which the token is refused |
//! | `nbf` | number | Unix seconds before which the token is refused |
//! | `iat` | number | when it was issued; informational |
//! | `publish` | list of strings | topic filters the client may publish to |
//! | `subscribe` | list of strings | topic filters within which it may subscribe and see presence |
//! | `send` | list of strings | users it may send direct messages to; `"*"` for anyone |
//! | `info` | object | presence info shown to others; the client may not replace it |
//! | `limits` | object | `publish_rate` (> 0), `publish_burst` (> 0), `max_subscriptions` (≥ 0) |
//!
//! `exp` and `nbf` are checked with `auth.leeway` of tolerance. A missing `publish`,
//! `subscribe` or `send` grants nothing. Their entries may hold `{sub}`, replaced by the
//! subject; a subject that would change a filter's shape (holding `/`, `+`, `#`) makes
//! that entry grant nothing. Invalid filters grant nothing either. Unknown keys in
//! `limits` make the token invalid (a typo must not silently lift a limit); other
//! claims (`iss`, `aud`, `jti`…) are ignored.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};

use super::config::{AuthConfig, JwtAlgorithm, JwtKeyConfig};
use super::patterns::substitute;
use super::principal::{ClientLimits, Kind, Principal};
use super::AuthError;
use switchboard_core::grants::Grants;

/// Longest accepted `sub`, in bytes: it is shown in presence and direct messages.
pub const MAX_SUB_LEN: usize = 128;

/// Smallest RSA modulus accepted; shorter keys can be factored.
const MIN_RSA_BITS: usize = 2048;

/// The configured keys that verify client tokens.
pub struct JwtVerifier {
    keys: Vec<VerifyingKey>,
    /// Tolerated clock difference for `exp` and `nbf`, in seconds.
    leeway: u64,
}

struct VerifyingKey {
    kid: String,
    algorithm: JwtAlgorithm,
    key: DecodingKey,
}

impl JwtVerifier {
    /// Reads every key file now, so that a broken key stops startup with its file's name
    /// instead of refusing every client later.
    pub fn from_config(auth: &AuthConfig) -> anyhow::Result<Self> {
        let mut keys: Vec<VerifyingKey> = Vec::with_capacity(auth.jwt.len());
        for (i, config) in auth.jwt.iter().enumerate() {
            let name = key_name(i, config);
            if !config.kid.is_empty() && keys.iter().any(|k| k.kid == config.kid) {
                bail!("{name}: another key has the same kid; each kid must be unique");
            }
            let key = load_verifying_key(config).with_context(|| name.clone())?;
            keys.push(VerifyingKey {
                kid: config.kid.clone(),
                algorithm: config.algorithm,
                key,
            });
        }
        Ok(JwtVerifier {
            keys,
            leeway: auth.leeway.as_secs(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Checks a token's signature, validity period and claims. The error says what is
    /// wrong, never what the token was.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        let (algorithm, kid) = peek_header(token)?;
        let candidates: Vec<&VerifyingKey> = match kid.as_deref() {
            Some(kid) => {
                let named: Vec<_> = self.keys.iter().filter(|k| k.kid == kid).collect();
                if named.is_empty() {
                    return Err(AuthError::UnknownKey);
                }
                named
            }
            // A kid scopes a key to the issuer that names it: a token that names none
            // must not reach keys whose issuers promised to, nor should adding one
            // unnamed key change which keys the others are tried with.
            None => {
                let unnamed: Vec<_> = self.keys.iter().filter(|k| k.kid.is_empty()).collect();
                if unnamed.is_empty() {
                    return Err(AuthError::UnknownKey);
                }
                unnamed
            }
        };
        // The header only selects among keys configured for its algorithm.
        let mut outcome = Err(AuthError::Algorithm);
        for key in candidates.into_iter().filter(|k| k.algorithm == algorithm) {
            let validation = self.validation(key.algorithm);
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return principal(&data.claims),
                Err(e) => {
                    let e = map_error(e);
                    // Only a signature mismatch means another key may fit; anything
                    // else was found with a valid signature and is final.
                    if e != AuthError::BadSignature {
                        return Err(e);
                    }
                    outcome = Err(e);
                }
            }
        }
        outcome
    }

    fn validation(&self, algorithm: JwtAlgorithm) -> Validation {
        let mut validation = Validation::new(jwt_algorithm(algorithm));
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // No audience is configured: `aud` is not ours to judge.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        validation
    }
}

/// Whether a password is shaped like a JWT (three base64url segments, the first a JSON
/// header), so that an MQTT password such as `my.pass.word` still goes to the password
/// file.
pub fn looks_like_jwt(s: &str) -> bool {
    let base64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| base64url(p))
        && URL_SAFE_NO_PAD
            .decode(parts[0])
            .ok()
            .and_then(|h| serde_json::from_slice::<Map<String, Value>>(&h).ok())
            .is_some_and(|h| h.contains_key("alg"))
}

/// A key that signs tokens, for `switchboard token create` and tests: the daemon itself
/// never signs.
pub struct MintKey {
    kid: String,
    algorithm: JwtAlgorithm,
    key: EncodingKey,
}

impl MintKey {
    /// An HS* key from its shared secret, held to the same minimum length as when
    /// verifying.
    pub fn from_secret(kid: &str, algorithm: JwtAlgorithm, secret: &[u8]) -> anyhow::Result<Self> {
        if !algorithm.is_hmac() {
            bail!("{algorithm:?} signs with a private key, not a shared secret");
        }
        check_secret_len(algorithm, secret.len())?;
        Ok(MintKey {
            kid: kid.to_owned(),
            algorithm,
            key: EncodingKey::from_secret(secret),
        })
    }

    /// An RS*, ES256 or EdDSA key from its PEM private key (PKCS#8; PKCS#1 for RSA too).
    pub fn from_private_pem(
        kid: &str,
        algorithm: JwtAlgorithm,
        pem: &[u8],
    ) -> anyhow::Result<Self> {
        use JwtAlgorithm::*;
        let key = match algorithm {
            HS256 | HS384 | HS512 => {
                bail!("{algorithm:?} signs with a shared secret, not a private key")
            }
            RS256 | RS384 | RS512 => EncodingKey::from_rsa_pem(pem)
                .map_err(|_| anyhow!("it is not a PEM RSA private key"))?,
            ES256 => EncodingKey::from_ec_pem(pem)
                .map_err(|_| anyhow!("it is not a PEM (PKCS#8) EC private key"))?,
            EdDSA => EncodingKey::from_ed_pem(pem)
                .map_err(|_| anyhow!("it is not a PEM (PKCS#8) Ed25519 private key"))?,
        };
        Ok(MintKey {
            kid: kid.to_owned(),
            algorithm,
            key,
        })
    }

    /// The signing key for a configured key: its `secret_file` for HS*, otherwise the
    /// private key in `private_key_file` (the configuration only holds the public one).
    pub fn from_config(
        config: &JwtKeyConfig,
        private_key_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let alg = config.algorithm;
        if alg.is_hmac() {
            if private_key_file.is_some() {
                bail!("a private key is for RS*, ES256 and EdDSA keys; this key is {alg:?} and signs with its secret_file");
            }
            check_key_files(config)?;
            let secret = read_secret(&config.secret_file, alg)?;
            return MintKey::from_secret(&config.kid, alg, &secret);
        }
        let Some(path) = private_key_file else {
            bail!("this key is {alg:?}: signing needs its private key, which the configuration does not hold (give --private-key FILE)");
        };
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the private key file {}", path.display()))?;
        MintKey::from_private_pem(&config.kid, alg, &pem)
            .with_context(|| format!("cannot use the private key in {}", path.display()))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }
}

/// Signs `claims` (a JSON object) with `key`, naming the key's `kid` in the header when
/// it has one.
pub fn mint(key: &MintKey, claims: &Value) -> anyhow::Result<String> {
    if !claims.is_object() {
        bail!("token claims must be a JSON object");
    }
    let mut header = Header::new(jwt_algorithm(key.algorithm));
    if !key.kid.is_empty() {
        header.kid = Some(key.kid.clone());
    }
    jsonwebtoken::encode(&header, claims, &key.key)
        .map_err(|e| anyhow!("cannot sign the token: {e}"))
}

fn key_name(index: usize, config: &JwtKeyConfig) -> String {
    if config.kid.is_empty() {
        format!("auth.jwt key #{} ({:?})", index + 1, config.algorithm)
    } else {
        format!(
            "auth.jwt key #{} (kid `{}`, {:?})",
            index + 1,
            config.kid,
            config.algorithm
        )
    }
}

fn jwt_algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// A header `alg` we verify; anything else (`none`, `PS256`, `ES384`…) is not accepted.
fn parse_algorithm(name: &str) -> Option<JwtAlgorithm> {
    use JwtAlgorithm::*;
    Some(match name {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "ES256" => ES256,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

/// The header's algorithm and `kid`, read before any key is chosen so that an
/// unacceptable `alg` is reported as such. Only used to pick keys: the signature check
/// reads the header again.
fn peek_header(token: &str) -> Result<(JwtAlgorithm, Option<String>), AuthError> {
    #[derive(serde::Deserialize)]
    struct Peeked {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let peeked: Peeked = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    let algorithm = parse_algorithm(&peeked.alg).ok_or(AuthError::Algorithm)?;
    Ok((algorithm, peeked.kid.filter(|k| !k.is_empty())))
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.into_kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::Claims(format!("`{claim}` is required"))
        }
        ErrorKind::InvalidClaimFormat(claim) => AuthError::Claims(format!(
            "`{claim}` must be a number of seconds since the Unix epoch"
        )),
        // Keys are checked at startup; if one still cannot be used, no signature made
        // with it can be trusted.
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => {
            tracing::warn!("a configured JWT key could not be used to verify a token");
            AuthError::BadSignature
        }
        _ => AuthError::Malformed,
    }
}

/// Builds the identity from claims whose signature and validity period were checked.
fn principal(claims: &Map<String, Value>) -> Result<Principal, AuthError> {
    let sub = match claims.get("sub") {
        Some(Value::String(sub)) => sub.as_str(),
        Some(_) => return Err(claim_error("`sub` must be a string")),
        None => return Err(claim_error("`sub` is required")),
    };
    check_sub(sub)?;
    let exp = claims
        .get("exp")
        .and_then(seconds)
        .ok_or_else(|| claim_error("`exp` must be a number of seconds since the Unix epoch"))?;
    if claims.get("iat").is_some_and(|iat| seconds(iat).is_none()) {
        return Err(claim_error(
            "`iat` must be a number of seconds since the Unix epoch",
        ));
    }
    let fill = |patterns: Vec<String>| -> Vec<String> {
        patterns
            .iter()
            .filter_map(|p| substitute(p, &[("{sub}", Some(sub))]))
            .collect()
    };
    let grants = Grants::new(
        fill(strings(claims, "publish")?),
        fill(strings(claims, "subscribe")?),
        fill(strings(claims, "send")?),
    );
    let info = match claims.get("info") {
        None | Some(Value::Null) => None,
        Some(info @ Value::Object(_)) => Some(
            serde_json::value::to_raw_value(info)
                .map_err(|_| claim_error("`info` cannot be stored"))?,
        ),
        Some(_) => return Err(claim_error("`info` must be a JSON object")),
    };
    Ok(Principal {
        kind: Kind::Token,
        user: Some(sub.to_owned()),
        grants,
        expires_at: Some(exp),
        info,
        limits: limits(claims.get("limits"))?,
    })
}

fn claim_error(message: &str) -> AuthError {
    AuthError::Claims(message.to_owned())
}

fn check_sub(sub: &str) -> Result<(), AuthError> {
    if sub.is_empty() {
        return Err(claim_error("`sub` is empty"));
    }
    if sub.len() > MAX_SUB_LEN {
        return Err(AuthError::Claims(format!(
            "`sub` is longer than {MAX_SUB_LEN} bytes"
        )));
    }
    if sub.chars().any(char::is_control) {
        return Err(claim_error("`sub` holds control characters"));
    }
    Ok(())
}

/// A time claim: whole seconds, though some issuers write fractions.
fn seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// A list-of-strings claim; missing (or null) is empty.
fn strings(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, AuthError> {
    let wrong = || AuthError::Claims(format!("`{name}` must be a list of strings"));
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(wrong))
            .collect(),
        Some(_) => Err(wrong()),
    }
}

fn limits(value: Option<&Value>) -> Result<ClientLimits, AuthError> {
    let mut limits = ClientLimits::default();
    let map = match value {
        None | Some(Value::Null) => return Ok(limits),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(claim_error("`limits` must be an object")),
    };
    let positive = |v: &Value, name: &str| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .and_then(std::num::NonZeroU32::new)
            .ok_or_else(|| {
                AuthError::Claims(format!(
                    "`limits.{name}` must be a whole number from 1 to {}",
                    u32::MAX
                ))
            })
    };
    for (name, v) in map {
        match name.as_str() {
            "publish_rate" => limits.publish_rate = Some(positive(v, name)?),
            "publish_burst" => limits.publish_burst = Some(positive(v, name)?),
            "max_subscriptions" => {
                let n = v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        claim_error("`limits.max_subscriptions` must be a whole number")
                    })?;
                limits.max_subscriptions = Some(n);
            }
            _ => {
                return Err(claim_error(
                    "`limits` holds an unknown key (known: publish_rate, publish_burst, max_subscriptions)",
                ))
            }
        }
    }
    Ok(limits)
}

/// An HS* key needs a secret file, a public-key algorithm a public key file; the other
/// field being set means the operator mixed them up.
fn check_key_files(config: &JwtKeyConfig) -> anyhow::Result<()> {
    let alg = config.algorithm;
    let has_secret = !config.secret_file.as_os_str().is_empty();
    let has_public = !config.public_key_file.as_os_str().is_empty();
    if alg.is_hmac() {
        if has_public {
            bail!("{alg:?} uses a shared secret: set secret_file, not public_key_file");
        }
        if !has_secret {
            bail!("{alg:?} needs secret_file (a file holding the shared secret)");
        }
    } else {
        if has_secret {
            bail!("{alg:?} verifies with a public key: set public_key_file, not secret_file");
        }
        if !has_public {
            bail!("{alg:?} needs public_key_file (a PEM public key)");
        }
    }
    Ok(())
}

fn load_verifying_key(config: &JwtKeyConfig) -> anyhow::Result<DecodingKey> {
    check_key_files(config)?;
    let alg = config.algorithm;
    if alg.is_hmac() {
        let secret = read_secret(&config.secret_file, alg)?;
        return Ok(DecodingKey::from_secret(&secret));
    }
    let path = &config.public_key_file;
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the public key file {}", path.display()))?;
    public_key(alg, &pem).with_context(|| format!("{}", path.display()))
}

/// Minimum HMAC secret length: the hash's output size (RFC 7518 §3.2).
fn min_secret_len(algorithm: JwtAlgorithm) -> usize {
    match algorithm {
        JwtAlgorithm::HS384 => 48,
        JwtAlgorithm::HS512 => 64,
        _ => 32,
    }
}

fn check_secret_len(algorithm: JwtAlgorithm, len: usize) -> anyhow::Result<()> {
    let min = min_secret_len(algorithm);
    if len == 0 {
        bail!("the secret is empty");
    }
    if len < min {
        bail!(
            "the secret is {len} bytes; {algorithm:?} needs at least {min} \
             (for example `openssl rand -base64 {min}`)"
        );
    }
    Ok(())
}

/// Reads a shared secret: the file's bytes without one trailing line ending.
fn read_secret(path: &Path, algorithm: JwtAlgorithm) -> anyhow::Result<Vec<u8>> {
    let mut secret = std::fs::read(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    check_secret_len(algorithm, secret.len())
        .with_context(|| format!("unusable secret file {}", path.display()))?;
    Ok(secret)
}

/// Parses a PEM public key for `alg` and checks it fully now: the crypto library would
/// otherwise only parse it at the first token.
fn public_key(alg: JwtAlgorithm, pem: &[u8]) -> anyhow::Result<DecodingKey> {
    let text = std::str::from_utf8(pem).map_err(|_| anyhow!("not a PEM file (not text)"))?;
    if text.contains("PRIVATE KEY-----") {
        bail!("holds a private key; configure the public key (the daemon only verifies)");
    }
    if !text.contains("-----BEGIN ") {
        bail!("not a PEM file (no -----BEGIN line)");
    }
    match alg {
        JwtAlgorithm::RS256 | JwtAlgorithm::RS384 | JwtAlgorithm::RS512 => {
            let key =
                DecodingKey::from_rsa_pem(pem).map_err(|_| anyhow!("not a PEM RSA public key"))?;
            let rsa = rsa::RsaPublicKey::from_pkcs1_der(key.as_bytes())
                .map_err(|e| anyhow!("not a usable RSA public key ({e})"))?;
            let bits = rsa.n().bits();
            if bits < MIN_RSA_BITS {
                bail!("the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required");
            }
            Ok(key)
        }
        JwtAlgorithm::ES256 => {
            let key =
                DecodingKey::from_ec_pem(pem).map_err(|_| anyhow!("not a PEM EC public key"))?;
            usable(&key, alg).map_err(|_| anyhow!("not a P-256 public key (ES256 needs P-256)"))?;
            Ok(key)
        }
        JwtAlgorithm::EdDSA => {
            let key = DecodingKey::from_ed_pem(pem)
                .map_err(|_| anyhow!("not a PEM Ed25519 public key"))?;
            // The verifier slices 32 bytes without checking: a shorter key would panic.
            if key.as_bytes().len() != 32 {
                bail!("not an Ed25519 public key (expected 32 bytes)");
            }
            usable(&key, alg).map_err(|_| anyhow!("not a valid Ed25519 public key"))?;
            Ok(key)
        }
        _ => bail!("{alg:?} does not use a public key"),
    }
}

/// Whether the crypto library accepts `key` for `alg` (it parses the key when asked to
/// verify; the signature here is a dummy).
fn usable(key: &DecodingKey, alg: JwtAlgorithm) -> Result<(), jsonwebtoken::errors::Error> {
    jsonwebtoken::crypto::verify("AA", b"x", key, jwt_algorithm(alg)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn pem_key(kid: &str, algorithm: JwtAlgorithm, pem: &[u8]) -> MintKey {
        MintKey::from_private_pem(kid, algorithm, pem).expect("private key")
    }

    /// Why `v` refuses a token minted with `key`, if it does.
    fn refusal(v: &JwtVerifier, key: &MintKey, claims: serde_json::Value) -> Option<AuthError> {
        v.verify(&token(key, claims)).err()
    }
    use crate::auth::principal::unix_now;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
    const OTHER_SECRET: &[u8] = b"fedcba9876543210fedcba9876543210-test";

    /// A test key pair: PKCS#8 private PEM and SPKI public PEM.
    struct Pair {
        private: String,
        public: String,
    }

    /// RSA generation is slow in debug builds: one pair per test binary run, plus a
    /// second one for the "wrong key" test.
    fn rsa_pairs() -> &'static (Pair, Pair) {
        static PAIRS: OnceLock<(Pair, Pair)> = OnceLock::new();
        PAIRS.get_or_init(|| {
            let make = || {
                use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
                let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa");
                Pair {
                    private: key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
                    public: key
                        .to_public_key()
                        .to_public_key_pem(LineEnding::LF)
                        .expect("pem"),
                }
            };
            (make(), make())
        })
    }

    fn ed25519_pair() -> Pair {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
        use rand::RngCore;
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        Pair {
            private: key
                .to_pkcs8_pem(Default::default())
                .expect("pem")
                .to_string(),
            public: key
                .verifying_key()
                .to_public_key_pem(Default::default())
                .expect("pem"),
        }
    }

    fn p256_pair() -> Pair {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let key = p256::SecretKey::random(&mut rand::thread_rng());
        Pair {
            private: key
                .to_pkcs8_pem(Default::default())
                .expect("pem")
                .to_string(),
            public: key
                .public_key()
                .to_public_key_pem(Default::default())
                .expect("pem"),
        }
    }

    /// Key files in a temporary directory and the `[auth]` section naming them.
    struct Setup {
        dir: tempfile::TempDir,
        auth: AuthConfig,
    }

    impl Setup {
        fn new() -> Self {
            Setup {
                dir: tempfile::tempdir().expect("tempdir"),
                auth: AuthConfig {
                    leeway: Duration::from_secs(5),
                    ..AuthConfig::default()
                },
            }
        }

        fn file(&self, name: &str, content: &[u8]) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, content).expect("write key file");
            path
        }

        fn secret(mut self, kid: &str, alg: JwtAlgorithm, secret: &[u8]) -> Self {
            let path = self.file(&format!("secret-{kid}-{}", self.auth.jwt.len()), secret);
            self.auth.jwt.push(JwtKeyConfig {
                kid: kid.into(),
                algorithm: alg,
                secret_file: path,
                public_key_file: PathBuf::new(),
            });
            self
        }

        fn public(mut self, kid: &str, alg: JwtAlgorithm, pem: &str) -> Self {
            let path = self.file(
                &format!("public-{kid}-{}", self.auth.jwt.len()),
                pem.as_bytes(),
            );
            self.auth.jwt.push(JwtKeyConfig {
                kid: kid.into(),
                algorithm: alg,
                secret_file: PathBuf::new(),
                public_key_file: path,
            });
            self
        }

        fn verifier(&self) -> JwtVerifier {
            JwtVerifier::from_config(&self.auth).expect("keys load")
        }

        fn error(&self) -> String {
            match JwtVerifier::from_config(&self.auth) {
                Ok(_) => panic!("keys loaded"),
                Err(e) => format!("{e:#}"),
            }
        }
    }

    fn hs(kid: &str, secret: &[u8]) -> MintKey {
        MintKey::from_secret(kid, JwtAlgorithm::HS256, secret).expect("mint key")
    }

    fn claims(sub: &str) -> Value {
        json!({ "sub": sub, "iat": unix_now(), "exp": unix_now() + 3600 })
    }

    fn token(key: &MintKey, claims: Value) -> String {
        mint(key, &claims).expect("mint")
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
    }

    #[test]
    fn a_valid_token_gives_its_user_grants_info_and_limits() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        let exp = unix_now() + 600;
        let t = token(
            &hs("", SECRET),
            json!({
                "sub": "alice",
                "exp": exp,
                "iat": unix_now(),
                "publish": ["chat/{sub}/#"],
                "subscribe": ["chat/#", "users/{sub}"],
                "send": ["*"],
                "info": {"name": "Alice"},
                "limits": {"publish_rate": 5, "publish_burst": 10, "max_subscriptions": 3},
                "iss": "backend", "aud": "someone"
            }),
        );
        let p = v.verify(&t).expect("valid");
        assert_eq!(p.kind, Kind::Token);
        assert_eq!(p.user.as_deref(), Some("alice"));
        assert_eq!(p.expires_at, Some(exp));
        assert!(p.grants.check_publish("chat/alice/x").is_ok());
        assert!(p.grants.check_publish("chat/bob/x").is_err());
        assert!(p.grants.check_subscribe("chat/+").is_ok());
        assert!(p.grants.check_subscribe("users/alice").is_ok());
        assert!(p.grants.check_subscribe("users/bob").is_err());
        assert!(p.grants.check_send(Some("bob")).is_ok());
        assert_eq!(
            p.info.as_ref().map(|i| i.get()),
            Some(r#"{"name":"Alice"}"#)
        );
        assert_eq!(p.limits.publish_rate.map(|n| n.get()), Some(5));
        assert_eq!(p.limits.publish_burst.map(|n| n.get()), Some(10));
        assert_eq!(p.limits.max_subscriptions, Some(3));
    }

    #[test]
    fn missing_permission_claims_grant_nothing() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        let p = v
            .verify(&token(&hs("", SECRET), claims("bob")))
            .expect("valid");
        assert!(p.grants.check_publish("a").is_err());
        assert!(p.grants.check_subscribe("a").is_err());
        assert!(p.grants.check_send(Some("a")).is_err());
        assert!(p.info.is_none());
        assert_eq!(p.limits, ClientLimits::default());
    }

    #[test]
    fn a_subject_that_changes_a_filter_shape_grants_nothing_from_it() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        let mut c = claims("a/b");
        c["publish"] = json!(["chat/{sub}/#", "fixed/topic"]);
        let p = v.verify(&token(&hs("", SECRET), c)).expect("valid");
        assert!(p.grants.check_publish("chat/a/b/x").is_err());
        assert!(p.grants.check_publish("fixed/topic").is_ok());
    }

    #[test]
    fn forged_and_tampered_tokens_are_refused() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        let forged = token(&hs("", OTHER_SECRET), claims("alice"));
        assert_eq!(v.verify(&forged).err(), Some(AuthError::BadSignature));

        let good = token(&hs("", SECRET), claims("alice"));
        let (head, rest) = good.split_once('.').expect("dot");
        let (_, signature) = rest.split_once('.').expect("dot");
        let mut c = claims("alice");
        c["publish"] = json!(["#"]);
        let tampered = format!("{head}.{}.{signature}", b64(&c));
        assert_eq!(v.verify(&tampered).err(), Some(AuthError::BadSignature));
        assert!(v.verify(&good).is_ok());
    }

    #[test]
    fn validity_period_is_enforced_with_leeway() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        let key = hs("", SECRET);
        let mut expired = claims("alice");
        expired["exp"] = json!(unix_now() - 60);
        assert_eq!(refusal(&v, &key, expired), Some(AuthError::Expired));

        let mut early = claims("alice");
        early["nbf"] = json!(unix_now() + 60);
        assert_eq!(refusal(&v, &key, early), Some(AuthError::NotYetValid));

        // Within the 5 s leeway both ways.
        let mut close = claims("alice");
        close["exp"] = json!(unix_now() - 2);
        close["nbf"] = json!(unix_now() + 2);
        assert!(v.verify(&token(&key, close)).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        let payload = b64(&claims("alice"));
        for header in [
            "eyJhbGciOiJub25lIn0",
            &b64(&json!({"alg": "none", "typ": "JWT"})),
        ] {
            for signature in ["", "AAAA"] {
                let t = format!("{header}.{payload}.{signature}");
                let e = v.verify(&t).expect_err("alg none accepted");
                assert!(
                    matches!(e, AuthError::Algorithm | AuthError::Malformed),
                    "{e:?}"
                );
            }
        }
    }

    #[test]
    fn malformed_tokens_are_refused_as_such() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        for t in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.AA", "e30.e30.AA"] {
            assert_eq!(v.verify(t).err(), Some(AuthError::Malformed), "{t:?}");
        }
    }

    #[test]
    fn missing_exp_and_bad_claims_are_refused() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        let key = hs("", SECRET);
        let check = |c: Value, expected: &str| match v.verify(&token(&key, c)) {
            Err(AuthError::Claims(m)) => assert!(m.contains(expected), "{m:?}"),
            other => panic!("{other:?}"),
        };
        check(json!({"sub": "alice"}), "`exp` is required");
        check(json!({"sub": "alice", "exp": "soon"}), "`exp`");
        check(json!({"exp": unix_now() + 60}), "`sub` is required");
        check(
            json!({"sub": 7, "exp": unix_now() + 60}),
            "`sub` must be a string",
        );
        check(json!({"sub": "", "exp": unix_now() + 60}), "`sub` is empty");
        check(
            json!({"sub": "a".repeat(MAX_SUB_LEN + 1), "exp": unix_now() + 60}),
            "longer than 128",
        );
        check(json!({"sub": "al\nice", "exp": unix_now() + 60}), "control");
        let mut c = claims("alice");
        c["publish"] = json!("chat/#");
        check(c, "`publish` must be a list");
        let mut c = claims("alice");
        c["info"] = json!("Alice");
        check(c, "`info` must be a JSON object");
        let mut c = claims("alice");
        c["limits"] = json!({"publish_rate": 0});
        check(c, "`limits.publish_rate`");
        let mut c = claims("alice");
        c["limits"] = json!({"publish_rte": 5});
        check(c, "unknown key");
        // Exactly the limit is fine.
        assert!(v
            .verify(&token(&key, claims(&"a".repeat(MAX_SUB_LEN))))
            .is_ok());
    }

    #[test]
    fn kid_selects_the_key_and_rotation_accepts_both() {
        let v = Setup::new()
            .secret("k1", JwtAlgorithm::HS256, SECRET)
            .secret("k2", JwtAlgorithm::HS256, OTHER_SECRET)
            .verifier();
        assert_eq!(v.len(), 2);
        assert!(v.verify(&token(&hs("k1", SECRET), claims("a"))).is_ok());
        assert!(v
            .verify(&token(&hs("k2", OTHER_SECRET), claims("b")))
            .is_ok());
        // The right secret under the wrong kid is not tried against the other key.
        assert_eq!(
            v.verify(&token(&hs("k2", SECRET), claims("a"))).err(),
            Some(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(&token(&hs("k3", SECRET), claims("a"))).err(),
            Some(AuthError::UnknownKey)
        );
        // No kid, and every key has one: no key is for it (docs/security.md).
        assert_eq!(
            v.verify(&token(&hs("", OTHER_SECRET), claims("c"))).err(),
            Some(AuthError::UnknownKey)
        );
    }

    #[test]
    fn tokens_without_kid_go_to_the_keys_without_kid() {
        let v = Setup::new()
            .secret("k1", JwtAlgorithm::HS256, SECRET)
            .secret("", JwtAlgorithm::HS256, OTHER_SECRET)
            .verifier();
        assert!(v.verify(&token(&hs("", OTHER_SECRET), claims("a"))).is_ok());
        assert_eq!(
            v.verify(&token(&hs("", SECRET), claims("a"))).err(),
            Some(AuthError::BadSignature)
        );
    }

    #[test]
    fn rs256_verifies_with_its_own_public_key_only() {
        let (pair, other) = rsa_pairs();
        let v = Setup::new()
            .public("rsa", JwtAlgorithm::RS256, &pair.public)
            .verifier();
        let key = pem_key("rsa", JwtAlgorithm::RS256, pair.private.as_bytes());
        let p = v.verify(&token(&key, claims("alice"))).expect("valid");
        assert_eq!(p.user.as_deref(), Some("alice"));

        let wrong = pem_key("rsa", JwtAlgorithm::RS256, other.private.as_bytes());
        assert_eq!(
            refusal(&v, &wrong, claims("alice")),
            Some(AuthError::BadSignature)
        );
        // Same key, other RSA algorithm in the header: the configuration decides.
        let rs512 = pem_key("rsa", JwtAlgorithm::RS512, pair.private.as_bytes());
        assert_eq!(
            refusal(&v, &rs512, claims("alice")),
            Some(AuthError::Algorithm)
        );
    }

    #[test]
    fn an_rsa_public_key_is_never_an_hmac_secret() {
        let (pair, _) = rsa_pairs();
        let s = Setup::new().public("rsa", JwtAlgorithm::RS256, &pair.public);
        let v = s.verifier();
        let file = std::fs::read(&s.auth.jwt[0].public_key_file).expect("pem");
        // Without a kid the token reaches no key at all (the only key has one).
        for (kid, why) in [("rsa", AuthError::Algorithm), ("", AuthError::UnknownKey)] {
            let confused = MintKey::from_secret(kid, JwtAlgorithm::HS256, &file).expect("key");
            assert_eq!(
                refusal(&v, &confused, claims("alice")),
                Some(why),
                "kid {kid:?}"
            );
        }
    }

    #[test]
    fn eddsa_and_es256_round_trip() {
        let ed = ed25519_pair();
        let ec = p256_pair();
        let v = Setup::new()
            .public("ed", JwtAlgorithm::EdDSA, &ed.public)
            .public("ec", JwtAlgorithm::ES256, &ec.public)
            .verifier();
        let ed_key = pem_key("ed", JwtAlgorithm::EdDSA, ed.private.as_bytes());
        let ec_key = pem_key("ec", JwtAlgorithm::ES256, ec.private.as_bytes());
        assert!(v.verify(&token(&ed_key, claims("a"))).is_ok());
        assert!(v.verify(&token(&ec_key, claims("b"))).is_ok());
        // Each kid is bound to its algorithm.
        let swapped = pem_key("ec", JwtAlgorithm::EdDSA, ed.private.as_bytes());
        assert_eq!(
            refusal(&v, &swapped, claims("a")),
            Some(AuthError::Algorithm)
        );
    }

    #[test]
    fn a_trailing_newline_is_not_part_of_the_secret() {
        let mut with_newline = SECRET.to_vec();
        with_newline.extend_from_slice(b"\r\n");
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, &with_newline)
            .verifier();
        assert!(v.verify(&token(&hs("", SECRET), claims("a"))).is_ok());
    }

    #[test]
    fn unusable_keys_stop_startup_with_the_file_and_the_problem() {
        use JwtAlgorithm::*;
        let short = Setup::new().secret("k", HS256, b"too short\n").error();
        assert!(
            short.contains("secret-k-0") && short.contains("at least 32"),
            "{short}"
        );
        assert!(short.contains("kid `k`"), "{short}");
        let hs512 = Setup::new().secret("", HS512, SECRET).error();
        assert!(hs512.contains("at least 64"), "{hs512}");
        let empty = Setup::new().secret("", HS256, b"\n").error();
        assert!(empty.contains("empty"), "{empty}");

        let mut missing = Setup::new().secret("", HS256, SECRET);
        missing.auth.jwt[0].secret_file = missing.dir.path().join("nope");
        let e = missing.error();
        assert!(
            e.contains("cannot read the secret file") && e.contains("nope"),
            "{e}"
        );

        let garbage = Setup::new().public("", RS256, "hello").error();
        assert!(
            garbage.contains("public-") && garbage.contains("not a PEM"),
            "{garbage}"
        );
        let ed = ed25519_pair();
        let private = Setup::new().public("", EdDSA, &ed.private).error();
        assert!(private.contains("private key"), "{private}");
        let mismatch = Setup::new().public("", RS256, &ed.public).error();
        assert!(mismatch.contains("not a PEM RSA public key"), "{mismatch}");
        let p256 = p256_pair();
        let mismatch = Setup::new().public("", EdDSA, &p256.public).error();
        assert!(mismatch.contains("Ed25519"), "{mismatch}");

        let mut mixed = Setup::new().secret("", HS256, SECRET);
        mixed.auth.jwt[0].public_key_file = PathBuf::from("/some/key.pem");
        assert!(mixed.error().contains("not public_key_file"));
        let mut mixed = Setup::new().public("", EdDSA, &ed.public);
        mixed.auth.jwt[0].secret_file = PathBuf::from("/some/secret");
        assert!(mixed.error().contains("not secret_file"));

        let twice = Setup::new()
            .secret("k", HS256, SECRET)
            .secret("k", HS256, OTHER_SECRET)
            .error();
        assert!(twice.contains("same kid"), "{twice}");
    }

    #[test]
    fn no_keys_means_no_token_is_accepted() {
        let v = Setup::new().verifier();
        assert!(v.is_empty());
        let t = token(&hs("", SECRET), claims("a"));
        assert_eq!(v.verify(&t).err(), Some(AuthError::UnknownKey));
    }

    #[test]
    fn errors_never_show_the_token() {
        let v = Setup::new()
            .secret("", JwtAlgorithm::HS256, SECRET)
            .verifier();
        let mut c = claims("alice");
        c["publish"] = json!(7);
        let t = token(&hs("", SECRET), c);
        let e = v.verify(&t).expect_err("refused").to_string();
        for part in t.split('.') {
            assert!(!e.contains(part), "{e}");
        }
    }

    #[test]
    fn jwt_shape_is_recognised() {
        let t = token(&hs("", SECRET), claims("a"));
        assert!(looks_like_jwt(&t));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.e30."));
        assert!(!looks_like_jwt("my.pass.word"));
        assert!(!looks_like_jwt("secret"));
        assert!(!looks_like_jwt("a.b"));
    }
}
