//! A hook's shared secret, read from its file. Kept out of logs and `Debug` output:
//! errors name the file, never what is in it.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::config::Scheme;

/// Standard Webhooks senders hand out secrets as `whsec_<base64 key>`; the key is the
/// decoded bytes, so the prefix is understood rather than used verbatim.
const STANDARD_PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The I/O error is in the message rather than a `source`, so a log line that shows
    /// only this error still says why.
    #[error("cannot read the secret file {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the secret file {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("the secret in {} starts with `{STANDARD_PREFIX}` but the rest is not base64", path.display())]
    NotBase64 { path: PathBuf },
}

/// The HMAC key of a hook.
pub struct Secret(Vec<u8>);

impl Secret {
    /// Reads `path`; surrounding whitespace (a trailing newline) is not part of it.
    pub fn read(path: &Path, scheme: Scheme) -> Result<Secret, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SecretError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::Empty {
                path: path.to_owned(),
            });
        }
        match (scheme, text.strip_prefix(STANDARD_PREFIX)) {
            (Scheme::Standard, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .filter(|key| !key.is_empty())
                .map(Secret)
                .ok_or_else(|| SecretError::NotBase64 {
                    path: path.to_owned(),
                }),
            _ => Ok(Secret(text.as_bytes().to_vec())),
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_secrets_may_carry_the_whsec_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let standard = Secret::read(&path, Scheme::Standard).unwrap();
        assert_eq!(standard.key().len(), 24, "decoded");
        let github = Secret::read(&path, Scheme::Github).unwrap();
        assert_eq!(github.key(), b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");

        std::fs::write(&path, "whsec_!!!").unwrap();
        let err = Secret::read(&path, Scheme::Standard).unwrap_err();
        assert!(!err.to_string().contains("!!!"), "{err}");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            Secret::read(&path, Scheme::Github),
            Err(SecretError::Empty { .. })
        ));
    }
}
