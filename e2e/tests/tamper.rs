//! Every way an envelope can be altered, misdirected or replayed is refused: before the
//! tag verifies with the one opaque error, after it with an error naming the problem.

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha512;
use switchboard_e2e::room::Reading;
use switchboard_e2e::{
    b64, open_sealed, seal, Binding, Inbox, Jwe, KeyPair, Keyring, Kind, OpenError, Received,
    RoomKey,
};

struct Fixture {
    alice: KeyPair,
    bob: KeyPair,
    carol: KeyPair,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/switchboard.json"
    );
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let key = |name: &str| KeyPair::from_private_jwk(&file["keys"][name]).expect("key");
    Fixture {
        alice: key("alice"),
        bob: key("bob"),
        carol: key("carol"),
    }
}

fn sealed_to_bob(f: &Fixture) -> Jwe {
    seal(
        b"{\"text\":\"secret\"}",
        &[f.bob.public().clone()],
        Binding::new(Kind::Sealed, "dm/alice/bob", "alice"),
    )
    .expect("seal")
}

/// Flips one bit of a base64url member's decoded bytes.
fn flip(member: &str, bit: usize) -> String {
    let mut bytes = b64::decode(member).expect("b64");
    let len = bytes.len();
    bytes[(bit / 8) % len] ^= 1 << (bit % 8);
    b64::encode(bytes)
}

#[test]
fn a_flipped_bit_anywhere_is_the_same_opaque_error() {
    let f = fixture();
    let jwe = sealed_to_bob(&f);
    assert!(open_sealed(&jwe, &f.bob).is_ok());
    let variants: Vec<(&str, Jwe)> = vec![
        (
            "tag",
            Jwe {
                tag: flip(&jwe.tag, 5),
                ..jwe.clone()
            },
        ),
        (
            "iv",
            Jwe {
                iv: flip(&jwe.iv, 77),
                ..jwe.clone()
            },
        ),
        (
            "ciphertext first block",
            Jwe {
                ciphertext: flip(&jwe.ciphertext, 3),
                ..jwe.clone()
            },
        ),
        (
            "ciphertext last byte",
            Jwe {
                ciphertext: flip(&jwe.ciphertext, 8 * 31 + 7),
                ..jwe.clone()
            },
        ),
        (
            "protected header",
            Jwe {
                protected: flip(&jwe.protected, 40),
                ..jwe.clone()
            },
        ),
        ("truncated ciphertext", {
            let mut ct = b64::decode(&jwe.ciphertext).expect("b64");
            ct.truncate(16);
            Jwe {
                ciphertext: b64::encode(ct),
                ..jwe.clone()
            }
        }),
        (
            "truncated tag",
            Jwe {
                tag: b64::encode(&b64::decode(&jwe.tag).expect("b64")[..16]),
                ..jwe.clone()
            },
        ),
        (
            "not base64url",
            Jwe {
                iv: format!("{}=", jwe.iv),
                ..jwe.clone()
            },
        ),
        ("wrapped key", {
            let mut j = jwe.clone();
            j.recipients[0].encrypted_key = flip(&j.recipients[0].encrypted_key, 1000);
            j
        }),
    ];
    for (what, altered) in variants {
        assert_eq!(
            open_sealed(&altered, &f.bob),
            Err(OpenError::Undecryptable),
            "{what}"
        );
    }
}

#[test]
fn a_key_wrapped_for_someone_else_under_my_kid_is_the_same_opaque_error() {
    let f = fixture();
    let mut jwe = seal(
        b"x",
        &[f.alice.public().clone()],
        Binding::new(Kind::Sealed, "t", "carol"),
    )
    .expect("seal");
    // A known kid (bob's), naming a key that was wrapped for alice.
    jwe.recipients[0].header.kid = f.bob.kid().into();
    assert_eq!(open_sealed(&jwe, &f.bob), Err(OpenError::Undecryptable));
    // Not addressed to carol at all: a clear error, since the kids are public anyway.
    assert!(matches!(
        open_sealed(&jwe, &f.carol),
        Err(OpenError::NotAddressed { recipients: 1, .. })
    ));
}

/// A ciphertext with a valid tag but bad padding: only a holder of the MAC key can make
/// one, and it still gets the opaque error (the padding check runs after the tag check).
#[test]
fn a_valid_tag_over_bad_padding_is_the_same_opaque_error() {
    let key = [9u8; 64];
    let iv = [1u8; 16];
    let aad = b"header";
    let mut block = [0u8; 16]; // ends in 0x00: never valid PKCS#7
    let ct = cbc::Encryptor::<Aes256>::new((&key[32..]).into(), (&iv).into())
        .encrypt_padded_mut::<NoPadding>(&mut block, 16)
        .expect("one block")
        .to_vec();
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(&key[..32]).expect("key");
    mac.update(aad);
    mac.update(&iv);
    mac.update(&ct);
    mac.update(&((aad.len() as u64) * 8).to_be_bytes());
    let tag = &mac.finalize().into_bytes()[..32];
    assert_eq!(
        switchboard_e2e::cipher::decrypt(&key, &iv, aad, &ct, tag),
        Err(OpenError::Undecryptable)
    );
}

#[test]
fn moved_to_another_topic_relabelled_sender_and_replays_are_named() {
    let f = fixture();
    let jwe = sealed_to_bob(&f).to_value();
    let mut inbox = Inbox::new(f.bob.clone());
    assert!(matches!(
        inbox.open("dm/alice/mallory", Some("alice"), &jwe, Reading::Live),
        Err(OpenError::WrongTopic { .. })
    ));
    assert!(matches!(
        inbox.open("dm/alice/bob", Some("carol"), &jwe, Reading::Live),
        Err(OpenError::WrongSender { .. })
    ));
    assert!(matches!(
        inbox.open("dm/alice/bob", Some("alice"), &jwe, Reading::Live),
        Ok(Received::Message(_))
    ));
    assert!(matches!(
        inbox.open("dm/alice/bob", Some("alice"), &jwe, Reading::Live),
        Err(OpenError::Replayed { .. })
    ));
    // Reading history again is not a replay.
    assert!(inbox
        .open("dm/alice/bob", Some("alice"), &jwe, Reading::History)
        .is_ok());
}

#[test]
fn a_removed_member_cannot_read_after_rotation_and_old_epochs_stay_for_history() {
    let f = fixture();
    let (topic, keys_topic) = ("chat/lobby", "e2e/keys/chat/lobby");
    let epoch1 = RoomKey::create(topic, 1);
    let members = [
        f.alice.public().clone(),
        f.bob.public().clone(),
        f.carol.public().clone(),
    ];
    let share1 = epoch1
        .share(&members, keys_topic, "alice")
        .expect("share")
        .to_value();

    let mut bob = Inbox::new(f.bob.clone());
    let mut carol = Inbox::new(f.carol.clone());
    for inbox in [&mut bob, &mut carol] {
        assert!(matches!(
            inbox.open(keys_topic, Some("alice"), &share1, Reading::Live),
            Ok(Received::RoomKey(..))
        ));
    }
    let old = epoch1
        .encrypt(topic, "alice", b"before carol left")
        .to_value();
    assert!(carol
        .open(topic, Some("alice"), &old, Reading::Live)
        .is_ok());

    // Carol is removed: epoch 2 goes to alice and bob only.
    let epoch2 = epoch1.rotate(2);
    let share2 = epoch2
        .share(&members[..2], keys_topic, "alice")
        .expect("share")
        .to_value();
    assert!(matches!(
        carol.open(keys_topic, Some("alice"), &share2, Reading::Live),
        Err(OpenError::NotAddressed { .. })
    ));
    assert!(bob
        .open(keys_topic, Some("alice"), &share2, Reading::Live)
        .is_ok());

    let new = epoch2
        .encrypt(topic, "alice", b"after carol left")
        .to_value();
    assert_eq!(
        carol
            .open(topic, Some("alice"), &new, Reading::Live)
            .map(|_| ()),
        Err(OpenError::UnknownRoomKey {
            kid: "chat/lobby#2".into()
        })
    );
    match bob.open(topic, Some("alice"), &new, Reading::Live) {
        Ok(Received::Message(m)) => assert_eq!(m.plaintext, b"after carol left"),
        other => panic!("bob reads epoch 2: {other:?}"),
    }
    // Carol still holds epoch 1: a new message under it is refused live...
    let injected = epoch1
        .encrypt(topic, "carol", b"forged after removal")
        .to_value();
    assert!(matches!(
        bob.open(topic, Some("carol"), &injected, Reading::Live),
        Err(OpenError::StaleEpoch {
            epoch: 1,
            current: 2,
            ..
        })
    ));
    // ...while history under epoch 1 stays readable.
    assert!(bob
        .open(topic, Some("alice"), &old, Reading::History)
        .is_ok());
}

#[test]
fn a_scheduled_rotation_keeps_the_previous_epoch_open_for_messages_in_flight_only() {
    let f = fixture();
    let (topic, keys_topic) = ("chat/lobby", "e2e/keys/chat/lobby");
    let mut bob = Inbox::new(f.bob.clone());
    let epoch1 = RoomKey::create(topic, 1);
    let epoch2 = epoch1.rotate_scheduled(2);
    let epoch3 = epoch2.rotate_scheduled(3);
    for key in [&epoch1, &epoch2] {
        let share = key
            .share(&[f.bob.public().clone()], keys_topic, "alice")
            .expect("share")
            .to_value();
        bob.open(keys_topic, Some("alice"), &share, Reading::Live)
            .expect("share opens");
    }
    // Sent under epoch 1 before carol had epoch 2's share: still opens live.
    let in_flight = epoch1.encrypt(topic, "carol", b"sent as epoch 2 began");
    assert!(bob
        .open(topic, Some("carol"), &in_flight.to_value(), Reading::Live)
        .is_ok());
    // The share says so, and a receiver built from JSON keeps it.
    let share3 = epoch3
        .share(&[f.bob.public().clone()], keys_topic, "alice")
        .expect("share")
        .to_value();
    match bob.open(keys_topic, Some("alice"), &share3, Reading::Live) {
        Ok(Received::RoomKey(_, key)) => assert!(key.prev_open),
        other => panic!("{other:?}"),
    }
    // Two epochs back is stale, whatever the schedule.
    let late = epoch1.encrypt(topic, "carol", b"two rotations late");
    assert!(matches!(
        bob.open(topic, Some("carol"), &late.to_value(), Reading::Live),
        Err(OpenError::StaleEpoch {
            epoch: 1,
            current: 3,
            ..
        })
    ));
}

#[test]
fn a_second_key_for_an_epoch_already_held_is_refused() {
    let f = fixture();
    let mut ring = Keyring::default();
    let real = RoomKey::create("r", 1);
    let forged = RoomKey::create("r", 1);
    ring.insert(real.clone()).expect("first");
    let share = forged
        .share(&[f.bob.public().clone()], "k", "carol")
        .expect("share");
    assert!(matches!(
        ring.accept_share(&share, &f.bob),
        Err(OpenError::Inconsistent(_))
    ));
    assert_eq!(ring.current("r"), Some(&real));
}

#[test]
fn a_sealed_message_offered_as_a_room_message_is_refused() {
    let f = fixture();
    let ring = Keyring::default();
    let jwe = sealed_to_bob(&f);
    assert!(matches!(
        ring.open(&jwe, Reading::Live),
        Err(OpenError::WrongKind { .. })
    ));
    assert!(matches!(
        Jwe::parse(b"{\"text\":\"plain\"}"),
        Err(OpenError::Malformed(_))
    ));
}
