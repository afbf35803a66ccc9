//! WebSocket transport: the `/ws` upgrade, and one task pair per connection.
//!
//! Owns everything between the socket and the Hub: socket buffer sizes, frame limits,
//! heartbeats, close codes. Where a frame's bytes become a request is
//! [`connection`]; what a request does is [`dispatch`]; the JSON itself is
//! `crate::protocol`.

mod connection;
mod dispatch;

use std::sync::Arc;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::server::App;

/// Longest user id accepted in `?user=`.
const MAX_USER_LEN: usize = 128;

#[derive(Deserialize)]
pub struct ConnectParams {
    /// The user this connection acts for. Without authentication configured the
    /// client names itself; the security layer replaces this with the token's subject.
    user: Option<String>,
}

/// `GET /ws`.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    Query(params): Query<ConnectParams>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(user) = &params.user {
        if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return (
                StatusCode::BAD_REQUEST,
                format!("`user` must be 1 to {MAX_USER_LEN} printable characters"),
            )
                .into_response();
        }
    }
    let ws_config = &app.config.ws;
    let max = ws_config.max_message_size.get();
    ws.read_buffer_size(ws_config.read_buffer_size.get())
        .write_buffer_size(ws_config.write_buffer_size)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| connection::serve(socket, app, params.user))
}
