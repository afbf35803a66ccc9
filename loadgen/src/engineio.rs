//! Engine.io v4 / Socket.IO v4 framing over a WebSocket text frame: just what the
//! bench's Socket.IO client needs, written here rather than pulling a client crate
//! (none speaks the raw frames the receive path must scan without parsing).
//!
//! An engine.io packet is one frame: a type digit then data. `0{…}` open (server),
//! `2` ping (server) answered by `3` pong, `4…` a message carrying a Socket.IO packet:
//! `40` connect, `42[…]` event, `42<id>[…]` event asking for an ack, `43<id>[…]` ack.

use std::io;

use crate::read_buf::invalid;

/// The request target of the WebSocket-only transport.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// What a server frame is, as far as the bench cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{…}`: the handshake, with its JSON.
    Open(&'a [u8]),
    /// `2`: the server's heartbeat; must be answered with [`PONG`].
    Ping,
    /// `40…`: the namespace connect was accepted.
    Connected,
    /// `42["name",…]`: an event; the slice is the JSON array.
    Event(&'a [u8]),
    /// `43<id>[…]`: an ack of the client's event `id`; the slice is the JSON array.
    Ack(u64, &'a [u8]),
    /// `44…` connect error, `41` disconnect, `1` close: the session is over.
    Closed(&'a [u8]),
    Other,
}

/// The client's reply to a ping.
pub const PONG: &[u8] = b"3";
/// Connect to the default namespace.
pub const CONNECT: &[u8] = b"40";

/// Classifies one text frame from the server.
pub fn parse(frame: &[u8]) -> Packet<'_> {
    match frame {
        [b'0', rest @ ..] => Packet::Open(rest),
        [b'2', ..] => Packet::Ping,
        [b'1', ..] => Packet::Closed(frame),
        [b'4', b'0', ..] => Packet::Connected,
        [b'4', b'2', rest @ ..] => Packet::Event(skip_digits(rest).1),
        [b'4', b'3', rest @ ..] => {
            let (id, json) = skip_digits(rest);
            Packet::Ack(id, json)
        }
        [b'4', b'1' | b'4', ..] => Packet::Closed(frame),
        _ => Packet::Other,
    }
}

/// The ack id at the start of `s` (0 when there is none) and what follows it.
fn skip_digits(s: &[u8]) -> (u64, &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    let id = s[..n].iter().fold(0u64, |v, &c| {
        v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'))
    });
    (id, &s[n..])
}

/// Appends an event `42[<name>,<args>]` (with `ack` as `42<ack>[…]` when given);
/// `args` is already-encoded JSON, comma separated.
pub fn event(name: &str, args: &[u8], ack: Option<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"42");
    if let Some(id) = ack {
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.extend_from_slice(b"[\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\"");
    if !args.is_empty() {
        out.push(b',');
        out.extend_from_slice(args);
    }
    out.push(b']');
}

/// Checks that an event frame names `name`: `["name",…`.
pub fn is_event(json: &[u8], name: &str) -> bool {
    json.strip_prefix(b"[\"")
        .and_then(|r| r.strip_prefix(name.as_bytes()))
        .is_some_and(|r| r.first() == Some(&b'"'))
}

/// An error for a frame that should not have come at this point of the handshake.
pub fn unexpected(what: &str, frame: &[u8]) -> io::Error {
    invalid(format!(
        "socket.io: expected {what}, got {}",
        String::from_utf8_lossy(&frame[..frame.len().min(80)])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(parse(b"0{\"sid\":\"x\"}"), Packet::Open(b"{\"sid\":\"x\"}"));
        assert_eq!(parse(b"2"), Packet::Ping);
        assert_eq!(parse(b"40{\"sid\":\"y\"}"), Packet::Connected);
        assert_eq!(parse(b"431[true]"), Packet::Ack(1, b"[true]"));
        assert_eq!(parse(b"4212[true]"), Packet::Event(b"[true]"));
        let Packet::Event(json) = parse(b"42[\"msg\",{\"topic\":\"t\"}]") else {
            panic!("not an event")
        };
        assert!(is_event(json, "msg"));
        assert!(!is_event(json, "ms"));
        let mut out = Vec::new();
        event("sub", b"\"bench/x\"", Some(7), &mut out);
        assert_eq!(out, b"427[\"sub\",\"bench/x\"]");
    }
}
