//! What the `cargo bench` benches do around a measurement, alike in each: read a numeric
//! option, run the load on one core, and report (the date, numbers with separators,
//! whether the processes were pinned, the results file). The machine itself (pinning,
//! `/proc`) is [`crate::host`].

use std::path::Path;
use std::process::Command;

/// Today's date (UTC) as `YYYY-MM-DD`, empty if `date` fails.
pub fn utc_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `1,234,567`: a number rounded to a whole one, with thousands separators.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes a bench's results as pretty JSON to `target/<file name>`, next to the
/// other build outputs, and says where; a failure is reported, not fatal.
///
/// `target_tmpdir` is the bench's `env!("CARGO_TARGET_TMPDIR")` (`target/tmp`): cargo
/// sets it only when it compiles a bench or test, so the bench passes it in.
pub fn write_results(target_tmpdir: &str, file_name: &str, results: &serde_json::Value) {
    let path = Path::new(target_tmpdir)
        .parent()
        .unwrap_or(Path::new("."))
        .join(file_name);
    match serde_json::to_string_pretty(results) {
        Ok(text) => match std::fs::write(&path, text) {
            Ok(()) => println!("written: {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        },
        Err(e) => eprintln!("cannot encode the results: {e}"),
    }
}

/// A single-threaded runtime and a local set: the load generator runs on one core.
pub fn local_runtime() -> (tokio::runtime::Runtime, tokio::task::LocalSet) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the bench runtime");
    (rt, tokio::task::LocalSet::new())
}

/// The line that says where the processes run: `placement` when pinned, a warning
/// otherwise.
pub fn pinning_line(pinned: bool, placement: &str) -> String {
    if pinned {
        placement.to_owned()
    } else {
        "NOT PINNED: taskset unavailable; figures are indicative only".to_owned()
    }
}

/// The value of a numeric option (`--rounds 3`): a number of 1 or more, or a panic that
/// names the option.
pub fn number_arg(name: &str, value: Option<String>) -> u64 {
    value
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| panic!("{name} takes a number (1 or more)"))
}
