//! HTTP requests carried over a WebSocket (the `http` op).
//!
//! A browser that holds a WebSocket calls the HTTP API without a second connection. The
//! request is served in-process by the very router the HTTP listener uses, so handlers,
//! limits and error bodies are the same; the caller is the connection's own identity
//! (an `Authorization` header in the carried request is ignored). The reply carries the
//! request's id; requests run concurrently within the connection's task, so replies may
//! come back in another order than the requests went out.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use axum::Router;
use serde_json::value::RawValue;
use tower_service::Service;

use crate::auth::Principal;
use crate::http::api::Carried;
use switchboard_core::protocol::{
    ErrorCode, Frame, HttpBody, HttpRequest, RequestError, ServerFrame,
};

/// Largest response body carried back; beyond it the reply is an error. Responses of
/// the API are small; this only stops a frame from growing without bound.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Turns the op into an HTTP request, or says why it cannot be one.
fn build(
    request: &HttpRequest<'_>,
    principal: Arc<Principal>,
) -> Result<Request<Body>, RequestError> {
    let bad = |m: String| RequestError::new(ErrorCode::BadRequest, m);
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| bad(format!("`{}` is not an HTTP method", request.method)))?;
    if !request.path.starts_with('/') {
        return Err(bad(format!(
            "`path` must start with `/` (got `{}`)",
            request.path
        )));
    }
    let mut builder = Request::builder().method(method).uri(request.path.as_str());
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(format!("`{name}` is not a header name")))?;
        if name == header::AUTHORIZATION {
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| bad(format!("the value of header `{name}` is not valid")))?;
        builder = builder.header(name, value);
    }
    let body = match request.body {
        Some(json) => {
            if !request
                .headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("content-type"))
            {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
            }
            Body::from(json.get().to_owned())
        }
        None => Body::empty(),
    };
    builder
        .extension(Carried(principal))
        .body(body)
        .map_err(|e| bad(format!("not a valid request: {e}")))
}

/// Serves one carried request; resolves to the reply frame.
pub fn serve(
    router: &Router,
    principal: Arc<Principal>,
    request: HttpRequest<'_>,
) -> impl Future<Output = Frame> + Send + 'static {
    let id: Box<RawValue> = request.id.to_owned();
    let built = build(&request, principal);
    let mut router = router.clone();
    async move {
        let request = match built {
            Ok(request) => request,
            Err(e) => return Frame::from(ServerFrame::error(Some(&id), &e)),
        };
        // The router's errors are responses; `Infallible` cannot happen.
        let Ok(response) = router.call(request).await;
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let err = RequestError::new(
                    ErrorCode::Internal,
                    format!("the response body could not be carried: {e}"),
                );
                return Frame::from(ServerFrame::error(Some(&id), &err));
            }
        };
        let headers: BTreeMap<String, String> = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = String::from_utf8_lossy(&bytes);
        let json = if is_json {
            serde_json::from_str::<&RawValue>(&text).ok()
        } else {
            None
        };
        let body = match json {
            Some(raw) => Some(HttpBody::Json(raw)),
            None if bytes.is_empty() => None,
            None => Some(HttpBody::Text(text.clone())),
        };
        Frame::from(
            ServerFrame::Http {
                id: &id,
                status: parts.status.as_u16(),
                headers,
                body,
            }
            .encode(),
        )
    }
}

/// A carried request being served.
pub type Pending = std::pin::Pin<Box<dyn Future<Output = Frame> + Send>>;
