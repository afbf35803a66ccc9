//! The browser's view of the HTTP listener: the `Host` and `Origin` checks of
//! [`WebPolicy`], the JSON-only rule for API bodies, and CORS for the allowed origins.
//!
//! A page on any site can make the user's browser send requests to a daemon on
//! localhost or the LAN. Without a CORS preflight it can only send "simple" requests:
//! GET, or a POST whose body is `text/plain` or a form. So API bodies must be declared
//! JSON (a page cannot do that without a preflight this layer answers only for allowed
//! origins), a state-changing request from a foreign `Origin` is refused outright, and a
//! `Host` name the daemon is not reached by (DNS rebinding) is refused before anything.
//! Requests carried over a WebSocket (the `http` op) do not pass here: their connection
//! was checked at its upgrade.

use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use switchboard_core::protocol::ErrorCode;
use switchboard_core::quiet::{clip, Throttle};
use switchboard_core::web::{Refusal, WebPolicy};

use super::api::ApiError;

/// Methods and request headers a page on an allowed origin may use.
const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, OPTIONS";
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";
/// How long a browser may cache a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The router with every request checked first.
pub fn guard(router: Router, policy: WebPolicy) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(policy),
        check,
    ))
}

async fn check(State(policy): State<Arc<WebPolicy>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .map(str::to_owned);
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Load balancers probe with whatever name they like; health tells a page nothing.
    if request.uri().path() != "/healthz" {
        if let Err(refusal) = policy.check_host(host.as_deref()) {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                ErrorCode::Misdirected,
                refusal,
            );
        }
    }
    let allowed = policy.origin_allowed(origin.as_deref(), host.as_deref());
    // An origin other than the daemon's own: the one CORS is about.
    let cross = origin
        .as_deref()
        .filter(|o| allowed && !policy.same_origin(o, host.as_deref()))
        .and_then(|o| HeaderValue::from_str(o).ok());
    if request.method() == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        if let Some(origin) = origin.filter(|_| !allowed) {
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                Refusal::Origin(origin),
            );
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        allow(response.headers_mut(), cross, true);
        return response;
    }
    if !allowed && !is_safe(request.method()) {
        let origin = origin.unwrap_or_default();
        return refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            Refusal::Origin(origin),
        );
    }
    if request.uri().path().starts_with("/api/") && has_body(&request) && !is_json(headers) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the body must be sent with `Content-Type: application/json` \
             (`application/x-ndjson` for a recording import)",
        )
        .into_response();
    }
    let mut response = next.run(request).await;
    allow(response.headers_mut(), cross, false);
    response
}

/// The CORS headers for an allowed cross-origin page; `Vary: Origin` on every answer
/// that depends on it, so a cache never serves one origin's answer to another.
fn allow(headers: &mut HeaderMap, origin: Option<HeaderValue>, preflight: bool) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else { return };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if preflight {
        let fixed = [
            (header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS),
            (header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE),
        ];
        for (name, value) in fixed {
            headers.insert(name, HeaderValue::from_static(value));
        }
    } else {
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Disposition, WWW-Authenticate"),
        );
    }
}

/// Methods that change nothing, which a foreign page may send (it cannot read the answer
/// without CORS).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn has_body(request: &Request) -> bool {
    request.body().size_hint().exact() != Some(0)
}

/// `application/json` (any parameters, any `+json` type) or JSON lines.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "application/x-ndjson" || media.ends_with("+json")
}

/// A refusal: JSON like every API error, and a log line at info (one per window: a page
/// can retry in a loop) so the developer of a refused page can learn why.
fn refuse(status: StatusCode, code: ErrorCode, refusal: Refusal) -> Response {
    static REFUSED: Throttle = Throttle::per_secs(10);
    log_refusal(&REFUSED, "HTTP request refused", &refusal);
    ApiError::new(status, code, refusal.to_string()).into_response()
}

/// Logs why a browser was refused, at info, through the caller's throttle.
pub fn log_refusal(throttle: &Throttle, what: &'static str, refusal: &Refusal) {
    if let Some(held_back) = throttle.admit() {
        let why = refusal.to_string();
        tracing::info!(held_back, "{what}: {}", clip(&why, 300));
    }
}
