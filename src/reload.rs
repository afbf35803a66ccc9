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

use crate::auth::apikeys::KeyFile;
use crate::auth::devices::DeviceRules;
use crate::auth::{Accepted, Kind, Principal};
use crate::bridges::BridgePlan;
use crate::config::Config;
use crate::http::hooks::HookSecrets;
use crate::hub::outbox::CloseReason;
use crate::logging::{LogChange, LogControl};
use crate::server::App;
use crate::tls::TlsUpdate;
use crate::webhook::WebhookPlan;
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
fn prepare(app: &App, path: Option<&Path>) -> anyhow::Result<Prepared> {
    let config = Config::load(path)?;
    let accepted = Accepted::from_config(&config.auth)?;
    let devices = match &app.devices {
        Some(_) => Some(
            DeviceRules::from_config(config.mqtt.devices(), Some(accepted.jwt().clone()))
                .context("cannot load the MQTT password file")?,
        ),
        None => None,
    };
    let tls = match &app.tls {
        Some(tls) => Some(tls.prepare().context("TLS certificate not reloaded")?),
        None => None,
    };
    let hook_secrets = app.hooks.read_secrets()?;
    let api_keys = app.auth.api_keys().read_again()?;
    let webhooks = app
        .webhooks
        .prepare(&config.webhooks)
        .context("cannot set up the webhooks")?;
    let bridges = app
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
fn apply(app: &App, log: &LogControl, new: Prepared) {
    apply_log_level(log, &new.config.log_level);
    if let (Some(tls), Some(update)) = (&app.tls, new.tls) {
        tls.install(update);
        tracing::info!("TLS certificate reloaded: {}", tls.describe());
    }
    let gone = app.auth.api_keys().install(new.api_keys);
    tracing::info!(active = app.auth.api_keys().active(), "API keys reloaded");
    crate::server::close_revoked(app, &gone);
    app.hooks.install_secrets(new.hook_secrets);
    app.auth.replace(new.accepted);
    regrant_anonymous(app);
    if let (Some(gate), Some(rules)) = (&app.devices, new.devices) {
        gate.replace(rules);
        tracing::info!("MQTT devices: {}", gate.describe());
        if let Some(broker) = &app.broker {
            broker.recheck();
        }
    }
    tracing::info!("clients: {}", app.auth.describe());
    app.webhooks.apply(new.webhooks, &app.hub);
    app.bridges.apply(new.bridges, &app.hub);
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
fn regrant_anonymous(app: &App) {
    let anonymous = |p: &Principal| p.kind == Kind::Anonymous;
    match app.auth.anonymous() {
        Some(principal) => {
            let narrowed =
                app.hub
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
            let closed = app.hub.close_where(anonymous, reason);
            if closed > 0 {
                app.auth.rejections.count_revoked_closes(closed);
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
fn reload(app: &App, log: &LogControl, path: Option<&Path>) -> String {
    let prepared = match prepare(app, path) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "reload refused: the configuration is invalid; the running one stays in force"
            );
            return format!("reload refused: invalid configuration; {}", status_of(app));
        }
    };
    let restart = needing_restart(&app.config, &prepared.config);
    apply(app, log, prepared);
    if restart.is_empty() {
        format!("reload applied; {}", status_of(app))
    } else {
        tracing::warn!(
            settings = restart.join(", "),
            "the configuration changed where a reload cannot apply it: these settings take effect at the next restart"
        );
        format!(
            "reload applied; restart needed for {}; {}",
            restart.join(", "),
            status_of(app)
        )
    }
}

/// What `systemctl status` shows after a reload: the daemon serves, with how many clients.
fn status_of(app: &App) -> String {
    format!("serving {} clients", app.hub.stats().connections)
}

/// Reloads on every SIGHUP until shutdown.
#[cfg(unix)]
pub async fn on_sighup(
    mut hangup: tokio::signal::unix::Signal,
    app: Arc<App>,
    config_path: Option<PathBuf>,
    log: LogControl,
) {
    let log = Arc::new(log);
    loop {
        tokio::select! {
            got = hangup.recv() => if got.is_none() { return },
            _ = app.shutdown.cancelled() => return,
        }
        tracing::info!("SIGHUP: reloading");
        crate::systemd::reloading();
        // Files are read (and passwords hashed) here: off the async workers.
        let (a, path, l) = (app.clone(), config_path.clone(), log.clone());
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
