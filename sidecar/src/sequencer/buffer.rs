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
//! Argument. `Ranges::floor` is one past the highest ID this buffer returned, and every range
//! is handed out under the `ranges` lock only if it starts at or above `floor`, which then rises
//! past it; no lock is held across a quorum round.
//! - Buffered IDs are handed out by `Ranges::take`, which keeps `current.start >= floor` and
//!   moves both together; a refill is installed less whatever lies below `install_floor` (one
//!   past everything the buffer holds or returned).
//! - Direct requests (strict, or larger than a range) are served by **quorum allocations
//!   pipelined per sequence**: up to `allocations_in_flight` at once
//!   (`--sequence-allocations-in-flight`), each serving every direct request queued when it started (and, when the buffer is in use and no refill is in flight,
//!   the buffer's refill after them). Each asks the counter for a range at or above
//!   `install_floor` (the lower bound of [`crate::quorum::change::Change::Add`]; IDs skipped up to
//!   it are a gap). Allocations in flight together may **complete in any order**: the register
//!   applies them in an order this sidecar does not control (a change forwarded to the
//!   register's home, another proposed here after a forward timed out, two forwards in flight).
//!   So an allocation's slices go to its requests only when its range starts at or above
//!   `floor` at the time it completes; otherwise it was overtaken by one that completed first,
//!   its IDs are a gap, and its requests go back to the front of the queue for a new allocation
//!   (metric `ordo_sequence_allocations_overtaken_total`). The slices of one allocation are
//!   handed out in order and the floor rises past them, discarding buffered IDs below.
//!
//! The order of completion is thus never trusted: the check against `floor` alone keeps the
//! invariant, whatever the quorum layer does.
//!
//! The default is one allocation in flight. Measured on 2 quiet cores (`docs/benchmarks.md`,
//! same run): strict with 32 clients is CPU-bound (the machine 90-95% busy at about 0.9 ms of
//! CPU per quorum round, whatever its size), and one allocation serving every queued request
//! gives the largest rounds: 10.0k IDs/s against 8.6k with 2, 7.2-7.7k with 4 and 8. More in
//! flight pays where cores are idle and rounds, not CPU, are the limit.
//!
//! Strict requests stay linearizable: a direct request's IDs come from an allocation that starts
//! after the request arrived and completes before it returns (an overtaken request's new
//! allocation starts later still). Direct requests that arrive while that many
//! allocations are in flight wait for the next one to start, so concurrent strict requests on
//! one sidecar are batched, and the proposer folds the allocations it has queued into one round.
//!
//! Tests: `ranges_only_move_forward`, `a_direct_allocation_raises_the_floor`,
//! `one_allocation_serves_queued_directs_in_order_then_the_buffer`, and for pipelining
//! `an_overtaken_allocation_is_allocated_again_not_handed_out` (fails when the floor check is
//! removed) and `pipelined_allocations_completing_in_random_order_never_go_back` below; end to
//! end `e2e/tests/sequencer.rs::ids_from_one_sidecar_never_go_backwards` and
//! `no_id_twice_with_racing_range_sizes_and_strict`, checked by
//! `e2e/src/checker.rs::check_increasing_per_sidecar`.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Mutex, Notify};
use tokio::time::Instant;

use super::SeqError;
use crate::metrics::Metrics;

/// Where a buffer's ranges come from: the sequence's counter register
/// ([`super::RangeAllocator`]), or a scripted source in tests.
pub trait Allocate: Send + Sync + 'static {
    /// `n` contiguous IDs at or above `floor`, by `deadline`.
    fn allocate_by(
        &self,
        name: &str,
        n: u64,
        floor: u64,
        deadline: Instant,
    ) -> impl Future<Output = Result<Range<u64>, SeqError>> + Send;

    /// Deadline of one request.
    fn timeout(&self) -> Duration;
}

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
    /// Quorum allocations in flight (at most `RangeBuffer::allocations_in_flight`).
    in_flight: usize,
    /// One of them carries a refill of the buffer (at most one does).
    refilling: bool,
    /// Direct requests waiting for the next allocation, in arrival order.
    directs: Vec<Direct>,
    /// IDs wanted by requests waiting for a refill: the next refill is at least this large.
    waiting: u64,
    /// Largest request served from this buffer: refills hold several of them.
    largest: u64,
    /// Counts finished refills, so waiters can tell whether the one they waited for failed.
    refills: u64,
    failure: Option<(u64, SeqError)>,
    /// Every range handed out, in order (tests check it only goes up).
    #[cfg(test)]
    handed_out: Vec<Range<u64>>,
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
        #[cfg(test)]
        self.handed_out.push(r.clone());
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
pub struct RangeBuffer<A: Allocate> {
    name: String,
    range_size: u64,
    allocations_in_flight: usize,
    allocator: A,
    ranges: Mutex<Ranges>,
    refilled: Notify,
    metrics: Arc<Metrics>,
}

impl<A: Allocate> RangeBuffer<A> {
    /// An empty buffer.
    pub fn new(
        name: String,
        range_size: u64,
        allocations_in_flight: usize,
        allocator: A,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            name,
            range_size,
            allocations_in_flight: allocations_in_flight.max(1),
            allocator,
            ranges: Mutex::new(Ranges::default()),
            refilled: Notify::new(),
            metrics,
        }
    }

    /// Takes `count` contiguous IDs. Requests larger than a range are allocated directly.
    pub async fn take(self: &Arc<Self>, count: u64) -> Result<Range<u64>, SeqError> {
        if count > self.range_size {
            return self.direct(count, Instant::now() + self.allocator.timeout()).await;
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

    /// Starts a quorum allocation unless `allocations_in_flight` are in flight: every queued
    /// direct request, then a refill when the buffer is in use and no refill is in flight.
    fn allocate(self: &Arc<Self>, ranges: &mut Ranges) {
        if ranges.in_flight >= self.allocations_in_flight {
            return;
        }
        let directs = std::mem::take(&mut ranges.directs);
        let direct_ids = directs.iter().fold(0u64, |n, d| n.saturating_add(d.count));
        // Under more demand than one range, lease enough for everyone waiting at once; and when
        // callers take whole ranges at a time (an ordo-client lease as large as the range), hold
        // a few of them, so each caller does not cost a quorum round. Direct requests discard
        // the buffer below them, so the buffer is refilled with them whenever it is in use.
        let low = ranges.next.is_none() && ranges.current.end - ranges.current.start < self.range_size / 2 + 1;
        let refill =
            if !ranges.refilling && (ranges.waiting > 0 || (ranges.largest > 0 && (low || !directs.is_empty()))) {
                self.range_size.max(ranges.waiting).max(ranges.largest.saturating_mul(REQUESTS_PER_REFILL))
            } else {
                0
            };
        if directs.is_empty() && refill == 0 {
            return;
        }
        ranges.in_flight += 1;
        ranges.refilling |= refill > 0;
        let floor = ranges.install_floor();
        let size = direct_ids.saturating_add(refill);
        let deadline =
            directs.iter().map(|d| d.deadline).min().unwrap_or_else(|| Instant::now() + self.allocator.timeout());
        let me = self.clone();
        tokio::spawn(async move {
            let result = me.allocator.allocate_by(&me.name, size, floor, deadline).await;
            let mut ranges = me.ranges.lock().await;
            me.complete(&mut ranges, result, directs, refill);
            // Whatever arrived meanwhile (or was overtaken) goes in the next allocation.
            me.allocate(&mut ranges);
            drop(ranges);
            me.refilled.notify_waiters();
        });
    }

    /// Hands out the range of a finished allocation: `directs` in order, then `refill` IDs to
    /// the buffer; directs overtaken by a range already returned are queued again.
    fn complete(&self, ranges: &mut Ranges, result: Result<Range<u64>, SeqError>, directs: Vec<Direct>, refill: u64) {
        ranges.in_flight -= 1;
        if refill > 0 {
            ranges.refilling = false;
            ranges.refills += 1;
        }
        match result {
            Ok(r) => {
                if directs.is_empty() {
                    // A refill alone: installed below, above what the buffer holds.
                } else if r.start >= ranges.floor {
                    let mut at = r.start;
                    for d in directs {
                        #[cfg(test)]
                        ranges.handed_out.push(at..at + d.count);
                        let _ = d.reply.send(Ok(at..at + d.count));
                        at += d.count;
                    }
                    ranges.raise_floor(at);
                } else {
                    // Overtaken: an allocation that completed first returned IDs above this
                    // range. These IDs are a gap; the requests get a new allocation, first.
                    self.metrics.allocations_overtaken.inc();
                    let mut again = directs;
                    again.append(&mut ranges.directs);
                    ranges.directs = again;
                }
                if refill > 0 {
                    self.metrics.refills.inc();
                    ranges.failure = None;
                    // The refill is the tail of the range, after the directs' slices.
                    ranges.install(r.end.saturating_sub(refill)..r.end);
                }
            }
            Err(e) => {
                tracing::warn!(sequence = %self.name, error = %e, "allocation failed");
                for d in directs {
                    let _ = d.reply.send(Err(e.clone()));
                }
                if refill > 0 {
                    ranges.failure = Some((ranges.refills, e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex as StdMutex;

    use rand::{Rng, SeedableRng};

    /// An allocation the test answers by hand: (count, floor, where the range goes).
    type Call = (u64, u64, oneshot::Sender<Range<u64>>);

    /// Allocations that complete when, and with what, the test says.
    #[derive(Clone, Default)]
    struct Scripted(Arc<StdMutex<Vec<Call>>>);

    impl Allocate for Scripted {
        async fn allocate_by(&self, _: &str, n: u64, floor: u64, _: Instant) -> Result<Range<u64>, SeqError> {
            let (tx, rx) = oneshot::channel();
            self.0.lock().unwrap().push((n, floor, tx));
            rx.await.map_err(|_| SeqError::Timeout("dropped by the test".into()))
        }

        fn timeout(&self) -> Duration {
            Duration::from_secs(5)
        }
    }

    impl Scripted {
        /// Waits (bounded) until `n` allocations are pending, and takes them in call order.
        async fn pending(&self, n: usize) -> Vec<Call> {
            for _ in 0..10_000 {
                if self.0.lock().unwrap().len() >= n {
                    return self.0.lock().unwrap().drain(..).collect();
                }
                tokio::task::yield_now().await;
            }
            panic!("{n} allocations never started");
        }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn an_overtaken_allocation_is_allocated_again_not_handed_out() {
        let alloc = Scripted::default();
        let buf = Arc::new(RangeBuffer::new("s".into(), 10, 4, alloc.clone(), Arc::new(Metrics::new())));
        let a = tokio::spawn({
            let buf = buf.clone();
            async move { buf.direct(1, deadline()).await }
        });
        let first = alloc.pending(1).await;
        let b = tokio::spawn({
            let buf = buf.clone();
            async move { buf.direct(1, deadline()).await }
        });
        let second = alloc.pending(1).await;
        // Both are in flight at once (pipelined); the register applied A's first (50) but B's
        // answer arrives first (100).
        let [(_, _, to_a)] = <[Call; 1]>::try_from(first).ok().unwrap();
        let [(_, _, to_b)] = <[Call; 1]>::try_from(second).ok().unwrap();
        to_b.send(100..101).unwrap();
        assert_eq!(b.await.unwrap().unwrap(), 100..101);
        to_a.send(50..51).unwrap();
        // A's range lies below what B returned: A is allocated again, above it.
        let again = alloc.pending(1).await;
        let [(n, floor, to_a)] = <[Call; 1]>::try_from(again).ok().unwrap();
        assert_eq!(n, 1);
        assert!(floor >= 101, "the new allocation asks above everything returned, got floor {floor}");
        to_a.send(floor..floor + 1).unwrap();
        assert_eq!(a.await.unwrap().unwrap(), floor..floor + 1);
        assert_eq!(buf.metrics.allocations_overtaken.get(), 1);
    }

    #[tokio::test]
    async fn a_refill_keeps_the_rest_of_the_current_range() {
        let alloc = Scripted::default();
        let buf = Arc::new(RangeBuffer::new("s".into(), 10, 4, alloc.clone(), Arc::new(Metrics::new())));
        let first = tokio::spawn({
            let buf = buf.clone();
            async move { buf.take(1).await }
        });
        let [(n, _, tx)] = <[Call; 1]>::try_from(alloc.pending(1).await).ok().unwrap();
        tx.send(1..1 + n).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1..2);
        for i in 2..8 {
            assert_eq!(buf.take(1).await.unwrap(), i..i + 1);
        }
        // Half used: the next range is on its way; when it lands, the rest of this one is kept.
        let [(n, floor, tx)] = <[Call; 1]>::try_from(alloc.pending(1).await).ok().unwrap();
        tx.send(floor..floor + n).unwrap();
        for _ in 0..100 {
            if buf.ranges.lock().await.next.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(buf.take(1).await.unwrap(), 8..9, "IDs left in the current range are not skipped");
    }

    /// A counter register that applies each allocation after a random number of scheduler turns
    /// and answers after another: allocations in flight together complete in random order.
    #[derive(Clone)]
    struct Jittery {
        next: Arc<StdMutex<u64>>,
        rng: Arc<StdMutex<rand::rngs::StdRng>>,
    }

    impl Allocate for Jittery {
        async fn allocate_by(&self, _: &str, n: u64, floor: u64, _: Instant) -> Result<Range<u64>, SeqError> {
            let (apply, answer) = {
                let mut rng = self.rng.lock().unwrap();
                (rng.random_range(0..40u32), rng.random_range(0..40u32))
            };
            for _ in 0..apply {
                tokio::task::yield_now().await;
            }
            let r = {
                let mut next = self.next.lock().unwrap();
                let start = (*next).max(floor);
                *next = start + n;
                start..start + n
            };
            for _ in 0..answer {
                tokio::task::yield_now().await;
            }
            Ok(r)
        }

        fn timeout(&self) -> Duration {
            Duration::from_secs(5)
        }
    }

    #[tokio::test]
    async fn pipelined_allocations_completing_in_random_order_never_go_back() {
        for seed in 0..20u64 {
            let alloc = Jittery {
                next: Arc::new(StdMutex::new(1)),
                rng: Arc::new(StdMutex::new(rand::rngs::StdRng::seed_from_u64(seed))),
            };
            let buf = Arc::new(RangeBuffer::new("s".into(), 16, 4, alloc, Arc::new(Metrics::new())));
            // (ticket when the call started, ticket when it returned, range)
            let clock = Arc::new(AtomicU64::new(0));
            let log = Arc::new(StdMutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for c in 0..12u64 {
                let (buf, clock, log) = (buf.clone(), clock.clone(), log.clone());
                tasks.push(tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + c);
                    for _ in 0..60 {
                        let count = [1, 1, 3, 20][rng.random_range(0..4)];
                        let started = clock.fetch_add(1, Ordering::SeqCst);
                        let r = if rng.random_bool(0.3) {
                            buf.direct(count, deadline()).await
                        } else {
                            buf.take(count).await
                        }
                        .expect("allocation");
                        assert_eq!(r.end - r.start, count);
                        let returned = clock.fetch_add(1, Ordering::SeqCst);
                        log.lock().unwrap().push((started, returned, r));
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let log = log.lock().unwrap().clone();
            // In the order this sidecar handed them out, ranges only go up.
            let handed_out = buf.ranges.lock().await.handed_out.clone();
            assert_eq!(handed_out.len(), log.len());
            for w in handed_out.windows(2) {
                assert!(w[0].end <= w[1].start, "seed {seed}: {:?} handed out after {:?}", w[1], w[0]);
            }
            // And in real time: everything returned before a call started lies below its range.
            let mut by_return = log.clone();
            by_return.sort_by_key(|e| e.1);
            let mut highest: Vec<(u64, u64)> = Vec::new(); // (return ticket, highest end so far)
            for (_, returned, r) in &by_return {
                let end = highest.last().map_or(0, |h| h.1).max(r.end);
                highest.push((*returned, end));
            }
            for (started, _, r) in &log {
                let i = highest.partition_point(|(t, _)| t < started);
                if i > 0 {
                    let below = highest[i - 1].1;
                    assert!(r.start >= below, "seed {seed}: {r:?} starts below {below}, returned before it was asked");
                }
            }
            let mut all: Vec<Range<u64>> = log.iter().map(|e| e.2.clone()).collect();
            all.sort_by_key(|r| r.start);
            for w in all.windows(2) {
                assert!(w[0].end <= w[1].start, "seed {seed}: {:?} and {:?} overlap", w[0], w[1]);
            }
        }
    }

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
