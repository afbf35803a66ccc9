//! `GET /metrics`: the Prometheus scrape endpoint.
//!
//! Open to anyone by default (`metrics.public`), as scrapers usually hold no credential
//! and the figures name no client; the packaged configuration asks for the admin token.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::api::{ApiError, Caller};
use super::state::{About, HttpState};
use crate::metrics::{prometheus, Registry};
use switchboard_core::protocol::ErrorCode;

pub async fn metrics(
    State(state): State<HttpState>,
    State(about): State<About>,
    State(registry): State<Arc<Registry>>,
    request: Request,
) -> Result<Response, ApiError> {
    if !about.metrics_enabled {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "metrics are turned off (metrics.enabled)",
        ));
    }
    if !about.metrics_public {
        let (mut parts, _) = request.into_parts();
        // Without a header the caller would fall back to the anonymous identity; a
        // request carried over a WebSocket is its connection's identity.
        let carried = parts.extensions.get::<super::api::Carried>().is_some();
        if !carried && !parts.headers.contains_key(header::AUTHORIZATION) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "/metrics needs `Authorization: Bearer <admin token>` (metrics.public is false)",
            ));
        }
        Caller::from_request_parts(&mut parts, &state)
            .await?
            .require_admin()?;
    }
    let text = prometheus::encode(registry.snapshot()).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "cannot encode the metrics",
        )
    })?;
    Ok(([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response())
}
