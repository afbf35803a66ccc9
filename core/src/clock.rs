//! The daemon's one clock: message timestamps (`ts`) and latency stamps read it.

/// Milliseconds since the Unix epoch, as carried in `ts`.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds since the Unix epoch: `ts` and the delivery latency stamp of a message
/// come from one reading.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
