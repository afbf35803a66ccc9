//! The boxes of the cluster (admin): `GET /cluster/nodes`, from their heartbeats in
//! Redis (`crate::cluster::nodes`). Without `[cluster]` there is no cluster: 404.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, Caller};
use crate::cluster::Cluster;
use crate::http::state::HttpState;
use switchboard_core::protocol::ErrorCode;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/cluster/nodes", get(nodes))
}

async fn nodes(
    State(cluster): State<Option<Arc<Cluster>>>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let cluster = cluster.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "this box is not in a cluster ([cluster] is off)",
        )
    })?;
    Ok(Json(serde_json::json!({
        "node": cluster.node_id(),
        "nodes": cluster.nodes(),
    })))
}
