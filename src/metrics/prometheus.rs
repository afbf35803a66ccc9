//! A [`Snapshot`] in the Prometheus text exposition format, through `prometheus-client`.
//!
//! The snapshot is handed to the library as a custom collector, so the library does the
//! naming (`switchboard_` prefix, `_total` on counters), escaping and histogram layout,
//! and the numbers are exactly those the JSON shows.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Kind, Snapshot, Values};

/// Prefix of every metric name.
pub const PREFIX: &str = "switchboard";

/// The content type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every family of the snapshot.
pub fn encode(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.families() {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            match &family.values {
                Values::One(n) => number(&mut metric, family.kind, *n)?,
                Values::Labelled { label, values } => {
                    for (value, n) in values {
                        let labels = [(*label, value.as_ref())];
                        number(&mut metric.encode_family(&labels)?, family.kind, *n)?;
                    }
                }
                Values::Histogram(h) => {
                    metric.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?
                }
            }
        }
        Ok(())
    }
}

fn number(metric: &mut MetricEncoder<'_>, kind: Kind, n: u64) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&n, None::<&Exemplar<_, _>>),
        _ => metric.encode_gauge(&n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn counters_gauges_and_histograms_are_named_and_typed() {
        let mut s = Snapshot::default();
        s.counters(
            "messages_in",
            "Messages accepted.",
            "transport",
            [("ws", 3), ("mqtt", 1)],
        );
        s.gauge("subscriptions", "Subscriptions held.", 2);
        let h = Histogram::default();
        h.record(70, 5);
        s.histogram("delivery_latency_seconds", "Latency.", h.snapshot());
        let text = encode(s).unwrap();
        for line in [
            "# HELP switchboard_messages_in Messages accepted.",
            "# TYPE switchboard_messages_in counter",
            "switchboard_messages_in_total{transport=\"ws\"} 3",
            "switchboard_messages_in_total{transport=\"mqtt\"} 1",
            "# TYPE switchboard_subscriptions gauge",
            "switchboard_subscriptions 2",
            "# TYPE switchboard_delivery_latency_seconds histogram",
            "switchboard_delivery_latency_seconds_count 5",
            "switchboard_delivery_latency_seconds_bucket{le=\"+Inf\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
