//! PLACEHOLDER written by the daemon author so main.rs compiles; the client helper replaces this file.
pub mod pubsub;
