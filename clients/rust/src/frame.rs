//! Where the client's bytes become values: requests it writes ([`Outgoing`]) and what a
//! server frame means to it ([`classify`]). Parsing itself is `switchboard_core::protocol`'s
//! [`Incoming`]; this file only sorts frames into replies, messages and events.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use super::ClientError;
use switchboard_core::protocol::{self, Incoming, OwnedMember};

/// A request as the client writes it. Only the fields an op uses are set; `data` and
/// `info` are JSON text already, so a payload is serialised once, by the caller.
#[derive(Serialize, Debug, Default)]
pub(super) struct Outgoing {
    pub op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
}

impl Outgoing {
    pub fn new(op: &'static str, id: Option<u64>) -> Self {
        Self {
            op,
            id,
            ..Self::default()
        }
    }

    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// `sub`'s recovery fields.
    pub fn since(mut self, since: Option<&protocol::Since>) -> Self {
        match since {
            Some(protocol::Since::Last(n)) => self.last = Some(*n),
            Some(protocol::Since::After { seq, epoch }) => {
                self.since = Some(*seq);
                self.epoch = epoch.clone();
            }
            None => {}
        }
        self
    }

    pub fn encode(&self) -> Result<String, ClientError> {
        Ok(serde_json::to_string(self)?)
    }
}

/// Serialises a caller's value into the JSON text a frame carries.
pub(super) fn to_raw<T: Serialize + ?Sized>(value: &T) -> Result<Box<RawValue>, ClientError> {
    Ok(serde_json::value::to_raw_value(value)?)
}

/// One `msg` push: a message published to a topic this client subscribed to.
///
/// Serialises back to the exact `msg` frame (`op` included), which is what
/// `switchboard sub --json` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename = "msg")]
pub struct Message {
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The payload as the publisher sent it; see [`Message::decode`].
    pub data: Box<RawValue>,
    /// Milliseconds since the Unix epoch, stamped by the server.
    pub ts: u64,
    /// Per-topic sequence number: increases by one per message on the topic.
    pub seq: u64,
    /// Who published: a client id, `http`, `mqtt:…`.
    pub from: String,
    /// The topic's retained value, sent on subscribing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retained: bool,
    /// Recovered from the topic's history (missed while disconnected, or asked for).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
}

impl Message {
    /// The payload as a Rust value (`serde_json::Value` for anything).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// A `dm` push: a direct message to this connection or its user.
#[derive(Debug, Clone)]
pub struct DirectMessage {
    pub event: Option<String>,
    pub data: Box<RawValue>,
    pub ts: u64,
    /// The sender's client id (answer with `send_to_client`).
    pub from: String,
    pub from_user: Option<String>,
}

impl DirectMessage {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// Everything other than topic messages: pushes and the connection's life.
#[derive(Debug, Clone)]
pub enum Event {
    /// Reconnected (the first connection is `Client::connect` returning); the lost
    /// subscriptions are being restored, and `client_id` is the new id.
    Connected {
        client_id: String,
    },
    /// The connection ended. `code` is the server's close code, if it sent one.
    Disconnected {
        code: Option<u16>,
        reason: String,
        /// False when the client gives up (close code 4000–4099, reconnect off).
        reconnecting: bool,
    },
    Dm(DirectMessage),
    Join {
        topic: String,
        member: OwnedMember,
    },
    Leave {
        topic: String,
        member: OwnedMember,
    },
    /// The server dropped this many frames because the client read too slowly.
    Lagged {
        dropped: u64,
    },
    /// The server dropped these subscriptions: the connection's permissions no longer
    /// allow them (a reload changed them). Their local subscriptions have ended.
    Unsubscribed {
        filters: Vec<String>,
        message: String,
    },
    /// Re-subscribing `topic` after a reconnect could not deliver every message missed
    /// meanwhile (trimmed from the history, evicted, or the stream restarted): the
    /// application should resynchronise what it shows from that topic.
    Gap {
        topic: String,
    },
    /// An error nobody waits for: the reply to a fire-and-forget request, or a failed
    /// re-subscription after a reconnect (that filter's subscriptions then end).
    ServerError {
        code: String,
        message: String,
    },
}

/// What one server frame means to the client.
// Lives for one `match` on the stack; boxing the reply would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Inbound {
    /// `ok` or `error` answering the request with this id.
    Reply(u64, Result<Incoming, ClientError>),
    Msg(Message),
    Event(Event),
    /// Nothing to do: the `ok` of a fire-and-forget request, an op this version does
    /// not know (newer servers may add pushes).
    Ignored,
}

fn null() -> Box<RawValue> {
    protocol::null().to_owned()
}

pub(super) fn server_error(frame: &Incoming) -> ClientError {
    ClientError::Server {
        code: frame.code.clone().unwrap_or_else(|| "unknown".into()),
        message: frame.message.clone().unwrap_or_default(),
    }
}

fn member(frame: Incoming) -> Option<OwnedMember> {
    Some(OwnedMember {
        client: frame.client?,
        user: frame.user,
        info: frame
            .info
            .and_then(|info| serde_json::from_str(info.get()).ok()),
    })
}

/// Sorts a parsed frame. Frames missing a field their op needs are ignored with a log
/// line rather than trusted.
pub(super) fn classify(frame: Incoming) -> Inbound {
    let inbound = match frame.op.as_str() {
        // `http` answers a carried API call (its status and body are in the frame).
        "ok" | "error" | "http" => {
            // We only send numeric ids, so anything else is not ours.
            let id = frame.id.as_deref().and_then(|id| id.get().parse().ok());
            let result = if frame.op == "error" {
                Err(server_error(&frame))
            } else {
                Ok(frame)
            };
            match (id, result) {
                (Some(id), result) => Some(Inbound::Reply(id, result)),
                (None, Err(ClientError::Server { code, message })) => {
                    Some(Inbound::Event(Event::ServerError { code, message }))
                }
                (None, _) => Some(Inbound::Ignored),
            }
        }
        "msg" => frame.topic.map(|topic| {
            Inbound::Msg(Message {
                topic,
                event: frame.event,
                data: frame.data.unwrap_or_else(null),
                ts: frame.ts.unwrap_or_default(),
                seq: frame.seq.unwrap_or_default(),
                from: frame.from.unwrap_or_default(),
                retained: frame.retained.unwrap_or_default(),
                history: frame.history.as_ref().and_then(serde_json::Value::as_bool) == Some(true),
            })
        }),
        "dm" => Some(Inbound::Event(Event::Dm(DirectMessage {
            event: frame.event,
            data: frame.data.unwrap_or_else(null),
            ts: frame.ts.unwrap_or_default(),
            from: frame.from.unwrap_or_default(),
            from_user: frame.from_user,
        }))),
        "join" | "leave" => {
            let joined = frame.op == "join";
            frame
                .topic
                .clone()
                .zip(member(frame))
                .map(|(topic, member)| {
                    Inbound::Event(if joined {
                        Event::Join { topic, member }
                    } else {
                        Event::Leave { topic, member }
                    })
                })
        }
        "lagged" => Some(Inbound::Event(Event::Lagged {
            dropped: frame.dropped.unwrap_or_default(),
        })),
        "unsubscribed" => frame.unsubscribed.map(|filters| {
            Inbound::Event(Event::Unsubscribed {
                filters,
                message: frame.message.unwrap_or_default(),
            })
        }),
        other => {
            tracing::debug!(op = other, "ignoring a frame");
            Some(Inbound::Ignored)
        }
    };
    inbound.unwrap_or_else(|| {
        tracing::warn!("ignoring a server frame that lacks a required field");
        Inbound::Ignored
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_text(text: &str) -> Inbound {
        classify(serde_json::from_str(text).unwrap())
    }

    #[test]
    fn replies_are_matched_by_numeric_id() {
        match classify_text(r#"{"op":"ok","id":7,"seq":3}"#) {
            Inbound::Reply(7, Ok(frame)) => assert_eq!(frame.seq, Some(3)),
            other => panic!("{other:?}"),
        }
        match classify_text(r#"{"op":"error","id":8,"code":"no_recipient","message":"x"}"#) {
            Inbound::Reply(8, Err(ClientError::Server { code, .. })) => {
                assert_eq!(code, "no_recipient")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_text(r#"{"op":"ok","seq":3}"#),
            Inbound::Ignored
        ));
        assert!(matches!(
            classify_text(r#"{"op":"error","code":"bad_json","message":"x"}"#),
            Inbound::Event(Event::ServerError { .. })
        ));
    }

    #[test]
    fn pushes() {
        match classify_text(
            r#"{"op":"msg","topic":"a/b","data":{"t": 1},"ts":5,"seq":9,"from":"c1"}"#,
        ) {
            Inbound::Msg(m) => {
                assert_eq!((m.topic.as_str(), m.seq, m.ts), ("a/b", 9, 5));
                assert_eq!(m.data.get(), r#"{"t": 1}"#);
                let v: serde_json::Value = m.decode().unwrap();
                assert_eq!(v["t"], 1);
                assert_eq!(
                    serde_json::to_string(&m).unwrap(),
                    r#"{"op":"msg","topic":"a/b","data":{"t": 1},"ts":5,"seq":9,"from":"c1"}"#
                );
            }
            other => panic!("{other:?}"),
        }
        match classify_text(r#"{"op":"join","topic":"room/1","client":"c2","info":{"n":"ann"}}"#) {
            Inbound::Event(Event::Join { topic, member }) => {
                assert_eq!(topic, "room/1");
                assert_eq!(member.client, "c2");
                assert_eq!(member.info, Some(serde_json::json!({"n": "ann"})));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_text(r#"{"op":"lagged","dropped":4}"#),
            Inbound::Event(Event::Lagged { dropped: 4 })
        ));
        assert!(matches!(
            classify_text(r#"{"op":"unsubscribed","unsubscribed":["b/1"],"message":"m"}"#),
            Inbound::Event(Event::Unsubscribed { filters, .. }) if filters == ["b/1"]
        ));
        assert!(matches!(
            classify_text(r#"{"op":"msg","data":1}"#),
            Inbound::Ignored
        ));
        assert!(matches!(
            classify_text(r#"{"op":"future_push"}"#),
            Inbound::Ignored
        ));
    }

    #[test]
    fn outgoing_leaves_out_unset_fields() {
        let mut frame = Outgoing::new("pub", Some(3)).topic("a/b");
        frame.data = Some(to_raw(&[1, 2]).unwrap());
        assert_eq!(
            frame.encode().unwrap(),
            r#"{"op":"pub","id":3,"topic":"a/b","data":[1,2]}"#
        );
    }
}
