//! Topic rules of a link to another broker, in the spirit of Mosquitto's
//! `topic pattern [in|out|both] qos local-prefix remote-prefix`: a local topic is
//! `local_prefix + rest` and its remote twin `remote_prefix + rest`, where `rest`
//! matches `pattern` (MQTT filter syntax).

/// Which way a rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the other broker into this one.
    In,
    /// From this broker to the other one.
    Out,
    Both,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "in" => Some(Direction::In),
            "out" => Some(Direction::Out),
            "both" => Some(Direction::Both),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Both => "both",
        }
    }

    pub fn inbound(self) -> bool {
        self != Direction::Out
    }

    pub fn outbound(self) -> bool {
        self != Direction::In
    }
}

/// One topic rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    pub direction: Direction,
    /// 0 or 1: the QoS messages are sent upstream with, and subscribed with.
    pub qos: u8,
    pub local_prefix: String,
    pub remote_prefix: String,
}

/// Why a rule is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("topic pattern `{0}` is not a valid MQTT filter")]
    Pattern(String),
    #[error("qos {0} is not supported (use 0 or 1)")]
    Qos(u8),
    #[error("prefix `{0}` must not contain `+` or `#`")]
    Prefix(String),
}

impl Rule {
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.pattern.is_empty() || !rumqttc::v5::mqttbytes::valid_filter(&self.pattern) {
            return Err(RuleError::Pattern(self.pattern.clone()));
        }
        if self.qos > 1 {
            return Err(RuleError::Qos(self.qos));
        }
        for prefix in [&self.local_prefix, &self.remote_prefix] {
            if prefix.contains(['+', '#']) {
                return Err(RuleError::Prefix(prefix.clone()));
            }
        }
        Ok(())
    }

    /// The remote topic of a local one, if this rule sends it out.
    pub fn to_remote(&self, local: &str) -> Option<String> {
        if !self.direction.outbound() {
            return None;
        }
        let rest = self.matching(local, &self.local_prefix)?;
        Some(format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic of a remote one, if this rule brings it in.
    pub fn to_local(&self, remote: &str) -> Option<String> {
        if !self.direction.inbound() {
            return None;
        }
        let rest = self.matching(remote, &self.remote_prefix)?;
        Some(format!("{}{rest}", self.local_prefix))
    }

    /// What to subscribe to on the remote broker for an inbound rule.
    pub fn remote_filter(&self) -> Option<String> {
        self.direction
            .inbound()
            .then(|| format!("{}{}", self.remote_prefix, self.pattern))
    }

    fn matching<'t>(&self, topic: &'t str, prefix: &str) -> Option<&'t str> {
        let rest = topic.strip_prefix(prefix)?;
        // `#` and `+` never match a `$` topic (status notices), unless the pattern
        // names the `$` level itself.
        if rest.starts_with('$') && !self.pattern.starts_with('$') {
            return None;
        }
        let matched = if rest.starts_with('$') {
            // rumqttc's matcher refuses every `$` topic; compare the first level here.
            let (t0, t_rest) = rest.split_once('/').unwrap_or((rest, ""));
            let (p0, p_rest) = self.pattern.split_once('/').unwrap_or((&self.pattern, ""));
            t0 == p0
                && (p_rest == "#"
                    || (p_rest.is_empty() && t_rest.is_empty())
                    || rumqttc::v5::mqttbytes::matches(t_rest, p_rest))
        } else {
            rumqttc::v5::mqttbytes::matches(rest, &self.pattern)
        };
        matched.then_some(rest)
    }
}

/// The first rule's mapping of a local topic, if any rule sends it out, with its QoS.
pub fn outbound(rules: &[Rule], local: &str) -> Option<(String, u8)> {
    rules
        .iter()
        .find_map(|r| r.to_remote(local).map(|t| (t, r.qos)))
}

/// The first rule's mapping of a remote topic, if any rule brings it in.
pub fn inbound(rules: &[Rule], remote: &str) -> Option<String> {
    rules.iter().find_map(|r| r.to_local(remote))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, direction: Direction, local: &str, remote: &str) -> Rule {
        Rule {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn prefixes_map_both_ways() {
        let r = rule("sensors/#", Direction::Both, "site/", "edge/site-1/");
        assert_eq!(
            r.to_remote("site/sensors/t").as_deref(),
            Some("edge/site-1/sensors/t")
        );
        assert_eq!(r.to_remote("sensors/t"), None);
        assert_eq!(r.to_remote("site/other"), None);
        assert_eq!(
            r.to_local("edge/site-1/sensors/t").as_deref(),
            Some("site/sensors/t")
        );
        assert_eq!(r.remote_filter().as_deref(), Some("edge/site-1/sensors/#"));
    }

    #[test]
    fn direction_limits_each_way() {
        let out = rule("a/+", Direction::Out, "", "");
        assert_eq!(out.to_remote("a/b").as_deref(), Some("a/b"));
        assert_eq!(out.to_local("a/b"), None);
        assert_eq!(out.remote_filter(), None);
        let inn = rule("a/+", Direction::In, "", "");
        assert_eq!(inn.to_remote("a/b"), None);
        assert_eq!(inn.to_local("a/b").as_deref(), Some("a/b"));
    }

    #[test]
    fn dollar_topics_need_a_dollar_pattern() {
        let all = rule("#", Direction::Out, "", "");
        assert_eq!(all.to_remote("$devices/x"), None);
        let status = rule("$devices/#", Direction::Out, "", "up/");
        assert_eq!(
            status.to_remote("$devices/x").as_deref(),
            Some("up/$devices/x")
        );
    }

    #[test]
    fn validation() {
        assert!(rule("a/#", Direction::Out, "", "").validate().is_ok());
        assert!(rule("a/#/b", Direction::Out, "", "").validate().is_err());
        assert!(rule("a", Direction::Out, "x/+/", "").validate().is_err());
        let mut q2 = rule("a", Direction::Out, "", "");
        q2.qos = 2;
        assert_eq!(q2.validate(), Err(RuleError::Qos(2)));
    }
}
