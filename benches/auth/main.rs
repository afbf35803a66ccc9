//! The cost of authentication, against the real daemon on loopback: how fast
//! connections are set up with each kind of credential, relative to anonymous ones, and
//! how much publish throughput the per-publish permission check costs. Every figure is
//! a ratio to a baseline measured in the same run. See docs/benchmarks.md for the
//! method and the results.
//!
//! Run: `cargo bench --bench auth` (about 25 s after the build), or
//! `cargo bench --bench auth -- --quick` (one round, fewer connections and messages: a
//! smoke test). Options:
//! `--rounds 3` (every point this many times, the order reversed every other round,
//! the median reported), `--connections 5000`, `--concurrency 16` (connecting tasks),
//! `--messages 500000`, `--window 256` (messages in flight).
//!
//! Like the fan-out bench, each point gets a fresh daemon pinned to core 0 and the bench
//! runs on core 1 (when `taskset` is there). A point during which other work used more
//! than 15% of a core is run again, up to three tries, and the quietest kept.

mod creds;
mod daemon;
mod publish;
mod setup;
mod window;

use std::fmt::Write as _;
use std::io;
use std::rc::Rc;
use std::time::Instant;

use switchboard_bench::daemon::Daemon;
use switchboard_bench::harness::{self, thousands};
use switchboard_bench::host;

/// Other work above this share of a core makes a point run again.
const NOISY: f64 = 0.15;
const TRIES: usize = 3;

struct Options {
    rounds: usize,
    connections: usize,
    concurrency: usize,
    messages: u64,
    window: u64,
    quick: bool,
}

fn options() -> Options {
    let mut o = Options {
        rounds: 3,
        connections: 5000,
        concurrency: 16,
        messages: 500_000,
        window: 256,
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    let number = harness::number_arg;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Passed by `cargo bench`.
            "--bench" => {}
            "--quick" => {
                o.quick = true;
                o.rounds = 1;
                o.connections = 500;
                o.messages = 50_000;
            }
            "--rounds" => o.rounds = number("--rounds", args.next()) as usize,
            "--connections" => o.connections = number("--connections", args.next()) as usize,
            "--concurrency" => o.concurrency = number("--concurrency", args.next()) as usize,
            "--messages" => o.messages = number("--messages", args.next()).max(100),
            "--window" => o.window = number("--window", args.next()),
            other => {
                eprintln!(
                    "unknown argument {other:?}; see the doc comment of benches/auth/main.rs"
                );
                std::process::exit(2);
            }
        }
    }
    o
}

/// What a connecting client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    Anonymous,
    Hs256,
    Rs256,
    ApiKey,
}

const CREDENTIALS: [Credential; 4] = [
    Credential::Anonymous,
    Credential::Hs256,
    Credential::Rs256,
    Credential::ApiKey,
];

impl Credential {
    fn name(self) -> &'static str {
        match self {
            Credential::Anonymous => "anonymous",
            Credential::Hs256 => "HS256 JWT",
            Credential::Rs256 => "RS256 JWT",
            Credential::ApiKey => "API key",
        }
    }

    /// The upgrade request target of each connection.
    fn paths(self, c: &creds::Credentials, n: usize) -> Vec<String> {
        let token = |t: &str| format!("/ws?token={t}");
        match self {
            Credential::Anonymous => vec!["/ws".to_owned(); n],
            Credential::Hs256 => c.hs256.iter().take(n).map(|t| token(t)).collect(),
            Credential::Rs256 => c.rs256.iter().take(n).map(|t| token(t)).collect(),
            Credential::ApiKey => vec![token(&c.api_key); n],
        }
    }
}

/// Whose grants the publisher and the subscriber have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The admin token: the check returns at once.
    Off,
    /// A token with only the matching filter: what a token session costs besides
    /// walking the list.
    OnOne,
    /// A token with [`creds::GRANT_FILTERS`] filters, the matching one last.
    On,
}

const CHECKS: [Check; 3] = [Check::Off, Check::OnOne, Check::On];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Off => "off (admin token)",
            Check::OnOne => "on (1 filter)",
            Check::On => "on (20 filters)",
        }
    }

    fn credential(self, c: &creds::Credentials) -> &str {
        match self {
            Check::Off => &c.admin,
            Check::OnOne => &c.scoped_one,
            Check::On => &c.scoped,
        }
    }
}

struct SetupRun {
    round: usize,
    credential: Credential,
    tries: usize,
    setup: setup::Setup,
}

struct PublishRun {
    round: usize,
    check: Check,
    tries: usize,
    throughput: publish::Throughput,
}

async fn setup_point(
    c: &creds::Credentials,
    credential: Credential,
    o: &Options,
    pinned: bool,
) -> io::Result<setup::Setup> {
    let paths = Rc::new(credential.paths(c, o.connections));
    let d = Daemon::start(env!("CARGO_BIN_EXE_switchboard"), &c.config, pinned);
    let (figures, conns) = setup::run(d.addr, paths, o.concurrency, d.cpu_clock()).await?;
    // The clients close first, then the daemon goes.
    drop(conns);
    drop(d);
    Ok(figures)
}

async fn publish_point(
    c: &creds::Credentials,
    check: Check,
    o: &Options,
    pinned: bool,
) -> io::Result<publish::Throughput> {
    let d = Daemon::start(env!("CARGO_BIN_EXE_switchboard"), &c.config, pinned);
    let token = check.credential(c);
    publish::run(d.addr, token, token, o.messages, o.window, d.cpu_clock()).await
}

fn main() {
    let o = options();
    // Read before pinning, which narrows what this process may use to one core.
    let machine = format!("{}, {}", harness::utc_date(), host::machine());
    let started = Instant::now();
    eprintln!(
        "  making an RSA key, an API key and {} tokens per algorithm…",
        thousands(o.connections as f64)
    );
    let c = creds::make(o.connections);
    eprintln!(
        "  credentials ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // After the minting threads are gone, so every later thread inherits the core.
    let pinned = host::taskset_available() && host::pin_self(1);
    let files = host::raise_open_file_limit();
    if (o.connections + 100) as u64 > files {
        eprintln!(
            "warning: the open-file limit ({files}) is below {} connections",
            o.connections
        );
    }

    let mut head = String::new();
    let _ = writeln!(head, "switchboard auth benchmark, {machine}");
    let _ = writeln!(
        head,
        "{}",
        harness::pinning_line(
            pinned,
            "daemon pinned to core 0 (taskset -c 0), bench to core 1"
        )
    );
    print!("{head}");

    let (rt, local) = harness::local_runtime();
    let (setups, publishes) = local.block_on(&rt, async {
        let mut setups = Vec::new();
        for round in 1..=o.rounds {
            // Every other round in reverse, so no credential always runs first.
            let mut order = CREDENTIALS.to_vec();
            if round % 2 == 0 {
                order.reverse();
            }
            for credential in order {
                eprintln!(
                    "  round {round}/{}: setup, {}…",
                    o.rounds,
                    credential.name()
                );
                let mut best: Option<SetupRun> = None;
                for tries in 1..=TRIES {
                    match setup_point(&c, credential, &o, pinned).await {
                        Ok(setup) => {
                            if best.as_ref().is_none_or(|b| {
                                setup.window.other_share() < b.setup.window.other_share()
                            }) {
                                best = Some(SetupRun {
                                    round,
                                    credential,
                                    tries,
                                    setup,
                                });
                            }
                        }
                        Err(e) => eprintln!("  {} failed: {e}", credential.name()),
                    }
                    if best
                        .as_ref()
                        .is_some_and(|b| b.setup.window.other_share() <= NOISY)
                    {
                        break;
                    }
                }
                if let Some(b) = best {
                    setups.push(b);
                }
            }
        }
        let mut publishes = Vec::new();
        for round in 1..=o.rounds {
            let mut order = CHECKS.to_vec();
            if round % 2 == 0 {
                order.reverse();
            }
            for check in order {
                eprintln!(
                    "  round {round}/{}: publish, checks {}…",
                    o.rounds,
                    check.name()
                );
                let mut best: Option<PublishRun> = None;
                for tries in 1..=TRIES {
                    match publish_point(&c, check, &o, pinned).await {
                        Ok(t) => {
                            if best.as_ref().is_none_or(|b| {
                                t.window.other_share() < b.throughput.window.other_share()
                            }) {
                                best = Some(PublishRun {
                                    round,
                                    check,
                                    tries,
                                    throughput: t,
                                });
                            }
                        }
                        Err(e) => eprintln!("  checks {} failed: {e}", check.name()),
                    }
                    if best
                        .as_ref()
                        .is_some_and(|b| b.throughput.window.other_share() <= NOISY)
                    {
                        break;
                    }
                }
                if let Some(b) = best {
                    publishes.push(b);
                }
            }
        }
        (setups, publishes)
    });
    print!("{}", report(&o, &setups, &publishes));
    eprintln!("  done in {:.0} s", started.elapsed().as_secs_f64());
    write_json(&o, &machine, pinned, &setups, &publishes);
}

/// The median of some values (the upper one of the middle two).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}–{}", thousands(lo), thousands(hi))
}

/// One row of a table: the figures of every round of one point.
struct Row {
    name: &'static str,
    /// The round of each figure below.
    round: Vec<usize>,
    rate: Vec<f64>,
    /// The daemon's CPU time per connection (µs) or per message (ns).
    cost: Vec<f64>,
    server: Vec<f64>,
    bench: Vec<f64>,
    other: Vec<f64>,
}

/// Writes rows whose ratios are to the first row's medians.
fn table(t: &mut String, what: &str, cost_unit: &str, rows: &[Row]) {
    let _ = writeln!(
        t,
        "{:<18}  {:>9}  {:>17}  {:>5}  {:>11}  {:>12}  {:>5}  {:>5}  {:>5}  {:>5}",
        what,
        "per sec",
        "range",
        "ratio",
        "round ratio",
        "srv CPU",
        "ratio",
        "srv",
        "bench",
        "other"
    );
    let Some(first) = rows.first() else { return };
    let (base_rate, base_cost) = (median(first.rate.clone()), median(first.cost.clone()));
    for r in rows {
        let (rate, cost) = (median(r.rate.clone()), median(r.cost.clone()));
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max) * 100.0;
        // The row's rate over the first row's in the same round, lowest and highest.
        let paired: Vec<f64> = r
            .round
            .iter()
            .zip(&r.rate)
            .filter_map(|(round, rate)| {
                let i = first.round.iter().position(|b| b == round)?;
                Some(rate / first.rate[i])
            })
            .collect();
        let lo = paired.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = paired.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            t,
            "{:<18}  {:>9}  {:>17}  {:>5.2}  {:>11}  {:>6.1} {cost_unit}  {:>5.2}  {:>4.0}%  {:>4.0}%  {:>4.0}%",
            r.name,
            thousands(rate),
            range(&r.rate),
            rate / base_rate,
            format!("{lo:.2}–{hi:.2}"),
            cost,
            cost / base_cost,
            median(r.server.clone()) * 100.0,
            median(r.bench.clone()) * 100.0,
            max(&r.other),
        );
    }
}

fn report(o: &Options, setups: &[SetupRun], publishes: &[PublishRun]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nconnection setup: {} connections, {} connecting at a time, each kept open until all \
         have their welcome",
        thousands(o.connections as f64),
        o.concurrency
    );
    let rows: Vec<Row> = CREDENTIALS
        .iter()
        .map(|&cred| {
            let runs: Vec<&setup::Setup> = setups
                .iter()
                .filter(|r| r.credential == cred)
                .map(|r| &r.setup)
                .collect();
            let each = |f: fn(&setup::Setup) -> f64| runs.iter().map(|s| f(s)).collect();
            Row {
                name: cred.name(),
                round: setups
                    .iter()
                    .filter(|r| r.credential == cred)
                    .map(|r| r.round)
                    .collect(),
                rate: each(setup::Setup::per_sec),
                cost: each(setup::Setup::server_us_per_conn),
                server: each(|x| x.window.server_share()),
                bench: each(|x| x.window.bench_share()),
                other: each(|x| x.window.other_share()),
            }
        })
        .filter(|r| !r.rate.is_empty())
        .collect();
    table(&mut t, "credential", "µs", &rows);

    let _ = writeln!(
        t,
        "\npublish throughput: {} pubs to 1 subscriber, {} in flight, the last {} measured",
        thousands(o.messages as f64),
        o.window,
        thousands((o.messages - o.messages / 10) as f64)
    );
    let rows: Vec<Row> = CHECKS
        .iter()
        .map(|&check| {
            let runs: Vec<&publish::Throughput> = publishes
                .iter()
                .filter(|r| r.check == check)
                .map(|r| &r.throughput)
                .collect();
            let each = |f: fn(&publish::Throughput) -> f64| runs.iter().map(|s| f(s)).collect();
            Row {
                name: check.name(),
                round: publishes
                    .iter()
                    .filter(|r| r.check == check)
                    .map(|r| r.round)
                    .collect(),
                rate: each(publish::Throughput::per_sec),
                cost: each(publish::Throughput::server_ns_per_msg),
                server: each(|x| x.window.server_share()),
                bench: each(|x| x.window.bench_share()),
                other: each(|x| x.window.other_share()),
            }
        })
        .filter(|r| !r.rate.is_empty())
        .collect();
    table(&mut t, "permission check", "ns", &rows);

    let retried = setups.iter().filter(|r| r.tries > 1).count()
        + publishes.iter().filter(|r| r.tries > 1).count();
    let _ = writeln!(
        t,
        "\nEach row: the median of {} round(s); range: lowest–highest rate. ratio: the row's \
         median over the first row's; round ratio: the row's rate over the first row's in \
         the same round, lowest–highest. srv CPU: the daemon's CPU time per connection or \
         message. srv, bench: share of a core each used (median); other: the most that other \
         work on the machine used during a point ({retried} point(s) were run again for it).",
        o.rounds
    );
    t
}

fn write_json(
    o: &Options,
    machine: &str,
    pinned: bool,
    setups: &[SetupRun],
    publishes: &[PublishRun],
) {
    let json = serde_json::json!({
        "machine": machine,
        "pinned": pinned,
        "quick": o.quick,
        "rounds": o.rounds,
        "connections": o.connections,
        "concurrency": o.concurrency,
        "messages": o.messages,
        "window": o.window,
        "grant_filters": creds::GRANT_FILTERS,
        "setup": setups.iter().map(|r| serde_json::json!({
            "round": r.round,
            "credential": r.credential.name(),
            "tries": r.tries,
            "connections_per_sec": r.setup.per_sec(),
            "seconds": r.setup.window.elapsed.as_secs_f64(),
            "server_cpu_us_per_connection": r.setup.server_us_per_conn(),
            "connections_measured": r.setup.connections,
            "server_core": r.setup.window.server_share(),
            "bench_core": r.setup.window.bench_share(),
            "other_cpu": r.setup.window.other_share(),
        })).collect::<Vec<_>>(),
        "publish": publishes.iter().map(|r| serde_json::json!({
            "round": r.round,
            "check": r.check.name(),
            "tries": r.tries,
            "messages_per_sec": r.throughput.per_sec(),
            "messages_measured": r.throughput.messages,
            "seconds": r.throughput.window.elapsed.as_secs_f64(),
            "server_cpu_ns_per_message": r.throughput.server_ns_per_msg(),
            "server_core": r.throughput.window.server_share(),
            "bench_core": r.throughput.window.bench_share(),
            "other_cpu": r.throughput.window.other_share(),
        })).collect::<Vec<_>>(),
    });
    harness::write_results(env!("CARGO_TARGET_TMPDIR"), "bench-auth.json", &json);
}
