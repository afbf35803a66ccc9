//! Where logs go and how verbose they are: text on stderr, or journald with fields when
//! stderr is the journal (a systemd service). The level can change while the daemon
//! runs (`log_level` on reload) through a `tracing_subscriber::reload` handle; the
//! journald or stderr layer stays as it is.

mod journal;

use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Why a new log level was not applied.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter `{filter}`: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot change the log level: {0}")]
    Reload(#[from] reload::Error),
}

/// Changes the log filter of the running process.
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// `RUST_LOG` was set at startup: it wins over the configuration, on reload too.
    from_env: bool,
    /// The configured filter in force (or that would be, without `RUST_LOG`).
    configured: Mutex<String>,
}

/// What [`LogControl::set`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum LogChange {
    Applied,
    /// The filter is the one in force already.
    Unchanged,
    /// `RUST_LOG` decides the level, not the configuration.
    EnvWins,
}

impl LogControl {
    /// A control that changes nothing, for a daemon whose logging is set up elsewhere
    /// (tests embedding the server).
    pub fn none() -> Self {
        LogControl {
            handle: None,
            from_env: false,
            configured: Mutex::new(String::new()),
        }
    }

    /// Puts `filter` in force now, unless it already is or `RUST_LOG` decides.
    pub fn set(&self, filter: &str) -> Result<LogChange, LogError> {
        let Some(handle) = &self.handle else {
            return Ok(LogChange::Unchanged);
        };
        let mut configured = self
            .configured
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *configured == filter {
            return Ok(LogChange::Unchanged);
        }
        if self.from_env {
            *configured = filter.to_owned();
            return Ok(LogChange::EnvWins);
        }
        let new = EnvFilter::try_new(quiet_broker(filter)).map_err(|source| LogError::Filter {
            filter: filter.to_owned(),
            source,
        })?;
        handle.reload(new)?;
        *configured = filter.to_owned();
        Ok(LogChange::Applied)
    }
}

/// The configured filter with the embedded broker's own logs (target `rumqttd`) kept
/// to warnings: at `info` its router logs every MQTT client's connection and
/// subscription, and an operator used to Mosquitto expects a quiet log. A filter that
/// names `rumqttd` itself, or that is quieter than `warn` anyway, is left as it is.
/// `RUST_LOG` is never changed.
pub fn quiet_broker(filter: &str) -> String {
    let quieter = filter
        .split(',')
        .any(|d| matches!(d.trim().to_ascii_lowercase().as_str(), "error" | "off"));
    if filter.contains("rumqttd") || quieter {
        filter.to_owned()
    } else {
        format!("{filter},rumqttd=warn")
    }
}

/// Installs the global subscriber; `RUST_LOG` wins over `default_filter`.
pub fn init(default_filter: &str) -> LogControl {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (
            EnvFilter::try_new(quiet_broker(default_filter))
                .unwrap_or_else(|_| EnvFilter::new(quiet_broker("info"))),
            false,
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let journald = if crate::systemd::stderr_is_journal() {
        // No journald socket (a container without it): the text on stderr still
        // reaches whoever reads it.
        journal::JournalLayer::connect().ok()
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(journald) => registry.with(journald).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
    }
    LogControl {
        handle: Some(handle),
        from_env,
        configured: Mutex::new(default_filter.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::quiet_broker;

    #[test]
    fn the_broker_is_quiet_unless_named_or_everything_is_quieter() {
        assert_eq!(quiet_broker("info"), "info,rumqttd=warn");
        assert_eq!(quiet_broker("debug"), "debug,rumqttd=warn");
        assert_eq!(quiet_broker("info,rumqttd=info"), "info,rumqttd=info");
        assert_eq!(quiet_broker("error"), "error");
    }
}
