//! A lock-free histogram with fixed buckets, for figures recorded on the hot path.
//!
//! Recording is two relaxed atomic adds (one bucket, the sum) and a search over a short
//! array; the count is the sum of the buckets, computed when read. `record` takes a
//! multiplicity so a writer can record a whole batch of frames with one call.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use serde::Serialize;

/// Upper bounds of the buckets in microseconds, from 50 µs to 10 s; values above fall
/// into the `+Inf` bucket.
pub const BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Durations in microseconds, shown in seconds.
#[derive(Debug)]
pub struct Histogram {
    /// Non-cumulative counts; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records `n` observations of `micros` each.
    pub fn record(&self, micros: u64, n: u64) {
        let i = BOUNDS_US.partition_point(|&bound| bound < micros);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_us
            .fetch_add(micros.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            sum: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            buckets: BOUNDS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain([f64::INFINITY])
                .zip(counts)
                .collect(),
        }
    }
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// (upper bound in seconds, observations in this bucket alone), the last `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    /// (upper bound, observations at or below it), as Prometheus shows buckets.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.buckets.iter().scan(0, |total, &(le, n)| {
            *total += n;
            Some((le, *total))
        })
    }
}

/// `le` as Prometheus spells it.
pub fn le_label(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".into()
    } else {
        le.to_string()
    }
}

/// `{"count", "sum", "buckets": {"<le>": cumulative count, …, "+Inf": count}}`.
impl Serialize for HistogramSnapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Cumulative<'a>(&'a HistogramSnapshot);
        impl Serialize for Cumulative<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.buckets.len()))?;
                for (le, n) in self.0.cumulative() {
                    map.serialize_entry(&le_label(le), &n)?;
                }
                map.end()
            }
        }
        let mut h = s.serialize_struct("Histogram", 3)?;
        h.serialize_field("count", &self.count)?;
        h.serialize_field("sum", &self.sum)?;
        h.serialize_field("buckets", &Cumulative(self))?;
        h.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_into_the_first_bucket_that_holds_the_value() {
        let h = Histogram::default();
        h.record(50, 2); // on a bound: that bucket
        h.record(51, 1);
        h.record(20_000_000, 1); // beyond the last bound
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.00005, 2));
        assert_eq!(s.buckets[1], (0.0001, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        let cumulative: Vec<u64> = s.cumulative().map(|(_, n)| n).collect();
        assert!(cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(cumulative.last(), Some(&4));
        assert!((s.sum - 20.000151).abs() < 1e-9);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["buckets"]["+Inf"], 4);
        assert_eq!(json["buckets"]["0.0001"], 3);
    }
}
