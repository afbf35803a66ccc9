//! Topic permissions: which topics a device may publish to and subscribe within.
//!
//! Rules come from `[[mqtt.acl]]`. A device's permissions are worked out once, at
//! connect, by substituting its client id and username into the patterns of every rule
//! that applies to it; each PUBLISH and SUBSCRIBE is then a few filter matches.

use switchboard_bridge::{Denied, Permissions};

use crate::config::AclRule;
use crate::topic;

/// The configured rules.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
}

/// What one device may do.
#[derive(Debug, Clone)]
pub struct DevicePermissions {
    /// No rules are configured: anything but `$` topics.
    open: bool,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

impl Acl {
    pub fn new(rules: Vec<AclRule>) -> Self {
        Acl { rules }
    }

    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn for_device(&self, client_id: &str, username: Option<&str>) -> DevicePermissions {
        let applies = |rule: &&AclRule| match (rule.user.as_str(), username) {
            ("*", _) => true,
            ("anonymous", None) => true,
            (name, Some(user)) => name == user,
            _ => false,
        };
        let expand = |patterns: &mut Vec<String>, from: &[crate::config::TopicPattern]| {
            patterns.extend(
                from.iter()
                    .filter_map(|p| substitute(p.as_str(), client_id, username)),
            )
        };
        let mut permissions = DevicePermissions {
            open: self.is_open(),
            publish: Vec::new(),
            subscribe: Vec::new(),
        };
        for rule in self.rules.iter().filter(applies) {
            expand(&mut permissions.publish, &rule.publish);
            expand(&mut permissions.subscribe, &rule.subscribe);
        }
        permissions
    }
}

/// Fills `%c` and `%u` in. A value that would change the pattern's shape (a username
/// with `/`, `+` or `#`), or `%u` for a device without a username, makes the pattern
/// grant nothing rather than something unintended.
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#', '\0']);
    let mut out = pattern.to_owned();
    if out.contains("%c") {
        if !safe(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    if out.contains("%u") {
        let user = username.filter(|u| safe(u))?;
        out = out.replace("%u", user);
    }
    topic::validate_filter(&out).ok()?;
    Some(out)
}

impl Permissions for DevicePermissions {
    fn check_publish(&self, topic_name: &str) -> Result<(), Denied> {
        topic::validate_topic(topic_name).map_err(|_| Denied::Invalid)?;
        // `$` topics carry what the server says (device status); devices may not forge it.
        if topic_name.starts_with('$') {
            return Err(Denied::NotAuthorized);
        }
        if self.open || self.publish.iter().any(|p| topic::matches(p, topic_name)) {
            Ok(())
        } else {
            Err(Denied::NotAuthorized)
        }
    }

    fn check_subscribe(&self, filter: &str) -> Result<(), Denied> {
        topic::validate_filter(filter).map_err(|_| Denied::Invalid)?;
        if self.open || self.subscribe.iter().any(|p| topic::covers(p, filter)) {
            Ok(())
        } else {
            Err(Denied::NotAuthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Acl {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            acl: Vec<AclRule>,
        }
        let w: Wrapper = toml::from_str(toml_text).unwrap();
        Acl::new(w.acl)
    }

    #[test]
    fn no_rules_allow_everything_but_dollar_topics() {
        let p = Acl::default().for_device("n1", None);
        assert_eq!(p.check_publish("any/thing"), Ok(()));
        assert_eq!(p.check_subscribe("#"), Ok(()));
        assert_eq!(p.check_publish("$devices/n1"), Err(Denied::NotAuthorized));
        assert_eq!(p.check_publish("a/+"), Err(Denied::Invalid));
        assert_eq!(p.check_subscribe("a/#/b"), Err(Denied::Invalid));
    }

    #[test]
    fn patterns_substitute_client_id_and_username() {
        let acl = rules(
            r##"
            [[acl]]
            user = "*"
            publish = ["sensors/%c/#"]
            subscribe = ["commands/%c/#"]
            [[acl]]
            user = "ops"
            subscribe = ["#", "users/%u/+"]
            [[acl]]
            user = "anonymous"
            publish = ["public/%u/x"]
            "##,
        );
        let n1 = acl.for_device("n1", Some("dev"));
        assert_eq!(n1.check_publish("sensors/n1/temp"), Ok(()));
        assert_eq!(
            n1.check_publish("sensors/n2/temp"),
            Err(Denied::NotAuthorized)
        );
        assert_eq!(n1.check_subscribe("commands/n1/+"), Ok(()));
        assert_eq!(n1.check_subscribe("commands/#"), Err(Denied::NotAuthorized));

        let ops = acl.for_device("console", Some("ops"));
        assert_eq!(ops.check_subscribe("sensors/+/temp"), Ok(()));
        assert_eq!(ops.check_publish("sensors/console/x"), Ok(()));

        // %u without a username grants nothing.
        let anon = acl.for_device("a1", None);
        assert_eq!(anon.check_publish("public/u/x"), Err(Denied::NotAuthorized));
        assert_eq!(anon.check_publish("sensors/a1/t"), Ok(()));
    }

    #[test]
    fn a_username_cannot_widen_a_pattern() {
        let acl = rules("[[acl]]\nuser = \"*\"\nsubscribe = [\"users/%u/#\"]\n");
        let evil = acl.for_device("x", Some("#"));
        assert_eq!(evil.check_subscribe("users/#"), Err(Denied::NotAuthorized));
        let slash = acl.for_device("x", Some("a/b"));
        assert_eq!(
            slash.check_subscribe("users/a/b/c"),
            Err(Denied::NotAuthorized)
        );
    }
}
