//! The local store under faults, against the real daemon and its real files: a store
//! damaged on disk (a zeroed page, a file cut to half) is refused at start with an error
//! naming the directory and an exit status systemd does not retry, never a panic and
//! never a silent empty start; `switchboard store check` says the same. A full disk
//! (a small tmpfs of the test's own, which needs root: CI runs as root) shows in
//! `/healthz` and `/metrics` while delivery goes on, and history tells a resuming
//! client it missed messages. A stalled disk (an ext4 image frozen with `fsfreeze`,
//! root only too) holds back no other client, whichever part of the daemon is storing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use common::http::{api, post};
use common::{Daemon, Raw, BIN};
use reqwest::StatusCode;
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

/// A daemon whose store holds 3,000 history messages, stopped cleanly; the path of
/// sled's data file. The history's runs are in files beside sled's, which holds
/// pointers to them; a webhook whose endpoint never answers holds the same messages in
/// sled, 3 MB, so its file spans several of its segments, as a store in use does.
async fn stopped_with_history() -> (Daemon, PathBuf) {
    let secret = tempfile::tempdir()
        .expect("tempdir")
        .keep()
        .join("hook.secret");
    std::fs::write(&secret, "a-webhook-secret-of-enough-length\n").expect("secret");
    let config = format!(
        "{HISTORY}\n[[webhooks]]\nname = \"down\"\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"{}\"\ntopics = [\"log/#\"]\nretry_initial = \"1h\"\n",
        secret.display()
    );
    let mut daemon = Daemon::start(&config);
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
    let segment = segment_size(&db);
    assert!(
        len > 4 * segment,
        "the store spans several {segment}-byte segments: {len} bytes"
    );
    (daemon, db)
}

/// The segment size sled recorded for the store whose data file is `db` (its `conf`
/// file beside it: `segment_size: N` among text lines, then a checksum), so that faults
/// land on segment boundaries whatever size the store uses.
fn segment_size(db: &Path) -> u64 {
    let conf = std::fs::read(db.with_file_name("conf")).expect("sled's conf file");
    String::from_utf8_lossy(&conf[..conf.len() - 4])
        .lines()
        .find_map(|l| l.strip_prefix("segment_size:")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no segment size in {conf:?}"))
}

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
    store_command(daemon, "check")
}

/// `switchboard store <what>`, which must succeed; its output.
fn store_succeeds(daemon: &Daemon, what: &str) -> String {
    let out = store_command(daemon, what);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The entries `store check` or `store salvage` reports for a tree (`name: N`).
fn tree_entries(report: &str, tree: &str) -> u64 {
    report
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix(tree)?.strip_prefix(": ")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {tree} in {report}"))
}

/// `switchboard store <what>` on the daemon's configuration and data directory.
fn store_command(daemon: &Daemon, what: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["store", what, "--config"])
        .arg(&daemon.config_path)
        .env("SWITCHBOARD_DATA_DIR", daemon.data_dir())
        .output()
        .unwrap_or_else(|e| panic!("run store {what}: {e}"))
}

/// The daemon refuses the store: the right exit status, the directory named, what to
/// do, and no panic; `store check` says the same.
fn assert_refused(daemon: &Daemon, status: ExitStatus, stderr: &str) {
    assert_refused_by_the_daemon(daemon, status, stderr);
    assert_check_refuses(daemon, &store_check(daemon));
}

fn assert_refused_by_the_daemon(daemon: &Daemon, status: ExitStatus, stderr: &str) {
    let store = daemon.data_dir().join("store");
    assert_eq!(status.code(), Some(UNUSABLE), "{stderr}");
    assert!(stderr.contains(&store.display().to_string()), "{stderr}");
    assert!(stderr.contains("move the directory aside"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

fn assert_check_refuses(daemon: &Daemon, check: &std::process::Output) {
    let store = daemon.data_dir().join("store");
    let out = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(UNUSABLE), "{out}");
    assert!(out.contains(&store.display().to_string()), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

/// Moving the store aside, as the error says, starts the daemon afresh.
async fn assert_moving_aside_starts_afresh(daemon: &mut Daemon) {
    let store = daemon.data_dir().join("store");
    std::fs::rename(&store, daemon.data_dir().join("store.damaged")).expect("move aside");
    daemon.respawn();
    let mut c = Raw::connect(&daemon.ws_url()).await;
    let r = c.request(json!({"op":"sub","topic":"log/a"})).await;
    assert_eq!(
        (r["op"].as_str(), r["seq"].as_u64()),
        (Some("ok"), Some(0)),
        "{r}"
    );
}

#[tokio::test]
async fn a_zeroed_page_is_refused_with_the_directory_named_and_no_panic() {
    let (mut daemon, db) = stopped_with_history().await;
    // Where live data sits in sled's log depends on timing (pages are rewritten as they
    // change, leaving old copies behind, and cleaned segments are reused from the start
    // of the file), so zero a page in the middle, then the next segment's, and so on to
    // the end and round from the start, until one held live data: the daemon must then
    // refuse. sled alone panics ("tried to serialize Uninitialized") or drops what follows.
    let len = std::fs::metadata(&db).expect("size").len();
    let segment = segment_size(&db);
    let segments = len.div_ceil(segment);
    let mut order = (segments / 2..segments).chain(0..segments / 2);
    let refused = loop {
        let at = order.next().expect("zeroing every segment went unnoticed") * segment;
        zero_4k(&db, at);
        match daemon.run_to_exit() {
            (Some(status), stderr) => break (status, stderr),
            // Started: the page held only superseded data (and the clean stop that
            // followed counted the entries afresh).
            (None, _) => continue,
        }
    };
    assert_refused(&daemon, refused.0, &refused.1);
    assert_moving_aside_starts_afresh(&mut daemon).await;
}

#[tokio::test]
async fn a_store_cut_to_half_is_refused_rather_than_started_empty() {
    let (mut daemon, db) = stopped_with_history().await;
    cut_to_half(&db);
    // Whether the lost half held anything live depends on where sled put it: it reuses
    // freed segments anywhere in the file and keeps large leaves in `blobs/`, so the cut
    // may take only space it had freed. Either way no message may be lost silently.
    let (status, stderr) = daemon.run_to_exit();
    match status {
        Some(status) => {
            assert_refused_by_the_daemon(&daemon, status, &stderr);
            // sled's first open may have cut its log at the tear (and panicked on it);
            // what remains must then still hold everything counted at the clean stop,
            // or the check refuses it too.
            let check = store_check(&daemon);
            let out = String::from_utf8_lossy(&check.stdout);
            if check.status.success() {
                assert!(out.contains(": ok:"), "{out}");
                daemon.respawn();
                assert_all_3000_kept(&daemon).await;
                daemon.stop();
            } else {
                assert_check_refuses(&daemon, &check);
            }
        }
        None => {
            // Started: then with every message.
            daemon.respawn();
            assert_all_3000_kept(&daemon).await;
            daemon.stop();
        }
    }
    assert_moving_aside_starts_afresh(&mut daemon).await;
}

/// The 3,000 messages of [`stopped_with_history`] are all there (the 1,000 the rule
/// keeps), the newest read back in order.
async fn assert_all_3000_kept(daemon: &Daemon) {
    let mut c = Raw::connect(&daemon.ws_url()).await;
    let r = c
        .request(json!({"op":"sub","topic":"log/a","last":1000}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    assert_eq!(r["seq"], 3000, "{r}");
    assert_eq!(r["history"], 1000, "{r}");
    let mut c = Raw::connect(&daemon.ws_url()).await;
    let r = c
        .request(json!({"op":"sub","topic":"log/a","last":100}))
        .await;
    assert_eq!(r["history"], 100, "{r}");
    for i in 2900..3000 {
        let m = c.recv().await;
        assert_eq!(m["data"]["i"], i, "{m}");
    }
}

#[tokio::test]
async fn store_check_passes_a_sound_store_and_the_daemon_reopens_it() {
    let (mut daemon, _) = stopped_with_history().await;
    let out = store_succeeds(&daemon, "check");
    assert!(out.contains(": ok:"), "{out}");
    // The 3,000 messages are stored in runs, several to a record.
    let runs = tree_entries(&out, "history/messages");
    assert!(runs > 0 && runs < 3000, "{out}");
    // Checking changed nothing the daemon checks in turn.
    daemon.respawn();
    assert_all_3000_kept(&daemon).await;
}

/// The history's runs live in files beside sled's, each with its checksum in sled. A
/// run file damaged while the daemon was stopped (a flipped byte; the file cut short,
/// as a power loss leaves what was never synced) loses those runs and says so:
/// `store check` names them, the daemon starts, and a client asking across them is
/// told its recovery is incomplete and gets only messages that are what was published,
/// in order. Never another message's bytes, never a panic.
#[tokio::test]
async fn a_damaged_run_file_loses_its_runs_and_says_so_never_misreads() {
    let (mut daemon, _) = stopped_with_history().await;
    let dir = daemon
        .data_dir()
        .join("store")
        .join("runs")
        .join("history-messages");
    let mut run_files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .expect("the history's run files")
        .flatten()
        .map(|e| (e.metadata().expect("size").len(), e.path()))
        .collect();
    run_files.sort();
    let (len, file) = run_files.pop().expect("a run file");
    assert!(len > 2_000_000, "the 3,000 messages are in one file: {len}");
    let mut bytes = std::fs::read(&file).expect("read");
    // A flipped byte among the newest thousand, and the last 100 kB gone.
    let flip = bytes.len() * 5 / 6;
    bytes[flip] ^= 0x20;
    bytes.truncate(bytes.len() - 100_000);
    std::fs::write(&file, &bytes).expect("write");

    let out = store_succeeds(&daemon, "check");
    assert!(out.contains("usable, "), "{out}");
    assert!(out.contains("checksum does not match"), "{out}");
    assert!(out.contains("cut short"), "{out}");

    daemon.respawn();
    let mut c = Raw::connect(&daemon.ws_url()).await;
    let r = c
        .request(json!({"op":"sub","topic":"log/a","last":1000}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    assert_eq!(
        r["seq"], 3000,
        "the position was saved at the clean stop: {r}"
    );
    assert_eq!(r["recovered"], false, "{r}");
    let got = r["history"].as_u64().expect("history");
    assert!(got > 500 && got < 1000, "{r}");
    let mut last = 2000;
    for _ in 0..got {
        let m = c.next_msg().await;
        let seq = m["seq"].as_u64().expect("seq");
        assert!(seq > last, "in order: {m}");
        assert_eq!(m["data"]["i"].as_u64(), Some(seq - 1), "{m}");
        assert_eq!(m["data"]["pad"].as_str(), Some(&*"x".repeat(1000)), "{m}");
        last = seq;
    }
    // Live messages go on from the saved position.
    let r = c
        .request(json!({"op":"pub","topic":"log/a","data":{"i":3000}}))
        .await;
    assert_eq!(r["seq"], 3001, "{r}");
}

/// A store written before the segment size was set (sled's 512 KiB default) keeps that
/// size, which sled insists on, and everything in it; a new store, and a salvaged copy,
/// get the current 256 KiB.
#[tokio::test]
async fn a_store_made_under_512_kib_segments_opens_with_its_history_and_keeps_them() {
    let (mut daemon, db) = stopped_with_history().await;
    assert_eq!(segment_size(&db), 256 * 1024);
    // Rewrite the store as an older build left it: the same trees and manifest, under
    // sled's default segments.
    let store = daemon.data_dir().join("store");
    let old = daemon.data_dir().join("store.old");
    {
        let now = sled::Config::new()
            .path(&store)
            .segment_size(256 * 1024)
            .open()
            .expect("open the store");
        let before = sled::Config::new().path(&old).open().expect("create");
        before.import(now.export());
        before.flush().expect("flush");
    }
    std::fs::copy(
        store.join("switchboard.manifest"),
        old.join("switchboard.manifest"),
    )
    .expect("copy the manifest");
    std::fs::rename(store.join("runs"), old.join("runs")).expect("move the run files");
    std::fs::remove_dir_all(&store).expect("remove");
    std::fs::rename(&old, &store).expect("rename");
    assert_eq!(segment_size(&db), 512 * 1024);

    daemon.respawn();
    let mut c = Raw::connect(&daemon.ws_url()).await;
    c.flood_from("log/a", 3000, 3100, 10).await;
    let r = c
        .request(json!({"op":"sub","topic":"log/a","last":1000}))
        .await;
    assert_eq!(
        (r["seq"].as_u64(), r["history"].as_u64()),
        (Some(3100), Some(1000)),
        "{r}"
    );
    // The oldest of them was written under the old build.
    let first = c.next_msg().await;
    assert_eq!(
        (first["seq"].as_u64(), first["data"]["i"].as_u64()),
        (Some(2101), Some(2100)),
        "{first}"
    );
    daemon.stop();
    assert_eq!(segment_size(&db), 512 * 1024);
    let out = store_succeeds(&daemon, "check");
    assert!(out.contains(": ok:"), "{out}");

    // Salvage writes a new store, under the current segments, with every entry.
    store_succeeds(&daemon, "salvage");
    let salvaged = daemon.data_dir().join("salvaged").join("store").join("db");
    assert_eq!(segment_size(&salvaged), 256 * 1024);
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_refused_store_is_salvaged_into_a_new_one_and_left_untouched() {
    let (mut daemon, _) = stopped_with_history().await;
    let runs = tree_entries(&store_succeeds(&daemon, "check"), "history/messages");
    // The manifest counted more than the store holds: what a store that lost entries
    // looks like, but one sled still reads (as after a damaged page whose entries sled
    // drops), so there is something to salvage.
    let store = daemon.data_dir().join("store");
    let manifest = store.join("switchboard.manifest");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let claimed: String = text
        .lines()
        .map(|l| {
            if l.starts_with("entries ") {
                "entries 999999"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&manifest, claimed + "\n").expect("write manifest");
    let (status, stderr) = daemon.run_to_exit();
    assert_eq!(status.and_then(|s| s.code()), Some(UNUSABLE), "{stderr}");

    let before = files(&store);
    let stdout = store_succeeds(&daemon, "salvage");
    assert_eq!(tree_entries(&stdout, "history/messages"), runs, "{stdout}");
    assert!(files(&store) == before, "salvage changed the damaged store");

    // Put in place as the report says, the salvaged store serves the history.
    std::fs::rename(&store, daemon.data_dir().join("store.damaged")).expect("move aside");
    std::fs::rename(daemon.data_dir().join("salvaged").join("store"), &store)
        .expect("move the salvaged store in");
    daemon.respawn();
    let mut c = Raw::connect(&daemon.ws_url()).await;
    let r = c
        .request(json!({"op":"sub","topic":"log/a","last":1000}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["seq"].as_u64()),
        (Some("ok"), Some(3000)),
        "{r}"
    );
    // The newest of them (as many as the connection's queue takes), ending with the last.
    let mut last = c.next_msg().await;
    while last["data"]["i"] != 2999 {
        assert_eq!(last["history"], true, "{last}");
        assert_eq!(
            last["seq"].as_u64(),
            last["data"]["i"].as_u64().map(|i| i + 1)
        );
        last = c.next_msg().await;
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped; `None` (with
/// the reason printed) where this process may not mount, that is when not root.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs(dir)),
            Ok(out) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs (root only): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![1u8; 64 * 1024];
        while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Publishes `n` messages on `log/a`, numbered on from `*published`, and checks that
/// the live subscriber gets each: delivery goes on whatever the store does. Returns how
/// many `ok`s said the message was not stored.
async fn publish_n(p: &mut Raw, live: &mut Raw, n: u64, published: &mut u64) -> u64 {
    let pad = "x".repeat(1000);
    let mut unstored = 0;
    for _ in 0..n {
        let i = *published;
        let r = p
            .request(json!({"op":"pub","topic":"log/a","data":{"i":i,"pad":pad}}))
            .await;
        assert_eq!(r["op"], "ok", "{r}");
        match r.get("stored") {
            None => {}
            Some(stored) => {
                assert_eq!(stored, false, "{r}");
                unstored += 1;
            }
        }
        let m = live.next_msg().await;
        assert_eq!(m["data"]["i"], i, "{m}");
        *published += 1;
    }
    unstored
}

fn scrape(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// `GET /api/v1/history` of `log/a`: the `i` of each message returned.
async fn history_is(daemon: &Daemon, query: &str) -> Vec<u64> {
    let reply =
        common::http_get_json(daemon.http, &format!("/api/v1/history?topic=log/a&{query}")).await;
    reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {reply}"))
        .iter()
        .map(|m| m["data"]["i"].as_u64().expect("i"))
        .collect()
}

#[tokio::test]
async fn a_full_disk_shows_in_health_and_metrics_and_the_store_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let data = fs.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    // A webhook whose endpoint never answers and whose retry waits an hour: its
    // events stay queued in the store, where they can be counted.
    let secret = fs.path().join("webhook.secret");
    std::fs::write(&secret, "a secret of the full-disk test, 32+ bytes").expect("secret");
    let config = format!(
        "{HISTORY}\n[[webhooks]]\nname = \"disk\"\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"{}\"\ntopics = [\"log/#\"]\nretry_initial = \"1h\"\nretry_max = \"1h\"\nmax_attempts = 1000\n",
        secret.display()
    );
    let daemon = Daemon::start_with_env(&config, &[("SWITCHBOARD_DATA_DIR", data)]);
    let health = daemon.healthz().await;
    assert_eq!(health["store"]["status"], "ok", "{health}");

    let body = json!({"name": "disk", "topics": ["log/#"]}).to_string();
    let (status, recording) = post(&api(&daemon, "/recordings"), None, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{recording}");
    let recording = recording["id"].as_u64().expect("recording id");

    let mut live = Raw::connect(&daemon.ws_url()).await;
    assert_eq!(
        live.request(json!({"op":"sub","topic":"log/a"})).await["op"],
        "ok"
    );
    let mut p = Raw::connect(&daemon.ws_url()).await;
    let mut published = 0u64;
    assert_eq!(publish_n(&mut p, &mut live, 10, &mut published).await, 0);
    // sled writes within `[store] flush_interval` (100 ms); nothing outside shows when.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut resumer = Raw::connect(&daemon.ws_url()).await;
    let before = resumer.request(json!({"op":"sub","topic":"log/a"})).await;
    let epoch = before["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(before["seq"], 10, "{before}");
    drop(resumer);

    let filler = fs.fill();
    // sled writes in the background: publish until the store says it fails.
    let health = loop {
        publish_n(&mut p, &mut live, 20, &mut published).await;
        let health = daemon.healthz().await;
        if health["store"]["status"] == "failing" {
            break health;
        }
        assert!(published < 20_000, "the store never failed: {health}");
    };
    // Many more writes fail from here on; the log does not get a line for each.
    // The publisher is told each was delivered but not kept, over WebSocket and HTTP.
    assert_eq!(publish_n(&mut p, &mut live, 200, &mut published).await, 200);
    let (status, reply) = post(
        &api(&daemon, "/publish"),
        None,
        r#"{"topic":"log/b","data":1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["stored"], false, "{reply}");
    assert_eq!(health["status"], "degraded", "{health}");
    let last_error = health["store"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("No space left on device"), "{health}");
    assert!(
        health["store"]["failing_since"].as_u64().is_some(),
        "{health}"
    );

    let metrics = daemon.metrics_text().await;
    assert_eq!(scrape(&metrics, "switchboard_store_failing"), 1);
    assert!(scrape(&metrics, "switchboard_store_failing_since_seconds") > 0);
    let write_errors = scrape(&metrics, "switchboard_history_write_errors_total");
    assert!(write_errors >= 200, "{write_errors}");
    // The store counts failed operations, the history lost messages: a writer's pass
    // stores many messages in one write, so the first may be the smaller count.
    assert!(scrape(&metrics, "switchboard_store_errors_total") > 0);
    let lines = daemon.logs().matches("history: write failed").count();
    assert!(
        lines <= 2,
        "{lines} log lines for {write_errors} failed writes"
    );

    // A client resuming from before the failure is told it missed messages.
    let mut resumer = Raw::connect(&daemon.ws_url()).await;
    let reply = resumer
        .request(json!({"op":"sub","topic":"log/a","since":10,"epoch":epoch}))
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], json!(epoch), "{reply}");

    // Space comes back: the store reopens by itself, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    let freed = std::time::Instant::now();
    let deadline = freed + std::time::Duration::from_secs(30);
    let health = loop {
        let health = daemon.healthz().await;
        if health["store"]["status"] == "ok" {
            break health;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover within 30 s: {health}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    eprintln!(
        "the store recovered {:?} after space was freed",
        freed.elapsed()
    );
    assert_eq!(health["status"], "ok", "{health}");
    assert!(
        health["store"]["recoveries"].as_u64() >= Some(1),
        "{health}"
    );
    assert!(
        health["store"]["recovered_at"].as_u64().is_some(),
        "{health}"
    );
    assert!(daemon.logs().contains("store: reopened after a failure"));
    let metrics = daemon.metrics_text().await;
    assert_eq!(scrape(&metrics, "switchboard_store_failing"), 0);
    assert!(scrape(&metrics, "switchboard_store_recoveries_total") >= 1);

    // History writes succeed again, and what was stored before the disk filled is
    // still there.
    let failed = scrape(&metrics, "switchboard_history_write_errors_total");
    let from = published;
    assert_eq!(publish_n(&mut p, &mut live, 50, &mut published).await, 0);
    let metrics = daemon.metrics_text().await;
    assert_eq!(
        scrape(&metrics, "switchboard_history_write_errors_total"),
        failed,
        "writes failed after the recovery"
    );
    assert_eq!(
        history_is(&daemon, &format!("since={from}&last=50")).await,
        (from..published).collect::<Vec<_>>()
    );
    assert_eq!(
        history_is(&daemon, "since=0&last=10").await,
        (0..10).collect::<Vec<_>>()
    );

    // The webhook queue stores again: 50 more events wait for the endpoint.
    const PENDING: &str = "switchboard_webhook_events_pending{webhook=\"disk\"}";
    let pending = scrape(&daemon.metrics_text().await, PENDING);
    publish_n(&mut p, &mut live, 50, &mut published).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while scrape(&daemon.metrics_text().await, PENDING) < pending + 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "webhook events were not queued after the recovery"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The recording stores again, and its figures count every message it took as
    // stored or dropped (those the failing disk refused, and those sled had not
    // written when the disk failed).
    let stop = format!("/recordings/{recording}/stop");
    let (status, shown) = post(&api(&daemon, &stop), None, "").await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    let stored = shown["messages"].as_u64().expect("messages");
    let dropped = shown["dropped"].as_u64().expect("dropped");
    assert!(dropped > 0, "{shown}");
    assert!(stored >= 60, "{shown}");
    // Every message on `log/a`, and the one on `log/b`.
    assert_eq!(stored + dropped, published + 1, "{shown}");
}

/// An ext4 file system in an image file of the test's own, mounted through a loop device
/// (root only, as CI runs), whose writes can be stopped with `fsfreeze`: a disk that
/// takes nothing for as long as the test says. `None` (with the reason printed) where
/// this process may not mount.
struct Ext4 {
    dir: tempfile::TempDir,
}

impl Ext4 {
    fn mount() -> Option<Ext4> {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("image");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(512 << 20).expect("sparse image");
        let ok = |cmd: &mut Command| match cmd.output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                eprintln!(
                    "skipped: {cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                false
            }
            Err(e) => {
                eprintln!("skipped: {cmd:?}: {e}");
                false
            }
        };
        let made = ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
            && ok(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mnt));
        made.then_some(Ext4 { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Stops every write to the file system until the returned guard is dropped.
    fn freeze(&self) -> Frozen {
        let status = Command::new("fsfreeze")
            .arg("-f")
            .arg(self.path())
            .status()
            .expect("run fsfreeze");
        assert!(status.success(), "fsfreeze -f failed");
        Frozen(self.path())
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Writes resume when dropped, which must happen before the daemon is stopped: a
/// process writing to a frozen file system cannot end.
struct Frozen(PathBuf);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).status();
    }
}

/// A daemon with `config` whose data directory is on `fs`.
fn daemon_on(fs: &Ext4, config: &str) -> Daemon {
    let data = fs.path().join("data");
    Daemon::start_with_env(
        config,
        &[("SWITCHBOARD_DATA_DIR", data.to_str().expect("utf-8 path"))],
    )
}

/// Freezes `fs` while `p` floods `topic`, and pings `probe` meanwhile: every ping must be
/// answered although the disk takes nothing (the publisher itself may be held back by
/// it), and so must a `GET` of `watched`, when given, after each ping. Then writes
/// resume, and the publisher is answered again.
async fn assert_answered_while_frozen(
    fs: &Ext4,
    probe: &mut Raw,
    mut p: Raw,
    topic: &'static str,
    watched: Option<&str>,
) {
    let frozen = fs.freeze();
    let publisher = tokio::spawn(async move {
        for _ in 0..20 {
            p.flood(topic, 1000, 1000).await;
        }
        p
    });
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // Generous: the bound is that the answer does not wait for the disk at all.
        probe.send(json!({"op":"ping","id":"probe"})).await;
        let answer = probe.try_recv(std::time::Duration::from_secs(5)).await;
        assert_eq!(
            answer.as_ref().map(|a| a["id"].clone()),
            Some(json!("probe")),
            "no answer to a ping while the disk stalls"
        );
        if let Some(url) = watched {
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                common::http::get(url, None),
            )
            .await;
            let status = answer.map(|(status, _)| status).ok();
            assert_eq!(status, Some(StatusCode::OK), "no answer to GET {url}");
        }
    }
    drop(frozen);
    let mut p = publisher.await.expect("publisher");
    // Everything goes on once the disk takes writes again.
    let r = p.request(json!({"op":"ping"})).await;
    assert_eq!(r["op"], "ok", "{r}");
}

/// While the store's disk takes nothing, and the store is evicting at its cap, other
/// clients are still answered: no thread the connections run on waits for sled.
/// The disk is frozen (fsfreeze), so sled's writes stall for as long as the test says;
/// before the writer and the eviction kept off the async threads and off the stream's
/// lock, a publisher of the history topic and the writer took both runtime threads and
/// the probe's ping waited for the disk.
#[tokio::test]
async fn a_stalled_disk_holds_back_no_other_client_while_the_store_evicts() {
    let Some(fs) = Ext4::mount() else {
        return;
    };
    let daemon = daemon_on(&fs, &format!("{HISTORY}\n[store]\nmax_bytes = 200000\n"));
    let url = daemon.ws_url();
    let mut probe = Raw::connect(&url).await;
    let mut p = Raw::connect(&url).await;
    // Over the cap, so the janitor evicts from here on.
    p.flood("log/a", 1000, 1000).await;
    assert_answered_while_frozen(&fs, &mut probe, p, "log/a", None).await;
}

/// The same for a recording: while the disk takes nothing, a recording in progress (its
/// writer storing, the store evicting its oldest messages at the cap) holds back no
/// other client, and one watching the recordings' figures is answered too. Before the
/// recordings' writer stored on the blocking pool and without the recordings' lock, it
/// held that lock while sled waited for the disk, and the watcher's request took the
/// other runtime thread waiting for it.
#[tokio::test]
async fn a_stalled_disk_holds_back_no_other_client_while_a_recording_runs() {
    let Some(fs) = Ext4::mount() else {
        return;
    };
    let daemon = daemon_on(&fs, &format!("{HISTORY}\n[store]\nmax_bytes = 200000\n"));
    let body = json!({"name": "stall", "topics": ["rec/#"]}).to_string();
    let (status, recording) = post(&api(&daemon, "/recordings"), None, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{recording}");
    let url = daemon.ws_url();
    let mut probe = Raw::connect(&url).await;
    let mut p = Raw::connect(&url).await;
    p.flood("rec/a", 1000, 1000).await;
    let watched = api(&daemon, "/recordings");
    assert_answered_while_frozen(&fs, &mut probe, p, "rec/a", Some(&watched)).await;
}

/// The same for the writers behind webhooks and bridges: while the disk takes nothing,
/// the one storing webhook events and the one storing a bridge's outbound messages hold
/// back no other client. Before they stored on the blocking pool, the two took both
/// runtime threads waiting for the disk, and the probe's ping waited with them.
#[tokio::test]
async fn a_stalled_disk_holds_back_no_other_client_while_webhook_and_bridge_queues_store() {
    let Some(fs) = Ext4::mount() else {
        return;
    };
    // An endpoint and an upstream broker that never answer: everything stays queued.
    let secret = fs.path().join("webhook.secret");
    std::fs::write(&secret, "a secret of the stalled-disk test, 32+ bytes").expect("secret");
    let config = format!(
        "{HISTORY}\n[[webhooks]]\nname = \"stall\"\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"{}\"\ntopics = [\"q/#\"]\nretry_initial = \"1h\"\nretry_max = \"1h\"\n\n[[bridges]]\nname = \"up\"\naddress = \"127.0.0.1:9\"\n[[bridges.topics]]\npattern = \"q/#\"\ndirection = \"out\"\nqos = 1\n",
        secret.display()
    );
    let daemon = daemon_on(&fs, &config);
    let url = daemon.ws_url();
    let mut probe = Raw::connect(&url).await;
    let mut p = Raw::connect(&url).await;
    p.flood("q/a", 1000, 1000).await;
    assert_answered_while_frozen(&fs, &mut probe, p, "q/a", None).await;
}
