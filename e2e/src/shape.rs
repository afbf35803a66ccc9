//! Does a message *look like* an envelope for its topic? The gateway's question when a
//! topic is encrypted-only (docs/e2e.md, "Enforcement").
//!
//! The gateway holds no key, so it cannot verify a tag; what it can check, without any
//! cryptography, is that the message is a well-formed JWE of our profile bound to this
//! topic: exactly the JWE members, a protected header naming `A256CBC-HS512`, a known
//! kind and this topic, an IV and a tag of the right sizes, a ciphertext of whole blocks,
//! and RSA-OAEP-256 recipients (sealed, room-key) or a `dir` room key id (room). That
//! stops plaintext sent by mistake — an app that forgot to encrypt, a device that was
//! never told — which is what the rule is for. It cannot stop a sender that means to leak:
//! random bytes shaped like an envelope, or a real envelope under a key it published,
//! pass; only receivers can tell, and they report such messages as undecryptable.

use serde::Deserialize;

use crate::envelope::{Kind, Protected};
use crate::{b64, cipher, ALG_RSA_OAEP_256, ENC};

/// Why a message is not an envelope for its topic; the text is for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotEnvelope(pub &'static str);

/// Exactly the members we write: an extra member could carry plaintext beside the
/// ciphertext.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict<'a> {
    #[serde(borrow)]
    protected: &'a str,
    #[serde(default, borrow)]
    recipients: Vec<StrictRecipient<'a>>,
    iv: &'a str,
    ciphertext: &'a str,
    tag: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictRecipient<'a> {
    #[serde(borrow)]
    header: StrictHeader<'a>,
    encrypted_key: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictHeader<'a> {
    alg: &'a str,
    kid: &'a str,
}

/// Checks the JSON text of a message's `data` against the envelope profile for `topic`;
/// the claimed kind when it passes (claimed: nothing here verifies it).
pub fn check(json: &str, topic: &str) -> Result<Kind, NotEnvelope> {
    let jwe: Strict<'_> = serde_json::from_str(json).map_err(|_| {
        NotEnvelope("expected an end-to-end envelope: a JWE JSON object with protected, iv, ciphertext and tag")
    })?;
    let header = Protected::decode(jwe.protected).ok_or(NotEnvelope(
        "the protected header is not base64url JSON with enc and sb",
    ))?;
    if header.enc != ENC {
        return Err(NotEnvelope(
            "the protected header's enc is not A256CBC-HS512",
        ));
    }
    if header.sb.topic != topic {
        return Err(NotEnvelope("the envelope is bound to another topic"));
    }
    let sized = |text: &str, len: usize| b64::decode(text).is_some_and(|b| b.len() == len);
    if !sized(jwe.iv, cipher::IV_LEN) {
        return Err(NotEnvelope("iv is not 16 bytes of base64url"));
    }
    if !sized(jwe.tag, cipher::TAG_LEN) {
        return Err(NotEnvelope("tag is not 32 bytes of base64url"));
    }
    match b64::decode(jwe.ciphertext) {
        Some(c) if !c.is_empty() && c.len() % 16 == 0 => {}
        _ => {
            return Err(NotEnvelope(
                "ciphertext is not whole AES blocks of base64url",
            ))
        }
    }
    match header.sb.kind {
        Kind::Room => {
            if header.alg.as_deref() != Some("dir")
                || header.kid.is_none()
                || header.sb.epoch.is_none()
            {
                return Err(NotEnvelope(
                    "a room message needs alg dir, kid and epoch in its protected header",
                ));
            }
            if !jwe.recipients.is_empty() {
                return Err(NotEnvelope("a room message has no recipients"));
            }
        }
        Kind::Sealed | Kind::RoomKey => {
            if jwe.recipients.is_empty() {
                return Err(NotEnvelope("a sealed envelope needs recipients"));
            }
            let wrapped = |r: &StrictRecipient<'_>| {
                r.header.alg == ALG_RSA_OAEP_256
                    && !r.header.kid.is_empty()
                    && b64::decode(r.encrypted_key).is_some_and(|k| k.len() >= 256)
            };
            if !jwe.recipients.iter().all(wrapped) {
                return Err(NotEnvelope(
                    "every recipient needs alg RSA-OAEP-256, a kid and a wrapped key",
                ));
            }
            if header.sb.kind == Kind::RoomKey && header.sb.epoch.is_none() {
                return Err(NotEnvelope("a room key share needs an epoch"));
            }
        }
    }
    Ok(header.sb.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{seal, Binding, KeyPair, RoomKey};

    #[test]
    fn envelopes_pass_and_plaintext_does_not() {
        let me = KeyPair::generate(2048).expect("keygen");
        let sealed = seal(
            b"hi",
            &[me.public().clone()],
            Binding::new(Kind::Sealed, "s/a", "al"),
        )
        .expect("seal");
        let sealed = serde_json::to_string(&sealed).expect("json");
        assert_eq!(check(&sealed, "s/a"), Ok(Kind::Sealed));
        assert!(check(&sealed, "s/b").is_err(), "bound to another topic");
        let key = RoomKey::create("s/room", 1);
        let room = serde_json::to_string(&key.encrypt("s/room", "al", b"hi")).expect("json");
        assert_eq!(check(&room, "s/room"), Ok(Kind::Room));
        let share = key
            .share(&[me.public().clone()], "s/room/keys", "al")
            .expect("share");
        let share = serde_json::to_string(&share).expect("json");
        assert_eq!(check(&share, "s/room/keys"), Ok(Kind::RoomKey));

        let mut extra: serde_json::Value = serde_json::from_str(&room).expect("json");
        extra["text"] = "leaked".into();
        assert!(check(&extra.to_string(), "s/room").is_err(), "extra member");
        for plain in [r#""hello""#, "42", r#"{"text":"hi"}"#, "null", "[1]"] {
            assert!(check(plain, "s/a").is_err(), "{plain}");
        }
        let mut short: serde_json::Value = serde_json::from_str(&room).expect("json");
        short["tag"] = "AAAA".into();
        assert!(check(&short.to_string(), "s/room").is_err(), "short tag");
    }
}
