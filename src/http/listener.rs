//! The HTTP listener's accept loop: connection limits, the TLS handshake, and hyper
//! serving the router on each connection.
//!
//! Owns everything between `accept` and the first request: TCP_NODELAY, the total and
//! per-IP connection caps, the handshake deadline, HTTPS, and graceful shutdown of plain
//! HTTP connections. What a request does is the router's business ([`super::router`]);
//! WebSocket connections are closed by the hub at shutdown, not here.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;

use super::deadline::Deadline;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use tokio_util::sync::CancellationToken;

use super::config::HttpConfig;
use crate::tls::TlsReloader;

/// Refused connections being answered at once; beyond this a refused connection is
/// closed without a word, so a flood cannot make us hold more sockets than the cap.
const MAX_REFUSING: usize = 64;

/// How long a refused plain-HTTP client has to read its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Connection: close\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 21\r\n\
\r\n\
too many connections\n";

/// Counters for /healthz.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections holding a place now (HTTP, and WebSocket while their task holds the slot).
    pub open: AtomicU64,
    /// Connections given a place since start.
    pub accepted: AtomicU64,
    /// Refused because `http.max_connections` were open.
    pub refused_total_cap: AtomicU64,
    /// Refused because `http.max_connections_per_ip` were open from the same address.
    pub refused_per_ip: AtomicU64,
    /// TLS handshakes that failed (wrong CA, plain HTTP on the HTTPS port, …).
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed because the TLS handshake or first request did not arrive in
    /// `http.handshake_timeout`.
    pub handshake_timeouts: AtomicU64,
    /// Requests whose body did not arrive within `http.body_timeout`.
    pub body_timeouts: AtomicU64,
}

impl ListenerStats {
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "open": get(&self.open),
            "accepted": get(&self.accepted),
            "refused_total_cap": get(&self.refused_total_cap),
            "refused_per_ip": get(&self.refused_per_ip),
            "tls_handshake_failures": get(&self.tls_handshake_failures),
            "handshake_timeouts": get(&self.handshake_timeouts),
            "body_timeouts": get(&self.body_timeouts),
        })
    }
}

/// Open connections, in total and per address, under one lock so that two accepts
/// cannot pass a cap together.
struct Limits {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
    stats: Arc<ListenerStats>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

enum Refused {
    Total,
    PerIp,
}

impl Limits {
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refused::Total);
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *from_ip += 1;
        counts.total += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }
}

/// A connection's place in the total and per-IP counts, given back when dropped.
///
/// Every request carries an `Arc<ConnectionSlot>` in its extensions. hyper's connection
/// future ends when a WebSocket upgrade takes the socket over, so the WebSocket task
/// must keep a clone for as long as it runs, or its connection stops counting.
pub struct ConnectionSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl ConnectionSlot {
    /// The address the connection counts against.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
        self.limits.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every connection task shares.
struct Listener {
    shutdown: CancellationToken,
    router: Router,
    tls: Option<Arc<TlsReloader>>,
    limits: Arc<Limits>,
    builder: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    body_timeout: Duration,
    refusing: AtomicUsize,
}

/// Accepts until `shutdown` is cancelled, then lets in-flight HTTP requests finish
/// (the caller bounds how long it waits for that). `tls` is the certificate to serve
/// when `config.tls` is on.
pub async fn serve(
    tcp: TcpListener,
    config: HttpConfig,
    stats: Arc<ListenerStats>,
    tls: Option<Arc<TlsReloader>>,
    shutdown: CancellationToken,
    router: Router,
) {
    let handshake_timeout = config.handshake_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The first request's headers are due within the handshake timeout too: a client
    // that trickles them would otherwise hold its place for ever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    builder.http2().timer(TokioTimer::new());
    let listener = Arc::new(Listener {
        limits: Arc::new(Limits {
            max_total: config.max_connections.get(),
            max_per_ip: config.max_connections_per_ip.get(),
            counts: Mutex::new(Counts::default()),
            stats,
        }),
        tls: if config.tls { tls } else { None },
        router,
        builder,
        handshake_timeout,
        body_timeout: config.body_timeout,
        refusing: AtomicUsize::new(0),
        shutdown: shutdown.clone(),
    });
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (socket, remote) = match accepted {
            Ok(found) => {
                backoff = Duration::from_millis(5);
                found
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Small frames should leave at once, not wait for Nagle.
        let _ = socket.set_nodelay(true);
        match listener.limits.acquire(remote.ip().to_canonical()) {
            Ok(slot) => {
                let watcher = graceful.watcher();
                tokio::spawn(listener.clone().connection(socket, remote, slot, watcher));
            }
            Err(why) => listener.refuse(socket, remote, why),
        }
    }
    drop(tcp);
    graceful.shutdown().await;
}

impl Listener {
    fn refuse(self: &Arc<Self>, mut socket: TcpStream, remote: SocketAddr, why: Refused) {
        let stats = &self.limits.stats;
        let (counter, cap) = match why {
            Refused::Total => (&stats.refused_total_cap, "http.max_connections"),
            Refused::PerIp => (&stats.refused_per_ip, "http.max_connections_per_ip"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%remote, cap, "connection refused: over the limit");
        // Over TLS a plain 503 would be garbage to the client; closing says as much.
        if self.tls.is_some() {
            return;
        }
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                socket.write_all(REFUSAL).await?;
                socket.shutdown().await?;
                // Read what the client sent until it closes: closing with unread input
                // makes the kernel answer with a reset that can destroy the 503.
                let mut sink = [0u8; 1024];
                loop {
                    if tokio::io::AsyncReadExt::read(&mut socket, &mut sink).await? == 0 {
                        return Ok::<_, io::Error>(());
                    }
                }
            })
            .await;
            this.refusing.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// One connection: the TLS handshake if any, then HTTP until the client leaves or
    /// shutdown asks hyper to finish.
    async fn connection(
        self: Arc<Self>,
        socket: TcpStream,
        remote: SocketAddr,
        slot: ConnectionSlot,
        watcher: Watcher,
    ) {
        let slot = Arc::new(slot);
        let deadline = Instant::now() + self.handshake_timeout;
        let stats = self.limits.stats.clone();
        match self.tls.as_ref().and_then(|tls| tls.http()) {
            Some(config) => {
                let accept = TlsAcceptor::from(config).accept(socket);
                let tls = match tokio::time::timeout_at(deadline, accept).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                self.http(tls, remote, slot, watcher, deadline).await;
            }
            None => self.http(socket, remote, slot, watcher, deadline).await,
        }
    }

    /// Serves HTTP on `io`; the first request's head is due by `deadline`.
    ///
    /// hyper bounds the time to send a request's head on HTTP/1 only once its first
    /// byte arrived (`header_read_timeout`), and not at all on HTTP/2, nor while
    /// hyper-util waits for the bytes that tell the two apart: a client that sent
    /// nothing, the HTTP/2 preface and then nothing, or a head one byte at a time, held
    /// its place for as long as it liked. So the connection is dropped when no request
    /// reached the router by the deadline, whatever the version.
    async fn http<I>(
        &self,
        io: I,
        remote: SocketAddr,
        slot: Arc<ConnectionSlot>,
        watcher: Watcher,
        deadline: Instant,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let (body_timeout, stats) = (self.body_timeout, self.limits.stats.clone());
        let first = Arc::new(FirstRequest::default());
        let arrived = first.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            arrived.arrived();
            request.extensions_mut().insert(ConnectInfo(remote));
            request.extensions_mut().insert(slot.clone());
            let request = request.map(|body| Deadline::new(body, body_timeout, stats.clone()));
            let mut router = router.clone();
            async move { router.call(request).await }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let served = tokio::select! {
            served = watcher.watch(connection) => served,
            () = first.missed(deadline) => {
                self.limits
                    .stats
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "no request within the handshake timeout");
                return;
            }
        };
        if let Err(e) = served {
            if is_header_timeout(&*e) {
                self.limits
                    .stats
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
            }
            if !self.shutdown.is_cancelled() {
                tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
        }
    }
}

/// Whether a connection's first request arrived: set by its service, awaited by its task.
#[derive(Default)]
struct FirstRequest {
    seen: AtomicBool,
    notify: Notify,
}

impl FirstRequest {
    /// One atomic swap per request; the first also wakes the connection's task.
    fn arrived(&self) {
        if !self.seen.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Ready when `deadline` passed with no request; never ready once one came.
    async fn missed(&self, deadline: Instant) {
        if tokio::time::timeout_at(deadline, self.notify.notified())
            .await
            .is_ok()
            || self.seen.load(Ordering::Relaxed)
        {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether hyper closed the connection because request headers did not arrive in time.
fn is_header_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The HTTP listener (which also carries WebSocket connections).
impl crate::metrics::Source for ListenerStats {
    fn collect(&self, s: &mut crate::metrics::Snapshot) {
        let h = self;
        s.gauge(
            "http_connections_open",
            "Connections holding a place on the HTTP listener now, WebSocket included.",
            crate::metrics::read(&h.open),
        );
        s.counter(
            "http_connections_accepted",
            "Connections given a place on the HTTP listener.",
            crate::metrics::read(&h.accepted),
        );
        s.counters(
            "http_connections_refused",
            "Connections the HTTP listener closed at once, by reason (the caps in [http], or no handshake in time).",
            "reason",
            [
                ("max_connections", crate::metrics::read(&h.refused_total_cap)),
                ("max_connections_per_ip", crate::metrics::read(&h.refused_per_ip)),
                ("handshake_timeout", crate::metrics::read(&h.handshake_timeouts)),
            ],
        );
        s.counters(
            "tls_handshake_failures",
            crate::metrics::families::TLS_FAILURES,
            "listener",
            [("http", crate::metrics::read(&h.tls_handshake_failures))],
        );
    }
}
