//! Links to other MQTT brokers: upstream bridges (`[[bridges]]`) and the site broker of
//! external mode (`[mqtt] mode = "external"`). docs/bridges.md is the operator's side.
//!
//! The MQTT side of a link (connecting, subscribing, PUBACK bookkeeping, topic rules)
//! is in the `switchboard-bridge` crate, which stays MQTT-only and knows no storage: it
//! sends from an `Outbox` trait and hands messages to an `Inbox` trait. This module is
//! the daemon's side:
//! - [`tap`]: the Hub's messages matching an `out` rule, offered to a bounded channel
//!   (never blocking the Hub) and stored by a writer task;
//! - [`queue`]: the durable per-link queue in the sled store (the `Outbox`), bounded
//!   by count and bytes with drop-oldest; entries leave on the broker's PUBACK;
//! - [`link`]: the reconnect loop with jittered exponential backoff, and the `Inbox`
//!   that publishes upstream messages into the Hub;
//! - [`status`]: per-link figures for the API, metrics and the retained status topic;
//! - [`leased`]: with `[cluster]`, a bridge on one box at a time (a lease in Redis).
//!
//! Loops: a message that came in over a link is never sent back out on it (its origin
//! and `from` say which link), and links subscribe with MQTT 5 `no_local`, so the other
//! broker does not echo what we publish.

pub mod config;
mod leased;
mod link;
pub mod metrics;
mod queue;
mod status;
mod tap;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_bridge::rules::{Direction, Rule};
use switchboard_bridge::upstream::UpstreamConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::hub::Hub;
use crate::live::{LiveList, Tasks};
use crate::store::writer::Writer;
use crate::store::{Store, StoreError};
use config::LinkConfig;
use queue::Queue;
pub use status::{LinkStatus, STATUS_PREFIX};
use switchboard_core::message::{Origin, Publish};

/// The name external mode's link goes by (API, metrics, store, status topic).
pub const EXTERNAL: &str = "external";

/// Why the links cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge `{name}`: cannot read the password file {}: {source}", path.display())]
    Password {
        name: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bridge `{name}`: {problem}")]
    Config { name: String, problem: String },
    #[error("bridge `{name}`: TLS: {source}")]
    Tls {
        name: String,
        #[source]
        source: Box<crate::tls::TlsError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One link: its settings, queue and live state.
pub struct Link {
    pub name: String,
    pub config: LinkConfig,
    rules: Vec<Rule>,
    upstream: UpstreamConfig,
    /// How its inbound messages enter the Hub: [`Origin::Bridge`] with `bridge:<name>`,
    /// or, in external mode, [`Origin::Mqtt`] with `mqtt` (they are device messages).
    origin: Origin,
    from: String,
    queue: Arc<Queue>,
    connected: AtomicBool,
    connected_at: AtomicU64,
    attempts: AtomicU64,
    received: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// With `[cluster]` and the bridge's `lease`: which box runs it.
    leased: Option<leased::Leased>,
}

impl Link {
    /// Reads the link's password and certificates and opens its queue, or takes over
    /// `queue` (a link restarted by a reload keeps what it had queued).
    fn open(
        config: &LinkConfig,
        external: bool,
        store: &Store,
        queue: Option<Arc<Queue>>,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<Link, BridgeError> {
        let mut config = config.clone();
        if external {
            config.name = EXTERNAL.to_owned();
            if config.topics.is_empty() {
                // Everything, both ways, as the embedded broker would: QoS 0.
                config.topics.push(config::TopicRule {
                    pattern: "#".into(),
                    direction: Direction::Both,
                    qos: 0,
                    local_prefix: String::new(),
                    remote_prefix: String::new(),
                });
            }
        }
        let name = config.name.clone();
        let password = read_password(&config)?;
        let tls = if config.ca_file.as_os_str().is_empty() {
            if !config.cert_file.as_os_str().is_empty() {
                return Err(BridgeError::Config {
                    name,
                    problem: "cert_file needs ca_file (TLS is on only with a CA)".into(),
                });
            }
            None
        } else {
            let client = match (
                config.cert_file.as_os_str().is_empty(),
                config.key_file.as_os_str().is_empty(),
            ) {
                (true, true) => None,
                (false, false) => Some((config.cert_file.as_path(), config.key_file.as_path())),
                _ => {
                    return Err(BridgeError::Config {
                        name,
                        problem: "cert_file and key_file go together".into(),
                    })
                }
            };
            Some(
                crate::tls::client_config(&config.ca_file, client).map_err(|source| {
                    BridgeError::Tls {
                        name: name.clone(),
                        source: Box::new(source),
                    }
                })?,
            )
        };
        let rules = config.rules();
        let (host, port) = config.host_port();
        let upstream = UpstreamConfig {
            host,
            port,
            tls,
            username: (!config.username.is_empty()).then(|| config.username.clone()),
            password,
            client_id: config.client_id(),
            keep_alive: config.keep_alive,
            persistent: !config.clean_session,
            subscriptions: rules
                .iter()
                .filter_map(|r| r.remote_filter().map(|f| (f, r.qos)))
                .collect(),
            window: config.inflight.get(),
            connect_timeout: Duration::from_secs(10),
        };
        let queue = match queue {
            Some(queue) => queue,
            None => Queue::open(
                store,
                &name,
                config.max_queue_messages.get(),
                config.max_queue_bytes.get(),
            )?,
        };
        let (origin, from) = if external {
            (Origin::Mqtt, "mqtt".to_owned())
        } else {
            (Origin::Bridge, format!("bridge:{name}"))
        };
        let leased = match cluster {
            Some(cluster) if !external && config.lease => Some(leased::Leased::new(
                cluster.lease(&format!("bridge:{name}")),
            )),
            _ => None,
        };
        Ok(Link {
            leased,
            name,
            config,
            rules,
            upstream,
            origin,
            from,
            queue,
            connected: AtomicBool::new(false),
            connected_at: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// Whether `message` came in over this link, so must not go back out on it. In
    /// external mode that is every device message, and `$` topics stay local as with
    /// the embedded broker.
    fn came_from(&self, message: &Publish<'_>) -> bool {
        if self.origin == Origin::Mqtt {
            return message.origin == Origin::Mqtt || message.topic.starts_with('$');
        }
        message.origin == self.origin && message.from == self.from
    }

    fn note_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }
}

fn read_password(config: &LinkConfig) -> Result<Option<String>, BridgeError> {
    let path = &config.password_file;
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| BridgeError::Password {
        name: config.name.clone(),
        path: path.clone(),
        source,
    })?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every link, and the tasks that feed them.
pub struct Bridges {
    links: Arc<LiveList<Link>>,
    writer: Writer<tap::Item>,
    /// Attached to the Hub with the first link, so a daemon without bridges pays nothing
    /// per message.
    tap: crate::live::PendingTap<tap::BridgeTap>,
    tasks: Tasks,
    store: Store,
    cluster: Option<Arc<Cluster>>,
}

/// A reload's new `[[bridges]]`, every password and certificate read, not yet in force.
pub struct BridgePlan {
    links: Vec<Arc<Link>>,
    /// New links and changed ones (which take over the queue of the link they replace).
    started: Vec<Arc<Link>>,
    removed: Vec<String>,
}

impl Bridges {
    /// Reads every password and certificate and opens every queue, and attaches to the
    /// Hub; fails (naming the bridge and file) before anything is served. Messages
    /// start queueing now; [`Bridges::start`] starts storing and sending them.
    pub fn open(
        bridges: &[LinkConfig],
        external: Option<&LinkConfig>,
        store: &Store,
        hub: &Hub,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<Arc<Bridges>, BridgeError> {
        let mut links = Vec::new();
        if let Some(ext) = external {
            if bridges.iter().any(|b| b.name == EXTERNAL) {
                return Err(BridgeError::Config {
                    name: EXTERNAL.into(),
                    problem: "the name is taken by external mode's link; rename the bridge".into(),
                });
            }
            links.push(Arc::new(Link::open(ext, true, store, None, None)?));
        }
        for b in bridges {
            links.push(Arc::new(Link::open(b, false, store, None, cluster)?));
        }
        let links = Arc::new(LiveList::new(links));
        let (tap, writer) = tap::channel(links.clone());
        let bridges = Bridges {
            links,
            writer,
            tap: crate::live::PendingTap::new(tap),
            tasks: Tasks::default(),
            store: store.clone(),
            cluster: cluster.cloned(),
        };
        bridges.attach(hub);
        Ok(Arc::new(bridges))
    }

    /// Attaches the tap to the Hub once there is a link.
    fn attach(&self, hub: &Hub) {
        self.tap.attach_if(hub, !self.links.current().is_empty());
    }

    /// Starts the writer, one link task per link (on `tracker`, stopping at
    /// `shutdown`), and the status publisher.
    pub fn start(&self, hub: &Arc<Hub>, shutdown: &CancellationToken, tracker: &TaskTracker) {
        self.tasks.start(shutdown, tracker);
        for link in self.links.current().iter() {
            self.spawn_link(link, hub);
        }
        tracker.spawn(status::publish_changes(
            self.links.clone(),
            hub.clone(),
            shutdown.clone(),
        ));
        self.writer.start(tap::BURST, tap::store);
    }

    fn spawn_link(&self, link: &Arc<Link>, hub: &Arc<Hub>) {
        tracing::info!(
            bridge = %link.name,
            address = %link.config.address,
            queued = link.queue.len.load(Ordering::Relaxed),
            "bridge"
        );
        link.publish_status(hub);
        let (link, hub) = (link.clone(), hub.clone());
        self.tasks
            .spawn(&link.name.clone(), move |stop| leased::run(link, hub, stop));
    }

    /// Reads the passwords and certificates of new and changed `[[bridges]]`; changes
    /// nothing in force. External mode's link is not part of it (a restart changes it).
    pub fn prepare(&self, bridges: &[LinkConfig]) -> Result<BridgePlan, BridgeError> {
        let current = self.links.current();
        let mut plan = BridgePlan {
            links: current
                .iter()
                .filter(|l| l.origin == Origin::Mqtt)
                .cloned()
                .collect(),
            started: Vec::new(),
            removed: current
                .iter()
                .filter(|l| l.origin == Origin::Bridge)
                .filter(|l| !bridges.iter().any(|b| b.name == l.name))
                .map(|l| l.name.clone())
                .collect(),
        };
        for config in bridges {
            if plan.links.iter().any(|l| l.name == config.name) {
                return Err(BridgeError::Config {
                    name: EXTERNAL.into(),
                    problem: "the name is taken by external mode's link; rename the bridge".into(),
                });
            }
            let before = current
                .iter()
                .find(|l| l.origin == Origin::Bridge && l.name == config.name);
            let link = match before {
                Some(link) if link.config == *config => link.clone(),
                Some(link) => {
                    let queue = Some(link.queue.clone());
                    let changed = Arc::new(Link::open(
                        config,
                        false,
                        &self.store,
                        queue,
                        self.cluster.as_ref(),
                    )?);
                    plan.started.push(changed.clone());
                    changed
                }
                None => {
                    let added = Arc::new(Link::open(
                        config,
                        false,
                        &self.store,
                        None,
                        self.cluster.as_ref(),
                    )?);
                    plan.started.push(added.clone());
                    added
                }
            };
            plan.links.push(link);
        }
        Ok(plan)
    }

    /// Puts a plan in force: new links start, changed ones restart with their new
    /// settings once the old session has ended, removed ones stop (their queue stays on
    /// disk, sent if the bridge comes back). Unchanged links are not touched.
    pub fn apply(&self, plan: BridgePlan, hub: &Arc<Hub>) {
        self.links.replace(plan.links);
        self.attach(hub);
        for link in &plan.started {
            link.queue.set_limits(
                link.config.max_queue_messages.get(),
                link.config.max_queue_bytes.get(),
            );
            self.spawn_link(link, hub);
        }
        for name in plan.removed {
            self.tasks.stop(&name);
            tracing::info!(bridge = %name, "bridge removed; what it had queued stays on disk");
        }
    }

    /// Stores what is still in the channel. Call after the Hub is quiet; the server
    /// flushes the store afterwards.
    pub async fn stop(&self) {
        self.writer.stop().await;
    }

    pub fn status(&self) -> Vec<LinkStatus> {
        self.links.current().iter().map(|l| l.status()).collect()
    }

    pub fn get(&self, name: &str) -> Option<LinkStatus> {
        self.links
            .current()
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.status())
    }
}
