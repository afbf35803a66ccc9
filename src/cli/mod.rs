//! The operator's command-line tools (the daemon's own commands live in `main.rs`):
//! `sub` and `pub` talk to a running daemon through [`crate::client`]; `passwd` edits a
//! device password file; `apikey` creates, lists and revokes API keys; `token create`
//! mints a client JWT. Each tool is a clap `Args` struct and a `run_*` function;
//! `main.rs` only wires them in.

pub mod apikey;
pub mod passwd;
pub mod pubsub;
pub mod token;

/// Where and as whom to connect, shared by every client tool.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// WebSocket endpoint of the daemon.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = crate::client::DEFAULT_URL)]
    pub url: String,
    /// User id to connect as (`?user=`; honoured when the daemon runs without auth).
    #[arg(long)]
    pub user: Option<String>,
}

impl ConnectArgs {
    pub fn options(&self) -> crate::client::ClientOptions {
        let mut options = crate::client::ClientOptions::new(&self.url);
        options.user = self.user.clone();
        options
    }
}
