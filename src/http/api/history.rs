//! `GET /history`: what a topic's history holds, for servers that catch up over HTTP
//! rather than with a `sub` (docs/history.md).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ApiError, ApiQuery, Caller};
use crate::http::state::HttpState;
use crate::hub::Hub;
use switchboard_core::protocol::Since;

/// Messages returned when the caller names neither `last` nor `since`.
const DEFAULT_LAST: u64 = 100;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/history", get(history))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    topic: String,
    #[serde(default)]
    last: Option<u64>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
}

#[derive(Serialize)]
struct Reply {
    topic: String,
    epoch: String,
    seq: u64,
    recovered: bool,
    messages: Vec<Item>,
}

/// One message, as a `msg` push shows it.
#[derive(Serialize)]
struct Item {
    topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    data: Box<RawValue>,
    ts: u64,
    seq: u64,
    from: String,
}

async fn history(
    State(hub): State<Arc<Hub>>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Reply>, ApiError> {
    // Every combination is meaningful, so none is refused: `epoch` only qualifies
    // `since`, and `last` is the page size after `since` or the newest count without.
    let (since, page) = match query.since {
        Some(seq) => (
            Since::After {
                seq,
                epoch: query.epoch,
            },
            query.last,
        ),
        None => (Since::Last(query.last.unwrap_or(DEFAULT_LAST)), None),
    };
    let recovery = hub.history(&caller.grants, &query.topic, &since, page)?;
    let messages = recovery
        .messages
        .into_iter()
        .filter_map(|m| {
            Some(Item {
                data: RawValue::from_string(m.data).ok()?,
                topic: m.topic,
                event: m.event,
                ts: m.ts_us / 1000,
                seq: m.seq,
                from: m.from,
            })
        })
        .collect();
    Ok(Json(Reply {
        topic: query.topic,
        epoch: recovery.position.epoch,
        seq: recovery.position.seq,
        recovered: recovery.complete,
        messages,
    }))
}
