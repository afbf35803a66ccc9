//! The recorder against a real store and Hub, without a daemon: what is stored, what
//! the figures say, and eviction under the store's cap.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::*;
use crate::hub::outbox::{QueueLimits, SlowConsumerPolicy};
use crate::hub::HubConfig;
use crate::store::StoreConfig;
use switchboard_core::message::Publish;

fn open(dir: &std::path::Path, max_bytes: u64) -> (Store, Arc<Hub>, Arc<Recorder>) {
    let config = StoreConfig {
        max_bytes,
        ..StoreConfig::default()
    };
    let store = crate::store::open_when_free(dir, &config);
    let hub = test_hub();
    let recorder = Recorder::open(&store, &hub, &RecordingConfig::default()).unwrap();
    (store, hub, recorder)
}

/// A Hub with room to spare and no presence: the recorder taps every message, and
/// no test here has a session that could fill a queue.
fn test_hub() -> Arc<Hub> {
    let queue = QueueLimits {
        max_messages: 1024,
        max_bytes: 1 << 20,
        policy: SlowConsumerPolicy::DropOldest,
    };
    Hub::new(HubConfig {
        queue,
        max_subscriptions: 1000,
        presence: Vec::new(),
        max_info_bytes: 1024,
        encrypted_only: Default::default(),
    })
}

fn publish(hub: &Hub, topic: &str, data: &str) {
    let data = RawValue::from_string(data.to_owned()).unwrap();
    hub.publish(Publish::test(topic, &data)).unwrap();
}

fn start(recorder: &Recorder, topics: &[&str]) -> u64 {
    let request = StartRequest {
        name: "test".into(),
        notes: String::new(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
    };
    recorder
        .start_recording(&Principal::admin(), request)
        .unwrap()
        .id
}

/// What is actually stored for a recording: (messages, bytes).
fn stored(recorder: &Recorder, id: u64) -> (u64, u64) {
    let all = recorder.messages(id, 0, usize::MAX).unwrap();
    let bytes = all
        .iter()
        .map(|(_, m)| layout::record_bytes(m.encode().len()))
        .sum();
    (all.len() as u64, bytes)
}

#[tokio::test]
async fn records_matching_messages_byte_for_byte_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, hub, recorder) = open(dir.path(), 1 << 30);
    recorder.start();
    let id = start(&recorder, &["a/#"]);
    publish(&hub, "a/1", r#"{"ct":"q83v", "iv" : "AAEC"}"#);
    publish(&hub, "b/1", "2");
    publish(&hub, "a/2", "[1, 2.50]");
    let view = recorder
        .stop_recording(&Principal::admin(), id)
        .await
        .unwrap();
    assert_eq!(view.messages, 2);
    assert_eq!(view.by_topic.unwrap().len(), 2);
    let all = recorder.messages(id, 0, 10).unwrap();
    let data: Vec<&str> = all.iter().map(|(_, m)| m.data.as_str()).collect();
    assert_eq!(data, [r#"{"ct":"q83v", "iv" : "AAEC"}"#, "[1, 2.50]"]);
    assert_eq!((view.messages, view.bytes), stored(&recorder, id));
    // Stopped: nothing more is recorded.
    publish(&hub, "a/3", "3");
    recorder.barrier().await;
    assert_eq!(recorder.show(&Principal::admin(), id).unwrap().messages, 2);
}

#[tokio::test]
async fn figures_read_back_after_reopening_equal_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (store, hub, recorder) = open(dir.path(), 1 << 30);
        recorder.start();
        let id = start(&recorder, &["#"]);
        for i in 0..100 {
            publish(&hub, &format!("t/{}", i % 3), &i.to_string());
        }
        recorder.stop().await;
        drop((store, hub, recorder));
        id
    };
    let (_store, _hub, recorder) = open(dir.path(), 1 << 30);
    let view = recorder.show(&Principal::admin(), id).unwrap();
    assert_eq!(
        view.state, "recording",
        "a running recording goes on running"
    );
    assert_eq!((view.messages, view.bytes), (100, stored(&recorder, id).1));
    assert_eq!(recorder.active(), 1);
}

#[tokio::test]
async fn the_cap_evicts_the_oldest_messages_across_recordings_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hub, recorder) = open(dir.path(), 2_000);
    recorder.start();
    let old = start(&recorder, &["old/#"]);
    for i in 0..20 {
        publish(&hub, "old/x", &format!("\"{i:040}\""));
    }
    recorder.barrier().await;
    let new = start(&recorder, &["new/#"]);
    for i in 0..20 {
        publish(&hub, "new/x", &format!("\"{i:040}\""));
    }
    recorder.barrier().await;
    let freed = store.quota().enforce().unwrap();
    assert!(freed.records > 0);
    assert!(store.quota().used() <= 2_000);
    let admin = Principal::admin();
    let (o, n) = (
        recorder.show(&admin, old).unwrap(),
        recorder.show(&admin, new).unwrap(),
    );
    // The older recording gave up its messages first, oldest first.
    assert!(o.evicted > 0, "{o:?}");
    assert_eq!(o.evicted + n.evicted, freed.records);
    assert_eq!(o.messages + o.evicted, 20);
    assert_eq!((o.messages, o.bytes), stored(&recorder, old));
    assert_eq!((n.messages, n.bytes), stored(&recorder, new));
    let first = recorder.messages(old, 0, 1).unwrap();
    if let Some((_, m)) = first.first() {
        assert_eq!(m.data, format!("\"{:040}\"", o.evicted));
        assert_eq!(o.first_ts, Some(m.ts_us));
    }
    assert_eq!(o.by_topic.unwrap().values().sum::<u64>(), o.messages);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    let hub = test_hub();
    let config = RecordingConfig {
        queue: std::num::NonZeroUsize::new(4).unwrap(),
        ..RecordingConfig::default()
    };
    let recorder = Recorder::open(&store, &hub, &config).unwrap();
    let id = start(&recorder, &["#"]);
    // The writer is not started: the queue fills and the rest is dropped, at once.
    for i in 0..10 {
        publish(&hub, "a", &i.to_string());
    }
    let view = recorder.show(&Principal::admin(), id).unwrap();
    assert_eq!(view.dropped, 6);
    assert_eq!(recorder.counters().dropped.load(Ordering::Relaxed), 6);
    recorder.start();
    let view = recorder
        .stop_recording(&Principal::admin(), id)
        .await
        .unwrap();
    assert_eq!((view.messages, view.dropped), (4, 6));
}
