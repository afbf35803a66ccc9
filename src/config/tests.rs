//! The configuration as a whole: the packaged file, positions and hints of errors,
//! environment overrides, and each section's entries parsed inside a whole file (so
//! the modules that own a section need not know the file it stands in).

use super::*;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

/// A whole file with no environment, as a section's tests want it.
fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "f.toml", no_env())
}

#[test]
fn annotated_file_is_the_packaged_configuration() {
    let parsed = Config::from_toml(ANNOTATED, "annotated", no_env()).unwrap();
    assert_eq!(parsed, Config::packaged());
}

#[test]
fn packaged_configuration_requires_credentials_and_says_where_it_differs() {
    let packaged = Config::packaged();
    assert!(!packaged.auth.allow_anonymous && !packaged.mqtt.allow_anonymous);
    // Exactly these differ from the built-in defaults, and the file says so for each.
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let ours = toml::Table::try_from(&packaged).unwrap();
    let mut differing: Vec<String> = key_paths(&packaged)
        .into_iter()
        .filter(|(_, path)| value_at(&defaults, path) != value_at(&ours, path))
        .map(|(_, path)| path.join("."))
        .collect();
    differing.sort();
    assert_eq!(
        differing,
        [
            "auth.admin_token_file",
            "auth.allow_anonymous",
            "data_dir",
            "http.listen",
            "metrics.public",
            "mqtt.allow_anonymous",
            "mqtt.listen",
            "mqtt.password_file",
            "mqtt.ws_listen",
        ]
    );
    assert_eq!(
        ANNOTATED.matches("Packaged:").count(),
        9,
        "the header, and one note per setting (the mqtt listeners share one)"
    );
}

#[test]
fn every_key_is_documented_in_the_annotated_file() {
    for (_, path) in key_paths(&Config::default()) {
        let key = path.last().unwrap();
        assert!(
            ANNOTATED.contains(&format!("{key} =")),
            "{key} is not in config/switchboard.toml"
        );
    }
}

#[test]
fn mqtt_permissions_parse_and_bad_patterns_have_positions() {
    // The example in the annotated file, uncommented, is a valid configuration.
    let example: String = ANNOTATED
        .lines()
        .skip_while(|l| !l.starts_with("#     [[mqtt.acl]]"))
        .take_while(|l| l.starts_with("#     ") || *l == "#")
        .map(|l| l.trim_start_matches('#').trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(example.contains("[[mqtt.acl]]"), "{example}");
    let parsed = Config::from_toml(&example, "example", no_env()).unwrap();
    assert_eq!(parsed.mqtt.acl.len(), 2);
    assert_eq!(parsed.mqtt.acl[0].publish[0].as_str(), "sensors/%c/#");

    let err = Config::from_toml(
        "[[mqtt.acl]]\nuser = \"*\"\npublish = [\"a/#/b\"]\n",
        "f.toml",
        no_env(),
    )
    .unwrap_err();
    assert_eq!(err.position().map(|p| p.0), Some(3), "{err}");
    assert!(err.to_string().contains("a/#/b"), "{err}");

    let err = Config::from_toml("[mqtt]\nlisten = \"1883\"\n", "f.toml", no_env()).unwrap_err();
    assert_eq!(err.position().map(|p| p.0), Some(2), "{err}");
    assert!(
        err.to_string().contains("empty turns the listener off"),
        "{err}"
    );

    let off = Config::from_toml("[mqtt]\nws_listen = \"\"\n", "f.toml", no_env()).unwrap();
    assert_eq!(off.mqtt.ws_listen, Listen(None));
}

#[test]
fn unknown_key_has_position_and_hint() {
    let err = Config::from_toml(
        "[http]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n",
        "x.toml",
        no_env(),
    )
    .unwrap_err();
    assert_eq!(err.position(), Some((3, 1)));
    let text = err.to_string();
    assert!(
        text.starts_with("x.toml:3:1: unknown field `listn`"),
        "{text}"
    );
    assert!(text.contains("did you mean `listen`?"), "{text}");
}

#[test]
fn values_are_validated_where_they_stand() {
    let cases = [
        (
            "[ws]\nheartbeat_interval = \"0s\"\n",
            2,
            "greater than zero",
        ),
        ("[ws]\nmax_subscriptions = 0\n", 2, "nonzero"),
        (
            "[presence]\ntopics = [\"ok/#\", \"bad/#/x\"]\n",
            2,
            "must be the last level",
        ),
        (
            "[http]\nlisten = \"nowhere\"\n",
            2,
            "invalid socket address",
        ),
        (
            "[ws]\nslow_consumer = \"sometimes\"\n",
            2,
            "unknown variant",
        ),
        ("[ws\n", 1, ""),
        ("log_level = \"foo=loud\"\n", 1, "invalid log filter"),
        ("log_level = \"verbose\"\n", 1, "not a log level"),
    ];
    for (text, line, needle) in cases {
        let err = Config::from_toml(text, "f", no_env()).unwrap_err();
        assert_eq!(err.position().map(|p| p.0), Some(line), "{text}: {err}");
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
}

#[test]
fn environment_overrides_the_file() {
    let env = vec![
        (
            "SWITCHBOARD_HTTP_LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "SWITCHBOARD_WS_MAX_SUBSCRIPTIONS".to_owned(),
            "7".to_owned(),
        ),
        (
            "SWITCHBOARD_PRESENCE_TOPICS".to_owned(),
            "chat/+,room/#".to_owned(),
        ),
        (
            "SWITCHBOARD_WS_HEARTBEAT_INTERVAL".to_owned(),
            "2s".to_owned(),
        ),
    ];
    let c = Config::from_toml("[ws]\nmax_subscriptions = 3\n", "f", env).unwrap();
    assert_eq!(c.http.listen.port(), 0);
    assert_eq!(c.ws.max_subscriptions.get(), 7);
    assert_eq!(c.presence.topics.len(), 2);
    assert_eq!(c.ws.heartbeat_interval, Duration::from_secs(2));
}

#[test]
fn bad_environment_is_named() {
    let env = vec![("SWITCHBOARD_WS_MAX_SUBSCRIPTONS".to_owned(), "7".to_owned())];
    let err = Config::from_toml("", "f", env).unwrap_err().to_string();
    assert!(err.contains("SWITCHBOARD_WS_MAX_SUBSCRIPTONS"), "{err}");
    assert!(
        err.contains("did you mean SWITCHBOARD_WS_MAX_SUBSCRIPTIONS"),
        "{err}"
    );
    let env = vec![(
        "SWITCHBOARD_WS_MAX_SUBSCRIPTIONS".to_owned(),
        "lots".to_owned(),
    )];
    let err = Config::from_toml("", "f", env).unwrap_err().to_string();
    assert!(err.contains("SWITCHBOARD_WS_MAX_SUBSCRIPTIONS"), "{err}");
}

/// `[[webhooks]]`, whose entries are checked while the file is parsed.
mod webhooks {
    use super::*;

    #[test]
    fn the_annotated_example_parses_with_its_defaults() {
        let example: String = ANNOTATED
            .lines()
            .skip_while(|l| !l.starts_with("#     [[webhooks]]"))
            .take_while(|l| l.starts_with("#     "))
            .map(|l| l.trim_start_matches('#').trim_start())
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&example).unwrap();
        let w = &c.webhooks[0];
        assert_eq!(w.name, "alerts");
        assert!(w.wants_event("device.online") && !w.wants_event("client.connected"));
        assert!(w.wants_topic("alerts/x/y") && !w.wants_topic("other"));
        // Only the required keys: every other value is the default written above.
        let minimal = parse(
            "[[webhooks]]\nname = \"alerts\"\nurl = \"https://example.com/hooks/switchboard\"\nsecret_file = \"/etc/switchboard/alerts.secret\"\ntopics = [\"alerts/#\"]\nevents = [\"device.online\", \"device.offline\"]\n",
        )
        .unwrap();
        assert_eq!(minimal.webhooks, c.webhooks);
    }

    #[test]
    fn bad_entries_are_refused_where_they_stand() {
        let base = "[[webhooks]]\nname = \"a\"\nurl = \"http://h/\"\nsecret_file = \"s\"\n";
        let cases = [
            (
                "[[webhooks]]\nname = \"a\"\nurl = \"ftp://h/\"\nsecret_file = \"s\"\n",
                "http:// or https://",
            ),
            (
                "[[webhooks]]\nname = \"a\"\nurl = \"not a url\"\nsecret_file = \"s\"\n",
                "not a URL",
            ),
            (
                "[[webhooks]]\nname = \"a b\"\nurl = \"http://h/\"\nsecret_file = \"s\"\n",
                "letters, digits",
            ),
            (
                "[[webhooks]]\nname = \"a\"\nurl = \"http://h/\"\n",
                "missing field `secret_file`",
            ),
            (
                &format!("{base}events = [\"client.joined\"]\n"),
                "unknown webhook event",
            ),
            (&format!("{base}{base}"), "two webhooks are named `a`"),
            (&format!("{base}timeout = \"0s\"\n"), "greater than zero"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}

/// `[[bridges]]`, whose entries are checked while the file is parsed.
mod bridges {
    use super::*;

    #[test]
    fn the_annotated_example_parses() {
        let example: String = ANNOTATED
            .lines()
            .skip_while(|l| !l.starts_with("#     [[bridges]]"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&example).unwrap();
        let b = &c.bridges[0];
        assert_eq!(b.name, "cloud");
        assert_eq!(b.topics.len(), 2);
        let rules = b.rules();
        assert_eq!(
            switchboard_bridge::rules::outbound(&rules, "sensors/t"),
            Some(("sites/edge-1/sensors/t".to_owned(), 1))
        );
        assert_eq!(
            switchboard_bridge::rules::inbound(&rules, "sites/edge-1/commands/reboot").as_deref(),
            Some("commands/reboot")
        );
    }

    #[test]
    fn a_bridge_parses_with_defaults() {
        let c = parse("[[bridges]]\nname = \"cloud\"\naddress = \"example.com:8883\"\n[[bridges.topics]]\npattern = \"a/#\"\ndirection = \"both\"\n").unwrap();
        let b = &c.bridges[0];
        assert_eq!(b.host_port(), ("example.com".to_owned(), 8883));
        assert_eq!(b.client_id(), "switchboard-cloud");
        assert_eq!(b.topics[0].qos, 1);
    }

    #[test]
    fn bad_entries_are_refused_where_they_stand() {
        let base = "[[bridges]]\nname = \"a\"\naddress = \"h:1883\"\n";
        let cases = [
            (
                "[[bridges]]\nname = \"a\"\naddress = \"h\"\n",
                "must be host:port",
            ),
            (
                "[[bridges]]\nname = \"a\"\naddress = \"h:x\"\n",
                "must be host:port",
            ),
            ("[[bridges]]\naddress = \"h:1\"\n", "needs a `name`"),
            (&format!("{base}{base}"), "two bridges are named `a`"),
            (
                &format!("{base}[[bridges.topics]]\npattern = \"a\"\ndirection = \"sideways\"\n"),
                "unknown bridge direction `sideways`",
            ),
            (
                &format!("{base}[[bridges.topics]]\npattern = \"a/#/b\"\ndirection = \"in\"\n"),
                "not a valid MQTT filter",
            ),
            (
                &format!(
                    "{base}[[bridges.topics]]\npattern = \"a\"\ndirection = \"in\"\nqos = 2\n"
                ),
                "qos 2",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}

/// `[[hooks]]`, whose entries are checked while the file is parsed.
mod hooks {
    use super::*;

    #[test]
    fn the_annotated_example_is_a_valid_configuration() {
        let example: String = ANNOTATED
            .lines()
            .skip_while(|l| !l.starts_with("#     [[hooks]]"))
            .take_while(|l| l.starts_with("#     ") || *l == "#")
            .map(|l| l.trim_start_matches('#').trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let parsed = parse(&example).unwrap();
        assert_eq!(parsed.hooks.len(), 2);
        assert_eq!(
            parsed.hooks[0].event_header.as_deref(),
            Some("X-GitHub-Event")
        );
        assert_eq!(parsed.hooks[1].tolerance.as_secs(), 300);
    }

    #[test]
    fn bad_hooks_are_refused_with_a_position_and_a_reason() {
        let hook = |name: &str, topic: &str| {
            format!(
                "[[hooks]]\nname = \"{name}\"\ntopic = \"{topic}\"\nsecret_file = \"s\"\nsignature = \"github\"\n"
            )
        };
        let cases = [
            (hook("a/b", "t"), Some(2), "invalid hook name `a/b`"),
            (hook("a", "t/#"), Some(3), "wildcards"),
            (hook("a", "$devices/x"), Some(3), "`$` topics"),
            (
                format!("{}{}", hook("a", "t"), hook("a", "u")),
                None,
                "hook name `a` is used twice",
            ),
            (
                hook("a", "t").replace("github", "gitlab"),
                Some(5),
                "unknown variant",
            ),
            (
                format!("{}event_header = \"a b\"\n", hook("a", "t")),
                Some(6),
                "not an HTTP header name",
            ),
        ];
        for (text, line, needle) in cases {
            let err = parse(&text).unwrap_err();
            if line.is_some() {
                assert_eq!(err.position().map(|p| p.0), line, "{text}: {err}");
            }
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
