//! The byte pipe under an MQTT session: a TCP socket, or WebSocket binary messages.

use std::io;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) enum Stream {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl Stream {
    /// Completes the WebSocket handshake, answering the `mqtt` subprotocol that MQTT.js and
    /// paho ask for (browsers refuse the connection if it is not echoed).
    pub async fn websocket(socket: TcpStream, max_packet_size: usize) -> io::Result<Stream> {
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(max_packet_size + 8);
        config.max_frame_size = Some(max_packet_size + 8);
        let ws = tokio_tungstenite::accept_hdr_async_with_config(socket, choose_mqtt, Some(config))
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Stream::Ws(Box::new(ws)))
    }

    /// Appends whatever arrives next to `buf`; `Ok(0)` at end of stream.
    pub async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Ws(ws) => loop {
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
            },
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Ws(ws) => ws
                .send(Message::binary(bytes.to_vec()))
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e)),
        }
    }

    pub async fn shutdown(&mut self) {
        match self {
            Stream::Tcp(s) => {
                let _ = s.shutdown().await;
            }
            Stream::Ws(ws) => {
                let _ = SinkExt::close(ws).await;
            }
        }
    }
}

// The signature is tungstenite's handshake callback; the large error is theirs.
#[allow(clippy::result_large_err)]
fn choose_mqtt(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
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
    Ok(response)
}
