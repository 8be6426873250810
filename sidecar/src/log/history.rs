//! What a stream's primary must remember of the entries a trim removes: the idempotent
//! producers' last batches and the fences whose highest token lies below the trim point.
//!
//! A primary rebuilds its producer and fence tables from the log it recovered; entries below
//! the trim point are gone from every replica, and with them what they said. So before a trim
//! point `F` is stored, the primary stores the part of its tables that only entries below `F`
//! carry (its `History` at `F`) in the register `log/<stream>/history` (only ever replaced by a
//! history at a higher `F`). A later primary seeds its tables with it, then observes the log it
//! holds. Observing is idempotent (a producer's batch already known, or of an older epoch, is
//! skipped; a fence keeps the highest token), so history and log may overlap.
//!
//! The tables are complete when nothing lies between what the history covers and the start of
//! the local log (and the history's own tables were complete); otherwise the primary treats its
//! producers as possibly forgotten (an unknown producer is taken at any batch, see
//! [`super::producer`]). A history larger than [`MAX_HISTORY_BYTES`] is not stored.
//!
//! Why a deposed primary's history does no harm: it summarises entries below `F`, which are
//! committed (a trim point is at most the commit point + 1), and committed entries are the same
//! in every primary's log.
//!
//! Tests: `tests::a_history_round_trips_and_garbage_is_refused`, and
//! `primary::tests::a_retry_of_a_trimmed_batch_is_recognised_after_a_takeover` (verified to
//! write the batch twice without the history).

use super::fence::FenceTable;
use super::producer::{ProducerBatches, ProducerTable};
use super::Fence;

/// Largest history stored, in bytes (a register holds at most 1 MiB).
pub const MAX_HISTORY_BYTES: usize = 512 << 10;

/// A summary of the entries below `first`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Entries below this LSN are summarised.
    pub first: u64,
    /// The tables it was taken from missed nothing.
    pub complete: bool,
    /// Producers' batches starting below `first`.
    pub producers: Vec<ProducerBatches>,
    /// Highest fences appended below `first`, with their LSN.
    pub fences: Vec<(Fence, u64)>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<String, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd hex {s:?}"));
    }
    let bytes: Result<Vec<u8>, _> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16)).collect();
    String::from_utf8(bytes.map_err(|_| format!("bad hex {s:?}"))?).map_err(|_| "not utf-8".to_string())
}

impl History {
    /// The part of `producers` and `fences` that only entries below `first` carry.
    pub fn capture(producers: &ProducerTable, fences: &FenceTable, first: u64) -> Self {
        History {
            first,
            complete: !producers.history_trimmed(),
            producers: producers.below(first),
            fences: fences.below(first),
        }
    }

    /// Seeds `producers` and `fences` (before the log is observed on top).
    pub fn seed(&self, producers: &mut ProducerTable, fences: &mut FenceTable) {
        for (id, epoch, batches) in &self.producers {
            for &(seq, first_lsn, len) in batches {
                producers.record(*id, *epoch, seq, first_lsn, len);
            }
        }
        for (f, lsn) in &self.fences {
            fences.record(Some(f), *lsn);
        }
    }

    /// The register value (text, one line per producer and fence).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("h1 {} {}\n", self.first, u8::from(self.complete));
        for (id, epoch, batches) in &self.producers {
            let b: Vec<String> = batches.iter().map(|(s, l, n)| format!("{s}:{l}:{n}")).collect();
            out.push_str(&format!("p {id} {epoch} {}\n", b.join(",")));
        }
        for (f, lsn) in &self.fences {
            out.push_str(&format!("f {} {lsn} {} {}\n", f.token, hex(f.divider.as_bytes()), hex(f.key.as_bytes())));
        }
        out.into_bytes()
    }

    /// Parses a register value.
    pub fn decode(raw: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(raw).map_err(|_| "stream history is not text".to_string())?;
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
        let num = |s: &str| s.parse::<u64>().map_err(|_| format!("bad number {s:?} in stream history"));
        let [tag, first, complete] = head[..] else { return Err(format!("bad stream history header {head:?}")) };
        if tag != "h1" {
            return Err(format!("unknown stream history format {tag:?}"));
        }
        let mut h = History { first: num(first)?, complete: complete == "1", ..Default::default() };
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                ["p", id, epoch, batches] => {
                    let mut b = Vec::new();
                    for one in batches.split(',').filter(|s| !s.is_empty()) {
                        let v: Vec<&str> = one.split(':').collect();
                        let [s, l, n] = v[..] else { return Err(format!("bad batch {one:?} in stream history")) };
                        b.push((num(s)?, num(l)?, u32::try_from(num(n)?).map_err(|_| "batch too long".to_string())?));
                    }
                    h.producers.push((num(id)?, num(epoch)?, b));
                }
                ["f", token, lsn, divider, key] => {
                    let fence = Fence { divider: unhex(divider)?, key: unhex(key)?, token: num(token)? };
                    h.fences.push((fence, num(lsn)?));
                }
                _ => return Err(format!("bad stream history line {line:?}")),
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_round_trips_and_garbage_is_refused() {
        let mut producers = ProducerTable::default();
        producers.record(7, 2, 0, 1, 3);
        producers.record(7, 2, 1, 4, 2);
        producers.record(9, 1, 0, 6, 1);
        producers.record(9, 1, 1, 20, 1);
        let mut fences = FenceTable::default();
        let f = |key: &str, token| Fence { divider: "d v".into(), key: key.into(), token };
        fences.record(Some(&f("k 1", 4)), 2);
        fences.record(Some(&f("k2", 9)), 30);
        let h = History::capture(&producers, &fences, 10);
        assert_eq!(h.producers, vec![(7, 2, vec![(0, 1, 3), (1, 4, 2)]), (9, 1, vec![(0, 6, 1)])]);
        assert_eq!(h.fences, vec![(f("k 1", 4), 2)], "only fences below the trim point");
        assert!(h.complete);
        assert_eq!(History::decode(&h.encode()), Ok(h.clone()));
        // Seeding gives back what it summarised.
        let (mut p2, mut f2) = (ProducerTable::default(), FenceTable::default());
        h.seed(&mut p2, &mut f2);
        assert_eq!(p2.below(10), h.producers);
        assert!(f2.check("s", Some(&f("k 1", 3))).is_err());
        for bad in [&b"h2 1 1\n"[..], b"h1 x 1\n", b"h1 5 1\np 1 2 3:4\n", b"h1 5 1\nf 1 2 zz 00\n", b"\xff", b""] {
            assert!(History::decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
