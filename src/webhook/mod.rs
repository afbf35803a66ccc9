//! Webhooks out: configured HTTP endpoints that follow topics and lifecycle events like a
//! subscriber would, with signed, retried, persisted deliveries. Inbound hooks (other
//! services posting to us) live in `crate::http::hooks` and share [`signature`].

pub mod signature;
