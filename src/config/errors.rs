//! Errors in a configuration, rendered as `file:line:column: message` with a hint for
//! the common mistakes, and environment variables named by the variable.

use std::path::PathBuf;

pub(super) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_parse(.origin, *.line, *.column, .message, .hint.as_deref()))]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
        hint: Option<String>,
    },
    #[error("environment variable {var}: {message}{}", .hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    Env {
        var: String,
        message: String,
        hint: Option<String>,
    },
}

fn render_parse(
    origin: &str,
    line: usize,
    column: usize,
    message: &str,
    hint: Option<&str>,
) -> String {
    let mut s = format!("{origin}:{line}:{column}: {message}");
    if let Some(h) = hint {
        s.push_str("\n  hint: ");
        s.push_str(h);
    }
    s
}

impl ConfigError {
    pub(super) fn parse(origin: &str, text: &str, e: &toml::de::Error) -> Self {
        let (line, column) = e
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((1, 1));
        let message = e.message().trim().to_owned();
        ConfigError::Parse {
            origin: origin.to_owned(),
            line,
            column,
            hint: Some(hint_for(&message)),
            message,
        }
    }

    /// Line and column (1-based) for file errors.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Parse { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// A hint for the common mistakes: a misspelt key, a duration without a unit.
fn hint_for(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        if let Some(best) = closest(field, expected.iter().copied()) {
            return format!("did you mean `{best}`?");
        }
        return "remove it; `switchboard default-config` lists every key".into();
    }
    if message.contains("duration") || message.contains("time unit") {
        return "durations are strings with a unit, such as \"25s\", \"500ms\" or \"2m\"".into();
    }
    if message.contains("nonzero") {
        return "this setting must be at least 1".into();
    }
    "`switchboard default-config` prints every key with its default and meaning".into()
}
