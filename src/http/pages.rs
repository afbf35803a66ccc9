//! The web pages compiled into the binary: the dashboard at `/dashboard/`
//! (docs/dashboard.md; on unless `[http] dashboard = false`) and the demo apps at
//! `/demo/` (demos/README.md; off unless `[http] demos = true`). Plain files from
//! `web/`, no build step; they import the SDK from `/sdk/switchboard.mjs`.
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

/// A file: name, content type, bytes.
type File = (&'static str, &'static str, &'static [u8]);

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The chart both sites draw with: one file, served under each.
const CHART: File = (
    "chart.js",
    JS,
    include_bytes!("../../web/dashboard/chart.js"),
);

static DASHBOARD: LazyLock<Site> = LazyLock::new(|| {
    Site::new(
        "dashboard",
        vec![
            (
                "index.html",
                HTML,
                include_bytes!("../../web/dashboard/index.html"),
            ),
            ("app.js", JS, include_bytes!("../../web/dashboard/app.js")),
            (
                "style.css",
                CSS,
                include_bytes!("../../web/dashboard/style.css"),
            ),
            CHART,
        ],
    )
});

static DEMOS: LazyLock<Site> = LazyLock::new(|| {
    Site::new(
        "demo",
        vec![
            (
                "index.html",
                HTML,
                include_bytes!("../../web/demo/index.html"),
            ),
            ("demo.css", CSS, include_bytes!("../../web/demo/demo.css")),
            (
                "connect.js",
                JS,
                include_bytes!("../../web/demo/connect.js"),
            ),
            (
                "chat.html",
                HTML,
                include_bytes!("../../web/demo/chat.html"),
            ),
            ("chat.js", JS, include_bytes!("../../web/demo/chat.js")),
            (
                "weather.html",
                HTML,
                include_bytes!("../../web/demo/weather.html"),
            ),
            (
                "weather.js",
                JS,
                include_bytes!("../../web/demo/weather.js"),
            ),
            (
                "webcam.html",
                HTML,
                include_bytes!("../../web/demo/webcam.html"),
            ),
            ("webcam.js", JS, include_bytes!("../../web/demo/webcam.js")),
            CHART,
        ],
    )
});

/// `'self'` covers the daemon's own `ws:`/`wss:` URL in current browsers; `data:` images
/// are the webcam demo's frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One directory of files, each with its ETag.
struct Site {
    name: &'static str,
    files: Vec<(File, String)>,
}

impl Site {
    fn new(name: &'static str, files: Vec<File>) -> Self {
        let files = files
            .into_iter()
            .map(|file| (file, assets::tag_of(file.2)))
            .collect();
        Self { name, files }
    }

    fn serve(&self, file: &str, request: &HeaderMap) -> Response {
        let file = if file.is_empty() { "index.html" } else { file };
        let Some(((_, content_type, body), tag)) =
            self.files.iter().find(|((name, _, _), _)| *name == file)
        else {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("no such file under /{}/", self.name),
            )
            .into_response();
        };
        let extra: [(HeaderName, &'static str); 3] = [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ];
        assets::respond(request, body, content_type, tag, "no-cache", &extra)
    }
}

/// The dashboard's routes when `dashboard`, the demos' when `demos`.
pub fn routes<S: Clone + Send + Sync + 'static>(dashboard: bool, demos: bool) -> Router<S> {
    let mut router = Router::new();
    if dashboard {
        router = mount(router, &DASHBOARD);
    }
    if demos {
        router = mount(router, &DEMOS);
    }
    router
}

/// `/<name>` (redirected), `/<name>/` (its index) and `/<name>/<file>`.
fn mount<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    site: &'static LazyLock<Site>,
) -> Router<S> {
    let index = format!("/{}/", site.name);
    let target = index.clone();
    router
        .route(
            &format!("/{}", site.name),
            get(move || async move { Redirect::permanent(&target) }),
        )
        .route(
            &index,
            get(move |h: HeaderMap| async move { site.serve("", &h) }),
        )
        .route(
            &format!("/{}/{{file}}", site.name),
            get(move |Path(f): Path<String>, h: HeaderMap| async move { site.serve(&f, &h) }),
        )
}
