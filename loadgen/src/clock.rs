//! The one clock both ends of a latency measurement read, and how latency samples are summarised and printed.

use std::sync::OnceLock;
use std::time::Instant;

/// The clock both ends of a measurement read.
pub static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since [`EPOCH`].
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Keeps the sample clock's start well before the first publish.
pub fn init_clock() {
    let _ = now_ns();
}

/// The `p`th percentile (0 to 100) of sorted nanosecond samples, in microseconds.
pub fn percentile_us(sorted: &[u64], p: usize) -> Option<f64> {
    (!sorted.is_empty())
        .then(|| sorted[(sorted.len() * p / 100).min(sorted.len() - 1)] as f64 / 1e3)
}

/// Formats an optional microsecond figure.
pub fn us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10_000.0 => format!("{:.0} ms", v / 1e3),
        Some(v) if v >= 1_000.0 => format!("{:.1} ms", v / 1e3),
        Some(v) => format!("{v:.0} µs"),
        None => "-".into(),
    }
}
