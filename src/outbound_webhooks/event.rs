//! What a webhook receives: one JSON object per event, and the request body that carries
//! one or several of them. Built once per event in the tap (the event) and once per
//! attempt in the delivery task (the body), by concatenating stored JSON, never by
//! re-parsing it.

use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use switchboard_core::clock::now_ms;
use switchboard_core::message::{Lifecycle, Publish};

#[derive(Serialize)]
struct MessageEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    data: &'a RawValue,
    seq: u64,
    ts: u64,
    from: &'a str,
}

/// A routed message as an event object (without its `id`, which the store assigns).
pub fn message(m: &Publish<'_>, seq: u64) -> String {
    let event = MessageEvent {
        kind: "message",
        topic: m.topic,
        event: m.event,
        data: m.data,
        seq,
        ts: now_ms(),
        from: m.from,
    };
    // Serialising borrowed strings and a raw JSON value cannot fail.
    serde_json::to_string(&event).unwrap_or_else(|_| String::from("{\"type\":\"message\"}"))
}

/// A lifecycle event as an event object: its name as `type`, then its fields.
pub fn lifecycle(e: &Lifecycle<'_>) -> String {
    let ts = now_ms();
    let value = match *e {
        Lifecycle::Connected { client, user } | Lifecycle::Disconnected { client, user } => {
            json!({"type": e.name(), "ts": ts, "client": client, "user": user})
        }
        Lifecycle::Subscribed {
            client,
            user,
            filter,
        }
        | Lifecycle::Unsubscribed {
            client,
            user,
            filter,
        } => json!({"type": e.name(), "ts": ts, "client": client, "user": user, "filter": filter}),
        Lifecycle::DeviceOnline {
            client_id,
            username,
        } => json!({"type": e.name(), "ts": ts, "client_id": client_id, "username": username}),
        Lifecycle::DeviceOffline {
            client_id,
            username,
            reason,
        } => json!({
            "type": e.name(), "ts": ts, "client_id": client_id, "username": username,
            "reason": reason,
        }),
    };
    value.to_string()
}

/// The stored form of an event: `id` put first into the object built above.
pub fn with_id(id: &str, event: &str) -> Vec<u8> {
    let rest = event.strip_prefix('{').unwrap_or(event);
    let mut out = Vec::with_capacity(event.len() + id.len() + 8);
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(rest.as_bytes());
    out
}

/// A request body: `{"webhook":"<name>","events":[…]}`, the same for one event or many.
pub fn body<'a>(webhook: &str, events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"webhook\":");
    // A webhook name is letters, digits and `-_.`, but quote it properly all the same.
    out.extend_from_slice(serde_json::Value::from(webhook).to_string().as_bytes());
    out.extend_from_slice(b",\"events\":[");
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(event);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_bodies_are_json() {
        let data = RawValue::from_string("{\"t\":21.5}".into()).unwrap();
        let m = message(&Publish::test("a/b", &data), 7);
        let stored = with_id("evt_1", &m);
        let gone = lifecycle(&Lifecycle::DeviceOffline {
            client_id: "n1",
            username: None,
            reason: "timeout",
        });
        let stored2 = with_id("evt_2", &gone);
        let body = body("h", [&stored[..], &stored2[..]]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["webhook"], "h");
        let e = &v["events"][0];
        assert_eq!(
            (&e["id"], &e["type"], &e["topic"], &e["seq"], &e["from"]),
            (
                &json!("evt_1"),
                &json!("message"),
                &json!("a/b"),
                &json!(7),
                &json!("c1")
            )
        );
        assert_eq!(e["data"], json!({"t": 21.5}));
        assert!(e.get("event").is_none());
        let e = &v["events"][1];
        assert_eq!(e["type"], "device.offline");
        assert_eq!(e["reason"], "timeout");
        assert_eq!(e["username"], serde_json::Value::Null);
    }
}
