//! One device connection, from CONNECT to the last byte.
//!
//! Inbound, it checks every PUBLISH and SUBSCRIBE against the device's permissions,
//! acknowledges, runs QoS 2, resolves topic aliases and hands each accepted publish to
//! the [`Ingress`](crate::Ingress) exactly once. Outbound, it takes what the device's
//! [`DeviceSession`](crate::DeviceSession) queued, encodes each PUBLISH with its own
//! packet ids, keeps at most the device's Receive Maximum unacknowledged, skips what is
//! larger than the device's Maximum Packet Size, and gives what was left unacknowledged
//! back to the session when the device goes. It keeps the client id unique and fires the
//! Last Will. The steps from CONNECT to CONNACK are in [`admission`](crate::admission).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use switchboard_core::quiet::{clip, Throttle};
use tokio::time::{sleep_until, Instant};

use crate::admission::{self, Admission, Admitted, Will};
use crate::codec::{self, Codec, OutPublish, Sniff};
use crate::registry::{PacketIds, Slot};
use crate::transport::Stream;
use crate::{
    CatchUp, Delivery, Denied, Device, DeviceSession, Gone, Inbound, Permissions, RetainHandling,
    Shared, SubscriptionOptions, Transport, Version,
};

pub(crate) async fn serve(
    mut stream: Stream,
    remote: SocketAddr,
    transport: Transport,
    shared: Arc<Shared>,
) {
    let mut read_buf = BytesMut::with_capacity(4096);
    let deadline = Instant::now() + shared.config.connect_timeout;
    let handshake =
        tokio::time::timeout_at(deadline, read_connect(&mut stream, &mut read_buf, &shared));
    let (codec, connect) = match handshake.await {
        Ok(Ok(found)) => found,
        Ok(Err(reason)) => {
            shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, reason, "MQTT connection closed before CONNECT");
            stream.shutdown().await;
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "no CONNECT within the connect timeout");
            stream.shutdown().await;
            return;
        }
    };
    let Packet::Connect(connect, props, will, will_props, login) = connect else {
        return;
    };

    // MQTT 5: the largest packet the device will take (larger ones are not sent to it),
    // and how many unacknowledged QoS 1 and 2 PUBLISHes it takes at once.
    let device_max_packet = props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .map_or(usize::MAX, |n| n as usize);
    let max_inflight = props
        .as_ref()
        .and_then(|p| p.receive_maximum)
        .map_or(MAX_INFLIGHT, |n| usize::from(n).min(MAX_INFLIGHT));
    let session = Admission {
        stream,
        codec,
        shared: shared.clone(),
        remote,
        transport,
    };
    let Ok(admitted) = session
        .admit(
            connect,
            props.and_then(|p| p.session_expiry_interval),
            will,
            will_props,
            login,
        )
        .await
    else {
        return;
    };
    // A client may send packets right behind CONNECT without waiting for the CONNACK;
    // whatever of them was read with it is processed first.
    Running::new(admitted, read_buf, device_max_packet, max_inflight)
        .run()
        .await;
}

/// Reads until a whole CONNECT packet is buffered, choosing the codec from its header.
async fn read_connect(
    stream: &mut Stream,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<(Codec, Packet), &'static str> {
    let mut codec = loop {
        match codec::sniff(buf) {
            Sniff::Version(version) => break Codec::new(version),
            Sniff::NotMqtt(reason) => return Err(reason),
            Sniff::Unsupported(_) => {
                // Say so in the 3.1.1 way every revision understands, then close.
                let mut out = BytesMut::new();
                let refusal =
                    Codec::new(Version::V311).refusal(ConnectReturnCode::RefusedProtocolVersion);
                if Codec::new(Version::V311).write(refusal, &mut out).is_ok() {
                    let _ = stream.write_all(&out).await;
                }
                return Err("unsupported MQTT protocol level");
            }
            Sniff::Need => {
                if buf.len() > 16 {
                    return Err("malformed CONNECT");
                }
                if stream.read(buf).await.map_err(|_| "read error")? == 0 {
                    return Err("closed");
                }
            }
        }
    };
    loop {
        match codec.read(buf, admission::connect_limit(shared.config.max_packet_size)) {
            Ok(Some(packet @ Packet::Connect(..))) => return Ok((codec, packet)),
            Ok(Some(_)) => return Err("the first packet must be CONNECT"),
            Ok(None) => {}
            Err(rumqttd::protocol::Error::PayloadSizeLimitExceeded(_)) => {
                admission::refuse_oversized_connect(stream, &codec, shared).await;
                return Err("CONNECT larger than the limit");
            }
            Err(_) => return Err("malformed CONNECT"),
        }
        if stream.read(buf).await.map_err(|_| "read error")? == 0 {
            return Err("closed");
        }
    }
}

/// Unacknowledged QoS 1 and 2 PUBLISHes a device is sent at once: fewer if its Receive
/// Maximum says so (MQTT 5; 3.1.1 has none). Each is looked up by packet id on its
/// acknowledgement, and a new packet id is checked against them, so the window stays
/// small enough to scan.
const MAX_INFLIGHT: usize = 128;

/// A QoS 1 or 2 PUBLISH sent to the device and not yet acknowledged.
struct Inflight {
    pkid: u16,
    /// `None` for a QoS 2 flow resumed from an earlier connection at its PUBREL.
    delivery: Option<Delivery>,
    /// QoS 2: PUBREC came and PUBREL went; waiting for PUBCOMP.
    released: bool,
}

impl Inflight {
    fn qos(&self) -> u8 {
        self.delivery.as_ref().map_or(2, |d| d.qos)
    }

    /// Bytes it counts for in the session's queue.
    fn size(&self) -> usize {
        self.delivery.as_ref().map_or(0, Delivery::size)
    }
}

/// An admitted device.
struct Running {
    stream: Stream,
    codec: Codec,
    shared: Arc<Shared>,
    device: Device,
    permissions: Arc<dyn Permissions>,
    keep_alive: Duration,
    /// How long the session outlives the connection.
    session_expiry: Duration,
    session: Arc<dyn DeviceSession>,
    slot: Slot,
    /// One of `max_connections`, given back when the session ends.
    _capacity: tokio::sync::OwnedSemaphorePermit,
    will: Option<Will>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    to_device: Vec<Packet>,
    /// QoS 2 packet ids received and not yet released: a retransmission of one of these is
    /// the same message and must not reach the ingress twice.
    awaiting_release: HashSet<u16>,
    topic_aliases: HashMap<u16, String>,
    /// Filters held, checked again on a recheck and counted against `max_subscriptions`.
    subscribed: HashSet<String>,
    /// The device's Maximum Packet Size (MQTT 5), `usize::MAX` when it set none.
    device_max_packet: usize,
    /// The device's Receive Maximum.
    max_inflight: usize,
    /// Sent and unacknowledged, oldest first (acknowledgements come mostly in order).
    inflight: VecDeque<Inflight>,
    next_pkid: u16,
    /// Deliveries taken from the session, written at once.
    taken: VecDeque<Delivery>,
    /// Subscriptions whose retained values are still being queued, a step at a time.
    catch_up: VecDeque<Box<dyn CatchUp>>,
    /// Changes when the permissions behind every device may have changed.
    recheck: tokio::sync::watch::Receiver<u64>,
}

/// Packets decoded from the read buffer before they are written: a read of tiny packets
/// (a megabyte of PINGREQs is half a million) must not turn into as many queued packets.
const BATCH: usize = 64;

static OVER_QUOTA: Throttle = Throttle::per_secs(10);
static PUBLISH_REFUSED: Throttle = Throttle::per_secs(10);

/// Bytes of a device's topic that go into a log line.
const LOGGED_TOPIC: usize = 256;

/// What reading one packet led to.
enum Step {
    Continue,
    /// A batch is full; more may be waiting in the read buffer.
    Batch,
    End(Gone),
    /// A protocol violation or refused publish that ends the connection, with a reason for
    /// MQTT 5 devices.
    Close(DisconnectReasonCode, &'static str),
}

impl Running {
    /// The session of an admitted device; `read_buf` holds what the device sent behind
    /// its CONNECT.
    fn new(
        admitted: Admitted,
        read_buf: BytesMut,
        device_max_packet: usize,
        max_inflight: usize,
    ) -> Running {
        let recheck = admitted.shared.recheck.subscribe();
        // A resumed session's filters are held still and still count.
        let subscribed = admitted.session.filters().into_iter().collect();
        // Our PUBRELs the device had not completed go again, first thing.
        let ids = admitted.packet_ids;
        let inflight = ids
            .releasing
            .iter()
            .map(|&pkid| Inflight {
                pkid,
                delivery: None,
                released: true,
            })
            .collect();
        let to_device = ids
            .releasing
            .iter()
            .map(|&pkid| {
                let rel = PubRel {
                    pkid,
                    reason: PubRelReason::Success,
                };
                Packet::PubRel(rel, None)
            })
            .collect();
        Running {
            stream: admitted.stream,
            codec: admitted.codec,
            shared: admitted.shared,
            device: admitted.device,
            permissions: admitted.permissions,
            keep_alive: admitted.keep_alive,
            session_expiry: admitted.session_expiry,
            session: admitted.session,
            slot: admitted.slot,
            _capacity: admitted.capacity,
            will: admitted.will,
            read_buf,
            write_buf: BytesMut::with_capacity(4096),
            to_device,
            awaiting_release: ids.unreleased,
            topic_aliases: HashMap::new(),
            subscribed,
            device_max_packet,
            max_inflight: max_inflight.max(1),
            inflight,
            next_pkid: 0,
            taken: VecDeque::new(),
            catch_up: VecDeque::new(),
            recheck,
        }
    }

    async fn run(mut self) {
        let why = self.serve().await;
        if why == Gone::Shutdown {
            self.say_why(DisconnectReasonCode::ServerShuttingDown).await;
        }
        self.stream.shutdown().await;
        // Before the client id is free again: a connection resuming the session must
        // find it left as this one leaves it (its queue, its open QoS 2 flows).
        self.leave_session(why);
        self.shared
            .registry
            .release(&self.device.client_id, self.slot.serial);
        self.shared
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.stats.connections_by_transport[self.device.transport as usize]
            .fetch_sub(1, Ordering::Relaxed);
        tracing::info!(
            client_id = self.device.client_id,
            why = why.as_str(),
            "device disconnected"
        );
        if matches!(why, Gone::Lost | Gone::Kicked) {
            if let Some(will) = self.will.take() {
                fire_will(self.shared.clone(), self.device.clone(), will);
            }
        }
        self.shared.ingress.disconnected(&self.device, why);
        self.slot.gone.cancel();
    }

    /// Ends the session with the connection, or keeps it for its expiry with what the
    /// device did not acknowledge, to be sent again (DUP) when it comes back. A QoS 2
    /// message whose PUBREC came is delivered as far as the device is concerned.
    fn leave_session(&mut self, why: Gone) {
        let mut unacknowledged = Vec::new();
        let mut releasing = Vec::new();
        let (mut done, mut done_bytes) = (0, 0);
        for sent in self.inflight.drain(..) {
            if sent.released {
                done += usize::from(sent.delivery.is_some());
                done_bytes += sent.size();
                releasing.push(sent.pkid);
            } else if let Some(delivery) = sent.delivery {
                unacknowledged.push(Delivery {
                    dup: true,
                    ..delivery
                });
            }
        }
        self.session.release(done, done_bytes);
        if self.session_expiry.is_zero() {
            self.session.end(false);
            return;
        }
        let ids = PacketIds {
            unreleased: std::mem::take(&mut self.awaiting_release),
            releasing,
        };
        self.shared
            .registry
            .stash_packet_ids(&self.device.client_id, ids);
        if why == Gone::TakenOver {
            // The connection taking over attaches to it (or ends it) right away.
            self.session.detach(unacknowledged);
        } else {
            self.shared.keep_session(
                &self.device.client_id,
                self.session.clone(),
                unacknowledged,
                self.session_expiry,
            );
        }
    }

    async fn serve(&mut self) -> Gone {
        let idle_limit = self.keep_alive + self.keep_alive / 2;
        let mut idle_deadline = Instant::now() + idle_limit;
        if self.flush().await.is_err() {
            return Gone::Lost;
        }
        if !self.read_buf.is_empty() {
            if let Some(end) = self.handle_input().await {
                return end;
            }
        }
        loop {
            let keep_alive_on = !self.keep_alive.is_zero();
            let room = self.max_inflight.saturating_sub(self.inflight.len());
            // Retained values are queued a step at a time, once the previous step went.
            let catch_up_due = !self.catch_up.is_empty() && self.session.depth() == 0;
            let session = &self.session;
            let taken = &mut self.taken;
            let deliveries = std::future::poll_fn(|cx| session.poll_deliveries(cx, room, taken));
            tokio::select! {
                read = self.stream.read(&mut self.read_buf) => {
                    match read {
                        Ok(0) | Err(_) => return Gone::Lost,
                        Ok(_) => idle_deadline = Instant::now() + idle_limit,
                    }
                    if let Some(end) = self.handle_input().await {
                        return end;
                    }
                }
                open = deliveries => {
                    self.write_deliveries();
                    if self.flush().await.is_err() {
                        return Gone::Lost;
                    }
                    if !open {
                        // Its queue overflowed under the slow-consumer "close" policy.
                        tracing::info!(client_id = self.device.client_id, "closing MQTT connection: slow consumer");
                        self.say_why(DisconnectReasonCode::QuotaExceeded).await;
                        return Gone::Lost;
                    }
                }
                _ = std::future::ready(()), if catch_up_due => {
                    if let Some(mut catch_up) = self.catch_up.pop_front() {
                        if !catch_up.step() {
                            self.catch_up.push_front(catch_up);
                        }
                    }
                }
                _ = sleep_until(idle_deadline), if keep_alive_on => {
                    tracing::info!(client_id = self.device.client_id, "keep-alive timeout");
                    return Gone::Lost;
                }
                _ = self.slot.take_over.cancelled() => {
                    self.say_why(DisconnectReasonCode::SessionTakenOver).await;
                    return Gone::TakenOver;
                }
                _ = self.slot.kick.cancelled() => {
                    tracing::info!(client_id = self.device.client_id, "closing MQTT connection: disconnected by an operator");
                    self.say_why(DisconnectReasonCode::AdministrativeAction).await;
                    return Gone::Kicked;
                }
                _ = self.shared.shutdown.cancelled() => return Gone::Shutdown,
                changed = self.recheck.changed() => {
                    if changed.is_ok() {
                        if let Some(why) = self.no_longer_allowed() {
                            tracing::info!(client_id = self.device.client_id, why, "closing MQTT connection: no longer authorized");
                            self.say_why(DisconnectReasonCode::NotAuthorized).await;
                            return Gone::Revoked;
                        }
                    }
                }
            }
        }
    }

    /// Why the device may not stay after its permissions changed, if it may not.
    fn no_longer_allowed(&self) -> Option<&'static str> {
        if !self.permissions.still_valid() {
            return Some("its credential is no longer accepted");
        }
        let lost = self
            .subscribed
            .iter()
            .any(|f| self.permissions.check_subscribe(match_filter(f)).is_err());
        lost.then_some("a subscription it holds is no longer permitted")
    }

    /// Writes what is queued for the device, preceded for MQTT 5 by a DISCONNECT saying
    /// why the server ends the connection (3.1.1 has no server DISCONNECT).
    async fn say_why(&mut self, reason: DisconnectReasonCode) {
        if self.device.version == Version::V5 {
            self.to_device.push(Packet::Disconnect(
                Disconnect {
                    reason_code: reason,
                },
                None,
            ));
        }
        let _ = self.flush().await;
    }

    /// Acts on what is in the read buffer, a batch at a time; `Some` if the session ends.
    async fn handle_input(&mut self) -> Option<Gone> {
        loop {
            let step = self.process_input();
            let more = matches!(step, Step::Batch);
            if let Some(end) = self.act(step).await {
                return Some(end);
            }
            if !more {
                return None;
            }
        }
    }

    /// Writes what one batch of input produced; `Some` if the session ends.
    async fn act(&mut self, step: Step) -> Option<Gone> {
        match step {
            Step::Continue | Step::Batch => {}
            Step::End(why) => {
                let _ = self.flush().await;
                return Some(why);
            }
            Step::Close(reason, why) => {
                let stats = &self.shared.stats;
                let counter = match reason {
                    DisconnectReasonCode::ReceiveMaximumExceeded => {
                        &stats.limit_disconnects.receive_maximum
                    }
                    DisconnectReasonCode::TopicAliasInvalid => &stats.limit_disconnects.topic_alias,
                    _ => &stats.protocol_errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    client_id = self.device.client_id,
                    why,
                    "closing MQTT connection"
                );
                self.say_why(reason).await;
                return Some(Gone::Lost);
            }
        }
        if self.flush().await.is_err() {
            return Some(Gone::Lost);
        }
        None
    }

    /// Decodes every whole packet in the read buffer and decides what each one does.
    fn process_input(&mut self) -> Step {
        loop {
            let header = codec::peek_publish(&self.read_buf);
            let packet = match self
                .codec
                .read(&mut self.read_buf, self.shared.config.max_packet_size)
            {
                Ok(Some(packet)) => packet,
                Ok(None) => return Step::Continue,
                Err(rumqttd::protocol::Error::PayloadSizeLimitExceeded(_)) => {
                    return Step::Close(
                        DisconnectReasonCode::PacketTooLarge,
                        "packet larger than max_packet_size",
                    )
                }
                Err(_) => {
                    return Step::Close(DisconnectReasonCode::MalformedPacket, "malformed packet")
                }
            };
            let step = match packet {
                Packet::Publish(publish, props) => self.on_publish(publish, props, header),
                Packet::PubRel(pubrel, _) => {
                    let reason = if self.awaiting_release.remove(&pubrel.pkid) {
                        PubCompReason::Success
                    } else {
                        PubCompReason::PacketIdentifierNotFound
                    };
                    self.to_device.push(Packet::PubComp(
                        PubComp {
                            pkid: pubrel.pkid,
                            reason,
                        },
                        None,
                    ));
                    Step::Continue
                }
                Packet::Subscribe(subscribe, _) => self.on_subscribe(subscribe),
                Packet::Unsubscribe(unsubscribe, _) => {
                    self.on_unsubscribe(unsubscribe);
                    Step::Continue
                }
                Packet::PingReq(_) => {
                    // A device pinging in a loop is paced by how fast it reads the
                    // replies: each batch is written before the next is read.
                    self.to_device.push(Packet::PingResp(PingResp));
                    Step::Continue
                }
                Packet::PubAck(ack, _) => {
                    self.acknowledged(ack.pkid, false);
                    Step::Continue
                }
                Packet::PubRec(rec, _) => {
                    self.on_pubrec(rec);
                    Step::Continue
                }
                Packet::PubComp(comp, _) => {
                    self.acknowledged(comp.pkid, true);
                    Step::Continue
                }
                Packet::Disconnect(disconnect, props) => {
                    // MQTT 5: a device may shorten or lengthen its session's expiry as it
                    // leaves, but not set one when it connected with 0 (§3.14.2.2.2).
                    let asked = props.and_then(|p| p.session_expiry_interval);
                    if let (Some(asked), false) = (asked, self.session_expiry.is_zero()) {
                        self.session_expiry = Duration::from_secs(asked.into())
                            .min(self.shared.config.max_session_expiry);
                    }
                    if disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                        Step::End(Gone::Lost)
                    } else {
                        self.will = None;
                        Step::End(Gone::Disconnected)
                    }
                }
                Packet::Connect(..) => {
                    Step::Close(DisconnectReasonCode::ProtocolError, "second CONNECT")
                }
                _ => Step::Close(
                    DisconnectReasonCode::ProtocolError,
                    "packet a client may not send",
                ),
            };
            if !matches!(step, Step::Continue) {
                return step;
            }
            if self.to_device.len() >= BATCH {
                return Step::Batch;
            }
        }
    }

    fn on_publish(
        &mut self,
        publish: rumqttd::protocol::Publish,
        props: Option<rumqttd::protocol::PublishProperties>,
        header: Option<codec::PublishHeader>,
    ) -> Step {
        let Some(header) = header else {
            return Step::Close(DisconnectReasonCode::MalformedPacket, "malformed PUBLISH");
        };
        let mut props = props;
        let Ok(mut topic) = std::str::from_utf8(&publish.topic).map(str::to_owned) else {
            return Step::Close(DisconnectReasonCode::TopicNameInvalid, "topic is not UTF-8");
        };
        // Recorded only for a topic that passes the checks (so at most 1 KiB each).
        let mut new_alias = None;
        if let Some(alias) = props.as_mut().and_then(|p| p.topic_alias.take()) {
            if alias == 0 || alias > self.shared.config.topic_alias_maximum {
                // Each alias holds a topic of up to a packet's size: the device was told
                // how many it may set.
                return Step::Close(
                    DisconnectReasonCode::TopicAliasInvalid,
                    "topic alias beyond the topic alias maximum",
                );
            }
            if topic.is_empty() {
                match self.topic_aliases.get(&alias) {
                    Some(known) => topic.clone_from(known),
                    None => {
                        return Step::Close(
                            DisconnectReasonCode::ProtocolError,
                            "unknown topic alias",
                        )
                    }
                }
            } else {
                new_alias = Some(alias);
            }
        }
        if let Err(denied) = self.permissions.check_publish(&topic) {
            self.shared
                .stats
                .publishes_denied
                .fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = PUBLISH_REFUSED.admit() {
                tracing::info!(
                    client_id = self.device.client_id,
                    topic = clip(&topic, LOGGED_TOPIC),
                    held_back,
                    "publish refused: {denied}"
                );
            }
            return self.refuse_publish(header, denied);
        }
        let no_properties = Bytes::new();
        let inbound = Inbound {
            topic: &topic,
            payload: &publish.payload,
            retain: publish.retain,
            qos: header.qos,
            properties: &no_properties,
        };
        if let Err(denied) = self.shared.ingress.check_payload(&self.device, inbound) {
            return self.refuse_publish(header, denied);
        }
        if let Some(alias) = new_alias {
            self.topic_aliases.insert(alias, topic.clone());
        }
        if header.qos == 2
            && !self.awaiting_release.contains(&header.pkid)
            && self.awaiting_release.len() >= usize::from(self.shared.config.receive_maximum)
        {
            // Each unreleased QoS 2 publish holds memory until its PUBREL; the device was
            // told how many it may leave open.
            return Step::Close(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                "more unreleased QoS 2 publishes than the receive maximum",
            );
        }
        let duplicate = header.qos == 2 && !self.awaiting_release.insert(header.pkid);
        if !duplicate {
            self.shared
                .stats
                .messages_in
                .fetch_add(1, Ordering::Relaxed);
            // Encoded once here, copied into every MQTT subscriber's PUBLISH.
            let properties = props
                .as_ref()
                .map_or_else(Bytes::new, codec::encode_properties);
            let inbound = Inbound {
                topic: &topic,
                payload: &publish.payload,
                retain: publish.retain,
                qos: header.qos,
                properties: &properties,
            };
            self.shared.ingress.accept(&self.device, inbound);
        }
        // The message is the broker's once it is in the Hub, which routes it to every
        // subscriber. QoS 2 is delivered onwards once, on its first PUBLISH (the spec's
        // "method A"), keeping only its packet id until PUBREL.
        self.acknowledge(header);
        Step::Continue
    }

    /// The success acknowledgement a publish of this QoS gets (none for QoS 0).
    fn acknowledge(&mut self, header: codec::PublishHeader) {
        match header.qos {
            1 => self.to_device.push(Packet::PubAck(
                PubAck {
                    pkid: header.pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            2 => self.to_device.push(Packet::PubRec(
                PubRec {
                    pkid: header.pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )),
            _ => {}
        }
    }

    /// MQTT 5 devices get a reason code on the acknowledgement; QoS 0 has none, and 3.1.1
    /// has no way to say "refused" at all, so those connections are closed (as AWS IoT does)
    /// rather than letting the device believe the message went out. A payload refused for
    /// its format is the exception: the device is allowed on the topic and its next
    /// message may be fine, so where no reason code can be sent the message is dropped
    /// (the daemon counts it) and acknowledged as usual.
    fn refuse_publish(&mut self, header: codec::PublishHeader, denied: Denied) -> Step {
        let v5 = self.device.version == Version::V5;
        if denied == Denied::PayloadFormatInvalid && !(v5 && header.qos > 0) {
            self.acknowledge(header);
            return Step::Continue;
        }
        match (v5, header.qos) {
            (true, 1) => {
                let reason = match denied {
                    Denied::NotAuthorized => PubAckReason::NotAuthorized,
                    Denied::Invalid => PubAckReason::TopicNameInvalid,
                    Denied::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
                };
                self.to_device.push(Packet::PubAck(
                    PubAck {
                        pkid: header.pkid,
                        reason,
                    },
                    None,
                ));
                Step::Continue
            }
            (true, 2) => {
                let reason = match denied {
                    Denied::NotAuthorized => PubRecReason::NotAuthorized,
                    Denied::Invalid => PubRecReason::TopicNameInvalid,
                    Denied::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
                };
                self.to_device.push(Packet::PubRec(
                    PubRec {
                        pkid: header.pkid,
                        reason,
                    },
                    None,
                ));
                Step::Continue
            }
            _ => {
                let reason = match denied {
                    Denied::NotAuthorized => DisconnectReasonCode::NotAuthorized,
                    Denied::Invalid => DisconnectReasonCode::TopicNameInvalid,
                    Denied::PayloadFormatInvalid => DisconnectReasonCode::PayloadFormatInvalid,
                };
                Step::Close(reason, "publish refused")
            }
        }
    }

    fn on_subscribe(&mut self, subscribe: Subscribe) -> Step {
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            let code = self.subscribe_one(filter);
            return_codes.push(code);
        }
        self.to_device.push(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes,
            },
            None,
        ));
        Step::Continue
    }

    /// One filter of a SUBSCRIBE: its SUBACK code.
    fn subscribe_one(&mut self, filter: rumqttd::protocol::Filter) -> SubscribeReasonCode {
        let path = filter.path;
        if match_filter(&path).starts_with('$') {
            tracing::info!(
                client_id = self.device.client_id,
                filter = clip(&path, LOGGED_TOPIC),
                "subscribe refused: `$` topics are not available over MQTT"
            );
            return SubscribeReasonCode::ImplementationSpecific;
        }
        if !self.subscribed.contains(&path)
            && self.subscribed.len() >= self.shared.config.max_subscriptions
        {
            // Each filter costs memory that outlives the connection in a persistent session.
            self.shared
                .stats
                .subscribes_over_quota
                .fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = OVER_QUOTA.admit() {
                tracing::info!(
                    client_id = self.device.client_id,
                    held_back,
                    max = self.shared.config.max_subscriptions,
                    "subscribe refused: the device holds max_subscriptions filters"
                );
            }
            return SubscribeReasonCode::QuotaExceeded;
        }
        let checked = self
            .permissions
            .check_subscribe(match_filter(&path))
            .and_then(|()| {
                let options = SubscriptionOptions {
                    qos: filter.qos as u8,
                    no_local: filter.nolocal,
                    retain_as_published: filter.preserve_retain,
                    retain_handling: match filter.retain_forward_rule {
                        rumqttd::protocol::RetainForwardRule::OnEverySubscribe => {
                            RetainHandling::OnSubscribe
                        }
                        rumqttd::protocol::RetainForwardRule::OnNewSubscribe => {
                            RetainHandling::OnNewSubscribe
                        }
                        rumqttd::protocol::RetainForwardRule::Never => RetainHandling::Never,
                    },
                };
                self.session.subscribe(&path, options)
            });
        match checked {
            Ok(catch_up) => {
                self.catch_up.extend(catch_up);
                self.subscribed.insert(path);
                SubscribeReasonCode::Success(filter.qos)
            }
            Err(denied) => {
                self.shared
                    .stats
                    .subscribes_denied
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    client_id = self.device.client_id,
                    filter = clip(&path, LOGGED_TOPIC),
                    "subscribe refused: {denied}"
                );
                match denied {
                    Denied::NotAuthorized => SubscribeReasonCode::NotAuthorized,
                    Denied::Invalid => SubscribeReasonCode::TopicFilterInvalid,
                    Denied::PayloadFormatInvalid => SubscribeReasonCode::Unspecified,
                }
            }
        }
    }

    /// Every UNSUBSCRIBE is answered, with a reason per filter (MQTT 5: 0x11 for one not
    /// held).
    fn on_unsubscribe(&mut self, unsubscribe: rumqttd::protocol::Unsubscribe) {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                let held = self.session.unsubscribe(filter);
                if self.subscribed.remove(filter) || held {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        self.to_device.push(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
    }

    /// A PUBACK (`pubcomp` false) or PUBCOMP for a PUBLISH we sent: that delivery is done.
    fn acknowledged(&mut self, pkid: u16, pubcomp: bool) {
        let found = self
            .inflight
            .iter()
            .position(|s| s.pkid == pkid && s.released == pubcomp && (s.qos() == 2) == pubcomp);
        if let Some(at) = found {
            if let Some(sent) = self.inflight.remove(at) {
                self.session
                    .release(usize::from(sent.delivery.is_some()), sent.size());
            }
        }
    }

    /// A PUBREC for a QoS 2 PUBLISH we sent: PUBREL goes back, unless the device refused
    /// the message (MQTT 5 reason 0x80 or above), which ends its flow.
    fn on_pubrec(&mut self, rec: PubRec) {
        let found = self
            .inflight
            .iter()
            .position(|s| s.pkid == rec.pkid && s.qos() == 2);
        let Some(at) = found else {
            self.to_device.push(Packet::PubRel(
                PubRel {
                    pkid: rec.pkid,
                    reason: PubRelReason::PacketIdentifierNotFound,
                },
                None,
            ));
            return;
        };
        if !matches!(
            rec.reason,
            PubRecReason::Success | PubRecReason::NoMatchingSubscribers
        ) {
            if let Some(sent) = self.inflight.remove(at) {
                self.session
                    .release(usize::from(sent.delivery.is_some()), sent.size());
            }
            return;
        }
        self.inflight[at].released = true;
        self.to_device.push(Packet::PubRel(
            PubRel {
                pkid: rec.pkid,
                reason: PubRelReason::Success,
            },
            None,
        ));
    }

    /// A packet id no unacknowledged PUBLISH of ours holds.
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let pkid = self.next_pkid;
            if !self.inflight.iter().any(|s| s.pkid == pkid) {
                return pkid;
            }
        }
    }

    /// Encodes the deliveries taken from the session into the write buffer: QoS 0 ones
    /// are done once written, QoS 1 and 2 ones wait for their acknowledgement.
    fn write_deliveries(&mut self) {
        let (mut done, mut done_bytes) = (0, 0);
        while let Some(delivery) = self.taken.pop_front() {
            let pkid = if delivery.qos > 0 {
                self.next_pkid()
            } else {
                0
            };
            let start = self.write_buf.len();
            let message = &delivery.message;
            self.codec.write_publish(
                &mut self.write_buf,
                &OutPublish {
                    topic: &message.topic,
                    payload: &message.payload,
                    qos: delivery.qos,
                    pkid,
                    retain: delivery.retain,
                    dup: delivery.dup,
                    properties: &message.properties,
                },
            );
            if self.write_buf.len() - start > self.device_max_packet {
                // MQTT 5 §3.1.2.11.4: not sent, and handled as if it had been delivered.
                self.write_buf.truncate(start);
                self.shared
                    .stats
                    .too_large_for_device
                    .fetch_add(1, Ordering::Relaxed);
                done += 1;
                done_bytes += delivery.size();
                continue;
            }
            self.shared
                .stats
                .messages_out
                .fetch_add(1, Ordering::Relaxed);
            if delivery.qos == 0 {
                done += 1;
                done_bytes += delivery.size();
            } else {
                self.inflight.push_back(Inflight {
                    pkid,
                    delivery: Some(delivery),
                    released: false,
                });
            }
        }
        if done > 0 {
            self.session.release(done, done_bytes);
        }
    }

    async fn flush(&mut self) -> Result<(), std::io::Error> {
        for packet in self.to_device.drain(..) {
            if let Err(e) = self.codec.write(packet, &mut self.write_buf) {
                tracing::warn!(client_id = self.device.client_id, error = %e, "cannot encode a packet for the device");
            }
        }
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.write_buf).await;
        self.write_buf.clear();
        result
    }
}

/// `$share/<group>/<filter>` receives what `<filter>` matches, and is allowed by it.
fn match_filter(path: &str) -> &str {
    path.strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(path, |(_, filter)| filter)
}

/// Publishes a device's Last Will, after its delay unless the device comes back first.
fn fire_will(shared: Arc<Shared>, device: Device, will: Will) {
    let publish = move |shared: &Shared, device: &Device, will: &Will| {
        let properties = will
            .properties
            .as_ref()
            .map_or_else(Bytes::new, codec::encode_properties);
        let inbound = Inbound {
            topic: &will.topic,
            payload: &will.payload,
            retain: will.retain,
            qos: will.qos,
            properties: &properties,
        };
        shared.ingress.accept(device, inbound);
    };
    if will.delay.is_zero() {
        publish(&shared, &device, &will);
        return;
    }
    let (id, cancelled) = shared.registry.delay_will(&device.client_id);
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(will.delay) => publish(&shared, &device, &will),
            _ = cancelled.cancelled() => {}
            _ = shared.shutdown.cancelled() => {}
        }
        shared.registry.will_done(&device.client_id, id);
    });
}
