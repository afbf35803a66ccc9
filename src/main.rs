//! The `switchboard` command: the daemon and the operator's tools around it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use switchboard::cli::apikey::{self, ApikeyArgs};
use switchboard::cli::e2e::{self, E2eArgs};
use switchboard::cli::passwd::{self, PasswdArgs};
use switchboard::cli::pubsub::{self, PubArgs, SubArgs};
use switchboard::cli::record::{self, RecordArgs, ReplayArgs};
use switchboard::cli::store::{self, StoreArgs};
use switchboard::cli::token::{self, TokenArgs};
use switchboard::config::{Config, ANNOTATED};
use switchboard::server::{self, Server};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time gateway: MQTT devices and WebSocket people, one daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon. Without --config it runs on localhost with built-in defaults.
    Serve {
        /// Configuration file (TOML). Every key is optional.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file (and SWITCHBOARD_* overrides) without starting.
    CheckConfig {
        path: PathBuf,
        /// Print the effective configuration when it is valid.
        #[arg(long)]
        print: bool,
    },
    /// Print the annotated configuration the package installs (every key explained).
    DefaultConfig,
    /// Subscribe and print messages, like mosquitto_sub.
    Sub(SubArgs),
    /// Publish one message (or one per input line), like mosquitto_pub.
    Pub(PubArgs),
    /// Add, update or delete an MQTT device in a password file, like mosquitto_passwd.
    Passwd(PasswdArgs),
    /// Mint client JWTs with a key from the configuration.
    Token(TokenArgs),
    /// Create, list and revoke API keys for servers and scripts.
    Apikey(ApikeyArgs),
    /// Start, stop, list, show, delete, export and import recordings.
    Record(RecordArgs),
    /// Replay a recording (`replay <id> [--speed X | --max] [--prefix P]`), or control
    /// a replay (`pause`, `resume`, `stop`, `status`).
    Replay(ReplayArgs),
    /// End-to-end encryption: keygen, register, keys, revoke, seal, open, pub, sub.
    E2e(E2eArgs),
    /// Check the local store of a stopped daemon (`store check`), or copy what still
    /// reads from a damaged one into a new one (`store salvage`).
    Store(StoreArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => match serve(config) {
            Err(e) if store_unusable(&e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(switchboard::store::EXIT_UNUSABLE)
            }
            result => report(result),
        },
        Command::CheckConfig { path, print } => match Config::load(Some(&path)) {
            Ok(config) => {
                // Valid TOML that names a missing credential would still not start.
                let problems = switchboard::config::files::check(&config);
                if !problems.is_empty() {
                    for problem in &problems {
                        eprintln!("error: {}: {problem}", path.display());
                    }
                    eprintln!(
                        "{}: configuration is not usable: serve would fail on the above",
                        path.display()
                    );
                    return ExitCode::FAILURE;
                }
                if print {
                    print!("{config}");
                }
                println!("{}: configuration is valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::DefaultConfig => {
            print!("{ANNOTATED}");
            ExitCode::SUCCESS
        }
        Command::Sub(args) => {
            init_logging("warn");
            report(runtime().and_then(|rt| rt.block_on(pubsub::run_sub(args))))
        }
        Command::Pub(args) => {
            init_logging("warn");
            report(runtime().and_then(|rt| rt.block_on(pubsub::run_pub(args))))
        }
        Command::Passwd(args) => report(passwd::run(args)),
        Command::Token(args) => report(token::run(args)),
        Command::Apikey(args) => report(apikey::run(args)),
        Command::Record(args) => {
            init_logging("warn");
            report(runtime().and_then(|rt| rt.block_on(record::run_record(args))))
        }
        Command::Replay(args) => {
            init_logging("warn");
            report(runtime().and_then(|rt| rt.block_on(record::run_replay(args))))
        }
        Command::E2e(args) => {
            init_logging("warn");
            report(runtime().and_then(|rt| rt.block_on(e2e::run_e2e(args))))
        }
        Command::Store(args) => store::run(args).unwrap_or_else(|e| report(Err(e))),
    }
}

/// A store that starting again cannot fix: the exit status tells systemd not to retry.
fn store_unusable(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<switchboard::store::StoreError>())
        .any(|e| e.is_unusable())
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // A broken file stops here, before any listener exists.
    let config = Config::load(config_path.as_deref())?;
    let log = switchboard::logging::init(&config.log_level);
    match &config_path {
        Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
        None => tracing::info!("no configuration file: using built-in defaults"),
    }
    runtime()?.block_on(async {
        let server = Server::bind(config)
            .await?
            .with_config_path(config_path)
            .with_log_control(log);
        server.run(server::shutdown_signal()).await
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Logs for the operator's tools; the daemon keeps the control to change the level.
fn init_logging(default_filter: &str) {
    switchboard::logging::init(default_filter);
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
