//! Resident memory per idle connection: open many WebSocket connections, each
//! subscribed to its own topic, and compare the server's VmRSS before and after.
//!
//! Connections come from several loopback source addresses (127.0.0.2, .3, …) so the
//! ephemeral ports of one address never run short, whatever ran before.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::procs::{self, Kind, Server};
use switchboard_bench::wire::Conn;

/// Source addresses used, round robin.
const SOURCES: u8 = 5;
const CONNECT_CONCURRENCY: usize = 128;

#[derive(Debug, Clone)]
pub struct Idle {
    pub kind: Kind,
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// What switchboard's `/healthz` counted (`None` for the baseline).
    pub server_connections: Option<u64>,
    pub server_subscriptions: Option<u64>,
}

impl Idle {
    pub fn kib_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.connections as f64
    }
}

pub async fn run(server: &Server, count: usize, deflate: bool) -> io::Result<Idle> {
    // Let the fresh server finish starting before the first reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before_kib = server.rss_kib();
    let gate = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let ready = Rc::new(Cell::new(0usize));
    let failed: Rc<Cell<Option<String>>> = Rc::new(Cell::new(None));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (gate, ready, failed, addr) =
            (gate.clone(), ready.clone(), failed.clone(), server.addr);
        tasks.push(tokio::task::spawn_local(async move {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES as usize) as u8));
            let setup = async {
                let _permit = gate.acquire().await.map_err(io::Error::other)?;
                let mut conn = if deflate {
                    Conn::connect_deflate(addr, Some(source), 1024).await?
                } else {
                    Conn::connect(addr, Some(source), 1024).await?
                };
                conn.wait_for(br#"{"op":"welcome""#).await?;
                conn.send_text(&format!(r#"{{"op":"sub","id":"1","topic":"idle/{i}"}}"#))
                    .await?;
                conn.wait_for(br#"{"op":"ok""#).await?;
                io::Result::Ok(conn)
            };
            match setup.await {
                Ok(mut conn) => {
                    ready.set(ready.get() + 1);
                    let _ = conn.idle().await;
                }
                Err(e) => failed.set(Some(format!("connection {i}: {e}"))),
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.get() < count {
        if let Some(e) = failed.take() {
            abort(&tasks);
            return Err(io::Error::other(e));
        }
        if Instant::now() > deadline {
            abort(&tasks);
            return Err(io::Error::other(format!(
                "only {} of {count} connections ready after 120 s",
                ready.get()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Idle for a moment so nothing is still being set up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = server.rss_kib();
    let health = match server.kind {
        Kind::Switchboard => procs::healthz(server.addr).await.ok(),
        Kind::Baseline => None,
    };
    abort(&tasks);
    Ok(Idle {
        kind: server.kind,
        connections: count,
        rss_before_kib,
        rss_after_kib,
        server_connections: health.map(|h| h.connections),
        server_subscriptions: health.map(|h| h.subscriptions),
    })
}

fn abort(tasks: &[tokio::task::JoinHandle<()>]) {
    for t in tasks {
        t.abort();
    }
}
