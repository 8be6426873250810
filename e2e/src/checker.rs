//! Checkers in the spirit of Jepsen for the sequencer's guarantees, over every returned ID.

use std::ops::Range;
use std::time::Instant;

/// One allocation as a client saw it.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// Which client (task) made it.
    pub client: usize,
    /// The sidecar (member index) that returned the range; `None` for IDs a client library
    /// served from its own lease, which that sidecar returned earlier as one range.
    pub sidecar: Option<usize>,
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
    ordered_in_real_time(allocs.iter().filter(|a| a.strict).collect(), "strict ")
}

/// Every range a sidecar returned for the sequence, whatever the call (buffered, strict, larger
/// than the buffer) and the client, starts above every ID it returned before: if A completed
/// before B was invoked, both through sidecar S, A's IDs are below B's.
pub fn check_increasing_per_sidecar(allocs: &[Allocation]) -> Result<(), Violation> {
    let mut by_sidecar: std::collections::BTreeMap<usize, Vec<&Allocation>> = Default::default();
    for a in allocs {
        if let Some(s) = a.sidecar {
            by_sidecar.entry(s).or_default().push(a);
        }
    }
    for (s, group) in by_sidecar {
        ordered_in_real_time(group, &format!("through sidecar {s}, "))?;
    }
    Ok(())
}

/// If A completed before B was invoked, A's IDs are below B's; `what` names the set.
fn ordered_in_real_time(mut allocs: Vec<&Allocation>, what: &str) -> Result<(), Violation> {
    let mut by_completion = allocs.clone();
    by_completion.sort_by_key(|a| a.completed);
    allocs.sort_by_key(|a| a.invoked);
    let mut i = 0;
    let mut max_done: Option<&Allocation> = None;
    for b in allocs {
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
                    "{what}{:?} (client {}, strict: {}) started after {:?} (client {}, strict: {}) returned, yet is not larger",
                    b.ids, b.client, b.strict, a.ids, a.client, a.strict
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
            sidecar: Some(client % 10),
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
        // Through one sidecar (clients 0 and 10 share sidecar 0): a strict range, then a
        // buffered one below it, from another client of the same sidecar.
        let strict_then_lower = [a(0, 1025..1028, true, 0, 1, t), a(10, 7..14, false, 2, 3, t)];
        assert!(check_increasing_per_client(&strict_then_lower).is_ok());
        assert!(check_increasing_per_sidecar(&strict_then_lower).is_err());
        // The same through different sidecars, or overlapping in time, is fine.
        assert!(check_increasing_per_sidecar(&[a(0, 1025..1028, true, 0, 1, t), a(1, 7..14, false, 2, 3, t)]).is_ok());
        assert!(check_increasing_per_sidecar(&[a(0, 1025..1028, true, 0, 3, t), a(10, 7..14, false, 2, 4, t)]).is_ok());
        // IDs from a client-side lease are not the sidecar's answers.
        let mut leased = a(10, 7..8, false, 2, 3, t);
        leased.sidecar = None;
        assert!(check_increasing_per_sidecar(&[a(0, 1025..1028, true, 0, 1, t), leased]).is_ok());
    }
}
