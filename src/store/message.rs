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
        encode(
            &Fields {
                topic: &self.topic,
                event: self.event.as_deref(),
                from: &self.from,
                data: &self.data,
                origin: self.origin,
            },
            self.seq,
            self.ts_us,
        )
    }

    /// What [`StoredMessage::routed`] then [`StoredMessage::encode`] give, without the
    /// copies in between: the history encodes every message it keeps under the topic's
    /// lock, once.
    pub fn encode_routed(p: &Publish<'_>, seq: u64, ts_us: u64) -> Vec<u8> {
        let mut out = Vec::new();
        StoredMessage::encode_routed_into(p, seq, ts_us, &mut out);
        out
    }

    /// [`StoredMessage::encode_routed`] appended to `out`: the recordings' tap encodes
    /// into one buffer it reuses, with no allocation per message.
    pub fn encode_routed_into(p: &Publish<'_>, seq: u64, ts_us: u64, out: &mut Vec<u8>) {
        let f = Fields {
            topic: p.topic,
            event: p.event,
            from: p.from,
            data: p.data.get(),
            origin: p.origin,
        };
        encode_into(&f, seq, ts_us, out);
    }

    /// The topic of an encoded message, without decoding the rest.
    pub fn peek_topic(bytes: &[u8]) -> Option<&str> {
        match bytes {
            [LAYOUT, rest @ ..] => {
                // After the time, the number, the origin and the event flag.
                let len = u32::from_be_bytes(rest.get(18..22)?.try_into().ok()?) as usize;
                std::str::from_utf8(rest.get(22..22 + len)?).ok()
            }
            _ => None,
        }
    }

    /// The sequence number of an encoded message, without decoding the rest.
    pub fn peek_seq(bytes: &[u8]) -> Option<u64> {
        match bytes {
            [LAYOUT, rest @ ..] => Some(u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?)),
            _ => None,
        }
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

/// The variable fields of a message, borrowed from wherever they are.
struct Fields<'a> {
    topic: &'a str,
    event: Option<&'a str>,
    from: &'a str,
    data: &'a str,
    origin: Origin,
}

fn encode(f: &Fields<'_>, seq: u64, ts_us: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(f, seq, ts_us, &mut out);
    out
}

fn encode_into(f: &Fields<'_>, seq: u64, ts_us: u64, out: &mut Vec<u8>) {
    let event = f.event.unwrap_or("");
    out.reserve(
        1 + 8 + 8 + 1 + 1 + 4 * 4 + f.topic.len() + event.len() + f.from.len() + f.data.len(),
    );
    out.push(LAYOUT);
    out.extend_from_slice(&ts_us.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(origin_byte(f.origin));
    out.push(u8::from(f.event.is_some()));
    for field in [f.topic, event, f.from, f.data] {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&field.as_bytes()[..len as usize]);
    }
}

/// A run of encoded messages kept as one store value: what lets a burst of messages
/// cost the store one entry instead of one each (docs/benchmarks.md, "the store beside
/// a plain file"). The first byte tells a run from a lone record, so a value written
/// by an older build (one record) reads as a run of one.
pub mod run {
    use super::Corrupt;

    const RUN: u8 = 2;

    /// Bytes a run adds besides its records' own.
    pub const OVERHEAD: usize = 1;
    /// Bytes a run adds for each record.
    pub const PER_RECORD: usize = 4;
    /// The most bytes of records one run holds when sled keeps it inline (a bridge
    /// queue's segments): a burst is stored as a few runs of this size, small enough
    /// for sled to keep each in its log and for the cap to evict in small steps.
    pub const MAX_BYTES: usize = 16 * 1024;
    /// The most bytes of records one run holds when it is kept in a run file
    /// ([`crate::store::run_files`]), where sled holds only a pointer to it: each run
    /// costs sled an insert and a remove whatever its size, so these are larger.
    pub const FILE_MAX_BYTES: usize = 4 * MAX_BYTES;

    /// Whether `record` still fits in `run`, a run kept in a run file.
    pub fn fits(run: &[u8], record: &[u8]) -> bool {
        run.len() + record.len() <= FILE_MAX_BYTES
    }

    /// An empty run, ready for [`push`].
    pub fn start(capacity: usize) -> Vec<u8> {
        let mut run = Vec::with_capacity(capacity + OVERHEAD);
        run.push(RUN);
        run
    }

    /// Starts a run at the end of `buffer`, for [`push`] to add to in place.
    pub fn start_in(buffer: &mut Vec<u8>) {
        buffer.push(RUN);
    }

    pub fn push(run: &mut Vec<u8>, record: &[u8]) {
        push_with(run, |out| out.extend_from_slice(record));
    }

    /// As [`push`], for a record `encode` appends to `buffer` itself: no buffer of its
    /// own and no copy. Returns the frame's length (`PER_RECORD` + the record's).
    pub fn push_with(buffer: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) -> usize {
        let at = buffer.len();
        buffer.extend_from_slice(&[0; PER_RECORD]);
        encode(buffer);
        let len = u32::try_from(buffer.len() - at - PER_RECORD).unwrap_or(u32::MAX);
        buffer.truncate(at + PER_RECORD + len as usize);
        buffer[at..at + PER_RECORD].copy_from_slice(&len.to_be_bytes());
        PER_RECORD + len as usize
    }

    /// The records of a run, oldest first; an error ends it.
    pub fn records(value: &[u8]) -> impl Iterator<Item = Result<&[u8], Corrupt>> {
        let (rest, lone) = match value {
            [RUN, rest @ ..] => (rest, None),
            lone => (&[][..], Some(lone)),
        };
        lone.map(Ok).into_iter().chain(frames(rest))
    }

    /// The records of framed bytes (a run without its first byte, as [`push`] and
    /// [`push_with`] lay them out), oldest first; an error ends it.
    pub fn frames(mut rest: &[u8]) -> impl Iterator<Item = Result<&[u8], Corrupt>> {
        let mut failed = false;
        std::iter::from_fn(move || {
            if rest.is_empty() || failed {
                return None;
            }
            let len = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(|b| u32::from_be_bytes(b) as usize);
            match len.and_then(|n| rest.get(4..4 + n)) {
                Some(record) => {
                    rest = &rest[4 + record.len()..];
                    Some(Ok(record))
                }
                None => {
                    failed = true;
                    Some(Err(Corrupt("truncated run")))
                }
            }
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
    fn a_run_holds_its_records_in_order_and_a_lone_record_is_a_run_of_one() {
        let a = sample().encode();
        let b = StoredMessage {
            seq: 43,
            ..sample()
        }
        .encode();
        let mut r = run::start(a.len() + b.len());
        run::push(&mut r, &a);
        run::push(&mut r, &b);
        let records: Vec<_> = run::records(&r).collect();
        assert_eq!(records, [Ok(&a[..]), Ok(&b[..])]);
        assert_eq!(StoredMessage::peek_seq(&b), Some(43));
        assert_eq!(StoredMessage::peek_topic(&b), Some("home/kitchen/temp"));
        assert_eq!(StoredMessage::peek_topic(&b[..30]), None);
        assert_eq!(run::records(&a).collect::<Vec<_>>(), [Ok(&a[..])]);
        let cut = &r[..r.len() - 1];
        assert!(run::records(cut).any(|x| x.is_err()));
        let data = serde_json::value::RawValue::from_string("1".into()).unwrap();
        let p = Publish::test("home/kitchen/temp", &data);
        let m = StoredMessage::routed(&p, 7, 9);
        assert_eq!(StoredMessage::encode_routed(&p, 7, 9), m.encode());
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
