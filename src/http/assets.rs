//! Static files compiled into the binary ([`super::sdk`], [`super::dashboard`]): each
//! answered with its type, `nosniff` and an `ETag` (16 hex digits of its SHA-256), so a
//! browser revalidates cheaply and never runs a file older than its daemon.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// 16 hex digits of the SHA-256 of `bytes`.
pub fn tag_of(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes)[..8])
}

/// `body` as `content_type`, `304` when the request already holds `tag`. `extra` headers
/// (a CSP, say) go on both answers.
pub fn respond(
    request: &HeaderMap,
    body: &'static [u8],
    content_type: &'static str,
    tag: &str,
    cache: &'static str,
    extra: &[(HeaderName, &'static str)],
) -> Response {
    let etag = format!("\"{tag}\"");
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    for (name, value) in extra {
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (StatusCode::OK, headers, body).into_response()
}
