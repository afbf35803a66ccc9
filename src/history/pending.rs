//! A stream's messages that are not stored yet, laid out as the writer stores them.
//!
//! An append encodes its message straight into a *chunk* of framed records
//! ([`run::push_with`]): a chunk holds consecutive numbers and at most one run's bytes
//! ([`run::FILE_MAX_BYTES`]). The writer copies each chunk's new part into its burst
//! with one copy per run ([`Pending::take_runs`]), and a chunk whose messages are all
//! stored is kept for reuse. So under a flood an append allocates nothing and the writer copies
//! and frees nothing per message (docs/benchmarks.md, "2026-12-07: a tail laid out as
//! runs").

use std::collections::VecDeque;

use crate::store::message::run;
use crate::store::run_files::RunBuffer;

/// Chunks a stream keeps for reuse, and the most bytes a kept one may hold.
const SPARE_CHUNKS: usize = 4;
const SPARE_CAPACITY: usize = 2 * run::FILE_MAX_BYTES;
/// The most bytes of the one chunk a stream keeps once all it had is stored: a topic
/// flooded once and quiet since holds no flood's worth of buffers.
const IDLE_CAPACITY: usize = 4096;

/// Consecutive messages, framed back to back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Chunk {
    /// The number of `index[0]`'s message.
    base: u64,
    /// How many of the oldest are gone (trimmed or stored); their bytes stay until the
    /// whole chunk goes.
    skip: usize,
    /// Each message's time and where its frame starts in `frames`.
    index: Vec<(u64, usize)>,
    frames: Vec<u8>,
    /// Taken by the writer: the next message starts a new chunk, so that a run being
    /// stored is never continued.
    sealed: bool,
}

impl Chunk {
    fn first(&self) -> u64 {
        self.base + self.skip as u64
    }

    /// One past the newest.
    fn end(&self) -> u64 {
        self.base + self.index.len() as u64
    }

    fn len(&self) -> usize {
        self.index.len() - self.skip
    }

    fn slot(&self, seq: u64) -> usize {
        (seq - self.base) as usize
    }

    fn frame(&self, i: usize) -> std::ops::Range<usize> {
        let end = self.index.get(i + 1).map_or(self.frames.len(), |m| m.1);
        self.index[i].1..end
    }

    fn size(&self, i: usize) -> u64 {
        self.frame(i).len() as u64
    }
}

/// The messages of a stream's tail, oldest first (see the module's notes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pending {
    /// In increasing numbers; none is empty.
    chunks: VecDeque<Chunk>,
    len: usize,
    spare: Vec<Chunk>,
}

/// Records copied off a tail, to be read with the stream's lock released.
#[derive(Debug, Default)]
pub struct Copied {
    /// The number of the first, if any.
    pub first: Option<u64>,
    /// The records, framed ([`run::frames`] reads them).
    pub frames: Vec<u8>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The oldest message's number.
    pub fn first(&self) -> Option<u64> {
        self.chunks.front().map(Chunk::first)
    }

    /// Adds message `seq`, which `encode` writes; returns its size as stored (its
    /// frame's length).
    pub fn push(&mut self, seq: u64, ts_us: u64, encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let open = self
            .chunks
            .back()
            .is_some_and(|c| !c.sealed && c.end() == seq);
        let mut chunk = match open {
            true => self.chunks.pop_back(),
            false => None,
        }
        .unwrap_or_else(|| self.fresh(seq));
        let at = chunk.frames.len();
        let size = run::push_with(&mut chunk.frames, encode);
        if !chunk.index.is_empty() && run::OVERHEAD + chunk.frames.len() > run::FILE_MAX_BYTES {
            // Beyond one run's bytes: the message starts the next chunk.
            let mut next = self.fresh(seq);
            next.frames.extend_from_slice(&chunk.frames[at..]);
            next.index.push((ts_us, 0));
            chunk.frames.truncate(at);
            self.chunks.push_back(chunk);
            self.chunks.push_back(next);
        } else {
            chunk.index.push((ts_us, at));
            self.chunks.push_back(chunk);
        }
        self.len += 1;
        size as u64
    }

    /// Drops the oldest message: its number and size.
    pub fn pop_front(&mut self) -> Option<(u64, u64)> {
        let chunk = self.chunks.front_mut()?;
        let (seq, size) = (chunk.first(), chunk.size(chunk.skip));
        chunk.skip += 1;
        if chunk.len() == 0 {
            if let Some(chunk) = self.chunks.pop_front() {
                self.recycle(chunk);
            }
        }
        self.len -= 1;
        Some((seq, size))
    }

    /// Drops every message numbered up to `seq` (their runs are stored).
    pub fn pop_through(&mut self, seq: u64) {
        while let Some(chunk) = self.chunks.front_mut() {
            if chunk.first() > seq {
                break;
            }
            if chunk.end() > seq + 1 {
                let gone = chunk.slot(seq + 1) - chunk.skip;
                chunk.skip += gone;
                self.len -= gone;
                break;
            }
            self.len -= chunk.len();
            if let Some(chunk) = self.chunks.pop_front() {
                self.recycle(chunk);
            }
        }
        if self.chunks.is_empty() {
            self.spare.truncate(1);
            self.spare.retain(|c| c.frames.capacity() <= IDLE_CAPACITY);
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.find(seq).is_some()
    }

    /// When message `seq` was published, if it is here.
    pub fn ts(&self, seq: u64) -> Option<u64> {
        self.find(seq).map(|(c, i)| c.index[i].0)
    }

    fn find(&self, seq: u64) -> Option<(&Chunk, usize)> {
        let at = self.chunks.partition_point(|c| c.end() <= seq);
        let chunk = self.chunks.get(at)?;
        (chunk.first() <= seq).then(|| (chunk, chunk.slot(seq)))
    }

    /// Each message's number, time and size, oldest first.
    pub fn sizes(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.chunks.iter().flat_map(|c| {
            (c.skip..c.index.len()).map(move |i| (c.base + i as u64, c.index[i].0, c.size(i)))
        })
    }

    /// The records numbered `from..=to` that are here, copied.
    pub fn copy(&self, from: u64, to: u64) -> Copied {
        let mut out = Copied::default();
        for c in &self.chunks {
            let (a, b) = (from.max(c.first()), to.min(c.end().saturating_sub(1)));
            if a > b {
                continue;
            }
            out.first = out.first.or(Some(a));
            let (start, end) = (c.frame(c.slot(a)).start, c.frame(c.slot(b)).end);
            out.frames.extend_from_slice(&c.frames[start..end]);
        }
        out
    }

    /// Adds to `buffer` every message numbered `from` or later, a run per chunk under
    /// `key(its first number)`, and seals those chunks. Returns each run's key, first
    /// and last number.
    pub fn take_runs(
        &mut self,
        from: u64,
        key: impl Fn(u64) -> Vec<u8>,
        buffer: &mut RunBuffer,
    ) -> Vec<(Vec<u8>, u64, u64)> {
        let mut runs = Vec::new();
        for c in self.chunks.iter_mut().filter(|c| c.end() > from) {
            let a = from.max(c.first());
            let k = key(a);
            buffer.start(k.clone());
            buffer.extend_frames(&c.frames[c.frame(c.slot(a)).start..]);
            c.sealed = true;
            runs.push((k, a, c.end() - 1));
        }
        runs
    }

    /// Drops the messages numbered `a..=b` (a write of them failed). Returns how many
    /// of those numbered `counted_from` or later there were, and their size.
    pub fn remove(&mut self, a: u64, b: u64, counted_from: u64) -> (u64, u64) {
        let (mut lost, mut size) = (0, 0);
        let mut kept = VecDeque::with_capacity(self.chunks.len());
        while let Some(mut c) = self.chunks.pop_front() {
            if c.end() <= a || c.first() > b {
                kept.push_back(c);
                continue;
            }
            let after = (c.end() > b + 1).then(|| self.split_off(&mut c, b + 1));
            let gone = if c.first() < a {
                let gone = self.split_off(&mut c, a);
                kept.push_back(c);
                gone
            } else {
                c
            };
            for i in gone.skip..gone.index.len() {
                if gone.base + i as u64 >= counted_from {
                    lost += 1;
                    size += gone.size(i);
                }
            }
            self.len -= gone.len();
            self.recycle(gone);
            kept.extend(after);
        }
        self.chunks = kept;
        (lost, size)
    }

    /// Moves the messages from `seq` on (`c.first() < seq < c.end()`) to a chunk of
    /// their own.
    fn split_off(&mut self, c: &mut Chunk, seq: u64) -> Chunk {
        let i = c.slot(seq);
        let at = c.index[i].1;
        let mut rest = self.fresh(seq);
        rest.frames.extend_from_slice(&c.frames[at..]);
        rest.index
            .extend(c.index[i..].iter().map(|&(ts, start)| (ts, start - at)));
        rest.sealed = c.sealed;
        c.frames.truncate(at);
        c.index.truncate(i);
        rest
    }

    pub fn clear(&mut self) {
        while let Some(chunk) = self.chunks.pop_front() {
            self.recycle(chunk);
        }
        self.len = 0;
    }

    fn fresh(&mut self, seq: u64) -> Chunk {
        let mut chunk = self.spare.pop().unwrap_or_default();
        chunk.base = seq;
        chunk
    }

    fn recycle(&mut self, mut chunk: Chunk) {
        if self.spare.len() < SPARE_CHUNKS && chunk.frames.capacity() <= SPARE_CAPACITY {
            chunk.frames.clear();
            chunk.index.clear();
            chunk.skip = 0;
            chunk.sealed = false;
            self.spare.push(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, len: usize) -> Vec<u8> {
        let mut r = seq.to_be_bytes().to_vec();
        r.resize(len.max(8), (seq % 251) as u8);
        r
    }

    fn push(p: &mut Pending, seq: u64, len: usize) -> u64 {
        p.push(seq, seq * 10, |out| {
            out.extend_from_slice(&record(seq, len))
        })
    }

    fn records(frames: &[u8]) -> Vec<u64> {
        run::frames(frames)
            .map(|r| u64::from_be_bytes(r.expect("framed")[..8].try_into().expect("8 bytes")))
            .collect()
    }

    /// Every run `take_runs` gives holds the numbers it says, consecutive, within
    /// one run's bytes unless it is one big record.
    fn runs_of(p: &mut Pending, from: u64) -> Vec<(u64, u64, Vec<u64>)> {
        let mut buffer = RunBuffer::default();
        let runs = p.take_runs(from, |seq| seq.to_be_bytes().to_vec(), &mut buffer);
        let stored = buffer.to_pairs();
        assert_eq!(stored.len(), runs.len());
        runs.iter()
            .zip(stored)
            .map(|((key, a, b), (k, bytes))| {
                assert_eq!(key, &k);
                let seqs: Vec<u64> = run::records(&bytes)
                    .map(|r| u64::from_be_bytes(r.expect("a record")[..8].try_into().expect("8")))
                    .collect();
                // Only a record bigger than a run makes a run bigger: alone.
                assert!(
                    bytes.len() <= run::FILE_MAX_BYTES || seqs.len() == 1,
                    "a run of {} bytes",
                    bytes.len()
                );
                assert_eq!(seqs, (*a..=*b).collect::<Vec<_>>());
                (*a, *b, seqs)
            })
            .collect()
    }

    #[test]
    fn messages_come_back_as_pushed_across_chunks_and_gaps() {
        let mut p = Pending::default();
        let mut sizes = 0;
        for seq in (1..=500).chain(600..=650) {
            sizes += push(&mut p, seq, 400);
        }
        assert_eq!(p.len(), 551);
        assert_eq!(sizes, 551 * (400 + run::PER_RECORD as u64));
        assert!(
            p.chunks.len() > 3,
            "500 messages of 404 bytes fill several runs"
        );
        assert_eq!(p.first(), Some(1));
        assert!(p.contains(500) && p.contains(600) && !p.contains(550) && !p.contains(651));
        assert_eq!(p.ts(321), Some(3210));
        assert_eq!(p.ts(599), None);
        let all: Vec<u64> = p.sizes().map(|(seq, _, _)| seq).collect();
        assert_eq!(all, (1..=500).chain(600..=650).collect::<Vec<_>>());
        let copied = p.copy(490, 610);
        assert_eq!(copied.first, Some(490));
        assert_eq!(
            records(&copied.frames),
            (490..=500).chain(600..=610).collect::<Vec<_>>()
        );
        assert_eq!(p.copy(501, 599).first, None);
    }

    #[test]
    fn the_writer_takes_only_what_is_new_and_never_continues_a_taken_run() {
        let mut p = Pending::default();
        for seq in 1..=10 {
            push(&mut p, seq, 50);
        }
        assert_eq!(runs_of(&mut p, 4), vec![(4, 10, (4..=10).collect())]);
        // Appended while the run is being stored: a run of its own.
        for seq in 11..=12 {
            push(&mut p, seq, 50);
        }
        p.pop_through(10);
        assert_eq!(p.len(), 2);
        assert_eq!(p.first(), Some(11));
        assert_eq!(runs_of(&mut p, 11), vec![(11, 12, vec![11, 12])]);
        // A gap in the numbers ends a run.
        push(&mut p, 20, 50);
        push(&mut p, 21, 50);
        assert_eq!(runs_of(&mut p, 13), vec![(20, 21, vec![20, 21])]);
        p.pop_through(21);
        assert!(p.is_empty());
        assert_eq!(p.first(), None);
    }

    #[test]
    fn a_big_record_gets_a_run_of_its_own_and_runs_stay_within_their_bytes() {
        let mut p = Pending::default();
        push(&mut p, 1, 100);
        push(&mut p, 2, run::FILE_MAX_BYTES + 10);
        for seq in 3..=400 {
            push(&mut p, seq, 90);
        }
        let runs = runs_of(&mut p, 1);
        assert_eq!((runs[0].0, runs[0].1), (1, 1));
        assert_eq!((runs[1].0, runs[1].1), (2, 2));
        assert_eq!(runs.last().map(|r| r.1), Some(400));
        let seqs: Vec<u64> = runs.iter().flat_map(|r| r.2.clone()).collect();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    }

    #[test]
    fn trimming_the_oldest_reports_each_size_and_moves_the_writer_past_them() {
        let mut p = Pending::default();
        push(&mut p, 1, 10);
        push(&mut p, 2, 30);
        push(&mut p, 3, 20);
        assert_eq!(p.pop_front(), Some((1, 10 + run::PER_RECORD as u64)));
        assert_eq!(p.pop_front(), Some((2, 30 + run::PER_RECORD as u64)));
        assert_eq!(runs_of(&mut p, 1), vec![(3, 3, vec![3])]);
        assert_eq!(p.pop_front(), Some((3, 20 + run::PER_RECORD as u64)));
        assert_eq!(p.pop_front(), None);
        assert!(p.is_empty());
    }

    #[test]
    fn a_failed_write_removes_exactly_its_numbers_and_counts_the_kept_ones() {
        let mut p = Pending::default();
        for seq in 1..=300 {
            push(&mut p, seq, 100);
        }
        // 100..=200 failed; those below 150 had been trimmed meanwhile.
        let (lost, size) = p.remove(100, 200, 150);
        assert_eq!(lost, 51);
        assert_eq!(size, 51 * (100 + run::PER_RECORD as u64));
        assert_eq!(p.len(), 199);
        let left: Vec<u64> = p.sizes().map(|(seq, _, _)| seq).collect();
        assert_eq!(left, (1..100).chain(201..=300).collect::<Vec<_>>());
        assert_eq!(p.ts(201), Some(2010));
        assert!(!p.contains(150));
        let seqs: Vec<u64> = runs_of(&mut p, 1)
            .iter()
            .flat_map(|r| r.2.clone())
            .collect();
        assert_eq!(seqs, left);
        p.clear();
        assert!(p.is_empty() && p.first().is_none());
    }

    #[test]
    fn stored_chunks_are_reused_without_growing_and_let_go_when_idle() {
        let mut p = Pending::default();
        let mut seq = 0;
        for _ in 0..20 {
            let from = seq + 1;
            // More runs' worth than it keeps spare.
            for _ in 0..(SPARE_CHUNKS + 2) * run::FILE_MAX_BYTES / 100 {
                seq += 1;
                push(&mut p, seq, 96);
            }
            runs_of(&mut p, from);
            // A flood: the newest is still waiting when the burst is stored.
            p.pop_through(seq - 1);
            assert_eq!(p.len(), 1);
        }
        assert_eq!(p.spare.len(), SPARE_CHUNKS);
        assert!(p
            .spare
            .iter()
            .all(|c| c.frames.capacity() <= SPARE_CAPACITY));
        // Quiet: all stored, nothing of the flood's size stays.
        runs_of(&mut p, seq);
        p.pop_through(seq);
        assert!(p.is_empty() && p.spare.len() <= 1);
        assert!(p.spare.iter().all(|c| c.frames.capacity() <= IDLE_CAPACITY));
        // A trickle keeps its one small chunk.
        for _ in 0..3 {
            seq += 1;
            push(&mut p, seq, 50);
            runs_of(&mut p, seq);
            p.pop_through(seq);
            assert_eq!(p.spare.len(), 1);
        }
    }
}
