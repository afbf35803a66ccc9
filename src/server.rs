//! The daemon's life: bind every listener, serve, and shut down gracefully.
//!
//! The composition root: it opens every part, hands each consumer the narrow pieces it
//! uses, and owns the shutdown sequence: stop accepting, ask every connection to write what it has queued and close with 1001,
//! wait for them up to the configured grace period, return.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use switchboard_bridge::Broker;

use crate::auth::devices::DeviceGate;
use crate::auth::Authenticator;
use crate::cluster::Cluster;
use crate::config::{Config, MqttMode};
use crate::history::History;
use crate::http::api::IdempotencyCache;
use crate::http::inbound_webhooks::Hooks;
use crate::http::listener::ListenerStats;
use crate::http::state::{About, HttpState, Limits};
use crate::hub::outbox::CloseReason;
use crate::hub::Hub;
use crate::metrics::{Instruments, Registry};
use crate::mqtt::metrics::MqttMetrics;
use crate::mqtt::{HubIngress, HubSessions};
use crate::outbound_webhooks::Webhooks;
use crate::pubkeys::KeyRegistry;
use crate::recordings::Recorder;
use crate::reload::Reloadable;
use crate::store::Store;
use crate::tls::TlsReloader;
use crate::uplinks::Bridges;
use crate::ws::deflate::Deflater;
use crate::ws::metrics::WsMetrics;
use crate::ws::WsState;
use switchboard_core::protocol::close;

/// Target of the one log line that reports every bound address. Scripts and tests read
/// it; its shape is documented in README.md and must stay stable:
/// `listening http=127.0.0.1:8700 mqtt=127.0.0.1:1883 mqtt_ws=127.0.0.1:8083` (a listener
/// that is turned off is left out; the MQTT TLS listeners are `mqtts=` and `mqtt_wss=`,
/// and `http=` serves HTTPS when `http.tls` is on).
pub const LISTENING_TARGET: &str = "switchboard::listening";

/// The running daemon's parts. Owned here, in the composition root, and handed out in
/// narrow pieces: the HTTP routes get an [`HttpState`], the WebSocket side a [`WsState`],
/// a reload a [`Reloadable`], the metrics registry one source per part. Nothing else
/// holds all of them.
struct Daemon {
    config: Config,
    hub: Arc<Hub>,
    /// Proves the identity of WebSocket and HTTP clients.
    auth: Arc<Authenticator>,
    /// The embedded MQTT broker, unless every MQTT listener is turned off.
    broker: Option<Arc<Broker>>,
    /// The certificate of every TLS listener, reloaded on SIGHUP; `None` when no listener
    /// uses TLS.
    tls: Option<Arc<TlsReloader>>,
    /// Inbound webhooks (`POST /hooks/<name>`), with their secrets and counters.
    hooks: Arc<Hooks>,
    /// The HTTP listener's connection counters.
    http_stats: Arc<ListenerStats>,
    /// Figures counted by the WebSocket side with no other home.
    instruments: Arc<Instruments>,
    /// permessage-deflate's settings and counters (`ws.compression`).
    deflate: Arc<Deflater>,
    /// Every part that shows figures at /metrics and /api/v1/stats.
    metrics: Arc<Registry>,
    /// Cancelled when shutdown begins.
    shutdown: CancellationToken,
    /// Every live connection holds a token of this tracker, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Milliseconds since the Unix epoch when the daemon started.
    started_at: u64,
    /// Idempotency keys of recent HTTP publishes.
    idempotency: Arc<IdempotencyCache>,
    /// The local store under `<data_dir>/store`, flushed at shutdown.
    store: Store,
    /// Outbound webhook endpoints (none unless configured).
    webhooks: Arc<Webhooks>,
    /// Topics that keep their recent messages (none unless configured).
    history: Arc<History>,
    /// Recordings and replays.
    recorder: Arc<Recorder>,
    /// The end-to-end encryption public keys (public only; the daemon never decrypts).
    pubkeys: Arc<KeyRegistry>,
    /// Upstream bridges, and the broker of external mode.
    bridges: Arc<Bridges>,
    /// Who may connect over MQTT, and what devices may do; `None` without the embedded
    /// broker. Replaced on reload.
    devices: Option<Arc<DeviceGate>>,
    /// The bus shared with other boxes (`[cluster]`), when on.
    cluster: Option<Arc<Cluster>>,
}

impl Daemon {
    /// The sources of /metrics, in the order their figures are shown.
    fn register_metrics(&self) {
        let m = &self.metrics;
        m.register(Arc::new(WsMetrics {
            hub: self.hub.clone(),
            auth: self.auth.clone(),
            instruments: self.instruments.clone(),
            deflate: self.deflate.clone(),
        }));
        m.register(self.hub.clone());
        m.register(Arc::new(MqttMetrics(self.broker.clone())));
        m.register(self.auth.clone());
        m.register(self.http_stats.clone());
        m.register(self.webhooks.clone());
        m.register(self.bridges.clone());
        m.register(self.hooks.clone());
        m.register(Arc::new(self.store.clone()));
        m.register(self.history.clone());
        m.register(self.recorder.clone());
        if let Some(cluster) = &self.cluster {
            m.register(cluster.clone());
        }
    }

    /// Every HTTP route, `/ws` included.
    fn router(&self) -> axum::Router {
        let config = &self.config;
        let api = crate::http::router(HttpState {
            hub: self.hub.clone(),
            auth: self.auth.clone(),
            recorder: self.recorder.clone(),
            webhooks: self.webhooks.clone(),
            bridges: self.bridges.clone(),
            pubkeys: self.pubkeys.clone(),
            hooks: self.hooks.clone(),
            metrics: self.metrics.clone(),
            idempotency: self.idempotency.clone(),
            broker: self.broker.clone(),
            listener: self.http_stats.clone(),
            store: self.store.health().clone(),
            limits: Limits {
                max_message_size: config.ws.max_message_size.get(),
                max_batch_bytes: config.http.max_batch_bytes.get(),
                idempotency_window: config.http.idempotency_window,
            },
            about: About {
                started_at: self.started_at,
                metrics_enabled: config.metrics.enabled,
                metrics_public: config.metrics.public,
                dashboard: config.http.dashboard,
                demos: config.http.demos,
            },
            shutdown: self.shutdown.clone(),
            cluster: self.cluster.clone(),
        });
        let routes = crate::ws::routes(WsState {
            hub: self.hub.clone(),
            auth: self.auth.clone(),
            recorder: self.recorder.clone(),
            config: config.ws.clone(),
            auth_timeout: config.auth.auth_timeout,
            web: config.web_policy(),
            instruments: self.instruments.clone(),
            shutdown: self.shutdown.clone(),
            tracker: self.tracker.clone(),
            api,
            deflate: self.deflate.clone(),
        });
        crate::http::web::guard(routes, config.web_policy())
    }

    /// What a reload changes.
    fn reloadable(&self) -> Reloadable {
        Reloadable {
            config: self.config.clone(),
            hub: self.hub.clone(),
            auth: self.auth.clone(),
            tls: self.tls.clone(),
            hooks: self.hooks.clone(),
            devices: self.devices.clone(),
            broker: self.broker.clone(),
            webhooks: self.webhooks.clone(),
            bridges: self.bridges.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

/// A daemon with its listeners bound, ready to run.
pub struct Server {
    app: Daemon,
    http: TcpListener,
    /// The file SIGHUP re-reads; `None` runs on the built-in defaults.
    config_path: Option<PathBuf>,
    /// Changes the log level when a reload changes `log_level`.
    log: crate::logging::LogControl,
}

impl Server {
    /// Prepares the data directory and binds every listener. Fails before anything is
    /// served if any of it is impossible: no half-started daemon.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        let http = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
        let auth = Arc::new(Authenticator::from_config(
            &config.auth,
            &config.api_keys_file(),
        )?);
        let tls = TlsReloader::from_config(&config.tls, &config.tls_listeners())
            .context("cannot set up TLS")?;
        let hooks = Arc::new(Hooks::from_config(&config.hooks)?);
        let hub = Hub::new(config.hub());
        let store = Store::open(&config.data_dir, &config.store)?;
        let history = open_history(&config, &store)?;
        hub.set_history(history.clone());
        // Before anything that publishes is opened: from here on every publish goes
        // through the bus.
        let cluster = if config.cluster.enabled {
            let node = config.cluster.node_id(config.http.listen.port());
            Some(Cluster::start(&config.cluster, node, config.history.clone(), &store, &hub).await?)
        } else {
            None
        };
        let webhooks = Webhooks::open(&config.webhooks, &store, &hub, cluster.as_ref())
            .context("cannot set up the webhooks")?;
        let recorder = Recorder::open(&store, &hub, &config.recording)
            .context("cannot open the recordings")?;
        let pubkeys = Arc::new(
            KeyRegistry::open(&store).context("cannot open the end-to-end public-key registry")?,
        );
        let external = match config.mqtt.mode {
            MqttMode::Embedded => None,
            MqttMode::External => Some(config.mqtt.external.as_ref().context(
                "mqtt.mode is \"external\" but there is no [mqtt.external] section saying which broker",
            )?),
        };
        let bridges = Bridges::open(&config.bridges, external, &store, &hub, cluster.as_ref())
            .context("cannot set up the MQTT bridges")?;
        let (broker, devices) = match external {
            None => start_broker(&config, &hub, &auth, tls.as_ref()).await?,
            Some(ext) => {
                tracing::info!(address = %ext.address, "MQTT: external broker (the embedded one is off)");
                (None, None)
            }
        };
        let idempotency = Arc::new(IdempotencyCache::new(config.http.idempotency_window));
        let deflate = Arc::new(Deflater::new(
            config.ws.compression_threshold,
            config.ws.compression_level,
        ));
        let app = Daemon {
            config,
            hub,
            auth,
            broker,
            tls,
            hooks,
            http_stats: Arc::new(ListenerStats::default()),
            instruments: Arc::default(),
            deflate,
            metrics: Arc::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            started_at: switchboard_core::clock::now_ms(),
            idempotency,
            store,
            webhooks,
            history,
            recorder,
            pubkeys,
            bridges,
            devices,
            cluster,
        };
        app.register_metrics();
        Ok(Self {
            app,
            http,
            config_path: None,
            log: crate::logging::LogControl::none(),
        })
    }

    /// The configuration file the daemon was started with, checked again on SIGHUP so
    /// a broken edit is refused rather than half applied.
    pub fn with_config_path(mut self, path: Option<PathBuf>) -> Self {
        self.config_path = path;
        self
    }

    /// How a reload changes the log level (the process's logging is set up by `main`).
    pub fn with_log_control(mut self, log: crate::logging::LogControl) -> Self {
        self.log = log;
        self
    }

    /// Every bound listener, by name.
    pub fn local_addrs(&self) -> anyhow::Result<Vec<(&'static str, SocketAddr)>> {
        let mut addrs = vec![("http", self.http.local_addr()?)];
        if let Some(broker) = &self.app.broker {
            addrs.extend(broker.local_addr().map(|a| ("mqtt", a)));
            addrs.extend(broker.ws_local_addr().map(|a| ("mqtt_ws", a)));
            addrs.extend(broker.tls_local_addr().map(|a| ("mqtts", a)));
            addrs.extend(broker.wss_local_addr().map(|a| ("mqtt_wss", a)));
        }
        Ok(addrs)
    }

    /// Serves until `stop` completes, then shuts down gracefully.
    pub async fn run(self, stop: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let addrs = self.local_addrs()?;
        let app = self.app;
        tracing::info!(data_dir = %app.config.data_dir.display(), "data directory");
        if app.auth.anonymous().is_some() {
            tracing::warn!(
                "anonymous clients are allowed (auth.allow_anonymous): {}",
                app.auth.describe()
            );
        } else {
            tracing::info!("clients: {}", app.auth.describe());
        }
        if let Some(tls) = &app.tls {
            tracing::info!("TLS: {}", tls.describe());
        }
        if !app.hooks.is_empty() {
            tracing::info!("inbound hooks: {}", app.hooks.describe());
        }
        // The daemon's own tasks (reload, API keys, watchdog), stopped and awaited
        // before the history and the store are closed.
        let background = crate::background::Background::new();
        // Installed before the listening line, so a SIGHUP sent as soon as it appears
        // reloads rather than kills (the default action of SIGHUP).
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangup) => {
                let reloadable = Arc::new(app.reloadable());
                background.spawn(|_| {
                    crate::reload::on_sighup(hangup, reloadable, self.config_path, self.log)
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP; reload is off"),
        }
        let listening: Vec<String> = addrs
            .iter()
            .map(|(name, addr)| format!("{name}={addr}"))
            .collect();
        let listening = format!("listening {}", listening.join(" "));
        if let (Some(cluster), Some((_, http))) = (&app.cluster, addrs.first()) {
            cluster.set_http(http.to_string());
        }
        tracing::info!(target: LISTENING_TARGET, "{listening}");

        let (hub, auth) = (app.hub.clone(), app.auth.clone());
        background.spawn(|stop| crate::reload::watch_api_keys(hub, auth, stop));
        app.store.quota().start();
        app.store.start_recovery();
        app.history.start();
        app.webhooks.start(&app.shutdown, &app.tracker);
        app.recorder.start();
        app.bridges.start(&app.hub, &app.shutdown, &app.tracker);
        let router = app.router();
        let mut http = tokio::spawn(crate::http::listener::serve(
            self.http,
            app.config.http.clone(),
            app.http_stats.clone(),
            app.tls.clone(),
            app.shutdown.clone(),
            router,
        ));
        // Every listener is bound and the store is open since `bind`; everything that
        // serves is now spawned.
        crate::systemd::ready(&listening);
        crate::systemd::spawn_watchdog(app.hub.clone(), &background);

        let failure: Option<anyhow::Error> = None;
        stop.await;
        tracing::info!("shutting down: no new connections, closing clients");
        let sessions = app.hub.sessions();
        crate::systemd::stopping(&format!(
            "shutting down: closing {} clients",
            sessions.len()
        ));
        app.shutdown.cancel();
        let grace = app.config.shutdown.grace;
        let mqtt_closed = async {
            if let Some(broker) = &app.broker {
                broker.shutdown(grace).await;
            }
        };
        for session in sessions {
            session
                .outbox
                .close(CloseReason::Code(close::GOING_AWAY, "server shutting down"));
        }
        app.tracker.close();
        let (ws_closed, ()) =
            tokio::join!(tokio::time::timeout(grace, app.tracker.wait()), mqtt_closed);
        if ws_closed.is_err() {
            tracing::warn!(
                remaining = app.tracker.len(),
                "shutdown grace of {grace:?} passed; dropping the remaining connections"
            );
        }
        // After the connections, so their last events (disconnections) are stored too.
        app.webhooks.stop().await;
        app.recorder.stop().await;
        app.bridges.stop().await;
        if let Some(cluster) = &app.cluster {
            cluster.stop().await;
        }
        // Plain HTTP requests still in flight get what is left of a short deadline.
        match tokio::time::timeout(std::time::Duration::from_millis(200), &mut http).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http listener task failed"),
            Err(_) => {
                http.abort();
                let _ = http.await;
            }
        }
        // No task may touch the history or the store once they are closed: each is
        // stopped and awaited first (the store's janitor evicts from the history).
        background.stop().await;
        app.store.quota().stop().await;
        app.store.stop_recovery().await;
        // Last: nothing publishes any more, so the saved positions are final.
        if let Err(e) = app.history.close().await {
            tracing::error!(error = %e, "cannot save the history positions");
        }
        if let Err(e) = app.store.close().await {
            tracing::error!(error = %e, "cannot close the store");
        }
        tracing::info!("stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Opens the message history and puts it under the store's cap.
fn open_history(config: &Config, store: &Store) -> anyhow::Result<Arc<History>> {
    let mut history = config.history.clone();
    // A recovery must fit in the connection's queue.
    history.max_recovery = history.max_recovery.min(config.ws.outbound_queue_messages);
    let history = History::open(history, store).context("cannot open the message history")?;
    store.quota().register(&history);
    Ok(history)
}

/// Starts the embedded MQTT broker, wired to the hub both ways, unless every MQTT
/// listener is turned off; with it, the gate its devices pass.
async fn start_broker(
    config: &Config,
    hub: &Arc<Hub>,
    auth: &Authenticator,
    tls: Option<&Arc<TlsReloader>>,
) -> anyhow::Result<(Option<Arc<Broker>>, Option<Arc<DeviceGate>>)> {
    let mut broker_config = config.mqtt.broker();
    if broker_config.listen.is_none()
        && broker_config.ws_listen.is_none()
        && broker_config.tls_listen.is_none()
        && broker_config.wss_listen.is_none()
    {
        tracing::info!(
            "MQTT is turned off (mqtt.listen, ws_listen, tls_listen and wss_listen are empty)"
        );
        return Ok((None, None));
    }
    broker_config.tls = tls.and_then(|t| t.mqtt_source());
    broker_config.web = config.web_policy();
    let gate = DeviceGate::from_config(config.mqtt.devices(), Some(auth.jwt()))
        .context("cannot load the MQTT password file")?;
    tracing::info!("MQTT devices: {}", gate.describe());
    let gate = Arc::new(gate);
    let ingress = Arc::new(HubIngress::new(
        hub.clone(),
        config.mqtt.offline_notices.get(),
    ));
    let sessions = Arc::new(HubSessions::new(hub.clone()));
    let broker = Broker::start(broker_config, gate.clone(), ingress, sessions).await?;
    Ok((Some(Arc::new(broker)), Some(gate)))
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is first polled:
/// `Server::run` polls it only after the `listening` line, and a signal sent as soon as
/// that line appears would otherwise meet the default action and kill the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = wait(interrupt, "SIGINT") => {}
                _ = wait(terminate, "SIGTERM") => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
