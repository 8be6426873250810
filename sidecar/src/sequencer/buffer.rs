//! Per-sidecar double buffer of one sequence: the range being handed out plus the next one,
//! fetched in the background once the current range is half used.
//!
//! Invariant: every range handed out starts at or after the end of the previous one, so IDs
//! from one sidecar increase. A range that arrives out of order (a background refill that lost
//! the race to a synchronous one) is dropped, never handed out: gaps are allowed, going back is
//! not.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};

use super::{RangeAllocator, SeqError};
use crate::metrics::Metrics;
use crate::quorum::transport::Peers;

#[derive(Default)]
struct Ranges {
    current: Range<u64>,
    next: Option<Range<u64>>,
    refilling: bool,
}

impl Ranges {
    /// Adds a freshly allocated range, unless it lies before what was already handed out.
    fn install(&mut self, r: Range<u64>) {
        let floor = self.next.as_ref().map_or(self.current.end, |n| n.end);
        if r.start < floor.max(self.current.end) {
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
        Some(r)
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

    /// Takes `count` contiguous IDs, refilling as needed.
    pub async fn take(self: &Arc<Self>, count: u64) -> Result<Range<u64>, SeqError> {
        loop {
            let mut ranges = self.ranges.lock().await;
            if let Some(r) = ranges.take(count) {
                let left = ranges.current.end - ranges.current.start;
                if left < self.range_size / 2 + 1 && ranges.next.is_none() && !ranges.refilling {
                    ranges.refilling = true;
                    let me = self.clone();
                    tokio::spawn(async move { me.refill().await });
                }
                return Ok(r);
            }
            if ranges.refilling {
                // Wait for the background refill rather than allocating twice.
                let notified = self.refilled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                drop(ranges);
                notified.await;
                continue;
            }
            // Empty and nothing in flight: allocate now, large enough for this request.
            let r = self.allocator.allocate(&self.name, self.range_size.max(count)).await?;
            self.metrics.refills.inc();
            ranges.install(r);
        }
    }

    async fn refill(&self) {
        let result = self.allocator.allocate(&self.name, self.range_size).await;
        let mut ranges = self.ranges.lock().await;
        ranges.refilling = false;
        match result {
            Ok(r) => {
                self.metrics.refills.inc();
                ranges.install(r);
            }
            Err(e) => tracing::warn!(sequence = %self.name, error = %e, "background refill failed"),
        }
        drop(ranges);
        self.refilled.notify_waiters();
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
        assert_eq!(r.take(1), None);
        r.install(50..200);
        assert_eq!(r.take(100), Some(50..150));
    }
}
