//! Member leases, from both sides, on the monotonic clock (`tokio::time::Instant`); no wall
//! clock is ever compared between sidecars.
//!
//! - The holder ([`HolderLease`]) counts its right from the *send* time of its last
//!   acknowledged renewal: `right_end = sent + lease - margin`. A renewal whose outcome is
//!   unknown extends nothing.
//! - An observer ([`Observed`]) counts from the moment it *first read* a version of the member
//!   record, which is after that version's write was sent: it may declare the member expired at
//!   `first_seen + lease + margin`, and only by a compare-and-set at that version.
//!
//! So the holder's right ends `2 * margin` (on its clock) before any observer may act, which
//! absorbs a relative clock rate error up to `margin / lease` (see the module docs of
//! [`super`]).

use std::time::Duration;

use tokio::time::Instant;

/// Lease timing of a divider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Lease length.
    pub lease: Duration,
    /// Drift margin, taken off on the holder's side and added on the observer's.
    pub margin: Duration,
}

impl LeaseTiming {
    /// Checks that the margin leaves the holder a usable right.
    pub fn validate(&self) -> Result<(), String> {
        if self.margin * 3 >= self.lease {
            return Err(format!(
                "the drift margin ({:?}) must be less than a third of the lease ({:?})",
                self.margin, self.lease
            ));
        }
        Ok(())
    }
}

/// The holder's view of its own lease.
#[derive(Debug, Clone, Copy)]
pub struct HolderLease {
    timing: LeaseTiming,
    right_end: Option<Instant>,
}

impl HolderLease {
    /// The lease and margin it runs with.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// A lease with no right yet.
    pub fn new(timing: LeaseTiming) -> Self {
        Self { timing, right_end: None }
    }

    /// A renewal sent at `sent` was acknowledged.
    pub fn renewed(&mut self, sent: Instant) {
        let end = sent + self.timing.lease - self.timing.margin;
        self.right_end = Some(self.right_end.map_or(end, |e| e.max(end)));
    }

    /// When the holder's right ends (`None`: it never had one).
    pub fn right_end(&self) -> Option<Instant> {
        self.right_end
    }

    /// How long the right lasts from `now` (zero once it ended).
    pub fn valid_for(&self, now: Instant) -> Duration {
        self.right_end.map_or(Duration::ZERO, |e| e.saturating_duration_since(now))
    }

    /// True once the right has ended: every key must be stopped.
    pub fn ended(&self, now: Instant) -> bool {
        self.right_end.is_none_or(|e| now >= e)
    }
}

/// An observer's view of another member's record version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The version last read.
    pub version: u64,
    /// When this observer first read it.
    pub first_seen: Instant,
}

impl Observed {
    /// Records a read of `version` at `now`; the clock restarts when the version moved.
    pub fn saw(prev: Option<Observed>, version: u64, now: Instant) -> Observed {
        match prev {
            Some(p) if p.version == version => p,
            _ => Observed { version, first_seen: now },
        }
    }

    /// True when the version has been unchanged for `lease + margin`: the holder's right has
    /// ended (the caller still has to fence it with a compare-and-set at `version`).
    pub fn expired(&self, now: Instant, timing: LeaseTiming) -> bool {
        now >= self.expires_at(timing)
    }

    /// The first moment [`Observed::expired`] holds (if the version does not move).
    pub fn expires_at(&self, timing: LeaseTiming) -> Instant {
        self.first_seen + timing.lease + timing.margin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: LeaseTiming = LeaseTiming { lease: Duration::from_millis(3000), margin: Duration::from_millis(300) };

    #[test]
    fn the_holder_stops_before_any_observer_may_expire_it() {
        let t0 = Instant::now();
        let mut h = HolderLease::new(T);
        assert!(h.ended(t0), "no right before the first renewal");
        // Sent at t0, written at t0 + 50 ms, first read by the observer at t0 + 60 ms.
        h.renewed(t0);
        let o = Observed::saw(None, 5, t0 + Duration::from_millis(60));
        let mut t = t0;
        while !h.ended(t) {
            assert!(!o.expired(t, T), "observer may expire at {:?} while the holder holds", t - t0);
            t += Duration::from_millis(10);
        }
        // The gap is the two margins.
        let mut u = t;
        while !o.expired(u, T) {
            u += Duration::from_millis(10);
        }
        assert!(u - t >= 2 * T.margin, "gap {:?}", u - t);
    }

    #[test]
    fn an_older_renewal_acknowledged_late_does_not_shorten_the_right() {
        let t0 = Instant::now();
        let mut h = HolderLease::new(T);
        h.renewed(t0 + Duration::from_millis(500));
        h.renewed(t0);
        assert_eq!(h.right_end(), Some(t0 + Duration::from_millis(500) + T.lease - T.margin));
        assert_eq!(h.valid_for(t0 + Duration::from_secs(60)), Duration::ZERO);
    }

    #[test]
    fn a_moved_version_restarts_the_observer_clock() {
        let t0 = Instant::now();
        let o = Observed::saw(None, 1, t0);
        let same = Observed::saw(Some(o), 1, t0 + Duration::from_secs(2));
        assert_eq!(same.first_seen, t0);
        let moved = Observed::saw(Some(same), 2, t0 + Duration::from_secs(3));
        assert!(!moved.expired(t0 + Duration::from_secs(4), T));
        assert!(same.expired(t0 + T.lease + T.margin, T));
        assert!(LeaseTiming { lease: Duration::from_secs(1), margin: Duration::from_millis(400) }.validate().is_err());
    }
}
