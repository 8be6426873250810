//! Per-sidecar double buffer of one sequence: the range being handed out plus the next one,
//! fetched in the background once the current range is half used. Requests larger than a
//! range and strict requests allocate directly ([`RangeBuffer::direct`]) but still pass through
//! here, so that one sidecar's answers for a sequence are ordered.
//!
//! # Invariant: IDs from one sidecar never go backwards
//! Every range this sidecar returns for a sequence, buffered, strict or larger than the buffer,
//! starts above every ID it returned before for that sequence. Gaps are allowed; going back
//! is not.
//!
//! Argument. `Ranges::floor` is one past the highest ID returned so far, and every range is
//! returned under the `ranges` lock by one of two steps that both respect and advance it:
//! - `Ranges::take` hands out the bottom of `current`, and `current.start >= floor` always
//!   holds: `take` itself moves `current.start` and `floor` to the same point; `install` keeps
//!   only a refill above `floor`, `current` and `next` (a refill allocated before a direct range
//!   arrives late and is dropped); `raise_floor` empties `current` and drops `next` when they
//!   lie below a direct range (ranges are disjoint, so below its start).
//! - `Ranges::accept_direct` returns a directly allocated range only if it starts at or above
//!   `floor`, then raises the floor to its end (buffered IDs below it are discarded).
//!
//! A direct range can come back below `floor`: its quorum round was ordered before a refill's,
//! and that refill was installed and handed out while the direct round was in flight. Such a
//! range is discarded (its IDs are never handed out) and the allocation is made again. The new
//! round starts after the refill's round completed, so the register (linearizable) orders it
//! after every range this sidecar has returned, and it can only be refused again if yet another
//! refill completes and is handed out in the meantime; the request deadline bounds the retries
//! ([`super::SeqError::Timeout`]). Strict requests stay linearizable: the round whose range is
//! returned runs inside the request. No lock is held across a quorum round.
//!
//! Tests: `ranges_only_move_forward`, `a_direct_allocation_raises_the_floor` and
//! `a_direct_range_below_returned_ids_is_refused` below; end to end
//! `e2e/tests/sequencer.rs::ids_from_one_sidecar_never_go_backwards`, checked by
//! `e2e/src/checker.rs::check_increasing_per_sidecar`, fails when a direct range does not raise
//! the floor (a strict call, then a buffered call below it). A refused range always belongs to
//! a call that overlaps in time with the call that got the overtaking refill, so a checker that
//! sees only invocation and completion times could order them either way: the unit test is the
//! one that catches a missing refusal.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::{RangeAllocator, SeqError};
use crate::metrics::Metrics;
use crate::quorum::transport::Peers;

/// A refill holds at least this many of the largest requests seen.
const REQUESTS_PER_REFILL: u64 = 4;

#[derive(Default)]
struct Ranges {
    current: Range<u64>,
    next: Option<Range<u64>>,
    /// One past the highest ID returned: nothing below this may be handed out any more.
    floor: u64,
    refilling: bool,
    /// IDs wanted by requests waiting for a refill: the next refill is at least this large.
    waiting: u64,
    /// Largest request served from this buffer: refills hold several of them.
    largest: u64,
    /// Counts finished refills, so waiters can tell whether the one they waited for failed.
    refills: u64,
    failure: Option<(u64, SeqError)>,
}

impl Ranges {
    /// Adds a freshly allocated range, unless it lies below what may still be handed out.
    fn install(&mut self, r: Range<u64>) {
        let floor = self.floor.max(self.current.end).max(self.next.as_ref().map_or(0, |n| n.end));
        if r.start < floor {
            return;
        }
        if self.current.is_empty() && self.next.is_none() {
            self.current = r;
        } else if self.next.is_none() {
            self.next = Some(r);
        }
    }

    /// Takes `count` IDs from the current range, moving to the next one if it has room.
    fn take(&mut self, count: u64) -> Option<Range<u64>> {
        if self.current.end - self.current.start < count {
            match self.next.take() {
                Some(n) if n.end - n.start >= count => self.current = n,
                Some(n) => {
                    // Too small for this request: drop it rather than go back later.
                    self.current = n.end..n.end;
                    return None;
                }
                None => return None,
            }
        }
        let r = self.current.start..self.current.start + count;
        self.current.start += count;
        self.floor = self.floor.max(r.end);
        Some(r)
    }

    /// Whether a directly allocated range may be returned: only if it starts at or above every
    /// ID returned so far. If so, it counts as returned.
    fn accept_direct(&mut self, r: &Range<u64>) -> bool {
        if r.start < self.floor {
            return false;
        }
        self.raise_floor(r.end);
        true
    }

    /// After `r` was handed out directly: drop whatever lies below its end.
    fn raise_floor(&mut self, end: u64) {
        self.floor = self.floor.max(end);
        if self.current.start < self.floor {
            self.current = self.floor..self.floor;
        }
        if self.next.as_ref().is_some_and(|n| n.start < self.floor) {
            self.next = None;
        }
    }
}

/// The buffer of one sequence on this sidecar.
pub struct RangeBuffer<P: Peers> {
    name: String,
    range_size: u64,
    allocator: RangeAllocator<P>,
    ranges: Mutex<Ranges>,
    refilled: Notify,
    metrics: Arc<Metrics>,
}

impl<P: Peers> RangeBuffer<P> {
    /// An empty buffer.
    pub fn new(name: String, range_size: u64, allocator: RangeAllocator<P>, metrics: Arc<Metrics>) -> Self {
        Self { name, range_size, allocator, ranges: Mutex::new(Ranges::default()), refilled: Notify::new(), metrics }
    }

    /// Takes `count` contiguous IDs. Requests larger than a range are allocated directly.
    pub async fn take(self: &Arc<Self>, count: u64) -> Result<Range<u64>, SeqError> {
        if count > self.range_size {
            return self.direct(count, Instant::now() + self.allocator.timeout).await;
        }
        loop {
            let notified = self.refilled.notified();
            tokio::pin!(notified);
            let waiting_for = {
                let mut ranges = self.ranges.lock().await;
                ranges.largest = ranges.largest.max(count);
                if let Some(r) = ranges.take(count) {
                    let left = ranges.current.end - ranges.current.start;
                    if left < self.range_size / 2 + 1 && ranges.next.is_none() && !ranges.refilling {
                        self.start_refill(&mut ranges);
                    }
                    return Ok(r);
                }
                ranges.waiting += count;
                if !ranges.refilling {
                    self.start_refill(&mut ranges);
                }
                notified.as_mut().enable();
                ranges.refills + 1
            };
            notified.await;
            let mut ranges = self.ranges.lock().await;
            ranges.waiting = ranges.waiting.saturating_sub(count);
            if let Some((n, e)) = &ranges.failure {
                if *n == waiting_for {
                    return Err(e.clone());
                }
            }
        }
    }

    /// Allocates `count` IDs through a quorum round (strict, or larger than the buffer), again
    /// while the range comes back below IDs this sidecar already returned.
    pub async fn direct(&self, count: u64, deadline: Instant) -> Result<Range<u64>, SeqError> {
        loop {
            let r = self.allocator.allocate_by(&self.name, count, deadline).await?;
            let mut ranges = self.ranges.lock().await;
            if ranges.accept_direct(&r) {
                return Ok(r);
            }
            let floor = ranges.floor;
            drop(ranges);
            tracing::debug!(sequence = %self.name, ?r, floor, "direct range below IDs already returned; allocating again");
            if Instant::now() >= deadline {
                return Err(SeqError::Timeout(format!(
                    "every range allocated for {:?} within the deadline lay below ID {floor}, already returned by this sidecar",
                    self.name
                )));
            }
        }
    }

    fn start_refill(self: &Arc<Self>, ranges: &mut Ranges) {
        ranges.refilling = true;
        // Under more demand than one range, lease enough for everyone waiting at once; and when
        // callers take whole ranges at a time (an ordo-client lease as large as the range), hold
        // a few of them, so each caller does not cost a quorum round.
        let size = self.range_size.max(ranges.waiting).max(ranges.largest.saturating_mul(REQUESTS_PER_REFILL));
        let me = self.clone();
        tokio::spawn(async move {
            let result = me.allocator.allocate(&me.name, size).await;
            let mut ranges = me.ranges.lock().await;
            ranges.refilling = false;
            ranges.refills += 1;
            match result {
                Ok(r) => {
                    me.metrics.refills.inc();
                    ranges.failure = None;
                    ranges.install(r);
                }
                Err(e) => {
                    tracing::warn!(sequence = %me.name, error = %e, "buffer refill failed");
                    ranges.failure = Some((ranges.refills, e));
                }
            }
            drop(ranges);
            me.refilled.notify_waiters();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_only_move_forward() {
        let mut r = Ranges::default();
        r.install(10..20);
        assert_eq!(r.take(4), Some(10..14));
        r.install(30..40);
        // An older range arriving late is dropped.
        r.install(20..30);
        assert_eq!(r.next, Some(30..40));
        assert_eq!(r.take(6), Some(14..20));
        assert_eq!(r.take(3), Some(30..33));
        // Too big for what is left: nothing, and no going back afterwards.
        assert_eq!(r.take(100), None);
        r.install(35..38);
        // What is left of the current range still serves smaller requests.
        assert_eq!(r.take(1), Some(33..34));
        r.install(50..200);
        assert_eq!(r.take(100), Some(50..150));
    }

    #[test]
    fn a_direct_allocation_raises_the_floor() {
        let mut r = Ranges::default();
        r.install(10..20);
        r.install(20..30);
        assert_eq!(r.take(2), Some(10..12));
        // A large request got 30..2030 directly: buffered IDs below it are never handed out.
        r.raise_floor(2030);
        assert_eq!(r.take(1), None);
        r.install(25..26);
        assert_eq!(r.take(1), None);
        r.install(2030..2040);
        assert_eq!(r.take(1), Some(2030..2031));
    }

    #[test]
    fn a_direct_range_below_returned_ids_is_refused() {
        let mut r = Ranges::default();
        // A strict round got 10..13, but a refill ordered after it (13..23) was installed and
        // handed out while the strict round was in flight.
        r.install(13..23);
        assert_eq!(r.take(2), Some(13..15));
        assert!(!r.accept_direct(&(10..13)), "a strict range below returned IDs is not returned");
        // Allocated again: above everything returned, so it is returned and drops the buffer.
        assert!(r.accept_direct(&(23..26)));
        assert_eq!(r.take(1), None);
        // Buffered then direct then buffered: each starts above the one before.
        r.install(26..36);
        assert_eq!(r.take(1), Some(26..27));
        assert!(!r.accept_direct(&(20..21)));
        assert!(r.accept_direct(&(36..40)));
        r.install(40..50);
        assert_eq!(r.take(3), Some(40..43));
    }
}
