//! `switchboard store check`: whether the daemon's local store opens and every entry in
//! it reads, without starting the daemon. The daemon runs the same checks at start and
//! refuses a store that fails them; this says why before a restart does.
//! `switchboard store salvage` copies what still reads from a damaged store into a new
//! one ([`crate::store::salvage`]).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::history::History;
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
    /// Copy every entry that still reads from the store under the data directory into a
    /// new store, leaving the damaged one untouched (stop the daemon first). Exit status
    /// 0: copied (the report says what could not be read); 65: nothing readable.
    Salvage {
        /// Configuration file (TOML) naming the data directory, as for `check`.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// A new data directory for the salvaged store (`<into>/store`); by default
        /// `salvaged` in the data directory.
        #[arg(long)]
        into: Option<PathBuf>,
    },
}

pub fn run(args: StoreArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        StoreCommand::Check { config } => check(config),
        StoreCommand::Salvage { config, into } => salvage(config, into),
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
            let lost: usize = report.runs.iter().map(|(_, _, bad)| bad.len()).sum();
            println!(
                "{}: {}: format version {}, generation {}, {entries} entries",
                report.path.display(),
                if lost == 0 {
                    "ok".to_string()
                } else {
                    format!("usable, {lost} runs lost")
                },
                report
                    .version
                    .map_or("none (never written)".into(), |v| v.to_string()),
                report.generation.map_or("none".into(), |g| g.to_string()),
            );
            for (name, n) in report.trees {
                println!("  {name}: {n}");
            }
            for (name, n, unreadable) in report.runs {
                println!(
                    "  {name}: {n} runs in files, {} unreadable",
                    unreadable.len()
                );
                // The first few say why; the rest are alike.
                for bad in unreadable.iter().take(5) {
                    println!("    lost: {bad}");
                }
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

fn salvage(config: Option<PathBuf>, into: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config.as_deref())?;
    let from = config.data_dir.join("store");
    if !from.exists() {
        anyhow::bail!("{}: no store to salvage", from.display());
    }
    let into = into.unwrap_or_else(|| config.data_dir.join("salvaged"));
    std::fs::create_dir_all(&into)?;
    let report = match crate::store::salvage::salvage(&from, &into.join("store")) {
        Ok(report) => report,
        Err(e) if e.is_unusable() => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_UNUSABLE));
        }
        Err(e) => return Err(e.into()),
    };
    // Saved history positions may count what was lost: the daemon rebuilds them from
    // the messages, under new epochs, so resuming clients are told.
    let store = Store::open(&into, &config.store)?;
    History::forget_clean_stop(&store)?;
    drop(store);
    println!(
        "{}: {} entries copied into {} ({} untouched)",
        from.display(),
        report.copied(),
        report.into.display(),
        from.display()
    );
    for (name, copied, stopped) in &report.trees {
        match stopped {
            None => println!("  {name}: {copied}"),
            Some(why) => println!("  {name}: {copied}, then unreadable: {why}"),
        }
    }
    println!(
        "to use it, stop switchboard, move {} aside and {} in its place",
        from.display(),
        report.into.display()
    );
    Ok(ExitCode::SUCCESS)
}
