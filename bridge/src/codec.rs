//! Bytes ⇄ MQTT packets, for either protocol revision, on one port.
//!
//! rumqttd's codecs do the parsing; this module picks the codec from the CONNECT packet's
//! protocol level (so 3.1.1 and 5 share a listener, as with Mosquitto), reads the QoS and
//! packet id of a PUBLISH before decoding (rumqttd keeps those fields private), and strips
//! MQTT 5 properties before the 3.1.1 encoder sees them (it panics on them).

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Error as ProtocolError, Packet, Protocol, SubAck,
    SubscribeReasonCode,
};

use crate::Version;

pub(crate) enum Codec {
    V4(V4),
    V5(V5),
}

/// What the first bytes of a connection say about the protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sniff {
    Need,
    Version(Version),
    NotMqtt(&'static str),
    Unsupported(u8),
}

/// Looks at the CONNECT packet's fixed header and protocol name/level without consuming.
pub(crate) fn sniff(buf: &[u8]) -> Sniff {
    let Some(&first) = buf.first() else {
        return Sniff::Need;
    };
    if first != 0x10 {
        return Sniff::NotMqtt("the first packet must be CONNECT");
    }
    let Some((_, header_len)) = remaining_length(&buf[1..]) else {
        return if buf.len() > 5 {
            Sniff::NotMqtt("malformed remaining length")
        } else {
            Sniff::Need
        };
    };
    let body = &buf[1 + header_len..];
    if body.len() < 2 {
        return Sniff::Need;
    }
    let name_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    if name_len != 4 && name_len != 6 {
        return Sniff::NotMqtt("unknown protocol name");
    }
    if body.len() < 2 + name_len + 1 {
        return Sniff::Need;
    }
    let name = &body[2..2 + name_len];
    let level = body[2 + name_len];
    match (name, level) {
        (b"MQTT", 4) => Sniff::Version(Version::V311),
        (b"MQTT", 5) => Sniff::Version(Version::V5),
        (b"MQTT", other) | (b"MQIsdp", other) => Sniff::Unsupported(other),
        _ => Sniff::NotMqtt("unknown protocol name"),
    }
}

/// Decodes MQTT's variable-length "remaining length"; `None` if incomplete or over 4 bytes.
fn remaining_length(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in buf.iter().take(4).enumerate() {
        value |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// QoS, packet id and dup flag of the PUBLISH at the front of `buf`, if that is what it is.
pub(crate) fn peek_publish(buf: &[u8]) -> Option<PublishHeader> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let qos = (first >> 1) & 0b11;
    let (_, len_len) = remaining_length(&buf[1..])?;
    let body = buf.get(1 + len_len..)?;
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let pkid = if qos > 0 {
        let at = 2 + topic_len;
        u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?])
    } else {
        0
    };
    Some(PublishHeader { qos, pkid })
}

/// A PUBLISH towards a subscriber, see [`Codec::write_publish`].
pub(crate) struct OutPublish<'a> {
    pub topic: &'a [u8],
    pub payload: &'a [u8],
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
    pub dup: bool,
    /// MQTT 5 properties as [`encode_properties`] made them; empty for none.
    pub properties: &'a [u8],
}

/// A PUBLISH's MQTT 5 properties as written on the wire (their length first), encoded
/// once when the message comes in and copied into every subscriber's PUBLISH.
pub(crate) fn encode_properties(properties: &rumqttd::protocol::PublishProperties) -> Bytes {
    let publish = rumqttd::protocol::Publish::new(Bytes::new(), Bytes::new(), false);
    let mut out = BytesMut::new();
    let packet = Packet::Publish(publish, Some(properties.clone()));
    if V5.write(packet, &mut out).is_err() {
        return Bytes::new();
    }
    // Fixed header, remaining length, an empty topic (two bytes), then the properties.
    let Some((_, len_len)) = remaining_length(&out[1..]) else {
        return Bytes::new();
    };
    out.freeze().slice(1 + len_len + 2..)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublishHeader {
    pub qos: u8,
    pub pkid: u16,
}

impl Codec {
    pub fn new(version: Version) -> Codec {
        match version {
            Version::V311 => Codec::V4(V4),
            Version::V5 => Codec::V5(V5),
        }
    }

    pub fn version(&self) -> Version {
        match self {
            Codec::V4(_) => Version::V311,
            Codec::V5(_) => Version::V5,
        }
    }

    /// One packet off the front of `buf`, `Ok(None)` if more bytes are needed. A packet
    /// whose reserved header flags are wrong, or that needs a packet id and has 0, is an
    /// error (rumqttd's decoders let both through): MQTT says close the connection.
    pub fn read(
        &mut self,
        buf: &mut BytesMut,
        max_size: usize,
    ) -> Result<Option<Packet>, ProtocolError> {
        if let Some(&first) = buf.first() {
            check_flags(first)?;
        }
        let result = match self {
            Codec::V4(c) => c.read_mut(buf, max_size),
            Codec::V5(c) => c.read_mut(buf, max_size),
        };
        match result {
            Ok(packet) => check_packet_id(packet).map(Some),
            Err(ProtocolError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<(), ProtocolError> {
        match self {
            Codec::V4(c) => c.write(for_v4(packet), out).map(drop),
            Codec::V5(c) => c.write(for_v5(packet), out).map(drop),
        }
    }

    /// Writes a PUBLISH to a subscriber from its parts, so that the topic and payload
    /// shared by every subscriber are copied straight into the write buffer (rumqttd's
    /// `Publish` keeps QoS and packet id private, so it cannot be built with them).
    pub fn write_publish(&self, out: &mut BytesMut, publish: &OutPublish<'_>) {
        let v5 = matches!(self, Codec::V5(_));
        let properties: &[u8] = match (v5, publish.properties.is_empty()) {
            (false, _) => &[],
            (true, true) => &[0],
            (true, false) => publish.properties,
        };
        let packet_id = if publish.qos > 0 { 2 } else { 0 };
        let len = 2 + publish.topic.len() + packet_id + properties.len() + publish.payload.len();
        out.reserve(len + 5);
        out.put_u8(0x30 | u8::from(publish.dup) << 3 | publish.qos << 1 | u8::from(publish.retain));
        let mut rest = len;
        loop {
            let byte = (rest % 128) as u8;
            rest /= 128;
            if rest == 0 {
                out.put_u8(byte);
                break;
            }
            out.put_u8(byte | 0x80);
        }
        out.put_u16(publish.topic.len() as u16);
        out.extend_from_slice(publish.topic);
        if publish.qos > 0 {
            out.put_u16(publish.pkid);
        }
        out.extend_from_slice(properties);
        out.extend_from_slice(publish.payload);
    }

    /// The CONNACK refusing a connection, in the codes this revision knows.
    pub fn refusal(&self, code: ConnectReturnCode) -> Packet {
        let code = match (self, code) {
            (Codec::V4(_), ConnectReturnCode::ClientIdentifierNotValid)
            | (Codec::V4(_), ConnectReturnCode::BadUserNamePassword)
            | (Codec::V4(_), ConnectReturnCode::NotAuthorized) => code,
            (Codec::V4(_), _) => ConnectReturnCode::ServiceUnavailable,
            (Codec::V5(_), code) => code,
        };
        Packet::ConnAck(
            ConnAck {
                session_present: false,
                code,
            },
            None,
        )
    }
}

/// The fixed header's low four bits are reserved for every packet but PUBLISH: 0b0010 for
/// PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the rest (3.1.1 §2.2.2, 5 §2.1.3). Any other
/// value is a malformed packet, and so is a PUBLISH with both QoS bits set.
fn check_flags(first: u8) -> Result<(), ProtocolError> {
    let flags = first & 0x0f;
    let ok = match first >> 4 {
        3 => flags & 0b0110 != 0b0110,
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::MalformedPacket)
    }
}

/// SUBSCRIBE and UNSUBSCRIBE need a non-zero packet id (3.1.1 §2.3.1, 5 §2.2.1); rumqttd
/// checks it only for PUBLISH.
fn check_packet_id(packet: Packet) -> Result<Packet, ProtocolError> {
    match &packet {
        Packet::Subscribe(s, _) if s.pkid == 0 => Err(ProtocolError::PacketIdZero),
        Packet::Unsubscribe(u, _) if u.pkid == 0 => Err(ProtocolError::PacketIdZero),
        _ => Ok(packet),
    }
}

/// rumqttd's 5 encoder cannot write a DISCONNECT that has a reason code and no
/// properties: it sends `E0 01 <code> 00` (the property length not counted), and with
/// empty properties `E0 00` (the reason dropped). A reason string, which MQTT 5 allows
/// and which people reading logs appreciate, makes it write the packet correctly; it
/// also makes paho (which ignores a reason without properties) report the reason.
fn for_v5(packet: Packet) -> Packet {
    use rumqttd::protocol::{DisconnectProperties, DisconnectReasonCode as Code};
    match packet {
        Packet::Disconnect(d, None) if d.reason_code != Code::NormalDisconnection => {
            let why = match d.reason_code {
                Code::SessionTakenOver => "session taken over",
                Code::PacketTooLarge => "packet too large",
                Code::NotAuthorized => "not authorized",
                Code::ServerShuttingDown => "server shutting down",
                Code::MalformedPacket => "malformed packet",
                Code::ProtocolError => "protocol error",
                Code::TopicNameInvalid => "topic name invalid",
                Code::TopicAliasInvalid => "topic alias invalid",
                Code::KeepAliveTimeout => "keep alive timeout",
                Code::ReceiveMaximumExceeded => "receive maximum exceeded",
                _ => "disconnected",
            };
            let props = DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(why.to_owned()),
                user_properties: Vec::new(),
                server_reference: None,
            };
            Packet::Disconnect(d, Some(props))
        }
        other => other,
    }
}

/// 3.1.1 has no properties, and rumqttd's 3.1.1 encoder panics if it meets any.
fn for_v4(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::SubAck(SubAck { pkid, return_codes }, _) => Packet::SubAck(
            SubAck {
                pkid,
                return_codes: return_codes.into_iter().map(v4_suback_code).collect(),
            },
            None,
        ),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::Subscribe(p, _) => Packet::Subscribe(p, None),
        Packet::Unsubscribe(p, _) => Packet::Unsubscribe(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        Packet::Connect(c, _, will, _, login) => Packet::Connect(c, None, will, None, login),
        other => other,
    }
}

/// 3.1.1 SUBACK knows granted QoS or 0x80 failure, nothing finer.
fn v4_suback_code(code: SubscribeReasonCode) -> SubscribeReasonCode {
    match code {
        SubscribeReasonCode::QoS0
        | SubscribeReasonCode::QoS1
        | SubscribeReasonCode::QoS2
        | SubscribeReasonCode::Success(_)
        | SubscribeReasonCode::Failure => code,
        _ => SubscribeReasonCode::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(name: &[u8], level: u8) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'a']);
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend(body);
        packet
    }

    #[test]
    fn sniffs_the_protocol_level() {
        assert_eq!(sniff(&connect(b"MQTT", 4)), Sniff::Version(Version::V311));
        assert_eq!(sniff(&connect(b"MQTT", 5)), Sniff::Version(Version::V5));
        assert_eq!(sniff(&connect(b"MQIsdp", 3)), Sniff::Unsupported(3));
        assert_eq!(sniff(&connect(b"MQTT", 4)[..5]), Sniff::Need);
        assert_eq!(sniff(&[]), Sniff::Need);
        assert!(matches!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::NotMqtt(_)));
        assert!(matches!(
            sniff(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Sniff::NotMqtt(_)
        ));
    }

    #[test]
    fn peeks_qos_and_packet_id() {
        // QoS 1, topic "a/b", pkid 0x1234, payload "x"
        let packet = [0x32, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'];
        assert_eq!(
            peek_publish(&packet),
            Some(PublishHeader {
                qos: 1,
                pkid: 0x1234
            })
        );
        let qos0 = [0x30, 6, 0, 3, b'a', b'/', b'b', b'x'];
        assert_eq!(peek_publish(&qos0), Some(PublishHeader { qos: 0, pkid: 0 }));
        assert_eq!(peek_publish(&[0x82, 1]), None);
        assert_eq!(peek_publish(&[0x34, 8, 0]), None);
    }

    #[test]
    fn reserved_flags_and_packet_id_zero_are_malformed() {
        let mut codec = Codec::new(Version::V311);
        let mut read = |bytes: &[u8]| codec.read(&mut BytesMut::from(bytes), 1024);
        // SUBSCRIBE pkid 1 to "a" at QoS 0: fine with flags 0b0010 only.
        let subscribe = |first: u8, pkid: u8| [first, 6, 0, pkid, 0, 1, b'a', 0];
        assert!(matches!(read(&subscribe(0x82, 1)), Ok(Some(_))));
        assert!(read(&subscribe(0x80, 1)).is_err());
        assert!(read(&subscribe(0x8f, 1)).is_err());
        assert!(read(&subscribe(0x82, 0)).is_err(), "packet id 0");
        assert!(
            read(&[0xa2, 5, 0, 0, 0, 1, b'a']).is_err(),
            "UNSUBSCRIBE id 0"
        );
        assert!(
            read(&[0xa0, 5, 0, 1, 0, 1, b'a']).is_err(),
            "UNSUBSCRIBE flags"
        );
        assert!(read(&[0x60, 2, 0, 1]).is_err(), "PUBREL flags");
        assert!(matches!(read(&[0x62, 2, 0, 1]), Ok(Some(_))));
        assert!(read(&[0xc1, 0]).is_err(), "PINGREQ flags");
        assert!(read(&[0x41, 2, 0, 1]).is_err(), "PUBACK flags");
        assert!(read(&[0x36, 4, 0, 1, b'a', b'x']).is_err(), "PUBLISH QoS 3");
        // The header alone is enough to tell.
        assert!(read(&[0x80]).is_err());
    }

    #[test]
    fn publishes_we_write_read_back() {
        use rumqttd::protocol::PublishProperties;
        let props = PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let encoded = encode_properties(&props);
        for (version, qos, properties) in [
            (Version::V311, 0, &b""[..]),
            (Version::V311, 1, &b""[..]),
            (Version::V5, 2, &b""[..]),
            (Version::V5, 1, &encoded[..]),
        ] {
            let mut codec = Codec::new(version);
            let mut out = BytesMut::new();
            let payload = vec![7u8; 300];
            codec.write_publish(
                &mut out,
                &OutPublish {
                    topic: b"a/b",
                    payload: &payload,
                    qos,
                    pkid: 9,
                    retain: true,
                    dup: qos > 0,
                    properties,
                },
            );
            assert_eq!(
                peek_publish(&out),
                Some(PublishHeader {
                    qos,
                    pkid: if qos > 0 { 9 } else { 0 }
                })
            );
            let Ok(Some(Packet::Publish(p, read_props))) = codec.read(&mut out, 1 << 20) else {
                panic!("not read back");
            };
            assert_eq!(
                (&p.topic[..], p.payload.len(), p.retain),
                (&b"a/b"[..], 300, true)
            );
            if !properties.is_empty() {
                let read_props = read_props.unwrap();
                assert_eq!(read_props.content_type.as_deref(), Some("text/plain"));
                assert_eq!(read_props.user_properties, props.user_properties);
            }
            assert!(out.is_empty());
        }
    }

    #[test]
    fn v5_disconnect_with_a_reason_is_well_formed() {
        use rumqttd::protocol::{Disconnect, DisconnectReasonCode};
        let mut out = BytesMut::new();
        let taken_over = Disconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
        };
        Codec::new(Version::V5)
            .write(Packet::Disconnect(taken_over, None), &mut out)
            .unwrap();
        let why = b"session taken over";
        let mut want = vec![
            0xe0,
            5 + why.len() as u8,
            0x8e,
            3 + why.len() as u8,
            0x1f,
            0,
        ];
        want.push(why.len() as u8);
        want.extend(why);
        assert_eq!(&out[..], &want[..]);
        out.clear();
        let normal = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        Codec::new(Version::V5)
            .write(Packet::Disconnect(normal, None), &mut out)
            .unwrap();
        assert_eq!(&out[..], &[0xe0, 0x00]);
    }
}
