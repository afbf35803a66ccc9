//! Retained values a bus shared by several boxes keeps (`crate::cluster`, `[cluster]`).
//!
//! Owns `TopicState::retained_at`. With a bus, a topic's retained value reaches a box
//! two ways: live from the bus (`apply`), and loaded from Redis's copy when the box
//! starts or missed part of the bus ([`Hub::restore_retained`]). The two may cross (a
//! copy loaded just after the bus brought a newer value), so each keeps the value only
//! if it is newer, by the topic's `(epoch, seq)`: a retained value never goes back.
//! Without a bus nothing here runs. Locking: the topic's lock, as `apply` holds it.

use std::borrow::Cow;

use super::outbox::Shared;
use super::routing::ForDevices;
use super::session::lock;
use super::topics::{Retained, TopicState};
use super::{FromBus, Hub};
use switchboard_core::protocol::ServerFrame;

impl Hub {
    /// Takes a retained value loaded from the bus's store unless this box already has a
    /// newer one of the topic (or the bus moved the topic to another epoch); true when
    /// kept. Not delivered to anyone: subscribers get it when they subscribe.
    pub fn restore_retained(&self, m: FromBus, ts_ms: u64) -> bool {
        let FromBus {
            mut message,
            data,
            epoch,
            seq,
            ..
        } = m;
        if !message.retain || data.get() == "\"\"" {
            return false;
        }
        let state = self.topic_state(&message.topic);
        let mut state = lock(&state);
        let newer = match &state.retained_at {
            Some((e, s)) if **e == *epoch => *s < seq,
            _ => state.epoch.as_deref().is_none_or(|live| live == epoch),
        };
        if !newer {
            return false;
        }
        let as_sent = message.as_sent.take();
        let p = message.publish(&data);
        let mut for_devices = ForDevices::new(&p, seq, as_sent);
        self.keep_retained(&mut state, p.topic, p.data, || Retained {
            frame: Shared::new(
                ServerFrame::Msg {
                    topic: Cow::Borrowed(p.topic),
                    event: p.event.map(Cow::Borrowed),
                    data: p.data,
                    ts: ts_ms,
                    seq,
                    from: Cow::Borrowed(p.from),
                    retained: true,
                    history: false,
                }
                .to_frame(),
            ),
            message: for_devices.message().clone(),
        });
        state.retained_at = Some((epoch.into(), seq));
        true
    }

    /// A retained value forgotten here (an old offline notice) is dropped from the
    /// bus's store too, unless a newer one replaced it there meanwhile, so Redis stays
    /// within the bound its maker keeps.
    pub(super) fn forget_on_bus(&self, topic: &str, state: &TopicState) {
        if let (Some(bus), Some((epoch, seq))) = (self.bus.get(), &state.retained_at) {
            bus.forget_retained(topic, epoch, *seq);
        }
    }

    /// For a retained message read from the bus (`numbered`): whether it is newer than
    /// the topic's retained value, recorded when it is. Off the bus, always.
    pub(super) fn retained_in_order(state: &mut TopicState, numbered: Option<(&str, u64)>) -> bool {
        let Some((epoch, seq)) = numbered else {
            return true;
        };
        if let Some((e, s)) = &state.retained_at {
            if **e == *epoch && *s >= seq {
                return false;
            }
        }
        state.retained_at = Some((epoch.into(), seq));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{anyone, frames, hub};
    use super::*;
    use crate::hub::BusMessage;
    use serde_json::value::RawValue;
    use switchboard_core::message::Origin;

    fn from_bus(data: &str, seq: u64) -> FromBus {
        FromBus {
            message: BusMessage {
                topic: "r".into(),
                event: None,
                data: data.into(),
                from: "t".into(),
                origin: Origin::Ws,
                retain: true,
                as_sent: None,
                acked: false,
            },
            data: RawValue::from_string(data.into()).expect("json"),
            epoch: "e1".into(),
            seq,
        }
    }

    async fn retained(hub: &Hub) -> Vec<serde_json::Value> {
        let c = hub.connect(anyone());
        hub.subscribe(&c, "r").expect("subscribes");
        frames(&c)
            .await
            .into_iter()
            .map(|f| f["data"].clone())
            .collect()
    }

    #[tokio::test]
    async fn a_retained_value_never_goes_back() {
        let hub = hub();
        hub.deliver_from_bus(from_bus("5", 5));
        assert!(
            !hub.restore_retained(from_bus("3", 3), 0),
            "older than the bus's"
        );
        assert_eq!(retained(&hub).await, [5]);
        assert!(
            hub.restore_retained(from_bus("7", 7), 0),
            "newer than the bus's"
        );
        // The bus brings an older value after the newer copy was loaded.
        hub.deliver_from_bus(from_bus("6", 6));
        assert_eq!(retained(&hub).await, [7]);
        hub.deliver_from_bus(from_bus("\"\"", 8));
        assert!(!hub.restore_retained(from_bus("7", 7), 0), "cleared since");
        assert_eq!(hub.stats().retained, 0, "cleared");
        let mut other = from_bus("9", 9);
        other.epoch = "e0".into();
        assert!(
            !hub.restore_retained(other, 0),
            "a copy from another epoch than the bus's"
        );
    }
}
