//! switchboard: a real-time gateway for the edge.
//!
//! The tree follows the data path (see docs/ and DESIGN): [`topic`] says what a topic
//! is, [`protocol`] what a WebSocket frame is, [`hub`] routes messages between
//! sessions, [`ws`] serves WebSocket connections, [`http`] the HTTP listener, [`mqtt`]
//! joins the embedded MQTT broker (crate `switchboard-bridge`) to the hub, [`auth`] says
//! which devices may connect and what they may do, [`tls`] loads and reloads certificates,
//! [`store`] keeps what must survive a restart, [`webhook`] delivers
//! events to HTTP endpoints, [`bridges`] links the Hub to other MQTT brokers, [`metrics`] shows the live figures, [`server`] starts and
//! stops it all, [`reload`] applies a changed configuration on SIGHUP ([`live`] holds the parts it adds and removes), [`logging`] sets up logs, [`systemd`] tells the service manager how that goes, [`config`] reads the configuration, and
//! [`client`] is the Rust client that talks to a running daemon.

pub mod auth;
pub mod bridges;
pub mod cli;
pub mod client;
pub mod config;
pub mod config_files;
pub mod hex;
pub mod history;
pub mod http;
pub mod hub;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod protocol;
pub mod recorder;
pub mod reload;
pub mod server;
pub mod store;
pub mod systemd;
pub mod throttle;
pub mod tls;
pub mod topic;
pub mod webhook;
pub mod ws;
