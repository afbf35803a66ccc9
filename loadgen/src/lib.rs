//! `switchboard-bench` as a library: the lean raw-socket clients, the machine and
//! process helpers and the result writers that the `switchboard-bench` binary races
//! systems with, and that the root package's `cargo bench` benches (and the bridge
//! tests, for [`mosquitto`]) share instead of including each other's files.
//!
//! Clients: [`read_buf`], [`ws_frame`], [`wire`] (switchboard's protocol on a raw
//! WebSocket), [`proto`] (MQTT and WebSocket codecs), [`engineio`], [`client`].
//! Processes and the machine: [`host`], [`daemon`] (the daemon under test, given its
//! binary), [`mosquitto`], [`peers`]. Measuring and reporting: [`clock`], [`harness`],
//! [`point`], [`worker`], [`results`], [`chart`], [`scenarios`] (with its
//! `cluster` scenario).

pub mod chart;
pub mod client;
pub mod clock;
pub mod daemon;
pub mod engineio;
pub mod harness;
pub mod host;
pub mod mosquitto;
pub mod peers;
pub mod point;
pub mod proto;
pub mod read_buf;
pub mod results;
pub mod scenarios;
pub mod wire;
pub mod worker;
pub mod ws_frame;
