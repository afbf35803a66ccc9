//! The local store under faults, against the real daemon and its real files: a store
//! damaged on disk (a zeroed page, a file cut to half) is refused at start with an error
//! naming the directory and an exit status systemd does not retry, never a panic and
//! never a silent empty start; `switchboard store check` says the same.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use common::{Daemon, Raw, BIN};
use serde_json::json;

const HISTORY: &str = r#"
[[history.topics]]
filter = "log/#"
keep = 1000000

[ws]
publish_rate = 1000000
publish_burst = 1000000
"#;

/// The exit status of a store that starting again cannot fix (EX_DATAERR); the
/// packaged unit names it in RestartPreventExitStatus=.
const UNUSABLE: i32 = 65;

/// A daemon whose store holds 3,000 history messages (3 MB: sled's file spans several of
/// its 512 KiB segments, as a store in use does), stopped cleanly; the path of sled's
/// data file.
async fn stopped_with_history() -> (Daemon, PathBuf) {
    let mut daemon = Daemon::start(HISTORY);
    let mut c = Raw::connect(&daemon.ws_url()).await;
    let pad = "x".repeat(1000);
    // In pipelined chunks: replies come in order, so the last one of a chunk means
    // every publish in it was handled.
    for chunk in 0..30 {
        let ids = chunk * 100..(chunk + 1) * 100;
        for i in ids.clone() {
            c.send(json!({"op":"pub","id":i,"topic":"log/a","data":{"i":i,"pad":pad}}))
                .await;
        }
        loop {
            let r = c.recv().await;
            assert_ne!(r["op"], "error", "{r}");
            if r["id"] == ids.end - 1 {
                break;
            }
        }
    }
    daemon.stop();
    let db = daemon.data_dir().join("store").join("db");
    let len = std::fs::metadata(&db).expect("sled's data file").len();
    assert!(
        len > 2 << 20,
        "the store spans several segments: {len} bytes"
    );
    (daemon, db)
}

/// sled's segment size (its default, which the store keeps).
const SEGMENT: u64 = 512 * 1024;

/// Zeroes the first 4 KiB of the segment that starts at `at` (a segment's header is what
/// sled's recovery reads first).
fn zero_4k(file: &Path, at: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&[0u8; 4096]).expect("write");
    f.sync_all().expect("sync");
}

fn cut_to_half(file: &Path) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open");
    let len = f.metadata().expect("size").len();
    f.set_len(len / 2).expect("truncate");
}

/// `switchboard store check` on the daemon's configuration and data directory.
fn store_check(daemon: &Daemon) -> std::process::Output {
    Command::new(BIN)
        .args(["store", "check", "--config"])
        .arg(&daemon.config_path)
        .env("SWITCHBOARD_DATA_DIR", daemon.data_dir())
        .output()
        .expect("run store check")
}

/// The daemon refuses the store: the right exit status, the directory named, what to
/// do, and no panic; `store check` says the same.
fn assert_refused(daemon: &Daemon, status: ExitStatus, stderr: &str) {
    let store = daemon.data_dir().join("store");
    assert_eq!(status.code(), Some(UNUSABLE), "{stderr}");
    assert!(stderr.contains(&store.display().to_string()), "{stderr}");
    assert!(stderr.contains("move the directory aside"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
    let check = store_check(daemon);
    let out = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(UNUSABLE), "{out}");
    assert!(out.contains(&store.display().to_string()), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

/// Moving the store aside, as the error says, starts the daemon afresh.
fn assert_moving_aside_starts_afresh(daemon: &mut Daemon) {
    let store = daemon.data_dir().join("store");
    std::fs::rename(&store, daemon.data_dir().join("store.damaged")).expect("move aside");
    daemon.respawn();
    assert!(daemon.logs().contains("listening"));
}

#[tokio::test]
async fn a_zeroed_page_is_refused_with_the_directory_named_and_no_panic() {
    let (mut daemon, db) = stopped_with_history().await;
    // Where live data sits in sled's log depends on timing (pages are rewritten as they
    // change, leaving old copies behind), so zero a page in the middle, then the next
    // segment's, and so on, until one held live data: the daemon must then refuse.
    // sled alone panics ("tried to serialize Uninitialized") or drops what follows.
    let len = std::fs::metadata(&db).expect("size").len();
    let mut at = len / 2 / SEGMENT * SEGMENT;
    let refused = loop {
        assert!(
            at < len,
            "zeroing every segment from the middle on went unnoticed"
        );
        zero_4k(&db, at);
        match daemon.run_to_exit() {
            (Some(status), stderr) => break (status, stderr),
            // Started: the page held only superseded data.
            (None, _) => at += SEGMENT,
        }
    };
    assert_refused(&daemon, refused.0, &refused.1);
    assert_moving_aside_starts_afresh(&mut daemon);
}

#[tokio::test]
async fn a_store_cut_to_half_is_refused_rather_than_started_empty() {
    let (mut daemon, db) = stopped_with_history().await;
    cut_to_half(&db);
    let (status, stderr) = daemon.run_to_exit();
    let status = status.unwrap_or_else(|| panic!("started on half a store:\n{stderr}"));
    assert_refused(&daemon, status, &stderr);
    assert_moving_aside_starts_afresh(&mut daemon);
}

#[tokio::test]
async fn store_check_passes_a_sound_store_and_the_daemon_reopens_it() {
    let (mut daemon, _) = stopped_with_history().await;
    let check = store_check(&daemon);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains(": ok:"), "{out}");
    assert!(out.contains("history/messages: 3000"), "{out}");
    // Checking changed nothing the daemon checks in turn.
    daemon.respawn();
    let mut c = Raw::connect(&daemon.ws_url()).await;
    let r = c
        .request(json!({"op":"sub","topic":"log/a","last":1000}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    assert_eq!(r["seq"], 3000, "{r}");
}
