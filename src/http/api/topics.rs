//! What is subscribed to, and who is present on a topic.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiQuery, Caller};
use crate::http::state::HttpState;
use crate::hub::Hub;
use switchboard_core::protocol::ErrorCode;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/topics", get(topics))
        .route("/presence", get(presence))
}

/// Filters per page of `GET /topics` unless `limit` says fewer; also the most it may ask.
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsQuery {
    /// Only filters starting with this.
    #[serde(default)]
    prefix: Option<String>,
    /// Filters per page, 1 to [`MAX_PAGE`].
    #[serde(default)]
    limit: Option<usize>,
    /// The `next` of the previous page: this page starts after it.
    #[serde(default)]
    after: Option<String>,
}

/// A page of the subscribed filters with their number of subscribers, in byte order,
/// limited to what the caller may itself subscribe to: a client learns nothing about
/// topics it cannot see. Paged so that anyone's listing holds the index for one page.
/// With `[cluster]` on, the counts are this box's (each subscriber is connected to one
/// box), and `node` says which box that is (docs/cluster.md).
async fn topics(
    State(hub): State<Arc<Hub>>,
    State(cluster): State<Option<Arc<crate::cluster::Cluster>>>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<TopicsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        ));
    }
    let prefix = query.prefix.as_deref().unwrap_or("");
    let page = hub.subscribed_filters(prefix, query.after.as_deref(), limit, |f| {
        caller.grants.check_subscribe(f).is_ok()
    });
    let topics: Vec<serde_json::Value> = page
        .filters
        .into_iter()
        .map(|(filter, subscribers)| json!({"filter": filter, "subscribers": subscribers}))
        .collect();
    let mut page = json!({ "topics": topics, "next": page.next });
    if let Some(cluster) = cluster {
        page["node"] = cluster.node_id().into();
    }
    Ok(Json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    topic: String,
}

/// With `[cluster]` on, the members of every box, each with its `node`; off, as always.
async fn presence(
    State(hub): State<Arc<Hub>>,
    State(cluster): State<Option<Arc<crate::cluster::Cluster>>>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<PresenceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let members = hub.presence_on(&caller.grants, &query.topic)?;
    let members: Vec<serde_json::Value> = members
        .into_iter()
        .map(|(node, member)| {
            let mut m = json!(member);
            if let Some(here) = &cluster {
                m["node"] = json!(node.as_deref().unwrap_or(here.node_id()));
            }
            m
        })
        .collect();
    Ok(Json(json!({"topic": query.topic, "members": members})))
}
