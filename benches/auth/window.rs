//! The measuring window of a point: wall time and CPU time between two marks, and the
//! shares of a core that the daemon, the bench and everything else used in it.

use std::time::{Duration, Instant};

/// Clocks read at one edge of the window.
pub struct Mark {
    at: Instant,
    server: Duration,
    busy: Duration,
    bench: Duration,
}

impl Mark {
    /// Reads every clock now; `server` is the daemon's CPU time so far.
    pub fn now(server: Duration) -> Mark {
        Mark {
            at: Instant::now(),
            server,
            busy: switchboard_bench::host::machine_busy(),
            bench: switchboard_bench::host::cpu_time("/proc/self/stat"),
        }
    }
}

/// What happened between two marks.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub elapsed: Duration,
    /// CPU time of the daemon.
    pub server_cpu: Duration,
    /// Busy time of the whole machine, the daemon's and the bench's included.
    pub machine_busy: Duration,
    /// CPU time of this process.
    pub bench_cpu: Duration,
}

impl Window {
    pub fn between(first: &Mark, last: &Mark) -> Window {
        Window {
            elapsed: last.at - first.at,
            server_cpu: last.server.saturating_sub(first.server),
            machine_busy: last.busy.saturating_sub(first.busy),
            bench_cpu: last.bench.saturating_sub(first.bench),
        }
    }

    /// `count` events in the window, per second.
    pub fn rate(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64()
    }

    /// Share of a core the daemon used.
    pub fn server_share(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// Share of a core the bench used.
    pub fn bench_share(&self) -> f64 {
        self.bench_cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// Share of a core used by neither the daemon nor the bench: other work that may
    /// have disturbed the point.
    pub fn other_share(&self) -> f64 {
        self.machine_busy
            .saturating_sub(self.server_cpu + self.bench_cpu)
            .as_secs_f64()
            / self.elapsed.as_secs_f64()
    }
}
