//! WebSocket transport: the `/ws` upgrade, and one task pair per connection.
//!
//! Owns everything between the socket and the Hub: the handshake, socket buffer sizes,
//! frame limits, heartbeats, close codes. Where a frame's bytes become a request is
//! `connection.rs`; what a request does is `dispatch.rs`; the JSON itself is
//! `switchboard_core::protocol`.
//!
//! The upgrade is done here rather than by axum's extractor so the connection keeps the
//! raw socket: after sending a close frame we half-close it and drain what the peer still
//! sends, otherwise unread input makes the kernel answer with a reset that can destroy
//! the close frame (and its code) before the client reads it. It also lets the upgrade
//! answer a permessage-deflate offer (`ws.compression`), which axum's extractor cannot.

pub mod config;
mod connection;
pub mod deflate;
mod dispatch;
mod http;
pub mod metrics;
mod rate;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use axum::routing::get;
use axum::Router;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Authenticator, Principal};
use crate::hub::Hub;
use crate::metrics::Instruments;
use crate::recordings::Recorder;
use config::WsConfig;
use connection::Identity;
use switchboard_core::deflate::{accept_offer, Inflating};
use switchboard_core::quiet::Throttle;
use switchboard_core::web::{Refusal, WebPolicy};

/// What the WebSocket side serves from; filled by the composition root.
pub struct WsState {
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    /// Recordings, for the `record` op.
    pub recorder: Arc<Recorder>,
    pub config: WsConfig,
    /// How long a connection may take to send its `auth` frame (`auth.auth_timeout`).
    pub auth_timeout: Duration,
    /// Which pages may open a WebSocket (`auth.allowed_origins`); the host name was
    /// checked by the HTTP layer before the upgrade got here.
    pub web: WebPolicy,
    pub instruments: Arc<Instruments>,
    /// Cancelled when shutdown begins: no new connection is served.
    pub shutdown: CancellationToken,
    /// Every connection holds a token, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The HTTP routes, which serve the requests carried over a WebSocket (`http` op).
    pub api: Router,
    /// Compresses frames for connections that negotiated permessage-deflate.
    pub deflate: Arc<deflate::Deflater>,
}

/// `GET /ws` added to the HTTP routes, which also serve the requests carried over it.
pub fn routes(state: WsState) -> Router {
    let api = state.api.clone();
    api.merge(
        Router::new()
            .route("/ws", get(upgrade))
            .with_state(Arc::new(state)),
    )
}

/// Longest user id accepted in `?user=`.
const MAX_USER_LEN: usize = 128;

#[derive(Deserialize)]
pub struct ConnectParams {
    /// A name an anonymous client gives itself. Unverified: only where anonymous
    /// clients are allowed, and never together with a credential.
    user: Option<String>,
    /// A credential, for browsers, which cannot set `Authorization` on a WebSocket.
    token: Option<String>,
}

/// `GET /ws`: checks the handshake, answers 101 and serves the connection.
async fn upgrade(
    State(state): State<Arc<WsState>>,
    Query(params): Query<ConnectParams>,
    mut request: Request,
) -> Response {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    if !state
        .web
        .origin_allowed(header(header::ORIGIN), header(header::HOST))
    {
        state.auth.rejections.count_origin_refused();
        // The page sees only close 1006; its developer finds the reason here.
        static REFUSED: Throttle = Throttle::per_secs(10);
        let refusal = Refusal::Origin(header(header::ORIGIN).unwrap_or_default().to_owned());
        crate::http::web::log_refusal(&REFUSED, "websocket refused", &refusal);
        return refuse(StatusCode::FORBIDDEN, refusal.to_string());
    }
    if let Some(user) = &params.user {
        if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("`user` must be 1 to {MAX_USER_LEN} printable characters"),
            );
        }
    }
    let accept = match check_handshake(request.method(), request.headers()) {
        Ok(accept) => accept,
        Err((status, why)) => return refuse(status, why.into()),
    };
    // Only a real upgrade gets its credential checked (and a refusal counted).
    let identity = match identity(&state, request.headers(), params) {
        Ok(identity) => identity,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why.into()),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded".into(),
        );
    };
    // The connection's place in the listener's connection caps: held for as long as
    // the WebSocket lives, which is longer than the HTTP connection that carried it.
    let slot = request
        .extensions()
        .get::<Arc<crate::http::listener::ConnectionSlot>>()
        .cloned();
    let ws = &state.config;
    let max = ws.max_message_size.get();
    let extensions = request.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
    let deflate = ws
        .compression
        .then(|| accept_offer(extensions.iter().filter_map(|v| v.to_str().ok())))
        .flatten();
    let compressed = deflate.is_some();
    let config = WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_size.get())
        .write_buffer_size(ws.write_buffer_size)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    tokio::spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let io = if compressed {
                    Inflating::new(io, max)
                } else {
                    Inflating::plain(io)
                };
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                connection::serve(socket, state, identity).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(deflate) = deflate {
        response = response.header(header::SEC_WEBSOCKET_EXTENSIONS, deflate);
    }
    response
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Who the connection will be: proven by a credential on the upgrade, anonymous, or
/// not known until an `auth` frame arrives.
fn identity(
    state: &WsState,
    headers: &HeaderMap,
    params: ConnectParams,
) -> Result<Identity, &'static str> {
    match (credential(headers, params.token.as_deref()), params.user) {
        (Some(_), Some(_)) => {
            Err("`user` cannot be combined with a credential: the credential names the user")
        }
        (Some(credential), None) => Ok(match state.auth.authenticate(credential) {
            Ok(principal) => Identity::Proven(Arc::new(principal)),
            Err(e) => Identity::Refused(e),
        }),
        (None, user) => Ok(match (state.auth.anonymous(), user) {
            (Some(anonymous), None) => Identity::Proven(anonymous),
            (Some(anonymous), Some(user)) => Identity::Proven(Arc::new(Principal {
                user: Some(user),
                ..(*anonymous).clone()
            })),
            (None, Some(_)) => Identity::Refused(AuthError::Missing),
            (None, None) => Identity::AwaitingAuth,
        }),
    }
}

/// A credential from `Authorization: Bearer …`, else from `?token=`.
fn credential<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        });
    bearer.or(query).filter(|c| !c.is_empty())
}

/// RFC 6455 §4.2.1: what a client's opening handshake must carry. Returns the
/// `Sec-WebSocket-Accept` value, or why the request is refused.
fn check_handshake(
    method: &Method,
    headers: &HeaderMap,
) -> Result<String, (StatusCode, &'static str)> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if method != Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade: GET with `Connection: upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported",
        ));
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(derive_accept_key(key.as_bytes())),
        _ => Err((StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key")),
    }
}

fn refuse(status: StatusCode, why: String) -> Response {
    let mut response = (status, why).into_response();
    if status == StatusCode::UPGRADE_REQUIRED {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    response
}
