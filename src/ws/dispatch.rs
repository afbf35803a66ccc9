//! Applies one parsed request from a WebSocket client to the Hub and builds the reply.
//!
//! Kept apart from the socket code so that adding an op touches this file and
//! `protocol.rs`, nothing that reads or writes bytes.

use std::sync::Arc;

use crate::hub::{Hub, HubError, Origin, Publish, Session};
use crate::protocol::{parse_request, Member, Request, RequestError, ServerFrame};

/// The op-specific fields of an `ok` reply.
#[derive(Default)]
struct Reply {
    seq: Option<u64>,
    delivered: Option<usize>,
    members: Option<Vec<Member<'static>>>,
}

/// Handles one text frame and returns the encoded reply to queue.
pub fn handle_text(hub: &Hub, session: &Arc<Session>, text: &str) -> String {
    let (id, request) = match parse_request(text) {
        Ok(parsed) => parsed,
        Err((id, err)) => return ServerFrame::error(id, &err),
    };
    match apply(hub, session, request) {
        Ok(reply) => ServerFrame::Ok {
            id,
            seq: reply.seq,
            delivered: reply.delivered,
            members: reply.members,
        }
        .encode(),
        Err(err) => ServerFrame::error(id, &RequestError::new(err.code(), err.to_string())),
    }
}

fn apply(hub: &Hub, session: &Arc<Session>, request: Request<'_>) -> Result<Reply, HubError> {
    let mut reply = Reply::default();
    match request {
        Request::Sub { topic } => hub.subscribe(session, &topic)?,
        Request::Unsub { topic } => hub.unsubscribe(session, &topic)?,
        Request::Pub {
            topic,
            event,
            data,
            retain,
        } => {
            let published = hub.publish(Publish {
                topic: &topic,
                event: event.as_deref(),
                data,
                from: session.id(),
                origin: Origin::Client,
                retain,
            })?;
            reply.seq = Some(published.seq);
        }
        Request::Send { to, event, data } => {
            reply.delivered = Some(hub.send_direct(session, &to, event.as_deref(), data)?);
        }
        Request::Presence { topic } => reply.members = Some(hub.presence(&topic)?),
        Request::Info { info } => hub.set_info(session, info)?,
        Request::Ping => {}
    }
    Ok(reply)
}
