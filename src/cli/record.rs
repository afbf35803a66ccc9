//! `switchboard record …` and `switchboard replay …`: recordings and replays from a
//! shell, through the daemon's REST API (`/api/v1/recordings`, `/api/v1/replays`).
//!
//! They take the same `--url` (the WebSocket URL, from which the API's address is
//! derived) and `--token` as `sub` and `pub`, so one `SWITCHBOARD_URL` and
//! `SWITCHBOARD_TOKEN` serve every tool. Results print as JSON, except `list` (one line
//! per recording) and `export` (the JSON Lines file itself).

use std::io::{Read, Write};
use std::path::PathBuf;

use super::api::Api;
pub use super::api::ApiArgs;

use anyhow::{bail, Context};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    #[command(subcommand)]
    pub command: RecordCommand,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum RecordCommand {
    /// Start recording topic filters.
    Start {
        /// Topic filters to record (MQTT syntax).
        #[arg(required = true, value_name = "FILTER")]
        filters: Vec<String>,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Stop a recording.
    Stop { id: u64 },
    /// List recordings: id, state, messages, bytes, name.
    List,
    /// Show a recording, with its messages counted by topic.
    Show { id: u64 },
    /// Delete a recording and its messages.
    Delete { id: u64 },
    /// Write a recording as JSON Lines (to standard output unless --output).
    Export {
        id: u64,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Import a JSON Lines export (`-` reads standard input) as a new recording.
    Import { file: PathBuf },
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub command: Option<ReplayCommand>,
    /// The recording to replay.
    #[arg(value_name = "RECORDING")]
    pub recording: Option<u64>,
    /// Time scale, 0.1 to 1000: 10 plays ten times as fast as recorded.
    #[arg(long, conflicts_with = "max")]
    pub speed: Option<f64>,
    /// As fast as possible.
    #[arg(long)]
    pub max: bool,
    /// Publish under this prefix instead of onto the original topics.
    #[arg(long)]
    pub prefix: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum ReplayCommand {
    /// Pause a running replay.
    Pause { id: u64 },
    /// Resume a paused replay.
    Resume { id: u64 },
    /// Stop a replay.
    Stop { id: u64 },
    /// Show a replay's progress, or every replay without an id.
    Status { id: Option<u64> },
}

fn print(value: &Value) -> anyhow::Result<()> {
    if !value.is_null() {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(())
}

pub async fn run_record(args: RecordArgs) -> anyhow::Result<()> {
    use reqwest::Method;
    let api = Api::new(&args.api)?;
    let value = match args.command {
        RecordCommand::Start {
            filters,
            name,
            notes,
        } => {
            let body = json!({"name": name, "notes": notes, "topics": filters});
            api.json(Method::POST, "/recordings", Some(body)).await?
        }
        RecordCommand::Stop { id } => {
            api.json(Method::POST, &format!("/recordings/{id}/stop"), None)
                .await?
        }
        RecordCommand::Show { id } => {
            api.json(Method::GET, &format!("/recordings/{id}"), None)
                .await?
        }
        RecordCommand::Delete { id } => {
            api.json(Method::DELETE, &format!("/recordings/{id}"), None)
                .await?
        }
        RecordCommand::List => {
            let list = api.json(Method::GET, "/recordings", None).await?;
            for r in list["recordings"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    r["id"],
                    r["state"].as_str().unwrap_or(""),
                    r["messages"],
                    r["bytes"],
                    r["name"].as_str().unwrap_or("")
                );
            }
            Value::Null
        }
        RecordCommand::Export { id, output } => {
            let mut response = api
                .call(Method::GET, &format!("/recordings/{id}/export"), None)
                .await?;
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            while let Some(chunk) = response.chunk().await.context("export cut short")? {
                out.write_all(&chunk).context("cannot write the export")?;
            }
            out.flush().context("cannot write the export")?;
            Value::Null
        }
        RecordCommand::Import { file } => {
            let mut bytes = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .context("cannot read standard input")?;
            } else {
                bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
            }
            let response = api
                .call(
                    Method::POST,
                    "/recordings/import",
                    Some((bytes.into(), crate::http::api::JSON_LINES)),
                )
                .await?;
            response.json().await.context("the answer is not JSON")?
        }
    };
    print(&value)
}

pub async fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    use reqwest::Method;
    let api = Api::new(&args.api)?;
    let value = match (args.command, args.recording) {
        (Some(ReplayCommand::Pause { id }), _) => {
            api.json(Method::POST, &format!("/replays/{id}/pause"), None)
                .await?
        }
        (Some(ReplayCommand::Resume { id }), _) => {
            api.json(Method::POST, &format!("/replays/{id}/resume"), None)
                .await?
        }
        (Some(ReplayCommand::Stop { id }), _) => {
            api.json(Method::POST, &format!("/replays/{id}/stop"), None)
                .await?
        }
        (Some(ReplayCommand::Status { id: Some(id) }), _) => {
            api.json(Method::GET, &format!("/replays/{id}"), None)
                .await?
        }
        (Some(ReplayCommand::Status { id: None }), _) => {
            api.json(Method::GET, "/replays", None).await?
        }
        (None, Some(recording)) => {
            let mut body = json!({});
            if let Some(speed) = args.speed {
                body["speed"] = json!(speed);
            }
            if args.max {
                body["max"] = json!(true);
            }
            if let Some(prefix) = args.prefix {
                body["prefix"] = json!(prefix);
            }
            api.json(
                Method::POST,
                &format!("/recordings/{recording}/replay"),
                Some(body),
            )
            .await?
        }
        (None, None) => bail!("name a recording to replay, or pause|resume|stop|status"),
    };
    print(&value)
}
