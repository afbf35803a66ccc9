//! The writer behind a Hub tap that stores what it is offered (webhook events, bridge
//! messages): the tap `try_send`s into a bounded channel under the Hub's topic lock, and
//! one task takes the channel in bursts and stores them on the blocking pool, so neither
//! the Hub nor any connection waits for the disk. At stop the task stores what is
//! still in the channel, then ends.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One store pass: the items taken and the closure that stores them, sent to the
/// blocking pool together and handed back for the next pass.
struct Pass<T, F> {
    items: Vec<T>,
    store: F,
}

impl<T: Send + 'static, F: FnMut(&mut Vec<T>) + Send + 'static> Pass<T, F> {
    /// Stores the items on the blocking pool: sled can wait for the disk for seconds,
    /// and on an async thread that would hold every connection the thread serves.
    /// `None` if the store panicked (logged): the writer ends.
    async fn run(mut self, what: &'static str) -> Option<Self> {
        let pass = tokio::task::spawn_blocking(move || {
            (self.store)(&mut self.items);
            self
        });
        match pass.await {
            Ok(pass) => Some(pass),
            Err(e) => {
                tracing::error!(error = %e, "the {what} writer failed; what it is offered from now on is not stored");
                None
            }
        }
    }
}

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
    /// vector it is given), on the blocking pool, one pass after the other. Does
    /// nothing the second time.
    pub fn start(&self, burst: usize, store: impl FnMut(&mut Vec<T>) + Send + 'static) {
        let Some(mut rx) = lock(&self.rx).take() else {
            return;
        };
        let stop = self.stop.clone();
        let what = self.what;
        let task = tokio::spawn(async move {
            let mut pass = Pass {
                items: Vec::with_capacity(burst),
                store,
            };
            loop {
                let n = tokio::select! {
                    n = rx.recv_many(&mut pass.items, burst) => n,
                    _ = stop.cancelled() => break,
                };
                if n == 0 {
                    return;
                }
                match pass.run(what).await {
                    Some(p) => pass = p,
                    None => return,
                }
            }
            while let Ok(item) = rx.try_recv() {
                pass.items.push(item);
            }
            pass.run(what).await;
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
