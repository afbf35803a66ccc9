//! `[history]`: which topics keep their recent messages, and for how long. Validated
//! while deserialised, so a rule that keeps nothing is reported at its line.

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::settings::positive_duration;
use switchboard_core::topic::Filter;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Most messages one `sub` may recover; more missed than this is reported as an
    /// incomplete recovery. At most `[ws] outbound_queue_messages`, so a recovery fits
    /// in the connection's queue.
    pub max_recovery: NonZeroUsize,
    /// Topics with a history, first matching rule wins. None by default.
    pub topics: Vec<HistoryRule>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_recovery: NonZeroUsize::new(1000).unwrap_or(NonZeroUsize::MIN),
            topics: Vec::new(),
        }
    }
}

impl HistoryConfig {
    /// The rule for a topic, if it keeps a history.
    pub fn rule(&self, topic: &str) -> Option<&HistoryRule> {
        self.topics.iter().find(|r| r.filter.matches(topic))
    }
}

/// One `[[history.topics]]` entry: each topic matching `filter` keeps its own history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryRule {
    pub filter: Filter,
    /// The last this many messages of each topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<NonZeroU64>,
    /// Messages younger than this.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub max_age: Option<Duration>,
}

impl HistoryRule {
    /// Whether a message stored at `ts_us` has outlived the rule at `now_us`.
    pub fn expired(&self, ts_us: u64, now_us: u64) -> bool {
        self.max_age.is_some_and(|age| {
            let age_us = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
            now_us.saturating_sub(ts_us) > age_us
        })
    }
}

impl<'de> Deserialize<'de> for HistoryRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            filter: Filter,
            keep: Option<NonZeroU64>,
            #[serde(default, with = "optional_positive_duration")]
            max_age: Option<Duration>,
        }
        let raw = Raw::deserialize(d)?;
        if raw.keep.is_none() && raw.max_age.is_none() {
            return Err(serde::de::Error::custom(format!(
                "history for `{}` needs `keep` (a message count), `max_age` (a duration) or both",
                raw.filter
            )));
        }
        Ok(HistoryRule {
            filter: raw.filter,
            keep: raw.keep,
            max_age: raw.max_age,
        })
    }
}

mod optional_positive_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "positive_duration")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HistoryConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn reads_rules_and_finds_the_first_match() {
        let config = parse(
            r#"
            max_recovery = 50
            [[topics]]
            filter = "sensors/+/temp"
            keep = 10
            [[topics]]
            filter = "sensors/#"
            max_age = "1h"
            "#,
        )
        .unwrap();
        assert_eq!(config.max_recovery.get(), 50);
        let rule = config.rule("sensors/a/temp").unwrap();
        assert_eq!(rule.keep.map(NonZeroU64::get), Some(10));
        let rule = config.rule("sensors/a/hum").unwrap();
        assert_eq!(rule.max_age, Some(Duration::from_secs(3600)));
        assert!(config.rule("chat/lobby").is_none());
        assert!(rule.expired(0, 3_600_000_001));
        assert!(!rule.expired(1, 3_600_000_001));
    }

    #[test]
    fn refuses_a_rule_that_keeps_nothing_or_a_bad_filter() {
        let err = parse("[[topics]]\nfilter = \"a/#\"\n").unwrap_err();
        assert!(err.to_string().contains("needs `keep`"), "{err}");
        let err = parse("[[topics]]\nfilter = \"a/#/b\"\nkeep = 3\n").unwrap_err();
        assert!(err.to_string().contains("a/#/b"), "{err}");
        let err = parse("[[topics]]\nfilter = \"a\"\nkeep = 0\n").unwrap_err();
        assert!(err.to_string().contains("nonzero"), "{err}");
        let err = parse("[[topics]]\nfilter = \"a\"\nmax_age = \"0s\"\n").unwrap_err();
        assert!(err.to_string().contains("greater than zero"), "{err}");
    }
}
