//! Webhook signatures, both ways: what we put on outgoing deliveries and what we check on
//! incoming hooks.
//!
//! Outgoing deliveries follow the Standard Webhooks scheme, which receivers already have
//! libraries for: `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`. Signing the id and
//! the timestamp with the body lets a receiver refuse replays. Incoming hooks accept the
//! same scheme, or GitHub's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of body>`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
pub const GITHUB_HEADER: &str = "x-hub-signature-256";

/// Why a signature was not accepted; the message names the problem, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing header `{0}`")]
    Missing(&'static str),
    #[error("header `{0}` is malformed")]
    Malformed(&'static str),
    #[error("timestamp is {0} s away from now, more than the tolerance allows")]
    Stale(u64),
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length, so this cannot fail.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

fn standard_mac(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = mac(secret);
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value for a delivery: `v1,<base64>`.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = standard_mac(secret, id, timestamp, body)
        .finalize()
        .into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Checks a Standard Webhooks signature. `signatures` is the header's value: one or more
/// space-separated `v1,<base64>` (a sender rotating its secret sends both); any match
/// passes. The timestamp must be within `tolerance_s` of `now_s`.
pub fn verify_standard(
    secret: &[u8],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), SignatureError> {
    let timestamp: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed(TIMESTAMP_HEADER))?;
    let skew = now_s.abs_diff(timestamp);
    if skew > tolerance_s {
        return Err(SignatureError::Stale(skew));
    }
    let expected = standard_mac(secret, id, timestamp, body);
    let mut any = false;
    for candidate in signatures.split_whitespace() {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        any = true;
        let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        if expected.clone().verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    if any {
        Err(SignatureError::Mismatch)
    } else {
        Err(SignatureError::Malformed(SIGNATURE_HEADER))
    }
}

/// Checks GitHub's `X-Hub-Signature-256: sha256=<hex>` over the raw body.
pub fn verify_github(secret: &[u8], header: &str, body: &[u8]) -> Result<(), SignatureError> {
    let tag = header
        .trim()
        .strip_prefix("sha256=")
        .and_then(|hex| crate::hex::decode32(&hex.to_ascii_lowercase()))
        .ok_or(SignatureError::Malformed(GITHUB_HEADER))?;
    let mut mac = mac(secret);
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
}

/// GitHub's header value for a body, for tests and for senders written in Rust.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    format!(
        "sha256={}",
        crate::hex::encode(&mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_signature_round_trips_and_refuses_changes() {
        let secret = b"s3cret";
        let sig = sign(secret, "msg_1", 1_700_000_000, b"{\"a\":1}");
        let ok = |sigs: &str, body: &[u8], now| {
            verify_standard(secret, "msg_1", "1700000000", sigs, body, now, 300)
        };
        assert_eq!(ok(&sig, b"{\"a\":1}", 1_700_000_100), Ok(()));
        assert_eq!(
            ok(&format!("v1,AAAA {sig}"), b"{\"a\":1}", 1_700_000_000),
            Ok(()),
            "any of several signatures passes"
        );
        assert_eq!(
            ok(&sig, b"{\"a\":2}", 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            ok(&sig, b"{\"a\":1}", 1_700_000_301),
            Err(SignatureError::Stale(301))
        );
        assert_eq!(
            ok("v2,xyz", b"{\"a\":1}", 1_700_000_000),
            Err(SignatureError::Malformed(SIGNATURE_HEADER))
        );
        assert_eq!(
            verify_standard(
                secret,
                "msg_2",
                "1700000000",
                &sig,
                b"{\"a\":1}",
                1_700_000_000,
                300
            ),
            Err(SignatureError::Mismatch),
            "the id is signed"
        );
    }

    #[test]
    fn known_vector() {
        // Standard Webhooks' published example: secret (base64-decoded), id, timestamp, body.
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn github_signature_round_trips() {
        let header = github_signature(b"k", b"payload");
        assert_eq!(verify_github(b"k", &header, b"payload"), Ok(()));
        assert_eq!(
            verify_github(b"k", &header, b"payload!"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_github(b"k", "sha1=abc", b"payload"),
            Err(SignatureError::Malformed(GITHUB_HEADER))
        );
    }
}
