//! How one routed message is laid out on disk, shared by history and recordings.
//!
//! A compact binary record rather than JSON: the payload is kept as the exact JSON text
//! the publisher sent (an end-to-end encrypted envelope stays the ciphertext it is), and
//! the fixed fields cost a few bytes. The first byte is the record's layout version, so
//! a later layout can be read beside this one.

use switchboard_core::message::{Origin, Publish};

/// The layout written by this build.
const LAYOUT: u8 = 1;

/// A message as stored: everything needed to deliver it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub event: Option<String>,
    /// The payload's JSON text, byte for byte as published.
    pub data: String,
    /// When the Hub accepted it, in µs since the Unix epoch.
    pub ts_us: u64,
    /// Its sequence number on its topic.
    pub seq: u64,
    /// Who published it, as shown to subscribers.
    pub from: String,
    pub origin: Origin,
}

/// A record that is not a message this build can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unreadable stored message: {0}")]
pub struct Corrupt(&'static str);

impl StoredMessage {
    /// The copy of a message the Hub just routed as `seq` at `ts_us`.
    pub fn routed(p: &Publish<'_>, seq: u64, ts_us: u64) -> StoredMessage {
        StoredMessage {
            topic: p.topic.to_owned(),
            event: p.event.map(str::to_owned),
            data: p.data.get().to_owned(),
            ts_us,
            seq,
            from: p.from.to_owned(),
            origin: p.origin,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let event = self.event.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(
            1 + 8
                + 8
                + 1
                + 1
                + 4 * 4
                + self.topic.len()
                + event.len()
                + self.from.len()
                + self.data.len(),
        );
        out.push(LAYOUT);
        out.extend_from_slice(&self.ts_us.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(origin_byte(self.origin));
        out.push(u8::from(self.event.is_some()));
        for field in [
            self.topic.as_str(),
            event,
            self.from.as_str(),
            self.data.as_str(),
        ] {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&field.as_bytes()[..len as usize]);
        }
        out
    }

    /// The storage time of an encoded message, without decoding the rest.
    pub fn peek_ts_us(bytes: &[u8]) -> Option<u64> {
        match bytes {
            [LAYOUT, ts @ ..] => Some(u64::from_be_bytes(ts.get(..8)?.try_into().ok()?)),
            _ => None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredMessage, Corrupt> {
        let mut r = Reader(bytes);
        if r.u8()? != LAYOUT {
            return Err(Corrupt("unknown layout version"));
        }
        let ts_us = r.u64()?;
        let seq = r.u64()?;
        let origin = origin_from(r.u8()?)?;
        let has_event = r.u8()? != 0;
        let topic = r.string()?;
        let event = r.string()?;
        let from = r.string()?;
        let data = r.string()?;
        if !r.0.is_empty() {
            return Err(Corrupt("trailing bytes"));
        }
        Ok(StoredMessage {
            topic,
            event: has_event.then_some(event),
            data,
            ts_us,
            seq,
            from,
            origin,
        })
    }
}

fn origin_byte(origin: Origin) -> u8 {
    origin as u8
}

fn origin_from(byte: u8) -> Result<Origin, Corrupt> {
    Origin::ALL
        .get(usize::from(byte))
        .copied()
        .ok_or(Corrupt("unknown origin"))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Corrupt> {
        if self.0.len() < n {
            return Err(Corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, Corrupt> {
        let bytes = self.take(8)?;
        Ok(u64::from_be_bytes(
            bytes.try_into().map_err(|_| Corrupt("truncated"))?,
        ))
    }

    fn string(&mut self) -> Result<String, Corrupt> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes(len.try_into().map_err(|_| Corrupt("truncated"))?);
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Corrupt("text is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredMessage {
        StoredMessage {
            topic: "home/kitchen/temp".into(),
            event: Some("reading".into()),
            data: r#"{"v":21.5,"ct":"aGVsbG8="}"#.into(),
            ts_us: 1_732_147_200_123_456,
            seq: 42,
            from: "mqtt:node-7".into(),
            origin: Origin::Mqtt,
        }
    }

    #[test]
    fn round_trips_every_field() {
        let m = sample();
        assert_eq!(StoredMessage::peek_ts_us(&m.encode()), Some(m.ts_us));
        assert_eq!(StoredMessage::decode(&m.encode()), Ok(m.clone()));
        let bare = StoredMessage {
            event: None,
            origin: Origin::System,
            ..m
        };
        assert_eq!(StoredMessage::decode(&bare.encode()), Ok(bare));
    }

    #[test]
    fn an_empty_event_is_not_a_missing_one() {
        let m = StoredMessage {
            event: Some(String::new()),
            ..sample()
        };
        assert_eq!(
            StoredMessage::decode(&m.encode()).unwrap().event,
            Some(String::new())
        );
    }

    #[test]
    fn refuses_damaged_records() {
        let bytes = sample().encode();
        for cut in [0, 1, 9, 18, 20, bytes.len() - 1] {
            assert!(
                StoredMessage::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            StoredMessage::decode(&longer),
            Err(Corrupt("trailing bytes"))
        );
        let mut future = bytes.clone();
        future[0] = 9;
        assert_eq!(
            StoredMessage::decode(&future),
            Err(Corrupt("unknown layout version"))
        );
        let mut origin = bytes;
        origin[17] = 200;
        assert_eq!(
            StoredMessage::decode(&origin),
            Err(Corrupt("unknown origin"))
        );
    }
}
