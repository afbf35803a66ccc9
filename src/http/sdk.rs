//! The JavaScript SDK (clients/js), served so that a page needs no npm: its
//! single-file builds are compiled into the binary (committed, so building the daemon
//! needs no Node; `tests/sdk.rs` fails when they are stale).
//!
//! `/sdk/switchboard.js` (a classic script defining `Switchboard`) and
//! `/sdk/switchboard.mjs` (an ES module), and the opt-in end-to-end encryption module
//! beside them (`/sdk/switchboard-e2e.js`, global `SwitchboardE2E`, and `.mjs`; kept
//! apart so the core stays small), are revalidated on every load (`no-cache` with an
//! `ETag`, so a page never runs an SDK older than its daemon); the same bytes under
//! `/sdk/switchboard.<etag>.js` may be cached for good, for pages that pin a build. The
//! browser policy of [`super::web`] applies as to every route: a module script from
//! another site loads only from an allowed origin (CORS), and a wrong `Host` is refused.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::api::ApiError;
use super::assets;
use switchboard_core::protocol::ErrorCode;

/// The builds, as `(name, file extension, bytes)`.
const BUNDLES: [(&str, &str, &str); 4] = [
    (
        "switchboard",
        ".js",
        include_str!("../../clients/js/dist/switchboard.js"),
    ),
    (
        "switchboard",
        ".mjs",
        include_str!("../../clients/js/dist/switchboard.mjs"),
    ),
    (
        "switchboard-e2e",
        ".js",
        include_str!("../../clients/js/dist/switchboard-e2e.js"),
    ),
    (
        "switchboard-e2e",
        ".mjs",
        include_str!("../../clients/js/dist/switchboard-e2e.mjs"),
    ),
];

/// Per build, 16 hex digits of its SHA-256: the ETag and the pinned file name.
static TAGS: LazyLock<[String; 4]> =
    LazyLock::new(|| BUNDLES.map(|(_, _, text)| assets::tag_of(text.as_bytes())));

/// A year: a pinned build never changes.
const PINNED: &str = "public, max-age=31536000, immutable";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/sdk/{file}", get(serve))
}

async fn serve(Path(file): Path<String>, request: HeaderMap) -> Response {
    let found = BUNDLES
        .iter()
        .zip(TAGS.iter())
        .find_map(|(&(name, ext, text), tag)| {
            let stem = file.strip_prefix(name)?.strip_suffix(ext)?;
            match stem.strip_prefix('.') {
                None if stem.is_empty() => Some((text, tag, false)),
                Some(asked) if asked == tag => Some((text, tag, true)),
                _ => None,
            }
        });
    let Some((text, tag, pinned)) = found else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such file: the SDK is /sdk/switchboard.js or /sdk/switchboard.mjs (and switchboard-e2e.js, .mjs)",
        )
        .into_response();
    };
    assets::respond(
        &request,
        text.as_bytes(),
        "text/javascript; charset=utf-8",
        tag,
        if pinned { PINNED } else { "no-cache" },
        &[],
    )
}
