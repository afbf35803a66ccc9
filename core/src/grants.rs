//! What one identity may do: the topics it may publish to and subscribe within, and the
//! users it may send direct messages to.
//!
//! One type for every way in. WebSocket and HTTP requests are checked by the Hub with
//! these methods; MQTT devices are checked by the broker session through the MQTT crate's
//! `Permissions` trait, which that crate implements for this type with the very same
//! methods. A check is a handful of filter matches, worked out once per identity.

use crate::topic;

/// Allowed topics and recipients. Patterns are already substituted (`{sub}`, `%c`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Everything: any topic, any filter (including `$` topics), any recipient.
    all: bool,
    /// Filters covering the topics that may be published to.
    publish: Vec<String>,
    /// Filters within which subscriptions (and presence queries) are allowed.
    subscribe: Vec<String>,
    /// Users that may receive direct messages; `*` is anyone.
    send: Vec<String>,
}

/// A refused request, with a message that names what was refused and never the
/// credential that was used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

impl Grants {
    /// Everything, for messages already checked where they came in (device publishes,
    /// checked by the broker session with the device's own grants).
    pub const ALL: Grants = Grants {
        all: true,
        publish: Vec::new(),
        subscribe: Vec::new(),
        send: Vec::new(),
    };

    /// Everything a client can do (the admin credential).
    pub fn all() -> Self {
        Self::ALL
    }

    /// Nothing at all; the starting point of a token without permission claims.
    pub fn none() -> Self {
        Grants::default()
    }

    /// Grants from patterns that are already substituted. Invalid filters are left
    /// out: a pattern that does not parse grants nothing rather than something
    /// unintended.
    pub fn new(publish: Vec<String>, subscribe: Vec<String>, send: Vec<String>) -> Self {
        let valid = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .filter(|f| topic::validate_filter(f).is_ok())
                .collect()
        };
        Grants {
            all: false,
            publish: valid(publish),
            subscribe: valid(subscribe),
            send: send.into_iter().filter(|u| !u.is_empty()).collect(),
        }
    }

    pub fn is_all(&self) -> bool {
        self.all
    }

    pub fn check_publish(&self, topic_name: &str) -> Result<(), Forbidden> {
        // `$` topics carry what the server says (device status); nobody may forge it.
        if topic_name.starts_with('$') {
            return Err(Forbidden(format!(
                "topics starting with `$` are reserved for the server (`{topic_name}`)"
            )));
        }
        if self.all || self.publish.iter().any(|p| topic::matches(p, topic_name)) {
            Ok(())
        } else {
            Err(Forbidden(format!("may not publish to `{topic_name}`")))
        }
    }

    pub fn check_subscribe(&self, filter: &str) -> Result<(), Forbidden> {
        if self.all || self.subscribe.iter().any(|p| topic::covers(p, filter)) {
            Ok(())
        } else {
            Err(Forbidden(format!("may not subscribe to `{filter}`")))
        }
    }

    /// Presence shows who is on a topic: allowed to those who may subscribe to it.
    pub fn check_presence(&self, topic_name: &str) -> Result<(), Forbidden> {
        if self.all || self.subscribe.iter().any(|p| topic::matches(p, topic_name)) {
            Ok(())
        } else {
            Err(Forbidden(format!(
                "may not see who is on `{topic_name}` (needs subscribe permission)"
            )))
        }
    }

    /// Who may be sent direct messages: `None` for anyone, else these users (`*`: anyone),
    /// so another box can make the same check with [`Grants::new`].
    pub fn send_scope(&self) -> Option<&[String]> {
        (!self.all).then_some(self.send.as_slice())
    }

    /// `to` is the recipient's user, or None for a connection without one.
    pub fn check_send(&self, to: Option<&str>) -> Result<(), Forbidden> {
        let allowed = self.all || self.send.iter().any(|u| u == "*" || Some(u.as_str()) == to);
        if allowed {
            Ok(())
        } else {
            Err(Forbidden(match to {
                Some(user) => format!("may not send direct messages to user `{user}`"),
                None => "may not send direct messages to anonymous clients".into(),
            }))
        }
    }

    /// Whether every subscription in `filters` would still be allowed; those that would
    /// not are returned, so a connection whose permissions shrink can drop them.
    pub fn disallowed<'a>(&self, filters: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        filters
            .into_iter()
            .filter(|f| self.check_subscribe(f).is_err())
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn filters_decide_publish_subscribe_and_presence() {
        let g = Grants::new(
            strings(&["chat/alice/#"]),
            strings(&["chat/#", "$devices/#"]),
            strings(&["bob"]),
        );
        assert!(g.check_publish("chat/alice/x").is_ok());
        assert!(g.check_publish("chat/bob/x").is_err());
        assert!(g.check_subscribe("chat/+/x").is_ok());
        assert!(g.check_subscribe("#").is_err());
        assert!(g.check_subscribe("$devices/+").is_ok());
        assert!(g.check_presence("chat/room").is_ok());
        assert!(g.check_presence("other").is_err());
        assert!(g.check_send(Some("bob")).is_ok());
        assert!(g.check_send(Some("carol")).is_err());
        assert!(g.check_send(None).is_err());
        assert_eq!(
            g.disallowed(["chat/a", "news/#"]),
            vec!["news/#".to_owned()]
        );
    }

    #[test]
    fn nobody_publishes_to_dollar_topics_and_all_means_all() {
        let all = Grants::all();
        assert!(all.check_publish("$devices/x").is_err());
        assert!(all.check_publish("a/b").is_ok());
        assert!(all.check_subscribe("$devices/#").is_ok());
        assert!(all.check_send(None).is_ok());
        let none = Grants::none();
        assert!(none.check_publish("a").is_err());
        assert!(none.check_subscribe("a").is_err());
        assert!(none.check_send(Some("a")).is_err());
    }

    #[test]
    fn invalid_patterns_grant_nothing() {
        let g = Grants::new(strings(&["a/#/b"]), strings(&["x+"]), vec![]);
        assert!(g.check_publish("a/z/b").is_err());
        assert!(g.check_subscribe("x+").is_err());
    }
}
