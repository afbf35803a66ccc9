//! The MQTT device password file: one `username:hash` line per device, with salted
//! hashes and never plain-text passwords, in Mosquitto's format so that operators can
//! move an existing `password_file` over unchanged and go on using `mosquitto_passwd`.
//!
//! # Format
//!
//! Checked against Mosquitto 2.0.11 (Debian's `mosquitto_passwd` and broker) and its
//! source (`security_default.c`, `password_mosq.c`):
//!
//! * `$7$<iterations>$<salt>$<hash>`: Mosquitto 2's default. PBKDF2-HMAC-SHA512 over the
//!   password, 64-byte output. This is what [`PasswordFile::set`] writes.
//! * `$6$<salt>$<hash>`: Mosquitto 1.x. One SHA-512 over the password bytes followed by
//!   the salt bytes. Verified but never written: it is far too cheap to brute-force.
//!
//! Salt and hash are standard base64 with padding. Salts are 12 bytes (Mosquitto 2.0
//! writes 12 and its broker accepts nothing else; later versions also write 64, which
//! we accept when reading). Hashes are always 64 bytes. Mosquitto 2.1's `$argon2id$`
//! entries and plain-text passwords are rejected with an explanation.
//!
//! # Comments and blank lines
//!
//! Lines starting with `#` and blank lines are ignored when verifying, like the
//! Mosquitto broker does, and **kept** by [`PasswordFile::save`] where they were, so an
//! operator's notes survive `switchboard passwd`. (Mosquitto 2.0's own `mosquitto_passwd`
//! refuses to edit a file with comments and calls it corrupt; its broker reads it fine.)
//! Users added later are appended at the end; a removed user's line goes away.
//!
//! # Stricter than Mosquitto
//!
//! Mosquitto skips or drops lines it cannot use and starts anyway, which turns a typo
//! into a device that mysteriously cannot connect. We refuse the whole file instead, with
//! the line number: a malformed line, a duplicate user (Mosquitto silently keeps one of
//! them) or a username Mosquitto would read differently from us (leading or trailing
//! blanks, which it trims).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha512};
use subtle::{Choice, ConstantTimeEq};

/// PBKDF2 iterations for the hashes we write.
///
/// Every MQTT CONNECT with a password pays for one hash, so this trades an attacker
/// with a stolen file against a burst of devices reconnecting at once (after a network
/// outage or a daemon restart, the whole fleet comes back within seconds).
///
/// * Mosquitto uses 101: almost free for an attacker guessing offline.
/// * OWASP asks for 210,000 for PBKDF2-HMAC-SHA512, sized for people logging in now
///   and then, not for a fleet reconnecting together: on a small ARM board that is half
///   a second to a second of CPU per connect, so 1,000 devices need 8-17 CPU-minutes.
/// * 10,000 measured 5 ms on an x86 server core (release build); expect 5-10 times that
///   on a Raspberry Pi class board, so 1,000 devices reconnecting cost 25-50 CPU-seconds
///   there, spread over its cores: slow, but the box stays up. It makes every guess
///   100 times dearer than with Mosquitto's files.
///
/// Device passwords should be long random strings, which need no work factor at all;
/// this protects the ones that are not.
pub const DEFAULT_ITERATIONS: u32 = 10_000;

/// Highest iteration count accepted, read or written. Far above any sensible value (a
/// few seconds per connect on a fast core); it exists so that a typo in the file cannot
/// make every connection attempt pin a CPU for minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Longest username accepted, in bytes.
pub const MAX_USERNAME_LEN: usize = 256;

/// Longest password accepted by [`PasswordFile::set`]: the MQTT password field's
/// length prefix is 16 bits, so a longer one could never be sent.
pub const MAX_PASSWORD_LEN: usize = 65_535;

/// Salt length we write: Mosquitto 2.0's broker refuses any other.
const SALT_LEN: usize = 12;
/// Salt lengths we read: 12 (Mosquitto 1.x and 2.0) and 64 (later Mosquitto).
const SALT_LENS: [usize; 2] = [12, 64];
/// SHA-512 output, and the PBKDF2 output length Mosquitto uses.
const HASH_LEN: usize = 64;

/// What went wrong with a password file.
///
/// Messages name the file and line, or the username, and never contain a password or
/// a hash: they end up in logs and terminals. I/O errors carry the OS error in the
/// message itself (not as `source()`), so that printing the error chain does not repeat
/// it.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// Reading, writing or renaming a file failed.
    #[error("cannot {action} {}: {error}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// A line of the file is not a valid entry. `line` is 1-based.
    #[error("{}: {reason}", location(.path.as_deref(), *.line))]
    Parse {
        path: Option<PathBuf>,
        line: usize,
        reason: String,
    },
    /// A username passed to [`PasswordFile::set`] cannot be stored.
    #[error("invalid username {username:?}: {reason}")]
    InvalidUsername {
        username: String,
        reason: &'static str,
    },
    /// A password passed to [`PasswordFile::set`] cannot be stored.
    #[error("invalid password: {reason}")]
    InvalidPassword { reason: &'static str },
    /// An iteration count outside `1..=MAX_ITERATIONS`.
    #[error("invalid iteration count {0}: must be between 1 and {MAX_ITERATIONS}")]
    InvalidIterations(u32),
    /// The operating system could not provide random bytes for a salt.
    #[error("cannot generate a random salt: {0}")]
    Random(rand::Error),
}

impl PasswdError {
    /// True when a file was not there, so callers can suggest creating it.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PasswdError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }

    fn io(action: &'static str, path: &Path, error: io::Error) -> Self {
        PasswdError::Io {
            action,
            path: path.to_owned(),
            error,
        }
    }
}

fn location(path: Option<&Path>, line: usize) -> String {
    match path {
        Some(p) => format!("{}:{line}", p.display()),
        None => format!("line {line}"),
    }
}

/// The users allowed to connect, in file order, with the comments around them.
pub struct PasswordFile {
    lines: Vec<Line>,
    /// Username to index in `lines`.
    index: HashMap<String, usize>,
    /// Hashed in place of an unknown user's entry: see [`PasswordFile::verify`].
    dummy: Hash,
}

enum Line {
    /// A comment or blank line, kept verbatim (without its line ending).
    Other(String),
    User {
        username: String,
        hash: Hash,
    },
}

impl PasswordFile {
    /// An empty file: nobody may connect.
    pub fn new() -> Self {
        PasswordFile {
            lines: Vec::new(),
            index: HashMap::new(),
            dummy: Hash::dummy(Cost::Pbkdf2(DEFAULT_ITERATIONS)),
        }
    }

    /// Reads and parses a file. Errors name the file and, for bad content, the line.
    pub fn load(path: &Path) -> Result<Self, PasswdError> {
        let bytes = fs::read(path).map_err(|e| PasswdError::io("read", path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            PasswdError::Parse {
                path: Some(path.to_owned()),
                line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
                reason: "not valid UTF-8".to_owned(),
            }
        })?;
        Self::parse_inner(&text, Some(path))
    }

    /// Parses the text of a file. Errors say "line N"; [`load`](Self::load) adds the path.
    pub fn parse(text: &str) -> Result<Self, PasswdError> {
        Self::parse_inner(text, None)
    }

    fn parse_inner(text: &str, path: Option<&Path>) -> Result<Self, PasswdError> {
        let mut file = PasswordFile::new();
        for (number, raw) in text.lines().enumerate() {
            let number = number + 1;
            let error = |reason: String| PasswdError::Parse {
                path: path.map(Path::to_owned),
                line: number,
                reason,
            };
            // `lines()` strips LF and CRLF endings; also drop trailing blanks and a stray
            // CR, which are invisible in an editor.
            let line = raw.trim_end_matches([' ', '\t', '\r']);
            if line.trim_start().is_empty() || line.starts_with('#') {
                file.lines.push(Line::Other(line.to_owned()));
                continue;
            }
            // Never echo the line: it may be a password pasted by mistake.
            let Some((username, hash)) = line.split_once(':') else {
                return Err(error(
                    "expected `username:hash` (no `:` on this line)".to_owned(),
                ));
            };
            check_username(username).map_err(|reason| error(format!("bad username: {reason}")))?;
            let hash = Hash::parse(hash).map_err(|reason| {
                error(format!("bad password hash for user {username:?}: {reason}"))
            })?;
            if let Some(&first) = file.index.get(username) {
                // While parsing, `lines` has exactly one element per line of text.
                let first_line = first + 1;
                return Err(error(format!(
                    "user {username:?} is already defined on line {first_line}"
                )));
            }
            file.index.insert(username.to_owned(), file.lines.len());
            file.lines.push(Line::User {
                username: username.to_owned(),
                hash,
            });
        }
        file.update_dummy();
        Ok(file)
    }

    /// Checks a password in constant time. False for an unknown user, a wrong password,
    /// or both, and an observer cannot tell which from the time it takes:
    ///
    /// * the hash comparison is constant-time;
    /// * an unknown user still costs one hash, of the kind and iteration count most
    ///   users in the file have (ties go to the slower), so timing does not reveal which
    ///   usernames exist. Users whose hash differs from the majority (say, entries
    ///   imported from Mosquitto with 101 iterations next to ours with 10,000) do take
    ///   a different time: set their passwords again to bring them in line.
    ///
    /// This is CPU work of a few milliseconds: async callers should run it on a
    /// blocking thread (`tokio::task::spawn_blocking`), not on the reactor.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let (hash, known) = match self.index.get(username).map(|&i| &self.lines[i]) {
            Some(Line::User { hash, .. }) => (hash, Choice::from(1)),
            _ => (&self.dummy, Choice::from(0)),
        };
        bool::from(hash.matches(password.as_bytes()) & known)
    }

    /// Adds `username` or replaces its password, hashed as `$7$` with
    /// [`DEFAULT_ITERATIONS`] and a fresh random salt. Empty passwords, and ones
    /// Mosquitto could not check (longer than [`MAX_PASSWORD_LEN`], or containing NUL,
    /// since it compares C strings), are refused.
    pub fn set(&mut self, username: &str, password: &str) -> Result<(), PasswdError> {
        self.set_with_iterations(username, password, DEFAULT_ITERATIONS)
    }

    /// [`set`](Self::set) with another iteration count, for example to match an
    /// existing fleet's cost so that timing does not tell users apart.
    pub fn set_with_iterations(
        &mut self,
        username: &str,
        password: &str,
        iterations: u32,
    ) -> Result<(), PasswdError> {
        validate_username(username)?;
        check_password(password).map_err(|reason| PasswdError::InvalidPassword { reason })?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(PasswdError::InvalidIterations(iterations));
        }
        let mut salt = vec![0u8; SALT_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut salt)
            .map_err(PasswdError::Random)?;
        let mut hash = Hash {
            cost: Cost::Pbkdf2(iterations),
            salt,
            hash: [0; HASH_LEN],
        };
        hash.hash = hash.derive(password.as_bytes());
        match self.index.get(username) {
            Some(&i) => {
                self.lines[i] = Line::User {
                    username: username.to_owned(),
                    hash,
                }
            }
            None => {
                self.index.insert(username.to_owned(), self.lines.len());
                self.lines.push(Line::User {
                    username: username.to_owned(),
                    hash,
                });
            }
        }
        self.update_dummy();
        Ok(())
    }

    /// Removes a user; false if there was none by that name.
    pub fn remove(&mut self, username: &str) -> bool {
        let Some(i) = self.index.remove(username) else {
            return false;
        };
        self.lines.remove(i);
        for position in self.index.values_mut() {
            if *position > i {
                *position -= 1;
            }
        }
        self.update_dummy();
        true
    }

    /// Whether `username` has the same entry (hash, salt and cost) here as in `other`:
    /// a password that verified against `other` still verifies here.
    pub fn same_entry(&self, other: &PasswordFile, username: &str) -> bool {
        match (self.hash_of(username), other.hash_of(username)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    fn hash_of(&self, username: &str) -> Option<&Hash> {
        match self.lines.get(*self.index.get(username)?)? {
            Line::User { hash, .. } => Some(hash),
            Line::Other(_) => None,
        }
    }

    pub fn contains(&self, username: &str) -> bool {
        self.index.contains_key(username)
    }

    /// Usernames in file order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|line| match line {
            Line::User { username, .. } => Some(username.as_str()),
            Line::Other(_) => None,
        })
    }

    /// Number of users (comments and blank lines do not count).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The file's text, as [`save`](Self::save) writes it: LF line endings, comments
    /// and blank lines where they were.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            match line {
                Line::Other(s) => text.push_str(s),
                Line::User { username, hash } => {
                    text.push_str(username);
                    text.push(':');
                    text.push_str(&hash.encode());
                }
            }
            text.push('\n');
        }
        text
    }

    /// Writes the file atomically, private to its owner (see [`super::private_file`]).
    pub fn save(&self, path: &Path) -> Result<(), PasswdError> {
        super::private_file::replace(path, self.to_text().as_bytes(), false, |_| Ok(true))
            .map(|_| ())
            .map_err(|e| PasswdError::io(e.action, path, e.source))
    }

    /// Sets the hash verified for unknown users to the cost most users have (ties go to
    /// the more expensive one), so that an unknown user takes as long as a typical known
    /// one. Only the cost matters: the dummy never matches (see [`verify`](Self::verify)).
    fn update_dummy(&mut self) {
        let mut counts: HashMap<Cost, usize> = HashMap::new();
        for line in &self.lines {
            if let Line::User { hash, .. } = line {
                *counts.entry(hash.cost).or_default() += 1;
            }
        }
        let cost = counts
            .into_iter()
            .max_by_key(|&(cost, count)| (count, cost.work()))
            .map_or(Cost::Pbkdf2(DEFAULT_ITERATIONS), |(cost, _)| cost);
        self.dummy = Hash::dummy(cost);
    }
}

impl Default for PasswordFile {
    fn default() -> Self {
        Self::new()
    }
}

/// Lists the usernames only: hashes stay out of logs.
impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.usernames().collect::<Vec<_>>())
            .finish()
    }
}

/// Checks that `username` can be stored (1 to 256 bytes; no `:`, control characters
/// or line breaks; no leading `#`, which would make the line a comment; no leading or
/// trailing blanks, which Mosquitto would strip). [`PasswordFile::set`] checks this
/// too; call it first to refuse a bad name before asking for a password.
pub fn validate_username(username: &str) -> Result<(), PasswdError> {
    check_username(username).map_err(|reason| PasswdError::InvalidUsername {
        username: username.to_owned(),
        reason,
    })
}

/// Why a username cannot be stored, if it cannot.
fn check_username(username: &str) -> Result<(), &'static str> {
    if username.is_empty() {
        Err("it is empty")
    } else if username.len() > MAX_USERNAME_LEN {
        Err("it is longer than 256 bytes")
    } else if username.contains(':') {
        Err("it contains `:`, which separates the username from the hash")
    } else if username.chars().any(char::is_control) {
        Err("it contains a control character or line break")
    } else if username.starts_with('#') {
        Err("it starts with `#`, which would make the line a comment")
    } else if username.starts_with(char::is_whitespace) || username.ends_with(char::is_whitespace) {
        Err("it starts or ends with a blank, which Mosquitto would strip")
    } else {
        Ok(())
    }
}

fn check_password(password: &str) -> Result<(), &'static str> {
    if password.is_empty() {
        Err("it is empty")
    } else if password.len() > MAX_PASSWORD_LEN {
        Err("it is longer than 65535 bytes, the most MQTT can carry")
    } else if password.contains('\0') {
        Err("it contains a NUL character, which Mosquitto cannot compare")
    } else {
        Ok(())
    }
}

/// The hashing scheme and its work factor: what an entry costs to verify.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Cost {
    /// `$6$`: one SHA-512.
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512 with this many iterations.
    Pbkdf2(u32),
}

impl Cost {
    /// Relative verification time, in SHA-512 compressions, roughly.
    fn work(self) -> u64 {
        match self {
            Cost::Sha512 => 1,
            Cost::Pbkdf2(iterations) => 2 * u64::from(iterations),
        }
    }
}

/// One entry's stored hash.
#[derive(Clone, PartialEq, Eq)]
struct Hash {
    cost: Cost,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

/// Mosquitto writes padded base64; accept it unpadded as well, as hand-edited files may be.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl Hash {
    /// Parses the part after `username:`. Errors never quote the input.
    fn parse(s: &str) -> Result<Self, String> {
        let (cost, rest) = if let Some(rest) = s.strip_prefix("$7$") {
            let Some((iterations, rest)) = rest.split_once('$') else {
                return Err("expected `$7$iterations$salt$hash`".to_owned());
            };
            let iterations = parse_iterations(iterations)?;
            (Cost::Pbkdf2(iterations), rest)
        } else if let Some(rest) = s.strip_prefix("$6$") {
            (Cost::Sha512, rest)
        } else if s.starts_with("$argon2") {
            return Err("argon2 hashes (Mosquitto 2.1) are not supported; \
                        set this user's password again with `switchboard passwd`"
                .to_owned());
        } else if s.starts_with('$') {
            return Err("unknown hash type (expected `$7$` or `$6$`)".to_owned());
        } else {
            return Err(
                "the password is not hashed (plain-text password files are not \
                        supported; set it with `switchboard passwd`)"
                    .to_owned(),
            );
        };
        let format = match cost {
            Cost::Sha512 => "`$6$salt$hash`",
            Cost::Pbkdf2(_) => "`$7$iterations$salt$hash`",
        };
        let mut parts = rest.split('$');
        let (Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("expected {format}"));
        };
        let salt = BASE64
            .decode(salt)
            .map_err(|_| "the salt is not valid base64".to_owned())?;
        if !SALT_LENS.contains(&salt.len()) {
            return Err(format!(
                "the salt is {} bytes long, expected 12 or 64",
                salt.len()
            ));
        }
        let hash = BASE64
            .decode(hash)
            .map_err(|_| "the hash is not valid base64".to_owned())?;
        let hash: [u8; HASH_LEN] = hash
            .as_slice()
            .try_into()
            .map_err(|_| format!("the hash is {} bytes long, expected 64", hash.len()))?;
        Ok(Hash { cost, salt, hash })
    }

    /// A hash of the given cost that no password matches in practice (its stored hash is
    /// zeros); [`PasswordFile::verify`] discards its result anyway.
    fn dummy(cost: Cost) -> Self {
        Hash {
            cost,
            salt: vec![0; SALT_LEN],
            hash: [0; HASH_LEN],
        }
    }

    fn encode(&self) -> String {
        let salt = BASE64.encode(&self.salt);
        let hash = BASE64.encode(self.hash);
        match self.cost {
            Cost::Sha512 => format!("$6${salt}${hash}"),
            Cost::Pbkdf2(iterations) => format!("$7${iterations}${salt}${hash}"),
        }
    }

    /// Hashes `password` with this entry's scheme, cost and salt.
    fn derive(&self, password: &[u8]) -> [u8; HASH_LEN] {
        match self.cost {
            Cost::Sha512 => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(&self.salt);
                digest.finalize().into()
            }
            Cost::Pbkdf2(iterations) => {
                let mut out = [0u8; HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, &self.salt, iterations, &mut out);
                out
            }
        }
    }

    fn matches(&self, password: &[u8]) -> Choice {
        self.derive(password)[..].ct_eq(&self.hash[..])
    }
}

fn parse_iterations(s: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the iteration count is not a number".to_owned());
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=MAX_ITERATIONS).contains(&n) => Ok(n),
        _ => Err(format!(
            "the iteration count must be between 1 and {MAX_ITERATIONS}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with Debian bookworm's Mosquitto 2.0.11:
    /// `mosquitto_passwd -c -b file alice secret` (default: `$7$`, 101 iterations).
    const MOSQUITTO_7_DEFAULT: &str = "alice:$7$101$7ifM+jSN024HiR95$aiLERdOE0BVo9ImbZt+4rvQBokkbmyuibzW8TXBJRVN4Z1hRg7HuLfVBIbqqsVc0zFOtLVWEDPuF+XexovCHYA==";
    /// `mosquitto_passwd -b file bob 'p@ss:w0rd'` (a `:` in the password is fine).
    const MOSQUITTO_7_COLON: &str = "bob:$7$101$8+aZQzXVe8dJcMxa$Z1SH0OOwo7ci02FUTxs5fAtzfrQ+yx2UHHMCikmHZ+0o+j+LMWySEWNq3apPlPAAxyHpjCysnKXGyMxBctO9xw==";
    /// `mosquitto_passwd -c -I 1000 -b file carol hunter2` (`-I` is undocumented in 2.0.11).
    const MOSQUITTO_7_1000: &str = "carol:$7$1000$mQrEAnapUvHE9Fbr$Ke3xi0Fi98A5iS7aYA2nJXtrv5zPXKyBjkVLGk8ka01oyXAXesNZzzoYsq1eCMAnEOuNVF2e0V4ctXJ8WnS3RQ==";
    /// `mosquitto_passwd -c -H sha512 -b file dave s3cret` (the Mosquitto 1.x format).
    const MOSQUITTO_6: &str = "dave:$6$UOOErBNXW9JaTwJ9$Op0+GtdgXaJTwWiXxooy8U6qbmSXCPwHxMxjO6WXmXXyozgDMllOeVTZWISzfhUGqyEPLGkUl5nHT+8aEWvNQw==";

    /// Unit tests run unoptimised, where PBKDF2 is ~50 times slower: keep it cheap.
    const FAST: u32 = 50;

    fn parse_err(text: &str) -> String {
        match PasswordFile::parse(text) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn set_then_verify_round_trips() {
        let mut file = PasswordFile::new();
        file.set_with_iterations("alice", "correct horse", FAST)
            .unwrap();
        file.set_with_iterations("bob", "battery staple", FAST)
            .unwrap();
        assert!(file.verify("alice", "correct horse"));
        assert!(file.verify("bob", "battery staple"));

        let reparsed = PasswordFile::parse(&file.to_text()).unwrap();
        assert_eq!(reparsed.len(), 2);
        assert!(reparsed.verify("alice", "correct horse"));
        assert!(reparsed.verify("bob", "battery staple"));
        assert_eq!(reparsed.to_text(), file.to_text());
    }

    #[test]
    fn set_writes_mosquitto_2_format_with_default_iterations() {
        let mut file = PasswordFile::new();
        file.set("alice", "pw").unwrap();
        let text = file.to_text();
        let hash = text
            .strip_prefix("alice:$7$10000$")
            .and_then(|s| s.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("unexpected line {text:?}"));
        let (salt, hash) = hash.split_once('$').unwrap();
        // Padded standard base64 of 12 and 64 bytes, as mosquitto_passwd writes.
        assert_eq!(salt.len(), 16);
        assert_eq!(hash.len(), 88);
        assert!(hash.ends_with("=="));
        assert!(file.verify("alice", "pw"));
    }

    #[test]
    fn update_replaces_the_password_and_uses_a_fresh_salt() {
        let mut file = PasswordFile::new();
        file.set_with_iterations("alice", "one", FAST).unwrap();
        let before = file.to_text();
        file.set_with_iterations("alice", "one", FAST).unwrap();
        assert_ne!(before, file.to_text(), "same password, new salt");
        file.set_with_iterations("alice", "two", FAST).unwrap();
        assert_eq!(file.len(), 1);
        assert!(!file.verify("alice", "one"));
        assert!(file.verify("alice", "two"));
    }

    #[test]
    fn wrong_password_is_rejected() {
        let mut file = PasswordFile::new();
        file.set_with_iterations("alice", "secret", FAST).unwrap();
        assert!(!file.verify("alice", "Secret"));
        assert!(!file.verify("alice", "secret "));
        assert!(!file.verify("alice", ""));
    }

    #[test]
    fn unknown_user_is_rejected() {
        let mut file = PasswordFile::new();
        assert!(!file.verify("alice", "secret"));
        file.set_with_iterations("alice", "secret", FAST).unwrap();
        assert!(!file.verify("bob", "secret"));
        assert!(!file.verify("Alice", "secret"));
        assert!(!file.verify("", ""));
    }

    #[test]
    fn unknown_users_cost_what_most_users_cost() {
        let mut file = PasswordFile::new();
        assert!(matches!(file.dummy.cost, Cost::Pbkdf2(DEFAULT_ITERATIONS)));
        file = PasswordFile::parse(&format!(
            "{MOSQUITTO_7_DEFAULT}\n{MOSQUITTO_7_COLON}\n{MOSQUITTO_7_1000}\n"
        ))
        .unwrap();
        assert!(matches!(file.dummy.cost, Cost::Pbkdf2(101)));
        file.remove("alice");
        // A tie between 101 and 1,000 goes to the slower one.
        assert!(matches!(file.dummy.cost, Cost::Pbkdf2(1000)));
        let file = PasswordFile::parse(MOSQUITTO_6).unwrap();
        assert!(matches!(file.dummy.cost, Cost::Sha512));
    }

    #[test]
    fn verifies_mosquitto_2_pbkdf2_lines() {
        let file = PasswordFile::parse(&format!(
            "{MOSQUITTO_7_DEFAULT}\n{MOSQUITTO_7_COLON}\n{MOSQUITTO_7_1000}\n"
        ))
        .unwrap();
        assert!(file.verify("alice", "secret"));
        assert!(file.verify("bob", "p@ss:w0rd"));
        assert!(file.verify("carol", "hunter2"));
        assert!(!file.verify("alice", "hunter2"));
        assert!(!file.verify("carol", "secret"));
    }

    #[test]
    fn verifies_mosquitto_1_sha512_line() {
        let file = PasswordFile::parse(MOSQUITTO_6).unwrap();
        assert!(file.verify("dave", "s3cret"));
        assert!(!file.verify("dave", "s3cret!"));
        // Read-only support: entries we did not touch are written back unchanged.
        assert_eq!(file.to_text(), format!("{MOSQUITTO_6}\n"));
    }

    #[test]
    fn accepts_64_byte_salts_and_unpadded_base64() {
        let salt = BASE64.encode([7u8; 64]);
        let mut entry = Hash {
            cost: Cost::Pbkdf2(3),
            salt: vec![7u8; 64],
            hash: [0; HASH_LEN],
        };
        entry.hash = entry.derive(b"pw");
        let hash = BASE64.encode(entry.hash);
        let line = format!("eve:$7$3${}${}", salt, hash.trim_end_matches('='));
        let file = PasswordFile::parse(&line).unwrap();
        assert!(file.verify("eve", "pw"));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let good = MOSQUITTO_7_DEFAULT;
        let salt = "7ifM+jSN024HiR95";
        let hash = "aiLERdOE0BVo9ImbZt+4rvQBokkbmyuibzW8TXBJRVN4Z1hRg7HuLfVBIbqqsVc0zFOtLVWEDPuF+XexovCHYA==";
        let cases: Vec<(String, &str)> = vec![
            ("hunter2".into(), "no `:`"),
            (
                format!(":$7$101${salt}${hash}"),
                "bad username: it is empty",
            ),
            (
                format!(" bob:$7$101${salt}${hash}"),
                "starts or ends with a blank",
            ),
            (
                format!("{}:$7$101${salt}${hash}", "x".repeat(257)),
                "longer than 256",
            ),
            (
                format!("bo\u{7}b:$7$101${salt}${hash}"),
                "control character",
            ),
            ("bob:".into(), "not hashed"),
            ("bob:hunter2".into(), "not hashed"),
            ("bob:$5$abc$def".into(), "unknown hash type"),
            (
                "bob:$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaA".into(),
                "argon2",
            ),
            ("bob:$7$".into(), "expected `$7$iterations$salt$hash`"),
            (format!("bob:$7$abc${salt}${hash}"), "not a number"),
            (format!("bob:$7$-5${salt}${hash}"), "not a number"),
            (format!("bob:$7$0${salt}${hash}"), "between 1 and"),
            (format!("bob:$7$99999999999${salt}${hash}"), "between 1 and"),
            (
                format!("bob:$7$101${salt}"),
                "expected `$7$iterations$salt$hash`",
            ),
            (format!("bob:$7$101${salt}${hash}$extra"), "expected `$7$"),
            (
                format!("bob:$7$101$!!!!${hash}"),
                "salt is not valid base64",
            ),
            (
                format!("bob:$7$101$c2FsdA==${hash}"),
                "salt is 4 bytes long",
            ),
            (
                format!("bob:$7$101${salt}$c2FsdA=="),
                "hash is 4 bytes long",
            ),
            (format!("bob:$7$101${salt}$***"), "hash is not valid base64"),
            (format!("bob:$6${salt}"), "expected `$6$salt$hash`"),
            (format!("bob:$6${salt}${hash}$x"), "expected `$6$salt$hash`"),
        ];
        for (bad, expected) in cases {
            // The bad line is line 3, after a comment and a good entry.
            let message = parse_err(&format!("# devices\n{good}\n{bad}\n"));
            assert!(message.starts_with("line 3: "), "{bad:?} gave {message:?}");
            assert!(message.contains(expected), "{bad:?} gave {message:?}");
            assert!(!message.contains(hash), "{message:?} leaks the hash");
            assert!(!message.contains("hunter2"), "{message:?} leaks the line");
        }
    }

    #[test]
    fn duplicate_users_are_rejected_with_both_lines() {
        let message = parse_err(&format!(
            "{MOSQUITTO_7_DEFAULT}\n\n{MOSQUITTO_6}\n{MOSQUITTO_7_DEFAULT}\n"
        ));
        assert_eq!(
            message,
            "line 4: user \"alice\" is already defined on line 1"
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, format!("{MOSQUITTO_6}\nbroken\n")).unwrap();
        let message = PasswordFile::load(&path).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "{}:2: expected `username:hash` (no `:` on this line)",
                path.display()
            )
        );

        fs::write(&path, b"# ok\n\xff:$6$\n").unwrap();
        let message = PasswordFile::load(&path).unwrap_err().to_string();
        assert_eq!(message, format!("{}:2: not valid UTF-8", path.display()));

        let missing = PasswordFile::load(&dir.path().join("nope")).unwrap_err();
        assert!(missing.is_not_found());
        assert!(missing.to_string().starts_with("cannot read "), "{missing}");
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let text = format!("# site A\r\n\r\n{MOSQUITTO_6}\r\n  \r\n# end\r\n");
        let mut file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.verify("dave", "s3cret"));
        file.set_with_iterations("erin", "pw", FAST).unwrap();
        assert!(file.remove("dave"));
        let saved = file.to_text();
        let lines: Vec<&str> = saved.lines().collect();
        assert_eq!(lines[..4], ["# site A", "", "", "# end"]);
        assert!(lines[4].starts_with("erin:$7$50$"));
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn bad_usernames_and_passwords_are_refused_by_set() {
        let mut file = PasswordFile::new();
        for name in [
            "",
            "a:b",
            "a\nb",
            "a\tb",
            "#x",
            " x",
            "x ",
            &"é".repeat(129),
        ] {
            let e = file.set_with_iterations(name, "pw", FAST).unwrap_err();
            assert!(
                matches!(e, PasswdError::InvalidUsername { .. }),
                "{name:?}: {e}"
            );
        }
        file.set_with_iterations(&"x".repeat(256), "pw", FAST)
            .unwrap();
        file.set_with_iterations("sensor 7/é", "pw", FAST).unwrap();
        for password in ["", "a\0b"] {
            let e = file.set_with_iterations("bob", password, FAST).unwrap_err();
            assert!(matches!(e, PasswdError::InvalidPassword { .. }), "{e}");
        }
        let e = file.set_with_iterations("bob", "pw", 0).unwrap_err();
        assert!(matches!(e, PasswdError::InvalidIterations(0)));
        assert!(!file.contains("bob"));
        assert_eq!(file.len(), 2);
    }

    #[test]
    fn remove_and_contains() {
        let mut file = PasswordFile::parse(&format!(
            "{MOSQUITTO_7_DEFAULT}\n{MOSQUITTO_7_COLON}\n{MOSQUITTO_6}\n"
        ))
        .unwrap();
        assert!(file.contains("bob"));
        assert!(file.remove("bob"));
        assert!(!file.remove("bob"));
        assert!(!file.contains("bob"));
        // Indices after the removed line still point at the right users.
        assert!(file.verify("dave", "s3cret"));
        assert!(file.verify("alice", "secret"));
        assert_eq!(file.usernames().collect::<Vec<_>>(), ["alice", "dave"]);
        assert!(file.remove("alice") && file.remove("dave"));
        assert!(file.is_empty());
    }

    #[test]
    fn debug_output_has_no_hashes() {
        let file = PasswordFile::parse(MOSQUITTO_6).unwrap();
        assert_eq!(format!("{file:?}"), r#"PasswordFile { users: ["dave"] }"#);
    }

    #[test]
    fn save_is_atomic_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, "old contents\n").unwrap();
        let mut file = PasswordFile::parse(&format!("# note\n{MOSQUITTO_6}\n")).unwrap();
        file.set_with_iterations("erin", "pw", FAST).unwrap();
        file.save(&path).unwrap();

        let loaded = PasswordFile::load(&path).unwrap();
        assert!(loaded.verify("dave", "s3cret"));
        assert!(loaded.verify("erin", "pw"));
        assert_eq!(fs::read_to_string(&path).unwrap(), file.to_text());
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["passwd"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The file it replaced was 0644: its group may still read, others not.
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
    }

    #[cfg(unix)]
    #[test]
    fn save_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let link = dir.path().join("link");
        fs::write(&real, "").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        PasswordFile::parse(MOSQUITTO_6)
            .unwrap()
            .save(&link)
            .unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(&real).unwrap(),
            format!("{MOSQUITTO_6}\n")
        );
    }

    #[test]
    fn save_into_a_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("passwd");
        let e = PasswordFile::new().save(&path).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
