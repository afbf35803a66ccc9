//! The WebSocket protocol v1 wire format: the JSON frames clients send, the frames the
//! server sends back, error codes and close codes. docs/protocol.md is the prose version
//! of this file; the two change together.
//!
//! Both the daemon and the Rust client use this module, so a frame is parsed and written
//! by one piece of code. It owns no state and does no I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Protocol version announced in `welcome`.
pub const VERSION: u32 = 1;

/// Where a client asks a recovery to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// The last this many messages.
    Last(u64),
    /// Every message after `seq` of stream `epoch`.
    After { seq: u64, epoch: Option<String> },
}

/// Close codes. The range tells a client what to do next:
/// 4000–4099 do not reconnect, 4100–4199 reconnect with backoff, 4200–4299 reconnect now.
pub mod close {
    /// The client broke the protocol in a way that retrying will not fix.
    pub const PROTOCOL_VIOLATION: u16 = 4000;
    /// Credentials missing or not accepted at connect; an `error` frame says why.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No `auth` frame arrived within the auth timeout.
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// The token expired and was not refreshed; reconnect with a new one.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// The credential (an API key) was revoked.
    pub const CREDENTIALS_REVOKED: u16 = 4004;
    /// The client kept publishing past its rate limit after being told.
    pub const RATE_LIMITED: u16 = 4008;
    /// An operator disconnected the client (`DELETE /api/v1/clients/{id}`).
    pub const DISCONNECTED: u16 = 4005;
    /// The outbound queue passed its limit under the `close` slow-consumer policy.
    pub const SLOW_CONSUMER: u16 = 4100;
    /// The peer missed too many heartbeats.
    pub const HEARTBEAT_TIMEOUT: u16 = 4101;
    /// Standard code: the server is shutting down (reconnect with backoff).
    pub const GOING_AWAY: u16 = 1001;
    /// Standard code: a frame was larger than the configured limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;

    /// What a client should do after a close with this code.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Advice {
        DoNotReconnect,
        ReconnectWithBackoff,
        ReconnectNow,
    }

    pub fn advice(code: u16) -> Advice {
        match code {
            4000..=4099 => Advice::DoNotReconnect,
            4200..=4299 => Advice::ReconnectNow,
            // Standard codes (going away, abnormal, too big…) and 4100–4199: a later
            // attempt may work, but not straight away.
            _ => Advice::ReconnectWithBackoff,
        }
    }
}

/// Stable error codes carried by `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame was not JSON.
    BadJson,
    /// JSON, but not a valid request: not an object, a missing or mistyped field.
    BadRequest,
    /// `op` names no operation.
    UnknownOp,
    /// Binary frames carry nothing in protocol v1.
    BinaryUnsupported,
    /// A topic or filter broke the topic rules (including a wildcard in a publish).
    InvalidTopic,
    /// The connection holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// `unsub` for a filter the connection does not hold.
    NotSubscribed,
    /// `presence` on a topic that is not presence-enabled.
    PresenceDisabled,
    /// `send` found no connected recipient.
    NoRecipient,
    /// `info` was too large or not an object.
    InvalidInfo,
    /// Credentials missing or not accepted (`auth`, `refresh`).
    Unauthorized,
    /// The caller may not do this (see the security docs).
    Forbidden,
    /// Too many requests in a short time.
    RateLimited,
    /// A fault in the server; the request may be retried.
    Internal,
    /// No such resource (HTTP API: path, client, webhook, dead letter).
    NotFound,
    /// The HTTP API path exists but not with this method.
    MethodNotAllowed,
    /// A body or message larger than the configured limit.
    TooLarge,
    /// `sub` asked for missed messages on a topic that keeps no history.
    HistoryDisabled,
    /// The resource is not in a state that allows this (replaying a running recording).
    Conflict,
    /// HTTP API: a request body that is not declared `application/json`.
    UnsupportedMediaType,
    /// HTTP: the `Host` is a name the server is not configured to be reached by.
    Misdirected,
    /// A plaintext message on a topic that takes end-to-end envelopes only.
    EncryptionRequired,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::PresenceDisabled => "presence_disabled",
            ErrorCode::NoRecipient => "no_recipient",
            ErrorCode::InvalidInfo => "invalid_info",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::HistoryDisabled => "history_disabled",
            ErrorCode::Conflict => "conflict",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Misdirected => "misdirected",
            ErrorCode::EncryptionRequired => "encryption_required",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that failed before it reached the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Every field any request may carry. Parsing into one flat, borrowing struct keeps
/// the per-frame cost to a single pass with no copies of `data`; which fields an op
/// needs is checked afterwards, so the error can name the field and the op.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(borrow)]
    info: Option<&'a RawValue>,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    last: Option<u64>,
    /// For `record`.
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    notes: Option<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    recording: Option<u64>,
}

/// Only the id, to answer a request that could not be parsed whole.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// A field that is there, whatever its value: serde reads an `Option` holding `null` as
/// absent, but `"id": null` is an id the client chose and gets back.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Who a direct message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// One connection, by the id from its `welcome`.
    Client(String),
    /// Every connection of one user.
    User(String),
}

/// A parsed client request.
#[derive(Debug)]
pub enum Request<'a> {
    Sub {
        topic: String,
        /// Messages missed, from the topic's history, to deliver before live ones.
        since: Option<Since>,
    },
    Unsub {
        topic: String,
    },
    Pub {
        topic: String,
        event: Option<String>,
        data: &'a RawValue,
        retain: bool,
    },
    Send {
        to: Recipient,
        event: Option<String>,
        data: &'a RawValue,
    },
    Presence {
        topic: String,
    },
    Info {
        info: &'a RawValue,
    },
    /// Authenticates a connection that has no identity yet.
    Auth {
        token: String,
    },
    /// Replaces the token of a live connection before it expires.
    Refresh {
        token: String,
    },
    Ping,
    /// An HTTP request carried over the connection, served by the HTTP API's router.
    Http(HttpRequest<'a>),
    /// Starts or stops a recording (docs/recordings.md).
    Record(Record),
}

/// The `record` op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Start {
        name: String,
        notes: String,
        topics: Vec<String>,
    },
    Stop {
        recording: u64,
    },
}

/// The `http` op: an HTTP request without a second connection.
#[derive(Debug)]
pub struct HttpRequest<'a> {
    /// Required, to match the reply: many requests may be in flight at once.
    pub id: &'a RawValue,
    pub method: String,
    /// Path and query, such as `/api/v1/topics?prefix=a`.
    pub path: String,
    pub headers: BTreeMap<String, String>,
    /// Sent as the request body, JSON text as given.
    pub body: Option<&'a RawValue>,
}

impl Request<'_> {
    /// Publishing ops, which count against the publish rate limit. A carried HTTP
    /// request counts too, since it may publish.
    pub fn is_publish(&self) -> bool {
        matches!(
            self,
            Request::Pub { .. } | Request::Send { .. } | Request::Http(_)
        )
    }
}

/// JSON `null`, for requests that leave `data` out.
pub fn null() -> &'static RawValue {
    // A static str is a valid RawValue; this cannot fail.
    static NULL: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| RawValue::from_string("null".to_owned()).expect("null is JSON"))
}

/// One encoded server frame: JSON text shared by every connection it goes to. A
/// WebSocket text frame must be UTF-8; keeping the text as `Utf8Bytes` from the moment
/// it is encoded means no connection re-checks the same bytes (that check was 3.6% of
/// server CPU at 1,000 subscribers).
pub type Frame = tungstenite::Utf8Bytes;

/// A request id as the client sent it (any JSON scalar), echoed back verbatim.
pub type RequestId<'a> = Option<&'a RawValue>;

/// Parses one text frame. On failure the id is still returned when it could be read,
/// so the `error` reply can be correlated.
pub fn parse_request(
    text: &str,
) -> Result<(RequestId<'_>, Request<'_>), (RequestId<'_>, RequestError)> {
    let raw: RawRequest<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|i| i.id);
            let code = if e.is_syntax() || e.is_eof() {
                ErrorCode::BadJson
            } else {
                ErrorCode::BadRequest
            };
            return Err((
                id,
                RequestError::new(code, json_error::<RawRequest<'_>>(text.as_bytes(), e)),
            ));
        }
    };
    let id = raw.id;
    request_from_raw(raw).map(|r| (id, r)).map_err(|e| (id, e))
}

/// What went wrong with JSON text, naming the field when one is to blame
/// (`` field `topic`: invalid type: integer `42`, expected a string ``) rather than only a
/// column. serde_json does not track the path; parsing again with the path tracked costs
/// nothing on the success path, which never comes here.
pub fn json_error<'a, T: Deserialize<'a>>(text: &'a [u8], e: serde_json::Error) -> String {
    if e.is_syntax() || e.is_eof() {
        return e.to_string();
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(tracked) if tracked.path().iter().next().is_some() => {
            format!("field `{}`: {}", tracked.path(), tracked.inner())
        }
        _ => e.to_string(),
    }
}

/// `sub`'s recovery fields: `last`, or `since` with an optional `epoch`.
fn since(
    since: Option<u64>,
    epoch: Option<String>,
    last: Option<u64>,
) -> Result<Option<Since>, RequestError> {
    let bad = |message: &str| Err(RequestError::new(ErrorCode::BadRequest, message));
    match (since, epoch, last) {
        (None, None, None) => Ok(None),
        (Some(seq), epoch, None) => Ok(Some(Since::After { seq, epoch })),
        (None, None, Some(n)) => Ok(Some(Since::Last(n))),
        (None, Some(_), _) => bad("`epoch` goes with `since`"),
        (Some(_), _, Some(_)) => bad("ask for `since` or `last`, not both"),
    }
}

fn request_from_raw(raw: RawRequest<'_>) -> Result<Request<'_>, RequestError> {
    let op = raw.op.as_ref();
    let need = |field: Option<String>, name: &str| {
        field.ok_or_else(|| {
            RequestError::new(
                ErrorCode::BadRequest,
                format!("op `{op}` needs the field `{name}`"),
            )
        })
    };
    Ok(match op {
        "sub" => Request::Sub {
            since: since(raw.since, raw.epoch, raw.last)?,
            topic: need(raw.topic, "topic")?,
        },
        "unsub" => Request::Unsub {
            topic: need(raw.topic, "topic")?,
        },
        "pub" => Request::Pub {
            topic: need(raw.topic, "topic")?,
            event: raw.event,
            data: raw.data.unwrap_or_else(|| null()),
            retain: raw.retain,
        },
        "send" => {
            let to = match (raw.client, raw.user) {
                (Some(c), None) => Recipient::Client(c),
                (None, Some(u)) => Recipient::User(u),
                _ => {
                    return Err(RequestError::new(
                        ErrorCode::BadRequest,
                        "op `send` needs exactly one of the fields `client` or `user`",
                    ))
                }
            };
            Request::Send {
                to,
                event: raw.event,
                data: raw.data.unwrap_or_else(|| null()),
            }
        }
        "presence" => Request::Presence {
            topic: need(raw.topic, "topic")?,
        },
        "info" => Request::Info {
            info: raw.info.ok_or_else(|| {
                RequestError::new(ErrorCode::BadRequest, "op `info` needs the field `info`")
            })?,
        },
        "auth" => Request::Auth {
            token: need(raw.token, "token")?,
        },
        "refresh" => Request::Refresh {
            token: need(raw.token, "token")?,
        },
        "ping" => Request::Ping,
        "http" => Request::Http(HttpRequest {
            id: raw.id.ok_or_else(|| {
                RequestError::new(
                    ErrorCode::BadRequest,
                    "op `http` needs the field `id`, to match its reply",
                )
            })?,
            method: need(raw.method, "method")?,
            path: need(raw.path, "path")?,
            headers: raw.headers.unwrap_or_default(),
            body: raw.body,
        }),
        "record" => Request::Record(match need(raw.action, "action")?.as_str() {
            "start" => Record::Start {
                name: need(raw.name, "name")?,
                notes: raw.notes.unwrap_or_default(),
                topics: raw.topics.ok_or_else(|| {
                    RequestError::new(ErrorCode::BadRequest, "op `record` needs the field `topics`")
                })?,
            },
            "stop" => Record::Stop {
                recording: raw.recording.ok_or_else(|| {
                    RequestError::new(
                        ErrorCode::BadRequest,
                        "op `record` with `action: stop` needs the field `recording`",
                    )
                })?,
            },
            other => {
                return Err(RequestError::new(
                    ErrorCode::BadRequest,
                    format!("unknown `record` action `{other}` (known: start, stop)"),
                ))
            }
        }),
        other => {
            return Err(RequestError::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op `{other}` (known: sub, unsub, pub, send, presence, info, auth, refresh, ping, http, record)"
                ),
            ))
        }
    })
}

/// The op-specific fields of an `ok` reply; absent ones are left out.
#[derive(Serialize, Debug, Default)]
pub struct OkReply<'a> {
    /// For `pub`: the sequence number given to the message. For `sub` on a topic with a
    /// history: the number of its newest message when the subscription began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// For `sub` on a topic with a history: the stream's epoch (see docs/history.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// For `sub` with `since` or `last`: whether every message asked for follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// For `sub` with `since` or `last`: how many history messages follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// For `send`: how many connections received the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<usize>,
    /// For `pub`: `false` when the topic keeps a history and the message could not be
    /// written to it (a failing store); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<bool>,
    /// For `presence`: who is on the topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member<'a>>>,
    /// For `auth` and `refresh`: when the token expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// For `refresh`: subscriptions the new token no longer allows, which were dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribed: Option<Vec<String>>,
    /// For `record`: the recording as the HTTP API shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<serde_json::Value>,
}

/// Frames the server sends. Serialised with serde so field names live in one place;
/// `&RawValue` fields are copied verbatim, never re-encoded.
///
/// Serialize only: serde cannot read a borrowed `RawValue` back through an internally
/// tagged enum, so clients read frames as [`Incoming`].
#[derive(Serialize, Debug)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        client: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<Cow<'a, str>>,
        version: u32,
        server: Cow<'a, str>,
        /// Milliseconds between server pings.
        heartbeat_ms: u64,
        /// Unix seconds at which the connection's token expires; `refresh` before then.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(flatten)]
        reply: OkReply<'a>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        code: ErrorCode,
        message: Cow<'a, str>,
    },
    Msg {
        topic: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<Cow<'a, str>>,
        data: &'a RawValue,
        ts: u64,
        seq: u64,
        from: Cow<'a, str>,
        /// Set on the stored value a subscriber receives when it subscribes.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        retained: bool,
        /// Set on messages recovered from the topic's history by `sub`.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        history: bool,
    },
    Dm {
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<Cow<'a, str>>,
        data: &'a RawValue,
        ts: u64,
        from: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        from_user: Option<Cow<'a, str>>,
    },
    Join {
        topic: Cow<'a, str>,
        #[serde(flatten)]
        member: Member<'a>,
    },
    Leave {
        topic: Cow<'a, str>,
        #[serde(flatten)]
        member: Member<'a>,
    },
    /// Messages were dropped because the connection could not keep up.
    Lagged { dropped: u64 },
    /// The server dropped subscriptions the connection's permissions no longer allow
    /// (a reload changed them); the same field as the `refresh` reply's.
    Unsubscribed {
        unsubscribed: &'a [String],
        message: Cow<'a, str>,
    },
    /// The response to an `http` request.
    Http {
        id: &'a RawValue,
        status: u16,
        headers: BTreeMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<HttpBody<'a>>,
    },
}

/// A carried response's body: JSON in place when the response is JSON, else text.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub enum HttpBody<'a> {
    Json(&'a RawValue),
    Text(Cow<'a, str>),
}

/// One connection present on a topic.
#[derive(Serialize, Debug, Clone)]
pub struct Member<'a> {
    pub client: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Cow<'a, RawValue>>,
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail: every map key is a string and every
        // RawValue is already valid JSON.
        serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, "failed to encode a server frame");
            String::from(r#"{"op":"error","code":"internal","message":"encoding failed"}"#)
        })
    }

    /// The frame, encoded once, ready to share.
    pub fn to_frame(&self) -> Frame {
        Frame::from(self.encode())
    }

    pub fn error(id: Option<&RawValue>, err: &RequestError) -> String {
        ServerFrame::Error {
            id,
            code: err.code,
            message: Cow::Borrowed(&err.message),
        }
        .encode()
    }
}

/// Any server frame, as a client reads it: one flat struct, fields present or not
/// according to `op`.
#[derive(Deserialize, Debug, Clone)]
pub struct Incoming {
    pub op: String,
    #[serde(default)]
    pub id: Option<Box<RawValue>>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub ts: Option<u64>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub from_user: Option<String>,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub members: Option<Vec<OwnedMember>>,
    #[serde(default)]
    pub delivered: Option<usize>,
    #[serde(default)]
    pub dropped: Option<u64>,
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub unsubscribed: Option<Vec<String>>,
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default)]
    pub recovered: Option<bool>,
    #[serde(default)]
    pub retained: Option<bool>,
    /// On `ok` to `sub`: the count of history messages that follow. On `msg`: true for
    /// a recovered message.
    #[serde(default)]
    pub history: Option<serde_json::Value>,
    /// For `record` replies.
    #[serde(default)]
    pub recording: Option<serde_json::Value>,
    /// For `http` replies.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<Box<RawValue>>,
}

/// A presence member as a client reads it.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct OwnedMember {
    pub client: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pub_with_raw_data() {
        let (id, req) =
            parse_request(r#"{"op":"pub","id":"7","topic":"a/b","data":{"x":[1, 2]}}"#).unwrap();
        assert_eq!(id.unwrap().get(), r#""7""#);
        match req {
            Request::Pub {
                topic, data, event, ..
            } => {
                assert_eq!(topic, "a/b");
                assert_eq!(data.get(), r#"{"x":[1, 2]}"#);
                assert_eq!(event, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_keep_the_id() {
        let (id, err) = parse_request(r#"{"op":"sub","id":3,"topic":5}"#).unwrap_err();
        assert_eq!(id.unwrap().get(), "3");
        assert_eq!(err.code, ErrorCode::BadRequest);
        let (id, err) = parse_request(r#"{"op":"sub","id":3}"#).unwrap_err();
        assert_eq!(id.unwrap().get(), "3");
        assert!(err.message.contains("topic"), "{}", err.message);
        let (_, err) = parse_request("not json").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadJson);
        let (_, err) = parse_request(r#"{"op":"dance","id":1}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownOp);
        let (_, err) = parse_request("[1,2]").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_null_id_is_an_id() {
        let (id, _) = parse_request(r#"{"op":"ping","id":null}"#).unwrap();
        assert_eq!(id.map(RawValue::get), Some("null"));
        let (id, _) = parse_request(r#"{"op":"sub","id":null,"topic":5}"#).unwrap_err();
        assert_eq!(id.map(RawValue::get), Some("null"));
        let (id, _) = parse_request(r#"{"op":"ping"}"#).unwrap();
        assert!(id.is_none());
    }

    #[test]
    fn a_mistyped_field_is_named() {
        let (_, err) = parse_request(r#"{"op":"pub","id":1,"topic":42}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(
            err.message.starts_with("field `topic`: "),
            "{}",
            err.message
        );
        let (_, err) = parse_request(r#"{"op":"record","topics":["a",7]}"#).unwrap_err();
        assert!(
            err.message.starts_with("field `topics[1]`: "),
            "{}",
            err.message
        );
    }

    #[test]
    fn parses_record() {
        let (_, req) =
            parse_request(r#"{"op":"record","id":1,"action":"start","name":"n","topics":["a/#"]}"#)
                .unwrap();
        assert!(
            matches!(req, Request::Record(Record::Start { ref topics, .. }) if topics == &["a/#"])
        );
        let (_, req) =
            parse_request(r#"{"op":"record","id":1,"action":"stop","recording":7}"#).unwrap();
        assert!(matches!(
            req,
            Request::Record(Record::Stop { recording: 7 })
        ));
        let (_, err) = parse_request(r#"{"op":"record","id":1,"action":"stop"}"#).unwrap_err();
        assert!(err.message.contains("recording"), "{}", err.message);
        let (_, err) = parse_request(r#"{"op":"record","id":1,"action":"dance"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn frames_round_trip() {
        let data = RawValue::from_string("{\"t\":1}".into()).unwrap();
        let text = ServerFrame::Msg {
            topic: "a/b".into(),
            event: None,
            data: &data,
            ts: 5,
            seq: 9,
            from: "c1".into(),
            retained: false,
            history: false,
        }
        .encode();
        assert_eq!(
            text,
            r#"{"op":"msg","topic":"a/b","data":{"t":1},"ts":5,"seq":9,"from":"c1"}"#
        );
        let back: Incoming = serde_json::from_str(&text).unwrap();
        assert_eq!(back.op, "msg");
        assert_eq!(back.seq, Some(9));
        assert_eq!(back.data.unwrap().get(), r#"{"t":1}"#);
    }
}
