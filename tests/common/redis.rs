//! A `redis-server` of a test's own (tests/cluster*.rs), from Debian's package.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Daemon;

/// Whether a Redis tool is installed; when it is not and the run does not require it,
/// the test is skipped. The CI script sets CLUSTER_TOOLS=required, and there a
/// missing tool fails.
pub fn installed(tool: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CLUSTER_TOOLS").as_deref() != Ok("required"),
        "{tool} is required (CLUSTER_TOOLS=required); install redis-server and redis-tools"
    );
    eprintln!("skipped: {tool} is not installed");
    false
}

/// A `redis-server` of the test's own, on a free port and in its own directory.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    persist: bool,
    extra: Vec<String>,
    /// Listening for TLS only (`--port 0 --tls-port`); `cmd` cannot reach it.
    tls: bool,
}

impl Redis {
    /// `None` when redis-server is missing and the run does not require it ([`installed`]).
    pub fn start(persist: bool) -> Option<Redis> {
        Self::start_with(persist, &[])
    }

    pub fn start_with(persist: bool, extra: &[&str]) -> Option<Redis> {
        Self::launch(persist, extra, false)
    }

    /// A Redis that speaks TLS only; `extra` gives it its `--tls-*` settings.
    pub fn start_tls(extra: &[&str]) -> Option<Redis> {
        Self::launch(false, extra, true)
    }

    fn launch(persist: bool, extra: &[&str], tls: bool) -> Option<Redis> {
        if !installed("redis-server") {
            return None;
        }
        let port = free_port();
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            persist,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        if self.tls {
            cmd.args(["--port", "0", "--tls-port"]);
        } else {
            cmd.arg("--port");
        }
        cmd.arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persist {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra);
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        for _ in 0..200 {
            if self.tls && StdTcp::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            // A Redis with a password answers NOAUTH: it is up all the same.
            if !self.tls
                && self
                    .try_cmd(&["PING"])
                    .is_some_and(|r| r.contains("PONG") || r.contains("NOAUTH"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills Redis (SIGKILL: what was fsynced is all that survives) and starts it again
    /// on the same port and directory.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// A copy of Redis's append-only files as they are now, for [`Redis::restart_from`].
    pub fn save_aof(&self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().expect("tempdir");
        for f in std::fs::read_dir(self.dir.path().join("appendonlydir")).expect("appendonlydir") {
            let f = f.expect("aof file");
            std::fs::copy(f.path(), copy.path().join(f.file_name())).expect("copy aof");
        }
        copy
    }

    /// Kills Redis and starts it again from append-only files saved earlier: it comes
    /// back without what it took since (a stale tail, as after a crash with
    /// `appendfsync everysec`).
    pub fn restart_from(&mut self, saved: &tempfile::TempDir) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let aof = self.dir.path().join("appendonlydir");
        std::fs::remove_dir_all(&aof).expect("remove aof");
        std::fs::create_dir(&aof).expect("aof dir");
        for f in std::fs::read_dir(saved.path()).expect("saved aof") {
            let f = f.expect("aof file");
            std::fs::copy(f.path(), aof.join(f.file_name())).expect("restore aof");
        }
        self.spawn();
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// One command over raw RESP; the reply's raw text.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).expect("redis answers")
    }

    pub fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = StdTcp::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes()).ok()?;
        let mut buf = vec![0u8; 1 << 16];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Kills the bus readers' connections (named `sb-reader-…` by the daemons).
    pub fn kill_readers(&self) -> usize {
        let list = self.cmd(&["CLIENT", "LIST"]);
        let mut killed = 0;
        for line in list.lines() {
            if !line.contains("name=sb-reader-") {
                continue;
            }
            if let Some(id) = line
                .split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
            {
                if self.cmd(&["CLIENT", "KILL", "ID", &id]).contains(":1") {
                    killed += 1;
                }
            }
        }
        killed
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A small Redis Cluster of the test's own: `n` primaries, no replicas, each a
/// [`Redis`] on its own ports, joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// `None` when redis-server or redis-cli is missing and the run does not require them.
    pub fn start(n: usize) -> Option<RedisCluster> {
        if !installed("redis-server") || !installed("redis-cli") {
            return None;
        }
        let nodes = (0..n).map(|_| Self::node()).collect::<Vec<_>>();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|r| format!("127.0.0.1:{}", r.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        for _ in 0..250 {
            if cluster
                .nodes
                .iter()
                .all(|r| r.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return Some(cluster);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the Redis Cluster did not become ok");
    }

    fn node() -> Redis {
        // The cluster bus port is given: the default (port + 10000) may not be free.
        let bus = free_port().to_string();
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus,
            "--cluster-node-timeout",
            "2000",
            // A replica's first sync starts at once, not after 5 s.
            "--repl-diskless-sync-delay",
            "0",
        ];
        Redis::start_with(false, &args).expect("redis-server")
    }

    /// Adds a replica of node `of`, in sync once this returns; its index.
    pub fn add_replica(&mut self, of: usize) -> usize {
        let replica = Self::node();
        let primary = &self.nodes[of];
        let id = primary.cmd(&["CLUSTER", "MYID"]);
        let id = id.lines().nth(1).expect("node id").trim().to_owned();
        let out = Command::new("redis-cli")
            .args(["--cluster", "add-node"])
            .arg(format!("127.0.0.1:{}", replica.port))
            .arg(format!("127.0.0.1:{}", primary.port))
            .args(["--cluster-slave", "--cluster-master-id", &id])
            .output()
            .expect("redis-cli --cluster add-node");
        assert!(
            out.status.success(),
            "redis-cli --cluster add-node: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let me = replica.cmd(&["CLUSTER", "MYID"]);
        let me = me.lines().nth(1).expect("node id").trim().to_owned();
        for _ in 0..500 {
            // In sync, and every primary knows it (they vote in a failover).
            let known = self.nodes.iter().all(|n| {
                n.cmd(&["CLUSTER", "NODES"])
                    .lines()
                    .any(|l| l.starts_with(&me) && l.contains("slave"))
            });
            if known
                && replica
                    .cmd(&["INFO", "replication"])
                    .contains("master_link_status:up")
            {
                self.nodes.push(replica);
                return self.nodes.len() - 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the replica did not sync");
    }

    /// A manual failover (`CLUSTER FAILOVER`, no data lost: the replica first catches
    /// up); returns once node `replica` is a primary.
    pub fn failover(&self, replica: usize) {
        let r = &self.nodes[replica];
        // Refused until the primary knows its replica (gossip).
        let mut asked = String::new();
        for _ in 0..250 {
            asked = r.cmd(&["CLUSTER", "FAILOVER"]);
            if asked.contains("OK") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(asked.contains("OK"), "CLUSTER FAILOVER: {asked}");
        for _ in 0..500 {
            if r.cmd(&["ROLE"]).contains("master") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the failover did not happen");
    }

    /// Seed URLs, one per node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A TCP relay to Redis that the test can cut (every connection dropped, new ones
/// refused) and mend: a box cut from Redis while the rest of the cluster goes on. Or
/// deafen: what the box sends still reaches Redis, Redis's answers are thrown away (an
/// answer lost after Redis acted on the command).
pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    deaf: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let deaf = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (flag, gen, deafened) = (cut.clone(), generation.clone(), deaf.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused while cut
                }
                let mut changed = gen.subscribe();
                let deaf = deafened.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    else {
                        return;
                    };
                    let (mut from_box, mut to_box) = inbound.into_split();
                    let (mut from_redis, mut to_redis) = outbound.into_split();
                    let answers = async {
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            match from_redis.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) if deaf.load(Ordering::SeqCst) => {}
                                Ok(n) => {
                                    if to_box.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_box, &mut to_redis) => {}
                        _ = answers => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });
        Relay {
            port,
            cut,
            deaf,
            generation,
            task,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Ends a cut or a deafness; connections dropped by a cut are not restored.
    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.deaf.store(false, Ordering::SeqCst);
    }

    pub fn deafen(&self) {
        self.deaf.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A box of the cluster: history on `h/#`, the bus on `redis`.
pub fn node(redis: &str, name: &str) -> Daemon {
    node_with(redis, name, "")
}

/// [`node`] with more `[cluster]` keys.
pub fn node_with(redis: &str, name: &str, more: &str) -> Daemon {
    Daemon::start(&format!(
        r#"
[cluster]
enabled = true
redis = ["{redis}"]
node_id = "{name}"
partitions = 4
command_timeout = "500ms"
connect_timeout = "500ms"
probe_interval = "300ms"
{more}

[[history.topics]]
filter = "h/#"
keep = 10000
"#
    ))
}
