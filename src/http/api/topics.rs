//! What is subscribed to, and who is present on a topic.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiQuery, Caller};
use crate::http::state::HttpState;
use crate::hub::Hub;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/topics", get(topics))
        .route("/presence", get(presence))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsQuery {
    /// Only filters starting with this.
    #[serde(default)]
    prefix: Option<String>,
}

/// Every subscribed filter with its number of subscribers, limited to what the caller
/// may itself subscribe to: a client learns nothing about topics it cannot see.
async fn topics(
    State(hub): State<Arc<Hub>>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<TopicsQuery>,
) -> Json<serde_json::Value> {
    let prefix = query.prefix.as_deref().unwrap_or("");
    let mut topics: Vec<(String, usize)> = hub
        .subscribed_filters()
        .into_iter()
        .filter(|(f, _)| f.starts_with(prefix) && caller.grants.check_subscribe(f).is_ok())
        .collect();
    topics.sort();
    let topics: Vec<serde_json::Value> = topics
        .into_iter()
        .map(|(filter, subscribers)| json!({"filter": filter, "subscribers": subscribers}))
        .collect();
    Json(json!({ "topics": topics }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    topic: String,
}

async fn presence(
    State(hub): State<Arc<Hub>>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<PresenceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let members = hub.presence(&caller.grants, &query.topic)?;
    Ok(Json(json!({"topic": query.topic, "members": members})))
}
