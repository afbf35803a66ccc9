//! The byte pipe under an MQTT session: a TCP socket or WebSocket binary messages, either
//! of them plain or inside TLS.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use switchboard_core::quiet::{clip, Throttle};
use switchboard_core::web::{Refusal, WebPolicy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TcpStream>>),
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

impl Stream {
    /// Completes the WebSocket handshake, answering the `mqtt` subprotocol that MQTT.js and
    /// paho ask for (browsers refuse the connection if it is not echoed). A browser page
    /// the daemon's web policy refuses gets 403 (foreign `Origin`) or 421 (a `Host` name
    /// it is not reached by) before any MQTT byte is read.
    pub async fn websocket<S>(
        socket: S,
        max_packet_size: usize,
        web: &WebPolicy,
        remote: SocketAddr,
    ) -> io::Result<WebSocketStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(max_packet_size + 8);
        config.max_frame_size = Some(max_packet_size + 8);
        // The error type is tungstenite's handshake callback's; the large error is theirs.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            check_page(web, remote, request)?;
            Ok(choose_mqtt(request, response))
        };
        tokio_tungstenite::accept_hdr_async_with_config(socket, callback, Some(config))
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The DER of the end-entity certificate the device presented, if it presented one.
    /// rustls exposes it only after the client verifier accepted it.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let tls = match self {
            Stream::Tls(s) => s.get_ref().1,
            Stream::Wss(ws) => ws.get_ref().get_ref().1,
            Stream::Tcp(_) | Stream::Ws(_) => return None,
        };
        tls.peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
    }

    /// Appends whatever arrives next to `buf`; `Ok(0)` at end of stream.
    pub async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
            Stream::Ws(ws) => read_ws(ws, buf).await,
            Stream::Wss(ws) => read_ws(ws, buf).await,
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                // rustls holds the records until flushed.
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Ws(ws) => write_ws(ws, bytes).await,
            Stream::Wss(ws) => write_ws(ws, bytes).await,
        }
    }

    pub async fn shutdown(&mut self) {
        match self {
            Stream::Tcp(s) => {
                let _ = s.shutdown().await;
            }
            Stream::Tls(s) => {
                // Sends close_notify, then closes the socket's write side.
                let _ = s.shutdown().await;
            }
            Stream::Ws(ws) => {
                let _ = SinkExt::close(ws).await;
            }
            Stream::Wss(ws) => {
                let _ = SinkExt::close(ws).await;
            }
        }
    }
}

async fn read_ws<S>(ws: &mut WebSocketStream<S>, buf: &mut BytesMut) -> io::Result<usize>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(0),
            Some(Ok(Message::Binary(data))) => {
                buf.extend_from_slice(&data);
                // An empty binary frame is legal; keep reading rather than report EOF.
                if !data.is_empty() {
                    return Ok(data.len());
                }
            }
            Some(Ok(Message::Text(_))) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "MQTT over WebSocket uses binary frames",
                ))
            }
            Some(Ok(_)) => {} // ping/pong are answered by tungstenite
            Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

async fn write_ws<S>(ws: &mut WebSocketStream<S>, bytes: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::binary(bytes.to_vec()))
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))
}

/// The web policy at the upgrade. A refused browser sees only a failed connection, so the
/// reason goes to the log (info, one line per window: a page can retry in a loop).
// The error type is tungstenite's handshake callback's; the large error is theirs.
#[allow(clippy::result_large_err)]
fn check_page(web: &WebPolicy, remote: SocketAddr, request: &Request) -> Result<(), ErrorResponse> {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let Err(refusal) = web.check(header("origin"), header("host")) else {
        return Ok(());
    };
    static REFUSED: Throttle = Throttle::per_secs(10);
    if let Some(held_back) = REFUSED.admit() {
        let why = refusal.to_string();
        tracing::info!(%remote, held_back, "MQTT WebSocket refused: {}", clip(&why, 300));
    }
    let status = match refusal {
        Refusal::Host(_) => StatusCode::MISDIRECTED_REQUEST,
        Refusal::Origin(_) => StatusCode::FORBIDDEN,
    };
    let mut response = ErrorResponse::new(Some(refusal.to_string()));
    *response.status_mut() = status;
    Err(response)
}

fn choose_mqtt(request: &Request, mut response: Response) -> Response {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.eq_ignore_ascii_case("mqtt") || p.eq_ignore_ascii_case("mqttv3.1"));
    if let Some(protocol) = offered {
        if let Ok(value) = HeaderValue::from_str(protocol) {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", value);
        }
    }
    response
}
