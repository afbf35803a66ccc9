//! Applies one parsed request from a WebSocket client and builds the reply.
//!
//! Kept apart from the socket code so that adding an op touches this file and
//! `protocol.rs`, nothing that reads or writes bytes. Permissions are not checked here:
//! the Hub checks every request against the session's grants. What is decided here is
//! what only a connection has: its publish rate, and `auth`/`refresh`, which change who
//! the connection is.

use std::sync::Arc;

use super::WsState;
use crate::auth::{Kind, Principal};
use crate::hub::outbox::CloseReason;
use crate::hub::{BusWait, HubError, Publishing, RetainedCursor, Sender, Session};
use crate::recordings::StartRequest;
use switchboard_core::message::{Origin, Publish, Published};
use switchboard_core::protocol::{
    close, parse_request, ErrorCode, OkReply, Record, Request, RequestError, ServerFrame,
};

use super::http::Pending;
use super::rate::{PublishLimiter, Verdict};
use switchboard_core::quiet::Throttle;

/// The reply to queue, and what the connection must do next.
pub struct Handled {
    /// None when the reply comes later (a carried HTTP request).
    pub reply: Option<String>,
    pub then: Then,
    /// A wildcard `sub` whose retained values are still to be queued, a step at a time.
    pub retained: Option<RetainedCursor>,
}

pub enum Then {
    Continue,
    /// An anonymous connection authenticated: serve it as this identity from now on.
    Identify(Arc<Principal>),
    /// The token was refreshed: its new expiry applies.
    Refreshed(Arc<Principal>),
    Close(CloseReason),
    /// A carried HTTP request (or a `record` op) is being served; its reply comes when
    /// it is done.
    Http(Pending),
    /// A publish waits for the bus's answer (`[cluster]`): its reply is queued before
    /// the connection reads its next request, so replies keep the requests' order.
    Publishing(Pending),
}

type Reply = OkReply<'static>;

/// Handles one text frame.
pub fn handle_text(
    state: &WsState,
    session: &Arc<Session>,
    limiter: &mut PublishLimiter,
    text: &str,
) -> Handled {
    let (id, request) = match parse_request(text) {
        Ok(parsed) => parsed,
        Err((id, err)) => return reply_only(ServerFrame::error(id, &err)),
    };
    let mut then = Then::Continue;
    if counts_against_rate(&request) {
        match limiter.check() {
            Verdict::Allowed => {}
            verdict => {
                state
                    .auth
                    .rejections
                    .count_rate_limited(verdict == Verdict::Abusive);
                if verdict == Verdict::Abusive {
                    static CLOSING: Throttle = Throttle::per_secs(10);
                    if let Some(held_back) = CLOSING.admit() {
                        tracing::info!(
                            client = session.id(),
                            held_back,
                            "request rate limit: closing"
                        );
                    }
                    then = Then::Close(CloseReason::Code(
                        close::RATE_LIMITED,
                        "publish rate limit exceeded",
                    ));
                }
                let err = RequestError::new(
                    ErrorCode::RateLimited,
                    "too many requests (publishes, subscriptions, info): wait before sending more",
                );
                return Handled {
                    reply: Some(ServerFrame::error(id, &err)),
                    then,
                    retained: None,
                };
            }
        }
    }
    let mut retained = None;
    let mut waiting = None;
    let result = match request {
        Request::Auth { token } => identify(state, session, &token).map(|p| {
            then = Then::Identify(p);
            Reply::default()
        }),
        Request::Refresh { token } => refresh(state, session, &token).map(|(p, reply)| {
            then = Then::Refreshed(p);
            reply
        }),
        Request::Record(record) => {
            // A stop waits for the writer to store what the recording took; the reply
            // comes when it has, like a carried HTTP request's.
            let pending = recording(state.recorder.clone(), session.principal(), id, record);
            return Handled {
                reply: None,
                then: Then::Http(Box::pin(pending)),
                retained: None,
            };
        }
        Request::Http(request) => {
            let pending = super::http::serve(&state.api, session.principal(), request);
            return Handled {
                reply: None,
                then: Then::Http(Box::pin(pending)),
                retained: None,
            };
        }
        other => apply(state, session, other, &mut retained, &mut waiting)
            .map_err(|e| RequestError::new(e.code(), e.to_string())),
    };
    if let Some(wait) = waiting {
        // Handed to the bus; the connection goes on while Redis answers.
        return Handled {
            reply: None,
            then: Then::Publishing(Box::pin(published_later(id, wait))),
            retained: None,
        };
    }
    let reply = match result {
        Ok(reply) => ServerFrame::Ok { id, reply }.encode(),
        Err(err) => ServerFrame::error(id, &err),
    };
    Handled {
        reply: Some(reply),
        then,
        retained,
    }
}

/// Ops that cost the daemon work for others, drawn from the connection's token bucket.
///
/// Besides publishes: `sub` and `unsub` (a `sub #` queues every retained value; two
/// clients alternating `sub #` and `unsub #` over 100,000 of them stalled every other
/// client for 102 s), and presence `info` (fanned out to every watcher of each room
/// the connection is in: 20,000 frames per op were measured).
fn counts_against_rate(request: &Request<'_>) -> bool {
    request.is_publish()
        || matches!(
            request,
            Request::Sub { .. } | Request::Unsub { .. } | Request::Info { .. }
        )
}

fn reply_only(reply: String) -> Handled {
    Handled {
        reply: Some(reply),
        then: Then::Continue,
        retained: None,
    }
}

/// The `ok` (or error) for a publish once the bus answered.
fn published_later(
    id: Option<&serde_json::value::RawValue>,
    wait: BusWait,
) -> impl std::future::Future<Output = switchboard_core::protocol::Frame> + Send + 'static {
    let id = id.map(|i| i.to_owned());
    async move {
        let reply = match wait.answer().await {
            Ok(published) => ServerFrame::Ok {
                id: id.as_deref(),
                reply: published_reply(published),
            }
            .encode(),
            Err(e) => {
                ServerFrame::error(id.as_deref(), &RequestError::new(e.code(), e.to_string()))
            }
        };
        switchboard_core::protocol::Frame::from(reply)
    }
}

fn published_reply(published: Published) -> Reply {
    Reply {
        seq: Some(published.seq),
        stored: (!published.stored).then_some(false),
        ..Reply::default()
    }
}

/// `waiting`: set when a publish was handed to the bus and its answer is to come.
fn apply(
    state: &WsState,
    session: &Arc<Session>,
    request: Request<'_>,
    retained: &mut Option<RetainedCursor>,
    waiting: &mut Option<BusWait>,
) -> Result<Reply, HubError> {
    let hub = &state.hub;
    let mut reply = Reply::default();
    match request {
        Request::Sub { topic, since } => {
            let subscribed = hub.subscribe_from(session, &topic, since.as_ref())?;
            if let Some(position) = subscribed.position {
                reply.epoch = Some(position.epoch);
                reply.seq = Some(position.seq);
            }
            if let Some((complete, count)) = subscribed.recovery {
                reply.recovered = Some(complete);
                reply.history = Some(count);
            }
            *retained = subscribed.retained;
        }
        Request::Unsub { topic } => hub.unsubscribe(session, &topic)?,
        Request::Pub {
            topic,
            event,
            data,
            retain,
        } => {
            let principal = session.principal();
            let publishing = hub.publish_deferred(Publish {
                topic: &topic,
                event: event.as_deref(),
                data,
                from: session.id(),
                origin: Origin::Ws,
                by: &principal.grants,
                retain,
            })?;
            match publishing {
                Publishing::Done(published) => reply = published_reply(published),
                Publishing::Waiting(wait) => *waiting = Some(wait),
            }
        }
        Request::Send { to, event, data } => {
            let principal = session.principal();
            let from = Sender::session(session, &principal);
            reply.delivered = Some(hub.send_direct(from, &to, event.as_deref(), data)?);
        }
        Request::Presence { topic } => {
            reply.members = Some(hub.presence(&session.principal().grants, &topic)?)
        }
        Request::Info { info } => hub.set_info(session, info)?,
        // Handled by the caller; listed so a new op cannot be forgotten here.
        Request::Auth { .. }
        | Request::Refresh { .. }
        | Request::Ping
        | Request::Http(_)
        | Request::Record(_) => {}
    }
    Ok(reply)
}

/// The `record` op: the same operation as `POST /api/v1/recordings` (and `…/stop`),
/// with the connection's identity; the reply carries the recording.
fn recording(
    recorder: Arc<crate::recordings::Recorder>,
    principal: Arc<Principal>,
    id: Option<&serde_json::value::RawValue>,
    record: Record,
) -> impl std::future::Future<Output = switchboard_core::protocol::Frame> + Send + 'static {
    let id = id.map(|i| i.to_owned());
    async move {
        let done = match record {
            Record::Start {
                name,
                notes,
                topics,
            } => recorder.start_recording(
                &principal,
                StartRequest {
                    name,
                    notes,
                    topics,
                },
            ),
            Record::Stop { recording } => recorder.stop_recording(&principal, recording).await,
        };
        let reply = match done {
            Ok(view) => ServerFrame::Ok {
                id: id.as_deref(),
                reply: OkReply {
                    recording: serde_json::to_value(view).ok(),
                    ..OkReply::default()
                },
            }
            .encode(),
            Err(e) => {
                ServerFrame::error(id.as_deref(), &RequestError::new(e.code(), e.to_string()))
            }
        };
        switchboard_core::protocol::Frame::from(reply)
    }
}

/// `auth` after `welcome`: allowed once, on an anonymous connection that has not
/// subscribed yet, so nothing done under the old identity carries over.
fn identify(
    state: &WsState,
    session: &Session,
    token: &str,
) -> Result<Arc<Principal>, RequestError> {
    if session.principal().kind != Kind::Anonymous || !session.filters().is_empty() {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            "`auth` must come before any subscription on an anonymous connection; use `refresh` to renew a token",
        ));
    }
    authenticate(state, token).map(Arc::new)
}

fn refresh(
    state: &WsState,
    session: &Arc<Session>,
    token: &str,
) -> Result<(Arc<Principal>, Reply), RequestError> {
    let current = session.principal();
    if current.kind == Kind::Anonymous {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            "nothing to refresh: this connection is anonymous (use `auth`)",
        ));
    }
    let principal = authenticate(state, token)?;
    if !principal.continues(&current) {
        return Err(RequestError::new(
            ErrorCode::Forbidden,
            "a refreshed credential must be of the same kind and for the same user",
        ));
    }
    let principal = Arc::new(principal);
    let dropped = state.hub.refresh(session, principal.clone());
    let reply = Reply {
        expires_at: principal.expires_at,
        unsubscribed: (!dropped.is_empty()).then_some(dropped),
        ..Reply::default()
    };
    Ok((principal, reply))
}

/// Checks a credential presented in a frame.
pub fn authenticate(state: &WsState, token: &str) -> Result<Principal, RequestError> {
    state
        .auth
        .authenticate(token)
        .map_err(|e| RequestError::new(ErrorCode::Unauthorized, e.to_string()))
}
