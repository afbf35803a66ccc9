//! Replays: a stopped recording published again through the Hub, as a publisher like
//! any other, held to the grants of whoever started it.
//!
//! Timing uses absolute deadlines: message `i` is due at `start + (ts_i − ts_0) / speed`,
//! so a late wake-up delays one message and never the ones after it (no drift). A pause
//! moves `start` forward by the time spent paused. Messages are read from the store a
//! chunk at a time, so a long recording does not sit in memory.
//!
//! Each replay announces itself on `$replays/<id>` (published by the daemon): an event
//! per state change (`started`, `paused`, `resumed`, `finished`, `stopped`) and
//! `progress` at most every `[recording] progress_interval`, each carrying the
//! [`ReplayView`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{lock, Recorder, RecorderError};
use crate::auth::Principal;
use crate::hub::HubError;
use switchboard_core::clock::now_ms;
use switchboard_core::grants::Grants;
use switchboard_core::message::{Origin, Publish};

/// The topic prefix of replay events.
pub const EVENTS_PREFIX: &str = "$replays/";

pub const MIN_SPEED: f64 = 0.1;
pub const MAX_SPEED: f64 = 1000.0;

/// Ended replays kept for `GET /replays`; older ones are forgotten.
const KEEP_ENDED: usize = 100;

/// Messages read from the store at a time.
const CHUNK: usize = 512;

/// Messages published as fast as possible between two yields to the runtime.
const YIELD_EVERY: u64 = 256;

/// How to replay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Time scale: 2 plays twice as fast as recorded. 1 when neither this nor `max`.
    #[serde(default)]
    pub speed: Option<f64>,
    /// As fast as possible, ignoring the recorded timing.
    #[serde(default)]
    pub max: bool,
    /// Published under this prefix (`replay/7/` + the original topic) instead of onto
    /// the original topics. A `/` is added when missing.
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    Finished,
    Stopped,
}

/// What the controls ask of the replay task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Pause,
    Stop,
}

/// A replay as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayView {
    pub id: u64,
    pub recording: u64,
    pub owner: String,
    pub state: State,
    /// None when replaying as fast as possible.
    pub speed: Option<f64>,
    pub prefix: Option<String>,
    /// Messages in the recording when the replay started.
    pub total: u64,
    /// Messages the Hub accepted.
    pub sent: u64,
    /// Messages refused because the starter may not publish to their topic.
    pub forbidden: u64,
    /// Messages refused for another reason (a topic too long with the prefix…).
    pub failed: u64,
    /// Where the replay is, in recorded time since the first message (µs).
    pub position_us: u64,
    /// The recording's span (µs).
    pub duration_us: u64,
    /// Unix ms.
    pub started_at: u64,
    pub ended_at: Option<u64>,
}

pub struct Replay {
    id: u64,
    recording: u64,
    owner: String,
    speed: Option<f64>,
    prefix: Option<String>,
    total: u64,
    duration_us: u64,
    started_at: u64,
    control: watch::Sender<Control>,
    state: Mutex<(State, Option<u64>)>,
    sent: AtomicU64,
    forbidden: AtomicU64,
    failed: AtomicU64,
    position_us: AtomicU64,
}

impl Replay {
    pub fn view(&self) -> ReplayView {
        let (state, ended_at) = *lock(&self.state);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReplayView {
            id: self.id,
            recording: self.recording,
            owner: self.owner.clone(),
            state,
            speed: self.speed,
            prefix: self.prefix.clone(),
            total: self.total,
            sent: get(&self.sent),
            forbidden: get(&self.forbidden),
            failed: get(&self.failed),
            position_us: get(&self.position_us),
            duration_us: self.duration_us,
            started_at: self.started_at,
            ended_at,
        }
    }

    fn state(&self) -> State {
        lock(&self.state).0
    }

    fn set_state(&self, state: State) {
        let ended = matches!(state, State::Finished | State::Stopped).then(now_ms);
        *lock(&self.state) = (state, ended);
    }

    fn target(&self, topic: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}{topic}"),
            None => topic.to_owned(),
        }
    }
}

/// Every replay, running or recently ended.
#[derive(Default)]
pub struct Replays {
    next: AtomicU64,
    all: Mutex<BTreeMap<u64, Arc<Replay>>>,
}

impl Replays {
    pub fn stop_all(&self) {
        for r in lock(&self.all).values() {
            r.control.send_replace(Control::Stop);
        }
    }

    /// Replays running or paused now.
    pub fn running(&self) -> usize {
        lock(&self.all)
            .values()
            .filter(|r| matches!(r.state(), State::Running | State::Paused))
            .count()
    }

    fn insert(&self, replay: Arc<Replay>) {
        let mut all = lock(&self.all);
        all.insert(replay.id, replay);
        let ended: Vec<u64> = all
            .iter()
            .filter(|(_, r)| matches!(r.state(), State::Finished | State::Stopped))
            .map(|(id, _)| *id)
            .collect();
        for id in ended.iter().take(ended.len().saturating_sub(KEEP_ENDED)) {
            all.remove(id);
        }
    }

    fn get(&self, caller: &Principal, id: u64) -> Result<Arc<Replay>, RecorderError> {
        lock(&self.all)
            .get(&id)
            .filter(|r| caller.grants.is_all() || r.owner == caller.identity())
            .cloned()
            .ok_or(RecorderError::NoReplay(id))
    }
}

/// A control request on a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Stop,
}

impl Recorder {
    /// Starts replaying a stopped recording with the caller's grants.
    pub fn start_replay(
        self: &Arc<Self>,
        caller: Arc<Principal>,
        recording: u64,
        request: ReplayRequest,
    ) -> Result<ReplayView, RecorderError> {
        let speed = match (request.speed, request.max) {
            (Some(_), true) => {
                return Err(RecorderError::Invalid(
                    "give `speed` or `max`, not both".into(),
                ))
            }
            (None, true) => None,
            (speed, false) => {
                let speed = speed.unwrap_or(1.0);
                if !(MIN_SPEED..=MAX_SPEED).contains(&speed) {
                    return Err(RecorderError::Invalid(format!(
                        "`speed` must be from {MIN_SPEED} to {MAX_SPEED}"
                    )));
                }
                Some(speed)
            }
        };
        let prefix = match request.prefix.filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(checked_prefix(p)?),
        };
        let view = self.show(&caller, recording)?;
        if view.stopped_at.is_none() {
            return Err(RecorderError::Conflict(format!(
                "recording {recording} is still running: stop it before replaying it"
            )));
        }
        let id = self.replays.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (control, _) = watch::channel(Control::Run);
        let replay = Arc::new(Replay {
            id,
            recording,
            owner: caller.identity(),
            speed,
            prefix,
            total: view.messages,
            duration_us: view.span_us,
            started_at: now_ms(),
            control,
            state: Mutex::new((State::Running, None)),
            sent: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            position_us: AtomicU64::new(0),
        });
        let topics = view.by_topic.unwrap_or_default();
        if !topics.is_empty()
            && !topics
                .keys()
                .any(|t| caller.grants.check_publish(&replay.target(t)).is_ok())
        {
            return Err(RecorderError::Forbidden(format!(
                "you may publish to none of the {} topics this replay would publish to",
                topics.len()
            )));
        }
        self.replays.insert(replay.clone());
        tracing::info!(replay = id, recording, speed = ?replay.speed, prefix = ?replay.prefix, owner = %replay.owner, "replay started");
        self.announce(&replay, "started");
        tokio::spawn(run(self.clone(), replay.clone(), caller));
        Ok(replay.view())
    }

    pub fn replays(&self, caller: &Principal) -> Vec<ReplayView> {
        lock(&self.replays.all)
            .values()
            .filter(|r| caller.grants.is_all() || r.owner == caller.identity())
            .map(|r| r.view())
            .collect()
    }

    pub fn replay(&self, caller: &Principal, id: u64) -> Result<ReplayView, RecorderError> {
        Ok(self.replays.get(caller, id)?.view())
    }

    /// Pauses, resumes or stops a replay. Asking a replay for what it already does (or
    /// anything of an ended replay) is a conflict.
    pub fn control_replay(
        &self,
        caller: &Principal,
        id: u64,
        action: Action,
    ) -> Result<ReplayView, RecorderError> {
        let replay = self.replays.get(caller, id)?;
        let state = replay.state();
        let (allowed, control, next, event) = match action {
            Action::Pause => (
                state == State::Running,
                Control::Pause,
                State::Paused,
                "paused",
            ),
            Action::Resume => (
                state == State::Paused,
                Control::Run,
                State::Running,
                "resumed",
            ),
            Action::Stop => (
                matches!(state, State::Running | State::Paused),
                Control::Stop,
                State::Stopped,
                "stopped",
            ),
        };
        if !allowed {
            let state = serde_json::to_value(state).unwrap_or_default();
            return Err(RecorderError::Conflict(format!(
                "replay {id} is {}",
                state.as_str().unwrap_or("ended")
            )));
        }
        replay.set_state(next);
        replay.control.send_replace(control);
        self.announce(&replay, event);
        Ok(replay.view())
    }

    /// Publishes a replay's state on `$replays/<id>`.
    fn announce(&self, replay: &Replay, event: &str) {
        let Ok(data) = serde_json::value::to_raw_value(&replay.view()) else {
            return;
        };
        let topic = format!("{EVENTS_PREFIX}{}", replay.id);
        let published = self.hub.publish(Publish {
            topic: &topic,
            event: Some(event),
            data: &data,
            from: "switchboard",
            origin: Origin::System,
            by: &Grants::ALL,
            retain: false,
        });
        if let Err(e) = published {
            tracing::warn!(replay = replay.id, error = %e, "replay event not published");
        }
    }
}

/// Longest prefix, in characters, and most levels it may add.
pub const MAX_PREFIX: usize = 512;
pub const MAX_PREFIX_LEVELS: usize = 16;

/// A replay prefix, ending in `/`: no wildcards, no NUL, not a `$` topic, not starting
/// with `/` (docs/openapi's `ReplayStart.prefix` states the same rule).
fn checked_prefix(prefix: String) -> Result<String, RecorderError> {
    let levels = prefix
        .strip_suffix('/')
        .unwrap_or(&prefix)
        .split('/')
        .count();
    if prefix.starts_with(['$', '/'])
        || prefix.contains(['+', '#', '\0'])
        || prefix.chars().count() > MAX_PREFIX
        || levels > MAX_PREFIX_LEVELS
    {
        return Err(RecorderError::Invalid(format!(
            "`prefix` must be at most {MAX_PREFIX} characters and {MAX_PREFIX_LEVELS} levels, without `+`, `#` or NUL, and not start with `$` or `/`"
        )));
    }
    Ok(if prefix.ends_with('/') {
        prefix
    } else {
        format!("{prefix}/")
    })
}

/// Waits while paused. Returns how long it waited, or None when told to stop.
async fn hold(control: &mut watch::Receiver<Control>) -> Option<Duration> {
    let since = Instant::now();
    loop {
        let now = *control.borrow_and_update();
        match now {
            Control::Run => return Some(since.elapsed()),
            Control::Stop => return None,
            Control::Pause => {
                if control.changed().await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// The replay task: publishes every message at its deadline until the end or a stop.
async fn run(recorder: Arc<Recorder>, replay: Arc<Replay>, caller: Arc<Principal>) {
    let from = format!("replay:{}", replay.id);
    let mut control = replay.control.subscribe();
    let mut start = Instant::now();
    let mut last_progress = Instant::now();
    let mut first_us = None;
    let mut next = 0u64;
    let mut published = 0u64;
    'replay: loop {
        let chunk = match recorder.messages(replay.recording, next, CHUNK) {
            Ok(chunk) if chunk.is_empty() => break,
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::error!(replay = replay.id, error = %e, "cannot read the recording; replay ends");
                break;
            }
        };
        for (n, m) in chunk {
            next = n.saturating_add(1);
            let t0 = *first_us.get_or_insert(m.ts_us);
            let offset = m.ts_us.saturating_sub(t0);
            loop {
                match hold(&mut control).await {
                    None => break 'replay,
                    Some(paused) => start += paused,
                }
                let Some(speed) = replay.speed else { break };
                let due = start + Duration::from_secs_f64(offset as f64 / 1e6 / speed);
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    // A pause or stop while waiting: look again.
                    _ = control.changed() => {}
                }
            }
            let topic = replay.target(&m.topic);
            let outcome = RawValue::from_string(m.data)
                .map_err(|_| None)
                .and_then(|data| {
                    recorder
                        .hub
                        .publish(Publish {
                            topic: &topic,
                            event: m.event.as_deref(),
                            data: &data,
                            from: &from,
                            origin: Origin::Replay,
                            by: &caller.grants,
                            retain: false,
                        })
                        .map_err(Some)
                });
            let counter = match outcome {
                Ok(_) => {
                    recorder
                        .tap
                        .counters
                        .replayed
                        .fetch_add(1, Ordering::Relaxed);
                    &replay.sent
                }
                Err(Some(HubError::Forbidden(_))) => &replay.forbidden,
                Err(_) => &replay.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            replay.position_us.store(offset, Ordering::Relaxed);
            published += 1;
            if last_progress.elapsed() >= recorder.progress_interval {
                last_progress = Instant::now();
                recorder.announce(&replay, "progress");
            }
            if replay.speed.is_none() && published % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
    if *control.borrow() == Control::Stop {
        // The control already set the state and announced it.
        if replay.state() != State::Stopped {
            replay.set_state(State::Stopped);
            recorder.announce(&replay, "stopped");
        }
    } else {
        replay.set_state(State::Finished);
        recorder.announce(&replay, "finished");
    }
    let v = replay.view();
    tracing::info!(
        replay = v.id,
        sent = v.sent,
        forbidden = v.forbidden,
        failed = v.failed,
        "replay ended"
    );
}
