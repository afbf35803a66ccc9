//! `switchboard store check`: whether the daemon's local store opens and every entry in
//! it reads, without starting the daemon. The daemon runs the same checks at start and
//! refuses a store that fails them; this says why before a restart does.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::store::{Store, EXIT_UNUSABLE};

#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand, Debug)]
enum StoreCommand {
    /// Check the store under the data directory (stop the daemon first: it holds a lock
    /// on the store). Exit status 0: usable; 65: damaged or lost data (move the store
    /// directory aside); 1: could not be checked (in use, permissions).
    Check {
        /// Configuration file (TOML) naming the data directory; SWITCHBOARD_DATA_DIR
        /// overrides it, as for `serve`.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub fn run(args: StoreArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        StoreCommand::Check { config } => check(config),
    }
}

fn check(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config.as_deref())?;
    let path = config.data_dir.join("store");
    if !path.exists() {
        println!("{}: no store yet (the daemon creates one)", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    match Store::check(&config.data_dir, &config.store) {
        Ok(report) => {
            let entries: u64 = report.trees.iter().map(|(_, n)| n).sum();
            println!(
                "{}: ok: format version {}, generation {}, {entries} entries",
                report.path.display(),
                report
                    .version
                    .map_or("none (never written)".into(), |v| v.to_string()),
                report.generation.map_or("none".into(), |g| g.to_string()),
            );
            for (name, n) in report.trees {
                println!("  {name}: {n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_unusable() => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_UNUSABLE))
        }
        Err(e) => Err(e.into()),
    }
}
