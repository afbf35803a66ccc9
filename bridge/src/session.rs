//! One device connection, from CONNECT to the last byte.
//!
//! Between the socket and the router link this task does what rumqttd's own connection
//! task does (relay packets both ways, honour the router's pause/wake flow control) and what
//! it does not: authenticate, check every PUBLISH and SUBSCRIBE against the device's
//! permissions, hand accepted publishes to the [`Ingress`](crate::Ingress) exactly once,
//! keep the client id unique, and fire the Last Will itself so that it reaches WebSocket
//! subscribers as well as MQTT ones. The steps from CONNECT to CONNACK are in
//! [`admission`](crate::admission).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, PubRecReason, SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use switchboard_core::quiet::{clip, Throttle};
use tokio::time::{sleep_until, Instant};

use crate::admission::{self, Admission, Admitted, Will};
use crate::codec::{self, Codec, Sniff};
use crate::interest::{match_filter, InterestCache};
use crate::registry::Slot;
use crate::router::disconnect_packet;
use crate::transport::Stream;
use crate::{Denied, Device, Gone, Inbound, Permissions, Shared, Transport, Version};

/// Why the session loop ended.
enum End {
    Gone(Gone),
    /// The router dropped the link (it took over the client id or stopped): nothing to undo.
    RouterGone,
}

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

    // MQTT 5: the largest packet the device will take; larger ones are not sent to it.
    let device_max_packet = props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .map_or(usize::MAX, |n| n as usize);
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
    Running::new(admitted, read_buf, device_max_packet)
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

/// A SUBSCRIBE that went to the router with some filters removed; the router's SUBACK gets
/// the refusals put back in their places.
struct PendingSubAck {
    total: usize,
    refused: Vec<(usize, SubscribeReasonCode)>,
}

/// An admitted device.
struct Running {
    stream: Stream,
    codec: Codec,
    shared: Arc<Shared>,
    device: Device,
    permissions: Arc<dyn Permissions>,
    keep_alive: Duration,
    /// A clean session's subscriptions leave the router with it; a persistent one's stay.
    clean_session: bool,
    link_tx: LinkTx,
    link_rx: LinkRx,
    slot: Slot,
    /// One of `max_connections`, given back when the session ends.
    _capacity: tokio::sync::OwnedSemaphorePermit,
    will: Option<Will>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    to_router: Vec<Packet>,
    to_device: Vec<Packet>,
    /// QoS 2 packet ids received and not yet released: a retransmission of one of these is
    /// the same message and must not reach the ingress twice.
    awaiting_release: HashSet<u16>,
    topic_aliases: HashMap<u16, String>,
    pending_subacks: HashMap<u16, PendingSubAck>,
    /// Filters handed to the router and not unsubscribed, checked again on a recheck.
    subscribed: HashSet<String>,
    /// The device's Maximum Packet Size (MQTT 5), `usize::MAX` when it set none.
    device_max_packet: usize,
    /// QoS 2 publishes not sent for being too large, whose PUBREL from the router is
    /// answered here.
    skipped_qos2: HashSet<u16>,
    /// Whether MQTT subscribers want the topics this device publishes to.
    interest: InterestCache,
    /// Changes when the permissions behind every device may have changed.
    recheck: tokio::sync::watch::Receiver<u64>,
}

/// Packets decoded from the read buffer before they are handed on and written: a read
/// of tiny packets (a megabyte of PINGREQs is half a million) must not turn into as
/// many queued packets at once.
const BATCH: usize = 64;

/// Packets one session may have waiting in its link for the router before it stops
/// reading the device; with a [`BATCH`] on top, at most this many plus one batch.
const ROUTER_BACKLOG: usize = 64;

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
    fn new(admitted: Admitted, read_buf: BytesMut, device_max_packet: usize) -> Running {
        let recheck = admitted.shared.recheck.subscribe();
        // A persistent session's filters are still in the router and still count.
        let subscribed = if admitted.clean_session {
            HashSet::new()
        } else {
            admitted.shared.interest.held_by(&admitted.device.client_id)
        };
        Running {
            stream: admitted.stream,
            codec: admitted.codec,
            shared: admitted.shared,
            device: admitted.device,
            permissions: admitted.permissions,
            keep_alive: admitted.keep_alive,
            clean_session: admitted.clean_session,
            link_tx: admitted.link_tx,
            link_rx: admitted.link_rx,
            slot: admitted.slot,
            _capacity: admitted.capacity,
            will: admitted.will,
            read_buf,
            write_buf: BytesMut::with_capacity(4096),
            to_router: Vec::new(),
            to_device: Vec::new(),
            awaiting_release: HashSet::new(),
            topic_aliases: HashMap::new(),
            pending_subacks: HashMap::new(),
            subscribed,
            device_max_packet,
            skipped_qos2: HashSet::new(),
            interest: InterestCache::default(),
            recheck,
        }
    }

    async fn run(mut self) {
        let end = self.serve().await;
        let why = match end {
            End::Gone(why) => why,
            End::RouterGone => Gone::Lost,
        };
        if !matches!(end, End::RouterGone) {
            // Leaving the router through the link is the only way rumqttd offers a local
            // link; it also saves a persistent session's state.
            let _ = self.notify_router(vec![disconnect_packet()]).await;
        }
        if why == Gone::Shutdown {
            self.say_why(DisconnectReasonCode::ServerShuttingDown).await;
        }
        self.stream.shutdown().await;
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
        if why == Gone::Lost {
            if let Some(will) = self.will.take() {
                fire_will(self.shared.clone(), self.device.clone(), will);
            }
        }
        if self.clean_session {
            self.shared.interest.forget(&self.device.client_id);
        }
        self.shared.ingress.disconnected(&self.device, why);
        self.slot.gone.cancel();
    }

    async fn serve(&mut self) -> End {
        let idle_limit = self.keep_alive + self.keep_alive / 2;
        let mut idle_deadline = Instant::now() + idle_limit;
        if !self.read_buf.is_empty() {
            if let Some(end) = self.handle_input().await {
                return end;
            }
        }
        loop {
            let keep_alive_on = !self.keep_alive.is_zero();
            tokio::select! {
                read = self.stream.read(&mut self.read_buf) => {
                    match read {
                        Ok(0) | Err(_) => return End::Gone(Gone::Lost),
                        Ok(_) => idle_deadline = Instant::now() + idle_limit,
                    }
                    if let Some(end) = self.handle_input().await {
                        return end;
                    }
                }
                notified = self.link_rx.next() => {
                    let first = match notified {
                        Ok(first) => first,
                        Err(_) => return End::RouterGone,
                    };
                    match self.relay_notifications(first).await {
                        Ok(true) => {}
                        Ok(false) => return End::RouterGone,
                        Err(_) => return End::Gone(Gone::Lost),
                    }
                }
                _ = sleep_until(idle_deadline), if keep_alive_on => {
                    tracing::info!(client_id = self.device.client_id, "keep-alive timeout");
                    return End::Gone(Gone::Lost);
                }
                _ = self.slot.take_over.cancelled() => {
                    self.say_why(DisconnectReasonCode::SessionTakenOver).await;
                    return End::Gone(Gone::TakenOver);
                }
                _ = self.shared.shutdown.cancelled() => return End::Gone(Gone::Shutdown),
                changed = self.recheck.changed() => {
                    if changed.is_ok() {
                        if let Some(why) = self.no_longer_allowed() {
                            tracing::info!(client_id = self.device.client_id, why, "closing MQTT connection: no longer authorized");
                            self.say_why(DisconnectReasonCode::NotAuthorized).await;
                            return End::Gone(Gone::Revoked);
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
    async fn handle_input(&mut self) -> Option<End> {
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

    /// Hands on and writes what one batch of input produced; `Some` if the session ends.
    async fn act(&mut self, step: Step) -> Option<End> {
        match step {
            Step::Continue | Step::Batch => {}
            Step::End(why) => {
                let _ = self.forward().await;
                let _ = self.flush().await;
                return Some(End::Gone(why));
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
                let _ = self.forward().await;
                self.say_why(reason).await;
                return Some(End::Gone(Gone::Lost));
            }
        }
        if self.forward().await.is_err() {
            return Some(End::RouterGone);
        }
        if self.flush().await.is_err() {
            return Some(End::Gone(Gone::Lost));
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
                Packet::Subscribe(subscribe, props) => self.on_subscribe(subscribe, props),
                Packet::Unsubscribe(unsubscribe, props) => {
                    self.on_unsubscribe(unsubscribe, props);
                    Step::Continue
                }
                Packet::PingReq(_) => {
                    // Answered here: through the router each one is a wake-up of its
                    // thread and a queued ack, and a device pinging in a loop outran it
                    // by gigabytes.
                    self.to_device.push(Packet::PingResp(PingResp));
                    Step::Continue
                }
                packet @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..)) => {
                    self.to_router.push(packet);
                    Step::Continue
                }
                Packet::Disconnect(disconnect, _) => {
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
            if self.to_router.len() + self.to_device.len() >= BATCH {
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
        let mut publish = publish;
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
            // The router gets the topic itself, so it needs no alias table of its own.
            publish.topic = bytes::Bytes::copy_from_slice(topic.as_bytes());
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
        let inbound = Inbound {
            topic: &topic,
            payload: &publish.payload,
            retain: publish.retain,
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
            let inbound = Inbound {
                topic: &topic,
                payload: &publish.payload,
                retain: publish.retain,
            };
            self.shared.ingress.accept(&self.device, inbound);
        }
        // Acknowledged here, not by the router: the message is the broker's once it is in
        // the Hub, a publish no MQTT subscriber wants never costs the router a wake-up, and
        // QoS 2 is delivered onwards once, on its first PUBLISH (the spec's "method A"),
        // keeping only its packet id until PUBREL. rumqttd's router would hold the whole
        // message, deliver a DUP retransmission twice and release the oldest message on
        // any PUBREL, whatever its packet id.
        self.acknowledge(header);
        // See `interest`: only what the router must see, or an MQTT subscriber may want.
        let router_needed =
            !duplicate && (publish.retain || self.interest.wants(&self.shared.interest, &topic));
        if router_needed {
            // The router delivers at each subscription's QoS whatever the publish's.
            let copy =
                rumqttd::protocol::Publish::new(publish.topic, publish.payload, publish.retain);
            self.to_router.push(Packet::Publish(copy, props));
        }
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

    fn on_subscribe(
        &mut self,
        subscribe: Subscribe,
        props: Option<rumqttd::protocol::SubscribeProperties>,
    ) -> Step {
        let total = subscribe.filters.len();
        let mut allowed = Vec::with_capacity(total);
        let mut refused = Vec::new();
        for (index, filter) in subscribe.filters.into_iter().enumerate() {
            let checked = match_filter(&filter.path);
            if checked.starts_with('$') {
                // rumqttd's router refuses `$` filters by dropping the whole connection;
                // refusing just this filter keeps the device connected.
                tracing::info!(
                    client_id = self.device.client_id,
                    filter = clip(&filter.path, LOGGED_TOPIC),
                    "subscribe refused: `$` topics are not available over MQTT"
                );
                refused.push((index, SubscribeReasonCode::ImplementationSpecific));
                continue;
            }
            if !self.subscribed.contains(&filter.path)
                && self.subscribed.len() >= self.shared.config.max_subscriptions
            {
                // Each filter costs router memory that outlives the connection.
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
                refused.push((index, SubscribeReasonCode::QuotaExceeded));
                continue;
            }
            match self.permissions.check_subscribe(checked) {
                Ok(()) => {
                    self.subscribed.insert(filter.path.clone());
                    self.shared
                        .interest
                        .add(&self.device.client_id, &filter.path);
                    allowed.push(filter)
                }
                Err(denied) => {
                    self.shared
                        .stats
                        .subscribes_denied
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        client_id = self.device.client_id,
                        filter = clip(&filter.path, LOGGED_TOPIC),
                        "subscribe refused: {denied}"
                    );
                    let code = match denied {
                        Denied::NotAuthorized => SubscribeReasonCode::NotAuthorized,
                        Denied::Invalid => SubscribeReasonCode::TopicFilterInvalid,
                        Denied::PayloadFormatInvalid => SubscribeReasonCode::Unspecified,
                    };
                    refused.push((index, code));
                }
            }
        }
        if allowed.is_empty() {
            let return_codes = refused.into_iter().map(|(_, code)| code).collect();
            self.to_device.push(Packet::SubAck(
                SubAck {
                    pkid: subscribe.pkid,
                    return_codes,
                },
                None,
            ));
        } else {
            if !refused.is_empty() {
                self.pending_subacks
                    .insert(subscribe.pkid, PendingSubAck { total, refused });
            }
            self.to_router.push(Packet::Subscribe(
                Subscribe {
                    pkid: subscribe.pkid,
                    filters: allowed,
                },
                props,
            ));
        }
        Step::Continue
    }

    /// Answers UNSUBSCRIBE here: rumqttd's router sends no UNSUBACK for a filter it does
    /// not hold (the spec wants one for every UNSUBSCRIBE) and one per filter it does.
    /// Every filter still goes to the router, which ignores those it does not hold.
    fn on_unsubscribe(
        &mut self,
        unsubscribe: rumqttd::protocol::Unsubscribe,
        props: Option<rumqttd::protocol::UnsubscribeProperties>,
    ) {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                self.shared.interest.remove(&self.device.client_id, filter);
                if self.subscribed.remove(filter) {
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
        self.to_router.push(Packet::Unsubscribe(unsubscribe, props));
    }

    /// Hands what the device sent to the router, waking it once per batch.
    ///
    /// The link's queue into the router is unbounded and the router is one thread for
    /// every device, so a device that sends faster than it keeps up must wait here: the
    /// session stops reading its socket until the router has taken most of what this
    /// link holds, and TCP pushes back on the device.
    async fn forward(&mut self) -> Result<(), ()> {
        let packets = std::mem::take(&mut self.to_router);
        if packets.is_empty() {
            return Ok(());
        }
        while self.link_tx.buffer().len() >= ROUTER_BACKLOG {
            if self.shared.router.stopped() {
                return Err(());
            }
            // rumqttd says nothing when it has read a link's queue; look again shortly.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.notify_router(packets).await
    }

    async fn notify_router(&mut self, packets: Vec<Packet>) -> Result<(), ()> {
        self.shared
            .router
            .hand_over(&mut self.link_tx, packets)
            .await
    }

    /// Writes router notifications to the device; `Ok(false)` if the router let go of us.
    async fn relay_notifications(
        &mut self,
        first: Option<rumqttd::Notification>,
    ) -> Result<bool, std::io::Error> {
        let mut unscheduled = false;
        let mut next = first;
        loop {
            if let Some(notification) = next.take() {
                match Option::<Packet>::from(notification) {
                    None => unscheduled = true,
                    Some(packet) => self.queue_from_router(packet),
                }
            }
            // Take whatever else is already there without waiting.
            match self.link_rx.next().now_or_never() {
                Some(Ok(Some(n))) => next = Some(n),
                Some(Ok(None)) | None => break,
                Some(Err(_)) => return Ok(false),
            }
        }
        self.flush().await?;
        // Acknowledgements for publishes too large for the device.
        if self.forward().await.is_err() {
            return Ok(false);
        }
        if unscheduled && self.link_rx.wake().await.is_err() {
            return Ok(false);
        }
        Ok(true)
    }

    fn queue_from_router(&mut self, packet: Packet) {
        let packet = match packet {
            // Answered by the session already.
            Packet::UnsubAck(..) => return,
            Packet::PubRel(pubrel, _) if self.skipped_qos2.remove(&pubrel.pkid) => {
                self.to_router.push(Packet::PubComp(
                    PubComp {
                        pkid: pubrel.pkid,
                        reason: PubCompReason::Success,
                    },
                    None,
                ));
                return;
            }
            Packet::SubAck(mut suback, props) => {
                if let Some(pending) = self.pending_subacks.remove(&suback.pkid) {
                    let mut codes = std::mem::take(&mut suback.return_codes).into_iter();
                    let mut refused = pending.refused.into_iter().peekable();
                    suback.return_codes = (0..pending.total)
                        .filter_map(|i| match refused.peek() {
                            Some((at, _)) if *at == i => refused.next().map(|(_, code)| code),
                            _ => codes.next(),
                        })
                        .collect();
                }
                Packet::SubAck(suback, props)
            }
            Packet::Publish(publish, props) => {
                // Counted even when too large for the device: the router's flow for it
                // completes as if it was sent.
                self.shared
                    .stats
                    .messages_out
                    .fetch_add(1, Ordering::Relaxed);
                Packet::Publish(publish, props)
            }
            other => other,
        };
        self.to_device.push(packet);
    }

    async fn flush(&mut self) -> Result<(), std::io::Error> {
        if self.to_device.is_empty() {
            return Ok(());
        }
        for packet in self.to_device.drain(..) {
            let start = self.write_buf.len();
            if let Err(e) = self.codec.write(packet, &mut self.write_buf) {
                tracing::warn!(client_id = self.device.client_id, error = %e, "cannot encode a packet for the device");
            }
            if self.write_buf.len() - start > self.device_max_packet {
                // MQTT 5 §3.1.2.11.4: not sent, and handled as if it had been delivered,
                // so the router's flow for it completes.
                let header = codec::peek_publish(&self.write_buf[start..]);
                self.write_buf.truncate(start);
                self.shared
                    .stats
                    .too_large_for_device
                    .fetch_add(1, Ordering::Relaxed);
                match header {
                    Some(h) if h.qos == 1 => self.to_router.push(Packet::PubAck(
                        PubAck {
                            pkid: h.pkid,
                            reason: PubAckReason::Success,
                        },
                        None,
                    )),
                    Some(h) if h.qos == 2 => {
                        self.skipped_qos2.insert(h.pkid);
                        self.to_router.push(Packet::PubRec(
                            PubRec {
                                pkid: h.pkid,
                                reason: PubRecReason::Success,
                            },
                            None,
                        ));
                    }
                    _ => {}
                }
            }
        }
        let result = self.stream.write_all(&self.write_buf).await;
        self.write_buf.clear();
        result
    }
}

/// Publishes a device's Last Will to both MQTT subscribers and the ingress, after its
/// delay unless the device comes back first.
fn fire_will(shared: Arc<Shared>, device: Device, will: Will) {
    let publish = move |shared: &Shared, device: &Device, will: &Will| {
        let inbound = Inbound {
            topic: &will.topic,
            payload: &will.payload,
            retain: will.retain,
        };
        shared.ingress.accept(device, inbound);
        let props = will.properties.clone();
        let _ =
            shared
                .publisher
                .enqueue_with(&will.topic, will.payload.clone(), will.retain, props);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscriptions_are_checked_by_their_filter() {
        assert_eq!(match_filter("$share/g/sensors/#"), "sensors/#");
        assert_eq!(match_filter("sensors/#"), "sensors/#");
        assert_eq!(match_filter("$share/g"), "$share/g");
    }
}
