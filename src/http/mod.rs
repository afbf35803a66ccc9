//! The HTTP listener's routes: the WebSocket endpoint, health, metrics and the REST API
//! (`api`), in one router so that HTTP carried over WebSocket can reuse it.

pub mod api;
pub mod config;
pub mod hooks;
pub mod listener;
mod metrics;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::server::App;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .nest("/api/v1", api::router(&app.config.http))
        .merge(hooks::routes())
        .layer(axum::extract::DefaultBodyLimit::max(
            app.config.ws.max_message_size.get(),
        ))
        .with_state(app)
}

/// Liveness for load balancers and systemd checks: 200 while the daemon serves,
/// 503 once shutdown has begun.
async fn healthz(State(app): State<Arc<App>>) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let stats = app.hub.stats();
    let status = if app.shutdown.is_cancelled() {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    let mqtt = app.broker.as_ref().map(|b| {
        let m = b.stats();
        json!({
            "connections": m.connections,
            "connects_refused": m.connects_refused,
            "messages_in": m.messages_in,
            "messages_out": m.messages_out,
            "publishes_denied": m.publishes_denied,
            "subscribes_denied": m.subscribes_denied,
            "protocol_errors": m.protocol_errors,
            "egress_published": m.egress_published,
            "egress_dropped": m.egress_dropped,
            "tls_handshake_failures": m.tls_handshake_failures,
        })
    });
    let body = json!({
        "status": if status.is_success() { "ok" } else { "shutting_down" },
        "version": env!("CARGO_PKG_VERSION"),
        "connections": stats.connections,
        "subscriptions": stats.subscriptions,
        "published": stats.published,
        "delivered": stats.delivered,
        "dropped": stats.dropped,
        "slow_consumer_closes": stats.slow_consumer_closes,
        "retained": stats.retained,
        "forbidden": stats.forbidden,
        "auth": app.auth.rejections.snapshot(),
        "mqtt": mqtt,
        "http": app.http_stats.to_json(),
        "webhooks": app.webhooks.stats(),
        "hooks": app.hooks.stats(),
    });
    (status, Json(body))
}
