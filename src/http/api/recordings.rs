//! `/api/v1/recordings` and `/api/v1/replays`: start, stop, inspect, delete, export
//! and import recordings, and replay them. Each caller sees and manages its own; the
//! admin sees all. The work is `crate::recordings`'s; this file maps HTTP onto it. The
//! OpenAPI description is `openapi/recordings.json`; keep them equal.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{body, ApiBytes, ApiError, ApiPath, Caller};
use crate::http::state::{HttpState, Limits};
use crate::recordings::replay::Action;
use crate::recordings::Recorder;
use crate::recordings::{
    export, RecorderError, RecordingView, ReplayRequest, ReplayView, StartRequest,
};
use switchboard_core::protocol::ErrorCode;

/// The media type of an export.
pub const JSON_LINES: &str = "application/x-ndjson";

pub fn routes(limits: Limits) -> Router<HttpState> {
    Router::new()
        .route("/recordings", get(list).post(start))
        .route(
            "/recordings/import",
            post(import).layer(DefaultBodyLimit::max(limits.max_batch_bytes)),
        )
        .route("/recordings/{id}", get(show).delete(delete))
        .route("/recordings/{id}/stop", post(stop))
        .route("/recordings/{id}/export", get(export))
        .route("/recordings/{id}/replay", post(replay))
        .route("/replays", get(replays))
        .route("/replays/{id}", get(replay_status))
        .route("/replays/{id}/pause", post(pause))
        .route("/replays/{id}/resume", post(resume))
        .route("/replays/{id}/stop", post(stop_replay))
}

impl From<RecorderError> for ApiError {
    fn from(e: RecorderError) -> Self {
        let status = match &e {
            RecorderError::Invalid(_) => StatusCode::BAD_REQUEST,
            RecorderError::Forbidden(_) => StatusCode::FORBIDDEN,
            RecorderError::NoRecording(_) | RecorderError::NoReplay(_) => StatusCode::NOT_FOUND,
            RecorderError::Conflict(_) => StatusCode::CONFLICT,
            RecorderError::Store(e) => {
                tracing::error!(error = %e, "recording store error");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "the store failed; see the daemon's log",
                );
            }
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

type Reply<T> = Result<Json<T>, ApiError>;

async fn list(State(recorder): State<Arc<Recorder>>, Caller(caller): Caller) -> Reply<Value> {
    Ok(Json(json!({"recordings": recorder.list(&caller)})))
}

async fn start(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiBytes(bytes): ApiBytes,
) -> Result<(StatusCode, Json<RecordingView>), ApiError> {
    let request: StartRequest = body(&bytes)?;
    let view = recorder.start_recording(&caller, request)?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn show(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
) -> Reply<RecordingView> {
    Ok(Json(recorder.show(&caller, id)?))
}

async fn stop(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
) -> Reply<RecordingView> {
    Ok(Json(recorder.stop_recording(&caller, id).await?))
}

async fn delete(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<StatusCode, ApiError> {
    recorder.delete(&caller, id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams the export a chunk of messages at a time, read by a blocking task.
async fn export(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Response, ApiError> {
    let view = recorder.show(&caller, id)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let recorder = recorder.clone();
    tokio::task::spawn_blocking(move || {
        if tx
            .blocking_send(Bytes::from(export::header(&view)))
            .is_err()
        {
            return;
        }
        let mut next = 0;
        loop {
            let chunk = match recorder.messages(id, next, export::CHUNK) {
                Ok(chunk) if chunk.is_empty() => return,
                Ok(chunk) => chunk,
                Err(e) => {
                    // The client sees a short file; the header's `messages` tells it so.
                    tracing::error!(recording = id, error = %e, "export cut short");
                    return;
                }
            };
            let mut text = String::new();
            for (n, m) in &chunk {
                next = n + 1;
                text.push_str(&export::line(m));
            }
            if tx.blocking_send(Bytes::from(text)).is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let disposition = format!("attachment; filename=\"recording-{id}.jsonl\"");
    Ok((
        [
            (header::CONTENT_TYPE, JSON_LINES.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn import(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiBytes(bytes): ApiBytes,
) -> Result<(StatusCode, Json<RecordingView>), ApiError> {
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| RecorderError::Invalid(format!("the file is not UTF-8: {e}")))?;
    let view = recorder.import(&caller, text)?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn replay(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
    ApiBytes(bytes): ApiBytes,
) -> Result<(StatusCode, Json<ReplayView>), ApiError> {
    let request: ReplayRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        body(&bytes)?
    };
    let view = recorder.start_replay(caller, id, request)?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn replays(State(recorder): State<Arc<Recorder>>, Caller(caller): Caller) -> Reply<Value> {
    Ok(Json(json!({"replays": recorder.replays(&caller)})))
}

async fn replay_status(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
) -> Reply<ReplayView> {
    Ok(Json(recorder.replay(&caller, id)?))
}

fn control(
    recorder: &Recorder,
    caller: &crate::auth::Principal,
    id: u64,
    action: Action,
) -> Reply<ReplayView> {
    Ok(Json(recorder.control_replay(caller, id, action)?))
}

async fn pause(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
) -> Reply<ReplayView> {
    control(&recorder, &caller, id, Action::Pause)
}

async fn resume(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
) -> Reply<ReplayView> {
    control(&recorder, &caller, id, Action::Resume)
}

async fn stop_replay(
    State(recorder): State<Arc<Recorder>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<u64>,
) -> Reply<ReplayView> {
    control(&recorder, &caller, id, Action::Stop)
}
