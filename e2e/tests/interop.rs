//! Interoperability: what this crate seals opens in WebCrypto (clients/js/src/e2e.js,
//! run by node) and in Python's `cryptography`, and what they seal opens here, for all
//! three kinds; tampered, misdirected and unaddressed envelopes are refused by all.
//! scripts/test.sh installs `cryptography`; node is a test dependency already.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use switchboard_e2e::room::Reading;
use switchboard_e2e::{seal, Binding, Inbox, KeyPair, Kind, PublicJwk, Received, RoomKey};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/switchboard.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn peer(program: &str, script: &str, request: &Value) -> Value {
    let script = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(program)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (scripts/test.sh installs what is needed): {e}")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("request");
    let out = child.wait_with_output().expect("peer ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {script} failed: {err}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{program}: not JSON ({e}): {err}"))
}

fn check_peer(program: &str, script: &str, name: &str) {
    let file = fixture();
    let keys = &file["keys"];
    let alice = KeyPair::from_private_jwk(&keys["alice"]).expect("alice");
    let bob_public =
        PublicJwk::parse(&json!({"kty": "RSA", "n": keys["bob"]["n"], "e": "AQAB"})).expect("bob");
    let carol_public =
        PublicJwk::parse(&json!({"kty": "RSA", "n": keys["carol"]["n"], "e": "AQAB"}))
            .expect("carol");

    // What Rust makes for bob, and what it makes wrong on purpose.
    let room = RoomKey::create("rs/room", 1);
    let share = room
        .share(std::slice::from_ref(&bob_public), "rs/keys", "rust")
        .expect("share");
    let room_msg = room.encrypt("rs/room", "rust", "room message from rust".as_bytes());
    let sealed = seal(
        "sealed by rust ✓".as_bytes(),
        &[alice.public().clone(), bob_public.clone()],
        Binding::new(Kind::Sealed, "rs/dm", "rust"),
    )
    .expect("seal");
    let mut tampered = sealed.clone();
    let mut tag = switchboard_e2e::b64::decode(&tampered.tag).expect("tag");
    tag[0] ^= 1;
    tampered.tag = switchboard_e2e::b64::encode(tag);
    let later = room.rotate(2).encrypt("rs/room", "rust", b"epoch 2");
    let for_carol = seal(
        b"x",
        &[carol_public],
        Binding::new(Kind::Sealed, "rs/dm", "rust"),
    )
    .expect("seal");
    let request = json!({
        "me": keys["bob"],
        "recipient": alice.public(),
        "envelopes": [
            {"topic": "rs/keys", "jwe": share},
            {"topic": "rs/room", "jwe": room_msg},
            {"topic": "rs/dm", "jwe": sealed},
            {"topic": "rs/dm", "jwe": tampered},
            {"topic": "rs/elsewhere", "jwe": sealed},
            {"topic": "rs/room", "jwe": later},
            {"topic": "rs/dm", "jwe": for_carol},
        ],
    });
    let answer = peer(program, script, &request);
    let opened = answer["opened"].as_array().expect("opened");
    assert_eq!(opened.len(), 7, "{name}: {answer}");
    let shared: Value =
        serde_json::from_str(opened[0]["plaintext"].as_str().expect("key text")).expect("key JSON");
    assert_eq!(
        (opened[0]["kind"].as_str(), shared),
        (Some("room-key"), serde_json::to_value(&room).expect("json")),
        "{name}"
    );
    assert_eq!(
        opened[1],
        json!({"ok": true, "kind": "room", "plaintext": "room message from rust"}),
        "{name}"
    );
    assert_eq!(
        opened[2],
        json!({"ok": true, "kind": "sealed", "plaintext": "sealed by rust ✓"}),
        "{name}"
    );
    let codes: Vec<&str> = opened[3..]
        .iter()
        .map(|o| o["code"].as_str().unwrap_or("opened!"))
        .collect();
    assert_eq!(
        codes,
        [
            "undecryptable",
            "wrong_topic",
            "unknown_room_key",
            "not_addressed"
        ],
        "{name}"
    );

    // What the peer made for alice opens here.
    let made = &answer["made"];
    let mut inbox = Inbox::new(alice);
    let key = match inbox.open(
        &format!("{name}/keys"),
        None,
        &made["room_key"],
        Reading::Live,
    ) {
        Ok(Received::RoomKey(_, key)) => key,
        other => panic!("{name}'s room key: {other:?}"),
    };
    assert_eq!(
        serde_json::to_value(&key).expect("json")["k"],
        made["room_key_value"]["k"],
        "{name}"
    );
    for (topic, data, text) in [
        (
            "room",
            &made["room"],
            format!("room message from {}", program_name(name)),
        ),
        (
            "dm",
            &made["sealed"],
            format!("sealed by {} ✓", program_name(name)),
        ),
    ] {
        match inbox.open(&format!("{name}/{topic}"), None, data, Reading::Live) {
            Ok(Received::Message(m)) => assert_eq!(String::from_utf8_lossy(&m.plaintext), text),
            other => panic!("{name}'s {topic} message: {other:?}"),
        }
    }
    // Rust's checks hold for their envelopes too: moved to another topic is refused.
    assert!(inbox
        .open("elsewhere", None, &made["sealed"], Reading::History)
        .is_err());
}

fn program_name(prefix: &str) -> &'static str {
    if prefix == "py" {
        "python"
    } else {
        "javascript"
    }
}

#[test]
fn python_cryptography_opens_what_rust_seals_and_rust_opens_what_it_seals() {
    check_peer("python3", "peer.py", "py");
}

#[test]
fn webcrypto_opens_what_rust_seals_and_rust_opens_what_it_seals() {
    check_peer("node", "peer.mjs", "js");
}
