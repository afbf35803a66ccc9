//! WebSocket fan-out on loopback: switchboard against a minimal tokio-tungstenite
//! broadcast server measured in the same run, so the figures are ratios as much as
//! numbers. See docs/benchmarks.md for the method and the results.
//!
//! Run: `cargo bench --bench fanout` (about 2 minutes), or
//! `cargo bench --bench fanout -- --quick` (one round, short windows, fewer idle
//! connections). Options: `--rounds 3` (every case is run this many times, interleaved,
//! and the median reported), `--subs 1,100,1000`, `--idle 10000` (0 skips the memory
//! test), `--only switchboard|baseline`, `--window 256` (messages in flight per
//! subscriber), `--deflate` (switchboard compresses every frame for clients that all
//! offer permessage-deflate; the baseline has no compression and ignores the offer).
//!
//! The servers run pinned to core 0 and every client of this process to core 1, so a
//! 2-core machine measures one server core against one client core.

mod baseline;
mod idle;
mod load;
mod procs;

use std::fmt::Write as _;
use std::time::Duration;

use procs::{Kind, Server};
use switchboard_bench::harness::{self, thousands};
use switchboard_bench::{clock, host};

struct Options {
    subs: Vec<usize>,
    idle: usize,
    kinds: Vec<Kind>,
    timing: load::Timing,
    window: u64,
    quick: bool,
    rounds: usize,
    /// Serve with `ws.compression` on (every frame compressed) and have every client
    /// offer it.
    deflate: bool,
}

fn options() -> Options {
    let mut o = Options {
        subs: vec![1, 100, 1000],
        idle: 10_000,
        kinds: vec![Kind::Baseline, Kind::Switchboard],
        timing: load::Timing {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(3),
            light_warmup: Duration::from_millis(500),
            light_measure: Duration::from_secs(2),
        },
        quick: false,
        window: load::WINDOW,
        rounds: 3,
        deflate: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Passed by `cargo bench`.
            "--bench" => {}
            "--quick" => {
                o.quick = true;
                o.rounds = 1;
                o.idle = o.idle.min(2_000);
                o.timing = load::Timing {
                    warmup: Duration::from_millis(300),
                    measure: Duration::from_secs(1),
                    light_warmup: Duration::from_millis(200),
                    light_measure: Duration::from_secs(1),
                };
            }
            "--deflate" => o.deflate = true,
            "--subs" => {
                o.subs = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().parse().expect("--subs takes numbers: 1,100,1000"))
                    .filter(|&n| n > 0)
                    .collect();
            }
            "--idle" => {
                o.idle = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--idle takes a number of connections");
            }
            "--rounds" => {
                o.rounds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&r| r > 0)
                    .expect("--rounds takes a number (1 or more)");
            }
            "--window" => {
                o.window = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&w| w > 1)
                    .expect("--window takes a number of messages (2 or more)");
            }
            "--only" => {
                o.kinds = match args.next().as_deref() {
                    Some("switchboard") => vec![Kind::Switchboard],
                    Some("baseline") => vec![Kind::Baseline],
                    _ => panic!("--only takes switchboard or baseline"),
                };
            }
            other => {
                eprintln!(
                    "unknown argument {other:?}; see the doc comment of benches/fanout/main.rs"
                );
                std::process::exit(2);
            }
        }
    }
    o
}

fn main() {
    if let Ok(listen) = std::env::var(procs::BASELINE_ENV) {
        baseline::run(&listen);
        return;
    }
    let o = options();
    // Read before pinning, which narrows what this process may use to one core.
    let machine = format!("{}, {}", harness::utc_date(), host::machine());
    // Before any thread exists, so every later thread inherits the core.
    let pinned = host::taskset_available() && host::pin_self(1);
    clock::init_clock();
    let files = host::raise_open_file_limit();
    if o.idle + 100 > files as usize {
        eprintln!(
            "warning: the open-file limit ({files}) is below {} idle connections",
            o.idle
        );
    }

    let mut head = String::new();
    let _ = writeln!(head, "switchboard fan-out benchmark, {machine}");
    if o.deflate {
        let _ = writeln!(
            head,
            "permessage-deflate: switchboard compresses every frame (threshold 0, level 6); the baseline has none"
        );
    }
    let _ = writeln!(
        head,
        "{}",
        harness::pinning_line(
            pinned,
            "servers pinned to core 0 (taskset -c 0), bench clients to core 1"
        )
    );
    let _ = writeln!(
        head,
        "data: a {}-byte JSON string per message; saturation: {} messages in flight per \
         subscriber; light load: 100,000 deliveries/s, at most 10,000 publishes/s",
        load::DATA_BYTES,
        o.window
    );
    print!("{head}");

    let (rt, local) = harness::local_runtime();
    let (cases, idles) = local.block_on(&rt, async {
        let mut cases = Vec::new();
        // Rounds interleave, so a disturbance that lasts a while hits one round of
        // several cases rather than every round of one case.
        for round in 1..=o.rounds {
            for &subs in &o.subs {
                for &kind in &o.kinds {
                    eprintln!(
                        "  round {round}/{}: {subs} subscriber(s), {}…",
                        o.rounds,
                        kind.name()
                    );
                    if let Some(mut case) = run_case(kind, subs, &o, pinned).await {
                        case.round = round;
                        cases.push(case);
                    }
                }
            }
        }
        let mut idles = Vec::new();
        if o.idle > 0 {
            for &kind in &o.kinds {
                let server = Server::start(kind, pinned, o.deflate);
                eprintln!("  {} idle connections, {}…", o.idle, kind.name());
                match idle::run(&server, o.idle, o.deflate).await {
                    Ok(i) => idles.push(i),
                    Err(e) => eprintln!("  idle connections to {} failed: {e}", kind.name()),
                }
            }
        }
        (cases, idles)
    });

    let table = report(&o, &cases, &idles);
    println!("\n{table}");
    write_json(&o, &machine, pinned, &cases, &idles);
}

/// Busy CPU from other work (in cores) above which a case is run again.
const DISTURBED: f64 = 0.15;

/// Runs one case on a fresh server. The machine may be shared: a case during which
/// other work kept a core busy is run again (three tries, the quietest kept).
async fn run_case(kind: Kind, subs: usize, o: &Options, pinned: bool) -> Option<load::Case> {
    let mut best: Option<load::Case> = None;
    for attempt in 1..=3 {
        let server = Server::start(kind, pinned, o.deflate);
        match load::run(&server, subs, o.timing, o.window, o.deflate).await {
            Ok(case) => {
                let other = case.other_cpu();
                if best.as_ref().is_none_or(|b| other < b.other_cpu()) {
                    best = Some(case);
                }
                if other <= DISTURBED {
                    break;
                }
                if attempt < 3 {
                    eprintln!(
                        "  other work used {:.0}% of a core meanwhile: running it again",
                        other * 100.0
                    );
                }
            }
            Err(e) => eprintln!("  {} with {subs} subscribers failed: {e}", kind.name()),
        }
    }
    best
}

/// The median run of one case (by deliveries/s), with the lowest and highest rate.
struct Summary<'a> {
    median: &'a load::Case,
    low: f64,
    high: f64,
    runs: usize,
}

fn summarise(cases: &[load::Case], kind: Kind, subs: usize) -> Option<Summary<'_>> {
    let mut runs: Vec<&load::Case> = cases
        .iter()
        .filter(|c| c.kind == kind && c.subs == subs)
        .collect();
    runs.sort_by(|a, b| {
        a.saturation
            .deliveries_per_sec
            .total_cmp(&b.saturation.deliveries_per_sec)
    });
    Some(Summary {
        median: runs.get(runs.len() / 2)?,
        low: runs.first()?.saturation.deliveries_per_sec,
        high: runs.last()?.saturation.deliveries_per_sec,
        runs: runs.len(),
    })
}

fn report(o: &Options, cases: &[load::Case], idles: &[idle::Idle]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>5}  {:<11}  {:>13}  {:>13}  {:>5}  {:>8}  {:>8}  {:>6}  {:>6}  {:>6}  {:>6}  |  {:>11}  {:>8}  {:>8}",
        "subs",
        "server",
        "deliveries/s",
        "range",
        "ratio",
        "sat p50",
        "sat p99",
        "srvCPU",
        "cliCPU",
        "other",
        "lost",
        "light pub/s",
        "p50",
        "p99"
    );
    for &subs in &o.subs {
        let baseline = summarise(cases, Kind::Baseline, subs)
            .map(|b| b.median.saturation.deliveries_per_sec)
            .filter(|&b| b > 0.0);
        for &kind in &o.kinds {
            let Some(sum) = summarise(cases, kind, subs) else {
                continue;
            };
            let c = sum.median;
            let s = &c.saturation;
            let ratio = baseline
                .map(|b| format!("{:.2}", s.deliveries_per_sec / b))
                .unwrap_or_else(|| "-".into());
            let range = if sum.runs > 1 {
                format!("{}–{}", millions(sum.low), millions(sum.high))
            } else {
                "-".into()
            };
            let lost: u64 = cases
                .iter()
                .filter(|r| r.kind == kind && r.subs == subs)
                .map(|r| r.saturation.lost + r.light.lost)
                .sum();
            let _ = writeln!(
                t,
                "{:>5}  {:<11}  {:>13}  {:>13}  {:>5}  {:>8}  {:>8}  {:>5.0}%  {:>5.0}%  {:>5.0}%  {:>6}  |  {:>11}  {:>8}  {:>8}",
                subs,
                kind.name(),
                thousands(s.deliveries_per_sec),
                range,
                ratio,
                clock::us(s.p50_us),
                clock::us(s.p99_us),
                s.server_cpu * 100.0,
                s.client_cpu * 100.0,
                s.other_cpu * 100.0,
                lost,
                thousands(c.light_rate),
                clock::us(c.light.p50_us),
                clock::us(c.light.p99_us),
            );
        }
    }
    for c in cases {
        let dropped: u64 = [c.saturation.server_dropped, c.light.server_dropped]
            .iter()
            .flatten()
            .sum();
        let what = format!(
            "{} with {} subscribers, round {}",
            c.kind.name(),
            c.subs,
            c.round
        );
        if c.other_cpu() > DISTURBED {
            let _ = writeln!(
                t,
                "  note: {what}: other work used {:.0}% of a core during the measurement",
                c.other_cpu() * 100.0
            );
        }
        if c.failures > 0 || c.lagged_notices > 0 || dropped > 0 {
            let _ = writeln!(
                t,
                "  note: {what}: {dropped} dropped (server), {} reported in lagged notices, \
                 {} connection failures{}",
                c.lagged_notices,
                c.failures,
                c.first_failure
                    .as_ref()
                    .map(|f| format!(" (first: {f})"))
                    .unwrap_or_default()
            );
        }
    }
    if !idles.is_empty() {
        let _ = writeln!(
            t,
            "\n{:>12}  {:<11}  {:>10}  {:>10}  {:>10}",
            "idle conns", "server", "RSS before", "RSS after", "per conn"
        );
        for i in idles {
            let _ = writeln!(
                t,
                "{:>12}  {:<11}  {:>7} MiB  {:>7} MiB  {:>6.1} KiB",
                thousands(i.connections as f64),
                i.kind.name(),
                i.rss_before_kib / 1024,
                i.rss_after_kib / 1024,
                i.kib_per_connection()
            );
            if let (Some(c), Some(s)) = (i.server_connections, i.server_subscriptions) {
                if c != i.connections as u64 || s != i.connections as u64 {
                    let _ = writeln!(
                        t,
                        "  note: switchboard counted {c} connections, {s} subscriptions"
                    );
                }
            }
        }
    }
    let _ = writeln!(
        t,
        "\nEach row is the median of {} round(s) by deliveries/s (range: lowest–highest). \
         ratio: switchboard's median over the baseline's. lost: deliveries never received \
         (all rounds). sat: at saturation, latency includes queueing; light: at the fixed \
         rate. CPU: share of one core during the saturation window.",
        o.rounds
    );
    t
}

/// `6.63M` or `915k`: compact, for ranges.
fn millions(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else {
        format!("{:.0}k", v / 1e3)
    }
}

fn write_json(
    o: &Options,
    machine: &str,
    pinned: bool,
    cases: &[load::Case],
    idles: &[idle::Idle],
) {
    let phase = |p: &load::Phase| {
        serde_json::json!({
            "deliveries_per_sec": p.deliveries_per_sec,
            "publishes_per_sec": p.publishes_per_sec,
            "p50_us": p.p50_us,
            "p99_us": p.p99_us,
            "latency_samples": p.samples,
            "server_cpu": p.server_cpu,
            "client_cpu": p.client_cpu,
            "other_cpu": p.other_cpu,
            "lost": p.lost,
            "server_dropped": p.server_dropped,
        })
    };
    let json = serde_json::json!({
        "machine": machine,
        "pinned": pinned,
        "quick": o.quick,
        "data_bytes": load::DATA_BYTES,
        "window": o.window,
        "rounds": o.rounds,
        "deflate": o.deflate,
        "cases": cases.iter().map(|c| serde_json::json!({
            "round": c.round,
            "server": c.kind.name(),
            "subscribers": c.subs,
            "saturation": phase(&c.saturation),
            "light": phase(&c.light),
            "light_publishes_per_sec": c.light_rate,
            "lagged_notices": c.lagged_notices,
            "failures": c.failures,
        })).collect::<Vec<_>>(),
        "idle": idles.iter().map(|i| serde_json::json!({
            "server": i.kind.name(),
            "connections": i.connections,
            "rss_before_kib": i.rss_before_kib,
            "rss_after_kib": i.rss_after_kib,
            "kib_per_connection": i.kib_per_connection(),
        })).collect::<Vec<_>>(),
    });
    harness::write_results(env!("CARGO_TARGET_TMPDIR"), "fanout-bench.json", &json);
}
