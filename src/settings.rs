//! Value types and parsers the configuration sections share: positive durations, listen
//! addresses that may be off, non-zero counts.
//!
//! A leaf: it imports nothing of the crate, so every module that owns a section (and
//! the module that composes them) can use it without depending on another
//! section. Each parser fails inside deserialisation, so the error keeps the line and
//! column of the value it rejects.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};

use serde::{Deserialize, Deserializer, Serialize};

/// A listen address, or empty for "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl Serialize for Listen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(addr) => s.collect_str(&addr),
            None => s.serialize_str(""),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(Listen(None));
        }
        s.trim().parse().map(|a| Listen(Some(a))).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{s}` is not an address such as 127.0.0.1:1883 or [::]:1883 (empty turns the listener off)"
            ))
        })
    }
}

/// A default count, written as a plain number; zero (a typo in a default) becomes 1
/// rather than a panic.
pub fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// [`nz`] for `u32` counts.
pub fn nz32(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Durations as humantime strings ("25s"), never zero.
pub mod positive_duration {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value: Duration = humantime_serde::deserialize(d)?;
        if value.is_zero() {
            return Err(serde::de::Error::custom(
                "duration must be greater than zero",
            ));
        }
        Ok(value)
    }
}
