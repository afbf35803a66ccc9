//! End-to-end encryption through the real daemon (docs/e2e.md): the public-key registry
//! over REST and carried over the WebSocket, its announcements and durability; sealed and
//! room envelopes routed byte for byte (in over WebSocket, REST and MQTT; out over
//! WebSocket, MQTT, history and recording export), kept as ciphertext only; the CLI.

mod common;

use std::time::Duration;

use common::creds::{user_token, Secrets, ADMIN};
use common::http::{api, call, code, get, post, subscribed_as};
use common::{Daemon, Raw};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use switchboard_e2e::room::Reading;
use switchboard_e2e::{seal, Binding, Inbox, KeyPair, Kind, PublicJwk, Received, RoomKey};
use tokio_tungstenite::tungstenite::Message;

const HISTORY: &str = "[history]\n[[history.topics]]\nfilter = \"dm/#\"\nkeep = 100\n[[history.topics]]\nfilter = \"chat/#\"\nkeep = 100\n";

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/e2e/tests/vectors/switchboard.json"
    ))
    .expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn pair(file: &Value, name: &str) -> KeyPair {
    KeyPair::from_private_jwk(&file["keys"][name]).expect("test key")
}

/// What a client sends to register: the public members only.
fn public(file: &Value, name: &str) -> Value {
    let k = &file["keys"][name];
    json!({"kty": "RSA", "n": k["n"], "e": k["e"]})
}

fn keys_url(d: &Daemon, rest: &str) -> String {
    api(d, &format!("/e2e/keys{rest}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_serves_a_users_keys_and_only_the_user_changes_them() {
    let secrets = Secrets::new();
    let mut d = Daemon::start(&secrets.config(""));
    let file = fixture();
    let alice = user_token("alice", json!({"subscribe": ["$e2e/keys/#"]}));
    let bob = user_token("bob", json!({"subscribe": ["$e2e/keys/#"]}));
    let mut watcher = subscribed_as(&d, &bob, "$e2e/keys/alice").await;

    let body = public(&file, "alice").to_string();
    let (s, record) = post(&keys_url(&d, "/alice"), Some(&alice), &body).await;
    assert_eq!(s, StatusCode::CREATED, "{record}");
    let kid = record["kid"].as_str().expect("kid").to_owned();
    assert_eq!(kid, file["keys"]["alice"]["kid"], "the RFC 7638 thumbprint");
    assert_eq!(record["bits"], 3072);
    assert_eq!(record["jwk"]["alg"], "RSA-OAEP-256");
    assert_eq!(
        record["fingerprint"].as_str().expect("fingerprint").len(),
        79
    );
    // Announced, retained, with the thumbprint people compare.
    let notice = watcher.next_msg().await;
    assert_eq!(
        (notice["topic"].as_str(), notice["event"].as_str()),
        (Some("$e2e/keys/alice"), Some("keys"))
    );
    assert_eq!(notice["data"]["keys"][0]["kid"], kid.as_str());
    assert_eq!(notice["from"], "switchboard");
    // Retained: a client that subscribes later gets it at once.
    let mut late = subscribed_as(&d, &bob, "$e2e/keys/alice").await;
    assert_eq!(
        late.next_msg().await["data"]["keys"][0]["kid"],
        kid.as_str()
    );
    // Registering it again changes nothing.
    let (s, _) = post(&keys_url(&d, "/alice"), Some(&alice), &body).await;
    assert_eq!(s, StatusCode::OK);

    // Anyone may fetch; nobody else may change.
    let (s, list) = get(&keys_url(&d, "/alice"), Some(&bob)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["keys"].as_array().map(Vec::len), Some(1));
    let fetched = PublicJwk::parse(&list["keys"][0]["jwk"]).expect("a usable public key");
    assert_eq!(fetched.kid, kid);
    let (s, v) = post(
        &keys_url(&d, "/alice"),
        Some(&bob),
        &public(&file, "bob").to_string(),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
    let (s, _, _) = call(
        Method::DELETE,
        &keys_url(&d, &format!("/alice/{kid}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = get(&keys_url(&d, ""), Some(&bob)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = get(&keys_url(&d, ""), Some(ADMIN)).await;
    assert_eq!(
        (s, v),
        (
            StatusCode::OK,
            json!({"users": [{"user": "alice", "keys": 1}]})
        )
    );

    // Refusals name the problem.
    let refused = [
        (file["keys"]["weak1024"].clone(), "too small"),
        (file["keys"]["alice"].clone(), "private key material"),
        (
            json!({"kty": "RSA", "n": file["keys"]["bob"]["n"], "e": "Aw"}),
            "65537",
        ),
        (json!({"kty": "oct", "k": "AAAA"}), "private key material"),
        (
            json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
            "RSA",
        ),
    ];
    for (jwk, says) in refused {
        let (s, v) = post(&keys_url(&d, "/alice"), Some(&alice), &jwk.to_string()).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("message")
                .contains(says),
            "{v}"
        );
    }
    let (s, v) = post(&keys_url(&d, "/alice"), Some(&alice), "{not json").await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_json"), "{v}");

    // No key material in the log, only the thumbprint.
    let n = file["keys"]["alice"]["n"].as_str().expect("n");
    assert!(!d.logs().contains(&n[..40]), "the modulus was logged");
    assert!(
        d.logs().contains(&format!(
            "e2e public key registered user=\"alice\" kid={kid}"
        )),
        "{}",
        d.logs()
    );
    // Durable: a restart keeps it.
    d.restart();
    let (_, list) = get(&keys_url(&d, "/alice"), Some(&bob)).await;
    assert_eq!(list["keys"][0]["kid"], kid.as_str());

    // Revoked by its owner: gone, and announced.
    let mut watcher = subscribed_as(&d, &bob, "$e2e/keys/alice").await;
    let (s, _, _) = call(
        Method::DELETE,
        &keys_url(&d, &format!("/alice/{kid}")),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(watcher.next_msg().await["data"]["keys"], json!([]));
    let (s, v) = get(&keys_url(&d, &format!("/alice/{kid}")), Some(&bob)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_works_over_the_websocket_and_caps_keys_per_user() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let file = fixture();
    let carol = user_token("carol", json!({}));
    let mut ws = Raw::connect(&format!("{}?token={carol}", d.ws_url())).await;
    let reply = ws
        .request(json!({"op": "http", "method": "POST", "path": "/api/v1/e2e/keys/carol", "body": public(&file, "carol")}))
        .await;
    assert_eq!(reply["status"], 201, "{reply}");
    assert_eq!(reply["body"]["kid"], file["keys"]["carol"]["kid"]);
    let reply = ws
        .request(json!({"op": "http", "method": "GET", "path": "/api/v1/e2e/keys/carol"}))
        .await;
    assert_eq!(
        reply["body"]["keys"][0]["kid"],
        file["keys"]["carol"]["kid"]
    );

    // 16 keys at most: the 17th is a conflict. (Distinct 2048-bit odd numbers stand in
    // for keys: the registry checks shape and size, it cannot check primality.)
    let admin_url = keys_url(&d, "/many");
    for i in 0..17u32 {
        let mut n = vec![0xC5u8; 256];
        n[..4].copy_from_slice(&i.to_be_bytes());
        n[0] |= 0xC0;
        let jwk = json!({"kty": "RSA", "n": switchboard_e2e::b64::encode(&n), "e": "AQAB"});
        let (s, v) = post(&admin_url, Some(ADMIN), &jwk.to_string()).await;
        if i < 16 {
            assert_eq!(s, StatusCode::CREATED, "key {i}: {v}");
        } else {
            assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
        }
    }
}

/// Public JWKs from Python's `cryptography` (OpenSSL underneath), one per
/// `(bits, exponent)`: keys made by a generator this project did not write.
fn openssl_keys(specs: &[(u32, u32)]) -> Vec<Value> {
    let script = r#"
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric import rsa
def b64(i):
    return base64.urlsafe_b64encode(i.to_bytes((i.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
out = []
for spec in sys.argv[1:]:
    bits, e = map(int, spec.split(":"))
    n = rsa.generate_private_key(public_exponent=e, key_size=bits).public_key().public_numbers()
    out.append({"kty": "RSA", "n": b64(n.n), "e": b64(n.e)})
print(json.dumps(out))
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(specs.iter().map(|(bits, e)| format!("{bits}:{e}")))
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python3 cryptography: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JWKs")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_takes_any_size_from_2048_to_4096_bits_and_only_e_65537() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let dave = user_token("dave", json!({}));
    let url = keys_url(&d, "/dave");
    let keys = openssl_keys(&[
        (2048, 65537),
        (2050, 65537), // not a multiple of 8
        (2304, 65537),
        (4096, 65537),
        (1024, 65537),
        (4104, 65537),
        (2048, 3),
    ]);
    for (jwk, bits) in keys[..4].iter().zip([2048, 2050, 2304, 4096]) {
        let (s, v) = post(&url, Some(&dave), &jwk.to_string()).await;
        assert_eq!(s, StatusCode::CREATED, "{bits} bits: {v}");
        assert_eq!(v["bits"], bits, "{v}");
        // What it serves is a key a client can seal to.
        let served = PublicJwk::parse(&v["jwk"]).expect("a usable public key");
        assert_eq!(served.bits(), bits);
    }
    let refused = [
        (
            &keys[4],
            "RSA key of 1024 bits is too small: at least 2048 bits",
        ),
        (
            &keys[5],
            "RSA key of 4104 bits is too large: at most 4096 bits",
        ),
        (&keys[6], r#"the public exponent must be 65537 ("AQAB")"#),
    ];
    for (jwk, says) in refused {
        let (s, v) = post(&url, Some(&dave), &jwk.to_string()).await;
        assert_eq!(
            (s, code(&v), v["error"]["message"].as_str()),
            (StatusCode::BAD_REQUEST, "bad_request", Some(says)),
            "{v}"
        );
    }
    let (_, list) = get(&url, Some(&dave)).await;
    assert_eq!(list["keys"].as_array().map(Vec::len), Some(4), "{list}");
}

/// The text of the next `msg` frame, as it came off the socket.
async fn next_msg_text(ws: &mut Raw) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = frame {
            if t.as_str().starts_with(r#"{"op":"msg""#) {
                return t.as_str().to_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn envelopes_pass_byte_for_byte_and_the_store_holds_only_ciphertext() {
    let secrets = Secrets::new();
    let mut d = Daemon::start(&secrets.config(HISTORY));
    let file = fixture();
    let (alice, bob) = (pair(&file, "alice"), pair(&file, "bob"));
    let alice_token = user_token(
        "alice",
        json!({"publish": ["dm/#", "chat/#"], "subscribe": ["dm/#", "chat/#"]}),
    );
    let bob_token = user_token("bob", json!({"subscribe": ["dm/#", "chat/#"]}));
    let (s, rec) = post(
        &api(&d, "/recordings"),
        Some(ADMIN),
        &json!({"name": "e2e", "topics": ["dm/#", "chat/#"]}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{rec}");
    let recording = rec["id"].as_u64().expect("id");

    // A marker that must never reach the daemon's disk, and one sent in clear on
    // purpose: finding the second proves the scan below reads what the daemon wrote.
    let secret = "SECRET-e2e-marker-7f3a91";
    let clear = "CLEAR-control-marker-5b20c4";
    let sealed = seal(
        format!("{{\"text\":\"{secret}\"}}").as_bytes(),
        &[bob.public().clone(), alice.public().clone()],
        Binding::new(Kind::Sealed, "dm/alice/bob", "alice"),
    )
    .expect("seal");
    let sealed_text = serde_json::to_string(&sealed).expect("json");
    let room = RoomKey::create("chat/lobby", 1);
    let share = serde_json::to_string(
        &room
            .share(&[bob.public().clone()], "chat/lobby/keys", "alice")
            .expect("share"),
    )
    .expect("json");
    let room_msg = serde_json::to_string(&room.encrypt(
        "chat/lobby",
        "alice",
        format!("room {secret}").as_bytes(),
    ))
    .expect("json");

    let mut bob_ws = subscribed_as(&d, &bob_token, "dm/alice/bob").await;
    let ok = bob_ws
        .request(json!({"op": "sub", "topic": "chat/#"}))
        .await;
    assert_eq!(ok["op"], "ok");
    let mut alice_ws = Raw::connect(&format!("{}?token={alice_token}", d.ws_url())).await;
    // Sent as raw text, so the envelope's exact bytes are what the daemon gets.
    for (topic, data) in [
        ("dm/alice/bob", &sealed_text),
        ("chat/lobby/keys", &share),
        ("chat/lobby", &room_msg),
    ] {
        alice_ws
            .send_text(&format!(
                r#"{{"op":"pub","topic":"{topic}","data":{data}}}"#
            ))
            .await;
    }
    let (s, v) = post(
        &api(&d, "/publish"),
        Some(&alice_token),
        &json!({"topic": "dm/alice/bob", "data": {"text": clear}}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let mut inbox = Inbox::new(bob.clone());
    for (topic, data) in [
        ("dm/alice/bob", &sealed_text),
        ("chat/lobby/keys", &share),
        ("chat/lobby", &room_msg),
    ] {
        let frame = next_msg_text(&mut bob_ws).await;
        assert!(
            frame.contains(&format!(r#""data":{data},"#)),
            "not byte-identical: {frame}"
        );
        let frame: Value = serde_json::from_str(&frame).expect("JSON");
        assert_eq!(frame["topic"], topic);
        match inbox
            .open(topic, None, &frame["data"], Reading::Live)
            .expect("bob opens it")
        {
            Received::Message(m) => assert!(String::from_utf8_lossy(&m.plaintext).contains(secret)),
            Received::RoomKey(_, key) => assert_eq!(key, room),
        }
    }

    // History serves the same envelope, and it still opens.
    let (s, h) = get(&api(&d, "/history?topic=dm/alice/bob"), Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let from_history = &h["messages"][0]["data"];
    assert_eq!(
        from_history,
        &serde_json::from_str::<Value>(&sealed_text).expect("json")
    );
    assert!(inbox
        .open("dm/alice/bob", None, from_history, Reading::History)
        .is_ok());
    // So does the recording's export.
    let (s, _) = post(
        &api(&d, &format!("/recordings/{recording}/stop")),
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let export = reqwest::Client::new()
        .get(api(&d, &format!("/recordings/{recording}/export")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("text");
    assert!(
        export.contains(&sealed.ciphertext) && export.contains(clear),
        "{export}"
    );
    assert!(
        !export.contains(secret),
        "plaintext in the recording export"
    );

    // On disk, after a clean stop: ciphertext and the clear control, never the secret.
    d.stop();
    let mut disk = Vec::new();
    for entry in walk(&d.data_dir().join("store")) {
        disk.extend(std::fs::read(entry).expect("store file"));
    }
    let found = |needle: &str| disk.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(found(clear), "the scan does not see what the daemon stored");
    assert!(
        found(&sealed.ciphertext[..40]),
        "the envelope was not stored"
    );
    assert!(!found(secret), "plaintext reached the store");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("store dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Runs `switchboard e2e ARGS` with a credential; returns (success, stdout, stderr).
fn cli(d: &Daemon, token: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(common::BIN)
        .arg("e2e")
        .args(args)
        .env("SWITCHBOARD_URL", d.ws_url())
        .env("SWITCHBOARD_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("switchboard e2e runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("stdin");
    let out = child.wait_with_output().expect("it ends");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_makes_keys_registers_them_and_seals_publishes_and_opens() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("bob.jwk");
    let key = key.to_str().expect("path");
    let bob = user_token("bob", json!({"subscribe": ["dm/#"]}));
    let alice = user_token("alice", json!({"publish": ["dm/#"]}));

    let (ok, out, err) = cli(&d, &bob, &["keygen", key], b"");
    assert!(ok, "{err}");
    let kid = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("kid "))
        .expect("kid line")
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is for its owner only");
    }
    let (ok, _, err) = cli(&d, &bob, &["keygen", key], b"");
    assert!(
        !ok && err.contains("--force"),
        "an existing key is not replaced: {err}"
    );

    let (ok, out, err) = cli(&d, &bob, &["register", "--key", key, "--user", "bob"], b"");
    assert!(ok, "{err}");
    assert!(out.contains(&kid), "{out}");
    let (ok, _, err) = cli(
        &d,
        &alice,
        &["register", "--key", key, "--user", "bob"],
        b"",
    );
    assert!(
        !ok && err.contains("403"),
        "alice may not register bob's key: {err}"
    );
    let (ok, out, _) = cli(&d, &alice, &["keys", "bob"], b"");
    assert!(ok && out.starts_with(&format!("{kid} 3072 bits")), "{out}");

    // Bob reads with his key file; alice seals to his registered key and publishes.
    let sub = std::process::Command::new(common::BIN)
        .args(["e2e", "sub", "--key", key, "-C", "1", "dm/alice/bob"])
        .env("SWITCHBOARD_URL", d.ws_url())
        .env("SWITCHBOARD_TOKEN", &bob)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("e2e sub runs");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, topics) = get(&api(&d, "/topics?prefix=dm/"), Some(ADMIN)).await;
        if topics["topics"][0]["subscribers"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "e2e sub did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Plaintext where an envelope belongs is reported, not dropped, not fatal.
    let (s, _) = post(
        &api(&d, "/publish"),
        Some(&alice),
        &json!({"topic": "dm/alice/bob", "data": "not sealed"}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (ok, _, err) = cli(
        &d,
        &alice,
        &[
            "pub",
            "--to",
            "bob",
            "--topic",
            "dm/alice/bob",
            "--from",
            "alice",
            "hello bob",
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert!(
        err.contains(&switchboard_e2e::jwk::fingerprint(&kid)),
        "the sender sees whom it sealed for: {err}"
    );
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output())
        .await
        .expect("join")
        .expect("sub ends");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello bob\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not opened: not a JWE envelope"), "{err}");

    // Offline: seal to a key file, open on the right topic only, and not with another key.
    let public = format!("{key}.pub");
    let (ok, envelope, err) = cli(
        &d,
        &alice,
        &[
            "seal", "--to-key", &public, "--topic", "t/1", "--from", "alice",
        ],
        b"offline",
    );
    assert!(ok, "{err}");
    let (ok, out, _) = cli(
        &d,
        &bob,
        &["open", "--key", key, "--topic", "t/1"],
        envelope.as_bytes(),
    );
    assert!(ok && out == "offline", "{out}");
    let (ok, _, err) = cli(
        &d,
        &bob,
        &["open", "--key", key, "--topic", "t/2"],
        envelope.as_bytes(),
    );
    assert!(!ok && err.contains("moved to another topic"), "{err}");
    let other = dir.path().join("other.jwk");
    let other = other.to_str().expect("path");
    let (ok, _, _) = cli(&d, &bob, &["keygen", "--bits", "2048", other], b"");
    assert!(ok);
    let (ok, _, err) = cli(
        &d,
        &bob,
        &["open", "--key", other, "--topic", "t/1"],
        envelope.as_bytes(),
    );
    assert!(!ok && err.contains("not sealed for key"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn envelopes_cross_rest_and_mqtt_byte_for_byte() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let file = fixture();
    let bob = pair(&file, "bob");
    let alice_token = user_token("alice", json!({"publish": ["dm/#"]}));
    let bob_token = user_token("bob", json!({"subscribe": ["dm/#"]}));
    let port = d.mqtt.expect("MQTT listener").port();
    let mut device = common::MosquittoSub::start(port, &["-t", "dm/#"]).await;
    let mut bob_ws = subscribed_as(&d, &bob_token, "dm/#").await;
    let mut alice_ws = Raw::connect(&format!("{}?token={alice_token}", d.ws_url())).await;
    let mut inbox = Inbox::new(bob.clone());

    let envelope = |topic: &str| {
        let jwe = seal(
            format!("via {topic}").as_bytes(),
            &[bob.public().clone()],
            Binding::new(Kind::Sealed, topic, "alice"),
        )
        .expect("seal");
        serde_json::to_string(&jwe).expect("json")
    };
    for way in ["ws", "rest", "mqtt"] {
        let topic = format!("dm/{way}");
        let text = envelope(&topic);
        match way {
            "ws" => {
                alice_ws
                    .send_text(&format!(
                        r#"{{"op":"pub","topic":"{topic}","data":{text}}}"#
                    ))
                    .await
            }
            "rest" => {
                let (s, v) = post(
                    &api(&d, "/publish"),
                    Some(&alice_token),
                    &format!(r#"{{"topic":"{topic}","data":{text}}}"#),
                )
                .await;
                assert_eq!(s, StatusCode::OK, "{v}");
            }
            _ => assert!(common::mosquitto_pub(port, &["-t", &topic, "-m", &text]).await),
        }
        // A WebSocket subscriber gets the very bytes, and they open.
        let frame = next_msg_text(&mut bob_ws).await;
        assert!(
            frame.contains(&format!(r#""data":{text},"#)),
            "{way}: not byte-identical: {frame}"
        );
        let frame: Value = serde_json::from_str(&frame).expect("JSON");
        match inbox
            .open(&topic, None, &frame["data"], Reading::Live)
            .expect("opens")
        {
            Received::Message(m) => assert_eq!(m.plaintext, format!("via {topic}").as_bytes()),
            other => panic!("{other:?}"),
        }
        // An MQTT subscriber gets the envelope's JSON text as its payload, byte for byte.
        let (got_topic, payload) = device
            .message(Duration::from_secs(10))
            .await
            .expect("MQTT delivery");
        assert_eq!(
            (got_topic.as_str(), payload.as_slice()),
            (topic.as_str(), text.as_bytes()),
            "{way}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn room_epochs_move_one_step_at_a_time_for_those_who_may_publish() {
    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(""));
    let alice = user_token(
        "alice",
        json!({"publish": ["chat/#"], "subscribe": ["chat/#", "$e2e/rooms/#"]}),
    );
    let bob = user_token("bob", json!({"subscribe": ["chat/#"]}));
    let mut watcher = subscribed_as(&d, &alice, "$e2e/rooms/chat/lobby").await;
    let rooms = api(&d, "/e2e/rooms");
    let rotate = |epoch: u64| json!({"room": "chat/lobby", "epoch": epoch}).to_string();

    let (s, v) = get(&format!("{rooms}?room=chat/lobby"), Some(&bob)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
    let (s, v) = post(&rooms, Some(&alice), &rotate(2)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "conflict"),
        "a new room starts at 1: {v}"
    );
    let (s, v) = post(&rooms, Some(&alice), &rotate(1)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["epoch"].as_u64(), v["by"].as_str()),
        (Some(1), Some("user:alice"))
    );
    let notice = watcher.next_msg().await;
    assert_eq!(
        (notice["event"].as_str(), notice["data"]["epoch"].as_u64()),
        (Some("epoch"), Some(1))
    );

    // Two rotations to epoch 2: the first wins, the second is told where the room is.
    let (s, _) = post(&rooms, Some(&alice), &rotate(2)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = post(&rooms, Some(ADMIN), &rotate(2)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("is at epoch 2"),
        "{v}"
    );
    assert_eq!(watcher.next_msg().await["data"]["epoch"], 2);

    // Readers read it; only publishers move it; topics are checked like topics.
    let (s, v) = get(&format!("{rooms}?room=chat/lobby"), Some(&bob)).await;
    assert_eq!((s, v["epoch"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    let (s, v) = post(&rooms, Some(&bob), &rotate(3)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
    let (s, v) = get(&format!("{rooms}?room=other/room"), Some(&bob)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
    let (s, v) = post(
        &rooms,
        Some(&alice),
        &json!({"room": "chat/+", "epoch": 1}).to_string(),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_topic"),
        "{v}"
    );
}

/// `[e2e] encrypted_only`: plaintext on such a topic is refused from every way in with a
/// clear code, and an envelope bound to the topic passes (docs/e2e.md, "Enforcement").
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_only_topics_refuse_plaintext_from_every_way_in() {
    let d = Daemon::start("[e2e]\nencrypted_only = [\"secure/#\"]\n");
    let bob = pair(&fixture(), "bob");
    let envelope = |topic: &str| {
        let jwe = seal(
            b"secret",
            &[bob.public().clone()],
            Binding::new(Kind::Sealed, topic, "alice"),
        )
        .expect("seal");
        serde_json::to_string(&jwe).expect("json")
    };
    let mut watcher = Raw::subscribed(&d.ws_url(), "secure/#").await;
    let mut ws = Raw::connect(&d.ws_url()).await;
    let port = d.mqtt.expect("MQTT listener").port();
    // What each way in is refused with: plaintext, and an envelope moved from another topic.
    let other = envelope("secure/elsewhere");
    for (n, data) in [r#"{"text":"hi"}"#, r#""hi""#, other.as_str()]
        .into_iter()
        .enumerate()
    {
        let topic = format!("secure/{n}");
        let (reply, (status, v), carried) = publish_web_ways(&d, &mut ws, &topic, data).await;
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("encryption_required")),
            "WS {data}: {reply}"
        );
        assert_eq!(
            (status, code(&v)),
            (422, "encryption_required"),
            "REST {data}: {v}"
        );
        assert_eq!(carried["status"], 422, "HTTP over WS {data}: {carried}");
        assert_eq!(
            carried["body"]["error"]["code"], "encryption_required",
            "{carried}"
        );
        // MQTT 5 at QoS 1: PUBACK with reason 0x99, Payload format invalid.
        let debug = mosquitto_pub_debug(port, &["-V", "5", "-q", "1", "-t", &topic, "-m", data]);
        assert!(
            debug.contains("received PUBACK (Mid: 1, RC:153)"),
            "MQTT 5 {data}: {debug}"
        );
        // MQTT 3.1.1 (and QoS 0) cannot be told: dropped and counted, the device stays.
        assert!(common::mosquitto_pub(port, &["-q", "1", "-t", &topic, "-m", data]).await);
    }
    // A plaintext topic beside them is untouched.
    let reply = ws
        .request(json!({"op":"pub","topic":"plain/x","data":"hi"}))
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    // An envelope bound to its topic passes every way (byte for byte is the business of
    // the tests above); the watcher sees exactly these, in order, so none of the refused
    // ones slipped through.
    let mut sent = Vec::new();
    let web = envelope("secure/web");
    let (reply, (status, v), carried) = publish_web_ways(&d, &mut ws, "secure/web", &web).await;
    assert_eq!(
        (reply["op"].as_str(), status, carried["status"].as_u64()),
        (Some("ok"), 200, Some(200)),
        "{reply} {v} {carried}"
    );
    for _ in 0..3 {
        sent.push(("secure/web".to_owned(), web.clone()));
    }
    for version in ["5", "311"] {
        let topic = format!("secure/mqtt{version}");
        let text = envelope(&topic);
        let args = ["-V", version, "-q", "1", "-t", &topic, "-m", &text];
        assert!(common::mosquitto_pub(port, &args).await, "MQTT {version}");
        sent.push((topic, text));
    }
    for (topic, text) in sent {
        let frame: Value = serde_json::from_str(&next_msg_text(&mut watcher).await).expect("JSON");
        let sent: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            (&frame["topic"], &frame["data"]),
            (&json!(topic), &sent),
            "{frame}"
        );
    }
    // 3 payloads × 5 ways refused, each counted once.
    let metrics = d.metrics_text().await;
    assert!(
        metrics.contains(r#"messages_dropped_total{reason="not_encrypted"} 15"#)
            || metrics.contains(r#"messages_dropped{reason="not_encrypted"} 15"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("not_encrypted"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Refused ones were not kept as retained or history either: nothing but envelopes
    // reached the watcher (checked above), and the device connections were not closed.
    common::mqtt_still_serves(&d, "refused plaintext").await;
}

/// Publishes `data` (JSON text) to `topic` over the WebSocket, `POST /publish` and the
/// same carried over the WebSocket; the three answers.
async fn publish_web_ways(
    d: &Daemon,
    ws: &mut Raw,
    topic: &str,
    data: &str,
) -> (Value, (u16, Value), Value) {
    let frame = format!(r#"{{"op":"pub","topic":"{topic}","data":{data}}}"#);
    let reply = ws
        .request(serde_json::from_str(&frame).expect("frame"))
        .await;
    let body = format!(r#"{{"topic":"{topic}","data":{data}}}"#);
    let (status, v) = post(&api(d, "/publish"), None, &body).await;
    let body: Value = serde_json::from_str(&body).expect("body");
    let carried = ws
        .request(json!({"op": "http", "method": "POST", "path": "/api/v1/publish", "body": body}))
        .await;
    (reply, (status.as_u16(), v), carried)
}

/// `mosquitto_pub -d`'s account of the exchange, which shows an MQTT 5 reason code.
fn mosquitto_pub_debug(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-d", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run mosquitto_pub");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The configuration refuses a bad filter in `encrypted_only` with its position.
#[test]
fn encrypted_only_filters_are_checked_at_startup() {
    common::assert_startup_errors(&[(
        "[e2e]\nencrypted_only = [\"a/#/b\"]\n",
        ":2:18: `#` must be the last level",
    )]);
}

/// The next message on a subscription, opened by `who`.
async fn delivered(
    who: &switchboard_client::e2e::E2e,
    sub: &mut switchboard_client::Subscription,
) -> switchboard_client::e2e::Delivery {
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("a message in time")
        .expect("subscription open");
    who.open(&msg)
}

/// The next message must be a key share: its epoch.
async fn shared_epoch(
    who: &switchboard_client::e2e::E2e,
    sub: &mut switchboard_client::Subscription,
) -> u64 {
    match delivered(who, sub).await {
        switchboard_client::e2e::Delivery::RoomKey { epoch, .. } => epoch,
        other => panic!("expected a room key: {other:?}"),
    }
}

/// The next message must open: its plaintext.
async fn opened(
    who: &switchboard_client::e2e::E2e,
    sub: &mut switchboard_client::Subscription,
) -> Vec<u8> {
    match delivered(who, sub).await {
        switchboard_client::e2e::Delivery::Message { plaintext, .. } => plaintext,
        other => panic!("expected a message: {other:?}"),
    }
}

/// The next message must not open: why.
async fn refused(
    who: &switchboard_client::e2e::E2e,
    sub: &mut switchboard_client::Subscription,
) -> switchboard_e2e::OpenError {
    match delivered(who, sub).await {
        switchboard_client::e2e::Delivery::Undecryptable { error, .. } => error,
        other => panic!("expected an undecryptable message: {other:?}"),
    }
}

/// A user of the chat rooms with the client's end-to-end side and the fixture's key
/// pair, registered and subscribed to `chat/#`; with `subscribe: false` neither (the
/// same user again, on a fresh keyring, reading history).
async fn chat_member(
    d: &Daemon,
    file: &Value,
    name: &str,
    subscribe: bool,
) -> (
    switchboard_client::e2e::E2e,
    Option<switchboard_client::Subscription>,
    switchboard_client::Client,
) {
    let grants = json!({"publish": ["chat/#"], "subscribe": ["chat/#"]});
    let options =
        switchboard_client::ClientOptions::new(d.ws_url()).token(user_token(name, grants));
    let client = switchboard_client::Client::connect(options)
        .await
        .expect("connect");
    let e2e = switchboard_client::e2e::E2e::new(client.clone(), name, pair(file, name));
    if !subscribe {
        return (e2e, None, client);
    }
    e2e.register().await.expect("register");
    let sub = client.subscribe("chat/#").await.expect("subscribe");
    (e2e, Some(sub), client)
}

/// The Rust client's end-to-end side against the real daemon: keys registered, a sealed
/// message, a room created and shared, rotated when a member is removed (who then cannot
/// read), replays and moved envelopes reported, history read across epochs.
#[tokio::test(flavor = "multi_thread")]
async fn the_rust_client_runs_a_room_and_a_removed_member_cannot_read_after_rotation() {
    use switchboard_client::e2e::{Delivery, OpenError};
    use switchboard_client::Since;

    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(HISTORY));
    let file = fixture();
    let (alice, _, alice_client) = chat_member(&d, &file, "alice", true).await;
    let (bob, bob_sub, _) = chat_member(&d, &file, "bob", true).await;
    let (carol, carol_sub, _) = chat_member(&d, &file, "carol", true).await;
    let (mut bob_sub, mut carol_sub) = (bob_sub.expect("sub"), carol_sub.expect("sub"));
    let (room, keys) = ("chat/lobby", "chat/lobby/keys");

    // Epoch 1 to both members; a room message both read.
    assert_eq!(
        alice
            .create_room(room, &["bob", "carol"], keys)
            .await
            .expect("create"),
        1
    );
    for (who, sub) in [(&bob, &mut bob_sub), (&carol, &mut carol_sub)] {
        assert_eq!(shared_epoch(who, sub).await, 1);
    }
    alice
        .publish_room(room, room, b"one")
        .await
        .expect("publish");
    for (who, sub) in [(&bob, &mut bob_sub), (&carol, &mut carol_sub)] {
        match delivered(who, sub).await {
            Delivery::Message {
                plaintext, from, ..
            } => {
                assert_eq!(
                    (plaintext.as_slice(), from.as_str()),
                    (b"one".as_slice(), "alice")
                )
            }
            other => panic!("{other:?}"),
        }
    }
    // A sealed message to bob: carol sees it arrive and is told it is not for her.
    alice
        .publish_sealed("chat/dm", &["bob"], b"psst")
        .await
        .expect("seal");
    assert_eq!(opened(&bob, &mut bob_sub).await, b"psst");
    let error = refused(&carol, &mut carol_sub).await;
    assert!(matches!(error, OpenError::NotAddressed { .. }), "{error:?}");

    // Carol is removed: epoch 2 goes to bob alone, and carol cannot read what follows.
    assert_eq!(
        alice
            .rotate_room(room, &["bob"], keys)
            .await
            .expect("rotate"),
        2
    );
    assert_eq!(shared_epoch(&bob, &mut bob_sub).await, 2);
    let error = refused(&carol, &mut carol_sub).await;
    assert!(matches!(error, OpenError::NotAddressed { .. }), "{error:?}");
    alice
        .publish_room(room, room, b"two")
        .await
        .expect("publish");
    let msg = tokio::time::timeout(Duration::from_secs(10), bob_sub.recv())
        .await
        .expect("in time")
        .expect("open");
    let got = bob.open(&msg);
    assert!(
        matches!(&got, Delivery::Message { plaintext, .. } if plaintext == b"two"),
        "{got:?}"
    );
    let error = refused(&carol, &mut carol_sub).await;
    assert!(
        matches!(error, OpenError::UnknownRoomKey { .. }),
        "{error:?}"
    );
    // The same envelope again is a replay; moved to another topic, a mismatch.
    alice_client
        .publish(room, &msg.data)
        .await
        .expect("republish");
    let error = refused(&bob, &mut bob_sub).await;
    assert!(matches!(error, OpenError::Replayed { .. }), "{error:?}");
    alice_client
        .publish("chat/elsewhere", &msg.data)
        .await
        .expect("move");
    let error = refused(&bob, &mut bob_sub).await;
    assert!(matches!(error, OpenError::WrongTopic { .. }), "{error:?}");
    // Not an envelope at all: reported, not dropped.
    alice_client.publish(room, "plain").await.expect("plain");
    let error = refused(&bob, &mut bob_sub).await;
    assert!(matches!(error, OpenError::Malformed(_)), "{error:?}");

    // One more rotation: an envelope under the retired epoch 2 can no longer be injected
    // live (what a removed member holding an old key would try).
    assert_eq!(
        alice
            .rotate_room(room, &["bob"], keys)
            .await
            .expect("rotate"),
        3
    );
    assert_eq!(shared_epoch(&bob, &mut bob_sub).await, 3);
    alice_client
        .publish(room, &msg.data)
        .await
        .expect("republish");
    let error = refused(&bob, &mut bob_sub).await;
    assert!(matches!(error, OpenError::StaleEpoch { .. }), "{error:?}");

    // Bob on a new device state (same key pair, empty keyring) reads the history: the
    // key shares first, then messages of both epochs open, and what did not open live
    // is reported again (history is not checked for replays or retired epochs).
    let (bob_again, _, client) = chat_member(&d, &file, "bob", false).await;
    let mut shares = client
        .subscribe_since(keys, Some(Since::Last(10)))
        .await
        .expect("sub");
    for epoch in [1, 2, 3] {
        assert_eq!(shared_epoch(&bob_again, &mut shares).await, epoch);
    }
    let mut history = client
        .subscribe_since(room, Some(Since::Last(10)))
        .await
        .expect("sub");
    for text in [b"one".as_slice(), b"two", b"two"] {
        assert_eq!(opened(&bob_again, &mut history).await, text);
    }
    let error = refused(&bob_again, &mut history).await;
    assert!(matches!(error, OpenError::Malformed(_)), "{error:?}");
    assert_eq!(opened(&bob_again, &mut history).await, b"two");
}

/// Resume after a disconnect (`sub` with `since` and `epoch`) hands back the envelopes
/// missed, byte for byte, and they open as history.
#[tokio::test(flavor = "multi_thread")]
async fn resume_after_a_disconnect_returns_missed_envelopes_byte_for_byte() {
    let d = Daemon::start(HISTORY);
    let bob = pair(&fixture(), "bob");
    let envelope = |text: &str| {
        let jwe = seal(
            text.as_bytes(),
            &[bob.public().clone()],
            Binding::new(Kind::Sealed, "dm/resume", "alice"),
        )
        .expect("seal");
        serde_json::to_string(&jwe).expect("json")
    };
    let publish = |text: String| {
        let url = api(&d, "/publish");
        async move {
            let (s, v) = post(
                &url,
                None,
                &format!(r#"{{"topic":"dm/resume","data":{text}}}"#),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    let mut ws = Raw::connect(&d.ws_url()).await;
    let ok = ws.request(json!({"op":"sub","topic":"dm/resume"})).await;
    let epoch = ok["epoch"].clone();
    publish(envelope("first")).await;
    let seen: Value = serde_json::from_str(&next_msg_text(&mut ws).await).expect("JSON");
    drop(ws);
    let missed = [envelope("second"), envelope("third")];
    for text in &missed {
        publish(text.clone()).await;
    }
    let mut ws = Raw::connect(&d.ws_url()).await;
    let ok = ws
        .request(json!({"op":"sub","topic":"dm/resume","since":seen["seq"],"epoch":epoch}))
        .await;
    assert_eq!(
        (ok["recovered"].as_bool(), ok["history"].as_u64()),
        (Some(true), Some(2)),
        "{ok}"
    );
    let mut inbox = Inbox::new(bob.clone());
    for (text, plain) in missed.iter().zip(["second", "third"]) {
        let frame = next_msg_text(&mut ws).await;
        assert!(
            frame.contains(&format!(r#""data":{text},"#)),
            "not byte-identical: {frame}"
        );
        let frame: Value = serde_json::from_str(&frame).expect("JSON");
        assert_eq!(frame["history"], true, "{frame}");
        match inbox.open("dm/resume", None, &frame["data"], Reading::History) {
            Ok(Received::Message(m)) => assert_eq!(m.plaintext, plain.as_bytes()),
            other => panic!("{other:?}"),
        }
    }
}

/// Reads deliveries until the share of `epoch`; the epochs of the shares on the way.
async fn shares_until(
    who: &switchboard_client::e2e::E2e,
    sub: &mut switchboard_client::Subscription,
    epoch: u64,
) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        match delivered(who, sub).await {
            switchboard_client::e2e::Delivery::RoomKey { epoch: e, .. } => {
                seen.push(e);
                if e >= epoch {
                    return seen;
                }
            }
            other => panic!("expected key shares: {other:?}"),
        }
    }
}

/// A room rotates on its own schedule: its creator moves it to a new epoch every
/// interval and shares each to the members of the last share, so a removal holds for
/// the scheduled epochs too; old epochs stay readable as history.
#[tokio::test(flavor = "multi_thread")]
async fn a_room_rotates_on_schedule_to_its_current_members() {
    use std::sync::Arc;
    use switchboard_client::e2e::{Delivery, E2eError, OpenError};
    use switchboard_client::Since;

    let secrets = Secrets::new();
    let d = Daemon::start(&secrets.config(HISTORY));
    let file = fixture();
    let mut member = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (e2e, sub, _) = chat_member(&d, &file, name, true).await;
        member.push((Arc::new(e2e), sub.expect("sub")));
    }
    let [(alice, _alice_sub), (bob, mut bob_sub), (carol, mut carol_sub)] =
        <[_; 3]>::try_from(member).expect("three");
    let (room, keys) = ("chat/lobby", "chat/lobby/keys");
    let every = Duration::from_millis(400);

    alice
        .create_room(room, &["bob", "carol"], keys)
        .await
        .expect("create");
    alice.publish_room(room, room, b"one").await.expect("one");
    alice.rotate_every(room, Some(every)).expect("schedule");
    // Only the room's admin keeps its members, so only it can schedule.
    assert!(matches!(
        bob.rotate_every(room, Some(every)),
        Err(E2eError::NotAdmin(_))
    ));

    // Epochs 2 and 3 arrive with nobody asking, one share each, in order.
    for (who, sub) in [(&bob, &mut bob_sub), (&carol, &mut carol_sub)] {
        assert_eq!(shares_until(who, sub, 1).await, [1]);
        assert_eq!(opened(who, sub).await, b"one");
        assert_eq!(shares_until(who, sub, 3).await, [2, 3]);
    }
    let epoch = alice.room_epoch(room).expect("held");
    assert!(epoch >= 3, "{epoch}");

    // Carol is removed: the next epoch and every scheduled one after go to bob alone.
    let removed_at = alice
        .rotate_room(room, &["bob"], keys)
        .await
        .expect("rotate");
    let seen = shares_until(&bob, &mut bob_sub, removed_at + 1).await;
    assert_eq!(seen.last(), Some(&(removed_at + 1)), "{seen:?}");
    let mut not_for_carol = 0;
    while not_for_carol < 2 {
        match delivered(&carol, &mut carol_sub).await {
            Delivery::RoomKey { epoch, .. } => {
                assert!(epoch < removed_at, "carol got epoch {epoch} after removal")
            }
            Delivery::Undecryptable {
                error: OpenError::NotAddressed { .. },
                ..
            } => not_for_carol += 1,
            other => panic!("{other:?}"),
        }
    }
    alice
        .publish_room(room, room, b"later")
        .await
        .expect("later");
    loop {
        match delivered(&bob, &mut bob_sub).await {
            Delivery::RoomKey { .. } => continue,
            Delivery::Message { plaintext, .. } => break assert_eq!(plaintext, b"later"),
            other => panic!("{other:?}"),
        }
    }
    alice.rotate_every(room, None).expect("stop");

    // History reads across every epoch: a fresh keyring takes the shares, then both
    // messages open, the first under epoch 1 and the last under a scheduled epoch.
    let (bob_again, _, client) = chat_member(&d, &file, "bob", false).await;
    let mut shares = client
        .subscribe_since(keys, Some(Since::Last(100)))
        .await
        .expect("sub");
    let held = alice.room_epoch(room).expect("held");
    assert_eq!(
        shares_until(&bob_again, &mut shares, held).await.len() as u64,
        held
    );
    let mut history = client
        .subscribe_since(room, Some(Since::Last(10)))
        .await
        .expect("sub");
    for text in [b"one".as_slice(), b"later"] {
        assert_eq!(opened(&bob_again, &mut history).await, text);
    }
}
