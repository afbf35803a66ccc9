//! Publish throughput with the permission check short-circuited or doing its work.
//!
//! One publisher connection pipelines small `pub` requests to one topic; one subscriber
//! connection receives them. The Hub checks every publish against the publisher's
//! grants: the admin token's grants are "everything" and the check returns at once; a
//! token's grants are a list of filters tried in order. The publisher keeps at most
//! `window` messages in flight (published, and not yet both received and acked), so the
//! subscriber's queue in the daemon can never overflow and nothing is dropped.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::setup::WELCOME;
use crate::window::{Mark, Window};
use switchboard_bench::read_buf::invalid;
use switchboard_bench::wire::{Conn, Frame, Reader};
use switchboard_bench::ws_frame::{encode_pong, encode_text};

const MSG: &[u8] = br#"{"op":"msg""#;
const OK: &[u8] = br#"{"op":"ok""#;

/// Requests written per `write` at most.
const BATCH: u64 = 64;

/// One measured point.
pub struct Throughput {
    /// Messages received by the subscriber in the window.
    pub messages: u64,
    pub window: Window,
}

impl Throughput {
    pub fn per_sec(&self) -> f64 {
        self.window.rate(self.messages)
    }

    pub fn server_ns_per_msg(&self) -> f64 {
        self.window.server_cpu.as_secs_f64() * 1e9 / self.messages as f64
    }
}

/// Progress the publisher waits on.
#[derive(Default)]
struct Shared {
    received: Cell<u64>,
    acked: Cell<u64>,
    progress: Notify,
}

/// Publishes `messages` requests from a connection presenting `publisher` to one
/// presenting `subscriber`. The first tenth is warm-up; the window runs from the
/// subscriber's receipt of message `messages / 10` to that of the last.
pub async fn run(
    addr: SocketAddr,
    publisher: &str,
    subscriber: &str,
    messages: u64,
    window: u64,
    server_cpu: impl Fn() -> Duration + 'static,
) -> io::Result<Throughput> {
    let mut sub =
        Conn::connect_to(addr, None, 64 * 1024, &format!("/ws?token={subscriber}")).await?;
    sub.wait_for(WELCOME).await?;
    sub.send_text(&format!(
        r#"{{"op":"sub","id":1,"topic":"{}"}}"#,
        crate::creds::FILTER
    ))
    .await?;
    sub.wait_for(OK).await?;
    let mut publ =
        Conn::connect_to(addr, None, 64 * 1024, &format!("/ws?token={publisher}")).await?;
    publ.wait_for(WELCOME).await?;

    let shared = Rc::new(Shared::default());
    let warm = messages / 10;
    let receiver = {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            let mut first = None;
            receive(&mut sub, &shared, messages, |n| {
                if n == warm {
                    first = Some(Mark::now(server_cpu()));
                }
                if n == messages {
                    let last = Mark::now(server_cpu());
                    let first = first.take().expect("the warm-up mark");
                    return Some(Throughput {
                        messages: messages - warm,
                        window: Window::between(&first, &last),
                    });
                }
                None
            })
            .await
            .map_err(|e| {
                let n = shared.received.get();
                invalid(format!("subscriber, after about {n} messages: {e}"))
            })
        })
    };
    let Conn { rx, mut tx } = publ;
    let acks = {
        let shared = shared.clone();
        tokio::task::spawn_local(async move { read_acks(rx, &shared, messages).await })
    };

    let request = format!(
        r#"{{"op":"pub","topic":"{}","data":"0123456789abcdef"}}"#,
        crate::creds::TOPIC
    );
    let mut frame = Vec::new();
    encode_text(request.as_bytes(), &mut frame);
    let mut out = Vec::with_capacity(frame.len() * BATCH as usize);
    let mut sent = 0u64;
    while sent < messages {
        let done = shared.received.get().min(shared.acked.get());
        let room = window.saturating_sub(sent - done);
        if room == 0 {
            shared.progress.notified().await;
            continue;
        }
        let n = room.min(BATCH).min(messages - sent);
        out.clear();
        for _ in 0..n {
            out.extend_from_slice(&frame);
        }
        tx.write_all(&out).await?;
        sent += n;
    }
    acks.await.map_err(io::Error::other)??;
    let result = receiver.await.map_err(io::Error::other)??;
    Ok(result)
}

/// Counts `msg` frames until `total`; `seen` gets each new count and returns the
/// result once it has one.
async fn receive<T>(
    conn: &mut Conn,
    shared: &Shared,
    total: u64,
    mut seen: impl FnMut(u64) -> Option<T>,
) -> io::Result<T> {
    let mut n = 0u64;
    loop {
        let mut pong = Vec::new();
        while let Some(frame) = conn.rx.next_frame()? {
            match frame {
                Frame::Text(t) if t.starts_with(MSG) => {
                    n += 1;
                    if let Some(done) = seen(n) {
                        return Ok(done);
                    }
                }
                Frame::Text(t) => {
                    return Err(invalid(format!(
                        "unexpected frame {}",
                        String::from_utf8_lossy(t)
                    )))
                }
                Frame::Ping(p) => encode_pong(p, &mut pong),
                Frame::Close(_) => return Err(invalid("the daemon closed the connection")),
                Frame::Other => {}
            }
        }
        shared.received.set(n);
        shared.progress.notify_one();
        if !pong.is_empty() {
            conn.tx.write_all(&pong).await?;
        }
        if n < total && !conn.rx.fill().await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Counts the publisher's `ok` replies until `total`; anything else (`forbidden`,
/// `rate_limited`) fails the point.
async fn read_acks(mut rx: Reader, shared: &Shared, total: u64) -> io::Result<()> {
    let mut n = 0u64;
    while n < total {
        while let Some(frame) = rx.next_frame()? {
            match frame {
                Frame::Text(t) if t.starts_with(OK) => n += 1,
                Frame::Text(t) => {
                    return Err(invalid(format!(
                        "publisher got {}",
                        String::from_utf8_lossy(t)
                    )))
                }
                Frame::Close(_) => return Err(invalid("the daemon closed the publisher")),
                // A ping would need the write half; none comes within the heartbeat.
                Frame::Ping(_) | Frame::Other => {}
            }
        }
        shared.acked.set(n);
        shared.progress.notify_one();
        if n < total && !rx.fill().await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}
