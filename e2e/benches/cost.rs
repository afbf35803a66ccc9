//! What end-to-end encryption costs a client, per message and per room-key share
//! (docs/benchmarks.md, "End-to-end encryption: client cost"). Runs on one thread; the
//! median of several rounds is reported.
//!
//! `cargo bench -p switchboard-e2e --bench cost` (add `-- --quick` for fewer rounds).

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchboard_e2e::envelope::open_sealed;
use switchboard_e2e::{seal, Binding, KeyPair, Keyring, Kind, PublicJwk, Reading, RoomKey};

/// The median time of one call of `f`, over `rounds` rounds of `per_round` calls.
fn time(rounds: usize, per_round: usize, mut f: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                f();
            }
            start.elapsed() / per_round as u32
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn show(what: &str, d: Duration) {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        println!("{what:<44} {:>10.1} ms", us / 1000.0);
    } else {
        println!("{what:<44} {us:>10.1} µs");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 7 };
    // Four distinct recipients stand in for a room's members: an RSA public-key
    // operation costs the same whichever key it uses, and 1,000 RSA-3072 key pairs would
    // take minutes to generate.
    let keys: Vec<KeyPair> = (0..4)
        .map(|_| KeyPair::generate(3072).expect("keygen"))
        .collect();
    let me = &keys[0];
    let to: Vec<PublicJwk> = vec![me.public().clone()];
    let room = RoomKey::create("chat/bench", 1);
    let mut ring = Keyring::default();
    ring.insert(room.clone()).expect("key");

    println!("RSA-3072 recipients, A256CBC-HS512; median of {rounds} rounds");
    for size in [64usize, 1024, 16 << 10] {
        let plaintext = vec![b'x'; size];
        let binding = || Binding::new(Kind::Sealed, "dm/bench", "alice");
        let sealed = seal(&plaintext, &to, binding()).expect("seal");
        show(
            &format!("sealed to 1, encrypt, {size} B"),
            time(rounds, 50, || {
                black_box(seal(&plaintext, &to, binding()).expect("seal"));
            }),
        );
        show(
            &format!("sealed to 1, decrypt, {size} B"),
            time(rounds, 20, || {
                black_box(open_sealed(&sealed, me).expect("open"));
            }),
        );
        let message = room.encrypt("chat/bench", "alice", &plaintext);
        show(
            &format!("room message, encrypt, {size} B"),
            time(rounds, 500, || {
                black_box(room.encrypt("chat/bench", "alice", &plaintext));
            }),
        );
        show(
            &format!("room message, decrypt, {size} B"),
            time(rounds, 500, || {
                black_box(ring.open(&message, Reading::History).expect("open"));
            }),
        );
        println!(
            "  envelope bytes: sealed {}, room {}",
            serde_json::to_string(&sealed).map_or(0, |s| s.len()),
            serde_json::to_string(&message).map_or(0, |s| s.len())
        );
    }
    for members in [10usize, 100, 1000] {
        let jwks: Vec<PublicJwk> = (0..members)
            .map(|i| keys[i % keys.len()].public().clone())
            .collect();
        let share_rounds = if members >= 1000 {
            rounds.min(3)
        } else {
            rounds
        };
        show(
            &format!("room key share to {members} members"),
            time(share_rounds, 1, || {
                black_box(
                    room.share(&jwks, "chat/bench/keys", "alice")
                        .expect("share"),
                );
            }),
        );
    }
}
