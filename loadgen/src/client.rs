//! The client drivers: how each system under test is subscribed to and published to,
//! over the lean raw-socket WebSocket and MQTT codecs of [`crate::proto`].
//!
//! Every subscriber of a point shares the load generator's core, so the receive path
//! parses nothing: it finds the payload's `"t":` (send time) and `"n":` (sequence)
//! in the frame bytes, wherever the system put the payload.

use std::io;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

use crate::engineio::{self, Packet};
use crate::proto::{self, Frame, MqttTcp, Ws};
use crate::read_buf::invalid;
use crate::ws_frame::{encode, encode_pong, OP_BINARY, OP_TEXT};

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// switchboard: JSON protocol on `/ws`, MQTT over TCP for devices.
    Switchboard,
    /// Debian's Mosquitto: MQTT over TCP, MQTT over WebSocket for browsers.
    Mosquitto,
    /// The Node `ws` server of `loadgen/peers/`: switchboard's protocol subset.
    NodeWs,
    /// The Node Socket.IO server of `loadgen/peers/`.
    Socketio,
}

impl System {
    pub const ALL: [System; 4] = [
        System::Switchboard,
        System::Mosquitto,
        System::NodeWs,
        System::Socketio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Switchboard => "switchboard",
            System::Mosquitto => "mosquitto",
            System::NodeWs => "node-ws",
            System::Socketio => "socketio",
        }
    }
}

/// Where a running system listens; sent to worker processes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub system: System,
    /// The WebSocket listener (path per system: see [`subscribe`]).
    pub ws: SocketAddr,
    /// MQTT over TCP, for the systems that have it.
    pub mqtt: Option<SocketAddr>,
    /// Subscribers offer permessage-deflate (`--deflate`; switchboard and Node `ws`).
    #[serde(default)]
    pub deflate: bool,
}

/// A subscribed connection, ready to receive.
pub enum Sub {
    /// switchboard's JSON protocol (also the Node `ws` peer's).
    Json(Ws),
    /// MQTT over WebSocket: the packets of the binary frames, reassembled.
    Mqtt(Ws, Vec<u8>),
    /// Socket.IO over its WebSocket transport.
    Sio(Ws),
}

/// Read buffer a subscriber starts with; it grows for frames larger than this.
const SUB_BUFFER: usize = 4096;

/// Opens a connection from `bind` and subscribes it to `topic`, waiting for the
/// system's confirmation so that no message published after this returns is missed.
pub async fn subscribe(
    target: &Target,
    bind: Option<IpAddr>,
    topic: &str,
    client_id: &str,
) -> io::Result<Sub> {
    match target.system {
        System::Switchboard | System::NodeWs => {
            let offer = if target.deflate {
                crate::ws_frame::OFFER_DEFLATE
            } else {
                ""
            };
            let mut ws = Ws::connect_with(target.ws, bind, SUB_BUFFER, "/ws", None, offer).await?;
            let req = format!(r#"{{"op":"sub","id":1,"topic":"{topic}"}}"#);
            ws.send(OP_TEXT, req.as_bytes()).await?;
            for _ in 0..16 {
                let frame = ws.next_data().await?;
                if frame.starts_with(br#"{"op":"ok""#) {
                    return Ok(Sub::Json(ws));
                }
                if frame.starts_with(br#"{"op":"error""#) {
                    return Err(invalid(String::from_utf8_lossy(&frame)));
                }
            }
            Err(invalid("no reply to sub"))
        }
        System::Mosquitto => {
            let mut ws =
                Ws::connect_from(target.ws, bind, SUB_BUFFER, "/mqtt", Some("mqtt")).await?;
            let mut out = Vec::new();
            proto::connect(client_id, &mut out);
            ws.send(OP_BINARY, &out).await?;
            let mut stream = Vec::new();
            mqtt_expect(&mut ws, &mut stream, 0x20).await?;
            out.clear();
            proto::subscribe(1, topic, 0, &mut out);
            ws.send(OP_BINARY, &out).await?;
            mqtt_expect(&mut ws, &mut stream, 0x90).await?;
            Ok(Sub::Mqtt(ws, stream))
        }
        System::Socketio => {
            let mut ws = sio_connect(target.ws, bind).await?;
            let mut out = Vec::new();
            engineio::event("sub", format!("\"{topic}\"").as_bytes(), Some(1), &mut out);
            ws.send(OP_TEXT, &out).await?;
            loop {
                let frame = ws.next_data().await?;
                match engineio::parse(&frame) {
                    Packet::Ack(1, _) => return Ok(Sub::Sio(ws)),
                    Packet::Ping => ws.send(OP_TEXT, engineio::PONG).await?,
                    Packet::Closed(_) => return Err(engineio::unexpected("ack", &frame)),
                    _ => {}
                }
            }
        }
    }
}

/// The engine.io handshake: open packet, then the namespace connect.
async fn sio_connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<Ws> {
    let mut ws = Ws::connect_from(addr, bind, SUB_BUFFER, engineio::PATH, None).await?;
    let open = ws.next_data().await?;
    if !matches!(engineio::parse(&open), Packet::Open(_)) {
        return Err(engineio::unexpected("open packet", &open));
    }
    ws.send(OP_TEXT, engineio::CONNECT).await?;
    loop {
        let frame = ws.next_data().await?;
        match engineio::parse(&frame) {
            Packet::Connected => return Ok(ws),
            Packet::Ping => ws.send(OP_TEXT, engineio::PONG).await?,
            _ => return Err(engineio::unexpected("namespace connect", &frame)),
        }
    }
}

/// Reads MQTT-over-WebSocket frames until a whole packet of `kind` is there.
async fn mqtt_expect(ws: &mut Ws, stream: &mut Vec<u8>, kind: u8) -> io::Result<()> {
    loop {
        if let Some((first, body)) = proto::next_packet(stream)? {
            let end = body.end;
            stream.drain(..end);
            if first & 0xf0 != kind {
                return Err(invalid(format!("expected MQTT {kind:#x}, got {first:#x}")));
            }
            return Ok(());
        }
        let data = ws.next_data().await?;
        stream.extend_from_slice(&data);
    }
}

impl Sub {
    /// Receives until the connection ends, calling `on_payload` with each message's
    /// payload bytes (or the frame that holds it) after every socket read.
    pub async fn receive(self, mut on_payload: impl FnMut(&[u8])) -> io::Result<()> {
        match self {
            Sub::Json(mut ws) => {
                receive_frames(&mut ws, |f, _| {
                    if let Frame::Text(t) = f {
                        if t.starts_with(br#"{"op":"msg""#) {
                            on_payload(t);
                        }
                    }
                })
                .await
            }
            Sub::Sio(mut ws) => {
                receive_frames(&mut ws, |f, replies| {
                    if let Frame::Text(t) = f {
                        match engineio::parse(t) {
                            Packet::Event(json) if engineio::is_event(json, "msg") => {
                                on_payload(json)
                            }
                            Packet::Ping => encode(OP_TEXT, engineio::PONG, replies),
                            _ => {}
                        }
                    }
                })
                .await
            }
            Sub::Mqtt(mut ws, mut stream) => {
                let mut result = Ok(());
                while result.is_ok() {
                    result = receive_frames_once(&mut ws, |f, _| {
                        if let Frame::Binary(b) = f {
                            stream.extend_from_slice(b);
                        }
                    })
                    .await
                    .and_then(|more| {
                        let mut at = 0;
                        while let Some((first, body)) = proto::next_packet(&stream[at..])? {
                            let body_at = at + body.start..at + body.end;
                            if first & 0xf0 == proto::PUBLISH {
                                if let Some(p) =
                                    proto::publish_payload(first, &stream[body_at.clone()])
                                {
                                    on_payload(p);
                                }
                            }
                            at = body_at.end;
                        }
                        stream.drain(..at);
                        if more {
                            Ok(())
                        } else {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        }
                    });
                }
                match result {
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
                    other => other,
                }
            }
        }
    }
}

/// Reads and dispatches frames until the connection ends; pings get pongs, and
/// whatever `each` appends to its second argument is written back.
async fn receive_frames(
    ws: &mut Ws,
    mut each: impl FnMut(Frame<'_>, &mut Vec<u8>),
) -> io::Result<()> {
    while receive_frames_once(ws, &mut each).await? {}
    Ok(())
}

/// One socket read and the frames it completed. Returns false at end of stream.
async fn receive_frames_once(
    ws: &mut Ws,
    mut each: impl FnMut(Frame<'_>, &mut Vec<u8>),
) -> io::Result<bool> {
    if !ws.r.fill().await? {
        return Ok(false);
    }
    let mut replies = Vec::new();
    while let Some(frame) = ws.r.next_frame()? {
        match frame {
            Frame::Ping(p) => encode_pong(p, &mut replies),
            Frame::Close => return Ok(false),
            other => each(other, &mut replies),
        }
    }
    if !replies.is_empty() {
        ws.tx.write_all(&replies).await?;
    }
    Ok(true)
}

/// A publishing connection. Its incoming bytes (acks, pings) are drained by a task of
/// its own; a Socket.IO ping sets a flag that the next batch answers.
pub struct Pub {
    system: System,
    tx: OwnedWriteHalf,
    pong_due: std::rc::Rc<std::cell::Cell<bool>>,
    /// Bytes of the batch being built.
    pub out: Vec<u8>,
}

impl Pub {
    /// Connects a publisher: MQTT over TCP to switchboard and Mosquitto (a device), the
    /// JSON `pub` op to the Node `ws` peer, a `pub` event to Socket.IO. Must run
    /// inside a `LocalSet` (the drain task is local).
    pub async fn connect(target: &Target, client_id: &str) -> io::Result<Pub> {
        let pong_due = std::rc::Rc::new(std::cell::Cell::new(false));
        let tx = match (target.system, target.mqtt) {
            (System::Switchboard | System::Mosquitto, Some(addr)) => {
                let c = MqttTcp::connect(addr, client_id).await?;
                let mut rd = c.r.rd;
                tokio::task::spawn_local(async move {
                    let mut buf = vec![0u8; 4096];
                    while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
                });
                c.tx
            }
            (System::Switchboard | System::Mosquitto, None) => {
                return Err(invalid("no MQTT listener to publish to"))
            }
            (System::NodeWs | System::Socketio, _) => {
                let ws = if target.system == System::Socketio {
                    sio_connect(target.ws, None).await?
                } else {
                    Ws::connect_from(target.ws, None, SUB_BUFFER, "/ws", None).await?
                };
                let Ws { mut r, tx } = ws;
                let due = pong_due.clone();
                tokio::task::spawn_local(async move {
                    while matches!(r.fill().await, Ok(true)) {
                        while let Ok(Some(f)) = r.next_frame() {
                            if let Frame::Text(t) = f {
                                if engineio::parse(t) == Packet::Ping {
                                    due.set(true);
                                }
                            }
                        }
                    }
                });
                tx
            }
        };
        Ok(Pub {
            system: target.system,
            tx,
            pong_due,
            out: Vec::new(),
        })
    }

    /// Appends one publish of `payload` (JSON) to `topic` to the batch.
    pub fn add(&mut self, topic: &str, payload: &[u8]) {
        match self.system {
            System::Switchboard | System::Mosquitto => {
                proto::publish(topic.as_bytes(), payload, &mut self.out)
            }
            System::NodeWs => {
                let mut text = Vec::with_capacity(payload.len() + 48);
                text.extend_from_slice(br#"{"op":"pub","topic":""#);
                text.extend_from_slice(topic.as_bytes());
                text.extend_from_slice(br#"","data":"#);
                text.extend_from_slice(payload);
                text.push(b'}');
                encode(OP_TEXT, &text, &mut self.out);
            }
            System::Socketio => {
                if self.pong_due.replace(false) {
                    encode(OP_TEXT, engineio::PONG, &mut self.out);
                }
                let mut args = Vec::with_capacity(payload.len() + 32);
                args.extend_from_slice(br#"{"topic":""#);
                args.extend_from_slice(topic.as_bytes());
                args.extend_from_slice(br#"","data":"#);
                args.extend_from_slice(payload);
                args.push(b'}');
                let mut text = Vec::with_capacity(args.len() + 16);
                engineio::event("pub", &args, None, &mut text);
                encode(OP_TEXT, &text, &mut self.out);
            }
        }
    }

    /// Writes the batch.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.tx.write_all(&self.out).await;
        self.out.clear();
        r
    }
}
