//! Checkers in the spirit of Jepsen for the sequencer's guarantees, over every returned ID.

use std::ops::Range;
use std::time::Instant;

/// One allocation as a client saw it.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// Which client (task) made it.
    pub client: usize,
    /// The IDs.
    pub ids: Range<u64>,
    /// Strict (through the quorum) or buffered.
    pub strict: bool,
    /// When the request was sent.
    pub invoked: Instant,
    /// When the answer arrived.
    pub completed: Instant,
}

/// A violated guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// No ID handed out twice: ranges are pairwise disjoint. Returns the number of IDs checked.
pub fn check_unique(allocs: &[Allocation]) -> Result<u64, Violation> {
    let mut ranges: Vec<(&Range<u64>, usize)> = allocs.iter().map(|a| (&a.ids, a.client)).collect();
    ranges.sort_by_key(|(r, _)| (r.start, r.end));
    let mut total = 0;
    for w in ranges.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if b.start < a.end {
            return Err(Violation(format!("IDs handed out twice: {a:?} (client {ca}) overlaps {b:?} (client {cb})")));
        }
    }
    for (r, _) in &ranges {
        if r.is_empty() {
            return Err(Violation(format!("empty range {r:?}")));
        }
        total += r.end - r.start;
    }
    Ok(total)
}

/// IDs increase per client, within each mode (buffered, strict), in the order the client got them.
pub fn check_increasing_per_client(allocs: &[Allocation]) -> Result<(), Violation> {
    let mut last: std::collections::HashMap<(usize, bool), (u64, Instant)> = std::collections::HashMap::new();
    let mut sorted: Vec<&Allocation> = allocs.iter().collect();
    sorted.sort_by_key(|a| a.completed);
    for a in sorted {
        if let Some((prev_end, _)) = last.get(&(a.client, a.strict)) {
            if a.ids.start < *prev_end {
                return Err(Violation(format!(
                    "client {} got {:?} after IDs up to {} (strict: {})",
                    a.client, a.ids, prev_end, a.strict
                )));
            }
        }
        last.insert((a.client, a.strict), (a.ids.end, a.completed));
    }
    Ok(())
}

/// Strict allocations are ordered in real time: if A completed before B was invoked, A's IDs
/// are below B's.
pub fn check_strict_real_time(allocs: &[Allocation]) -> Result<(), Violation> {
    let mut strict: Vec<&Allocation> = allocs.iter().filter(|a| a.strict).collect();
    let mut by_completion = strict.clone();
    by_completion.sort_by_key(|a| a.completed);
    strict.sort_by_key(|a| a.invoked);
    let mut i = 0;
    let mut max_done: Option<&Allocation> = None;
    for b in strict {
        while i < by_completion.len() && by_completion[i].completed < b.invoked {
            let a = by_completion[i];
            if max_done.is_none_or(|m| a.ids.end > m.ids.end) {
                max_done = Some(a);
            }
            i += 1;
        }
        if let Some(a) = max_done {
            if b.ids.start < a.ids.end {
                return Err(Violation(format!(
                    "strict {:?} (client {}) started after strict {:?} (client {}) returned, yet is not larger",
                    b.ids, b.client, a.ids, a.client
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn a(client: usize, ids: Range<u64>, strict: bool, inv: u64, done: u64, t0: Instant) -> Allocation {
        Allocation {
            client,
            ids,
            strict,
            invoked: t0 + Duration::from_millis(inv),
            completed: t0 + Duration::from_millis(done),
        }
    }

    #[test]
    fn catches_overlap_order_and_real_time_violations() {
        let t = Instant::now();
        assert!(check_unique(&[a(0, 1..5, false, 0, 1, t), a(1, 5..6, false, 0, 1, t)]).is_ok());
        // rr_seq's failure: both read base 10, one writes 12, the other 15.
        assert!(check_unique(&[a(0, 10..12, false, 0, 1, t), a(1, 10..15, false, 0, 1, t)]).is_err());
        assert!(check_increasing_per_client(&[a(0, 5..6, false, 0, 1, t), a(0, 3..4, false, 2, 3, t)]).is_err());
        assert!(check_increasing_per_client(&[a(0, 5..6, false, 0, 1, t), a(0, 3..4, true, 2, 3, t)]).is_ok());
        assert!(check_strict_real_time(&[a(0, 9..10, true, 0, 1, t), a(1, 3..4, true, 2, 3, t)]).is_err());
        // Overlapping in time: any order is fine.
        assert!(check_strict_real_time(&[a(0, 9..10, true, 0, 5, t), a(1, 3..4, true, 2, 6, t)]).is_ok());
    }
}
