//! Ballots: totally ordered, unique per proposer.

use std::fmt;

/// A ballot: ordered by round, then proposer id. The zero ballot (round 0) is below all others.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// Round number; proposers pick one above every round they have seen.
    pub round: u64,
    /// Id of the proposer that owns this ballot.
    pub proposer: String,
}

impl Ballot {
    /// A ballot of `proposer` at `round`.
    pub fn new(round: u64, proposer: impl Into<String>) -> Self {
        Self { round, proposer: proposer.into() }
    }

    /// True for the zero ballot (nothing promised or accepted).
    pub fn is_zero(&self) -> bool {
        self.round == 0
    }

    /// The same proposer's next ballot.
    pub fn next(&self) -> Self {
        Self { round: self.round + 1, proposer: self.proposer.clone() }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.round, self.proposer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_round_then_proposer() {
        assert!(Ballot::new(2, "a") > Ballot::new(1, "z"));
        assert!(Ballot::new(2, "b") > Ballot::new(2, "a"));
        assert!(Ballot::default().is_zero());
        assert_eq!(Ballot::new(7, "p").next(), Ballot::new(8, "p"));
    }
}
