//! Logs to journald over its native protocol, with every field of an event (and of the
//! spans around it) as a journal field, and a `MESSAGE` that carries them too.
//!
//! tracing-journald puts only the event's message in `MESSAGE`, so `journalctl -u
//! switchboard` showed "reload refused" without the reason and "data directory"
//! without the directory. Here the message reads like the text on stderr
//! (`reload refused … error=line 3: …`), and the fields stay queryable
//! (`journalctl F_ERROR=…`). Priorities follow syslog's meaning: INFO is 6, DEBUG and
//! TRACE 7, so `journalctl -p info` hides debug output.

use std::fmt::{self, Write as _};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use switchboard_core::quiet::clip;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Where journald listens for native-protocol datagrams.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A value longer than this is cut: an entry must fit one datagram.
const MAX_VALUE: usize = 16 * 1024;

/// The fields of an event or a span, in the order they were recorded.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.pairs.push((field.name(), value));
        }
    }
}

/// A `tracing` layer that writes each event to journald.
pub struct JournalLayer {
    socket: UnixDatagram,
}

impl JournalLayer {
    /// Connects to journald's socket; fails where there is none (then logs stay text).
    pub fn connect() -> io::Result<Self> {
        Self::connect_to(Path::new(JOURNAL_SOCKET))
    }

    fn connect_to(path: &Path) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(JournalLayer { socket })
    }
}

impl<S> tracing_subscriber::Layer<S> for JournalLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(fields) = extensions.get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The spans' fields, outermost first, then the event's own.
        let mut pairs = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<Fields>() {
                    pairs.extend(span_fields.pairs.iter().cloned());
                }
            }
        }
        pairs.append(&mut fields.pairs);
        let meta = event.metadata();
        let entry = encode(
            *meta.level(),
            meta.target(),
            meta.file(),
            meta.line(),
            &fields.message,
            &pairs,
        );
        // journald gone or its queue full: the entry is lost, as a full pipe would
        // lose text. Logging must never stop the daemon.
        let _ = self.socket.send(&entry);
    }
}

/// One journal entry in journald's native format.
fn encode(
    level: Level,
    target: &str,
    file: Option<&str>,
    line: Option<u32>,
    message: &str,
    pairs: &[(&'static str, String)],
) -> Vec<u8> {
    let mut text = message.to_owned();
    for (name, value) in pairs {
        let _ = write!(text, " {name}={value}");
    }
    let mut entry = Vec::with_capacity(256 + text.len());
    put(&mut entry, "PRIORITY", priority(level));
    put(&mut entry, "SYSLOG_IDENTIFIER", "switchboard");
    put(&mut entry, "MESSAGE", &text);
    put(&mut entry, "TARGET", target);
    if let Some(file) = file {
        put(&mut entry, "CODE_FILE", file);
    }
    if let Some(line) = line {
        put(&mut entry, "CODE_LINE", &line.to_string());
    }
    for (name, value) in pairs {
        // F_: an event's field can never pass for one of journald's own.
        put(&mut entry, &format!("F_{}", field_name(name)), value);
    }
    entry
}

fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        Level::DEBUG | Level::TRACE => "7",
    }
}

/// Journal field names are upper-case letters, digits and underscores.
fn field_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .take(60)
        .collect()
}

/// `NAME=value\n`, or for a value with a line break `NAME\n<u64 LE length><value>\n`.
fn put(entry: &mut Vec<u8>, name: &str, value: &str) {
    let value = clip(value, MAX_VALUE);
    entry.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value.as_bytes());
    entry.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tracing_subscriber::layer::SubscriberExt;

    /// Parses datagrams in the native format back into fields.
    fn parse(mut data: &[u8]) -> HashMap<String, String> {
        let mut fields = HashMap::new();
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n').expect("a line");
            let line = &data[..end];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                let name = String::from_utf8(line[..eq].to_vec()).expect("name");
                let value = String::from_utf8(line[eq + 1..].to_vec()).expect("value");
                fields.insert(name, value);
                data = &data[end + 1..];
            } else {
                let name = String::from_utf8(line.to_vec()).expect("name");
                let rest = &data[end + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().expect("length")) as usize;
                let value = String::from_utf8(rest[8..8 + len].to_vec()).expect("value");
                assert_eq!(rest[8 + len], b'\n');
                fields.insert(name, value);
                data = &rest[8 + len + 1..];
            }
        }
        fields
    }

    #[test]
    fn an_event_reaches_the_socket_with_its_fields_in_the_message_and_as_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.socket");
        let journal = UnixDatagram::bind(&path).expect("bind");
        let layer = JournalLayer::connect_to(&path).expect("connect");
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("connection", connection_id = 7);
            let _enter = span.enter();
            tracing::error!(error = "line 3: expected `=`", "reload refused");
            tracing::debug!(detail = "two\nlines", "multi-line value");
        });
        let mut buf = vec![0u8; 65536];
        let n = journal.recv(&mut buf).expect("first entry");
        let first = parse(&buf[..n]);
        assert_eq!(
            first["MESSAGE"],
            "reload refused connection_id=7 error=line 3: expected `=`"
        );
        assert_eq!(first["PRIORITY"], "3");
        assert_eq!(first["F_ERROR"], "line 3: expected `=`");
        assert_eq!(first["F_CONNECTION_ID"], "7");
        assert_eq!(first["SYSLOG_IDENTIFIER"], "switchboard");
        assert!(first["CODE_FILE"].ends_with("journal.rs"));
        let n = journal.recv(&mut buf).expect("second entry");
        let second = parse(&buf[..n]);
        assert_eq!(second["PRIORITY"], "7");
        assert_eq!(second["F_DETAIL"], "two\nlines");
        assert_eq!(
            second["MESSAGE"],
            "multi-line value connection_id=7 detail=two\nlines"
        );
    }

    #[test]
    fn names_are_journal_safe_and_long_values_are_cut_on_a_character() {
        assert_eq!(field_name("data_dir"), "DATA_DIR");
        assert_eq!(field_name("peer.addr"), "PEER_ADDR");
        let long = "é".repeat(MAX_VALUE);
        let short = clip(&long, MAX_VALUE);
        assert!(short.len() <= MAX_VALUE && short.chars().all(|c| c == 'é'));
    }
}
