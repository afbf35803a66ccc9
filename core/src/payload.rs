//! MQTT payload bytes ⇄ the JSON `data` of a WebSocket message.
//!
//! The rule (docs/protocol.md, "MQTT payloads"):
//! - a payload that is, byte for byte, a JSON value other than a string becomes that
//!   value, copied verbatim (`21.5`, `{"t":21.5}`, `true`, `[1,2]`);
//! - any other UTF-8 payload becomes a JSON string of its text (`on`, `"quoted"`,
//!   ` 42 ` with its spaces, and the empty payload as `""`);
//! - a payload that is not UTF-8 becomes `{"$base64":"…"}`.
//!
//! Going back, a string becomes its text, `{"$base64":…}` its bytes, and any other value
//! its JSON text. So MQTT → WebSocket → MQTT gives back the same bytes whenever the
//! client passes `data` on as it arrived. A UTF-8 payload that happens to look like the
//! base64 marker is sent as a string, so the marker is never ambiguous.

use std::borrow::Cow;

use base64::Engine;
use serde_json::value::RawValue;

const MARKER: &str = "$base64";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Binary<'a> {
    #[serde(rename = "$base64", borrow)]
    base64: Cow<'a, str>,
}

/// The `data` for an MQTT payload.
pub fn to_data(payload: &[u8]) -> Box<RawValue> {
    let encoded = match std::str::from_utf8(payload) {
        Ok(text) => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) if raw.get().len() == text.len() && is_plain_value(raw.get()) => {
                return raw.to_owned();
            }
            _ => serde_json::to_string(text),
        },
        Err(_) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
            serde_json::to_string(&serde_json::json!({ MARKER: b64 }))
        }
    };
    // Serialising a string cannot fail; fall back to null rather than panic regardless.
    encoded
        .ok()
        .and_then(|json| RawValue::from_string(json).ok())
        .unwrap_or_else(null)
}

/// A JSON value that maps to itself: not a string, not the base64 marker.
fn is_plain_value(json: &str) -> bool {
    !json.starts_with('"') && serde_json::from_str::<Binary<'_>>(json).is_err()
}

/// The MQTT payload for a message's `data`.
pub fn to_payload(data: &RawValue) -> Cow<'_, [u8]> {
    let json = data.get();
    if json.starts_with('"') {
        if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(json) {
            return match text {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            };
        }
    }
    if json.starts_with('{') {
        if let Ok(binary) = serde_json::from_str::<Binary<'_>>(json) {
            if let Ok(bytes) =
                base64::engine::general_purpose::STANDARD.decode(binary.base64.as_bytes())
            {
                return Cow::Owned(bytes);
            }
        }
    }
    Cow::Borrowed(json.as_bytes())
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(payload: &[u8]) -> String {
        let data = to_data(payload);
        assert_eq!(
            to_payload(&data).as_ref(),
            payload,
            "round trip of {payload:?}"
        );
        data.get().to_owned()
    }

    #[test]
    fn json_values_map_to_themselves() {
        assert_eq!(round_trip(b"21.5"), "21.5");
        assert_eq!(
            round_trip(br#"{"t": 21.50, "u":"C"}"#),
            r#"{"t": 21.50, "u":"C"}"#
        );
        assert_eq!(round_trip(b"[1,2]"), "[1,2]");
        assert_eq!(round_trip(b"true"), "true");
        assert_eq!(round_trip(b"null"), "null");
    }

    #[test]
    fn other_text_becomes_a_string() {
        assert_eq!(round_trip(b"on"), r#""on""#);
        assert_eq!(round_trip(br#""quoted""#), r#""\"quoted\"""#);
        assert_eq!(round_trip(b" 42 "), r#"" 42 ""#);
        assert_eq!(round_trip(b""), r#""""#);
        assert_eq!(round_trip("temp 21°C\n".as_bytes()), r#""temp 21°C\n""#);
        // Looks like the marker: sent as text so it comes back as the same text.
        assert_eq!(
            round_trip(br#"{"$base64":"AAE="}"#),
            r#""{\"$base64\":\"AAE=\"}""#
        );
    }

    #[test]
    fn binary_becomes_base64_with_a_marker() {
        assert_eq!(round_trip(&[0, 1, 0xfe, 0xff]), r#"{"$base64":"AAH+/w=="}"#);
    }

    #[test]
    fn data_from_websocket_clients() {
        let data = |s: &str| RawValue::from_string(s.into()).unwrap();
        assert_eq!(to_payload(&data(r#""on""#)).as_ref(), b"on");
        assert_eq!(to_payload(&data(r#"{"a":1}"#)).as_ref(), br#"{"a":1}"#);
        assert_eq!(to_payload(&data(r#"{"$base64":"AAE="}"#)).as_ref(), &[0, 1]);
        // Not valid base64: not binary, so the JSON text goes out unchanged.
        assert_eq!(
            to_payload(&data(r#"{"$base64":"!!"}"#)).as_ref(),
            br#"{"$base64":"!!"}"#
        );
    }
}
