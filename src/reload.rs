//! `systemctl reload` (SIGHUP): read the configuration again and apply what can change
//! without dropping connections.
//!
//! A reload is all or nothing: [`prepare`] reads the new file and every file it names
//! (credentials, certificates, keys, webhook secrets, bridge passwords) without touching
//! the running daemon (it may create the empty on-disk queue of a new webhook or bridge);
//! only when all of it loads does [`apply`] put each part in force. A broken edit
//! therefore changes nothing, and says why in the log and in systemd's STATUS line.
//! Settings that only a restart can change (listeners, data directory, …) are named in
//! a warning, for as long as the running value differs from the file's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use switchboard_bridge::Broker;

use crate::auth::apikeys::KeyFile;
use crate::auth::devices::DeviceGate;
use crate::auth::devices::DeviceRules;
use crate::auth::{Accepted, Authenticator, Kind, Principal};
use crate::config::Config;
use crate::http::inbound_webhooks::{HookSecrets, Hooks};
use crate::hub::outbox::CloseReason;
use crate::hub::Hub;
use crate::logging::{LogChange, LogControl};
use crate::outbound_webhooks::{WebhookPlan, Webhooks};
use crate::tls::{TlsReloader, TlsUpdate};
use crate::uplinks::{BridgePlan, Bridges};
use switchboard_core::protocol::close;

/// Settings a reload puts in force; a change to any other one waits for a restart.
/// A prefix covers every key under it.
const LIVE: &[&str] = &[
    "log_level",
    "auth.allow_anonymous",
    "auth.anonymous.",
    "auth.admin_token_file",
    "auth.jwt",
    "auth.leeway",
    "mqtt.allow_anonymous",
    "mqtt.password_file",
    "mqtt.acl",
    "mqtt.use_identity_as_username",
    "webhooks",
    "bridges",
];

/// The parts a reload changes, and the running configuration it compares the file with;
/// handed over by the composition root (`crate::server`).
pub struct Reloadable {
    /// The configuration the daemon started with.
    pub config: Config,
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub tls: Option<Arc<TlsReloader>>,
    pub hooks: Arc<Hooks>,
    /// The gate devices pass; `None` without the embedded broker.
    pub devices: Option<Arc<DeviceGate>>,
    pub broker: Option<Arc<Broker>>,
    pub webhooks: Arc<Webhooks>,
    pub bridges: Arc<Bridges>,
    pub shutdown: CancellationToken,
}

/// The new configuration with every file it names loaded, ready to apply.
struct Prepared {
    config: Config,
    accepted: Accepted,
    devices: Option<DeviceRules>,
    tls: Option<TlsUpdate>,
    hook_secrets: HookSecrets,
    api_keys: KeyFile,
    webhooks: WebhookPlan,
    bridges: BridgePlan,
}

/// Reads the configuration and every file it names; changes nothing.
fn prepare(running: &Reloadable, path: Option<&Path>) -> anyhow::Result<Prepared> {
    let config = Config::load(path)?;
    let accepted = Accepted::from_config(&config.auth)?;
    let devices = match &running.devices {
        Some(_) => Some(
            DeviceRules::from_config(config.mqtt.devices(), Some(accepted.jwt().clone()))
                .context("cannot load the MQTT password file")?,
        ),
        None => None,
    };
    let tls = match &running.tls {
        Some(tls) => Some(tls.prepare().context("TLS certificate not reloaded")?),
        None => None,
    };
    let hook_secrets = running.hooks.read_secrets()?;
    let api_keys = running.auth.api_keys().read_again()?;
    let webhooks = running
        .webhooks
        .prepare(&config.webhooks)
        .context("cannot set up the webhooks")?;
    let bridges = running
        .bridges
        .prepare(&config.bridges)
        .context("cannot set up the MQTT bridges")?;
    Ok(Prepared {
        config,
        accepted,
        devices,
        tls,
        hook_secrets,
        api_keys,
        webhooks,
        bridges,
    })
}

/// Puts every prepared part in force, in the order that keeps clients consistent:
/// credentials first, then what live connections may do, then the ways out.
fn apply(running: &Reloadable, log: &LogControl, new: Prepared) {
    apply_log_level(log, &new.config.log_level);
    if let (Some(tls), Some(update)) = (&running.tls, new.tls) {
        tls.install(update);
        tracing::info!("TLS certificate reloaded: {}", tls.describe());
    }
    let gone = running.auth.api_keys().install(new.api_keys);
    tracing::info!(
        active = running.auth.api_keys().active(),
        "API keys reloaded"
    );
    close_revoked(&running.hub, &running.auth, &gone);
    running.hooks.install_secrets(new.hook_secrets);
    running.auth.replace(new.accepted);
    regrant_anonymous(running);
    if let (Some(gate), Some(rules)) = (&running.devices, new.devices) {
        gate.replace(rules);
        tracing::info!("MQTT devices: {}", gate.describe());
        if let Some(broker) = &running.broker {
            broker.recheck();
        }
    }
    tracing::info!("clients: {}", running.auth.describe());
    running.webhooks.apply(new.webhooks, &running.hub);
    running.bridges.apply(new.bridges, &running.hub);
}

/// The log filter of the new configuration, now.
fn apply_log_level(log: &LogControl, filter: &str) {
    match log.set(filter) {
        Ok(LogChange::Applied) => tracing::info!(log_level = filter, "log level applied"),
        Ok(LogChange::Unchanged) => {}
        Ok(LogChange::EnvWins) => tracing::info!(
            log_level = filter,
            "log_level changed but not applied: RUST_LOG decides the log level"
        ),
        Err(e) => tracing::error!(error = %e, "log level not changed"),
    }
}

/// Anonymous WebSocket connections get the new anonymous grants, losing (and told of)
/// subscriptions these no longer allow; if anonymous clients are no longer allowed,
/// they are closed as revoked credentials are.
fn regrant_anonymous(running: &Reloadable) {
    let anonymous = |p: &Principal| p.kind == Kind::Anonymous;
    match running.auth.anonymous() {
        Some(principal) => {
            let narrowed =
                running
                    .hub
                    .regrant(anonymous, &principal, "the server's permissions changed");
            if narrowed > 0 {
                tracing::info!(
                    connections = narrowed,
                    "anonymous permissions narrowed: subscriptions they no longer allow were dropped"
                );
            }
        }
        None => {
            let reason = CloseReason::Code(close::CREDENTIALS_REVOKED, "anonymous access ended");
            let closed = running.hub.close_where(anonymous, reason);
            if closed > 0 {
                running.auth.rejections.count_revoked_closes(closed);
                tracing::info!(
                    connections = closed,
                    "anonymous clients are no longer allowed: their connections closed"
                );
            }
        }
    }
}

/// The changed settings that only a restart applies.
fn needing_restart(old: &Config, new: &Config) -> Vec<String> {
    crate::config::changed_keys(old, new)
        .into_iter()
        .filter(|key| {
            !LIVE
                .iter()
                .any(|live| key == live || (live.ends_with('.') && key.starts_with(live)))
        })
        .collect()
}

/// One SIGHUP. Returns the STATUS line for systemd.
fn reload(running: &Reloadable, log: &LogControl, path: Option<&Path>) -> String {
    let prepared = match prepare(running, path) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "reload refused: the configuration is invalid; the running one stays in force"
            );
            return format!(
                "reload refused: invalid configuration; {}",
                status_of(running)
            );
        }
    };
    let restart = needing_restart(&running.config, &prepared.config);
    apply(running, log, prepared);
    if restart.is_empty() {
        format!("reload applied; {}", status_of(running))
    } else {
        tracing::warn!(
            settings = restart.join(", "),
            "the configuration changed where a reload cannot apply it: these settings take effect at the next restart"
        );
        format!(
            "reload applied; restart needed for {}; {}",
            restart.join(", "),
            status_of(running)
        )
    }
}

/// What `systemctl status` shows after a reload: the daemon serves, with how many clients.
fn status_of(running: &Reloadable) -> String {
    format!("serving {} clients", running.hub.stats().connections)
}

/// Reloads on every SIGHUP until shutdown.
#[cfg(unix)]
pub async fn on_sighup(
    mut hangup: tokio::signal::unix::Signal,
    running: Arc<Reloadable>,
    config_path: Option<PathBuf>,
    log: LogControl,
) {
    let log = Arc::new(log);
    loop {
        tokio::select! {
            got = hangup.recv() => if got.is_none() { return },
            _ = running.shutdown.cancelled() => return,
        }
        tracing::info!("SIGHUP: reloading");
        crate::systemd::reloading();
        // Files are read (and passwords hashed) here: off the async workers.
        let (a, path, l) = (running.clone(), config_path.clone(), log.clone());
        let status = tokio::task::spawn_blocking(move || reload(&a, &l, path.as_deref()))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "the reload task failed");
                "reload failed; serving with the previous configuration".to_owned()
            });
        tracing::info!(%status, "reload done");
        crate::systemd::ready(&status);
    }
}

/// How often the API key file is looked at: a revocation takes effect within this.
const API_KEYS_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Follows the API key file until shutdown, so `switchboard apikey revoke` reaches live
/// connections without a signal.
pub async fn watch_api_keys(hub: Arc<Hub>, auth: Arc<Authenticator>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(API_KEYS_POLL) => {}
            _ = shutdown.cancelled() => return,
        }
        match auth.api_keys().reload_if_changed() {
            Ok(gone) => close_revoked(&hub, &auth, &gone),
            Err(e) => {
                tracing::warn!(error = %e, "API key file changed but cannot be read; the previous keys stay")
            }
        }
    }
}

/// Closes the live connections of API keys that are no longer valid.
fn close_revoked(hub: &Hub, auth: &Authenticator, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let revoked = |p: &Principal| matches!(&p.kind, Kind::ApiKey { id } if ids.contains(id));
    let reason = CloseReason::Code(close::CREDENTIALS_REVOKED, "credentials revoked");
    let closed = hub.close_where(revoked, reason);
    auth.rejections.count_revoked_closes(closed);
    tracing::info!(keys = ?ids, connections = closed, "API keys revoked: their connections closed");
}
