//! `switchboard sub` across a daemon restart, with the real binaries: it says on stderr
//! that it lost the connection, reconnects within a second or two of the daemon being
//! back, and on a topic with a history gets what was published while it was away, in
//! order, once each.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, BIN};

/// Lines a child printed on one of its streams, as they come.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

fn snapshot(lines: &Lines) -> Vec<String> {
    lines.lock().unwrap().clone()
}

/// Waits until `pred` holds for the lines, or fails showing them.
fn wait_until(what: &str, lines: &Lines, within: Duration, pred: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + within;
    while !pred(&snapshot(lines)) {
        assert!(
            Instant::now() < deadline,
            "{what} (within {within:?}); lines: {:#?}",
            snapshot(lines)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn publish(url: &str, topic: &str, data: &str) {
    let out = Command::new(BIN)
        .args(["pub", "--url", url, topic, data])
        .env_remove("SWITCHBOARD_TOKEN")
        .output()
        .expect("run switchboard pub");
    assert!(
        out.status.success(),
        "pub {topic} {data}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the subscriber when the test ends, however it ends.
struct Sub(Child);

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free address for the HTTP listener, so a restarted daemon is where the subscriber
/// looks.
fn free_listen() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// A daemon on `listen` that keeps the history of `news/#`.
fn start_daemon(listen: &str) -> Daemon {
    Daemon::start_with_env(
        "[[history.topics]]\nfilter = \"news/#\"\nkeep = 100\n",
        &[("SWITCHBOARD_HTTP_LISTEN", listen)],
    )
}

/// Starts `switchboard sub -v` on `filters` and waits until it receives: it connects in
/// the background, so `news/feed` is published until a message comes through.
fn start_sub(url: &str, filters: &[&str]) -> (Sub, Lines, Lines) {
    let mut child = Command::new(BIN)
        .args(["sub", "-v", "--url", url])
        .args(filters)
        .env_remove("SWITCHBOARD_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard sub");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    let sub = Sub(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !snapshot(&out).iter().any(|l| l == "news/feed before") {
        assert!(Instant::now() < deadline, "the subscriber got nothing");
        publish(url, "news/feed", "before");
        std::thread::sleep(Duration::from_millis(200));
    }
    (sub, out, err)
}

#[test]
fn sub_says_it_lost_the_daemon_and_resumes_without_a_gap() {
    // A fixed HTTP port, so the restarted daemon is where the subscriber looks.
    let listen = free_listen();
    let mut daemon = start_daemon(&listen);
    let url = daemon.ws_url();

    let (_sub, out, err) = start_sub(&url, &["news/feed", "live/+"]);
    let before = snapshot(&out).len();

    daemon.stop();
    wait_until(
        "a lost-connection line on stderr",
        &err,
        Duration::from_secs(5),
        |l| l.iter().any(|l| l.contains("connection lost")),
    );
    // Away for a while: the subscriber keeps trying meanwhile.
    std::thread::sleep(Duration::from_secs(3));

    daemon.respawn();
    let back = Instant::now();
    // Published at once: whether these reach the subscriber live or as the history it
    // missed, each must arrive once and in order.
    for i in 1..=5 {
        publish(&url, "news/feed", &format!("m{i}"));
    }
    wait_until(
        "reconnected within 3 s of the daemon being back",
        &err,
        Duration::from_secs(3),
        |l| l.iter().any(|l| l.contains("reconnected")),
    );
    assert!(back.elapsed() < Duration::from_secs(5));
    wait_until("the five messages", &out, Duration::from_secs(5), |l| {
        l.iter().any(|l| l == "news/feed m5")
    });
    // A topic without history, live after the reconnect.
    publish(&url, "live/x", "now");
    wait_until(
        "a live message after the reconnect",
        &out,
        Duration::from_secs(5),
        |l| l.iter().any(|l| l == "live/x now"),
    );

    let after: Vec<String> = snapshot(&out)[before..]
        .iter()
        .filter(|l| l.starts_with("news/feed"))
        .cloned()
        .collect();
    assert_eq!(
        after,
        (1..=5)
            .map(|i| format!("news/feed m{i}"))
            .collect::<Vec<_>>(),
        "each message once, in order, none missing; stderr: {:#?}",
        snapshot(&err)
    );
}

#[test]
fn sub_resumes_what_was_published_while_it_was_disconnected() {
    // Published while the subscriber cannot be connected (its process is stopped), so
    // only the topic's history can bring them.
    let listen = free_listen();
    let mut daemon = start_daemon(&listen);
    let url = daemon.ws_url();
    let (sub, out, err) = start_sub(&url, &["news/feed"]);

    // Stop the subscriber's process (SIGSTOP) while the daemon is down, until after
    // the restart and the publishes: it cannot reconnect before they are all in the
    // history.
    let pid = sub.0.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    daemon.stop();
    wait_until(
        "a lost-connection line on stderr",
        &err,
        Duration::from_secs(5),
        |l| l.iter().any(|l| l.contains("connection lost")),
    );
    signal("-STOP");
    daemon.respawn();
    for i in 1..=3 {
        publish(&url, "news/feed", &format!("away{i}"));
    }
    signal("-CONT");
    wait_until(
        "the messages published while it was away",
        &out,
        Duration::from_secs(5),
        |l| l.iter().any(|l| l == "news/feed away3"),
    );
    let got: Vec<String> = snapshot(&out)
        .into_iter()
        .filter(|l| l.starts_with("news/feed away"))
        .collect();
    assert_eq!(
        got,
        ["news/feed away1", "news/feed away2", "news/feed away3"],
        "stderr: {:#?}",
        snapshot(&err)
    );
    assert!(
        snapshot(&err).iter().any(|l| l.contains("connection lost")),
        "no lost-connection line: {:#?}",
        snapshot(&err)
    );
}
