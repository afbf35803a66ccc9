//! Accepting device sockets: TCP_NODELAY on, the TLS handshake on the TLS listeners, the
//! WebSocket handshake (with the daemon's web policy) for MQTT over WebSocket, one task per connection, errors from one connection never reaching the loop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::session;
use crate::transport::Stream;
use crate::{Shared, StartError, Transport};

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

pub(crate) async fn accept_loop(listener: TcpListener, transport: Transport, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => return,
        };
        let (socket, remote) = match accepted {
            Ok(found) => {
                backoff = Duration::from_millis(5);
                found
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "MQTT accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let shared_for_task = shared.clone();
        shared
            .tracker
            .spawn(serve(socket, remote, transport, shared_for_task));
    }
}

async fn serve(socket: TcpStream, remote: SocketAddr, transport: Transport, shared: Arc<Shared>) {
    // Without this, Nagle's algorithm holds small publishes to devices back by tens of
    // milliseconds whenever an earlier segment is unacknowledged.
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    // The TLS and WebSocket handshakes share one deadline: a device that dawdles through
    // both still gets only the connect timeout before CONNECT is due.
    let deadline = Instant::now() + shared.config.connect_timeout;
    let max_packet_size = shared.config.max_packet_size;
    let stream = match transport {
        Transport::Tcp => Stream::Tcp(socket),
        Transport::WebSocket => {
            match timeout_at(
                deadline,
                Stream::websocket(socket, max_packet_size, &shared.config.web, remote),
            )
            .await
            {
                Ok(Ok(ws)) => Stream::Ws(Box::new(ws)),
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "MQTT WebSocket handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
        Transport::Tls | Transport::SecureWebSocket => {
            let Some(tls) = tls_handshake(socket, remote, deadline, &shared).await else {
                return;
            };
            if transport == Transport::Tls {
                Stream::Tls(Box::new(tls))
            } else {
                match timeout_at(
                    deadline,
                    Stream::websocket(tls, max_packet_size, &shared.config.web, remote),
                )
                .await
                {
                    Ok(Ok(ws)) => Stream::Wss(Box::new(ws)),
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "MQTT WebSocket handshake failed");
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    };
    session::serve(stream, remote, transport, shared).await;
}

/// The TLS handshake with the configuration current now, so a reloaded certificate
/// applies from the next connection on. Failures are counted and logged at debug: they
/// are the client's business (a wrong CA, no client certificate, plain MQTT on the TLS
/// port), not the operator's.
async fn tls_handshake(
    socket: TcpStream,
    remote: SocketAddr,
    deadline: Instant,
    shared: &Shared,
) -> Option<TlsStream<TcpStream>> {
    let Some(source) = &shared.config.tls else {
        return None;
    };
    let acceptor = TlsAcceptor::from(source.current());
    match timeout_at(deadline, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            shared
                .stats
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, error = %e, "MQTT TLS handshake failed");
            None
        }
        Err(_) => {
            shared
                .stats
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, "MQTT TLS handshake timed out");
            None
        }
    }
}
