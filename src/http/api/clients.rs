//! Connected clients (admin): list them, look one up, disconnect one.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiPath, ApiQuery, Caller};
use crate::auth::Kind;
use crate::http::state::HttpState;
use crate::hub::outbox::CloseReason;
use crate::hub::Hub;
use crate::hub::Session;
use switchboard_core::protocol::{close, ErrorCode};

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/clients", get(list))
        .route("/clients/{id}", get(show).delete(disconnect))
}

/// A WebSocket client as the API shows it.
#[derive(Serialize)]
struct ClientView {
    id: String,
    user: Option<String>,
    /// `anonymous`, `admin`, `api_key` or `token`.
    credential: &'static str,
    /// The API key's public id, for `api_key` clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    /// Unix seconds when the credential expires, if it does.
    expires_at: Option<u64>,
    /// Milliseconds since the Unix epoch.
    connected_at: u64,
    subscriptions: Vec<String>,
}

fn view(session: &Session) -> ClientView {
    let principal = session.principal();
    let (credential, api_key) = match &principal.kind {
        Kind::Anonymous => ("anonymous", None),
        Kind::Admin => ("admin", None),
        Kind::ApiKey { id } => ("api_key", Some(id.clone())),
        Kind::Token => ("token", None),
    };
    let mut subscriptions = session.filters();
    subscriptions.sort();
    ClientView {
        id: session.id().to_owned(),
        user: session.user().map(str::to_owned),
        credential,
        api_key,
        expires_at: principal.expires_at,
        connected_at: session.connected_at(),
        subscriptions,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this user's connections.
    #[serde(default)]
    user: Option<String>,
}

async fn list(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let mut clients: Vec<ClientView> = hub
        .sessions()
        .iter()
        .filter(|s| query.user.is_none() || s.user() == query.user.as_deref())
        .map(|s| view(s))
        .collect();
    clients.sort_by_key(|c| c.connected_at);
    Ok(Json(serde_json::json!({ "clients": clients })))
}

fn find(hub: &Hub, id: &str) -> Result<Arc<Session>, ApiError> {
    hub.client(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no connected client `{id}`"),
        )
    })
}

async fn show(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ClientView>, ApiError> {
    caller.require_admin()?;
    let session = find(&hub, &id)?;
    Ok(Json(view(&session)))
}

/// Closes the connection with 4005: the client is told not to reconnect on its own.
async fn disconnect(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let session = find(&hub, &id)?;
    session.outbox.close(CloseReason::Code(
        close::DISCONNECTED,
        "disconnected by an operator",
    ));
    tracing::info!(client = id, "client disconnected through the API");
    Ok(StatusCode::NO_CONTENT)
}
