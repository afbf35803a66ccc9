//! The REST API under `/api/v1`: what a server or script does without a WebSocket.
//!
//! Every handler identifies its caller with [`Caller`] and hands the request to the
//! Hub with the caller's grants, so HTTP is held to the very permissions a WebSocket
//! client is. Errors are JSON with the same stable codes as WebSocket `error` frames.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::{AuthError, Principal};
use crate::hub::{HubError, Origin, Publish, Sender};
use crate::protocol::{null, ErrorCode, Recipient};
use crate::server::App;

mod stats;
mod webhooks;

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/publish", post(publish))
        .route("/send", post(send))
        .route("/presence", get(presence))
        .merge(stats::routes())
        .merge(webhooks::routes())
}

/// An API error: the HTTP status and the body `{"error":{"code","message"}}`.
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let code = e.code();
        let status = match code {
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NoRecipient => StatusCode::NOT_FOUND,
            ErrorCode::PresenceDisabled => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            e.to_string(),
        )
    }
}

impl Caller {
    /// Operations on the server itself (clients, webhooks, stats) need the admin
    /// credential.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.grants.is_all() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "this operation needs the admin credential",
            ))
        }
    }
}

/// The authenticated caller: `Authorization: Bearer <credential>`, or anonymous where
/// anonymous clients are allowed.
pub struct Caller(pub Arc<Principal>);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION);
        let Some(value) = header else {
            return app
                .auth
                .anonymous()
                .map(Caller)
                .ok_or(AuthError::Missing.into());
        };
        let credential = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credential)| credential)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "expected `Authorization: Bearer <token or API key>`",
                )
            })?;
        Ok(Caller(Arc::new(app.auth.authenticate(credential)?)))
    }
}

/// Parses a JSON body, answering `bad_json` or `bad_request` as WebSocket does.
pub fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::BadJson
        } else {
            ErrorCode::BadRequest
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    })
}

/// Who an HTTP message is from, as subscribers see it.
fn from_label(caller: &Principal) -> String {
    match &caller.user {
        Some(user) => format!("http:{user}"),
        None => "http".into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    retain: bool,
}

async fn publish(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    bytes: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: PublishBody<'_> = body(&bytes)?;
    let from = from_label(&caller);
    let published = app.hub.publish(Publish {
        topic: &request.topic,
        event: request.event.as_deref(),
        data: request.data.unwrap_or_else(|| null()),
        from: &from,
        origin: Origin::Http,
        by: &caller.grants,
        retain: request.retain,
    })?;
    Ok(Json(
        json!({"seq": published.seq, "delivered": published.delivered}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody<'a> {
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

async fn send(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    bytes: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: SendBody<'_> = body(&bytes)?;
    let to = match (request.client, request.user) {
        (Some(client), None) => Recipient::Client(client),
        (None, Some(user)) => Recipient::User(user),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "needs exactly one of the fields `client` or `user`",
            ))
        }
    };
    let from = from_label(&caller);
    let delivered = app.hub.send_direct(
        Sender::external(&from, &caller),
        &to,
        request.event.as_deref(),
        request.data.unwrap_or_else(|| null()),
    )?;
    Ok(Json(json!({"delivered": delivered})))
}

#[derive(Deserialize)]
struct PresenceQuery {
    topic: String,
}

async fn presence(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Query(query): Query<PresenceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let members = app.hub.presence(&caller.grants, &query.topic)?;
    Ok(Json(json!({"topic": query.topic, "members": members})))
}
