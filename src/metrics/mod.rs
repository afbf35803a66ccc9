//! Metrics: every live figure of the daemon gathered into one [`Snapshot`], shown two
//! ways from the same values — Prometheus text at `/metrics` ([`prometheus::encode`])
//! and JSON at `/api/v1/stats` (the snapshot's `Serialize`) — so the two never disagree.
//!
//! Counters stay where they are counted (the Hub, the broker, the authenticator, the
//! HTTP listener) and are read only when someone asks, so being observed costs the hot
//! path nothing. What has no other home — the delivery latency histogram, oversized
//! frames — lives in [`Instruments`], held by the WebSocket side.
//!
//! Adding figures: the part that counts them implements [`Source`] (in its own
//! `metrics.rs`) and the composition root registers it in the [`Registry`], so this
//! module imports none of the parts it shows. A family added under a name that already exists (the
//! same kind and label) is merged — values for a label value already there are added
//! up — so a new source can add its own `reason` to `messages_dropped` without touching
//! the others.
//! This module must not count anything on the hot path itself.

pub mod families;
pub mod histogram;
pub mod prometheus;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

pub use histogram::{Histogram, HistogramSnapshot};

/// A part of the daemon that shows figures: it adds its families to a snapshot by
/// reading the counters it keeps. Parts register themselves in a [`Registry`] at start,
/// so this module never reads a part it does not know.
pub trait Source: Send + Sync {
    fn collect(&self, snapshot: &mut Snapshot);
}

/// Every registered source, in the order their figures are shown.
#[derive(Default)]
pub struct Registry {
    sources: RwLock<Vec<Arc<dyn Source>>>,
}

impl Registry {
    pub fn register(&self, source: Arc<dyn Source>) {
        self.sources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Reads every source now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let sources = self.sources.read().unwrap_or_else(PoisonError::into_inner);
        for source in sources.iter() {
            source.collect(&mut snapshot);
        }
        snapshot
    }
}

/// A counter's value now.
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Figures counted by the transports that have no other home.
#[derive(Debug, Default)]
pub struct Instruments {
    /// Hub accepted a publish → WebSocket writer flushed it; see `crate::ws::connection`.
    pub delivery_latency: Histogram,
    /// WebSocket frames refused for exceeding `ws.max_message_size`.
    pub ws_too_large: AtomicU64,
}

impl Instruments {
    pub fn count_ws_too_large(&self) {
        self.ws_too_large.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a family measures, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Only ever goes up (Prometheus adds `_total` to the name).
    Counter,
    /// Goes up and down.
    Gauge,
    Histogram,
}

/// The values of one family: a single number, one number per value of one label, or a
/// histogram.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    One(u64),
    Labelled {
        label: &'static str,
        values: Vec<(Cow<'static, str>, u64)>,
    },
    Histogram(HistogramSnapshot),
}

/// One named figure (or set of figures sharing a name) with its meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Without the `switchboard_` prefix and without `_total`; the JSON key.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub values: Values,
}

/// Every figure at one moment. Serialises as a JSON object keyed by family name: a
/// number, an object from label value to number, or a histogram object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    families: Vec<Family>,
}

impl Snapshot {
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    pub fn get(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    pub fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.push(Kind::Counter, name, help, Values::One(value));
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.push(Kind::Gauge, name, help, Values::One(value));
    }

    /// A counter with one label; merged into an existing family of the same name.
    pub fn counters<V: Into<Cow<'static, str>>>(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = (V, u64)>,
    ) {
        self.labelled(Kind::Counter, name, help, label, values);
    }

    /// A gauge with one label; merged into an existing family of the same name.
    pub fn gauges<V: Into<Cow<'static, str>>>(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = (V, u64)>,
    ) {
        self.labelled(Kind::Gauge, name, help, label, values);
    }

    pub fn histogram(&mut self, name: &'static str, help: &'static str, h: HistogramSnapshot) {
        self.push(Kind::Histogram, name, help, Values::Histogram(h));
    }

    fn labelled<V: Into<Cow<'static, str>>>(
        &mut self,
        kind: Kind,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = (V, u64)>,
    ) {
        let values = values.into_iter().map(|(v, n)| (v.into(), n));
        let existing = self.families.iter_mut().find(|f| f.name == name);
        match existing.map(|f| (f.kind, &mut f.values)) {
            Some((
                k,
                Values::Labelled {
                    label: l,
                    values: known,
                },
            )) if k == kind && *l == label => {
                for (value, n) in values {
                    match known.iter_mut().find(|(v, _)| *v == value) {
                        Some((_, total)) => *total += n,
                        None => known.push((value, n)),
                    }
                }
            }
            Some(_) => conflict(name),
            None => self.families.push(Family {
                name,
                help,
                kind,
                values: Values::Labelled {
                    label,
                    values: values.collect(),
                },
            }),
        }
    }

    fn push(&mut self, kind: Kind, name: &'static str, help: &'static str, values: Values) {
        if self.get(name).is_some() {
            return conflict(name);
        }
        self.families.push(Family {
            name,
            help,
            kind,
            values,
        });
    }
}

/// Two sources used one name for different things: a bug, kept out of the output.
fn conflict(name: &str) {
    debug_assert!(
        false,
        "metric family `{name}` added twice with different shapes"
    );
    tracing::error!(
        family = name,
        "metric family added twice with different shapes; second one ignored"
    );
}

impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.families.len()))?;
        for family in &self.families {
            map.serialize_entry(family.name, &family.values)?;
        }
        map.end()
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Values::One(n) => s.serialize_u64(*n),
            Values::Labelled { values, .. } => {
                let mut map = s.serialize_map(Some(values.len()))?;
                for (label, n) in values {
                    map.serialize_entry(label.as_ref(), n)?;
                }
                map.end()
            }
            Values::Histogram(h) => h.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_with_one_name_merge_and_serialise_as_maps() {
        let mut s = Snapshot::default();
        s.counters("dropped", "Drops.", "reason", [("a", 1)]);
        s.counters(
            "dropped",
            "Drops.",
            "reason",
            [(String::from("b"), 2), ("a".into(), 3)],
        );
        s.gauge("depth", "Depth.", 7);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"dropped": {"a": 4, "b": 2}, "depth": 7})
        );
    }
}
