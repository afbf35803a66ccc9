//! `GET /api/v1/stats`: the live figures of `/metrics`, as JSON (see docs/metrics.md).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, Caller};
use crate::http::state::HttpState;
use crate::metrics::{Registry, Snapshot};

pub fn routes() -> Router<HttpState> {
    Router::new().route("/stats", get(stats))
}

async fn stats(
    State(registry): State<Arc<Registry>>,
    caller: Caller,
) -> Result<Json<Snapshot>, ApiError> {
    caller.require_admin()?;
    Ok(Json(registry.snapshot()))
}
