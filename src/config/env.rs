//! `SWITCHBOARD_<SECTION>_<KEY>` environment overrides, applied on top of the file.
//!
//! Every leaf key of the defaults names one variable. Each variable is checked on its
//! own before it is merged, so an error names the variable rather than a position in a
//! file that does not contain it.

use serde::Deserialize;

use super::errors::{closest, ConfigError};
use super::Config;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Variables with the prefix that are command-line settings, not configuration keys.
pub const ENV_NOT_SETTINGS: &[&str] = &[
    "SWITCHBOARD_CONFIG",
    "SWITCHBOARD_URL",
    "SWITCHBOARD_TOKEN",
    "SWITCHBOARD_CA_FILE",
];

/// The variables of `env` that are meant as settings.
pub(super) fn overrides(env: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    env.into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !ENV_NOT_SETTINGS.contains(&k.as_str()))
        .collect()
}

/// Sets each override in the file's `table` and reads the configuration from the result.
pub(super) fn apply(
    mut table: toml::Table,
    overrides: Vec<(String, String)>,
) -> Result<Config, ConfigError> {
    let keys = key_paths(&Config::default());
    for (var, raw) in overrides {
        let Some(path) = keys
            .iter()
            .find(|(env_name, _)| *env_name == var)
            .map(|(_, p)| p)
        else {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "no such setting".into(),
                hint: closest(&var, keys.iter().map(|(e, _)| e.as_str()))
                    .map(|k| format!("did you mean {k}?")),
            });
        };
        let value = env_value(&raw, value_at(&table_of_defaults(), path));
        // Check this one variable on its own so an error names it.
        let mut alone = toml::Table::new();
        set_path(&mut alone, path, value.clone());
        if let Err(e) = Config::deserialize(toml::Value::Table(alone)) {
            return Err(ConfigError::Env {
                var,
                message: e.message().to_owned(),
                hint: None,
            });
        }
        set_path(&mut table, path, value);
    }
    Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Env {
        var: "SWITCHBOARD_*".into(),
        message: e.message().to_owned(),
        hint: None,
    })
}

fn table_of_defaults() -> toml::Table {
    toml::Table::try_from(Config::default()).unwrap_or_default()
}

/// Every leaf key as (`SWITCHBOARD_HTTP_LISTEN`, ["http", "listen"]).
pub(super) fn key_paths(config: &Config) -> Vec<(String, Vec<String>)> {
    fn walk(table: &toml::Table, prefix: &[String], out: &mut Vec<(String, Vec<String>)>) {
        for (k, v) in table {
            let mut path = prefix.to_vec();
            path.push(k.clone());
            match v {
                toml::Value::Table(t) => walk(t, &path, out),
                _ => {
                    let env = format!("{ENV_PREFIX}{}", path.join("_").to_uppercase());
                    out.push((env, path));
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(table) = toml::Table::try_from(config) {
        walk(&table, &[], &mut out);
    }
    out
}

pub(super) fn value_at<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(p)?.as_table()?;
    }
    t.get(last)
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(inner) = entry else {
            return;
        };
        t = inner;
    }
    t.insert(last.clone(), value);
}

/// Reads an environment value as the type the key has: strings stay verbatim (no
/// quoting needed), lists may be TOML arrays or comma-separated, the rest is TOML.
fn env_value(raw: &str, default: Option<&toml::Value>) -> toml::Value {
    let as_toml = || {
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match default {
        Some(toml::Value::String(_)) | None => toml::Value::String(raw.to_owned()),
        Some(toml::Value::Array(_)) => as_toml().filter(|v| v.is_array()).unwrap_or_else(|| {
            toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )
        }),
        Some(_) => as_toml().unwrap_or_else(|| toml::Value::String(raw.to_owned())),
    }
}
