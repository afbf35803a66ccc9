//! `GET /api/v1/stats`: the live figures of `/metrics`, as JSON.

use std::sync::Arc;

use axum::Router;

use crate::server::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
}
