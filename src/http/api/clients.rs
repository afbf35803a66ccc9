//! Connected clients (admin): list them, look one up, disconnect one. WebSocket
//! clients come from the Hub; MQTT devices from the embedded broker (the connections it
//! admitted, with the filters their sessions hold in the Hub), listed as
//! `mqtt:<client id>` so the two kinds of id never collide.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiPath, ApiQuery, Caller};
use crate::auth::Kind;
use crate::cluster::Cluster;
use crate::http::state::HttpState;
use crate::hub::outbox::CloseReason;
use crate::hub::Hub;
use crate::hub::Session;
use switchboard_bridge::{Broker, Connected, Transport};
use switchboard_core::protocol::{close, ErrorCode};

/// How an MQTT device's id starts in this API (and in `from` on what it publishes).
const MQTT_PREFIX: &str = "mqtt:";

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/clients", get(list))
        .route("/clients/{id}", get(show).delete(disconnect))
}

/// Either kind of client, in one list.
#[derive(Serialize)]
#[serde(untagged)]
enum Listed {
    Ws(ClientView),
    Mqtt(DeviceView),
}

impl Listed {
    fn connected_at(&self) -> u64 {
        match self {
            Listed::Ws(c) => c.connected_at,
            Listed::Mqtt(d) => d.connected_at,
        }
    }
}

/// A WebSocket client as the API shows it.
#[derive(Serialize)]
struct ClientView {
    id: String,
    user: Option<String>,
    transport: &'static str,
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
        transport: "ws",
        credential,
        api_key,
        expires_at: principal.expires_at,
        connected_at: session.connected_at(),
        subscriptions,
    }
}

/// An MQTT device as the API shows it.
#[derive(Serialize)]
struct DeviceView {
    /// `mqtt:<client id>`.
    id: String,
    client_id: String,
    user: Option<String>,
    /// `mqtt`, `mqtt-ws`, `mqtts` or `mqtt-wss`.
    transport: &'static str,
    /// `mqtt/3.1.1` or `mqtt/5`.
    protocol: String,
    /// The device's IP address and port.
    address: String,
    /// Milliseconds since the Unix epoch.
    connected_at: u64,
    subscriptions: Vec<String>,
    /// What is published for it if it is lost; `null` if it set no Last Will.
    will: Option<WillView>,
}

#[derive(Serialize)]
struct WillView {
    topic: String,
    /// The payload as WebSocket subscribers will get it (JSON, a string, or base64).
    data: Box<serde_json::value::RawValue>,
    retain: bool,
    qos: u8,
    delay_s: u64,
}

fn device_view(hub: &Hub, connected: Connected) -> DeviceView {
    let device = connected.device;
    let transport = match device.transport {
        Transport::Tcp => "mqtt",
        Transport::WebSocket => "mqtt-ws",
        Transport::Tls => "mqtts",
        Transport::SecureWebSocket => "mqtt-wss",
    };
    DeviceView {
        id: format!("{MQTT_PREFIX}{}", device.client_id),
        subscriptions: hub.device_filters(&device.client_id).unwrap_or_default(),
        client_id: device.client_id,
        user: device.username,
        transport,
        protocol: format!("mqtt/{}", device.version.as_str()),
        address: device.remote.to_string(),
        connected_at: connected.since_ms,
        will: connected.will.map(|w| WillView {
            data: switchboard_core::payload::to_data(&w.payload),
            topic: w.topic,
            retain: w.retain,
            qos: w.qos,
            delay_s: w.delay.as_secs(),
        }),
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
    State(broker): State<Option<Arc<Broker>>>,
    State(cluster): State<Option<Arc<Cluster>>>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let wanted = |user: Option<&str>| query.user.is_none() || user == query.user.as_deref();
    let mut clients: Vec<Listed> = hub
        .sessions()
        .iter()
        .filter(|s| wanted(s.user()))
        .map(|s| Listed::Ws(view(s)))
        .collect();
    let devices = broker.iter().flat_map(|b| b.connected());
    clients.extend(
        devices
            .filter(|c| wanted(c.device.username.as_deref()))
            .map(|c| Listed::Mqtt(device_view(&hub, c))),
    );
    clients.sort_by_key(Listed::connected_at);
    let clients: Vec<serde_json::Value> = clients
        .iter()
        .map(|c| on_node(c, cluster.as_deref()))
        .collect();
    Ok(Json(serde_json::json!({ "clients": clients })))
}

/// A client as listed; with `[cluster]` on, with `node`: this box, the one it is on
/// (each box lists its own clients: docs/cluster.md).
fn on_node(client: &Listed, cluster: Option<&Cluster>) -> serde_json::Value {
    let mut v = serde_json::json!(client);
    if let Some(c) = cluster {
        v["node"] = serde_json::json!(c.node_id());
    }
    v
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no connected client `{id}`"),
    )
}

fn find(hub: &Hub, id: &str) -> Result<Arc<Session>, ApiError> {
    hub.client(id).ok_or_else(|| not_found(id))
}

/// The connected device behind `mqtt:<client id>`, if `id` is one.
fn find_device(broker: Option<&Broker>, id: &str) -> Option<Result<Connected, ApiError>> {
    let client_id = id.strip_prefix(MQTT_PREFIX)?;
    let found = broker.and_then(|b| b.device(client_id));
    Some(found.ok_or_else(|| not_found(id)))
}

async fn show(
    State(hub): State<Arc<Hub>>,
    State(broker): State<Option<Arc<Broker>>>,
    State(cluster): State<Option<Arc<Cluster>>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let listed = match find_device(broker.as_deref(), &id) {
        Some(found) => Listed::Mqtt(device_view(&hub, found?)),
        None => Listed::Ws(view(find(&hub, &id)?.as_ref())),
    };
    Ok(Json(on_node(&listed, cluster.as_deref())))
}

/// A WebSocket client's connection is closed with 4005, which tells it not to reconnect
/// on its own; an MQTT device's as if it were lost (MQTT 5: "administrative action"),
/// so its Last Will fires (see `Broker::disconnect`).
async fn disconnect(
    State(hub): State<Arc<Hub>>,
    State(broker): State<Option<Arc<Broker>>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    if let Some(found) = find_device(broker.as_deref(), &id) {
        let connected = found?;
        let closed = broker
            .as_deref()
            .is_some_and(|b| b.disconnect(&connected.device.client_id));
        if !closed {
            // It left between the two looks.
            return Err(not_found(&id));
        }
        tracing::info!(client = id, "device disconnected through the API");
        return Ok(StatusCode::NO_CONTENT);
    }
    let session = find(&hub, &id)?;
    session.outbox.close(CloseReason::Code(
        close::DISCONNECTED,
        "disconnected by an operator",
    ));
    tracing::info!(client = id, "client disconnected through the API");
    Ok(StatusCode::NO_CONTENT)
}
