//! Messages in over HTTP: publish one, publish a batch, send a direct message.
//!
//! Every publish goes to the Hub with the caller's grants, so HTTP is held to the very
//! permissions a WebSocket client is.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::IdempotencyCache;
use super::{body, ApiBytes, ApiError, Caller};
use crate::auth::Principal;
use crate::http::state::{HttpState, Limits};
use crate::hub::Hub;
use crate::hub::{HubError, Sender};
use switchboard_core::message::{Origin, Publish, Published};
use switchboard_core::protocol::{null, ErrorCode, Recipient};

/// Messages in one batch at most.
pub const MAX_BATCH: usize = 1000;

pub fn routes(limits: Limits) -> Router<HttpState> {
    Router::new()
        .route("/publish", post(publish))
        .route(
            "/publish/batch",
            post(publish_batch).layer(DefaultBodyLimit::max(limits.max_batch_bytes)),
        )
        .route("/send", post(send))
}

/// One message to publish, alone or in a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message<'a> {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    retain: bool,
    /// Publishes with a key already used by this caller within the window are dropped.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// What happened to one message.
#[derive(Serialize)]
struct Outcome {
    seq: u64,
    /// Connections the message was queued for.
    delivered: usize,
    /// True when the idempotency key was seen before: nothing was published, and
    /// `seq`/`delivered` are those of the first publish.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    /// False when the topic keeps a history the message could not be written to.
    #[serde(skip_serializing_if = "is_true")]
    stored: bool,
}

impl Outcome {
    fn of(published: Published, duplicate: bool) -> Outcome {
        Outcome {
            seq: published.seq,
            delivered: published.delivered,
            duplicate,
            stored: published.stored,
        }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Who an HTTP message is from, as subscribers see it.
fn from_label(caller: &Principal) -> String {
    match &caller.user {
        Some(user) => format!("http:{user}"),
        None => "http".into(),
    }
}

/// The message's data, within the size limit.
fn sized<'a>(limits: Limits, m: &Message<'a>) -> Result<&'a RawValue, ApiError> {
    let data = m.data.unwrap_or_else(|| null());
    let limit = limits.max_message_size;
    if data.get().len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("`data` is larger than {limit} bytes (ws.max_message_size)"),
        ));
    }
    Ok(data)
}

fn as_publish<'a>(
    m: &'a Message<'_>,
    data: &'a RawValue,
    from: &'a str,
    caller: &'a Principal,
) -> Publish<'a> {
    Publish {
        topic: &m.topic,
        event: m.event.as_deref(),
        data,
        from,
        origin: Origin::Http,
        by: &caller.grants,
        retain: m.retain,
    }
}

/// [`publish_one`], awaiting the bus's answer (`Hub::publish_async`) rather than
/// holding a thread for it. A message with an idempotency key takes the synchronous
/// path: the cache holds its lock across the publish.
async fn publish_one_async(
    hub: &Hub,
    idempotency: &IdempotencyCache,
    limits: Limits,
    caller: &Principal,
    from: &str,
    m: &Message<'_>,
) -> Result<Outcome, ApiError> {
    if m.idempotency_key.is_some() || !hub.has_bus() {
        return publish_one(hub, idempotency, limits, caller, from, m);
    }
    let data = sized(limits, m)?;
    let published = hub.publish_async(as_publish(m, data, from, caller)).await?;
    Ok(Outcome::of(published, false))
}

fn publish_one(
    hub: &Hub,
    idempotency: &IdempotencyCache,
    limits: Limits,
    caller: &Principal,
    from: &str,
    m: &Message<'_>,
) -> Result<Outcome, ApiError> {
    let data = sized(limits, m)?;
    let publish = || hub.publish(as_publish(m, data, from, caller));
    let (published, duplicate) = match &m.idempotency_key {
        Some(key) => {
            // A bad message is refused as such, even under a key already used.
            switchboard_core::topic::validate_topic(&m.topic).map_err(HubError::from)?;
            // The topic is part of the key: one key names one message.
            let scope = format!("{}\n{}", caller.identity(), m.topic);
            idempotency.publish_once(&scope, key, publish)?
        }
        None => (publish()?, false),
    };
    Ok(Outcome::of(published, duplicate))
}

async fn publish(
    State(hub): State<Arc<Hub>>,
    State(idempotency): State<Arc<IdempotencyCache>>,
    State(limits): State<Limits>,
    Caller(caller): Caller,
    headers: HeaderMap,
    ApiBytes(bytes): ApiBytes,
) -> Result<Json<Outcome>, ApiError> {
    let mut message: Message<'_> = body(&bytes)?;
    if let Some(key) = headers.get("idempotency-key") {
        let key = key.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "the Idempotency-Key header is not visible ASCII",
            )
        })?;
        message
            .idempotency_key
            .get_or_insert_with(|| key.to_owned());
    }
    let from = from_label(&caller);
    publish_one_async(&hub, &idempotency, limits, &caller, &from, &message)
        .await
        .map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
}

/// Publishes each message in order; one refused message does not stop the others, and
/// the reply says what happened to each, in the same order.
async fn publish_batch(
    State(hub): State<Arc<Hub>>,
    State(idempotency): State<Arc<IdempotencyCache>>,
    State(limits): State<Limits>,
    Caller(caller): Caller,
    ApiBytes(bytes): ApiBytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let batch: Batch<'_> = body(&bytes)?;
    if batch.messages.len() > MAX_BATCH {
        // 400, not 413: the body is within its byte limit; the request asks too much.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge,
            format!("at most {MAX_BATCH} messages per batch"),
        ));
    }
    let from = from_label(&caller);
    let mut results = Vec::with_capacity(batch.messages.len());
    for m in &batch.messages {
        results.push(
            match publish_one_async(&hub, &idempotency, limits, &caller, &from, m).await {
                Ok(outcome) => json!(outcome),
                Err(e) => e.body(),
            },
        );
    }
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Direct<'a> {
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

async fn send(
    State(hub): State<Arc<Hub>>,
    Caller(caller): Caller,
    ApiBytes(bytes): ApiBytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: Direct<'_> = body(&bytes)?;
    let to = match (request.client, request.user) {
        (Some(client), None) => Recipient::Client(client),
        (None, Some(user)) => Recipient::User(user),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "needs exactly one of the fields `client` or `user`",
            ))
        }
    };
    let from = from_label(&caller);
    let delivered = hub.send_direct(
        Sender::external(&from, &caller),
        &to,
        request.event.as_deref(),
        request.data.unwrap_or_else(|| null()),
    )?;
    Ok(Json(json!({"delivered": delivered})))
}
