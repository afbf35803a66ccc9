//! `/api/v1/webhooks`: outbound webhook status and the dead-letter list. Admin only.
//! The OpenAPI description of these routes is `openapi/webhooks.json`; keep them equal.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, Caller};
use crate::http::state::HttpState;
use crate::outbound_webhooks::Endpoint;
use crate::outbound_webhooks::Webhooks;
use crate::store::StoreError;
use switchboard_core::protocol::ErrorCode;

/// Dead letters listed when the request names no `limit`, and the most it may ask.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/webhooks", get(list))
        .route("/webhooks/{name}/dead", get(dead))
        .route("/webhooks/{name}/dead/retry", post(retry_all))
        .route("/webhooks/{name}/dead/{id}/retry", post(retry_one))
        .route("/webhooks/{name}/dead/{id}", delete(delete_one))
}

async fn list(
    State(webhooks): State<Arc<Webhooks>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!({"webhooks": webhooks.stats()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    limit: Option<usize>,
}

async fn dead(
    State(webhooks): State<Arc<Webhooks>>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let ep = endpoint(&webhooks, name)?;
    let query = Query::<DeadQuery>::try_from_uri(&uri)
        .map_err(|e| bad_request(e.body_text()))?
        .0;
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return Err(bad_request(format!("limit must be 1 to {MAX_LIMIT}"))),
    };
    let letters = ep.dead_letters(limit).map_err(store_error)?;
    Ok(Json(json!({"dead": letters})))
}

async fn retry_one(
    State(webhooks): State<Arc<Webhooks>>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let (ep, id) = endpoint_and_id(&webhooks, path)?;
    match ep.retry_dead(&id).map_err(store_error)? {
        Some(events) => Ok(Json(json!({"retried": 1, "events": events}))),
        None => Err(no_letter(&ep, &id)),
    }
}

async fn retry_all(
    State(webhooks): State<Arc<Webhooks>>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let ep = endpoint(&webhooks, name)?;
    let retried = ep.retry_all_dead().map_err(store_error)?;
    Ok(Json(json!({"retried": retried})))
}

async fn delete_one(
    State(webhooks): State<Arc<Webhooks>>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let (ep, id) = endpoint_and_id(&webhooks, path)?;
    if ep.delete_dead(&id).map_err(store_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_letter(&ep, &id))
    }
}

fn endpoint(
    webhooks: &Webhooks,
    name: Result<Path<String>, PathRejection>,
) -> Result<Arc<Endpoint>, ApiError> {
    let Path(name) = name.map_err(|e| bad_request(e.body_text()))?;
    find(webhooks, &name)
}

fn endpoint_and_id(
    webhooks: &Webhooks,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(Arc<Endpoint>, String), ApiError> {
    let Path((name, id)) = path.map_err(|e| bad_request(e.body_text()))?;
    Ok((find(webhooks, &name)?, id))
}

fn find(webhooks: &Webhooks, name: &str) -> Result<Arc<Endpoint>, ApiError> {
    webhooks.endpoint(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no webhook named `{name}`"),
        )
    })
}

fn no_letter(ep: &Endpoint, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("webhook `{}` has no dead letter `{id}`", ep.name),
    )
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
}

fn store_error(e: StoreError) -> ApiError {
    e.into()
}

#[cfg(test)]
mod tests {
    /// The OpenAPI fragment describes exactly the routes above, each admin-only.
    #[test]
    fn openapi_fragment_lists_these_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("openapi/webhooks.json")).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut ops: Vec<String> = paths
            .iter()
            .flat_map(|(p, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| format!("{} {p}", m.to_uppercase()))
            })
            .collect();
        ops.sort();
        assert_eq!(
            ops,
            [
                "DELETE /webhooks/{name}/dead/{id}",
                "GET /webhooks",
                "GET /webhooks/{name}/dead",
                "POST /webhooks/{name}/dead/retry",
                "POST /webhooks/{name}/dead/{id}/retry",
            ]
        );
        for item in paths.values() {
            for op in item.as_object().unwrap().values() {
                assert_eq!(op["security"], serde_json::json!([{"bearer": []}]));
                for code in ["401", "403"] {
                    assert!(op["responses"][code].is_object(), "{op}");
                }
            }
        }
    }
}
