//! `switchboard token create`: mints a client JWT with a key from the configuration,
//! for trying things out from a shell and for backends that would rather call a command
//! than a JWT library.
//!
//! HS* keys sign with the configured `secret_file`. RS*, ES256 and EdDSA keys are
//! configured by their public key only, so the private key is given with
//! `--private-key`. The token is checked with the daemon's own verifier before it is
//! printed: a private key that does not match the configured public key, or a subject
//! the daemon would refuse, fails here rather than at connect.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::auth::config::JwtKeyConfig;
use crate::auth::jwt::{mint, JwtVerifier, MintKey};
use crate::auth::principal::unix_now;
use crate::config::Config;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Mint a client JWT and print it (only it) on standard output.
    Create(CreateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Configuration file whose `auth.jwt` keys sign and verify the token.
    #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
    pub config: PathBuf,
    /// The user the token is for (`sub`).
    #[arg(long)]
    pub sub: String,
    /// How long the token is valid (`30m`, `1h`, `7d`…).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// A topic filter the client may publish to; `{sub}` is the user. Repeatable.
    #[arg(long, value_name = "FILTER")]
    pub publish: Vec<String>,
    /// A topic filter the client may subscribe within; `{sub}` is the user. Repeatable.
    #[arg(long, value_name = "FILTER")]
    pub subscribe: Vec<String>,
    /// A user the client may send direct messages to, or `*` for anyone. Repeatable.
    #[arg(long, value_name = "USER")]
    pub send: Vec<String>,
    /// Sign with the key of this kid (default: the first HS* key, or with
    /// --private-key the only RS*, ES256 or EdDSA key).
    #[arg(long)]
    pub kid: Option<String>,
    /// The private key (PEM) of an RS*, ES256 or EdDSA key.
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// Presence info shown to others, a JSON object (`{"name":"Alice"}`).
    #[arg(long, value_name = "JSON")]
    pub info: Option<String>,
    /// Publishes per second the client may make (overrides ws.publish_rate).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub publish_rate: Option<u32>,
    /// Publishes the client may make in a burst (overrides ws.publish_burst).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub publish_burst: Option<u32>,
    /// Subscriptions the client may hold (overrides ws.max_subscriptions).
    #[arg(long, value_name = "N")]
    pub max_subscriptions: Option<usize>,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create(args) => {
            let token = create(&args)?;
            println!("{token}");
            Ok(())
        }
    }
}

/// Mints the token `args` describe and checks that the daemon would accept it.
pub fn create(args: &CreateArgs) -> anyhow::Result<String> {
    // The error already names the file and its cause; `{e}` keeps it to one line.
    let config = Config::load(Some(&args.config)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = args.config.display();
    let keys = &config.auth.jwt;
    if keys.is_empty() {
        // Say exactly what to add: the first token is often the first contact with JWTs.
        bail!(
            "no JWT keys are configured ([[auth.jwt]] in {path}). For a shared-secret key, \
             make a secret of at least 32 bytes and name it in the configuration:\n\n    \
             head -c 32 /dev/urandom > jwt.secret && chmod 600 jwt.secret\n    \
             printf '[[auth.jwt]]\\nalgorithm = \"HS256\"\\nsecret_file = \"jwt.secret\"\\n' >> {path}\n\n\
             (docs/security.md has RS256, ES256 and EdDSA keys)"
        );
    }
    // The keys the daemon would load, checked first: a broken one is reported as such.
    let verifier =
        JwtVerifier::from_config(&config.auth).context("cannot load the configured JWT keys")?;
    let key = choose_key(keys, args)
        .with_context(|| format!("cannot choose a signing key from {path}"))?;
    let name = if key.kid.is_empty() {
        format!("{:?} key without kid", key.algorithm)
    } else {
        format!("key `{}`", key.kid)
    };
    let signer = MintKey::from_config(key, args.private_key.as_deref())
        .with_context(|| format!("cannot sign with the {name}"))?;
    let token = mint(&signer, &claims(args)?)?;
    verifier
        .verify(&token)
        .with_context(|| match args.private_key.as_ref() {
            Some(p) => format!(
                "the daemon would refuse this token (does {} match the {name}?)",
                p.display()
            ),
            None => "the daemon would refuse this token".to_owned(),
        })?;
    Ok(token)
}

fn choose_key<'a>(keys: &'a [JwtKeyConfig], args: &CreateArgs) -> anyhow::Result<&'a JwtKeyConfig> {
    if let Some(kid) = &args.kid {
        return keys.iter().find(|k| &k.kid == kid).with_context(|| {
            let known: Vec<String> = keys
                .iter()
                .filter(|k| !k.kid.is_empty())
                .map(|k| format!("`{}`", k.kid))
                .collect();
            if known.is_empty() {
                format!("no key has kid `{kid}` (no key has a kid)")
            } else {
                format!("no key has kid `{kid}` (configured: {})", known.join(", "))
            }
        });
    }
    if args.private_key.is_some() {
        let public: Vec<&JwtKeyConfig> = keys.iter().filter(|k| !k.algorithm.is_hmac()).collect();
        return match public.as_slice() {
            [] => {
                bail!("--private-key was given but every key is HS* (signed with its secret_file)")
            }
            [key] => Ok(key),
            _ => bail!("several RS*, ES256 or EdDSA keys are configured: choose one with --kid"),
        };
    }
    keys.iter().find(|k| k.algorithm.is_hmac()).context(
        "no HS* key is configured; to sign with an RS*, ES256 or EdDSA key give --private-key FILE (and --kid)",
    )
}

fn claims(args: &CreateArgs) -> anyhow::Result<Value> {
    if args.ttl.is_zero() {
        bail!("--ttl must be longer than zero");
    }
    let now = unix_now();
    let mut claims = json!({
        "sub": args.sub,
        "iat": now,
        "exp": now.saturating_add(args.ttl.as_secs()),
    });
    let set = |claims: &mut Value, name: &str, v: &Vec<String>| {
        if !v.is_empty() {
            claims[name] = json!(v);
        }
    };
    set(&mut claims, "publish", &args.publish);
    set(&mut claims, "subscribe", &args.subscribe);
    set(&mut claims, "send", &args.send);
    if let Some(info) = &args.info {
        let info: Value = serde_json::from_str(info).context("--info is not valid JSON")?;
        if !info.is_object() {
            bail!("--info must be a JSON object, such as '{{\"name\":\"Alice\"}}'");
        }
        claims["info"] = info;
    }
    let mut limits = Map::new();
    if let Some(n) = args.publish_rate {
        limits.insert("publish_rate".into(), n.into());
    }
    if let Some(n) = args.publish_burst {
        limits.insert("publish_burst".into(), n.into());
    }
    if let Some(n) = args.max_subscriptions {
        limits.insert("max_subscriptions".into(), n.into());
    }
    if !limits.is_empty() {
        claims["limits"] = Value::Object(limits);
    }
    Ok(claims)
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s)
        .map_err(|e| format!("{e} (examples: 30m, 1h, 7d)"))
}
