//! `[http]`, the listener for HTTP and WebSocket, and `[metrics]`, the `/metrics`
//! endpoint it serves.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{nz, positive_duration};

/// The HTTP and WebSocket listener: where, how many, how long a stranger may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP + WebSocket listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve HTTPS and WSS with the certificate in `[tls]`.
    pub tls: bool,
    /// Connections (HTTP and WebSocket) open at once; more are closed at accept.
    pub max_connections: NonZeroUsize,
    /// Connections open at once from one IP address: a twentieth of the default
    /// total, so one address cannot take every place while a NAT or a busy host still
    /// gets many.
    pub max_connections_per_ip: NonZeroUsize,
    /// Time a new connection has for its TLS handshake and first request (HTTP/1.1 or
    /// HTTP/2).
    #[serde(with = "positive_duration")]
    pub handshake_timeout: Duration,
    /// Time a request's body has to arrive whole, from its headers on; a body trickled
    /// slower fails (and its connection closes), so it cannot hold a connection slot.
    #[serde(with = "positive_duration")]
    pub body_timeout: Duration,
    /// Largest body of `POST /api/v1/publish/batch`; other requests are held to
    /// `ws.max_message_size`.
    pub max_batch_bytes: NonZeroUsize,
    /// How long an HTTP publish's idempotency key is remembered.
    #[serde(with = "positive_duration")]
    pub idempotency_window: Duration,
    /// Host names (the `Host` header) the daemon may be reached by besides loopback
    /// names and IP addresses, which always may; against DNS rebinding
    /// (docs/security.md).
    pub allowed_hosts: Vec<String>,
    /// Serve the web dashboard at `/dashboard/` (docs/dashboard.md).
    pub dashboard: bool,
    /// Serve the demo apps at `/demo/` (demos/README.md).
    pub demos: bool,
}

/// The Prometheus endpoint `/metrics` (docs/metrics.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// `/metrics` needs no credential; when false it needs the admin token.
    pub public: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            tls: false,
            max_connections: nz(20_000),
            max_connections_per_ip: nz(1_000),
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_batch_bytes: nz(1024 * 1024),
            idempotency_window: Duration::from_secs(300),
            allowed_hosts: Vec::new(),
            dashboard: true,
            demos: false,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            public: true,
        }
    }
}
