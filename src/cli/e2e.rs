//! `switchboard e2e …`: end-to-end encryption from a shell (docs/e2e.md). `keygen` makes
//! a key pair in a file only its owner reads; `register`, `keys` and `revoke` use the
//! daemon's public-key registry; `seal` and `open` turn standard input into an envelope
//! and back without the daemon; `pub` seals and publishes, `sub` subscribes and opens.
//!
//! The private key never leaves its file; the daemon sees public keys and envelopes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use switchboard_client::Client;
use switchboard_e2e::jwk::{fingerprint, DEFAULT_BITS};
use switchboard_e2e::room::Reading;
use switchboard_e2e::{seal, Binding, Inbox, KeyPair, Kind, PublicJwk, Received};

use super::api::{Api, ApiArgs};
use super::ConnectArgs;
use crate::auth::private_file;

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    #[command(subcommand)]
    pub command: E2eCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum E2eCommand {
    /// Make a key pair: the private JWK in FILE (mode 0600), the public one in FILE.pub.
    Keygen {
        file: PathBuf,
        /// The modulus size: 2048 to 4096 bits.
        #[arg(long, default_value_t = DEFAULT_BITS)]
        bits: usize,
        /// Replace FILE if it exists (the old key can then no longer open anything).
        #[arg(long)]
        force: bool,
    },
    /// Register the public half of a key file for USER in the daemon's registry.
    Register {
        /// The key file `keygen` wrote (only its public members are sent).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        user: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List USER's registered keys: thumbprint, size, fingerprint.
    Keys {
        user: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke one of USER's keys by its thumbprint.
    Revoke {
        user: String,
        kid: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Seal standard input for recipients; prints the envelope (JSON).
    Seal {
        #[command(flatten)]
        to: Recipients,
        #[command(flatten)]
        binding: BindingArgs,
    },
    /// Open an envelope from standard input with a key file; prints the plaintext.
    Open {
        #[arg(long)]
        key: PathBuf,
        /// The topic it was delivered on: refused if it was sealed for another.
        #[arg(long)]
        topic: String,
    },
    /// Seal DATA (or standard input) and publish the envelope on --topic.
    Pub {
        data: Option<String>,
        #[command(flatten)]
        to: Recipients,
        #[command(flatten)]
        binding: BindingArgs,
    },
    /// Subscribe and print what opens with a key file; what does not is reported on
    /// standard error, never dropped silently.
    Sub {
        #[arg(required = true, value_name = "FILTER")]
        filters: Vec<String>,
        #[arg(long)]
        key: PathBuf,
        /// Exit after N messages opened.
        #[arg(short = 'C', long, value_name = "N")]
        count: Option<u64>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// Whom to seal for: registered users (all their keys) and public key files.
#[derive(clap::Args, Debug)]
pub struct Recipients {
    /// A registered user; every key they registered gets a copy.
    #[arg(long = "to", value_name = "USER")]
    users: Vec<String>,
    /// A public key file (`keygen`'s FILE.pub), for recipients not in the registry.
    #[arg(long = "to-key", value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// What the protected header binds.
#[derive(clap::Args, Debug)]
pub struct BindingArgs {
    /// The topic it is for; a receiver refuses it on any other.
    #[arg(long)]
    topic: String,
    /// The sender's name, bound into the envelope.
    #[arg(long)]
    from: String,
}

pub async fn run_e2e(args: E2eArgs) -> anyhow::Result<()> {
    match args.command {
        E2eCommand::Keygen { file, bits, force } => keygen(&file, bits, force),
        E2eCommand::Register { key, user, api } => {
            let pair = read_key(&key)?;
            let api = Api::new(&api)?;
            let public = json!({"kty": "RSA", "n": pair.public().n, "e": pair.public().e});
            let record = api
                .json(
                    Method::POST,
                    &format!("/e2e/keys/{}", segment(&user)),
                    Some(public),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(())
        }
        E2eCommand::Keys { user, api } => {
            let list = Api::new(&api)?
                .json(Method::GET, &format!("/e2e/keys/{}", segment(&user)), None)
                .await?;
            for key in list["keys"].as_array().into_iter().flatten() {
                println!(
                    "{} {} bits  {}",
                    str_of(&key["kid"]),
                    key["bits"],
                    str_of(&key["fingerprint"])
                );
            }
            Ok(())
        }
        E2eCommand::Revoke { user, kid, api } => {
            let path = format!("/e2e/keys/{}/{}", segment(&user), segment(&kid));
            Api::new(&api)?.json(Method::DELETE, &path, None).await?;
            Ok(())
        }
        E2eCommand::Seal { to, binding } => {
            let keys = recipients(&to).await?;
            let envelope = seal_stdin_or(None, &keys, &binding)?;
            println!("{}", serde_json::to_string(&envelope)?);
            Ok(())
        }
        E2eCommand::Open { key, topic } => {
            let mut inbox = Inbox::new(read_key(&key)?);
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            let envelope: Value =
                serde_json::from_str(&text).context("standard input is not JSON")?;
            match inbox.open(&topic, None, &envelope, Reading::Live)? {
                Received::Message(m) => std::io::stdout().write_all(&m.plaintext)?,
                Received::RoomKey(_, k) => eprintln!("a room key: {} epoch {}", k.room, k.epoch),
            }
            Ok(())
        }
        E2eCommand::Pub { data, to, binding } => {
            let keys = recipients(&to).await?;
            let envelope = seal_stdin_or(data, &keys, &binding)?;
            let client = Client::connect(to.connect.options()).await?;
            let seq = client.publish(&binding.topic, &envelope).await?;
            client.close().await;
            eprintln!("published as seq {seq} on {}", binding.topic);
            Ok(())
        }
        E2eCommand::Sub {
            filters,
            key,
            count,
            connect,
        } => sub(filters, &key, count, connect).await,
    }
}

fn keygen(file: &Path, bits: usize, force: bool) -> anyhow::Result<()> {
    if file.exists() && !force {
        bail!(
            "{} exists; pass --force to replace it (its key can then open nothing)",
            file.display()
        );
    }
    let pair = KeyPair::generate(bits)
        .with_context(|| format!("cannot make an RSA key of {bits} bits (2048 to 4096)"))?;
    let private = serde_json::to_vec_pretty(&pair.to_private_jwk())?;
    private_file::replace(file, &private, false, |_| Ok(true))?;
    let public_path = public_path(file);
    std::fs::write(&public_path, serde_json::to_vec_pretty(pair.public())?)
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    println!("kid {}", pair.kid());
    println!("fingerprint {}", fingerprint(pair.kid()));
    eprintln!(
        "private key in {} (keep it), public key in {}",
        file.display(),
        public_path.display()
    );
    Ok(())
}

fn public_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn read_key(path: &Path) -> anyhow::Result<KeyPair> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not a JWK", path.display()))?;
    KeyPair::from_private_jwk(&value)
        .with_context(|| format!("{} is not a private key", path.display()))
}

/// Every key to seal for, each named on standard error with its fingerprint so the
/// sender can compare it with the recipient's.
async fn recipients(to: &Recipients) -> anyhow::Result<Vec<PublicJwk>> {
    let mut keys = Vec::new();
    for path in &to.files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        keys.push(PublicJwk::parse(&value).with_context(|| format!("{}", path.display()))?);
    }
    if !to.users.is_empty() {
        let api = Api::new(&ApiArgs {
            url: to.connect.url.clone(),
            token: to.connect.token.clone(),
            ca_file: to.connect.ca_file.clone(),
        })?;
        for user in &to.users {
            let list = api
                .json(Method::GET, &format!("/e2e/keys/{}", segment(user)), None)
                .await?;
            let found = list["keys"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if found.is_empty() {
                bail!("{user} has no registered key (`switchboard e2e register`)");
            }
            for record in found {
                let key = PublicJwk::parse(&record["jwk"])
                    .with_context(|| format!("a key of {user} from the registry"))?;
                eprintln!("sealing for {user}: {}", fingerprint(&key.kid));
                keys.push(key);
            }
        }
    }
    if keys.is_empty() {
        bail!("no recipient: give --to USER or --to-key FILE");
    }
    Ok(keys)
}

fn seal_stdin_or(
    data: Option<String>,
    keys: &[PublicJwk],
    b: &BindingArgs,
) -> anyhow::Result<Value> {
    let plaintext = match data {
        Some(text) => text.into_bytes(),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading standard input")?;
            bytes
        }
    };
    let envelope = seal(
        &plaintext,
        keys,
        Binding::new(Kind::Sealed, &b.topic, &b.from),
    )?;
    Ok(envelope.to_value())
}

async fn sub(
    filters: Vec<String>,
    key: &Path,
    count: Option<u64>,
    connect: ConnectArgs,
) -> anyhow::Result<()> {
    let mut inbox = Inbox::new(read_key(key)?);
    let client = Client::connect(connect.options()).await?;
    let mut streams = Vec::new();
    for filter in &filters {
        let subscription = client
            .subscribe(filter.as_str())
            .await
            .with_context(|| format!("subscribing to `{filter}`"))?;
        streams.push(subscription);
    }
    let mut messages = futures_util::stream::select_all(streams);
    let mut opened = 0u64;
    while count.is_none_or(|n| opened < n) {
        let Some(msg) = messages.next().await else {
            bail!("the connection ended");
        };
        let data: Value = match serde_json::from_str(msg.data.get()) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let reading = if msg.history || msg.retained {
            Reading::History
        } else {
            Reading::Live
        };
        match inbox.open(&msg.topic, None, &data, reading) {
            Ok(Received::Message(m)) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&m.plaintext)?;
                out.write_all(b"\n")?;
                out.flush()?;
                opened += 1;
            }
            Ok(Received::RoomKey(_, k)) => {
                eprintln!("{}: room key for {} epoch {}", msg.topic, k.room, k.epoch)
            }
            Err(e) => eprintln!("{} seq {}: not opened: {e}", msg.topic, msg.seq),
        }
    }
    client.close().await;
    Ok(())
}

/// A user name or thumbprint as one URL path segment.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}
