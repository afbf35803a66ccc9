//! switchboard: a real-time gateway for the edge.
//!
//! The tree follows the data path (see docs/ and DESIGN): [`topic`] says what a topic
//! is, [`protocol`] what a WebSocket frame is, [`hub`] routes messages between
//! sessions, [`ws`] serves WebSocket connections, [`http`] the HTTP listener,
//! [`server`] starts and stops it all, [`config`] reads the configuration, and
//! [`client`] is the Rust client that talks to a running daemon.

pub mod cli;
pub mod client;
pub mod config;
pub mod http;
pub mod hub;
pub mod protocol;
pub mod server;
pub mod topic;
pub mod ws;
