//! What the daemon tells systemd, and how it logs under it.
//!
//! The unit is `Type=notify` (packaging/switchboard.service): systemd considers the
//! service started only when READY=1 arrives, which [`crate::server::Server::run`]
//! sends once every listener is bound and the store is open, so `systemctl start`
//! returns when clients can connect. A reload brackets itself with RELOADING=1 and
//! READY=1, shutdown says STOPPING=1, and STATUS= lines say what the daemon is doing
//! (`systemctl status`). The watchdog ping comes from a task that must get an answer
//! from the Hub, so a daemon whose runtime or routing is stuck stops pinging and
//! systemd restarts it.
//!
//! Notifications are a no-op when `NOTIFY_SOCKET` is not set (a shell, the tests
//! without it); journald logging needs stderr to be the journal. All of it is pure
//! Rust (sd-notify, our journald writer) so the package cross-builds for ARM without a C
//! toolchain. It must not decide anything about the daemon's life: it only reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::hub::Hub;

/// Set once a notification failed, so a broken socket is logged once, not per ping.
static SEND_FAILED: AtomicBool = AtomicBool::new(false);

/// How long a state change may wait for room in the manager's queue. The send is ours,
/// not `sd_notify::notify`: that one blocks without limit when the queue is full
/// (`net.unix.max_dgram_qlen` is 10 by default, and the queue is shared by every
/// service), and it is called from async tasks, so a manager that stops reading would
/// stall a runtime worker and, with it, shutdown.
const STATE_SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// How a notification may wait for room in the manager's queue.
#[derive(Clone, Copy)]
enum Wait {
    /// READY, RELOADING, STOPPING: worth a short wait.
    Briefly,
    /// A watchdog ping: dropped when the queue is full; the next one follows shortly.
    Never,
}

/// Sends `states` to systemd when `NOTIFY_SOCKET` is set; a failure is logged, never
/// fatal (the daemon serves whether or not systemd hears it).
fn send(states: &[NotifyState<'_>], wait: Wait) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    match send_to(&path, message.as_bytes(), wait) {
        Ok(()) => {}
        Err(e) if !SEND_FAILED.swap(true, Ordering::Relaxed) => {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
        }
        Err(e) => tracing::debug!(error = %e, "cannot notify systemd"),
    }
}

/// One datagram to the socket systemd names: a path, or `@name` in the abstract
/// namespace (which systemd uses in containers).
fn send_to(path: &std::ffi::OsStr, message: &[u8], wait: Wait) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;

    let sock = UnixDatagram::unbound()?;
    match wait {
        Wait::Briefly => sock.set_write_timeout(Some(STATE_SEND_TIMEOUT))?,
        Wait::Never => sock.set_nonblocking(true)?,
    }
    match path.as_bytes().strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&addr)?;
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract NOTIFY_SOCKET on a system without them",
            ))
        }
        None => sock.connect(path)?,
    }
    let sent = sock.send(message)?;
    if sent != message.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "notification cut short",
        ));
    }
    Ok(())
}

/// Startup is complete (or a reload is over): clients can connect.
pub fn ready(status: &str) {
    send(
        &[NotifyState::Ready, NotifyState::Status(status)],
        Wait::Briefly,
    );
}

/// A reload begins. systemd 253+ wants the monotonic time with it to match the
/// RELOADING=1 to the `systemctl reload` that caused it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(
            &[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading"),
            ],
            Wait::Briefly,
        ),
        Err(e) => {
            tracing::debug!(error = %e, "no monotonic clock for MONOTONIC_USEC");
            send(
                &[NotifyState::Reloading, NotifyState::Status("reloading")],
                Wait::Briefly,
            );
        }
    }
}

/// Shutdown begins.
pub fn stopping(status: &str) {
    send(
        &[NotifyState::Stopping, NotifyState::Status(status)],
        Wait::Briefly,
    );
}

/// The watchdog interval systemd asked for (`WatchdogSec`), when it is meant for us.
fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Starts the watchdog task when systemd asked for one: a ping every half interval,
/// each one only after the Hub answered a cheap question from the blocking pool, so a
/// poisoned or deadlocked Hub, a starved runtime or an exhausted blocking pool all
/// stop the pings. Returns whether it started.
///
/// Pings continue during shutdown (it may take the whole grace period) until `owner`
/// is stopped, which the server does last, before it closes the history and the store.
pub fn spawn_watchdog(hub: Arc<Hub>, owner: &crate::background::Background) -> bool {
    let Some(interval) = watchdog_interval() else {
        return false;
    };
    let period = interval / 2;
    tracing::info!(interval = ?interval, "systemd watchdog on: pinging every {period:?}");
    owner.spawn(|stop| async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A probe that has not answered yet is waited for again, not started twice:
        // a stuck Hub holds one blocking thread, not one per tick.
        let mut probe: Option<tokio::task::JoinHandle<usize>> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let handle = probe.get_or_insert_with(|| {
                let hub = hub.clone();
                tokio::task::spawn_blocking(move || hub.stats().connections)
            });
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                answer = tokio::time::timeout(period, handle) => answer,
            };
            match answer {
                Ok(Ok(_)) => {
                    probe = None;
                    send(&[NotifyState::Watchdog], Wait::Never);
                }
                Ok(Err(e)) => {
                    probe = None;
                    tracing::error!(error = %e, "watchdog: the Hub probe failed; not pinging");
                }
                Err(_) => tracing::error!(
                    "watchdog: the Hub did not answer within {period:?}; not pinging"
                ),
            }
        }
    });
    true
}

/// Whether stderr is the journal's stream (`JOURNAL_STREAM` names stderr's device and
/// inode, as systemd.exec(5) documents): then logs go to journald with their fields
/// intact rather than as flattened text. A redirected stderr (`2>file`, a pipe, the
/// tests) keeps the text formatter even if the variable was inherited.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;

    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => stream.to_str().is_some_and(|s| names(s, &meta)),
        Err(_) => false,
    }
}

/// Whether a `JOURNAL_STREAM` value (`<device>:<inode>`, decimal) names this file.
fn names(stream: &str, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;

    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_full_queue_never_blocks_a_ping_and_delays_a_state_change_briefly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).expect("bind");
        // Nobody reads: fill the queue with pings until one is refused.
        let refused = (0..10_000)
            .map(|_| send_to(path.as_os_str(), b"WATCHDOG=1\n", Wait::Never))
            .find_map(Result::err)
            .expect("the queue fills up");
        assert_eq!(refused.kind(), std::io::ErrorKind::WouldBlock);
        let started = std::time::Instant::now();
        let late = send_to(path.as_os_str(), b"READY=1\n", Wait::Briefly);
        assert!(late.is_err());
        assert!(started.elapsed() < STATE_SEND_TIMEOUT * 4);
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }

    #[test]
    fn journal_stream_must_name_the_very_file() {
        let file = tempfile::tempfile().expect("tempfile");
        let meta = file.metadata().expect("metadata");
        let (dev, ino) = (meta.dev(), meta.ino());
        assert!(names(&format!("{dev}:{ino}"), &meta));
        for other in [
            format!("{dev}:{}", ino + 1),
            format!("{}:{ino}", dev + 1),
            format!("{dev}"),
            format!("{dev}:{ino}:0"),
            String::new(),
        ] {
            assert!(!names(&other, &meta), "{other:?}");
        }
    }
}
