//! Admitting a device: the steps between a parsed CONNECT and a running session.
//!
//! Each step establishes one thing the session needs, and most can refuse the device with
//! the CONNACK code that says why. In this order: a connection permit, the client id, the
//! credentials, the Last Will, the client id's previous holder, the session, the CONNACK.
//! The order matters: the cheap checks come before the slow password hash, and a session
//! holding the client id is only asked to leave once the newcomer's credentials and Last
//! Will have passed, so a device that is refused never disturbs one that is connected.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, LastWill, LastWillProperties, Login,
    Packet, PublishProperties,
};
use switchboard_core::quiet::Throttle;
use tokio::sync::OwnedSemaphorePermit;

use crate::codec::Codec;
use crate::registry::{PacketIds, Slot};
use crate::transport::Stream;
use crate::{
    Connected, Credentials, Denied, Device, DeviceSession, Permissions, Refusal, Shared, Transport,
    Version, WillShown,
};

/// Longest client id we accept. MQTT only promises 23 characters; 128 covers MAC- and
/// UUID-based ids with room to spare and keeps ids usable in topic patterns.
pub(crate) const MAX_CLIENT_ID_LEN: usize = 128;

/// Most a connection may buffer before its CONNECT is complete. A real CONNECT is a few
/// hundred bytes (a Last Will with a large payload being the exception); without this
/// bound an anonymous socket could hold `max_packet_size` (1 MiB by default) for the whole
/// connect timeout, and a thousand of them a gigabyte, before any credential is checked.
pub(crate) const MAX_CONNECT_SIZE: usize = 64 * 1024;

/// The largest CONNECT accepted: [`MAX_CONNECT_SIZE`], or less if packets are smaller.
pub(crate) fn connect_limit(max_packet_size: usize) -> usize {
    MAX_CONNECT_SIZE.min(max_packet_size)
}

/// Refuses a CONNECT over [`connect_limit`] before the rest of it is read: MQTT 5 devices
/// are told "packet too large" (3.1.1 has no code for it), and the socket is closed by
/// the caller.
pub(crate) async fn refuse_oversized_connect(stream: &mut Stream, codec: &Codec, shared: &Shared) {
    shared
        .stats
        .connects_too_large
        .fetch_add(1, Ordering::Relaxed);
    if codec.version() == Version::V5 {
        let mut out = BytesMut::new();
        if codec
            .write(codec.refusal(ConnectReturnCode::PacketTooLarge), &mut out)
            .is_ok()
        {
            let _ = stream.write_all(&out).await;
        }
    }
}

/// A connection that has sent CONNECT and is not yet a session.
pub(crate) struct Admission {
    pub stream: Stream,
    pub codec: Codec,
    pub shared: Arc<Shared>,
    pub remote: SocketAddr,
    pub transport: Transport,
}

/// What admission hands to the session: everything it established and holds.
pub(crate) struct Admitted {
    pub stream: Stream,
    pub codec: Codec,
    pub shared: Arc<Shared>,
    pub device: Device,
    pub permissions: Arc<dyn Permissions>,
    pub keep_alive: Duration,
    /// Kept this long after the device leaves (zero: ends with the connection).
    pub session_expiry: Duration,
    pub session: Arc<dyn DeviceSession>,
    /// The QoS 2 flows the resumed session holds open.
    pub packet_ids: PacketIds,
    pub slot: Slot,
    /// One of `max_connections`, given back when the session ends.
    pub capacity: OwnedSemaphorePermit,
    pub will: Option<Will>,
}

/// The device was refused (and told why) or left during the handshake. Whatever admission
/// had taken for it (permit, client id, session) is given back by then.
pub(crate) struct NotAdmitted;

/// A Last Will the device's permissions allow, fired by the session if the device is lost.
pub(crate) struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub qos: u8,
    pub delay: Duration,
    /// MQTT 5: what MQTT subscribers get with the will (user properties, content type,
    /// payload format, message expiry, response topic, correlation data).
    pub properties: Option<PublishProperties>,
}

/// The id the device goes by, and the same id again if we generated it (MQTT 5 devices
/// are told it in the CONNACK).
struct ClientId {
    id: String,
    assigned: Option<String>,
}

impl Admission {
    /// Runs the steps in order; the first that refuses ends admission.
    pub(crate) async fn admit(
        mut self,
        connect: Connect,
        expiry_asked: Option<u32>,
        will: Option<LastWill>,
        will_props: Option<LastWillProperties>,
        login: Option<Login>,
    ) -> Result<Admitted, NotAdmitted> {
        let capacity = self.take_permit().await?;
        let client_id = self.client_id(&connect).await?;
        let (username, permissions) = self.authenticate(&client_id.id, login).await?;
        let session_expiry = self.session_expiry(connect.clean_session, expiry_asked);
        let will = self
            .accept_will(will, will_props, session_expiry, permissions.as_ref())
            .await?;
        let slot = self.claim(&client_id.id).await;
        // 3.1.1's Clean Session is MQTT 5's Clean Start with an expiry of 0.
        let (session, present) = self
            .shared
            .sessions
            .attach(&client_id.id, connect.clean_session);
        let mut packet_ids = self.shared.registry.take_packet_ids(&client_id.id);
        if !present {
            packet_ids = PacketIds::default();
        }
        if self
            .send_connack(present, client_id.assigned)
            .await
            .is_err()
        {
            if session_expiry.is_zero() {
                session.end(false);
            } else {
                self.shared
                    .keep_session(&client_id.id, session, Vec::new(), session_expiry);
            }
            self.release(&client_id.id, &slot);
            return Err(NotAdmitted);
        }
        let device = self.announce(
            client_id.id,
            username,
            permissions.as_ref(),
            &slot,
            will.as_ref(),
        );
        Ok(Admitted {
            stream: self.stream,
            codec: self.codec,
            shared: self.shared,
            device,
            permissions,
            keep_alive: Duration::from_secs(connect.keep_alive.into()),
            session_expiry,
            session,
            packet_ids,
            slot,
            capacity,
            will,
        })
    }

    /// Counts and logs the refusal, tells the device with a CONNACK and closes.
    async fn refuse(&mut self, code: ConnectReturnCode, why: &str) -> NotAdmitted {
        self.shared
            .stats
            .connects_refused
            .fetch_add(1, Ordering::Relaxed);
        // A device retrying with a wrong password, or a connect storm past
        // max_connections, must not write a line per attempt.
        static REFUSED: Throttle = Throttle::per_secs(10);
        if let Some(held_back) = REFUSED.admit() {
            tracing::info!(remote = %self.remote, why, held_back, "MQTT connect refused");
        }
        let mut out = BytesMut::new();
        if self.codec.write(self.codec.refusal(code), &mut out).is_ok() {
            let _ = self.stream.write_all(&out).await;
        }
        self.stream.shutdown().await;
        NotAdmitted
    }

    /// One of `max_connections`. Taken now and held for the whole session, so connects
    /// racing each other cannot pass the limit together.
    async fn take_permit(&mut self) -> Result<OwnedSemaphorePermit, NotAdmitted> {
        match self.shared.capacity.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => Err(self
                .refuse(ConnectReturnCode::ServerUnavailable, "too many connections")
                .await),
        }
    }

    /// The CONNECT's client id, or a generated one for an empty id where MQTT allows it.
    async fn client_id(&mut self, connect: &Connect) -> Result<ClientId, NotAdmitted> {
        let mut id = connect.client_id.clone();
        let mut assigned = None;
        if id.is_empty() {
            // 3.1.1 only allows a generated id for a clean session; 5 always does.
            if self.codec.version() == Version::V311 && !connect.clean_session {
                return Err(self
                    .refuse(
                        ConnectReturnCode::ClientIdentifierNotValid,
                        "empty client id with a persistent session",
                    )
                    .await);
            }
            id = format!("auto-{}", uuid::Uuid::new_v4().simple());
            assigned = Some(id.clone());
        }
        if let Err(why) = validate_client_id(&id) {
            return Err(self
                .refuse(ConnectReturnCode::ClientIdentifierNotValid, why)
                .await);
        }
        Ok(ClientId { id, assigned })
    }

    /// Asks the gate on a blocking thread (password hashing is deliberately slow). Gives
    /// the CONNECT username back with the permissions.
    async fn authenticate(
        &mut self,
        client_id: &str,
        login: Option<Login>,
    ) -> Result<(Option<String>, Arc<dyn Permissions>), NotAdmitted> {
        let (username, password) = match login {
            Some(login) if !login.username.is_empty() || !login.password.is_empty() => {
                (Some(login.username), Some(login.password))
            }
            _ => (None, None),
        };
        let credentials = Credentials {
            client_id: client_id.to_owned(),
            username: username.clone(),
            password,
            remote: self.remote,
            peer_certificate: self.stream.peer_certificate(),
        };
        let gate = self.shared.gate.clone();
        let (code, why) = match tokio::task::spawn_blocking(move || gate.authenticate(&credentials))
            .await
        {
            Ok(Ok(permissions)) => return Ok((username, permissions)),
            Ok(Err(Refusal::BadCredentials)) => (
                ConnectReturnCode::BadUserNamePassword,
                "bad username or password",
            ),
            Ok(Err(Refusal::NotAuthorized)) => (ConnectReturnCode::NotAuthorized, "not authorized"),
            Err(_) => (
                ConnectReturnCode::ServerUnavailable,
                "authentication failed internally",
            ),
        };
        Err(self.refuse(code, why).await)
    }

    /// The Last Will, if the device left one, checked like any publish of the device. Its
    /// delay cannot outlast the session: MQTT 5 fires it when the session expires.
    async fn accept_will(
        &mut self,
        will: Option<LastWill>,
        will_props: Option<LastWillProperties>,
        session_expiry: Duration,
        permissions: &dyn Permissions,
    ) -> Result<Option<Will>, NotAdmitted> {
        let Some(will) = will else {
            return Ok(None);
        };
        let Ok(topic) = String::from_utf8(will.topic.to_vec()) else {
            return Err(self
                .refuse(
                    ConnectReturnCode::TopicNameInvalid,
                    "will topic is not UTF-8",
                )
                .await);
        };
        if let Err(denied) = permissions.check_publish(&topic) {
            let code = match denied {
                Denied::NotAuthorized => ConnectReturnCode::NotAuthorized,
                Denied::Invalid => ConnectReturnCode::TopicNameInvalid,
                Denied::PayloadFormatInvalid => ConnectReturnCode::PayloadFormatInvalid,
            };
            return Err(self.refuse(code, "will topic not allowed").await);
        }
        let delay = will_props.as_ref().and_then(|p| p.delay_interval);
        let delay = Duration::from_secs(delay.unwrap_or(0).into()).min(session_expiry);
        Ok(Some(Will {
            topic,
            payload: will.message,
            retain: will.retain,
            qos: will.qos as u8,
            delay,
            properties: will_props.map(publish_properties),
        }))
    }

    /// Claims the client id, asking a connection that holds it to leave first.
    async fn claim(&self, client_id: &str) -> Slot {
        let (slot, previous) = self.shared.registry.claim(client_id);
        if let Some(previous) = previous {
            previous.take_over.cancel();
            // The old connection leaves its session before this one takes it, so its
            // offline notice precedes our online one and a session has one owner at a time.
            let _ = tokio::time::timeout(Duration::from_secs(5), previous.gone.cancelled()).await;
        }
        slot
    }

    /// How long the session outlives the connection: MQTT 5's Session Expiry Interval
    /// (absent is 0), a 3.1.1 persistent session as long as we keep any; at most
    /// `max_session_expiry`.
    fn session_expiry(&self, clean_session: bool, asked: Option<u32>) -> Duration {
        let asked = match self.codec.version() {
            Version::V5 => Duration::from_secs(asked.unwrap_or(0).into()),
            Version::V311 if clean_session => Duration::ZERO,
            Version::V311 => Duration::MAX,
        };
        asked.min(self.shared.config.max_session_expiry)
    }

    /// Writes the CONNACK, with what MQTT 5 devices are told besides: the id we
    /// assigned, the largest packet we accept, the limits the session enforces and the
    /// feature it lacks. `Err` if the device is gone.
    async fn send_connack(&mut self, present: bool, assigned: Option<String>) -> Result<(), ()> {
        let props = (self.codec.version() == Version::V5).then(|| ConnAckProperties {
            assigned_client_identifier: assigned,
            max_packet_size: u32::try_from(self.shared.config.max_packet_size).ok(),
            receive_max: Some(self.shared.config.receive_maximum),
            topic_alias_max: Some(self.shared.config.topic_alias_maximum),
            subscription_identifiers_available: Some(0),
            ..ConnAckProperties::default()
        });
        let connack = Packet::ConnAck(
            ConnAck {
                session_present: present,
                code: ConnectReturnCode::Success,
            },
            props,
        );
        let mut out = BytesMut::new();
        if self.codec.write(connack, &mut out).is_err()
            || self.stream.write_all(&out).await.is_err()
        {
            return Err(());
        }
        Ok(())
    }

    /// Gives the client id back and lets a connection waiting to take it over go ahead.
    fn release(&self, client_id: &str, slot: &Slot) {
        self.shared.registry.release(client_id, slot.serial);
        slot.gone.cancel();
    }

    /// The device as the rest of the daemon knows it, counted, shown to operators and
    /// announced (in that order, so whoever hears the announcement finds it listed).
    fn announce(
        &self,
        client_id: String,
        username: Option<String>,
        permissions: &dyn Permissions,
        slot: &Slot,
        will: Option<&Will>,
    ) -> Device {
        let version = self.codec.version();
        // A name the gate chose (a certificate's common name) replaces the CONNECT one.
        let username = permissions.username().map(str::to_owned).or(username);
        let device = Device {
            client_id,
            username,
            version,
            transport: self.transport,
            remote: self.remote,
        };
        self.shared
            .stats
            .connections
            .fetch_add(1, Ordering::Relaxed);
        self.shared.stats.connections_by_transport[self.transport as usize]
            .fetch_add(1, Ordering::Relaxed);
        let _ = slot.shown.set(Connected {
            device: device.clone(),
            since_ms: switchboard_core::clock::now_ms(),
            will: will.map(|w| WillShown {
                topic: w.topic.clone(),
                payload: w.payload.clone(),
                retain: w.retain,
                qos: w.qos,
                delay: w.delay,
            }),
        });
        self.shared.ingress.connected(&device);
        // At debug: the disconnect line says the rest, so a connect storm costs one
        // line per device, not two.
        tracing::debug!(client_id = device.client_id, remote = %device.remote, version = version.as_str(), transport = self.transport.as_str(), "device connected");
        device
    }
}

/// A will's properties as the PUBLISH that delivers it carries them (MQTT 5 §3.1.3.2:
/// all but the delay, which is ours to honour).
fn publish_properties(will: LastWillProperties) -> PublishProperties {
    PublishProperties {
        payload_format_indicator: will.payload_format_indicator,
        message_expiry_interval: will.message_expiry_interval,
        topic_alias: None,
        response_topic: will.response_topic,
        correlation_data: will.correlation_data,
        user_properties: will.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: will.content_type,
    }
}

/// Client ids end up in topic patterns (`sensors/%c/#`) and in `$devices/<client id>`,
/// where wildcard and separator characters would break them; refusing them here gives
/// the device a clear CONNACK.
pub(crate) fn validate_client_id(id: &str) -> Result<(), &'static str> {
    if id.len() > MAX_CLIENT_ID_LEN {
        return Err("client id longer than 128 bytes");
    }
    if id
        .chars()
        .any(|c| c.is_control() || matches!(c, '+' | '#' | '/' | '$'))
    {
        return Err("client id contains a control character or one of + # / $");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_that_would_break_patterns_are_refused() {
        assert!(validate_client_id("node-7").is_ok());
        assert!(validate_client_id("a".repeat(128).as_str()).is_ok());
        assert!(validate_client_id("a".repeat(129).as_str()).is_err());
        for bad in ["a/b", "a+", "#", "$SYS", "a\nb", "a\0"] {
            assert!(validate_client_id(bad).is_err(), "{bad:?}");
        }
    }
}
