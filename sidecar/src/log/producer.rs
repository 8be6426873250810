//! Idempotent producers (Kafka's KIP-98 scheme): each appender has a producer id and epoch and
//! numbers its batches 0, 1, 2, ...; the primary remembers the last [`KEPT_BATCHES`] batches of
//! each producer, so a retried batch is answered with its original LSNs instead of being
//! written again. The table is rebuilt from the log's own entries (which carry the producer
//! fields) whenever a primary takes over, on top of the history a trim stored of the entries it
//! removed ([`super::history`]).
//!
//! A producer the table does not know must start at batch 0: a later batch first means the
//! earlier ones are still on their way (at a primary change, a batch routed to the new primary
//! can overtake the retries of the batches before it), and writing it would put the producer's
//! batches out of order. Only when trimmed entries are not covered by a stored history (its
//! producers may have been trimmed away with their entries) is an unknown producer taken at
//! any batch.

use std::collections::{HashMap, VecDeque};

use super::LogEntry;

/// Batches remembered per producer (at least the largest pipeline, 8).
pub const KEPT_BATCHES: usize = 16;

/// One producer's batches: `(id, epoch, [(seq, first_lsn, len)])`.
pub type ProducerBatches = (u64, u64, Vec<(u64, u64, u32)>);

/// What to do with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Append,
    /// Already written: answer with these LSNs.
    Duplicate {
        /// First LSN of the original.
        first_lsn: u64,
        /// Its entries.
        len: u32,
    },
    /// Refuse it, with why.
    Refuse(String),
}

#[derive(Debug, Clone, Default)]
struct ProducerState {
    epoch: u64,
    /// (batch_seq, first_lsn, len), oldest first.
    batches: VecDeque<(u64, u64, u32)>,
}

/// The primary's dedup table.
#[derive(Debug, Clone, Default)]
pub struct ProducerTable {
    producers: HashMap<u64, ProducerState>,
    /// The log this table was rebuilt from had been trimmed: producers may be missing.
    history_trimmed: bool,
}

impl ProducerTable {
    /// Decides what to do with batch `seq` of `len` entries from producer `(id, epoch)`.
    pub fn check(&self, id: u64, epoch: u64, seq: u64, len: u32) -> Verdict {
        if id == 0 {
            return Verdict::Append;
        }
        let Some(p) = self.producers.get(&id) else {
            return if seq == 0 || self.history_trimmed {
                Verdict::Append
            } else {
                Verdict::Refuse(format!(
                    "producer {id} epoch {epoch} has written nothing to this stream yet: its first batch is 0, not {seq} (out of order)"
                ))
            };
        };
        if epoch < p.epoch {
            return Verdict::Refuse(format!(
                "producer {id} epoch {epoch} is fenced: epoch {} already wrote to this stream",
                p.epoch
            ));
        }
        if epoch > p.epoch {
            return if seq == 0 {
                Verdict::Append
            } else {
                Verdict::Refuse(format!("producer {id}: a new epoch {epoch} must start at batch 0, got {seq}"))
            };
        }
        let last = p.batches.back().map_or(0, |b| b.0);
        if p.batches.is_empty() || seq == last + 1 {
            return Verdict::Append;
        }
        if seq > last {
            return Verdict::Refuse(format!(
                "producer {id} epoch {epoch}: batch {seq} leaves a gap after batch {last} (out of order)"
            ));
        }
        match p.batches.iter().find(|b| b.0 == seq) {
            Some(&(_, first_lsn, n)) if n == len => Verdict::Duplicate { first_lsn, len: n },
            Some(&(_, _, n)) => Verdict::Refuse(format!(
                "producer {id} epoch {epoch}: batch {seq} was written with {n} entries, the retry has {len}"
            )),
            None => Verdict::Refuse(format!(
                "producer {id} epoch {epoch}: batch {seq} is older than the last {KEPT_BATCHES} batches kept"
            )),
        }
    }

    /// Records that batch `seq` of producer `(id, epoch)` starts at `first_lsn`.
    pub fn record(&mut self, id: u64, epoch: u64, seq: u64, first_lsn: u64, len: u32) {
        if id == 0 {
            return;
        }
        let p = self.producers.entry(id).or_default();
        if epoch < p.epoch {
            return; // a producer's epochs only grow along the log; seen through a history first
        }
        if epoch > p.epoch {
            *p = ProducerState { epoch, batches: VecDeque::new() };
        }
        if p.batches.back().is_some_and(|b| b.0 >= seq) {
            return;
        }
        p.batches.push_back((seq, first_lsn, len));
        while p.batches.len() > KEPT_BATCHES {
            p.batches.pop_front();
        }
    }

    /// The producers' batches that start below `first`, as `(id, epoch, [(seq, first_lsn, len)])`:
    /// what a primary needs to remember of the entries a trim at `first` removes (batches from
    /// `first` on are in the log that stays; only the current epoch of each producer is kept).
    pub fn below(&self, first: u64) -> Vec<ProducerBatches> {
        let mut out: Vec<ProducerBatches> = self
            .producers
            .iter()
            .filter_map(|(id, p)| {
                let kept: Vec<(u64, u64, u32)> = p.batches.iter().filter(|b| b.1 < first).copied().collect();
                (!kept.is_empty()).then_some((*id, p.epoch, kept))
            })
            .collect();
        out.sort_by_key(|(id, _, _)| *id);
        out
    }

    /// True when the table may miss producers whose entries were trimmed.
    pub fn history_trimmed(&self) -> bool {
        self.history_trimmed
    }

    /// Marks the table as rebuilt from a trimmed log (unknown producers are then taken at any
    /// batch: their history may be gone).
    pub fn set_history_trimmed(&mut self, trimmed: bool) {
        self.history_trimmed = trimmed;
    }

    /// Rebuilds the table from entries of the log, in LSN order.
    pub fn observe(&mut self, e: &LogEntry) {
        if e.batch_index == 0 {
            self.record(e.producer_id, e.producer_epoch, e.batch_seq, e.lsn, e.batch_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_recognised_gaps_and_fenced_epochs_refused() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(7, 1, 0, 2), Verdict::Append);
        t.record(7, 1, 0, 1, 2);
        assert_eq!(t.check(7, 1, 1, 3), Verdict::Append);
        t.record(7, 1, 1, 3, 3);
        assert_eq!(t.check(7, 1, 0, 2), Verdict::Duplicate { first_lsn: 1, len: 2 });
        assert_eq!(t.check(7, 1, 1, 3), Verdict::Duplicate { first_lsn: 3, len: 3 });
        assert!(matches!(t.check(7, 1, 3, 1), Verdict::Refuse(m) if m.contains("gap")));
        assert!(matches!(t.check(7, 1, 1, 2), Verdict::Refuse(m) if m.contains("3 entries")));
        assert!(matches!(t.check(7, 0, 2, 1), Verdict::Refuse(m) if m.contains("fenced")));
        assert_eq!(t.check(7, 2, 0, 1), Verdict::Append);
        assert!(matches!(t.check(7, 2, 5, 1), Verdict::Refuse(_)));
        assert_eq!(t.check(0, 0, 0, 1), Verdict::Append, "no producer id: no dedup");
    }

    #[test]
    fn an_unknown_producer_starts_at_batch_0_unless_the_log_was_trimmed() {
        let mut t = ProducerTable::default();
        assert!(matches!(t.check(5, 1, 3, 1), Verdict::Refuse(m) if m.contains("out of order")));
        assert_eq!(t.check(5, 1, 0, 1), Verdict::Append);
        t.set_history_trimmed(true);
        assert_eq!(t.check(5, 1, 3, 1), Verdict::Append, "its earlier batches may have been trimmed");
    }

    #[test]
    fn the_table_is_rebuilt_from_log_entries() {
        let mut t = ProducerTable::default();
        for lsn in 1..=40u64 {
            let seq = (lsn - 1) / 2;
            let e = LogEntry {
                lsn,
                epoch: 1,
                producer_id: 9,
                producer_epoch: 3,
                batch_seq: seq,
                batch_index: ((lsn - 1) % 2) as u32,
                batch_len: 2,
                fence: None,
                data: vec![],
            };
            t.observe(&e);
        }
        assert_eq!(t.check(9, 3, 19, 2), Verdict::Duplicate { first_lsn: 39, len: 2 });
        assert!(matches!(t.check(9, 3, 1, 2), Verdict::Refuse(m) if m.contains("older")));
        assert_eq!(t.check(9, 3, 20, 1), Verdict::Append);
    }
}
