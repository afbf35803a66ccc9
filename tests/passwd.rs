//! `switchboard passwd` as an operator uses it: the real binary creating, extending,
//! updating and pruning a password file, the library reading the result, and, when
//! Mosquitto is installed, both directions of compatibility with `mosquitto_passwd`
//! and the Mosquitto broker itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use switchboard::auth::passwd::{PasswordFile, DEFAULT_ITERATIONS};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Runs `switchboard passwd ARGS`, with `stdin` piped in (or empty).
fn passwd(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run switchboard");
    let mut input = child.stdin.take().expect("stdin");
    // A command that fails before reading (bad username, missing file) closes its end
    // first; the broken pipe is expected then, and the exit status tells the story.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("wait for switchboard")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_ok(output: &Output) {
    assert!(output.status.success(), "failed: {}", stderr(output));
    assert!(output.stdout.is_empty(), "printed {:?}", output.stdout);
}

/// Asserts a failure with a message containing `expected` and none of `secrets`.
#[track_caller]
fn assert_fails(output: &Output, expected: &str, secrets: &[&str]) {
    let message = stderr(output);
    assert!(!output.status.success(), "succeeded: {message}");
    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    let all = format!("{message}{}", String::from_utf8_lossy(&output.stdout));
    for secret in secrets.iter().chain(&["$7$", "$6$"]) {
        assert!(!all.contains(secret), "{all:?} shows {secret:?}");
    }
}

/// `user:$7$<DEFAULT_ITERATIONS>$<12-byte salt>$<64-byte hash>`, as mosquitto_passwd
/// writes it; returns the username.
#[track_caller]
fn check_line_shape(line: &str) -> &str {
    let (user, hash) = line.split_once(':').expect("user:hash");
    let parts: Vec<&str> = hash.split('$').collect();
    assert_eq!(parts.len(), 5, "{line}");
    assert_eq!(parts[..3], ["", "7", &DEFAULT_ITERATIONS.to_string()]);
    assert_eq!(parts[3].len(), 16, "salt is base64 of 12 bytes: {line}");
    assert_eq!(parts[4].len(), 88, "hash is base64 of 64 bytes: {line}");
    user
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read the password file")
}

fn which(program: &str) -> bool {
    Command::new("which")
        .arg(program)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn create_add_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let path = file.to_str().unwrap();

    assert_ok(&passwd(&["-c", "-b", path, "alice", "alice-1"], ""));
    let text = read(&file);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(check_line_shape(lines[0]), "alice");
    assert!(text.ends_with('\n'));
    let alice_1 = lines[0].to_owned();

    // Not a terminal: one line from standard input, so scripts can pipe the password.
    assert_ok(&passwd(&[path, "bob"], "bob pass 1\n"));
    let text = read(&file);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], alice_1, "other users are left alone");
    assert_eq!(check_line_shape(lines[1]), "bob");
    let bob_1 = lines[1].to_owned();

    // Updating keeps the order of the file.
    assert_ok(&passwd(&["--batch", path, "alice", "alice-2"], ""));
    let text = read(&file);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(check_line_shape(lines[0]), "alice");
    assert_ne!(lines[0], alice_1);
    assert_eq!(lines[1], bob_1);

    let loaded = PasswordFile::load(&file).unwrap();
    assert_eq!(loaded.len(), 2);
    assert!(loaded.verify("alice", "alice-2"));
    assert!(!loaded.verify("alice", "alice-1"));
    assert!(loaded.verify("bob", "bob pass 1"));
    assert!(!loaded.verify("carol", "bob pass 1"));

    assert_ok(&passwd(&["-D", path, "bob"], ""));
    let text = read(&file);
    assert_eq!(text.lines().collect::<Vec<_>>(), [lines[0]]);
    let loaded = PasswordFile::load(&file).unwrap();
    assert!(!loaded.contains("bob"));
    assert!(loaded.verify("alice", "alice-2"));

    // -c starts over.
    assert_ok(&passwd(&["-c", path, "carol"], "carol-1\r\n"));
    let loaded = PasswordFile::load(&file).unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(loaded.verify("carol", "carol-1"), "CRLF input is one line");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn errors_exit_non_zero_and_never_show_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let path = file.to_str().unwrap();

    let out = passwd(&["-b", path, "alice", "s3cret-a"], "");
    assert_fails(&out, "does not exist (use -c to create it)", &["s3cret-a"]);
    assert!(!file.exists());

    assert_ok(&passwd(&["-c", "-b", path, "alice", "s3cret-a"], ""));
    let before = read(&file);

    let out = passwd(&["-D", path, "nobody"], "");
    assert_fails(&out, "user \"nobody\" is not in", &[]);

    let out = passwd(&["-b", path, "a:b", "s3cret-b"], "");
    assert_fails(&out, "invalid username \"a:b\"", &["s3cret-b"]);

    // The username is checked before the password is read.
    let out = passwd(&[path, "#bob"], "s3cret-c\n");
    assert_fails(&out, "invalid username", &["s3cret-c"]);

    let out = passwd(&[path, "bob"], "");
    assert_fails(&out, "no password on standard input", &[]);

    let out = passwd(&[path, "bob"], "\n");
    assert_fails(&out, "invalid password: it is empty", &[]);

    let out = passwd(&["-b", path], "");
    assert!(!out.status.success());

    assert_eq!(read(&file), before, "failed commands leave the file alone");

    // A broken file is refused with its name and line, without quoting the line.
    std::fs::write(&file, format!("{before}bob:s3cret-d\n")).unwrap();
    let out = passwd(&["-b", path, "carol", "s3cret-e"], "");
    assert_fails(
        &out,
        &format!("{path}:2: bad password hash for user \"bob\": the password is not hashed"),
        &["s3cret-d", "s3cret-e"],
    );
}

/// Files move both ways between `mosquitto_passwd` and us.
#[test]
fn shares_files_with_mosquitto_passwd() {
    if !which("mosquitto_passwd") {
        println!("note: mosquitto_passwd is not installed; skipping the compatibility check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let path = file.to_str().unwrap();
    let mosquitto_passwd = |args: &[&str]| {
        let status = Command::new("mosquitto_passwd")
            .args(args)
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd {args:?}");
    };

    mosquitto_passwd(&["-c", "-b", path, "m7", "pw for m7"]);
    mosquitto_passwd(&["-H", "sha512", "-b", path, "m6", "pw for m6"]);
    let text = read(&file);
    assert!(text.contains("m7:$7$101$"), "{text}");
    assert!(text.contains("m6:$6$"), "{text}");
    let loaded = PasswordFile::load(&file).unwrap();
    assert!(loaded.verify("m7", "pw for m7"));
    assert!(loaded.verify("m6", "pw for m6"));
    assert!(!loaded.verify("m7", "pw for m6"));

    // We add to their file, then they add to ours.
    assert_ok(&passwd(&[path, "ours"], "our pw\n"));
    mosquitto_passwd(&["-b", path, "theirs", "their pw"]);
    let loaded = PasswordFile::load(&file).unwrap();
    assert_eq!(loaded.len(), 4);
    assert!(loaded.verify("m7", "pw for m7"));
    assert!(loaded.verify("m6", "pw for m6"));
    assert!(loaded.verify("ours", "our pw"));
    assert!(loaded.verify("theirs", "their pw"));
}

/// The Mosquitto broker accepts the passwords in a file we wrote, and refuses wrong ones.
#[test]
fn mosquitto_broker_accepts_our_file() {
    if !which("mosquitto") {
        println!("note: mosquitto is not installed; skipping the broker check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let path = file.to_str().unwrap();
    assert_ok(&passwd(&["-c", "-b", path, "alice", "alice's pw"], ""));
    // A comment, kept by us and skipped by the broker.
    let text = read(&file);
    std::fs::write(&file, format!("# devices\n{text}")).unwrap();
    assert_ok(&passwd(&[path, "sensor-7"], "sensor pw\n"));
    assert!(read(&file).starts_with("# devices\n"));

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let config = dir.path().join("mosquitto.conf");
    let mut conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {path}\npersistence false\n"
    );
    // As root, Mosquitto drops to user `mosquitto` before reading the file, and our
    // file is 0600. Unprivileged, it does not change user at all.
    if is_root() {
        conf.push_str("user root\n");
    }
    std::fs::write(&config, conf).unwrap();
    let broker = Broker(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(mqtt_connect(port, "alice", "alice's pw"), 0, "accepted");
    assert_eq!(mqtt_connect(port, "sensor-7", "sensor pw"), 0, "accepted");
    assert_ne!(
        mqtt_connect(port, "alice", "sensor pw"),
        0,
        "wrong password"
    );
    assert_ne!(mqtt_connect(port, "bob", "alice's pw"), 0, "unknown user");
    drop(broker);
}

/// Kills the broker when the test ends, passed or failed.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Sends an MQTT 3.1.1 CONNECT with a username and password and returns the CONNACK
/// return code (0: accepted; 4 or 5: bad credentials).
fn mqtt_connect(port: u16, username: &str, password: &str) -> u8 {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0b1100_0010); // username, password, clean session
    body.extend_from_slice(&30u16.to_be_bytes()); // keep-alive
    string(&mut body, format!("switchboard-test-{username}").as_bytes());
    string(&mut body, username.as_bytes());
    string(&mut body, password.as_bytes());
    assert!(body.len() < 128, "one-byte remaining length");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);

    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&packet).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack[..2], [0x20, 2], "CONNACK");
    connack[3]
}
