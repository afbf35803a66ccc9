//! `GET /api/v1/stats`: the live figures of `/metrics`, as JSON (see docs/metrics.md).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, Caller};
use crate::metrics::Snapshot;
use crate::server::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/stats", get(stats))
}

async fn stats(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Snapshot>, ApiError> {
    caller.require_admin()?;
    Ok(Json(Snapshot::take(&app)))
}
