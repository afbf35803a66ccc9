//! The ground floor of switchboard, shared by the daemon, the Rust client, the MQTT crate
//! and the load generator. It imports nothing of theirs, so what a topic, a frame or a
//! message is cannot depend on who routes, stores or sends it.
//!
//! [`topic`] says what a valid topic or filter is and whether one matches the other;
//! [`protocol`] is the WebSocket wire format; [`message`] is what enters the Hub and what
//! its observers see; [`grants`] is what one identity may do; [`clock`] stamps messages;
//! [`quiet`] keeps logs readable when a client repeats itself; [`deflate`] is the
//! WebSocket compression extension tungstenite lacks; [`web`] is which browser
//! pages and host names every web-facing listener accepts; [`delivery`] is what an MQTT
//! subscriber is sent, and [`payload`] the rule between MQTT payloads and JSON `data`.

pub mod backoff;
pub mod clock;
pub mod deflate;
pub mod delivery;
pub mod grants;
pub mod message;
pub mod payload;
pub mod protocol;
pub mod quiet;
pub mod topic;
pub mod web;

pub use grants::{Forbidden, Grants};
