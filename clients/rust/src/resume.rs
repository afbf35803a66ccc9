//! Resuming after a reconnect: the position of every subscribed topic that keeps a
//! history (docs/history.md), so the driver can ask for what it missed and drop what
//! it already has.
//!
//! A `sub` to a topic with a history is answered with the stream's epoch and newest
//! sequence number; every message then advances the position. After a reconnect the
//! driver re-subscribes with `since` and `epoch`; the server queues the missed messages
//! ahead of live ones and says whether that was all of them. A duplicate (a number at
//! or below the position, in the same epoch) is dropped here; an incomplete recovery
//! becomes an [`Event::Gap`](super::Event::Gap) so the application never misses data
//! silently.

use std::collections::HashMap;

use super::Message;
use switchboard_core::protocol::{Incoming, Since};
use switchboard_core::topic;

/// Where the client stands in one topic's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    epoch: String,
    /// The newest number delivered; None right after the stream changed epochs, when
    /// every number is new.
    seq: Option<u64>,
}

/// Positions by topic (only filters without wildcards have one).
#[derive(Debug, Default)]
pub(super) struct Positions(HashMap<String, Position>);

/// What a `sub` reply means for the application.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resumed {
    /// Nothing to report.
    Fine,
    /// Some missed messages could not be delivered.
    Gap,
}

impl Positions {
    /// The recovery to ask for when re-subscribing `filter`.
    pub fn since(&self, filter: &str) -> Option<Since> {
        self.0.get(filter).and_then(|p| {
            p.seq.map(|seq| Since::After {
                seq,
                epoch: Some(p.epoch.clone()),
            })
        })
    }

    /// Takes the position from a `sub` reply. `asked` is the recovery the `sub` carried.
    pub fn on_subscribed(
        &mut self,
        filter: &str,
        reply: &Incoming,
        asked: Option<&Since>,
    ) -> Resumed {
        let Some(epoch) = reply.epoch.clone() else {
            return Resumed::Fine;
        };
        let recovered = reply.recovered.unwrap_or(true);
        match (self.0.get_mut(filter), asked) {
            // A resume: the recovered messages follow the reply and advance the position.
            (Some(p), Some(_)) => {
                if p.epoch != epoch {
                    *p = Position { epoch, seq: None };
                }
            }
            // A first subscription (or a `last`/`since` the caller asked for): messages
            // after the reply's number are live; recovered ones come first.
            (_, asked) => {
                let seq = match asked {
                    Some(_) => None,
                    None => reply.seq,
                };
                self.0.insert(filter.to_owned(), Position { epoch, seq });
            }
        }
        if recovered {
            Resumed::Fine
        } else {
            Resumed::Gap
        }
    }

    /// False for a message already delivered (so it is dropped); advances otherwise.
    pub fn admit(&mut self, message: &Message) -> bool {
        if message.retained || topic::is_wildcard(&message.topic) {
            return true;
        }
        let Some(p) = self.0.get_mut(&message.topic) else {
            return true;
        };
        match p.seq {
            Some(seen) if message.seq <= seen => false,
            _ => {
                p.seq = Some(message.seq);
                true
            }
        }
    }

    /// The filter is no longer subscribed.
    pub fn forget(&mut self, filter: &str) {
        self.0.remove(filter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Incoming {
        serde_json::from_str(text).unwrap()
    }

    fn msg(topic: &str, seq: u64) -> Message {
        Message {
            topic: topic.into(),
            event: None,
            data: switchboard_core::protocol::null().to_owned(),
            ts: 0,
            seq,
            from: "x".into(),
            retained: false,
            history: false,
        }
    }

    #[test]
    fn tracks_positions_and_drops_duplicates() {
        let mut p = Positions::default();
        let r = reply(r#"{"op":"ok","id":1,"epoch":"e1","seq":10}"#);
        assert_eq!(p.on_subscribed("a", &r, None), Resumed::Fine);
        assert!(!p.admit(&msg("a", 10)), "at the position: already had it");
        assert!(p.admit(&msg("a", 11)));
        assert_eq!(
            p.since("a"),
            Some(Since::After {
                seq: 11,
                epoch: Some("e1".into())
            })
        );
        // A resume in the same epoch keeps the position; replays of 11 are dropped.
        let asked = p.since("a");
        let r = reply(r#"{"op":"ok","id":2,"epoch":"e1","seq":14,"recovered":true,"history":3}"#);
        assert_eq!(p.on_subscribed("a", &r, asked.as_ref()), Resumed::Fine);
        assert!(!p.admit(&msg("a", 11)));
        assert!(p.admit(&msg("a", 12)));
        // Topics without a history, and retained values, are never held back.
        assert!(p.admit(&msg("b", 1)));
        let mut retained = msg("a", 1);
        retained.retained = true;
        assert!(p.admit(&retained));
        p.forget("a");
        assert_eq!(p.since("a"), None);
    }

    #[test]
    fn a_new_epoch_accepts_every_number_and_reports_the_gap() {
        let mut p = Positions::default();
        p.on_subscribed("a", &reply(r#"{"op":"ok","epoch":"e1","seq":50}"#), None);
        let asked = p.since("a");
        let r = reply(r#"{"op":"ok","epoch":"e2","seq":3,"recovered":false,"history":3}"#);
        assert_eq!(p.on_subscribed("a", &r, asked.as_ref()), Resumed::Gap);
        assert!(p.admit(&msg("a", 1)), "numbers start again in a new epoch");
        assert!(p.admit(&msg("a", 2)));
        assert!(!p.admit(&msg("a", 2)));
    }
}
