//! What this server is: `GET /info`, and the API's own description, `GET /openapi.json`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::messages::MAX_BATCH;
use super::{openapi, Caller};
use std::sync::Arc;

use switchboard_bridge::Broker;

use crate::http::state::{About, HttpState, Limits};
use switchboard_core::protocol;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/info", get(info))
        .route("/openapi.json", get(document))
}

async fn info(
    State(about): State<About>,
    State(broker): State<Option<Arc<Broker>>>,
    State(limits): State<Limits>,
    State(cluster): State<Option<Arc<crate::cluster::Cluster>>>,
    _caller: Caller,
) -> Json<serde_json::Value> {
    let now = switchboard_core::clock::now_ms();
    Json(json!({
        "name": "switchboard",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": protocol::VERSION,
        "started_at": about.started_at,
        "uptime_s": now.saturating_sub(about.started_at) / 1000,
        "mqtt": broker.is_some(),
        "cluster": cluster.map(|c| c.health()),
        "limits": {
            "max_message_size": limits.max_message_size,
            "max_batch_messages": MAX_BATCH,
            "max_batch_bytes": limits.max_batch_bytes,
            "idempotency_window_s": limits.idempotency_window.as_secs(),
        },
    }))
}

/// Public, like any API description: it says what exists, not what anyone holds.
async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
}
