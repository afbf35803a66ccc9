//! The writer behind a Hub tap that stores what it is offered (webhook events, bridge
//! messages): the tap `try_send`s into a bounded channel under the Hub's topic lock, and
//! one task takes the channel in bursts and stores them, so the Hub never waits for the
//! disk. At stop the task stores what is still in the channel, then ends.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct Writer<T> {
    /// Taken by [`Writer::start`].
    rx: Mutex<Option<mpsc::Receiver<T>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
    /// Names the writer in logs.
    what: &'static str,
}

/// A channel of `capacity` items: the sender for the tap, the writer for its owner.
pub fn channel<T>(capacity: usize, what: &'static str) -> (mpsc::Sender<T>, Writer<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    let writer = Writer {
        rx: Mutex::new(Some(rx)),
        task: Mutex::new(None),
        stop: CancellationToken::new(),
        what,
    };
    (tx, writer)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Send + 'static> Writer<T> {
    /// Starts the task: `store` gets up to `burst` items at a time (and must drain the
    /// vector it is given). Does nothing the second time.
    pub fn start(&self, burst: usize, mut store: impl FnMut(&mut Vec<T>) + Send + 'static) {
        let Some(mut rx) = lock(&self.rx).take() else {
            return;
        };
        let stop = self.stop.clone();
        let task = tokio::spawn(async move {
            let mut items = Vec::with_capacity(burst);
            loop {
                let n = tokio::select! {
                    n = rx.recv_many(&mut items, burst) => n,
                    _ = stop.cancelled() => break,
                };
                if n == 0 {
                    return;
                }
                store(&mut items);
            }
            while let Ok(item) = rx.try_recv() {
                items.push(item);
            }
            store(&mut items);
        });
        *lock(&self.task) = Some(task);
    }

    /// Stores what is still queued, and waits for the task to end. Call after the Hub
    /// is quiet; the server flushes the store afterwards.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the {} writer task failed", self.what);
            }
        }
    }
}
