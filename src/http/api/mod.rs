//! The REST API under `/api/v1`: what a server or script does without a WebSocket.
//!
//! Every handler identifies its caller with [`Caller`] and hands the request to the
//! Hub with the caller's grants, so HTTP is held to the very permissions a WebSocket
//! client is. Errors are JSON with the same stable codes as WebSocket `error` frames.

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::state::{HttpState, Limits};
use crate::auth::{AuthError, Authenticator, Principal};
use crate::hub::HubError;
use crate::store::StoreError;
use switchboard_core::protocol::ErrorCode;

mod bridges;
mod clients;
mod cluster;
mod history;
mod idempotency;
mod info;
mod messages;
pub mod openapi;
mod pubkeys;
mod recordings;
mod stats;
mod topics;
mod webhooks;

pub use idempotency::IdempotencyCache;
pub use pubkeys::ANNOUNCE_PREFIX as E2E_KEYS_PREFIX;
pub use recordings::JSON_LINES;

/// The `/api/v1` routes. Unknown paths and methods get JSON errors like every other
/// refusal, so a client needs one error parser.
pub fn router(limits: Limits) -> Router<HttpState> {
    Router::new()
        .merge(messages::routes(limits))
        .merge(clients::routes())
        .merge(cluster::routes())
        .merge(topics::routes())
        .merge(history::routes())
        .merge(info::routes())
        .merge(stats::routes())
        .merge(webhooks::routes())
        .merge(recordings::routes(limits))
        .merge(bridges::routes())
        .merge(pubkeys::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this path does not take that method",
    )
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

impl ApiError {
    /// The JSON body, `{"error":{"code","message"}}`; also one item of a batch reply.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(self.body());
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
            ErrorCode::PresenceDisabled | ErrorCode::HistoryDisabled => StatusCode::NOT_FOUND,
            ErrorCode::EncryptionRequired => StatusCode::UNPROCESSABLE_ENTITY,
            // The cluster bus (Redis) did not take the message: retry later.
            ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A store failure: logged with its cause (the path, sled's reason), answered as
/// `internal` without either.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the store failed; see the daemon's log",
        )
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

/// The identity of the WebSocket connection an HTTP request was carried over. Only
/// in-process code can put it in a request's extensions, so a remote client cannot
/// claim it; when present, it is the caller and any `Authorization` header is ignored.
#[derive(Clone)]
pub struct Carried(pub Arc<Principal>);

/// The authenticated caller: `Authorization: Bearer <credential>`, or anonymous where
/// anonymous clients are allowed.
pub struct Caller(pub Arc<Principal>);

impl<S> FromRequestParts<S> for Caller
where
    Arc<Authenticator>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Authenticator>::from_ref(state);
        if let Some(Carried(principal)) = parts.extensions.get::<Carried>() {
            return Ok(Caller(principal.clone()));
        }
        let header = parts.headers.get(header::AUTHORIZATION);
        let Some(value) = header else {
            return auth
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
        Ok(Caller(Arc::new(auth.authenticate(credential)?)))
    }
}

/// Parses a JSON body, answering `bad_json` or `bad_request` (naming the field) as
/// WebSocket does.
pub fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::BadJson
        } else {
            ErrorCode::BadRequest
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            switchboard_core::protocol::json_error::<T>(bytes, e),
        )
    })
}

/// The raw request body, refused as JSON errors: `too_large` past the body limit.
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::TooLarge,
                        "the request body is larger than the limit",
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        e.body_text(),
                    )
                }
            })
    }
}

/// Query parameters, refused as a JSON `bad_request`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    e.body_text(),
                )
            })
    }
}

/// Path parameters, refused as a JSON `bad_request`.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    e.body_text(),
                )
            })
    }
}
