//! Topic permissions for devices from `[[mqtt.acl]]`.
//!
//! A device's permissions are worked out once, at connect, by substituting its client
//! id and username into the patterns of every rule that applies to it. The result is
//! the same [`Grants`] every other identity has, checked by the same code.

use super::config::{AclRule, TopicPattern};

use super::patterns::substitute;
use switchboard_core::grants::Grants;

/// The configured rules.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
}

impl Acl {
    pub fn new(rules: Vec<AclRule>) -> Self {
        Acl { rules }
    }

    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// No rules at all means any topic (but `$` ones, which nobody publishes to).
    pub fn for_device(&self, client_id: &str, username: Option<&str>) -> Grants {
        if self.is_open() {
            return Grants::all();
        }
        let applies = |rule: &&AclRule| match (rule.user.as_str(), username) {
            ("*", _) => true,
            ("anonymous", None) => true,
            (name, Some(user)) => name == user,
            _ => false,
        };
        let values = [("%c", Some(client_id)), ("%u", username)];
        let expand = |patterns: &mut Vec<String>, from: &[TopicPattern]| {
            patterns.extend(from.iter().filter_map(|p| substitute(p.as_str(), &values)))
        };
        let (mut publish, mut subscribe) = (Vec::new(), Vec::new());
        for rule in self.rules.iter().filter(applies) {
            expand(&mut publish, &rule.publish);
            expand(&mut subscribe, &rule.subscribe);
        }
        // Direct messages are a WebSocket feature; devices have no use for them.
        Grants::new(publish, subscribe, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bridge::{Denied, Permissions};

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
        assert_eq!(Permissions::check_publish(&p, "any/thing"), Ok(()));
        assert_eq!(Permissions::check_subscribe(&p, "#"), Ok(()));
        assert_eq!(
            Permissions::check_publish(&p, "$devices/n1"),
            Err(Denied::NotAuthorized)
        );
        assert_eq!(Permissions::check_publish(&p, "a/+"), Err(Denied::Invalid));
        assert_eq!(
            Permissions::check_subscribe(&p, "a/#/b"),
            Err(Denied::Invalid)
        );
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
        assert_eq!(Permissions::check_publish(&n1, "sensors/n1/temp"), Ok(()));
        assert_eq!(
            Permissions::check_publish(&n1, "sensors/n2/temp"),
            Err(Denied::NotAuthorized)
        );
        assert_eq!(Permissions::check_subscribe(&n1, "commands/n1/+"), Ok(()));
        assert_eq!(
            Permissions::check_subscribe(&n1, "commands/#"),
            Err(Denied::NotAuthorized)
        );

        let ops = acl.for_device("console", Some("ops"));
        assert_eq!(Permissions::check_subscribe(&ops, "sensors/+/temp"), Ok(()));
        assert_eq!(
            Permissions::check_publish(&ops, "sensors/console/x"),
            Ok(())
        );

        // %u without a username grants nothing.
        let anon = acl.for_device("a1", None);
        assert_eq!(
            Permissions::check_publish(&anon, "public/u/x"),
            Err(Denied::NotAuthorized)
        );
        assert_eq!(Permissions::check_publish(&anon, "sensors/a1/t"), Ok(()));
    }

    #[test]
    fn a_username_cannot_widen_a_pattern() {
        let acl = rules("[[acl]]\nuser = \"*\"\nsubscribe = [\"users/%u/#\"]\n");
        let evil = acl.for_device("x", Some("#"));
        assert_eq!(
            Permissions::check_subscribe(&evil, "users/#"),
            Err(Denied::NotAuthorized)
        );
        let slash = acl.for_device("x", Some("a/b"));
        assert_eq!(
            Permissions::check_subscribe(&slash, "users/a/b/c"),
            Err(Denied::NotAuthorized)
        );
    }
}
