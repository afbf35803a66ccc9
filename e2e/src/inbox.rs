//! A member's receiving side in one place: their key pair, the room keys they were
//! given and the replay window, applied in the one safe order (tag, then delivery
//! binding, then replay and epoch checks).

use serde_json::Value;

use crate::envelope::{open_sealed, Jwe};
use crate::room::Reading;
use crate::{KeyPair, Keyring, Kind, OpenError, Opened, ReplayGuard, RoomKey};

/// What arrived.
#[derive(Debug)]
pub enum Received {
    /// A sealed or room message, authenticated and bound to where it arrived.
    Message(Opened),
    /// A room key for this member, now in the keyring.
    RoomKey(Opened, RoomKey),
}

#[derive(Debug)]
pub struct Inbox {
    me: KeyPair,
    pub keys: Keyring,
    replay: ReplayGuard,
}

impl Inbox {
    pub fn new(me: KeyPair) -> Inbox {
        Inbox {
            me,
            keys: Keyring::default(),
            replay: ReplayGuard::default(),
        }
    }

    pub fn me(&self) -> &KeyPair {
        &self.me
    }

    /// Opens the `data` of a message delivered on `topic`, from the sender the gateway
    /// names (`from`, when it names one). Reading history skips the replay window (the
    /// daemon's sequence numbers order history) but keeps every other check.
    pub fn open(
        &mut self,
        topic: &str,
        from: Option<&str>,
        data: &Value,
        reading: Reading,
    ) -> Result<Received, OpenError> {
        let jwe = Jwe::from_value(data)?;
        let opened = if jwe.recipients.is_empty() {
            self.keys.open(&jwe, reading)?
        } else {
            open_sealed(&jwe, &self.me)?
        };
        opened.check_delivery(topic, from)?;
        if reading == Reading::Live {
            self.replay.admit(&opened.binding)?;
        }
        if opened.binding.kind == Kind::RoomKey {
            let key = self.keys.take_share(&opened)?;
            return Ok(Received::RoomKey(opened, key));
        }
        Ok(Received::Message(opened))
    }
}
