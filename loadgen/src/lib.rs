//! `switchboard-bench` as a library: the lean raw-socket clients, the machine and
//! process helpers and the result writers that the `switchboard-bench` binary races
//! systems with.
//!
//! Clients: [`read_buf`], [`ws_frame`], [`proto`] (MQTT and WebSocket codecs),
//! [`engineio`], [`client`]. Processes and the machine: [`host`], [`peers`]. Measuring
//! and reporting: [`point`], [`worker`], [`results`], [`chart`], [`scenarios`].

pub mod chart;
pub mod client;
pub mod engineio;
pub mod host;
pub mod peers;
pub mod point;
pub mod proto;
pub mod read_buf;
pub mod results;
pub mod scenarios;
pub mod worker;
pub mod ws_frame;
