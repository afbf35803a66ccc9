//! `switchboard-bench`: races switchboard against the systems users would otherwise
//! pick (Mosquitto, a Node `ws` server, a Node Socket.IO server) on the same machine
//! in the same run, and writes CSV, JSON and SVG charts. See docs/benchmarks.md.
//!
//! A separate binary so the daemon in the .deb carries none of this. The process
//! layout: this process (the coordinator) pins itself to core 1, starts each system
//! on core 0, runs the publishers, and re-executes itself as `worker` processes that
//! hold the subscribers (one process may open only about 20,000 files here). When
//! Mosquitto runs, the whole harness first re-executes itself under `unshare -n`:
//! Mosquitto's websockets listener binds every interface, and in a private network
//! namespace the only interface is loopback.
//!
//! The command line only: what it runs is in the library (`src/lib.rs`), which the
//! `cargo bench` benches share.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use switchboard_bench::client::System;
use switchboard_bench::peers::{Setup, NETNS_ENV};
use switchboard_bench::{host, scenarios, worker};

#[derive(Parser)]
#[command(
    version,
    about = "Race switchboard against Mosquitto, Node ws and Socket.IO, and chart it"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Small sizes and short windows: checks the harness end to end (under two
    /// minutes for `all`), not figures.
    #[arg(long, global = true)]
    quick: bool,
    /// Runs of each point; the median is reported (1 in quick mode unless given).
    #[arg(long, global = true)]
    repeats: Option<usize>,
    /// Where results go: `<out>/<scenario>/results.{json,csv}` and `*.svg`.
    #[arg(long, global = true, default_value = "target/bench-results")]
    out: PathBuf,
    /// Systems to race (comma separated); default all four.
    #[arg(long, global = true, value_enum, value_delimiter = ',')]
    systems: Vec<System>,
    /// Subscriber counts for `fanout` and `latency` (comma separated).
    #[arg(long, global = true, value_delimiter = ',')]
    subs: Vec<usize>,
    /// Seconds of warm-up before each measured window (not counted).
    #[arg(long, global = true)]
    warmup: Option<f64>,
    /// Seconds of each measured window.
    #[arg(long, global = true)]
    measure: Option<f64>,
    /// Idle connections for `connections`.
    #[arg(long, global = true)]
    connections: Option<usize>,
    /// The switchboard binary; default: `switchboard` next to this executable
    /// (`cargo build --release -p switchboard` puts it there).
    #[arg(long, global = true)]
    switchboard_bin: Option<PathBuf>,
    /// The Node peers' directory (`ws-server.js`, `socketio-server.js`, package.json).
    #[arg(long, global = true)]
    peers_dir: Option<PathBuf>,
    /// permessage-deflate: switchboard (every frame compressed, once per publish) and
    /// the Node `ws` peer (`perMessageDeflate`, per connection) compress, and their
    /// subscribers offer it. Mosquitto and Socket.IO are unchanged.
    #[arg(long, global = true)]
    deflate: bool,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// 1 publisher → N WebSocket subscribers, offered rate stepped to saturation.
    Fanout,
    /// Many MQTT sensors → a few WebSocket dashboards.
    Fanin,
    /// Latency against the number of subscribers at a fixed delivery rate.
    Latency,
    /// Latency and rate against payload size (64 B … 1 MiB).
    Payload,
    /// A publish over HTTP against the same request over the open WebSocket.
    Http,
    /// As many idle WebSocket connections as asked: RSS per connection, connect rate.
    Connections,
    /// Plain payloads against end-to-end encrypted envelopes.
    E2e,
    /// Several boxes sharing one Redis: switchboard's `[cluster]` against Socket.IO with
    /// its Redis and Redis-streams adapters; not part of `all` (it restarts a Redis).
    Cluster,
    /// Every scenario in turn.
    All,
    /// Redraws the charts of earlier results from each `DIR/results.json`.
    Chart {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Internal: a process holding subscribers for the coordinator.
    #[command(hide = true)]
    Worker { spec: String },
}

impl Scenario {
    fn names(&self) -> Vec<&'static str> {
        match self {
            Scenario::Fanout => vec!["fanout"],
            Scenario::Fanin => vec!["fanin"],
            Scenario::Latency => vec!["latency"],
            Scenario::Payload => vec!["payload"],
            Scenario::Http => vec!["http"],
            Scenario::Connections => vec!["connections"],
            Scenario::E2e => vec!["e2e"],
            Scenario::Cluster => vec!["cluster"],
            Scenario::All => scenarios::ALL.to_vec(),
            Scenario::Worker { .. } | Scenario::Chart { .. } => Vec::new(),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Scenario::Worker { spec } = &cli.scenario {
        return worker::run(spec);
    }
    if let Scenario::Chart { dirs } = &cli.scenario {
        return dirs.iter().try_for_each(|dir| scenarios::redraw(dir));
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let setup = Setup {
        switchboard_bin: cli
            .switchboard_bin
            .clone()
            .unwrap_or_else(|| exe.with_file_name("switchboard")),
        peers_dir: cli
            .peers_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")),
        pin: false,
        deflate: cli.deflate,
        switchboard_config: None,
        node_args: Vec::new(),
    };
    let systems = if cli.systems.is_empty() {
        System::ALL.to_vec()
    } else {
        cli.systems.clone()
    };

    if std::env::var_os(NETNS_ENV).is_none() {
        setup.prepare_node();
        if systems.contains(&System::Mosquitto) && can_unshare() {
            // Everything from here runs again inside a private network namespace.
            let status = Command::new("unshare")
                .args(["-n", "--"])
                .arg(&exe)
                .args(std::env::args_os().skip(1))
                .env(NETNS_ENV, "1")
                .status()
                .context("cannot run unshare")?;
            std::process::exit(status.code().unwrap_or(1));
        }
    } else {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        if !up {
            bail!(
                "cannot bring up loopback in the private network namespace (`ip link set lo up`)"
            );
        }
    }

    let machine = host::machine();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2 && host::taskset_available() && host::pin_self(1);
    println!("machine: {machine}");
    println!(
        "{}",
        if pinned {
            "systems on core 0, load generator on core 1"
        } else {
            "NOT PINNED (taskset unavailable or one core): figures are indicative only"
        }
    );
    let limit = host::raise_open_file_limit();
    let out = if cli.out.is_absolute() {
        cli.out.clone()
    } else {
        std::env::current_dir()?.join(&cli.out)
    };
    let secs = |v: Option<f64>, full: f64, quick: f64| {
        Duration::from_secs_f64(v.unwrap_or(if cli.quick { quick } else { full }))
    };
    let opts = scenarios::Opts {
        quick: cli.quick,
        repeats: cli.repeats.unwrap_or(if cli.quick { 1 } else { 3 }),
        out,
        systems,
        subs: (!cli.subs.is_empty()).then(|| cli.subs.clone()),
        warmup: secs(cli.warmup, 1.0, 0.2),
        measure: secs(cli.measure, 3.0, 0.5),
        connections: cli
            .connections
            .unwrap_or(if cli.quick { 200 } else { 19_000 }),
        setup: Setup {
            pin: pinned,
            ..setup
        },
        machine,
        pinned,
    };
    if cli.deflate {
        println!(
            "permessage-deflate on: switchboard compresses every frame once per publish, Node ws per connection; their subscribers offer it"
        );
    }
    println!(
        "open-file limit {limit}; {} repeat(s) per point, {:.1} s warm-up + {:.1} s measured",
        opts.repeats,
        opts.warmup.as_secs_f64(),
        opts.measure.as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        for name in cli.scenario.names() {
            scenarios::run(name, &opts).await?;
        }
        anyhow::Ok(())
    })
}

/// Whether `unshare -n` works here (root, or a user namespace allowed).
fn can_unshare() -> bool {
    let ok = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("`unshare -n` is not available (run as root): Mosquitto will be skipped");
    }
    ok
}
