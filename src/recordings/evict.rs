//! The recorder as an owner of stored bytes under `[store] max_bytes`: it gives up its
//! oldest messages first. Each recording's messages are stored oldest first, so the
//! oldest message overall is the first message of the recording whose first message
//! is oldest. An eviction removes messages and rewrites that recording's figures
//! (count, bytes, per-topic counts, first `ts`, `evicted`) in one batch, holding the
//! recorder's `writing` lock (as every writer of the tree does) and not the lock on
//! the recordings the API reads.

use crate::store::message::run;
use crate::store::run_files::Change;
use crate::store::{Evictable, Evicted, StoreError, StoredMessage};

use super::{json, layout, lock, Recorder};

impl Evictable for Recorder {
    fn stored_bytes(&self) -> u64 {
        lock(&self.recordings)
            .values()
            .map(|e| e.figures.bytes)
            .fold(0, u64::saturating_add)
    }

    fn oldest_us(&self) -> Option<u64> {
        lock(&self.recordings)
            .values()
            .filter(|e| e.figures.messages > 0)
            .filter_map(|e| e.figures.first_us)
            .min()
    }

    /// Reads and removes with the recordings' lock released (only the tree's writers
    /// wait), so the API's readers never wait for the disk.
    fn evict_oldest(&self, at_least: u64) -> Result<Evicted, StoreError> {
        let _writing = lock(&self.writing);
        let oldest = lock(&self.recordings)
            .iter()
            .filter(|(_, e)| e.figures.messages > 0)
            .min_by_key(|(_, e)| e.figures.first_us)
            .map(|(&id, e)| (id, e.figures.clone()));
        let Some((id, mut figures)) = oldest else {
            return Ok(Evicted::default());
        };
        let mut freed = Evicted::default();
        let mut removed = Vec::new();
        figures.first_us = None;
        // Whole runs, oldest first.
        for item in self
            .runs
            .current()?
            .scan_prefix(layout::messages_prefix(id))
        {
            let (key, value) = item.map_err(|e| self.store.io(e))?;
            // A run that does not read back goes as a run of nothing.
            let value = self.runs.resolve(&key, value).unwrap_or_default();
            if freed.bytes >= at_least.max(1) {
                // The first message kept: the recording now starts here.
                figures.first_us = run::records(&value)
                    .next()
                    .and_then(|r| StoredMessage::peek_ts_us(r.ok()?));
                break;
            }
            for record in run::records(&value) {
                let Ok(record) = record else {
                    break;
                };
                if let Ok(m) = StoredMessage::decode(record) {
                    if let Some(n) = figures.topics.get_mut(&m.topic) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            figures.topics.remove(&m.topic);
                        }
                    }
                }
                freed.records += 1;
                freed.bytes += layout::record_bytes(record.len());
            }
            removed.push(key.to_vec());
        }
        figures.messages = figures.messages.saturating_sub(freed.records);
        figures.bytes = figures.bytes.saturating_sub(freed.bytes);
        figures.evicted += freed.records;
        if figures.messages == 0 {
            figures.first_us = None;
            figures.last_us = None;
            figures.bytes = 0;
        }
        self.runs.apply(Change {
            removed,
            inline: vec![(layout::figures_key(id).to_vec(), json(&figures))],
            ..Change::default()
        })?;
        if let Some(entry) = lock(&self.recordings).get_mut(&id) {
            entry.figures = figures;
        }
        Ok(freed)
    }
}
