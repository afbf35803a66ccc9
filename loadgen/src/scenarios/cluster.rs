//! The `cluster` scenario (issue 26): several boxes of one system sharing one Redis,
//! against the same system on one box.
//!
//! For each stack — switchboard with `[cluster]`, Socket.IO with
//! `@socket.io/redis-adapter` (Redis PUB/SUB) and with `@socket.io/redis-streams-adapter`
//! (one stream every process reads) — it measures, each a ladder of offered
//! deliveries/s up to the highest sustained: one box without Redis, one box with
//! Redis, and three boxes with the publisher on box A and the subscribers shared out
//! over B and C (every delivery crosses Redis). Then one point on three boxes at a
//! moderate rate during which Redis is restarted (SIGTERM, AOF `appendfsync always`,
//! started again on the same port): the messages the subscribers never got are counted
//! by their publisher sequence numbers, as every point counts them.
//!
//! Every box and Redis run on core 0 with the rest of the systems (when pinned), so the
//! figures compare stacks, not machines: three boxes here share one core.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{ladder, Opts, PLAIN_64};
use crate::client::System;
use crate::peers::{which, Server, Setup};
use crate::point::Rig;
use crate::results::{self, Row};

/// What a box of switchboard gets with the cluster on (issue 26); `{redis}` and
/// `{node}` filled in.
const CLUSTER_CONFIG: &str = r#"[cluster]
enabled = true
redis = ["redis://{redis}"]
node_id = "{node}"
partitions = 16
ack = "redis"
"#;

/// One way to run several boxes of a system on one Redis.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stack {
    Switchboard,
    SocketioRedis,
    SocketioStreams,
}

impl Stack {
    fn label(self) -> &'static str {
        match self {
            Stack::Switchboard => "switchboard",
            Stack::SocketioRedis => "socketio redis-adapter",
            Stack::SocketioStreams => "socketio redis-streams-adapter",
        }
    }

    fn system(self) -> System {
        match self {
            Stack::Switchboard => System::Switchboard,
            Stack::SocketioRedis | Stack::SocketioStreams => System::Socketio,
        }
    }

    /// Starts box `node`: on `redis` when given, alone otherwise.
    fn start(self, setup: &Setup, redis: Option<&Redis>, node: &str) -> Result<Server> {
        let mut setup = setup.clone();
        if let Some(redis) = redis {
            match self {
                Stack::Switchboard => setup.switchboard_config = Some(redis.config_for(node)?),
                Stack::SocketioRedis | Stack::SocketioStreams => {
                    let adapter = if self == Stack::SocketioRedis {
                        "redis"
                    } else {
                        "redis-streams"
                    };
                    setup.node_args = ["--adapter", adapter, "--redis", &redis.url()]
                        .map(str::to_owned)
                        .to_vec();
                }
            }
        }
        Server::start(self.system(), &setup)
    }
}

/// Why `system` has no place in this scenario here, or `None`.
pub fn not_here(system: System, setup: &Setup) -> Option<String> {
    if which("redis-server").is_none() {
        return Some("redis-server is not installed (apt-get install redis-server)".into());
    }
    match system {
        System::Switchboard => cluster_refused(&setup.switchboard_bin),
        System::Socketio => None,
        System::Mosquitto | System::NodeWs => Some("no clustering to compare".into()),
    }
}

/// `skipped: daemon has no [cluster]` until the daemon accepts the section: what
/// `switchboard check-config` says about a file with it, when it refuses it.
fn cluster_refused(bin: &Path) -> Option<String> {
    let dir = tempfile::tempdir().ok()?;
    let path = dir.path().join("cluster.toml");
    let text = CLUSTER_CONFIG
        .replace("{redis}", "127.0.0.1:6379")
        .replace("{node}", "a");
    std::fs::write(&path, text).ok()?;
    let out = std::process::Command::new(bin)
        .arg("check-config")
        .arg(&path)
        .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
        .output();
    match out {
        Ok(out) if out.status.success() => None,
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            let first = said.lines().next().unwrap_or_default();
            Some(format!("daemon has no [cluster] (check-config: {first})"))
        }
        Err(e) => Some(format!("cannot run {}: {e}", bin.display())),
    }
}

/// The scenario for `system`: switchboard's stack, or both Socket.IO stacks.
pub async fn run(system: System, opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let stacks: &[Stack] = match system {
        System::Switchboard => &[Stack::Switchboard],
        System::Socketio => &[Stack::SocketioRedis, Stack::SocketioStreams],
        System::Mosquitto | System::NodeWs => bail!("no clustering to compare"),
    };
    let subs = opts
        .subs
        .as_ref()
        .and_then(|s| s.first().copied())
        .unwrap_or(if opts.quick { 10 } else { 100 });
    let steps = opts.pick(
        &[10e3, 20e3, 50e3, 100e3, 200e3, 400e3, 700e3, 1e6, 1.5e6],
        &[5e3, 20e3],
    );
    for &stack in stacks {
        let label = stack.label();
        let mut redis = Redis::start(opts.setup.pin).await?;
        // The cost of Redis on one box: the same box without it, then with it.
        let alone = stack.start(&opts.setup, None, "a")?;
        let mut rig = Rig::new(alone, subs, 1).await?;
        let series = format!("{label} 1 box, no Redis");
        ladder(&mut rig, &steps, opts, Some(&series), rows).await?;
        rig.stop().await;

        let one = stack.start(&opts.setup, Some(&redis), "a")?;
        let mut rig = Rig::new(one, subs, 1).await?;
        let series = format!("{label} 1 box");
        ladder(&mut rig, &steps, opts, Some(&series), rows).await?;
        rig.stop().await;

        // Cross-box fan-out: published on a, delivered by b and c.
        let mut rig = three_boxes(stack, opts, &redis, subs).await?;
        let series = format!("{label} 3 boxes");
        ladder(&mut rig, &steps, opts, Some(&series), rows).await?;
        rig.stop().await;

        // Redis restarted in the middle of a window, on fresh boxes.
        let mut rig = three_boxes(stack, opts, &redis, subs).await?;
        rows.push(restart_point(&mut rig, &mut redis, opts, label).await?);
        rig.stop().await;
    }
    Ok(())
}

/// Boxes a, b and c on `redis`: the publisher on a, the subscribers on b and c.
async fn three_boxes(stack: Stack, opts: &Opts, redis: &Redis, subs: usize) -> Result<Rig> {
    let a = stack.start(&opts.setup, Some(redis), "a")?;
    let b = stack.start(&opts.setup, Some(redis), "b")?;
    let c = stack.start(&opts.setup, Some(redis), "c")?;
    Rig::across(a, vec![b, c], subs, 1).await
}

/// One point at a moderate rate (20,000 deliveries/s, 5,000 in quick mode) over a
/// window of at least 4 s, with Redis restarted halfway through it; a message counts
/// as lost when it has not arrived after 10 s without any delivery.
async fn restart_point(rig: &mut Rig, redis: &mut Redis, opts: &Opts, label: &str) -> Result<Row> {
    let deliveries = if opts.quick { 5e3 } else { 20e3 };
    let mut load = opts.load(deliveries / rig.subscribers() as f64, PLAIN_64);
    load.measure = load.measure.max(Duration::from_secs(4));
    load.retry_noisy = false;
    // A reader may sit out a blocking read (the streams adapter's XREAD BLOCK is 5 s)
    // before it catches up: what arrives within 10 s of quiet is late, not lost.
    rig.quiet = Duration::from_secs(10);
    let restart = async {
        tokio::time::sleep(load.warmup + load.measure / 2).await;
        redis.restart().await
    };
    let (row, outage) = tokio::join!(rig.point(load), restart);
    let mut row = row?;
    let outage = outage?;
    row.series = format!("{label} 3 boxes, Redis restarted");
    row.x_label = "offered deliveries/s".into();
    row.x = deliveries;
    let said = format!(
        "Redis restarted mid-window ({} ms down)",
        outage.as_millis()
    );
    row.note = if row.note.is_empty() {
        said
    } else {
        format!("{said}; {}", row.note)
    };
    results::print_row(&row);
    Ok(row)
}

/// A redis-server of the run's own, on a free port and core 0, with AOF
/// `appendfsync always` so that a restart loses nothing Redis acknowledged.
struct Redis {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    pin: bool,
}

impl Redis {
    async fn start(pin: bool) -> Result<Redis> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port")?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Redis::spawn(addr, dir.path(), pin).await?;
        Ok(Redis {
            child,
            addr,
            dir,
            pin,
        })
    }

    async fn spawn(addr: SocketAddr, dir: &Path, pin: bool) -> Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::from(crate::host::core0_command(pin));
        cmd.arg("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("redis-server exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("redis-server does not listen on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(child)
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// A switchboard configuration file for box `node` on this Redis.
    fn config_for(&self, node: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("switchboard-{node}.toml"));
        let text = CLUSTER_CONFIG
            .replace("{redis}", &self.addr.to_string())
            .replace("{node}", node);
        std::fs::write(&path, text).context("cannot write the cluster configuration")?;
        Ok(path)
    }

    /// Stops Redis as an operator would (SIGTERM: it writes its AOF and exits) and
    /// starts it again on the same port and data; returns how long it was away.
    async fn restart(&mut self) -> Result<Duration> {
        let down = Instant::now();
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        self.child
            .wait()
            .await
            .context("waiting for redis-server")?;
        self.child = Redis::spawn(self.addr, self.dir.path(), self.pin).await?;
        Ok(down.elapsed())
    }
}
