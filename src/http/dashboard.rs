//! The web dashboard (docs/dashboard.md): plain files from `web/dashboard/`, compiled
//! into the binary (no build step; the pages import the SDK from `/sdk/switchboard.mjs`),
//! served at `/dashboard/` unless `[http] dashboard = false`.
//!
//! Every answer carries a strict Content-Security-Policy: scripts and styles only from
//! this origin (no inline script, no `eval`), connections only back to the daemon, and
//! no framing, so a page elsewhere can neither inject code nor clickjack an operator.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::api::ApiError;
use super::assets;
use switchboard_core::protocol::ErrorCode;

/// The files, as `(name, content type, bytes)`; `index.html` answers `/dashboard/`.
const FILES: [(&str, &str, &[u8]); 4] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../web/dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dashboard/app.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dashboard/chart.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/dashboard/style.css"),
    ),
];

static TAGS: LazyLock<[String; 4]> = LazyLock::new(|| FILES.map(|(_, _, b)| assets::tag_of(b)));

/// `'self'` covers the daemon's own `ws:`/`wss:` URL in current browsers.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(index))
        .route("/dashboard/{file}", get(serve))
}

async fn index(request: HeaderMap) -> Response {
    serve(Path("index.html".to_owned()), request).await
}

async fn serve(Path(file): Path<String>, request: HeaderMap) -> Response {
    let Some(((_, content_type, body), tag)) = FILES
        .iter()
        .zip(TAGS.iter())
        .find(|((name, _, _), _)| *name == file)
    else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such dashboard file: the dashboard is /dashboard/",
        )
        .into_response();
    };
    let extra: [(HeaderName, &'static str); 3] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    assets::respond(&request, body, content_type, tag, "no-cache", &extra)
}
