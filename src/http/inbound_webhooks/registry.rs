//! The configured hooks at run time, and what one delivery does: verify the signature,
//! refuse a replay, publish the body. Secrets are swapped in place on SIGHUP, so a
//! rotation needs no restart and a request in flight uses one secret or the other.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use axum::http::HeaderMap;

use super::config::{HookConfig, Scheme};
use super::replay::{self, ReplayWindow};
use super::secret::{Secret, SecretError};
use super::stats::{Counters, HookCounts, Refusal};
use crate::hub::{Hub, HubError};
use crate::outbound_webhooks::signature::{self, SignatureError};
use switchboard_core::grants::Grants;
use switchboard_core::message::{Origin, Publish, Published};
use switchboard_core::quiet::Throttle;

/// Every configured hook, by name.
pub struct Hooks {
    by_name: BTreeMap<String, Hook>,
}

/// One hook, ready to take deliveries.
pub struct Hook {
    config: HookConfig,
    secret: RwLock<Secret>,
    /// Publish on exactly the hook's topic, and nothing else.
    grants: Grants,
    /// Shown to subscribers as `from`: `hook:<name>`.
    from: String,
    seen: Mutex<ReplayWindow>,
    counters: Counters,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the inbound hook `{name}`")]
pub struct LoadError {
    name: String,
    #[source]
    source: SecretError,
}

/// What became of a verified delivery.
pub enum Delivered {
    Published(Published),
    /// A `webhook-id` accepted before, within the tolerance: not published again.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Publish(#[from] HubError),
}

impl Hooks {
    /// Reads every secret now, so a missing file stops startup with its name instead of
    /// refusing every delivery later.
    pub fn from_config(hooks: &[HookConfig]) -> Result<Self, LoadError> {
        let mut by_name = BTreeMap::new();
        for config in hooks {
            let name = config.name.as_str().to_owned();
            let secret = Secret::read(&config.secret_file, config.signature).map_err(|source| {
                LoadError {
                    name: name.clone(),
                    source,
                }
            })?;
            let hook = Hook {
                grants: Grants::new(vec![config.topic.as_str().to_owned()], vec![], vec![]),
                from: format!("hook:{name}"),
                secret: RwLock::new(secret),
                seen: Mutex::new(ReplayWindow::new(replay::CAPACITY)),
                counters: Counters::default(),
                config: config.clone(),
            };
            by_name.insert(name, hook);
        }
        Ok(Hooks { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Hook> {
        self.by_name.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// One line for the startup log: each hook, its scheme and its topic.
    pub fn describe(&self) -> String {
        let hooks: Vec<String> = self
            .by_name
            .values()
            .map(|h| {
                format!(
                    "/hooks/{} ({}) → {}",
                    h.config.name.as_str(),
                    h.config.signature.as_str(),
                    h.config.topic.as_str()
                )
            })
            .collect();
        hooks.join(", ")
    }

    /// Each hook's counters, by name.
    pub fn stats(&self) -> BTreeMap<String, HookCounts> {
        self.by_name
            .iter()
            .map(|(name, hook)| (name.clone(), hook.counters.snapshot()))
            .collect()
    }

    /// Re-reads every secret file (SIGHUP) without putting any in force: a file that
    /// cannot be read refuses the whole reload, so a botched rotation locks no sender out.
    pub fn read_secrets(&self) -> Result<HookSecrets, LoadError> {
        self.by_name
            .iter()
            .map(|(name, hook)| {
                Secret::read(&hook.config.secret_file, hook.config.signature)
                    .map(|secret| (name.clone(), secret))
                    .map_err(|source| LoadError {
                        name: name.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()
            .map(HookSecrets)
    }

    /// Puts secrets read by [`Hooks::read_secrets`] in force.
    pub fn install_secrets(&self, secrets: HookSecrets) {
        let total = secrets.0.len();
        for (name, secret) in secrets.0 {
            if let Some(hook) = self.by_name.get(&name) {
                *hook.secret.write().unwrap_or_else(PoisonError::into_inner) = secret;
            }
        }
        if total > 0 {
            tracing::info!(total, "hook secrets reloaded");
        }
    }
}

/// Every hook's secret, read and not yet in force.
pub struct HookSecrets(Vec<(String, Secret)>);

impl Hook {
    /// Verifies a request and publishes its body. Refusals are counted here.
    pub fn deliver(
        &self,
        hub: &Hub,
        headers: &HeaderMap,
        body: &[u8],
        now_s: u64,
    ) -> Result<Delivered, DeliveryError> {
        let replay_id = self.verify(headers, body, now_s).inspect_err(|e| {
            self.counters.refused(Refusal::from(e));
            tracing::debug!(hook = self.config.name.as_str(), reason = %e, "hook delivery refused");
        })?;
        if let Some((id, expires_s)) = &replay_id {
            if !lock(&self.seen).insert(id, *expires_s, now_s) {
                self.counters.duplicate();
                return Ok(Delivered::Duplicate);
            }
        }
        let data = crate::mqtt::payload::to_data(body);
        let published = hub.publish(Publish {
            topic: self.config.topic.as_str(),
            event: self.event(headers),
            data: &data,
            from: &self.from,
            origin: Origin::Http,
            by: &self.grants,
            retain: self.config.retain,
        });
        match published {
            Ok(p) => {
                self.counters.accepted();
                Ok(Delivered::Published(p))
            }
            Err(e) => {
                // Not published, so the sender's retry must not look like a replay.
                if let Some((id, _)) = &replay_id {
                    lock(&self.seen).forget(id);
                }
                // Each request can fail the same way (a forbidden topic): one line a window.
                static UNPUBLISHED: Throttle = Throttle::per_secs(10);
                if let Some(held_back) = UNPUBLISHED.admit() {
                    tracing::warn!(hook = self.config.name.as_str(), held_back, error = %e, "hook delivery not published");
                }
                Err(e.into())
            }
        }
    }

    /// Counts a refusal decided before the signature could be checked (body too large).
    pub fn refused(&self, why: Refusal) {
        self.counters.refused(why);
    }

    /// Checks the signature; for Standard Webhooks, returns the id to remember and
    /// until when.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_s: u64,
    ) -> Result<Option<(String, u64)>, SignatureError> {
        let secret = self.secret.read().unwrap_or_else(PoisonError::into_inner);
        match self.config.signature {
            Scheme::Github => {
                let header = header(headers, signature::GITHUB_HEADER)?;
                signature::verify_github(secret.key(), header, body)?;
                Ok(None)
            }
            Scheme::Standard => {
                let id = header(headers, signature::ID_HEADER)?;
                if id.is_empty() || id.len() > replay::MAX_ID_LEN {
                    return Err(SignatureError::Malformed(signature::ID_HEADER));
                }
                let timestamp = header(headers, signature::TIMESTAMP_HEADER)?;
                let signatures = header(headers, signature::SIGNATURE_HEADER)?;
                let tolerance_s = self.config.tolerance.as_secs();
                signature::verify_standard(
                    secret.key(),
                    id,
                    timestamp,
                    signatures,
                    body,
                    now_s,
                    tolerance_s,
                )?;
                let sent_s: u64 = timestamp
                    .trim()
                    .parse()
                    .map_err(|_| SignatureError::Malformed(signature::TIMESTAMP_HEADER))?;
                Ok(Some((id.to_owned(), sent_s.saturating_add(tolerance_s))))
            }
        }
    }

    /// The event from `event_header` when the request has it, else the static `event`.
    fn event<'a>(&'a self, headers: &'a HeaderMap) -> Option<&'a str> {
        self.config
            .event_header
            .as_deref()
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .or(self.config.event.as_deref())
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    headers
        .get(name)
        .ok_or(SignatureError::Missing(name))?
        .to_str()
        .map_err(|_| SignatureError::Malformed(name))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
