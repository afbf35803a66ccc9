//! Topic names and subscription filters in MQTT syntax.
//!
//! Owns the rules every way in shares: what a valid topic or filter is, and whether a
//! filter matches a topic. The Hub, the Rust client and the MQTT crate all call this
//! module so that a topic means the same thing everywhere. It knows nothing of
//! connections or messages.

use std::fmt;

/// Longest topic or filter accepted, in bytes. MQTT allows 65,535; a gateway for small
/// devices has no use for topics that long, and a bound keeps the index small.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Deepest topic accepted, in levels. Bounds the work one match can cost.
pub const MAX_TOPIC_LEVELS: usize = 32;

/// Why a topic or a filter was refused. The text is shown to clients as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    #[error("topic has more than {MAX_TOPIC_LEVELS} levels")]
    TooDeep,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("wildcards (+, #) are only allowed in subscription filters, not in topic `{0}`")]
    WildcardInTopic(String),
    #[error("`+` must fill a whole level (as in a/+/c), found in `{0}`")]
    PlusNotAlone(String),
    #[error("`#` must be the last level and fill it (as in a/#), found in `{0}`")]
    HashNotLast(String),
}

/// Checks a topic name that a message is published to: no wildcards.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopic(topic.to_owned()));
    }
    Ok(())
}

/// Checks a subscription filter: `+` fills one whole level, `#` fills the last one.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('+') && level != "+" {
            return Err(TopicError::PlusNotAlone(filter.to_owned()));
        }
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::HashNotLast(filter.to_owned()));
        }
    }
    Ok(())
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    if s.split('/').count() > MAX_TOPIC_LEVELS {
        return Err(TopicError::TooDeep);
    }
    Ok(())
}

/// True when `filter` contains a wildcard level.
pub fn is_wildcard(filter: &str) -> bool {
    filter.split('/').any(|l| l == "+" || l == "#")
}

/// Does a (valid) filter match a (valid) topic? One matcher for the whole daemon: the
/// Hub routes with it and the MQTT broker decides with it which device publishes its own
/// subscribers could want.
///
/// Follows MQTT 3.1.1 §4.7: `a/#` also matches `a`, and a filter starting with a
/// wildcard never matches a topic starting with `$` (system topics stay opt-in).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Does `pattern` allow everything `filter` could ever match? Used for subscribe
/// permissions: a device allowed `sensors/#` may subscribe to `sensors/+/temp`, but one
/// allowed `sensors/+/temp` may not subscribe to `sensors/#`. Both must be valid filters.
pub fn covers(pattern: &str, filter: &str) -> bool {
    let wildcard_start = |f: &str| f.starts_with('+') || f.starts_with('#');
    if filter.starts_with('$') && wildcard_start(pattern) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    for p in pattern.split('/') {
        let f = filter_levels.next();
        match (p, f) {
            ("#", _) => return true,
            (_, None) | (_, Some("#")) => return false,
            ("+", Some(_)) => {}
            (_, Some("+")) => return false,
            (literal, Some(f)) if literal == f => {}
            _ => return false,
        }
    }
    filter_levels.next().is_none()
}

/// A validated subscription filter, for configuration values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter(String);

impl Filter {
    pub fn new(filter: impl Into<String>) -> Result<Self, TopicError> {
        let filter = filter.into();
        validate_filter(&filter)?;
        Ok(Self(filter))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, topic: &str) -> bool {
        matches(&self.0, topic)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates while deserializing, so a bad filter in a config file is reported with
/// the line and column it stands at.
impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Filter::new(s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_is_containment_of_matched_topics() {
        let yes = [
            ("#", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/+/c"),
            ("a/#", "a/#"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("a/+/c", "a/b/c"),
            ("a/b", "a/b"),
        ];
        let no = [
            ("a/+", "a/#"),
            ("a/+/c", "a/#"),
            ("a/b", "a/+"),
            ("a/b", "a/b/c"),
            ("a/b/c", "a/b"),
            ("+/b", "$SYS/b"),
            ("#", "$SYS/#"),
            ("a/+", "a"),
        ];
        for (pattern, filter) in yes {
            assert!(covers(pattern, filter), "{pattern} covers {filter}");
        }
        for (pattern, filter) in no {
            assert!(
                !covers(pattern, filter),
                "{pattern} does not cover {filter}"
            );
        }
        assert!(covers("$SYS/#", "$SYS/a"));
    }

    #[test]
    fn topics() {
        assert!(validate_topic("a/b/c").is_ok());
        assert!(validate_topic("/leading/slash").is_ok());
        assert!(validate_topic("a//b").is_ok());
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert!(matches!(
            validate_topic("a/+/c"),
            Err(TopicError::WildcardInTopic(_))
        ));
        assert!(matches!(
            validate_topic("a/#"),
            Err(TopicError::WildcardInTopic(_))
        ));
        assert_eq!(validate_topic("a\0b"), Err(TopicError::Nul));
        assert_eq!(
            validate_topic(&"x".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong)
        );
        assert_eq!(validate_topic(&"a/".repeat(40)), Err(TopicError::TooDeep));
    }

    #[test]
    fn filters() {
        for ok in ["a/b", "+", "#", "a/+/c", "a/#", "+/+/#", "/+"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a/b+", "a/+b/c", "a/#/c", "a#", "#/a", "a/b#"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b", false),
            ("a/+/c", "a/x/c", true),
            ("a/+/c", "a/x/y/c", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "a/b", true),
            ("+/+", "a", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("/+", "/x", true),
            ("+", "/x", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }
}
