//! The harness end to end, as CI runs it: `switchboard-bench all --quick` against the
//! debug switchboard and every peer installed here. Checks that each scenario wrote
//! results that parse, with a row per point for switchboard that delivered something,
//! and charts with one line per system that ran. Speeds are not asserted. Peers that
//! are not installed are skipped by the harness and recorded as such, not failures.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// switchboard-bench's default: the `switchboard` built next to it. `cargo test
/// --workspace` builds it; `cargo test -p switchboard-bench` alone may not have.
fn switchboard_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_switchboard-bench")).with_file_name("switchboard");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-p", "switchboard", "--bin", "switchboard"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot build the switchboard binary");
    }
    bin
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The number of series lines of an SVG that must parse: the charts draw each series
/// as a `<polyline>` 2 px wide, and the axes and grid 1 px wide.
fn chart_lines(path: &Path) -> usize {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .count()
}

/// The chart lines (series) the rows of a results file make.
fn series_of<'a>(rows: impl IntoIterator<Item = &'a serde_json::Value>) -> BTreeSet<&'a str> {
    rows.into_iter()
        .filter_map(|r| r["series"].as_str())
        .collect()
}

#[test]
fn quick_mode_runs_every_scenario_against_every_available_system() {
    let out = tempfile::tempdir().expect("temporary directory");
    let started = std::time::Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["all", "--quick", "--out"])
        .arg(out.path())
        .arg("--switchboard-bin")
        .arg(switchboard_bin())
        .status()
        .expect("cannot run switchboard-bench");
    assert!(status.success(), "switchboard-bench all --quick failed");
    eprintln!("quick mode took {:.0} s", started.elapsed().as_secs_f64());

    // Points per scenario in quick mode: fanout 2 subscriber counts × at least 2
    // rates; fanin 2 rates; latency 2 counts; payload 2 sizes; http 3 ways × 2
    // concurrencies; connections 1; e2e 2 shapes × 1 size.
    let points = [
        ("fanout", 4),
        ("fanin", 2),
        ("latency", 2),
        ("payload", 2),
        ("http", 6),
        ("connections", 1),
        ("e2e", 2),
    ];
    for (scenario, min_points) in points {
        let dir = out.path().join(scenario);
        let results = read_json(&dir.join("results.json"));
        let csv = std::fs::read_to_string(dir.join("results.csv")).expect("results.csv");
        let rows = results["rows"].as_array().expect("rows");
        assert_eq!(csv.lines().count(), rows.len() + 1, "{scenario}: CSV rows");
        let ours: Vec<_> = rows
            .iter()
            .filter(|r| r["system"] == "switchboard")
            .collect();
        assert!(
            ours.len() >= min_points,
            "{scenario}: {} switchboard rows, expected {min_points}: {results}",
            ours.len()
        );
        for r in &ours {
            if scenario == "connections" {
                assert!(r["held"].as_u64() > Some(0), "{scenario}: {r}");
            } else {
                assert!(r["delivered_per_s"].as_f64() > Some(0.0), "{scenario}: {r}");
            }
        }
        for s in results["skipped"].as_array().expect("skipped") {
            eprintln!("{scenario}: skipped {}: {}", s["system"], s["reason"]);
        }

        // One line per series that ran, in the scenario's main chart.
        let chart = match scenario {
            "fanout" => "fanout-100-delivered.svg".to_owned(),
            "connections" => "connections-rss.svg".to_owned(),
            _ => format!("{scenario}-delivered.svg"),
        };
        let rows_in_chart: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| scenario != "fanout" || r["subscribers"] == 100)
            .collect();
        let series = series_of(rows_in_chart.iter().copied());
        assert_eq!(
            chart_lines(&dir.join(&chart)),
            series.len(),
            "{scenario}: lines in {chart} for {series:?}"
        );
    }
}

/// `chart` redraws a run's charts from its `results.json` (committed runs in
/// docs/bench/ are redrawn this way), and says clearly when the file is not results.
#[test]
fn chart_redraws_from_results_and_refuses_other_files() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/latency.json");
    std::fs::copy(&committed, dir.path().join("results.json")).expect("copy results");
    let results = read_json(&dir.path().join("results.json"));
    let series = series_of(results["rows"].as_array().expect("rows"));
    let chart = || {
        Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .arg("chart")
            .arg(dir.path())
            .output()
            .expect("run chart")
    };
    let out = chart();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for chart in ["latency-p99.svg", "latency-delivered.svg"] {
        assert_eq!(
            chart_lines(&dir.path().join(chart)),
            series.len(),
            "{chart}"
        );
    }

    std::fs::write(dir.path().join("results.json"), "{\"rows\": 3").expect("write");
    let out = chart();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not a results file"), "{stderr}");
}
