//! Named parts that a reload adds, changes and removes while the daemon runs (webhook
//! endpoints, bridge links): the list the Hub's taps read, and one task per part that
//! can be stopped on its own.
//!
//! Owns no part itself: `crate::outbound_webhooks` and `crate::uplinks` decide what a part is and
//! what its task does.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The parts in force. A tap takes the current list for each message (one uncontended
/// read lock); a reload replaces the whole list at once, so a message never sees half
/// of a change.
pub struct LiveList<T> {
    current: RwLock<Arc<Vec<Arc<T>>>>,
}

impl<T> LiveList<T> {
    pub fn new(items: Vec<Arc<T>>) -> Self {
        LiveList {
            current: RwLock::new(Arc::new(items)),
        }
    }

    pub fn current(&self) -> Arc<Vec<Arc<T>>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, items: Vec<Arc<T>>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(items);
    }
}

/// A Hub tap held back until there is a part for it to serve, so that a daemon with no
/// webhook or bridge pays nothing per message; attached once, at start or by the
/// reload that adds the first part, and never detached.
pub struct PendingTap<T> {
    tap: Mutex<Option<T>>,
}

impl<T: switchboard_core::message::Tap + 'static> PendingTap<T> {
    pub fn new(tap: T) -> Self {
        PendingTap {
            tap: Mutex::new(Some(tap)),
        }
    }

    /// Attaches the tap to `hub` when `wanted` and it is not attached yet.
    pub fn attach_if(&self, hub: &crate::hub::Hub, wanted: bool) {
        if !wanted {
            return;
        }
        let taken = self
            .tap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tap) = taken {
            hub.add_tap(Arc::new(tap));
        }
    }
}

/// Stores a burst of items taken from a tap's channel, each with the part it is for,
/// then wakes every part that got something, once. `store` says whether it stored.
/// Items for a part removed meanwhile are still stored: its queue stays on disk.
pub fn store_burst<T, V>(
    burst: &mut Vec<(Arc<T>, V)>,
    mut store: impl FnMut(&T, V) -> bool,
    wake: impl Fn(&T),
) {
    let mut touched: Vec<Arc<T>> = Vec::new();
    for (part, item) in burst.drain(..) {
        if store(&part, item) && !touched.iter().any(|t| Arc::ptr_eq(t, &part)) {
            touched.push(part);
        }
    }
    for part in &touched {
        wake(part);
    }
}

/// One task per named part. Tasks run on the daemon's tracker, so shutdown waits for
/// them, and each has its own stop token (a child of the shutdown token).
#[derive(Default)]
pub struct Tasks {
    context: OnceLock<(CancellationToken, TaskTracker)>,
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    tasks: HashMap<String, (CancellationToken, JoinHandle<()>)>,
    /// Tasks asked to stop, kept until they end, so a part added back under the same
    /// name waits for them (a request in flight finishes first).
    stopping: HashMap<String, JoinHandle<()>>,
}

impl Tasks {
    /// Where tasks run from now on; the first call wins.
    pub fn start(&self, shutdown: &CancellationToken, tracker: &TaskTracker) {
        let _ = self.context.set((shutdown.clone(), tracker.clone()));
    }

    /// Starts the task of part `name`, after the previous task of that name (running or
    /// stopping) has ended, so two never work on the same queue. Does nothing before
    /// [`Tasks::start`]: the parts in force then are started by their owner.
    pub fn spawn<F, Fut>(&self, name: &str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some((shutdown, tracker)) = self.context.get() else {
            return;
        };
        self.stop(name);
        let previous = self.lock().stopping.remove(name);
        let stop = shutdown.child_token();
        let token = stop.clone();
        let handle = tracker.spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            task(token).await
        });
        self.lock().tasks.insert(name.to_owned(), (stop, handle));
    }

    /// Asks the task of part `name` to stop (between two units of work).
    pub fn stop(&self, name: &str) {
        let mut running = self.lock();
        running.stopping.retain(|_, handle| !handle.is_finished());
        if let Some((stop, handle)) = running.tasks.remove(name) {
            stop.cancel();
            running.stopping.insert(name.to_owned(), handle);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_wakes_each_part_that_stored_something_once() {
        let (a, b, c) = (Arc::new("a"), Arc::new("b"), Arc::new("c"));
        let mut burst = vec![
            (a.clone(), 1),
            (b.clone(), 2),
            (a.clone(), 3),
            (c.clone(), 4),
        ];
        let woken = Mutex::new(Vec::new());
        // `c` fails to store: not woken.
        store_burst(
            &mut burst,
            |part, _| *part != "c",
            |part| woken.lock().unwrap().push(*part),
        );
        assert!(burst.is_empty());
        assert_eq!(*woken.lock().unwrap(), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_part_added_back_starts_after_its_stopping_task_ended() {
        let tasks = Tasks::default();
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        tasks.start(&shutdown, &tracker);
        let order = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let o = order.clone();
        tasks.spawn("a", move |stop| async move {
            stop.cancelled().await;
            // A request still in flight when it is told to stop.
            let _ = released.await;
            o.lock().unwrap().push("first ended");
        });
        tasks.stop("a");
        let (started, has_started) = tokio::sync::oneshot::channel();
        let o = order.clone();
        tasks.spawn("a", move |_| async move {
            o.lock().unwrap().push("second started");
            let _ = started.send(());
        });
        release.send(()).unwrap();
        has_started.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["first ended", "second started"]);
    }
}
