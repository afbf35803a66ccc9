//! A recording as JSON Lines, to move it between boxes or keep it elsewhere.
//!
//! The first line is a header: `{"format":"switchboard-recording","version":1,
//! "recording":{…}}` with the recording's name, notes, filters and times. Every other
//! line is one message: `topic`, `event` (when set), `data` (the payload's JSON text
//! exactly as published), `ts` (µs), `seq`, `from` and `origin`. JSON text may hold
//! line breaks between its tokens, which a line-oriented file cannot carry; such a
//! payload is written as `data_text`, the same text as a JSON string, so an import
//! restores it byte for byte. Import checks every line before it stores anything.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::layout::Meta;
use super::{Recorder, RecorderError, RecordingView};
use crate::auth::Principal;
use crate::store::StoredMessage;
use switchboard_core::clock::now_ms;
use switchboard_core::message::Origin;
use switchboard_core::topic;

pub const FORMAT: &str = "switchboard-recording";
pub const VERSION: u32 = 1;

/// Messages read from the store per step of an export.
pub const CHUNK: usize = 1024;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    recording: HeaderRecording,
}

#[derive(Serialize, Deserialize)]
struct HeaderRecording {
    name: String,
    #[serde(default)]
    notes: String,
    topics: Vec<String>,
    #[serde(default)]
    started_at: Option<u64>,
    #[serde(default)]
    stopped_at: Option<u64>,
    /// Informative; an import counts the lines itself.
    #[serde(default, skip_deserializing)]
    messages: u64,
}

#[derive(Serialize)]
struct LineOut<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_text: Option<&'a str>,
    ts: u64,
    seq: u64,
    from: &'a str,
    origin: &'static str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn<'a> {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    data_text: Option<String>,
    ts: u64,
    seq: u64,
    from: String,
    origin: String,
}

/// The header line of a recording's export.
pub fn header(view: &RecordingView) -> String {
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        recording: HeaderRecording {
            name: view.name.clone(),
            notes: view.notes.clone(),
            topics: view.topics.clone(),
            started_at: Some(view.started_at),
            stopped_at: view.stopped_at,
            messages: view.messages,
        },
    };
    let mut line = super::json(&header);
    line.push(b'\n');
    String::from_utf8(line).unwrap_or_default()
}

/// One message as an export line, newline included.
pub fn line(m: &StoredMessage) -> String {
    let raw = if m.data.contains(['\n', '\r']) {
        None
    } else {
        serde_json::from_str::<&RawValue>(&m.data).ok()
    };
    let out = LineOut {
        topic: &m.topic,
        event: m.event.as_deref(),
        data: raw,
        data_text: raw.is_none().then_some(m.data.as_str()),
        ts: m.ts_us,
        seq: m.seq,
        from: &m.from,
        origin: m.origin.as_str(),
    };
    let mut line = serde_json::to_string(&out).unwrap_or_default();
    line.push('\n');
    line
}

fn bad(line: usize, what: impl std::fmt::Display) -> RecorderError {
    RecorderError::Invalid(format!("line {line}: {what}"))
}

/// Reads a whole export; the first problem is reported with its line number.
fn parse(text: &str) -> Result<(HeaderRecording, Vec<StoredMessage>), RecorderError> {
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((n, first)) = lines.next() else {
        return Err(bad(1, "the file is empty; expected the header line"));
    };
    let header: Header =
        serde_json::from_str(first).map_err(|e| bad(n, format!("not a header line: {e}")))?;
    if header.format != FORMAT {
        return Err(bad(
            n,
            format!("format is `{}`, expected `{FORMAT}`", header.format),
        ));
    }
    if header.version != VERSION {
        return Err(bad(
            n,
            format!(
                "version {} is not one this build reads ({VERSION})",
                header.version
            ),
        ));
    }
    let mut messages = Vec::new();
    for (n, text) in lines {
        let l: LineIn<'_> = serde_json::from_str(text).map_err(|e| bad(n, e))?;
        topic::validate_topic(&l.topic).map_err(|e| bad(n, format!("`topic`: {e}")))?;
        let data = match (l.data, l.data_text) {
            (Some(raw), None) => raw.get().to_owned(),
            (None, Some(text)) => {
                serde_json::from_str::<&RawValue>(&text)
                    .map_err(|e| bad(n, format!("`data_text` is not JSON text: {e}")))?;
                text
            }
            _ => return Err(bad(n, "exactly one of `data` and `data_text` is needed")),
        };
        let origin = Origin::ALL
            .into_iter()
            .find(|o| o.as_str() == l.origin)
            .ok_or_else(|| bad(n, format!("unknown origin `{}`", l.origin)))?;
        messages.push(StoredMessage {
            topic: l.topic,
            event: l.event,
            data,
            ts_us: l.ts,
            seq: l.seq,
            from: l.from,
            origin,
        });
    }
    Ok((header.recording, messages))
}

impl Recorder {
    /// Makes a new, stopped recording owned by the caller from an export. Nothing is
    /// stored unless every line is good. The caller must be allowed to subscribe to
    /// every topic in the file, as if it had recorded them itself.
    pub fn import(&self, caller: &Principal, text: &str) -> Result<RecordingView, RecorderError> {
        let (header, messages) = parse(text)?;
        let mut meta: Meta =
            super::validated_meta(caller, header.name, header.notes, header.topics)
                .map_err(|e| bad(1, e))?;
        let topics: BTreeSet<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        for t in topics
            .iter()
            .copied()
            .chain(meta.topics.iter().map(String::as_str))
        {
            caller
                .grants
                .check_subscribe(t)
                .map_err(|e| RecorderError::Forbidden(e.to_string()))?;
        }
        let first = messages.iter().map(|m| m.ts_us / 1000).min();
        let last = messages.iter().map(|m| m.ts_us / 1000).max();
        meta.started_at = header.started_at.or(first).unwrap_or_else(now_ms);
        meta.stopped_at = Some(header.stopped_at.or(last).unwrap_or(meta.started_at));
        meta.imported = true;
        let view = self.insert_complete(meta, &messages)?;
        tracing::info!(
            recording = view.id,
            messages = view.messages,
            "recording imported"
        );
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &str) -> StoredMessage {
        StoredMessage {
            topic: "a/b".into(),
            event: Some("e".into()),
            data: data.into(),
            ts_us: 5,
            seq: 1,
            from: "c1".into(),
            origin: Origin::Replay,
        }
    }

    const HEAD: &str = r#"{"format":"switchboard-recording","version":1,"recording":{"name":"n","topics":["a/#"]}}"#;

    #[test]
    fn lines_read_back_byte_for_byte_even_with_line_breaks() {
        for data in [r#"{"x": [1, 2.50]}"#, "{\n  \"x\": 1\n}", r#""text""#] {
            let m = message(data);
            let text = format!("{HEAD}\n{}", line(&m));
            assert_eq!(text.lines().count(), 2);
            let (_, back) = parse(&text).unwrap();
            assert_eq!(back, vec![m]);
        }
    }

    #[test]
    fn bad_lines_are_named() {
        let good = line(&message("1"));
        for (text, want) in [
            (String::new(), "line 1"),
            (format!("{HEAD}\n{good}{{\"topic\":\"a\"}}\n"), "line 3"),
            (
                format!("{HEAD}\n{}", good.replace("\"a/b\"", "\"a/#\"")),
                "line 2: `topic`",
            ),
            (
                format!("{HEAD}\n{}", good.replace("replay", "pigeon")),
                "line 2: unknown origin",
            ),
            (
                HEAD.replace("\"version\":1", "\"version\":9"),
                "line 1: version 9",
            ),
        ] {
            let err = parse(&text).err().expect("refused").to_string();
            assert!(err.starts_with(want), "{err} (wanted {want})");
        }
    }
}
