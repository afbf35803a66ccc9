//! `/api/v1/e2e/keys`: the public-key registry for end-to-end encryption (docs/e2e.md).
//! Anyone who may call the API fetches a user's public keys; only the user (or the
//! admin) registers and revokes them. Every change is announced as a retained notice on
//! `$e2e/keys/<user>`, so clients that pinned a key learn at once that it changed.
//! `/api/v1/e2e/rooms`: a room's current key epoch, moved one step at a time by those
//! who may publish to the room, announced on `$e2e/rooms/<room>`.
//! The OpenAPI description of these routes is `openapi/pubkeys.json`; keep them equal.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use serde::Deserialize;
use switchboard_core::grants::Forbidden;
use switchboard_core::topic;

use super::{body, ApiBytes, ApiError, ApiPath, ApiQuery, Caller};
use crate::auth::Kind;
use crate::http::state::HttpState;
use crate::hub::Hub;
use crate::pubkeys::{EpochError, KeyRecord, KeyRegistry, RegistryError, RoomEpoch};
use switchboard_core::protocol::ErrorCode;
use switchboard_core::quiet::{clip, Throttle};

/// Where key changes are announced: `$e2e/keys/<user>`.
pub const ANNOUNCE_PREFIX: &str = "$e2e/keys/";
/// Where room epochs are announced: `$e2e/rooms/<room>`.
pub const ROOMS_PREFIX: &str = "$e2e/rooms/";

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/e2e/keys", get(users))
        .route("/e2e/keys/{user}", get(list).post(register))
        .route("/e2e/keys/{user}/{kid}", get(one).delete(revoke))
        .route("/e2e/rooms", get(room).post(rotate))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomQuery {
    room: String,
}

async fn room(
    State(registry): State<Arc<KeyRegistry>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RoomQuery>,
) -> Result<Json<RoomEpoch>, ApiError> {
    topic::validate_topic(&q.room).map_err(invalid_room)?;
    caller
        .0
        .grants
        .check_subscribe(&q.room)
        .map_err(forbidden)?;
    match registry.room(&q.room)? {
        Some(record) => Ok(Json(record)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("room {:?} has no key epoch yet", clip(&q.room, 64)),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    room: String,
    epoch: u64,
}

async fn rotate(
    State(registry): State<Arc<KeyRegistry>>,
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    ApiBytes(bytes): ApiBytes,
) -> Result<(StatusCode, Json<RoomEpoch>), ApiError> {
    let r: Rotate = body(&bytes)?;
    topic::validate_topic(&r.room).map_err(invalid_room)?;
    caller.0.grants.check_publish(&r.room).map_err(forbidden)?;
    let now = switchboard_core::clock::now_ms();
    let record = registry
        .advance(&r.room, r.epoch, &caller.0.identity(), now)
        .map_err(|e| match e {
            EpochError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
            EpochError::Store(e) => e.into(),
        })?;
    let data = json!({"room": record.room, "epoch": record.epoch, "by": record.by, "ts": now});
    notice(
        &hub,
        &format!("{ROOMS_PREFIX}{}", record.room),
        "epoch",
        &data,
    );
    Ok((StatusCode::CREATED, Json(record)))
}

fn invalid_room(e: topic::TopicError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidTopic,
        format!("room: {e}"),
    )
}

fn forbidden(e: Forbidden) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, e.0)
}

async fn users(
    State(registry): State<Arc<KeyRegistry>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let users = registry.users()?;
    let users: Vec<Value> = users
        .into_iter()
        .map(|(user, keys)| json!({"user": user, "keys": keys}))
        .collect();
    Ok(Json(json!({"users": users})))
}

async fn list(
    State(registry): State<Arc<KeyRegistry>>,
    _caller: Caller,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = registry.list(&user)?;
    Ok(Json(json!({"user": user, "keys": keys})))
}

async fn one(
    State(registry): State<Arc<KeyRegistry>>,
    _caller: Caller,
    ApiPath((user, kid)): ApiPath<(String, String)>,
) -> Result<Json<KeyRecord>, ApiError> {
    match registry.get(&user, &kid)? {
        Some(record) => Ok(Json(record)),
        None => Err(no_key(&user)),
    }
}

async fn register(
    State(registry): State<Arc<KeyRegistry>>,
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
    ApiBytes(bytes): ApiBytes,
) -> Result<(StatusCode, Json<KeyRecord>), ApiError> {
    may_change(&caller, &user)?;
    let jwk: Value = body(&bytes)?;
    let now = switchboard_core::clock::now_ms();
    let (record, new) = registry.register(&user, &jwk, now).map_err(|e| match e {
        RegistryError::Invalid(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            e.to_string(),
        ),
        RegistryError::Full { .. } => {
            ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
        }
        RegistryError::Store(e) => e.into(),
    })?;
    if !new {
        return Ok((StatusCode::OK, Json(record)));
    }
    tracing::info!(user = clip(&user, 64), kid = %record.kid, bits = record.bits, "e2e public key registered");
    announce(&registry, &hub, &user);
    Ok((StatusCode::CREATED, Json(record)))
}

async fn revoke(
    State(registry): State<Arc<KeyRegistry>>,
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    ApiPath((user, kid)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    may_change(&caller, &user)?;
    if !registry.revoke(&user, &kid)? {
        return Err(no_key(&user));
    }
    tracing::info!(
        user = clip(&user, 64),
        kid = clip(&kid, 64),
        "e2e public key revoked"
    );
    announce(&registry, &hub, &user);
    Ok(StatusCode::NO_CONTENT)
}

/// A user changes their own keys; the admin anyone's. Anonymous callers have no user
/// the daemon vouches for, so they may not.
fn may_change(caller: &Caller, user: &str) -> Result<(), ApiError> {
    let principal = &caller.0;
    if principal.grants.is_all() {
        return Ok(());
    }
    let own = principal.kind != Kind::Anonymous && principal.user.as_deref() == Some(user);
    if own {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "only the user themself (or the admin) may change a user's keys",
        ))
    }
}

/// The user's current keys by thumbprint, retained on `$e2e/keys/<user>`.
fn announce(registry: &KeyRegistry, hub: &Hub, user: &str) {
    // A failing store was logged by `From<StoreError>` on the request's own path.
    let Ok(keys) = registry.list(user) else {
        return;
    };
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| json!({"kid": k.kid, "fingerprint": k.fingerprint, "bits": k.bits, "created": k.created}))
        .collect();
    let data = json!({"user": user, "keys": keys, "ts": switchboard_core::clock::now_ms()});
    notice(hub, &format!("{ANNOUNCE_PREFIX}{user}"), "keys", &data);
}

/// Publishes a retained notice. A name with `+`, `#` or an empty level makes no valid
/// topic; such a user's keys are still served, only not announced.
fn notice(hub: &Hub, topic: &str, event: &str, data: &Value) {
    static NOT_ANNOUNCED: Throttle = Throttle::per_secs(10);
    let Ok(data) = serde_json::value::to_raw_value(data) else {
        return;
    };
    if let Err(e) = hub.publish_notice(topic, event, &data) {
        if let Some(held_back) = NOT_ANNOUNCED.admit() {
            tracing::warn!(topic = clip(topic, 96), held_back, error = %e, "e2e notice not published");
        }
    }
}

fn no_key(user: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("user {:?} has no such key", clip(user, 64)),
    )
}
