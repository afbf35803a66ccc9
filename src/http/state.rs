//! What the HTTP routes serve from. The composition root fills one [`HttpState`]; each
//! handler takes only the parts it uses (axum's `FromRef`: `State<Arc<Hub>>`,
//! `State<Limits>`…), so a handler's signature says what it can reach.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;

use switchboard_bridge::Broker;

use super::api::IdempotencyCache;
use super::inbound_webhooks::Hooks;
use super::listener::ListenerStats;
use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::metrics::Registry;
use crate::outbound_webhooks::Webhooks;
use crate::pubkeys::KeyRegistry;
use crate::recordings::Recorder;
use crate::uplinks::Bridges;

/// Sizes and windows the handlers enforce, from `[ws]` and `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, as for a WebSocket frame (`ws.max_message_size`).
    pub max_message_size: usize,
    /// Largest batch or import body (`http.max_batch_bytes`).
    pub max_batch_bytes: usize,
    pub idempotency_window: Duration,
}

/// Facts about the running daemon that `/api/v1/info` and `/metrics` show.
#[derive(Debug, Clone, Copy)]
pub struct About {
    /// Milliseconds since the Unix epoch when the daemon started.
    pub started_at: u64,
    /// `[metrics] enabled`: whether `/metrics` answers at all.
    pub metrics_enabled: bool,
    /// `[metrics] public`: whether `/metrics` answers without the admin credential.
    pub metrics_public: bool,
    /// `[http] dashboard`: whether `/dashboard/` is served.
    pub dashboard: bool,
    /// `[http] demos`: whether `/demo/` is served.
    pub demos: bool,
}

#[derive(Clone)]
pub struct HttpState {
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub recorder: Arc<Recorder>,
    pub webhooks: Arc<Webhooks>,
    pub bridges: Arc<Bridges>,
    /// The end-to-end encryption public-key registry.
    pub pubkeys: Arc<KeyRegistry>,
    pub hooks: Arc<Hooks>,
    pub metrics: Arc<Registry>,
    pub idempotency: Arc<IdempotencyCache>,
    /// The embedded MQTT broker, for `/healthz` and `/api/v1/info`.
    pub broker: Option<Arc<Broker>>,
    /// The listener's connection counters, for `/healthz`.
    pub listener: Arc<ListenerStats>,
    /// Whether the local store's writes succeed, for `/healthz`.
    pub store: Arc<crate::store::Health>,
    pub limits: Limits,
    pub about: About,
    /// Cancelled when shutdown begins: `/healthz` answers 503 from then on.
    pub shutdown: CancellationToken,
    /// The Redis bus (`[cluster]`), for `/healthz` and `/api/v1/info`; `None` when off.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// One `FromRef` per part a handler may take.
macro_rules! parts {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(impl FromRef<HttpState> for $ty {
            fn from_ref(state: &HttpState) -> Self {
                state.$field.clone()
            }
        })*
    };
}

parts!(
    hub: Arc<Hub>,
    auth: Arc<Authenticator>,
    recorder: Arc<Recorder>,
    webhooks: Arc<Webhooks>,
    bridges: Arc<Bridges>,
    pubkeys: Arc<KeyRegistry>,
    hooks: Arc<Hooks>,
    metrics: Arc<Registry>,
    idempotency: Arc<IdempotencyCache>,
    broker: Option<Arc<Broker>>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    limits: Limits,
    about: About,
);
