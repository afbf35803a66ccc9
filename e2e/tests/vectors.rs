//! Published vectors (RFC 7518 B.3 and Wycheproof) and the project's own fixture.

use serde_json::Value;
use switchboard_e2e::envelope::open_sealed;
use switchboard_e2e::room::Reading;
use switchboard_e2e::{b64, cipher, Jwe, KeyPair, Keyring, Kind, OpenError, PublicJwk};

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("hex string");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn bytes(v: &Value) -> Vec<u8> {
    b64::decode(v.as_str().expect("base64url string")).expect("base64url")
}

#[test]
fn rfc_7518_b3_and_every_wycheproof_a256cbc_hs512_case() {
    let file = load("wycheproof_a256cbc_hs512_test.json");
    let mut checked = 0;
    for group in file["testGroups"].as_array().expect("groups") {
        for t in group["tests"].as_array().expect("tests") {
            let id = &t["tcId"];
            let key: [u8; 64] = hex(&t["key"]).try_into().expect("64-byte key");
            let (iv, aad, msg, ct, tag) = (
                hex(&t["iv"]),
                hex(&t["aad"]),
                hex(&t["msg"]),
                hex(&t["ct"]),
                hex(&t["tag"]),
            );
            let opened = cipher::decrypt(&key, &iv, &aad, &ct, &tag);
            if t["result"] == "valid" {
                assert_eq!(opened.as_deref(), Ok(&msg[..]), "tcId {id}");
                let iv: [u8; 16] = iv.try_into().expect("16-byte IV");
                let sealed = cipher::encrypt(&key, &iv, &aad, &msg);
                assert_eq!(
                    (sealed.ciphertext, sealed.tag.to_vec()),
                    (ct, tag),
                    "tcId {id}"
                );
            } else {
                assert_eq!(opened, Err(OpenError::Undecryptable), "tcId {id}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 94);
    // tcId 1 is RFC 7518 Appendix B.3, which the loop checked both ways.
    let first = &file["testGroups"][0]["tests"][0];
    assert_eq!(first["flags"][0], "Ktv");
    assert_eq!(
        hex(&first["aad"]),
        b"The second principle of Auguste Kerckhoffs"
    );
}

#[test]
fn wycheproof_rsa_oaep_3072_sha256_decrypts_the_valid_and_refuses_the_rest() {
    let file = load("wycheproof_rsa_oaep_3072_sha256_mgf1sha256_test.json");
    let group = &file["testGroups"][0];
    let pair = KeyPair::from_private_jwk(&group["privateKeyJwk"]).expect("Wycheproof key");
    let (mut valid, mut invalid) = (0, 0);
    for t in group["tests"].as_array().expect("tests") {
        if !t["label"].as_str().is_some_and(str::is_empty) {
            continue; // JWE's RSA-OAEP-256 has an empty label; labelled cases do not apply.
        }
        let got = pair.unwrap_key(&hex(&t["ct"]));
        if t["result"] == "valid" {
            assert_eq!(got, Some(hex(&t["msg"])), "tcId {}", t["tcId"]);
            valid += 1;
        } else {
            assert_eq!(got, None, "tcId {}", t["tcId"]);
            invalid += 1;
        }
    }
    assert_eq!((valid, invalid), (10, 19));
}

#[test]
fn the_projects_fixture_decrypts_and_encrypts_the_same() {
    let file = load("switchboard.json");
    for item in file["content"].as_array().expect("content") {
        let key: [u8; 64] = bytes(&item["cek"]).try_into().expect("64");
        let iv: [u8; 16] = bytes(&item["iv"]).try_into().expect("16");
        let aad = item["protected"].as_str().expect("protected").as_bytes();
        let plaintext = item["plaintext"].as_str().expect("plaintext").as_bytes();
        let sealed = cipher::encrypt(&key, &iv, aad, plaintext);
        assert_eq!(b64::encode(&sealed.ciphertext), item["ciphertext"]);
        assert_eq!(b64::encode(sealed.tag), item["tag"]);
    }
    for item in file["oaep"].as_array().expect("oaep") {
        let pair = KeyPair::from_private_jwk(&file["keys"][item["key"].as_str().expect("name")])
            .expect("key");
        assert_eq!(
            pair.unwrap_key(&bytes(&item["encrypted_key"])),
            Some(bytes(&item["cek"]))
        );
    }
}

#[test]
fn the_fixture_envelopes_open_for_each_recipient() {
    let file = load("switchboard.json");
    let keys = &file["keys"];
    let alice = KeyPair::from_private_jwk(&keys["alice"]).expect("alice");
    let bob = KeyPair::from_private_jwk(&keys["bob"]).expect("bob");
    let carol = KeyPair::from_private_jwk(&keys["carol"]).expect("carol");
    let env = &file["envelopes"];

    let sealed = Jwe::from_value(&env["sealed"]["jwe"]).expect("jwe");
    for me in [&alice, &bob] {
        let opened = open_sealed(&sealed, me).expect("opens");
        assert_eq!(
            opened.plaintext,
            env["sealed"]["plaintext"]
                .as_str()
                .expect("text")
                .as_bytes()
        );
        opened
            .check_delivery("dm/alice/bob", Some("carol"))
            .expect("bound to its topic");
        assert_eq!(opened.binding.kind, Kind::Sealed);
    }
    assert!(matches!(
        open_sealed(&sealed, &carol),
        Err(OpenError::NotAddressed { recipients: 2, .. })
    ));

    let mut ring = Keyring::default();
    let share = Jwe::from_value(&env["room_key"]["jwe"]).expect("jwe");
    let (_, key) = ring.accept_share(&share, &bob).expect("share opens");
    assert_eq!(
        serde_json::to_value(&key).expect("json"),
        env["room_key"]["room_key"]
    );
    let message = Jwe::from_value(&env["room"]["jwe"]).expect("jwe");
    let opened = ring
        .open(&message, Reading::Live)
        .expect("room message opens");
    assert_eq!(
        opened.plaintext,
        env["room"]["plaintext"].as_str().expect("text").as_bytes()
    );
    assert_eq!(opened.kid, env["room"]["kid"]);
}

#[test]
fn registry_rules_refuse_weak_private_and_foreign_keys() {
    let file = load("switchboard.json");
    let keys = &file["keys"];
    use switchboard_e2e::JwkError;
    assert_eq!(
        PublicJwk::parse(&keys["weak1024"]),
        Err(JwkError::TooSmall(1024))
    );
    assert_eq!(
        PublicJwk::parse(&keys["alice"]),
        Err(JwkError::Private("d"))
    );
    let public = PublicJwk::parse(&serde_json::json!({
        "kty": "RSA", "n": keys["alice"]["n"], "e": "AQAB"
    }))
    .expect("alice's public key");
    assert_eq!(public.kid, keys["alice"]["kid"]);
    assert_eq!(public.bits(), 3072);
    let mut other_e = serde_json::to_value(&public).expect("json");
    other_e["e"] = "Aw".into();
    assert_eq!(PublicJwk::parse(&other_e), Err(JwkError::Exponent));
    let mut wrong_kid = serde_json::to_value(&public).expect("json");
    wrong_kid["kid"] = keys["bob"]["kid"].clone();
    assert!(matches!(
        PublicJwk::parse(&wrong_kid),
        Err(JwkError::Kid { .. })
    ));
    assert_eq!(
        PublicJwk::parse(&serde_json::json!({"kty": "EC", "crv": "P-256"})),
        Err(JwkError::KeyType("EC".into()))
    );
}

/// RFC 7638 §3.1's example key and thumbprint.
#[test]
fn rfc_7638_thumbprint_example() {
    let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    assert_eq!(
        switchboard_e2e::jwk::thumbprint(n, "AQAB"),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}
