//! A stand-in for systemd's notification socket: a unix datagram socket in a tempdir
//! that records what the daemon tells it (`READY=1`, `STATUS=…`, `WATCHDOG=1`…).

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::UnixDatagram;

pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// One notification: the lines of one datagram.
pub type Notice = Vec<String>;

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket {
            sock,
            path,
            _dir: dir,
        }
    }

    /// `NOTIFY_SOCKET` for [`super::Daemon::start_with_env`].
    pub fn path(&self) -> &str {
        self.path.to_str().expect("tempdir path is UTF-8")
    }

    /// The next notification, or None if none came within `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<Notice> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(wait, self.sock.recv(&mut buf))
            .await
            .ok()?
            .expect("recv on the notify socket");
        let text = String::from_utf8(buf[..n].to_vec()).expect("notifications are UTF-8");
        Some(text.lines().map(str::to_owned).collect())
    }

    /// Waits up to 10 s for a notification holding `line`, skipping watchdog pings and
    /// anything else; panics with what came instead.
    pub async fn wait_for(&self, line: &str) -> Notice {
        self.until(line)
            .await
            .pop()
            .expect("until ends with the match")
    }

    /// Every notification up to and including the first that holds `line` (within
    /// 10 s; panics with what came instead).
    pub async fn until(&self, line: &str) -> Vec<Notice> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some(notice) => {
                    let found = notice.iter().any(|l| l == line);
                    seen.push(notice);
                    if found {
                        return seen;
                    }
                }
                None => panic!("no {line} within 10 s; got {seen:?}"),
            }
        }
    }
}

/// The `STATUS=` text of a notification.
pub fn status(notice: &[String]) -> Option<&str> {
    notice.iter().find_map(|l| l.strip_prefix("STATUS="))
}
