//! One endpoint's delivery task: takes the head of its queue (up to `batch_max`
//! events), signs and POSTs it, and retries the same delivery (same events, same
//! `webhook-id`) with exponential backoff until a 2xx or `max_attempts`, when it goes
//! to the dead letters. Head-of-line retry keeps the order of events; one request at a
//! time per endpoint keeps a slow endpoint's cost to one task and one connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::queue::{DeadLetter, Inflight};
use super::signature::{self, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::{event, redacted, Endpoint, Settings};
use crate::store::StoreError;
use switchboard_core::clock::now_ms;

/// Pause after a store error before trying again, so a broken disk does not spin.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How one attempt ended.
enum Outcome {
    Delivered,
    Failed { status: Option<u16>, error: String },
}

pub async fn run(ep: Arc<Endpoint>, client: reqwest::Client, shutdown: CancellationToken) {
    loop {
        match step(&ep, &client, &shutdown).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(webhook = %ep.name, error = %e, "webhook store error");
                ep.note_error(format!("store: {e}"));
                if sleep_or_stop(STORE_RETRY, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// One attempt of the current delivery (made first if there is none). Ok(false) when
/// shutdown came while waiting.
async fn step(
    ep: &Endpoint,
    client: &reqwest::Client,
    shutdown: &CancellationToken,
) -> Result<bool, StoreError> {
    let Some(mut inflight) = next(ep, shutdown).await? else {
        return Ok(false);
    };
    let wait = inflight.next_at.saturating_sub(now_ms());
    if wait > 0 && sleep_or_stop(Duration::from_millis(wait), shutdown).await {
        return Ok(false);
    }
    let events = ep.queue.events(inflight.first, inflight.last)?;
    if events.is_empty() {
        // Every event of it was dropped by overflow meanwhile.
        ep.queue.clear_inflight()?;
        return Ok(true);
    }
    let id = ep.delivery_id(inflight.first);
    let body = event::body(&ep.name, events.iter().map(|e| e.as_ref()));
    // Read once per attempt: a reload that changes the endpoint applies to the next one.
    let settings = ep.settings();
    // Not raced against shutdown: a request that started is let finish (within the
    // shutdown grace), so its result is recorded and a restart does not repeat it.
    let outcome = attempt(&settings, client, &id, body).await;
    inflight.attempts += 1;
    match outcome {
        Outcome::Delivered => {
            let n = ep.queue.remove(inflight.first, inflight.last)?;
            ep.queue.clear_inflight()?;
            sub(&ep.pending, n as u64);
            ep.delivered.fetch_add(n as u64, Ordering::Relaxed);
            ep.last_success.store(now_ms(), Ordering::Relaxed);
        }
        Outcome::Failed { status, error } => {
            ep.failed_attempts.fetch_add(1, Ordering::Relaxed);
            ep.note_error(error.clone());
            if inflight.attempts >= settings.config.max_attempts.get() {
                tracing::warn!(
                    webhook = %ep.name, id = %id, attempts = inflight.attempts, error = %error,
                    "webhook delivery failed for good; moved to the dead letters"
                );
                let letter = DeadLetter {
                    id,
                    events: events
                        .iter()
                        .filter_map(|e| serde_json::from_slice(e).ok())
                        .collect(),
                    attempts: inflight.attempts,
                    last_status: status,
                    last_error: Some(error),
                    failed_at: now_ms(),
                };
                let n = ep.queue.bury(&inflight, &letter)?;
                sub(&ep.pending, n as u64);
                ep.dead.fetch_add(1, Ordering::Relaxed);
            } else {
                let delay = backoff(
                    settings.config.retry_initial,
                    settings.config.retry_max,
                    inflight.attempts,
                );
                tracing::debug!(
                    webhook = %ep.name, id = %id, attempts = inflight.attempts, error = %error,
                    retry_in = ?delay, "webhook delivery failed; will retry"
                );
                inflight.next_at = now_ms() + delay.as_millis() as u64;
                inflight.last_status = status;
                inflight.last_error = Some(error);
                ep.queue.set_inflight(&inflight)?;
            }
        }
    }
    Ok(true)
}

/// The delivery to try: the one in flight (after a failure or a restart), or a new one
/// from the head of the queue, waiting for events (and for `batch_wait` to fill a
/// batch). None when shutdown came first.
async fn next(ep: &Endpoint, shutdown: &CancellationToken) -> Result<Option<Inflight>, StoreError> {
    if let Some(inflight) = ep.queue.inflight()? {
        return Ok(Some(inflight));
    }
    loop {
        while ep.queue.is_empty() {
            tokio::select! {
                _ = ep.wake.notified() => {}
                _ = shutdown.cancelled() => return Ok(None),
            }
        }
        let (batch_max, batch_wait) = ep.with_config(|c| (c.batch_max.get(), c.batch_wait));
        if batch_max > 1
            && !batch_wait.is_zero()
            && ep.pending.load(Ordering::Relaxed) < batch_max as u64
            && sleep_or_stop(batch_wait, shutdown).await
        {
            return Ok(None);
        }
        // None only if overflow emptied the queue meanwhile: wait again.
        if let Some((first, last)) = ep.queue.head(batch_max)? {
            let inflight = Inflight {
                first,
                last,
                attempts: 0,
                next_at: 0,
                last_status: None,
                last_error: None,
            };
            ep.queue.set_inflight(&inflight)?;
            return Ok(Some(inflight));
        }
    }
}

async fn attempt(
    settings: &Settings,
    client: &reqwest::Client,
    id: &str,
    body: Vec<u8>,
) -> Outcome {
    let timestamp = now_ms() / 1000;
    let signature = signature::sign(&settings.secret, id, timestamp, &body);
    let request = client
        .post(&settings.config.url)
        .timeout(settings.config.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(ID_HEADER, id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body);
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            // Read the answer so the connection can be reused; its content is ignored.
            let _ = response.bytes().await;
            if status.is_success() {
                Outcome::Delivered
            } else {
                Outcome::Failed {
                    status: Some(status.as_u16()),
                    error: format!("HTTP status {status}"),
                }
            }
        }
        Err(e) => Outcome::Failed {
            status: None,
            error: describe(&e, settings),
        },
    }
}

/// A request error without the URL (it may hold credentials).
fn describe(e: &reqwest::Error, settings: &Settings) -> String {
    if e.is_timeout() {
        return format!("timed out after {:?}", settings.config.timeout);
    }
    let kind = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = format!("{kind} to {}", redacted(&settings.config.url));
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The wait before attempt `attempts + 1`: `initial × 2^(attempts-1)`, at most `max`,
/// then a random point in its upper half, so endpoints that failed together do not
/// retry together.
pub fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let doubled = initial.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let full = doubled.min(max);
    let half = full / 2;
    half + full
        .saturating_sub(half)
        .mul_f64(rand::thread_rng().gen::<f64>())
}

fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

/// Sleeps, or returns true at once when shutdown comes first.
async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max_with_jitter_in_the_upper_half() {
        let s = Duration::from_secs;
        for _ in 0..100 {
            let d = backoff(s(1), s(300), 1);
            assert!(d >= Duration::from_millis(500) && d <= s(1), "{d:?}");
            let d = backoff(s(1), s(300), 4);
            assert!(d >= s(4) && d <= s(8), "{d:?}");
            let d = backoff(s(1), s(300), 40);
            assert!(d >= s(150) && d <= s(300), "{d:?}");
        }
    }
}
