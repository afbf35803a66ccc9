//! `/api/v1/bridges`: the status of every link to another MQTT broker (upstream
//! bridges, and the broker of external mode). Admin only. The OpenAPI description of
//! these routes is `openapi/bridges.json`; keep them equal.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, Caller};
use crate::http::state::HttpState;
use crate::uplinks::Bridges;
use switchboard_core::protocol::ErrorCode;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/bridges", get(list))
        .route("/bridges/{name}", get(one))
}

async fn list(
    State(bridges): State<Arc<Bridges>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!({"bridges": bridges.status()})))
}

async fn one(
    State(bridges): State<Arc<Bridges>>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Path(name) = name.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            e.body_text(),
        )
    })?;
    let status = bridges.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no bridge named `{name}`"),
        )
    })?;
    Ok(Json(json!(status)))
}
