//! Ballots: totally ordered, unique per proposer process, and with an immediate successor.
//!
//! A ballot is `(round, proposer, incarnation, step)`, ordered lexicographically:
//! - `incarnation` is chosen at random when a proposer process starts, so a proposer that
//!   restarts without remembering its rounds never reuses a ballot with another value (two
//!   values at one ballot would break Paxos's uniqueness argument);
//! - `step` numbers the rounds one proposer runs back to back without a new Prepare (the fast
//!   path and pipelining, see [`super::round`]). [`Ballot::next`] bumps only the step, so no
//!   other proposer's ballot lies strictly between a ballot and its successor. That adjacency is
//!   what makes a pipelined round safe: see the argument in [`super::round`].

use std::fmt;

/// A ballot; the zero ballot (round 0) is below all others.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// Round number; proposers pick one above every round they have seen.
    pub round: u64,
    /// Id of the proposer that owns this ballot (its member or pod name).
    pub proposer: String,
    /// Random id of the proposer's process, so ballots stay unique across restarts.
    pub incarnation: u64,
    /// Rounds run back to back by one proposer without a new Prepare.
    pub step: u64,
}

impl Ballot {
    /// A ballot of `proposer` at `round` (incarnation and step 0).
    pub fn new(round: u64, proposer: impl Into<String>) -> Self {
        Self { round, proposer: proposer.into(), incarnation: 0, step: 0 }
    }

    /// A fresh ballot of one proposer process: step 0 of `round`.
    pub fn of(round: u64, proposer: impl Into<String>, incarnation: u64) -> Self {
        Self { round, proposer: proposer.into(), incarnation, step: 0 }
    }

    /// True for the zero ballot (nothing promised or accepted).
    pub fn is_zero(&self) -> bool {
        self.round == 0
    }

    /// The immediate successor: the same proposer process, one step on. No other ballot lies
    /// strictly between `self` and `self.next()`.
    pub fn next(&self) -> Self {
        Self { step: self.step + 1, ..self.clone() }
    }

    /// True when both ballots belong to one chain: the same proposer process's rounds after one
    /// Prepare (they differ at most in their step).
    pub fn same_chain(&self, other: &Ballot) -> bool {
        self.round == other.round && self.proposer == other.proposer && self.incarnation == other.incarnation
    }

    /// True when `later` is the immediate successor of `self`.
    pub fn is_followed_by(&self, later: &Ballot) -> bool {
        *later == self.next()
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}#{:x}", self.round, self.step, self.proposer, self.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_round_then_proposer_then_incarnation_then_step() {
        assert!(Ballot::new(2, "a") > Ballot::new(1, "z"));
        assert!(Ballot::new(2, "b") > Ballot::new(2, "a"));
        assert!(Ballot::of(2, "a", 9) > Ballot::of(2, "a", 3));
        assert!(Ballot::default().is_zero());
        let b = Ballot::of(7, "p", 5);
        assert_eq!(b.next(), Ballot { step: 1, ..b.clone() });
        assert!(b.is_followed_by(&b.next()));
        assert!(!b.is_followed_by(&b.next().next()));
    }

    #[test]
    fn nothing_lies_between_a_ballot_and_its_successor() {
        // Any other proposer's ballot is either below `b` or above `b.next()`.
        let b = Ballot::of(7, "m-1", 5);
        for other in [
            Ballot::of(7, "m-0", u64::MAX),
            Ballot::of(7, "m-2", 0),
            Ballot::of(8, "m-0", 0),
            Ballot::of(6, "m-9", 1),
            Ballot::of(7, "m-1", 4),
            Ballot::of(7, "m-1", 6),
        ] {
            assert!(other < b || other > b.next(), "{other} lies between {b} and its successor");
        }
    }
}
