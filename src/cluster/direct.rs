//! Direct messages across boxes: a `send` whose recipient is not a client of the box it
//! was sent on goes onto the stream `sb:{direct}`, and every box reads it and delivers
//! it to its own connections of that client or user.
//!
//! A direct message is at most once, as on one box (a recipient that is not connected
//! does not get it later), so this stream is not a history: it is kept short and a
//! reader starts at its end. The sender's send grant travels with the message and is
//! checked by the box of the recipient, who alone knows the recipient's user.

use std::sync::Arc;

use redis::streams::StreamId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connect::Conn;
use super::presence::{connect, newest, read_after, text};
use super::Shared;
use crate::hub::Hub;
use switchboard_core::protocol::Recipient;
use switchboard_core::quiet::Throttle;

pub(super) const STREAM: &str = "sb:{direct}";

/// Messages kept in the stream (approximately): enough for a reader that reconnects.
const KEEP: u64 = 10_000;

/// Messages waiting for Redis at most; beyond, dropped and logged.
pub(super) const QUEUE: usize = 10_000;

/// A direct message on its way to the other boxes.
pub(super) struct Outgoing {
    /// `c` for a client id, `u` for a user.
    kind: &'static str,
    to: String,
    /// The sender's send grant as JSON (`null`: anyone).
    scope: String,
    frame: String,
}

impl Outgoing {
    pub(super) fn new(to: &Recipient, may_send_to: Option<&[String]>, frame: &str) -> Self {
        let (kind, to) = match to {
            Recipient::Client(id) => ("c", id.clone()),
            Recipient::User(u) => ("u", u.clone()),
        };
        Outgoing {
            kind,
            to,
            scope: serde_json::to_string(&may_send_to).unwrap_or_else(|_| "[]".into()),
            frame: frame.to_owned(),
        }
    }
}

pub(super) async fn write_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut conn: Option<Conn> = None;
    static DOWN: Throttle = Throttle::per_secs(10);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
        }
        if conn.is_none() {
            conn = shared.shards[0]
                .connect(shared.config.connect_timeout)
                .await
                .ok();
        }
        let mut pipe = redis::pipe();
        for m in batch.drain(..) {
            pipe.cmd("XADD")
                .arg(STREAM)
                .arg("MAXLEN")
                .arg("~")
                .arg(KEEP)
                .arg("*")
                .arg(&[
                    ("n", shared.node_id.as_str()),
                    ("k", m.kind),
                    ("to", m.to.as_str()),
                    ("g", m.scope.as_str()),
                    ("f", m.frame.as_str()),
                ])
                .ignore();
        }
        let wrote = match conn.as_mut() {
            Some(c) => {
                tokio::time::timeout(shared.config.command_timeout, pipe.query_async::<()>(c))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
            None => false,
        };
        if !wrote {
            conn = None;
            if let Some(held_back) = DOWN.admit() {
                tracing::warn!(
                    held_back,
                    "cluster: direct messages for other boxes lost: Redis did not take them"
                );
            }
        }
    }
}

pub(super) async fn read_loop(shared: Arc<Shared>, hub: Arc<Hub>, stop: CancellationToken) {
    let wait = shared.config.probe_interval + shared.config.command_timeout;
    let mut position: Option<String> = None;
    while !stop.is_cancelled() {
        let Some(mut conn) = connect(&shared, &stop).await else {
            continue;
        };
        if position.is_none() {
            match tokio::time::timeout(wait, newest(&mut conn, STREAM)).await {
                Ok(Ok(p)) => position = Some(p),
                _ => continue,
            }
        }
        while let Some(from) = position.clone() {
            let entries = tokio::select! {
                _ = stop.cancelled() => return,
                a = read_after(&mut conn, STREAM, &from, &shared) => a,
            };
            let Some(entries) = entries else { break };
            for entry in entries {
                position = Some(entry.id.clone());
                deliver(&shared, &hub, &entry);
            }
        }
    }
}

fn deliver(shared: &Shared, hub: &Hub, entry: &StreamId) {
    if text(entry, "n").as_deref() == Some(shared.node_id.as_str()) {
        return;
    }
    let (Some(kind), Some(to), Some(frame)) =
        (text(entry, "k"), text(entry, "to"), text(entry, "f"))
    else {
        return;
    };
    let to = match kind.as_str() {
        "c" => Recipient::Client(to),
        "u" => Recipient::User(to),
        _ => return,
    };
    // Unreadable: nobody may be reached rather than anybody.
    let scope: Option<Vec<String>> = text(entry, "g")
        .and_then(|g| serde_json::from_str(&g).ok())
        .unwrap_or(Some(Vec::new()));
    hub.deliver_direct(&to, scope, &frame);
}
