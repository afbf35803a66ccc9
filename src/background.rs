//! Background tasks with an owner: spawned on it, cancelled by it, and awaited by it
//! before whatever they touch is closed.
//!
//! The rule (mini-redis's drop guard, made explicit): no task runs loose. Each part
//! that keeps a task running (the history's expiry, the store's cap, the daemon's own
//! watchers) holds a [`Background`]; its shutdown calls [`Background::stop`], which
//! cancels the tasks and returns only when every one has ended, so nothing they do can
//! land after the part saved its final state. Dropping the owner cancels them too.
//!
//! Per-name tasks that a reload starts and stops one by one are `crate::live::Tasks`.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks of one owner.
#[derive(Default)]
pub struct Background {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it returns; it is given the token [`Background::stop`] cancels
    /// and must end soon after. Does nothing once stopped.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.stop.is_cancelled() {
            return;
        }
        self.tracker.spawn(task(self.stop.clone()));
    }

    /// Calls `step(owner)` every `period`, on the blocking pool (sled calls block), until
    /// stopped or until `owner` is gone: the task holds it weakly, so it never keeps its
    /// owner alive. A step in progress is finished, never abandoned half-way; `what`
    /// names it in the log when it fails.
    pub fn every<T, E>(
        &self,
        owner: &Arc<T>,
        period: Duration,
        what: &'static str,
        step: fn(&T) -> Result<(), E>,
    ) where
        T: Send + Sync + 'static,
        E: Display + Send + 'static,
    {
        let owner: Weak<T> = Arc::downgrade(owner);
        self.spawn(move |stop| async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                match tokio::task::spawn_blocking(move || step(&owner)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "{what} failed"),
                    Err(e) => tracing::error!(error = %e, "{what}: the task failed"),
                }
            }
        });
    }

    /// Cancels every task and waits until all have ended (a blocking step in progress
    /// included). Nothing is spawned afterwards.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn stop_returns_after_the_last_step_and_none_follows() {
        let steps = Arc::new(AtomicU64::new(0));
        let background = Background::new();
        background.every(
            &steps,
            Duration::from_millis(1),
            "counting",
            |n: &AtomicU64| {
                std::thread::sleep(Duration::from_millis(5));
                n.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            },
        );
        while steps.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        background.stop().await;
        let at_stop = steps.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(steps.load(Ordering::SeqCst), at_stop);
        background.spawn(|_| async { panic!("spawned after stop") });
        background.stop().await;
    }
}
