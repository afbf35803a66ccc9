//! Webhooks out: configured HTTP endpoints that follow topics and lifecycle events like a
//! subscriber would, with signed, retried, persisted deliveries. Inbound hooks (other
//! services posting to us) live in `crate::http::inbound_webhooks` and share [`signature`].
//!
//! The path of an event: the hub calls [`tap`] (under a topic lock: it only serialises
//! the event and offers it to a bounded channel, dropping and counting when full), the
//! writer task stores it in the endpoint's [`queue`], and one [`delivery`] task per
//! endpoint sends the queue in order, retrying the head until it succeeds or goes to the
//! dead letters. Nothing here can slow the hub: a slow endpoint only grows its queue on
//! disk, up to `max_pending`. docs/webhooks.md is the user's side of this.

pub mod config;
mod delivery;
mod event;
mod leased;
pub mod metrics;
mod queue;
pub mod signature;
mod tap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::lease::Shadow;
use crate::cluster::Cluster;
use crate::hub::Hub;
use crate::live::{LiveList, Tasks};
use crate::store::writer::Writer;
use crate::store::{Store, StoreError};
use config::WebhookConfig;
use queue::Queue;

/// Why webhooks cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook `{name}`: cannot read the secret file {}: {source}", path.display())]
    Secret {
        name: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook `{name}`: the secret file {} {problem}", path.display())]
    BadSecret {
        name: String,
        path: std::path::PathBuf,
        problem: &'static str,
    },
    #[error("cannot set up the HTTP client for webhooks: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Figures of one endpoint, for the API, /healthz and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStats {
    pub name: String,
    /// The URL's origin (scheme, host, port): paths may hold secrets.
    pub url: String,
    /// Events stored and not yet delivered.
    pub pending: u64,
    /// Deliveries in the dead-letter list.
    pub dead: u64,
    /// Events delivered (answered with a 2xx).
    pub delivered: u64,
    /// Requests that failed (error, timeout or non-2xx status).
    pub failed_attempts: u64,
    /// Events lost: the hub's channel was full, or `max_pending` was passed.
    pub dropped: u64,
    pub last_error: Option<String>,
    /// Unix ms of the last successful delivery.
    pub last_success: Option<u64>,
}

/// One configured endpoint: its settings, secret, stored queue and live counters. An
/// endpoint keeps its identity (queue, counters, task) across a reload that changes its
/// settings; only its name is fixed.
pub struct Endpoint {
    pub name: String,
    settings: RwLock<Arc<Settings>>,
    queue: Queue,
    /// Woken by the writer when events were stored.
    wake: tokio::sync::Notify,
    pending: AtomicU64,
    dead: AtomicU64,
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    dropped: AtomicU64,
    last_success: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Prefix of every event and delivery id, chosen once per store, so that ids stay
    /// unique for a receiver even if the store is deleted and ids start again.
    epoch: String,
    /// With `[cluster]`: message events are enqueued by the holder of this endpoint's
    /// lease; a standby keeps them here (`leased.rs`).
    shadow: Option<Shadow<Arc<str>>>,
}

/// A dead letter as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeadLetterView {
    pub id: String,
    pub events: Vec<Box<RawValue>>,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub failed_at: u64,
}

/// What a reload can change of an endpoint: read by the delivery task for each attempt.
#[derive(PartialEq)]
pub struct Settings {
    pub config: WebhookConfig,
    secret: Vec<u8>,
}

impl Endpoint {
    /// Opens the endpoint's queue (kept on disk under its name, so a removed and re-added
    /// endpoint finds what it had not delivered).
    fn open(
        config: &WebhookConfig,
        secret: Vec<u8>,
        store: &Store,
        epoch: &str,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<Endpoint, WebhookError> {
        let queue = Queue::open(store, &config.name)?;
        let pending = queue.pending_len() as u64;
        let dead = queue.dead_len() as u64;
        Ok(Endpoint {
            shadow: cluster.map(|c| Shadow::new(c.lease(&format!("webhook:{}", config.name)))),
            name: config.name.clone(),
            settings: RwLock::new(Arc::new(Settings {
                config: config.clone(),
                secret,
            })),
            queue,
            wake: tokio::sync::Notify::new(),
            pending: AtomicU64::new(pending),
            dead: AtomicU64::new(dead),
            delivered: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            last_error: Mutex::new(None),
            epoch: epoch.to_owned(),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` on the settings without taking a reference count (the Hub's tap).
    fn with_config<R>(&self, f: impl FnOnce(&WebhookConfig) -> R) -> R {
        f(&self
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .config)
    }

    fn delivery_id(&self, first: u64) -> String {
        format!("msg_{}_{first}", self.epoch)
    }

    fn event_id(&self, key: u64) -> String {
        format!("evt_{}_{key}", self.epoch)
    }

    /// The store key of a dead letter from its id; None if the id is not one of ours.
    fn dead_key(&self, id: &str) -> Option<u64> {
        id.strip_prefix("msg_")?
            .strip_prefix(self.epoch.as_str())?
            .strip_prefix('_')?
            .parse()
            .ok()
    }

    pub fn stats(&self) -> EndpointStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let last_success = get(&self.last_success);
        EndpointStats {
            name: self.name.clone(),
            url: self.with_config(|c| redacted(&c.url)),
            pending: get(&self.pending),
            dead: get(&self.dead),
            delivered: get(&self.delivered),
            failed_attempts: get(&self.failed_attempts),
            dropped: get(&self.dropped),
            last_error: lock(&self.last_error).clone(),
            last_success: (last_success > 0).then_some(last_success),
        }
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterView>, StoreError> {
        Ok(self
            .queue
            .dead_letters(limit)?
            .into_iter()
            .map(|(_, l)| DeadLetterView {
                id: l.id,
                events: l.events,
                attempts: l.attempts,
                last_status: l.last_status,
                last_error: l.last_error,
                failed_at: l.failed_at,
            })
            .collect())
    }

    /// Sends a dead letter's events again, as a new delivery at the end of the queue.
    /// None when there is no such dead letter.
    pub fn retry_dead(&self, id: &str) -> Result<Option<usize>, StoreError> {
        let Some(key) = self.dead_key(id) else {
            return Ok(None);
        };
        let queued = self.queue.requeue(key)?;
        if let Some(n) = queued {
            self.dead.fetch_sub(1, Ordering::Relaxed);
            self.pending.fetch_add(n as u64, Ordering::Relaxed);
            self.wake.notify_one();
        }
        Ok(queued)
    }

    /// Sends every dead letter again, oldest first; how many letters.
    pub fn retry_all_dead(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for key in self.queue.dead_keys()? {
            if self.retry_dead(&self.delivery_id(key))?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Forgets a dead letter; whether it was there.
    pub fn delete_dead(&self, id: &str) -> Result<bool, StoreError> {
        let Some(key) = self.dead_key(id) else {
            return Ok(false);
        };
        let gone = self.queue.take_dead(key)?.is_some();
        if gone {
            self.dead.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(gone)
    }

    fn note_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A URL fit for logs, /healthz and the API: its origin only (`https://host:port`).
/// User names, passwords, paths and queries stay out, since some services put their
/// secret in the path of a webhook URL.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => String::from("(invalid)"),
    }
}

/// Every configured endpoint, and the tasks that feed them.
pub struct Webhooks {
    endpoints: Arc<LiveList<Endpoint>>,
    /// Built with the first endpoint.
    client: Mutex<Option<reqwest::Client>>,
    writer: Writer<tap::Item>,
    /// Attached to the hub with the first endpoint, so a daemon without webhooks pays
    /// nothing per message.
    tap: crate::live::PendingTap<tap::WebhookTap>,
    tasks: Tasks,
    store: Store,
    epoch: String,
    cluster: Option<Arc<Cluster>>,
}

/// A reload's new set of endpoints, every secret read and every queue open, not yet in
/// force.
pub struct WebhookPlan {
    endpoints: Vec<Arc<Endpoint>>,
    changed: Vec<(Arc<Endpoint>, Settings)>,
    added: Vec<Arc<Endpoint>>,
    removed: Vec<String>,
    client: Option<reqwest::Client>,
}

impl Webhooks {
    /// Reads every secret and opens every endpoint's queue, and attaches to the hub;
    /// fails (naming the endpoint and file) before anything is served. Events start
    /// queueing now; [`Webhooks::start`] starts storing and sending them.
    pub fn open(
        configs: &[WebhookConfig],
        store: &Store,
        hub: &Hub,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<Arc<Webhooks>, WebhookError> {
        let epoch = epoch(store)?;
        let mut endpoints = Vec::with_capacity(configs.len());
        for config in configs {
            let secret = read_secret(config)?;
            endpoints.push(Arc::new(Endpoint::open(
                config, secret, store, &epoch, cluster,
            )?));
        }
        let client = if endpoints.is_empty() {
            None
        } else {
            Some(client()?)
        };
        let endpoints = Arc::new(LiveList::new(endpoints));
        let (tap, writer) = tap::channel(endpoints.clone());
        let webhooks = Webhooks {
            endpoints,
            client: Mutex::new(client),
            writer,
            // With `[cluster]`, every message on the bus, enqueued by the holder of the
            // endpoint's lease only (`leased.rs`): once per message for the cluster,
            // given the same `[[webhooks]]` on every box.
            tap: crate::live::PendingTap::new(tap),
            tasks: Tasks::default(),
            store: store.clone(),
            epoch,
            cluster: cluster.cloned(),
        };
        webhooks.attach(hub);
        Ok(Arc::new(webhooks))
    }

    /// Attaches the tap to the hub once there is an endpoint.
    fn attach(&self, hub: &Hub) {
        self.tap
            .attach_if(hub, !self.endpoints.current().is_empty());
    }

    /// Starts the writer and one delivery task per endpoint. Delivery tasks are on
    /// `tracker` and stop at `shutdown` between two requests, so a request in flight
    /// finishes within the shutdown grace and is not sent twice.
    pub fn start(&self, shutdown: &CancellationToken, tracker: &TaskTracker) {
        self.tasks.start(shutdown, tracker);
        for ep in self.endpoints.current().iter() {
            self.spawn_delivery(ep);
        }
        self.writer.start(tap::BURST, tap::store);
    }

    fn spawn_delivery(&self, ep: &Arc<Endpoint>) {
        let Some(client) = lock(&self.client).clone() else {
            return;
        };
        tracing::info!(
            webhook = %ep.name,
            url = %ep.with_config(|c| redacted(&c.url)),
            pending = ep.pending.load(Ordering::Relaxed),
            dead = ep.dead.load(Ordering::Relaxed),
            "webhook endpoint"
        );
        let ep = ep.clone();
        self.tasks.spawn(&ep.name.clone(), move |stop| async move {
            tokio::join!(
                leased::run(ep.clone(), stop.clone()),
                delivery::run(ep, client, stop)
            );
        });
    }

    /// Reads the secrets of `configs` and opens the queues of new endpoints; changes
    /// nothing in force.
    pub fn prepare(&self, configs: &[WebhookConfig]) -> Result<WebhookPlan, WebhookError> {
        let current = self.endpoints.current();
        let mut plan = WebhookPlan {
            endpoints: Vec::with_capacity(configs.len()),
            changed: Vec::new(),
            added: Vec::new(),
            removed: current
                .iter()
                .filter(|ep| !configs.iter().any(|c| c.name == ep.name))
                .map(|ep| ep.name.clone())
                .collect(),
            client: None,
        };
        for config in configs {
            let settings = Settings {
                config: config.clone(),
                secret: read_secret(config)?,
            };
            match current.iter().find(|ep| ep.name == config.name) {
                Some(ep) => {
                    if *ep.settings() != settings {
                        plan.changed.push((ep.clone(), settings));
                    }
                    plan.endpoints.push(ep.clone());
                }
                None => {
                    let ep = Arc::new(Endpoint::open(
                        config,
                        settings.secret,
                        &self.store,
                        &self.epoch,
                        self.cluster.as_ref(),
                    )?);
                    plan.added.push(ep.clone());
                    plan.endpoints.push(ep);
                }
            }
        }
        if !plan.endpoints.is_empty() && lock(&self.client).is_none() {
            plan.client = Some(client()?);
        }
        Ok(plan)
    }

    /// Puts a plan in force: changed endpoints take their new settings at their next
    /// attempt (what they have queued stays queued), new ones start, removed ones stop
    /// between two requests and keep their queue on disk.
    pub fn apply(&self, plan: WebhookPlan, hub: &Hub) {
        if let Some(client) = plan.client {
            *lock(&self.client) = Some(client);
        }
        for (ep, settings) in plan.changed {
            *ep.settings.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
            // Waiting out a batch or a retry delay under the old settings is not needed.
            ep.wake.notify_one();
            tracing::info!(webhook = %ep.name, "webhook endpoint changed");
        }
        self.endpoints.replace(plan.endpoints);
        self.attach(hub);
        for ep in &plan.added {
            self.spawn_delivery(ep);
        }
        for name in plan.removed {
            self.tasks.stop(&name);
            tracing::info!(webhook = %name, "webhook endpoint removed; what it had queued stays on disk");
        }
    }

    /// Stores what is still queued in memory (events of the shutdown itself, such as
    /// disconnections, included). Call after the hub is quiet; the server flushes the store
    /// afterwards.
    pub async fn stop(&self) {
        self.writer.stop().await;
    }

    pub fn stats(&self) -> Vec<EndpointStats> {
        self.endpoints.current().iter().map(|e| e.stats()).collect()
    }

    pub fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints
            .current()
            .iter()
            .find(|e| e.name == name)
            .cloned()
    }
}

/// The HTTP client every endpoint shares.
fn client() -> Result<reqwest::Client, WebhookError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(WebhookError::Client)
}

/// The store-wide id prefix, made on first use.
fn epoch(store: &Store) -> Result<String, StoreError> {
    let meta = store.tree("webhook.meta")?;
    let fresh = format!("{:08x}", rand::random::<u32>());
    let stored = meta
        .current()?
        .compare_and_swap("epoch", None as Option<&[u8]>, Some(fresh.as_bytes()))
        .map_err(|e| store.io(e))?;
    Ok(match stored {
        Ok(()) => fresh,
        Err(current) => current
            .current
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or(fresh),
    })
}

/// The signing key: the file's content, trimmed; a Standard Webhooks `whsec_<base64>`
/// secret is decoded, so receivers can use the same string with their library.
fn read_secret(config: &WebhookConfig) -> Result<Vec<u8>, WebhookError> {
    let path = &config.secret_file;
    let bad = |problem| WebhookError::BadSecret {
        name: config.name.clone(),
        path: path.clone(),
        problem,
    };
    if path.as_os_str().is_empty() {
        return Err(bad(
            "is not set (secret_file is required: every delivery is signed)",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|source| WebhookError::Secret {
        name: config.name.clone(),
        path: path.clone(),
        source,
    })?;
    let text = text.trim();
    if let Some(encoded) = text.strip_prefix("whsec_") {
        use base64::Engine;
        return base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| bad("starts with whsec_ but the rest is not base64"));
    }
    if text.len() < 16 {
        return Err(bad("holds fewer than 16 characters"));
    }
    Ok(text.as_bytes().to_vec())
}
