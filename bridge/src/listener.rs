//! Accepting device sockets: TCP_NODELAY on, the WebSocket handshake for MQTT over
//! WebSocket, one task per connection, errors from one connection never reaching the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

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
    let stream = match transport {
        Transport::Tcp => Stream::Tcp(socket),
        Transport::WebSocket => {
            let handshake = Stream::websocket(socket, shared.config.max_packet_size);
            match tokio::time::timeout(shared.config.connect_timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "MQTT WebSocket handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    session::serve(stream, remote, transport, shared).await;
}
