//! Per-sidecar double buffer of one sequence: the range being handed out plus the next one,
//! fetched in the background once the current range is half used. Strict requests and requests
//! larger than a range are served here too ([`RangeBuffer::direct`]), from their own quorum
//! allocation, so that one sidecar's answers for a sequence are ordered.
//!
//! # Invariant: IDs from one sidecar never go backwards
//! Every range this sidecar returns for a sequence, buffered, strict or larger than the buffer,
//! starts above every ID it returned before for that sequence. Gaps are allowed; going back
//! is not.
//!
//! Argument. A buffer has **at most one quorum allocation in flight**, and each one asks the
//! counter for a range at or above `Ranges::install_floor` (one past everything the buffer holds
//! or returned; the lower bound of [`crate::quorum::change::Change::Add`], IDs skipped up to it
//! are a gap). So every allocation's range lies above every ID this buffer ever held, and
//! allocations complete in the order they start. One allocation serves every direct request
//! queued when it started (each gets its slice, in order, and the floor rises past them: buffered
//! IDs below are discarded) and, after them, the buffer's refill. Buffered IDs are handed out by
//! `Ranges::take`, which keeps `current.start >= floor` and moves both together. All of it
//! happens under the `ranges` lock; no lock is held across a quorum round.
//!
//! Strict requests stay linearizable: a direct request's IDs come from an allocation that starts
//! after the request arrived and completes before it returns. Direct requests that arrive while
//! an allocation is in flight wait for the next one, so concurrent strict requests on one sidecar
//! are batched into one quorum round (one more round of latency at most).
//!
//! Tests: `ranges_only_move_forward`, `a_direct_allocation_raises_the_floor`,
//! `one_allocation_serves_queued_directs_in_order_then_the_buffer` below; end to end
//! `e2e/tests/sequencer.rs::ids_from_one_sidecar_never_go_backwards` and
//! `no_id_twice_with_racing_range_sizes_and_strict`, checked by
//! `e2e/src/checker.rs::check_increasing_per_sidecar`.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::{oneshot, Mutex, Notify};
use tokio::time::Instant;

use super::{RangeAllocator, SeqError};
use crate::metrics::Metrics;
use crate::quorum::transport::Peers;

/// A refill holds at least this many of the largest requests seen.
const REQUESTS_PER_REFILL: u64 = 4;

/// A direct request waiting for an allocation.
struct Direct {
    count: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<Range<u64>, SeqError>>,
}

/// How long a direct request waits past its deadline for its allocation's own answer (which
/// says how many members answered) before it gives up on its own.
const DIRECT_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Default)]
struct Ranges {
    current: Range<u64>,
    next: Option<Range<u64>>,
    /// One past the highest ID returned: nothing below this may be handed out any more.
    floor: u64,
    /// A quorum allocation is in flight (at most one).
    allocating: bool,
    /// Direct requests waiting for the next allocation, in arrival order.
    directs: Vec<Direct>,
    /// IDs wanted by requests waiting for a refill: the next refill is at least this large.
    waiting: u64,
    /// Largest request served from this buffer: refills hold several of them.
    largest: u64,
    /// Counts finished refills, so waiters can tell whether the one they waited for failed.
    refills: u64,
    failure: Option<(u64, SeqError)>,
}

impl Ranges {
    /// Lowest start of a range [`Ranges::install`] keeps.
    fn install_floor(&self) -> u64 {
        self.floor.max(self.current.end).max(self.next.as_ref().map_or(0, |n| n.end))
    }

    /// Adds a freshly allocated range, less the part that lies below what may still be handed
    /// out (a refill overtaken by a direct range keeps its IDs above it: they are ours and unused).
    fn install(&mut self, r: Range<u64>) {
        let r = r.start.max(self.install_floor())..r.end;
        if r.is_empty() {
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
                    if left < self.range_size / 2 + 1 && ranges.next.is_none() {
                        self.allocate(&mut ranges);
                    }
                    return Ok(r);
                }
                ranges.waiting += count;
                self.allocate(&mut ranges);
                notified.as_mut().enable();
                ranges.refills + 1
            };
            notified.await;
            let mut ranges = self.ranges.lock().await;
            ranges.waiting = ranges.waiting.saturating_sub(count);
            if let Some((n, e)) = &ranges.failure {
                if *n >= waiting_for {
                    return Err(e.clone());
                }
            }
        }
    }

    /// Allocates `count` IDs through a quorum round (strict, or larger than the buffer): queued
    /// for the buffer's next allocation, which starts after this call arrived.
    pub async fn direct(self: &Arc<Self>, count: u64, deadline: Instant) -> Result<Range<u64>, SeqError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut ranges = self.ranges.lock().await;
            ranges.directs.push(Direct { count, deadline, reply: tx });
            self.allocate(&mut ranges);
        }
        // The allocation ends by the earliest deadline of its requests and answers with the
        // quorum's own error; the grace only covers a lost answer.
        match tokio::time::timeout_at(deadline + DIRECT_GRACE, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SeqError::Timeout(format!("the allocation for {:?} was dropped", self.name))),
            Err(_) => Err(SeqError::Timeout(format!(
                "no allocation of {:?} completed within the request deadline",
                self.name
            ))),
        }
    }

    /// Starts the buffer's next quorum allocation unless one is in flight: every queued direct
    /// request, then a refill when the buffer is in use.
    fn allocate(self: &Arc<Self>, ranges: &mut Ranges) {
        if ranges.allocating {
            return;
        }
        let directs = std::mem::take(&mut ranges.directs);
        let direct_ids = directs.iter().fold(0u64, |n, d| n.saturating_add(d.count));
        // Under more demand than one range, lease enough for everyone waiting at once; and when
        // callers take whole ranges at a time (an ordo-client lease as large as the range), hold
        // a few of them, so each caller does not cost a quorum round. Direct requests discard
        // the buffer below them, so the buffer is refilled with them whenever it is in use.
        let low = ranges.next.is_none() && ranges.current.end - ranges.current.start < self.range_size / 2 + 1;
        let refill = if ranges.waiting > 0 || (ranges.largest > 0 && (low || !directs.is_empty())) {
            self.range_size.max(ranges.waiting).max(ranges.largest.saturating_mul(REQUESTS_PER_REFILL))
        } else {
            0
        };
        if directs.is_empty() && refill == 0 {
            return;
        }
        ranges.allocating = true;
        let floor = ranges.install_floor();
        let size = direct_ids.saturating_add(refill);
        let deadline =
            directs.iter().map(|d| d.deadline).min().unwrap_or_else(|| Instant::now() + self.allocator.timeout);
        let me = self.clone();
        tokio::spawn(async move {
            let result = me.allocator.allocate_by(&me.name, size, floor, deadline).await;
            let mut ranges = me.ranges.lock().await;
            ranges.allocating = false;
            match result {
                Ok(r) => {
                    let mut at = r.start;
                    for d in directs {
                        let _ = d.reply.send(Ok(at..at + d.count));
                        at += d.count;
                    }
                    ranges.raise_floor(at);
                    if refill > 0 {
                        me.metrics.refills.inc();
                        ranges.refills += 1;
                        ranges.failure = None;
                        ranges.install(at..r.end);
                    }
                }
                Err(e) => {
                    tracing::warn!(sequence = %me.name, error = %e, "allocation failed");
                    for d in directs {
                        let _ = d.reply.send(Err(e.clone()));
                    }
                    if refill > 0 {
                        ranges.refills += 1;
                        ranges.failure = Some((ranges.refills, e));
                    }
                }
            }
            // Whatever arrived meanwhile goes in the next allocation.
            me.allocate(&mut ranges);
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
    fn a_refill_overtaken_by_a_direct_range_keeps_its_ids_above_it() {
        let mut r = Ranges::default();
        r.raise_floor(150);
        r.install(100..200);
        assert_eq!(r.take(10), Some(150..160));
        assert!(r.floor >= 160);
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
    fn one_allocation_serves_queued_directs_in_order_then_the_buffer() {
        // What `allocate` does with 10..2000 for directs of 3 and 1024 after buffered IDs 1..5
        // were returned: the directs get 10..13 and 13..1037, the buffer the rest.
        let mut r = Ranges::default();
        r.install(1..9);
        assert_eq!(r.take(4), Some(1..5));
        assert_eq!(r.install_floor(), 9, "the allocation asks for IDs above all the buffer held");
        r.raise_floor(10 + 3 + 1024);
        assert_eq!(r.take(1), None, "buffered IDs below the directs are discarded");
        r.install(1037..2000);
        assert_eq!(r.take(2), Some(1037..1039));
    }
}
