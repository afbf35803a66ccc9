//! What this server is: `GET /info`, and the API's own description, `GET /openapi.json`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::messages::MAX_BATCH;
use super::{openapi, Caller};
use crate::server::App;
use switchboard_core::protocol;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/info", get(info))
        .route("/openapi.json", get(document))
}

async fn info(State(app): State<Arc<App>>, _caller: Caller) -> Json<serde_json::Value> {
    let config = &app.config;
    let now = switchboard_core::clock::now_ms();
    Json(json!({
        "name": "switchboard",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": protocol::VERSION,
        "started_at": app.started_at,
        "uptime_s": now.saturating_sub(app.started_at) / 1000,
        "mqtt": app.broker.is_some(),
        "limits": {
            "max_message_size": config.ws.max_message_size.get(),
            "max_batch_messages": MAX_BATCH,
            "max_batch_bytes": config.http.max_batch_bytes.get(),
            "idempotency_window_s": config.http.idempotency_window.as_secs(),
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
