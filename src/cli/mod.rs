//! The operator's command-line tools (the daemon's own commands live in `main.rs`):
//! `sub` and `pub` talk to a running daemon through [`switchboard_client`]; `passwd` edits a
//! device password file; `apikey` creates, lists and revokes API keys; `token create`
//! mints a client JWT; `record` and `replay` manage recordings through the REST API;
//! `store check` checks the local store of a stopped daemon, `store salvage` copies what
//! still reads from a damaged one; `e2e` makes keys, uses the public-key registry, and
//! seals, opens, publishes and reads end-to-end encrypted messages.
//! Each tool is a clap `Args` struct and a `run_*` function;
//! `main.rs` only wires them in.

pub mod api;
pub mod apikey;
pub mod e2e;
pub mod passwd;
pub mod pubsub;
pub mod record;
pub mod store;
pub mod token;

/// Where and as whom to connect, shared by every client tool.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// WebSocket endpoint of the daemon.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = switchboard_client::DEFAULT_URL)]
    pub url: String,
    /// Name to connect as anonymously (`?user=`; only where anonymous clients are allowed).
    #[arg(long, conflicts_with = "token")]
    pub user: Option<String>,
    /// Credential: a client JWT, an API key or the admin token. From the environment
    /// rather than the command line where others can read it (`ps`).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM CA certificate to trust for `wss://` besides the system roots.
    #[arg(long, env = "SWITCHBOARD_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl ConnectArgs {
    pub fn options(&self) -> switchboard_client::ClientOptions {
        let mut options = switchboard_client::ClientOptions::new(&self.url);
        options.user = self.user.clone();
        options.token = self.token.clone();
        options.ca_file = self.ca_file.clone();
        options
    }
}
