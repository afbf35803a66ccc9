//! The advisory check CI runs: `Cargo.lock` against a RustSec database kept in the
//! repository, with the ignores of `.cargo/audit.toml`.
//!
//! `cargo audit` does the same but fetches its database from GitHub first, which the CI
//! machines cannot reach. This uses the library `cargo audit` is built on, reading the
//! committed snapshot instead, so the verdict is the one `cargo audit` would give for
//! that snapshot: vulnerabilities fail the run, informational advisories (unmaintained,
//! unsound) are printed as warnings.

use std::{fs, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Parser;
use rustsec::{
    advisory::{Id, Informational},
    report::{Report, Settings},
    Database, Lockfile,
};
use serde::Deserialize;

#[derive(Parser)]
#[command(about = "Check Cargo.lock against a RustSec advisory database on disk")]
struct Args {
    /// The advisory database directory (its `crates/` holds the advisories).
    #[arg(long, default_value = "third_party/rustsec-advisory-db")]
    db: PathBuf,
    #[arg(long, default_value = "Cargo.lock")]
    lockfile: PathBuf,
    /// `cargo audit`'s own config file, so both tools honour the same ignores.
    #[arg(long, default_value = ".cargo/audit.toml")]
    config: PathBuf,
}

/// The part of `.cargo/audit.toml` this check honours.
#[derive(Deserialize, Default)]
struct AuditConfig {
    #[serde(default)]
    advisories: AdvisoriesConfig,
}

#[derive(Deserialize, Default)]
struct AdvisoriesConfig {
    #[serde(default)]
    ignore: Vec<String>,
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let db = Database::open(&args.db)
        .with_context(|| format!("reading the advisory database at {}", args.db.display()))?;
    let lockfile = Lockfile::load(&args.lockfile)
        .with_context(|| format!("reading {}", args.lockfile.display()))?;
    let ignore = ignores(&args.config)?;

    let report = audit(&db, &lockfile, ignore.clone());
    println!(
        "{} advisories checked against {} packages; {} ignored by {}",
        db.iter().count(),
        lockfile.packages.len(),
        ignore.len(),
        args.config.display()
    );
    for warnings in report.warnings.values() {
        for w in warnings {
            let id = w.advisory.as_ref().map(|a| a.id.as_str()).unwrap_or("-");
            let title = w.advisory.as_ref().map(|a| a.title.as_str()).unwrap_or("");
            println!(
                "warning: {id} {} {} ({:?}): {title}",
                w.package.name, w.package.version, w.kind
            );
        }
    }
    for v in &report.vulnerabilities.list {
        println!(
            "error: {} {} {}: {}",
            v.advisory.id, v.package.name, v.package.version, v.advisory.title
        );
    }
    if report.vulnerabilities.found {
        println!(
            "{} vulnerable package(s): upgrade, or ignore in {} with the reason",
            report.vulnerabilities.count,
            args.config.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("no vulnerable package");
    Ok(ExitCode::SUCCESS)
}

/// `cargo audit`'s default verdict: vulnerabilities, plus unmaintained and unsound as warnings.
fn audit(db: &Database, lockfile: &Lockfile, ignore: Vec<Id>) -> Report {
    let settings = Settings {
        ignore,
        informational_warnings: vec![Informational::Unmaintained, Informational::Unsound],
        ..Settings::default()
    };
    Report::generate(db, lockfile, &settings)
}

/// Advisory ids to ignore; a missing file ignores nothing, a malformed one is an error.
fn ignores(path: &PathBuf) -> Result<Vec<Id>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config: AuditConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    config
        .advisories
        .ignore
        .iter()
        .map(|id| {
            id.parse::<Id>()
                .with_context(|| format!("{}: bad advisory id {id:?}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../third_party/rustsec-advisory-db"
    );

    /// A lock file naming one package with known advisories and one without.
    const LOCK: &str = r#"
version = 4

[[package]]
name = "rsa"
version = "0.9.8"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "bytes"
version = "1.11.1"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;

    #[test]
    fn a_vulnerable_package_is_found_and_an_ignore_clears_it() -> Result<()> {
        let db = Database::open(std::path::Path::new(DB))?;
        let lockfile: Lockfile = LOCK.parse()?;
        let found = audit(&db, &lockfile, Vec::new());
        let ids: Vec<&str> = found
            .vulnerabilities
            .list
            .iter()
            .map(|v| v.advisory.id.as_str())
            .collect();
        assert_eq!(ids, ["RUSTSEC-2023-0071"]);

        let cleared = audit(&db, &lockfile, vec!["RUSTSEC-2023-0071".parse()?]);
        assert!(!cleared.vulnerabilities.found);
        Ok(())
    }

    #[test]
    fn a_malformed_ignore_is_an_error_not_an_empty_list() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.toml");
        fs::write(&path, "[advisories]\nignore = \"RUSTSEC-2023-0071\"\n")?;
        assert!(ignores(&path).is_err());
        fs::write(&path, "[advisories\n")?;
        assert!(ignores(&path).is_err());
        assert!(ignores(&dir.path().join("missing.toml"))?.is_empty());
        Ok(())
    }
}
