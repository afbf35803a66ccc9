//! Result rows and the files they go to: `results.json` (with the machine, versions
//! and skipped systems) and `results.csv`, one row per scenario point and system.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One point of one system: the median of its repeats by delivered rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    pub scenario: String,
    pub system: String,
    /// The chart line this row belongs to: the system, plus a variant where a
    /// scenario has several per system (e.g. `switchboard http-op`).
    pub series: String,
    /// What the chart's x axis is, and this row's value on it.
    pub x_label: String,
    pub x: f64,
    pub subscribers: usize,
    pub publishers: usize,
    pub payload_bytes: usize,
    /// Deliveries (or requests) per second offered and delivered.
    pub offered_per_s: f64,
    pub delivered_per_s: f64,
    pub lost: u64,
    pub loss: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub server_cpu_pct: f64,
    /// The load generator's CPU (coordinator and workers; 100% = its one core).
    pub client_cpu_pct: f64,
    /// CPU the rest of the machine used meanwhile (other processes on this shared
    /// box): above [`NOISY_PCT`] the point is run again, up to three times.
    pub other_cpu_pct: f64,
    pub server_peak_rss_kib: u64,
    /// No loss, no closed connection, publisher on time, p99 ≤ 100 ms.
    pub sustained: bool,
    pub note: String,
    pub repeats: usize,
    /// Connections scenario only.
    pub held: Option<usize>,
    pub rss_per_conn_kib: Option<f64>,
    pub connect_per_s: Option<f64>,
}

/// Share of a core other work may take during a window before the point is retried.
pub const NOISY_PCT: f64 = 15.0;

/// The median of repeated runs of one point, by delivered rate.
pub fn median(mut runs: Vec<Row>) -> Option<Row> {
    runs.sort_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s));
    let n = runs.len();
    let mut row = runs.into_iter().nth(n / 2)?;
    row.repeats = n;
    Some(row)
}

/// A system that did not run, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub system: String,
    pub reason: String,
}

/// Everything one scenario produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub scenario: String,
    pub quick: bool,
    pub machine: String,
    pub pinned: bool,
    pub versions: serde_json::Value,
    pub skipped: Vec<Skipped>,
    pub rows: Vec<Row>,
}

const CSV_HEADER: &str = "scenario,system,series,x_label,x,subscribers,publishers,payload_bytes,\
offered_per_s,delivered_per_s,lost,loss,p50_us,p90_us,p99_us,p999_us,max_us,server_cpu_pct,client_cpu_pct,other_cpu_pct,\
server_peak_rss_kib,sustained,repeats,held,rss_per_conn_kib,connect_per_s,note";

impl Results {
    /// Writes `results.json` and `results.csv` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("results.json"), json).context("cannot write results.json")?;
        let mut csv = String::from(CSV_HEADER);
        csv.push('\n');
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
        for r in &self.rows {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{:.0},{:.0},{},{:.6},{},{},{},{},{},{:.1},{:.1},{:.1},{},{},{},{},{},{},\"{}\"\n",
                r.scenario,
                r.system,
                r.series,
                r.x_label,
                r.x,
                r.subscribers,
                r.publishers,
                r.payload_bytes,
                r.offered_per_s,
                r.delivered_per_s,
                r.lost,
                r.loss,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                r.server_cpu_pct,
                r.client_cpu_pct,
                r.other_cpu_pct,
                r.server_peak_rss_kib,
                r.sustained,
                r.repeats,
                r.held.map_or(String::new(), |h| h.to_string()),
                opt(r.rss_per_conn_kib),
                opt(r.connect_per_s),
                r.note.replace('"', "'"),
            ));
        }
        std::fs::write(dir.join("results.csv"), csv).context("cannot write results.csv")?;
        Ok(())
    }
}

/// `1.2M`, `35k`, `640`: a rate for the console.
pub fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Prints one row as a line of the console report.
pub fn print_row(r: &Row) {
    if let Some(held) = r.held {
        println!(
            "  {:<24} {:>7} idle connections  {:>6.2} KiB each  {:>8} connects/s  peak RSS {} MiB",
            r.series,
            held,
            r.rss_per_conn_kib.unwrap_or(0.0),
            short(r.connect_per_s.unwrap_or(0.0)),
            r.server_peak_rss_kib / 1024
        );
        return;
    }
    println!(
        "  {:<24} N={:<6} {}={:<8} offered {:>7}/s delivered {:>7}/s  p50 {:>8.0} µs  p99 {:>8.0} µs  max {:>8.0} µs  cpu {:>3.0}% (client {:>3.0}%, other {:>3.0}%)  {}",
        r.series,
        r.subscribers,
        r.x_label,
        short(r.x),
        short(r.offered_per_s),
        short(r.delivered_per_s),
        r.p50_us,
        r.p99_us,
        r.max_us,
        r.server_cpu_pct,
        r.client_cpu_pct,
        r.other_cpu_pct,
        if r.sustained { "ok" } else { &r.note }
    );
}
