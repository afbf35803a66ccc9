//! `/api/v1/webhooks`: outbound webhook status and the dead-letter list.

use std::sync::Arc;

use axum::Router;

use crate::server::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
}
