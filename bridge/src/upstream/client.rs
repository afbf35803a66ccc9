//! The wire side of one upstream session: one task owns the socket and runs MQTT 5 as a
//! client, with rumqttc's packet codec (`mqttbytes`) and nothing else of rumqttc.
//!
//! The loop turns each burst of the broker's packets into one burst of ours: it reads
//! whatever has arrived, handles every complete packet in it (a PUBACK frees a packet id
//! and tells the outbox), then takes as many entries as the window has room for in one
//! [`Outbox::after`] call, encodes them into one buffer and writes that with one write.
//! At most the broker's Receive Maximum (or our `window`, if smaller) are unacknowledged.
//! When the window, not the outbox, limited a burst, the loop pauses [`BURST_PAUSE`]
//! before reading again, so the broker's acknowledgements come back together.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Filter, Login, Packet, PingReq, PubAck, PubAckReason, Publish, Subscribe,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
use switchboard_core::quiet::{clip, Throttle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::{Inbox, LinkError, Outbox, UpstreamConfig};

/// The largest packet we accept, announced in CONNECT so the broker drops bigger
/// messages for us rather than sending them (the daemon's own MQTT default).
const MAX_INCOMING: u32 = 1024 * 1024;
/// The packet id of our SUBSCRIBE; publishes use 1..=window, so the window stays below it.
const SUBSCRIBE_ID: u16 = u16::MAX;
/// How long the link waits after a burst, when more is queued than the window let it
/// send, before it reads the broker's acknowledgements. A broker answers each publish
/// with its own PUBACK write; answering each of those at once makes it send (and wake
/// us for) about one TCP segment per message, which costs it more than the messages
/// themselves. Waiting lets its acknowledgements gather into few segments, and our next
/// burst grows to match. Of 20, 50, 100 and 200 µs tried against Mosquitto, 50 did
/// best (docs/benchmarks.md, "the broker's segments").
const BURST_PAUSE: Duration = Duration::from_micros(50);
/// A persistent session outlives a disconnect by this much (MQTT 5 ends it at once
/// without an expiry): a week.
const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;

/// A TCP or TLS byte stream to the broker.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects, runs the session until the connection ends or `stop`, and says why it ended.
pub(super) async fn run(
    config: &UpstreamConfig,
    outbox: &dyn Outbox,
    inbox: &dyn Inbox,
    wake: &Notify,
    stop: &CancellationToken,
) -> Result<(), LinkError> {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let opened = tokio::select! {
        opened = timeout(config.connect_timeout.max(Duration::from_secs(1)), open(config, &mut input)) => opened,
        _ = stop.cancelled() => return Ok(()),
    };
    let (io, ack) = opened.map_err(|_| {
        LinkError::Connection(format!(
            "no CONNACK from {}:{} within {:?}",
            config.host, config.port, config.connect_timeout
        ))
    })??;
    let mut session = Session::new(config, outbox, inbox, io, input, &ack);
    session.subscribe(config)?;
    inbox.connected();
    session.serve(wake, stop).await
}

/// Opens the socket (TCP, or TLS over it) and exchanges CONNECT and CONNACK.
async fn open(
    config: &UpstreamConfig,
    input: &mut BytesMut,
) -> Result<(Box<dyn Io>, ConnAck), LinkError> {
    let address = format!("{}:{}", config.host, config.port);
    let tcp = TcpStream::connect(&address)
        .await
        .map_err(|e| LinkError::Connection(format!("cannot connect to {address}: {e}")))?;
    // Every write is a whole burst already; Nagle would only hold the next one back.
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = match &config.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name =
                rustls::pki_types::ServerName::try_from(config.host.clone()).map_err(|e| {
                    LinkError::Connection(format!("TLS server name {:?}: {e}", config.host))
                })?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| LinkError::Connection(format!("TLS with {address}: {e}")))?;
            Box::new(stream)
        }
    };
    let mut out = BytesMut::new();
    encode(&connect(config), &mut out)?;
    write(&mut io, &out).await?;
    loop {
        match next_packet(input)? {
            Some(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    return Err(LinkError::Refused(format!("{:?}", ack.code)));
                }
                return Ok((io, ack));
            }
            Some(other) => {
                return Err(LinkError::Connection(format!(
                    "the broker answered CONNECT with {}",
                    kind(&other)
                )))
            }
            None => read(&mut io, input).await?,
        }
    }
}

/// CONNECT with the link's options.
fn connect(config: &UpstreamConfig) -> Packet {
    let mut properties = ConnectProperties::new();
    properties.max_packet_size = Some(MAX_INCOMING);
    if config.persistent {
        properties.session_expiry_interval = Some(SESSION_EXPIRY_SECS);
    }
    let connect = Connect {
        keep_alive: keep_alive_secs(config.keep_alive),
        client_id: config.client_id.clone(),
        clean_start: !config.persistent,
        properties: Some(properties),
    };
    let login = config
        .username
        .as_ref()
        .map(|user| Login::new(user.clone(), config.password.clone().unwrap_or_default()));
    Packet::Connect(connect, None, login)
}

fn keep_alive_secs(keep_alive: Duration) -> u16 {
    keep_alive.as_secs().clamp(1, u64::from(u16::MAX)) as u16
}

/// Packet ids of the QoS 1 publishes in flight: id `i + 1` is slot `i`, holding the
/// outbox entry sent under it. Its size is the window, so a free id is free room.
struct InFlight {
    slots: Vec<Option<u64>>,
    free: Vec<u16>,
}

impl InFlight {
    fn new(window: u16) -> InFlight {
        InFlight {
            slots: vec![None; usize::from(window)],
            free: (1..=window).rev().collect(),
        }
    }

    fn room(&self) -> usize {
        self.free.len()
    }

    fn take(&mut self, entry: u64) -> Option<u16> {
        let id = self.free.pop()?;
        self.slots[usize::from(id) - 1] = Some(entry);
        Some(id)
    }

    /// The entry sent under `id`, which is free again; None for an id not in flight.
    fn release(&mut self, id: u16) -> Option<u64> {
        let slot = self.slots.get_mut(usize::from(id).checked_sub(1)?)?;
        let entry = slot.take()?;
        self.free.push(id);
        Some(entry)
    }
}

struct Session<'a> {
    outbox: &'a dyn Outbox,
    inbox: &'a dyn Inbox,
    io: Box<dyn Io>,
    input: BytesMut,
    out: BytesMut,
    in_flight: InFlight,
    /// QoS 0 entries encoded into `out`: done once it is written.
    unconfirmed: Vec<u64>,
    /// The last entry sent in this session; the next `after` starts behind it.
    cursor: Option<u64>,
    /// The broker's Maximum Packet Size: a bigger publish is refused here, not sent.
    max_packet: usize,
    keep_alive: Duration,
    last_write: Instant,
    ping_sent: Option<Instant>,
}

impl<'a> Session<'a> {
    fn new(
        config: &UpstreamConfig,
        outbox: &'a dyn Outbox,
        inbox: &'a dyn Inbox,
        io: Box<dyn Io>,
        input: BytesMut,
        ack: &ConnAck,
    ) -> Session<'a> {
        let props = ack.properties.as_ref();
        let receive_max = props.and_then(|p| p.receive_max).unwrap_or(u16::MAX);
        let window = config
            .window
            .clamp(1, usize::from(SUBSCRIBE_ID - 1))
            .min(usize::from(receive_max.max(1))) as u16;
        let keep_alive = match props.and_then(|p| p.server_keep_alive) {
            Some(secs) if secs > 0 => Duration::from_secs(u64::from(secs)),
            _ => Duration::from_secs(u64::from(keep_alive_secs(config.keep_alive))),
        };
        let max_packet = props
            .and_then(|p| p.max_packet_size)
            .map_or(usize::MAX, |m| m as usize);
        Session {
            outbox,
            inbox,
            io,
            input,
            out: BytesMut::with_capacity(16 * 1024),
            in_flight: InFlight::new(window),
            unconfirmed: Vec::new(),
            cursor: None,
            max_packet,
            keep_alive,
            last_write: Instant::now(),
            ping_sent: None,
        }
    }

    /// Queues SUBSCRIBE for the inbound filters, with `no_local` (what we publish on a
    /// topic we also subscribe to is not sent back: no loop) and retain-as-published.
    fn subscribe(&mut self, config: &UpstreamConfig) -> Result<(), LinkError> {
        if config.subscriptions.is_empty() {
            return Ok(());
        }
        let filters = config.subscriptions.iter().map(|(f, q)| {
            let mut filter = Filter::new(f.clone(), qos(*q));
            filter.nolocal = true;
            filter.preserve_retain = true;
            filter
        });
        let mut subscribe = Subscribe::new_many(filters, None);
        subscribe.pkid = SUBSCRIBE_ID;
        encode(&Packet::Subscribe(subscribe), &mut self.out)
    }

    async fn serve(mut self, wake: &Notify, stop: &CancellationToken) -> Result<(), LinkError> {
        // What arrived right behind the CONNACK (retained messages, say).
        self.handle_input()?;
        let mut fill = true;
        let mut drained = false;
        loop {
            let mut window_bound = false;
            if fill && self.in_flight.room() > 0 {
                drained = self.fill()?;
                window_bound = !drained;
            }
            fill = false;
            if !self.out.is_empty() {
                self.flush().await?;
                if window_bound {
                    // Blocks this link's own runtime thread only (see `super::session`).
                    std::thread::sleep(BURST_PAUSE);
                }
            }
            let deadline = match self.ping_sent {
                Some(sent) => sent + self.keep_alive,
                None => self.last_write + self.keep_alive,
            };
            tokio::select! {
                read = self.io.read_buf(&mut self.input) => {
                    match read {
                        Ok(0) => return Err(LinkError::Connection("the broker closed the connection".into())),
                        Ok(_) => fill = self.handle_input()?,
                        Err(e) => return Err(LinkError::Connection(format!("reading from the broker: {e}"))),
                    }
                    if self.input.capacity() - self.input.len() < 4096 {
                        self.input.reserve(16 * 1024);
                    }
                }
                _ = wake.notified(), if drained => fill = true,
                _ = tokio::time::sleep_until(deadline) => {
                    if self.ping_sent.is_some() {
                        return Err(LinkError::Connection(format!(
                            "no PINGRESP from the broker within {:?}", self.keep_alive
                        )));
                    }
                    encode(&Packet::PingReq(PingReq), &mut self.out)?;
                    self.ping_sent = Some(Instant::now());
                }
                _ = stop.cancelled() => {
                    self.disconnect().await;
                    return Ok(());
                }
            }
        }
    }

    /// Encodes as many outbox entries as the window has room for; true when the outbox
    /// had fewer (nothing more to send until it grows).
    fn fill(&mut self) -> Result<bool, LinkError> {
        let room = self.in_flight.room();
        let batch = self
            .outbox
            .after(self.cursor, room)
            .map_err(LinkError::Outbox)?;
        let drained = batch.len() < room;
        for m in batch {
            let mut publish = Publish {
                dup: false,
                qos: qos(m.qos),
                retain: m.retain,
                topic: Bytes::from(m.topic),
                pkid: 0,
                payload: m.payload,
                properties: None,
            };
            if publish.size() > self.max_packet {
                static TOO_LARGE: Throttle = Throttle::per_secs(10);
                if let Some(held_back) = TOO_LARGE.admit() {
                    tracing::warn!(
                        topic = clip(&String::from_utf8_lossy(&publish.topic), 128),
                        size = publish.size(),
                        max = self.max_packet,
                        held_back,
                        "message larger than the broker's maximum packet size, not forwarded"
                    );
                }
                self.outbox.done(m.id, true);
                self.cursor = Some(m.id);
                continue;
            }
            if publish.qos == QoS::AtMostOnce {
                self.unconfirmed.push(m.id);
            } else {
                // `room` ids were free and only QoS 1 entries take one.
                let Some(id) = self.in_flight.take(m.id) else {
                    break;
                };
                publish.pkid = id;
            }
            self.cursor = Some(m.id);
            encode(&Packet::Publish(publish), &mut self.out)?;
        }
        Ok(drained)
    }

    /// Writes everything encoded, with one write.
    async fn flush(&mut self) -> Result<(), LinkError> {
        // A broker that stops reading would hold the write forever; keep alive bounds it.
        timeout(self.keep_alive, write(&mut self.io, &self.out))
            .await
            .map_err(|_| {
                LinkError::Connection(format!("the broker took no data for {:?}", self.keep_alive))
            })??;
        self.out.clear();
        self.last_write = Instant::now();
        for id in self.unconfirmed.drain(..) {
            self.outbox.done(id, false);
        }
        Ok(())
    }

    /// Handles every complete packet read; true when a PUBACK freed room in the window.
    fn handle_input(&mut self) -> Result<bool, LinkError> {
        let mut freed = false;
        while let Some(packet) = next_packet(&mut self.input)? {
            match packet {
                Packet::PubAck(ack) => {
                    if let Some(entry) = self.in_flight.release(ack.pkid) {
                        let refused = !matches!(
                            ack.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        );
                        self.outbox.done(entry, refused);
                        freed = true;
                    }
                }
                Packet::Publish(p) => self.received(p)?,
                Packet::PingResp(_) => self.ping_sent = None,
                Packet::SubAck(ack) => {
                    for (i, code) in ack.return_codes.iter().enumerate() {
                        if !matches!(
                            code,
                            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                        ) {
                            tracing::warn!(filter = i, code = ?code, "the broker refused a bridge subscription");
                        }
                    }
                }
                Packet::Disconnect(d) => {
                    let why = d
                        .properties
                        .and_then(|p| p.reason_string)
                        .map(|r| format!(" ({})", clip(&r, 200)))
                        .unwrap_or_default();
                    return Err(LinkError::Connection(format!(
                        "the broker disconnected: {:?}{why}",
                        d.reason_code
                    )));
                }
                other => {
                    return Err(LinkError::Connection(format!(
                        "unexpected {} from the broker",
                        kind(&other)
                    )))
                }
            }
        }
        Ok(freed)
    }

    /// A message on one of our subscriptions: to the inbox, then acknowledged (QoS 1).
    fn received(&mut self, p: Publish) -> Result<(), LinkError> {
        match std::str::from_utf8(&p.topic) {
            Ok(topic) => self.inbox.message(topic, &p.payload, p.retain),
            Err(_) => {
                tracing::warn!("message with a non-UTF-8 topic from the other broker ignored")
            }
        }
        match p.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => encode(&Packet::PubAck(PubAck::new(p.pkid, None)), &mut self.out),
            QoS::ExactlyOnce => Err(LinkError::Connection(
                "the broker sent a QoS 2 message; the bridge subscribes at QoS 0 or 1".into(),
            )),
        }
    }

    /// A clean DISCONNECT, so a persistent session is kept and no will is sent.
    async fn disconnect(&mut self) {
        self.out.clear();
        let bye = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection));
        if encode(&bye, &mut self.out).is_ok() {
            let _ = timeout(Duration::from_secs(1), async {
                let _ = write(&mut self.io, &self.out).await;
                let _ = self.io.shutdown().await;
            })
            .await;
        }
    }
}

/// The next complete packet at the front of `input`; None until more bytes arrive.
fn next_packet(input: &mut BytesMut) -> Result<Option<Packet>, LinkError> {
    // A DISCONNECT with no body is a normal one (MQTT 5, 3.14.2.1); the codec wants one.
    if input.starts_with(&[0xe0, 0x00]) {
        let _ = input.split_to(2);
        return Ok(Some(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        ))));
    }
    match Packet::read(input, Some(MAX_INCOMING)) {
        Ok(packet) => Ok(Some(packet)),
        Err(CodecError::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(LinkError::Connection(format!(
            "malformed packet from the broker: {e}"
        ))),
    }
}

fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), LinkError> {
    packet
        .write(out, None)
        .map(|_| ())
        .map_err(|e| LinkError::Connection(format!("cannot encode {}: {e}", kind(packet))))
}

async fn read(io: &mut Box<dyn Io>, input: &mut BytesMut) -> Result<(), LinkError> {
    match io.read_buf(input).await {
        Ok(0) => Err(LinkError::Connection(
            "the broker closed the connection".into(),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(LinkError::Connection(format!(
            "reading from the broker: {e}"
        ))),
    }
}

async fn write(io: &mut Box<dyn Io>, bytes: &[u8]) -> Result<(), LinkError> {
    let written: io::Result<()> = async {
        io.write_all(bytes).await?;
        // TLS holds its records until flushed; for TCP this is nothing.
        io.flush().await
    }
    .await;
    written.map_err(|e| LinkError::Connection(format!("writing to the broker: {e}")))
}

fn kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Auth(_) => "AUTH",
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PingReq(_) => "PINGREQ",
        Packet::PingResp(_) => "PINGRESP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::Disconnect(_) => "DISCONNECT",
    }
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    #[test]
    fn packet_ids_are_reused_only_once_released() {
        let mut w = InFlight::new(2);
        let a = w.take(10).unwrap();
        let b = w.take(11).unwrap();
        assert_ne!(a, b);
        assert_eq!(w.take(12), None);
        assert_eq!(w.release(b), Some(11));
        assert_eq!(w.release(b), None, "a repeated PUBACK frees nothing");
        assert_eq!(w.release(0), None);
        assert_eq!(w.release(9), None);
        assert_eq!(w.take(12), Some(b));
        assert_eq!(w.room(), 0);
    }
}
