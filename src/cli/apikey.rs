//! `switchboard apikey`: create, list and revoke the API keys that servers and scripts
//! connect with.
//!
//! It edits the key file of the configuration given (`api_keys_file`, or
//! `api_keys.json` in `data_dir`); a running daemon notices the change by itself. The
//! key is printed once, alone on standard output so that a script can capture it, and
//! is never stored: only its hash is.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::auth::apikeys::{self, format_time, KeyInfo};
use crate::config::Config;

#[derive(clap::Args, Debug)]
pub struct ApikeyArgs {
    #[command(subcommand)]
    pub command: ApikeyCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ApikeyCommand {
    /// Create a key and print it (once: it cannot be shown again).
    Create {
        /// A name saying who uses the key (1-64 characters, unique among active keys).
        #[arg(value_name = "NAME")]
        name: String,
        /// Topic filter the key may publish to; repeat for more.
        #[arg(long, value_name = "FILTER")]
        publish: Vec<String>,
        /// Topic filter the key may subscribe within; repeat for more.
        #[arg(long, value_name = "FILTER")]
        subscribe: Vec<String>,
        /// User the key may send direct messages to (`*` for anyone); repeat for more.
        #[arg(long, value_name = "USER")]
        send: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the keys (ids, names and scopes; never the keys themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a key by its id; connections using it are closed.
    Revoke {
        /// The key's id, as `list` shows it.
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The configuration that says where the key file is.
#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// Configuration file (TOML); without one, the built-in defaults.
    #[arg(long, short, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    fn key_file(&self) -> anyhow::Result<PathBuf> {
        let config = Config::load(self.config.as_deref())?;
        Ok(config.api_keys_file())
    }
}

/// Runs the command. Nothing but `create`'s stdout ever shows a key.
pub fn run(args: ApikeyArgs) -> anyhow::Result<()> {
    match args.command {
        ApikeyCommand::Create {
            name,
            publish,
            subscribe,
            send,
            config,
        } => {
            let path = config.key_file()?;
            let (info, key) = apikeys::create(&path, &name, publish, subscribe, send)?;
            println!("{key}");
            eprintln!(
                "Created API key {} ({:?}) in {}.\n\
                 Store the key now: it will not be shown again.\n\
                 A running daemon picks it up within a second.",
                info.id,
                info.name,
                path.display()
            );
            Ok(())
        }
        ApikeyCommand::List { json, config } => {
            let path = config.key_file()?;
            let keys = apikeys::list(&path)?;
            if json {
                let text = serde_json::to_string_pretty(&keys).context("cannot encode the list")?;
                println!("{text}");
            } else if keys.is_empty() {
                eprintln!("No API keys in {}.", path.display());
            } else {
                print!("{}", table(&keys));
            }
            Ok(())
        }
        ApikeyCommand::Revoke { id, config } => {
            let path = config.key_file()?;
            let info = apikeys::revoke(&path, &id)?;
            println!("Revoked API key {} ({:?}).", info.id, info.name);
            note_daemon(&path);
            Ok(())
        }
    }
}

/// Says how a revocation reaches connections that are already open.
fn note_daemon(path: &Path) {
    eprintln!(
        "A running daemon reading {} closes the connections using it within a second.",
        path.display()
    );
}

/// One line per key: id, name, scopes, created, revoked.
fn table(keys: &[KeyInfo]) -> String {
    let header = ["ID", "NAME", "SCOPES", "CREATED", "REVOKED"].map(str::to_owned);
    let rows: Vec<[String; 5]> = keys
        .iter()
        .map(|k| {
            [
                k.id.clone(),
                k.name.clone(),
                scopes(k),
                format_time(k.created),
                k.revoked.map_or_else(|| "-".to_owned(), format_time),
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width - cell.chars().count();
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `publish=a/#,b subscribe=c/# send=bob`: the scopes the key has.
fn scopes(key: &KeyInfo) -> String {
    let parts: Vec<String> = [
        ("publish", &key.publish),
        ("subscribe", &key.subscribe),
        ("send", &key.send),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(label, v)| format!("{label}={}", v.join(",")))
    .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_up_and_shows_no_hash() {
        let keys = vec![
            KeyInfo {
                id: "0123456789ab".into(),
                name: "backend".into(),
                publish: vec!["orders/#".into()],
                subscribe: vec!["orders/#".into(), "status/+".into()],
                send: vec![],
                created: 0,
                revoked: None,
            },
            KeyInfo {
                id: "ba9876543210".into(),
                name: "cron".into(),
                publish: vec![],
                subscribe: vec![],
                send: vec!["*".into()],
                created: 86_400,
                revoked: Some(90_000),
            },
        ];
        let text = table(&keys);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID            NAME     SCOPES"));
        assert!(lines[1].contains("publish=orders/# subscribe=orders/#,status/+"));
        assert!(lines[1].contains("1970-01-01T00:00:00Z"));
        assert!(lines[1].ends_with('-'));
        assert!(lines[2].contains("send=*"));
        assert!(lines[2].ends_with("1970-01-02T01:00:00Z"));
    }
}
