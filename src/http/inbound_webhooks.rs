//! Inbound webhooks: `POST /hooks/<name>` publishes a third-party service's request body
//! to the hook's topic once its HMAC signature checks out (docs/hooks.md).
//!
//! Owns the route, the `[[hooks]]` configuration, the secrets and the replay window.
//! It publishes through the Hub with a grant for exactly the hook's topic, so a hook can
//! never write anywhere else; it knows nothing of who subscribes.

pub mod config;
pub mod metrics;
mod registry;
mod replay;
mod secret;
mod stats;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

pub use config::HookConfig;
pub use registry::{Hook, HookSecrets, Hooks, LoadError};
pub use stats::{HookCounts, RefusedCounts};

use super::state::{HttpState, Limits};
use crate::http::api::ApiError;
use crate::hub::Hub;
use registry::{Delivered, DeliveryError};
use stats::Refusal;
use switchboard_core::protocol::ErrorCode;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/hooks/{name}", post(receive).fallback(method_not_allowed))
}

async fn receive(
    State(hooks): State<Arc<Hooks>>,
    State(hub): State<Arc<Hub>>,
    State(limits): State<Limits>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(hook) = hooks.get(&name) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no inbound hook named `{name}`"),
        )
        .into_response();
    };
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            hook.refused(Refusal::TooLarge);
            let limit = limits.max_message_size;
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!("the body is larger than {limit} bytes (ws.max_message_size)"),
            )
            .into_response();
        }
        Err(e) => {
            return ApiError::new(e.status(), ErrorCode::BadRequest, e.body_text()).into_response()
        }
    };
    match hook.deliver(&hub, &headers, &body, now_s()) {
        Ok(Delivered::Published(p)) => (
            StatusCode::ACCEPTED,
            Json(json!({"seq": p.seq, "delivered": p.delivered})),
        )
            .into_response(),
        Ok(Delivered::Duplicate) => {
            (StatusCode::OK, Json(json!({"duplicate": true}))).into_response()
        }
        Err(DeliveryError::Signature(e)) => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                e.to_string(),
            )
            .into_response();
            // The API's 401 asks for a bearer token; a hook wants a signature instead.
            response.headers_mut().remove(header::WWW_AUTHENTICATE);
            response
        }
        Err(DeliveryError::Publish(e)) => ApiError::from(e).into_response(),
    }
}

async fn method_not_allowed() -> impl IntoResponse {
    (
        [(header::ALLOW, "POST")],
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "inbound hooks take POST only",
        ),
    )
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
