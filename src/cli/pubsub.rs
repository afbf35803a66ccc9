//! `switchboard sub` and `switchboard pub`: mosquitto_sub and mosquitto_pub for the
//! WebSocket protocol, so the daemon can be used from a shell and from scripts.
//!
//! Output is one message per line, flushed as it arrives, so a pipe sees each message
//! at once: `switchboard sub 'sensors/#' | while read -r v; do …; done`.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::io::AsyncBufReadExt;
use tokio::sync::broadcast;

use super::ConnectArgs;
use switchboard_client::{Client, Event, Message, Since};
use switchboard_core::topic;

#[derive(clap::Args, Debug)]
pub struct SubArgs {
    /// Topic filters to subscribe to (MQTT syntax: `+` is one level, `#` the rest).
    #[arg(required = true, value_name = "FILTER")]
    pub filters: Vec<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Exit after this many messages.
    #[arg(short = 'C', long, value_name = "N")]
    pub count: Option<u64>,
    /// Print the topic, a space, then the data.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print each message as its whole `msg` frame, in JSON.
    #[arg(long, conflicts_with = "verbose")]
    pub json: bool,
    /// First print the last N messages of each topic's history (topics with a
    /// `[history]` rule; no wildcards).
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct PubArgs {
    /// Topic to publish to (no wildcards).
    pub topic: String,
    /// The message: used as JSON when it is valid JSON, otherwise sent as a string.
    #[arg(required_unless_present = "lines", conflicts_with = "lines")]
    pub data: Option<String>,
    /// Event name subscribers can dispatch on.
    #[arg(long)]
    pub event: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Read standard input and publish each non-empty line as one message.
    #[arg(short = 'l', long)]
    pub lines: bool,
}

/// The longest wait between reconnect attempts. The library's default (10 s) spreads
/// thousands of clients over a restarted server; one person at a terminal wants the
/// messages as soon as the daemon is back.
const SUB_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Subscribes to every filter and prints messages until `--count` is reached. Rides out
/// server restarts (the client reconnects, and resumes topics with a history); says on
/// stderr when the connection is lost and back. Fails only when the server refuses us.
pub async fn run_sub(args: SubArgs) -> anyhow::Result<()> {
    let mut options = args.connect.options();
    options.backoff_max = SUB_BACKOFF_MAX;
    let client = Client::connect(options).await?;
    // Taken before subscribing, so no event of this connection is missed.
    let mut events = client.events();
    let mut streams = Vec::with_capacity(args.filters.len());
    for (index, filter) in args.filters.iter().enumerate() {
        let subscription = client
            .subscribe_since(filter.as_str(), args.last.map(Since::Last))
            .await
            .with_context(|| format!("subscribing to `{filter}`"))?;
        streams.push(subscription.map(move |msg| (index, msg)));
    }
    let mut messages = futures_util::stream::select_all(streams);
    let mut printed = 0u64;
    let mut events_open = true;
    while args.count.is_none_or(|n| printed < n) {
        let next = tokio::select! {
            next = messages.next() => next,
            event = events.recv(), if events_open => {
                match event {
                    Ok(event) => report_event(&event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("switchboard sub: {n} connection events not shown");
                    }
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                }
                continue;
            }
        };
        let Some((index, msg)) = next else {
            match client.closed_reason() {
                Some(reason) => bail!(reason),
                None => bail!("the connection ended"),
            }
        };
        // A message matching several of our filters comes once per filter: print it
        // from the first filter that matches only.
        let first = args
            .filters
            .iter()
            .position(|f| topic::matches(f, &msg.topic));
        if first != Some(index) {
            continue;
        }
        let line = render(&msg, &args)?;
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            Ok(()) => printed += 1,
            // The reader went away (`| head -1`): that is the end, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e).context("writing to standard output"),
        }
    }
    client.close().await;
    Ok(())
}

/// Tells the person at the terminal what happened to the connection: stdout carries
/// only messages, so a pipe is not disturbed.
fn report_event(event: &Event) {
    match event {
        Event::Disconnected {
            reason,
            reconnecting: true,
            ..
        } => eprintln!("switchboard sub: connection lost ({reason}); reconnecting"),
        Event::Connected { .. } => {
            eprintln!("switchboard sub: reconnected; subscriptions restored");
        }
        Event::Gap { topic } => eprintln!(
            "switchboard sub: some messages on `{topic}` published while disconnected are gone (not in its history)"
        ),
        Event::Lagged { dropped } => {
            eprintln!("switchboard sub: the server dropped {dropped} messages (reading too slowly)");
        }
        Event::Unsubscribed { filters, message } => {
            eprintln!("switchboard sub: unsubscribed from {filters:?}: {message}");
        }
        Event::ServerError { code, message } => {
            eprintln!("switchboard sub: server error `{code}`: {message}");
        }
        // The final disconnect is reported when the stream ends; the rest is not ours.
        _ => {}
    }
}

/// One output line for a message.
fn render(msg: &Message, args: &SubArgs) -> anyhow::Result<String> {
    if args.json {
        return Ok(compact(&serde_json::to_string(msg)?).into_owned());
    }
    // Strings print as their text, like an MQTT payload; anything else as JSON.
    let data = match msg.decode::<String>() {
        Ok(text) => Cow::Owned(text),
        Err(_) => compact(msg.data.get()),
    };
    Ok(if args.verbose {
        format!("{} {data}", msg.topic)
    } else {
        data.into_owned()
    })
}

/// JSON text on one line: whitespace outside strings removed. Unlike a round trip
/// through `serde_json::Value`, this keeps the publisher's key order and numbers.
fn compact(json: &str) -> Cow<'_, str> {
    if !json.contains(['\n', '\r', '\t', ' ']) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\n' | '\r' | '\t') {
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Publishes DATA, or every line of standard input, waiting for each acknowledgement.
pub async fn run_pub(args: PubArgs) -> anyhow::Result<()> {
    // One shot: a dropped connection is an error to report, not a reason to wait.
    let client = Client::connect(args.connect.options().reconnect(false)).await?;
    let result = match &args.data {
        Some(data) => publish(&client, &args, data).await,
        None => publish_lines(&client, &args).await,
    };
    client.close().await;
    result
}

async fn publish_lines(client: &Client, args: &PubArgs) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading standard input")? {
        if !line.trim().is_empty() {
            publish(client, args, &line).await?;
        }
    }
    Ok(())
}

async fn publish(client: &Client, args: &PubArgs, text: &str) -> anyhow::Result<()> {
    let data = parse_data(text)?;
    let seq = match &args.event {
        Some(event) => client.publish_event(&args.topic, event, &data).await,
        None => client.publish(&args.topic, &data).await,
    }
    .with_context(|| format!("publishing to `{}`", args.topic))?;
    tracing::debug!(topic = args.topic, seq, "published");
    Ok(())
}

/// JSON as given when it parses, otherwise the text as a JSON string.
fn parse_data(text: &str) -> anyhow::Result<Box<RawValue>> {
    match serde_json::from_str(text) {
        Ok(raw) => Ok(raw),
        Err(_) => Ok(serde_json::value::to_raw_value(text)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn compact_keeps_strings_and_order() {
        assert_eq!(compact(r#"{"b":1,"a":2}"#), r#"{"b":1,"a":2}"#);
        assert_eq!(
            compact("{ \"z\" : [1, 2],\n \"s\": \"a b \\\" c\" }"),
            r#"{"z":[1,2],"s":"a b \" c"}"#
        );
    }

    #[test]
    fn data_is_json_or_a_string() {
        assert_eq!(parse_data("21.5").unwrap().get(), "21.5");
        assert_eq!(parse_data(r#"{"a":1}"#).unwrap().get(), r#"{"a":1}"#);
        assert_eq!(parse_data("hello world").unwrap().get(), r#""hello world""#);
        assert_eq!(parse_data("12abc").unwrap().get(), r#""12abc""#);
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Sub(SubArgs),
        Pub(PubArgs),
    }

    #[test]
    fn arguments_parse_like_mosquitto() {
        let Cmd::Sub(sub) = Cli::parse_from(["x", "sub", "a/#", "b", "-C", "3", "-v"]).cmd else {
            panic!("not sub")
        };
        assert_eq!(sub.filters, ["a/#", "b"]);
        assert_eq!((sub.count, sub.verbose, sub.json), (Some(3), true, false));
        assert!(
            Cli::try_parse_from(["x", "sub"]).is_err(),
            "a filter is required"
        );
        assert!(
            Cli::try_parse_from(["x", "pub", "t"]).is_err(),
            "DATA or -l"
        );
        assert!(Cli::try_parse_from(["x", "pub", "t", "1", "-l"]).is_err());
        let Cmd::Pub(publ) = Cli::parse_from(["x", "pub", "t", "-l", "--event", "e"]).cmd else {
            panic!("not pub")
        };
        assert!(publ.lines && publ.data.is_none());
        assert_eq!(publ.event.as_deref(), Some("e"));
    }

    fn msg(data: &str) -> Message {
        Message {
            topic: "t/1".into(),
            event: None,
            data: RawValue::from_string(data.into()).unwrap(),
            ts: 1,
            seq: 2,
            from: "c1".into(),
            retained: false,
            history: false,
        }
    }

    #[test]
    fn rendering() {
        let Cmd::Sub(mut args) = Cli::parse_from(["x", "sub", "t/#"]).cmd else {
            panic!("not sub")
        };
        assert_eq!(render(&msg(r#""hi there""#), &args).unwrap(), "hi there");
        assert_eq!(
            render(&msg("{\"a\": [1, 2]}"), &args).unwrap(),
            r#"{"a":[1,2]}"#
        );
        args.verbose = true;
        assert_eq!(render(&msg("5"), &args).unwrap(), "t/1 5");
        args.verbose = false;
        args.json = true;
        assert_eq!(
            render(&msg("{\"a\": 1}"), &args).unwrap(),
            r#"{"op":"msg","topic":"t/1","data":{"a":1},"ts":1,"seq":2,"from":"c1"}"#
        );
    }
}
