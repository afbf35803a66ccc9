//! The HTTP listener ([`listener`]) and its routes: health, metrics, the REST API
//! ([`api`]), inbound webhooks ([`inbound_webhooks`]), the JavaScript SDK ([`sdk`]) and the web
//! dashboard and demos ([`pages`]), both static files ([`assets`]),
//! in one router that the WebSocket side extends with `/ws` and reuses for HTTP carried
//! over a WebSocket. Handlers take their
//! narrow parts of [`state::HttpState`]. [`web`] checks what a browser sends before any
//! route sees it.

pub mod api;
mod assets;
pub mod config;
mod deadline;
pub mod inbound_webhooks;
pub mod listener;
mod metrics;
mod pages;
mod sdk;
pub mod state;
pub mod web;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use state::HttpState;

/// Every HTTP route but the WebSocket upgrade, which the WebSocket side adds to this
/// router (it also serves HTTP requests carried over a WebSocket with it).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .nest("/api/v1", api::router(state.limits))
        .merge(inbound_webhooks::routes())
        .merge(sdk::routes())
        .merge(pages::routes(state.about.dashboard, state.about.demos))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.limits.max_message_size,
        ))
        .with_state(state)
}

/// Liveness for load balancers and systemd checks: 200 while the daemon serves,
/// 503 once shutdown has begun. A failing store (a full disk) makes the status
/// `degraded` but keeps 200: delivery goes on without it.
async fn healthz(
    State(state): State<HttpState>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let stats = state.hub.stats();
    let status = if state.shutdown.is_cancelled() {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    let mqtt = state.broker.as_ref().map(|b| {
        let m = b.stats();
        json!({
            "connections": m.connections,
            "connects_refused": m.connects_refused,
            "messages_in": m.messages_in,
            "messages_out": m.messages_out,
            "publishes_denied": m.publishes_denied,
            "subscribes_denied": m.subscribes_denied,
            "protocol_errors": m.protocol_errors,
            "connects_too_large": m.connects_too_large,
            "egress_published": m.egress_published,
            "egress_dropped": m.egress_dropped,
            "tls_handshake_failures": m.tls_handshake_failures,
            "subscribes_over_quota": m.subscribes_over_quota,
            "too_large_for_device": m.too_large_for_device,
            "sessions_waiting": m.sessions_waiting,
            "sessions_expired": m.sessions_expired,
            "limit_disconnects": {
                "receive_maximum": m.limit_disconnects.receive_maximum,
                "topic_alias": m.limit_disconnects.topic_alias,
            },
        })
    });
    let store = state.store.view();
    let cluster = state.cluster.as_ref().map(|c| c.health());
    // A box that cannot reach Redis still serves what it has, but publishes fail.
    let cut_off = state.cluster.as_ref().is_some_and(|c| !c.reachable());
    let body = json!({
        "status": match (status.is_success(), store.failing_since.is_some() || cut_off) {
            (false, _) => "shutting_down",
            (true, true) => "degraded",
            (true, false) => "ok",
        },
        "cluster": cluster,
        "store": store,
        "version": env!("CARGO_PKG_VERSION"),
        "connections": stats.connections,
        "subscriptions": stats.subscriptions,
        "published": stats.published,
        "delivered": stats.delivered,
        "dropped": stats.dropped,
        "slow_consumer_closes": stats.slow_consumer_closes,
        "retained": stats.retained,
        "forbidden": stats.forbidden,
        "auth": state.auth.rejections.snapshot(),
        "mqtt": mqtt,
        "http": state.listener.to_json(),
        "webhooks": state.webhooks.stats(),
        "hooks": state.hooks.stats(),
    });
    (status, Json(body))
}
