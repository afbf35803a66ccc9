//! switchboard: a real-time gateway for the edge. docs/architecture.md is the map.
//!
//! The tree follows the data path and its layers, lowest first: [`settings`], [`hex`],
//! [`throttle`], [`background`] (task ownership) and [`metrics`] (the registry parts
//! register into) are leaves; [`store`] keeps what must survive a restart and [`tls`]
//! loads certificates; [`auth`] says who a client is and what it may do, [`history`]
//! keeps per-topic streams; [`hub`] routes every message; [`mqtt`] joins the embedded
//! broker (crate `switchboard-bridge`) to the hub, [`live`] holds the parts a reload adds
//! and removes, [`systemd`] talks to the service manager; [`outbound_webhooks`] and
//! [`recordings`] keep and deliver what the hub routes; [`uplinks`] bridges to upstream
//! MQTT brokers and [`logging`] writes logs; [`http`] serves the HTTP listener, the REST
//! API and inbound webhooks; [`ws`] serves WebSocket connections; [`config`] composes
//! every module's configuration section; [`reload`] applies a changed configuration on
//! SIGHUP and [`cli`] is the command line; [`server`] opens every part and hands each
//! consumer its narrow pieces. Topic rules, the wire protocol and the message
//! vocabulary are the crate `switchboard-core`; the Rust client is `switchboard-client`.

pub mod auth;
pub mod background;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod hex;
pub mod history;
pub mod http;
pub mod hub;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod outbound_webhooks;
pub mod pubkeys;
pub mod recordings;
pub mod reload;
pub mod server;
pub mod settings;
pub mod store;
pub mod systemd;
pub mod throttle;
pub mod tls;
pub mod uplinks;
pub mod ws;
