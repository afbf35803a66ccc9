//! Connection setup rate: how fast the daemon turns TCP connections into served
//! WebSocket sessions when each presents a credential.
//!
//! A fixed number of tasks (16 by default) connect one after another: TCP connect,
//! upgrade request with the credential in `?token=`, then wait for `welcome`, which the
//! daemon sends once the credential is verified and the session exists. Every
//! connection is kept open until all are done, as after a restart when every client
//! reconnects at once; the daemon's cost per live connection is part of the figure.
//! The first tenth of the connections warm the fresh daemon up and are not measured.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::window::{Mark, Window};
use switchboard_bench::wire::Conn;

pub const WELCOME: &[u8] = br#"{"op":"welcome""#;

/// One measured point.
pub struct Setup {
    /// Connections that got their `welcome` in the window.
    pub connections: u64,
    pub window: Window,
}

impl Setup {
    pub fn per_sec(&self) -> f64 {
        self.window.rate(self.connections)
    }

    pub fn server_us_per_conn(&self) -> f64 {
        self.window.server_cpu.as_secs_f64() * 1e6 / self.connections as f64
    }
}

/// Opens one connection per entry of `paths` (`/ws` or `/ws?token=…`), `concurrency`
/// at a time. The window runs from the `welcome` of connection `paths.len() / 10` to
/// the last one. Returns the open connections with the figures, so the caller decides
/// when they close.
pub async fn run(
    addr: SocketAddr,
    paths: Rc<Vec<String>>,
    concurrency: usize,
    server_cpu: impl Fn() -> Duration + 'static,
) -> io::Result<(Setup, Vec<Conn>)> {
    let total = paths.len();
    let warm = total / 10;
    let next = Rc::new(Cell::new(0usize));
    let held = Rc::new(RefCell::new(Vec::with_capacity(total)));
    let first = Rc::new(RefCell::new(None));
    let server_cpu = Rc::new(server_cpu);
    if warm == 0 {
        *first.borrow_mut() = Some(Mark::now(server_cpu()));
    }
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, held, paths) = (next.clone(), held.clone(), paths.clone());
            let (first, server_cpu) = (first.clone(), server_cpu.clone());
            tokio::task::spawn_local(async move {
                loop {
                    let i = next.get();
                    let Some(path) = paths.get(i) else {
                        return Ok::<_, io::Error>(());
                    };
                    next.set(i + 1);
                    let mut conn = Conn::connect_to(addr, None, 1024, path).await?;
                    conn.wait_for(WELCOME).await?;
                    let mut held = held.borrow_mut();
                    held.push(conn);
                    if held.len() == warm {
                        *first.borrow_mut() = Some(Mark::now(server_cpu()));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(io::Error::other)??;
    }
    let last = Mark::now(server_cpu());
    let first = first.take().expect("the warm-up mark");
    let setup = Setup {
        connections: (total - warm) as u64,
        window: Window::between(&first, &last),
    };
    let conns = held.take();
    Ok((setup, conns))
}
