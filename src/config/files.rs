//! The files a configuration names, checked the way `serve` will need them, so that
//! `check-config` passing means the daemon starts (docs/systemd.md).
//!
//! The walk goes over the configuration as a TOML value and takes every key whose
//! name ends in `_file`, in any section, list entry or nested table: a key added later
//! (a new credential for a new section) is covered without a change here. Then the
//! credentials that serve parses before it listens are loaded by the daemon's own
//! loaders, so a file that exists but holds the wrong thing fails here too.

use std::path::Path;

use super::Config;

/// Keys ending in `_file` that may name a file that does not exist yet.
/// `auth.api_keys_file`: the daemon reads a missing one as "no keys" and
/// `switchboard apikey create` makes it.
const MAY_BE_ABSENT: &[&str] = &["auth.api_keys_file"];

/// One file the configuration names that the daemon could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// Where the configuration names it: `auth.admin_token_file`, `webhooks[0].secret_file`.
    pub key: String,
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = \"{}\": {}", self.key, self.path, self.reason)
    }
}

/// Every `*_file` the configuration names that cannot be read, then (when all can)
/// every credential the daemon's loaders refuse. Empty: `serve` will find what it needs.
pub fn check(config: &Config) -> Vec<String> {
    let problems: Vec<String> = unreadable_files(config)
        .iter()
        .map(ToString::to_string)
        .collect();
    if !problems.is_empty() {
        // The loaders would only repeat the same missing files in their own words.
        return problems;
    }
    let mut problems = Vec::new();
    if let Err(e) = crate::auth::Accepted::from_config(&config.auth) {
        problems.push(format!("[auth]: {e:#}"));
    }
    if let Err(e) = crate::tls::TlsReloader::from_config(&config.tls, &config.tls_listeners()) {
        problems.push(format!("[tls]: {e}"));
    }
    if config.cluster.enabled {
        if let Err(e) = crate::cluster::connect::check(&config.cluster) {
            problems.push(format!("[cluster]: {e:#}"));
        }
    }
    if let Err(e) = crate::http::inbound_webhooks::Hooks::from_config(&config.hooks) {
        problems.push(format!("[[hooks]]: {e}"));
    }
    problems
}

/// The `*_file` keys whose file cannot be opened and read.
pub fn unreadable_files(config: &Config) -> Vec<FileProblem> {
    let value = match toml::Value::try_from(config) {
        Ok(value) => value,
        Err(e) => {
            return vec![FileProblem {
                key: "(configuration)".into(),
                path: String::new(),
                reason: format!("cannot walk the configuration: {e}"),
            }]
        }
    };
    let mut files = Vec::new();
    collect_files(&value, "", &mut files);
    files
        .into_iter()
        .filter(|(key, _)| !MAY_BE_ABSENT.contains(&key.as_str()))
        .filter_map(|(key, path)| {
            readable(Path::new(&path))
                .err()
                .map(|reason| FileProblem { key, path, reason })
        })
        .collect()
}

/// (key, path) for every non-empty string under a key ending in `_file`.
fn collect_files(value: &toml::Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) => {
            for (name, inner) in table {
                let key = if at.is_empty() {
                    name.clone()
                } else {
                    format!("{at}.{name}")
                };
                match inner {
                    toml::Value::String(path) if name.ends_with("_file") && !path.is_empty() => {
                        out.push((key, path.clone()));
                    }
                    _ => collect_files(inner, &key, out),
                }
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_files(item, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Opens and reads the file as the daemon would (its whole content).
fn readable(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err("is a directory, not a file".into());
    }
    std::fs::read(path).map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_file_keys_in_sections_and_lists() {
        let value: toml::Value = toml::from_str(
            r#"
            log_level = "info"
            [auth]
            admin_token_file = "/a"
            api_keys_file = ""
            [[auth.jwt]]
            secret_file = "/s"
            public_key_file = ""
            [[webhooks]]
            secret_file = "/w"
            "#,
        )
        .expect("valid TOML");
        let mut files = Vec::new();
        collect_files(&value, "", &mut files);
        files.sort();
        assert_eq!(
            files,
            [
                ("auth.admin_token_file".to_owned(), "/a".to_owned()),
                ("auth.jwt[0].secret_file".to_owned(), "/s".to_owned()),
                ("webhooks[0].secret_file".to_owned(), "/w".to_owned()),
            ]
        );
    }

    #[test]
    fn the_built_in_defaults_name_no_file() {
        assert!(check(&Config::default()).is_empty());
    }
}
