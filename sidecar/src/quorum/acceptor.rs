//! The acceptor's state machine: pure functions over a register's durable state.
//! Persistence and group commit live in [`super::store`].

use std::collections::HashMap;

use super::change::Versioned;
use super::transport::{KeyPage, ListedKey};
use super::Ballot;

/// Durable state of one register on one acceptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterState {
    /// Highest ballot promised.
    pub promised: Ballot,
    /// Ballot of the accepted value.
    pub accepted: Ballot,
    /// Accepted value; `None` for a register never written.
    pub value: Option<Vec<u8>>,
}

/// A member whose promise a proposer counted, with the incarnation that gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Voter {
    /// Member id.
    pub member: String,
    /// Incarnation (random id chosen when its data directory was created).
    pub incarnation: u64,
}

/// Reply to a Prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareReply {
    /// Promise given; the highest accepted ballot and its value.
    Promised { accepted: Ballot, value: Option<Vec<u8>> },
    /// A higher ballot was promised before.
    Rejected { promised: Ballot },
}

/// Reply to an Accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptReply {
    /// Value accepted (and `promise_next`, if any, promised), with this acceptor's fences at that
    /// moment (sorted by member): a proposer discounts other replies of the round from replaced
    /// incarnations (`round.rs`, "Lost data").
    Accepted { fences: Vec<Voter> },
    /// A higher ballot was promised before.
    Rejected { promised: Ballot },
    /// The round counted a promise from an incarnation that has since been replaced.
    StaleVoter {
        /// The member.
        member: String,
        /// The incarnation the round counted.
        counted: u64,
        /// The member's incarnation now.
        current: u64,
    },
}

/// Everything an acceptor knows: registers and the latest incarnation of each member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptorState {
    /// Registers by key.
    pub registers: HashMap<String, RegisterState>,
    /// Latest known incarnation of each member.
    pub fences: HashMap<String, u64>,
}

impl AcceptorState {
    /// Phase 1. Equal ballots are promised again (a retried message from the same proposer).
    /// Returns the reply and whether the state changed (must be persisted before replying).
    pub fn prepare(&mut self, key: &str, ballot: &Ballot) -> (PrepareReply, bool) {
        let reg = self.registers.entry(key.to_string()).or_default();
        if *ballot < reg.promised {
            return (PrepareReply::Rejected { promised: reg.promised.clone() }, false);
        }
        let changed = *ballot != reg.promised;
        reg.promised = ballot.clone();
        (PrepareReply::Promised { accepted: reg.accepted.clone(), value: reg.value.clone() }, changed)
    }

    /// Phase 2, with the optional promise of the proposer's next ballot.
    pub fn accept(
        &mut self,
        key: &str,
        ballot: &Ballot,
        value: Option<Vec<u8>>,
        promise_next: Option<&Ballot>,
        voters: &[Voter],
    ) -> (AcceptReply, bool) {
        for v in voters {
            if let Some(current) = self.fences.get(&v.member).filter(|inc| **inc != v.incarnation) {
                let stale =
                    AcceptReply::StaleVoter { member: v.member.clone(), counted: v.incarnation, current: *current };
                return (stale, false);
            }
        }
        let reg = self.registers.entry(key.to_string()).or_default();
        if *ballot < reg.promised {
            // A later round of the same chain got here first (the two accepts crossed on the
            // way): this acceptor holds a value that extends this one, which counts for it (see
            // `round.rs`, "Outcomes"). Nothing changes.
            if reg.accepted.same_chain(ballot) && reg.accepted.step > ballot.step {
                return (AcceptReply::Accepted { fences: self.fence_list() }, false);
            }
            return (AcceptReply::Rejected { promised: reg.promised.clone() }, false);
        }
        reg.promised = match promise_next {
            Some(next) if next > ballot => next.clone(),
            _ => ballot.clone(),
        };
        reg.accepted = ballot.clone();
        reg.value = value;
        (AcceptReply::Accepted { fences: self.fence_list() }, true)
    }

    /// The fences, sorted by member.
    pub fn fence_list(&self) -> Vec<Voter> {
        let mut v: Vec<Voter> =
            self.fences.iter().map(|(m, inc)| Voter { member: m.clone(), incarnation: *inc }).collect();
        v.sort_by(|a, b| a.member.cmp(&b.member));
        v
    }

    /// Records `member`'s latest incarnation. Returns whether the state changed.
    pub fn fence(&mut self, member: &str, incarnation: u64) -> bool {
        self.fences.insert(member.to_string(), incarnation) != Some(incarnation)
    }

    /// Installs a copied state (catch-up): keeps whichever accepted ballot is higher and the
    /// highest promise. Returns whether anything changed.
    pub fn merge_copy(&mut self, key: &str, copy: &RegisterState) -> bool {
        let reg = self.registers.entry(key.to_string()).or_default();
        let before = reg.clone();
        if copy.accepted > reg.accepted {
            reg.accepted = copy.accepted.clone();
            reg.value = copy.value.clone();
        }
        reg.promised = reg.promised.clone().max(copy.promised.clone()).max(reg.accepted.clone());
        *reg != before
    }
}

/// Up to `limit` keys under `prefix` after `after` (exclusive), in key order, with the state
/// of each one's accepted value (register listing; see [`super::register`]).
pub fn page_keys<'a>(
    registers: impl Iterator<Item = (&'a String, &'a RegisterState)>,
    prefix: &str,
    after: &str,
    limit: usize,
) -> KeyPage {
    let mut keys: Vec<(&String, &RegisterState)> =
        registers.filter(|(k, _)| k.starts_with(prefix) && k.as_str() > after).collect();
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let complete = keys.len() <= limit;
    let keys = keys
        .into_iter()
        .take(limit)
        .map(|(k, r)| ListedKey {
            key: k.clone(),
            accepted: r.accepted.clone(),
            live: matches!(Versioned::decode(r.value.as_deref()), Ok(Some(Versioned { value: Some(_), .. }))),
        })
        .collect();
    KeyPage { keys, complete }
}

/// Storage format of [`encode_register`]: 2 adds the ballots' incarnation and step.
const FORMAT: u8 = 2;

/// Encodes a register state for storage (versioned, length-prefixed).
pub fn encode_register(r: &RegisterState) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + r.value.as_ref().map_or(0, Vec::len));
    out.push(FORMAT);
    put_ballot(&mut out, &r.promised);
    put_ballot(&mut out, &r.accepted);
    match &r.value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    out
}

/// Decodes what [`encode_register`] wrote; `None` for corrupt input (never panics).
pub fn decode_register(mut b: &[u8]) -> Option<RegisterState> {
    // Format 1 (before ballots had an incarnation and a step) reads as incarnation 0, step 0.
    let format = take(&mut b, 1)?[0];
    if format != 1 && format != FORMAT {
        return None;
    }
    let promised = get_ballot(&mut b, format)?;
    let accepted = get_ballot(&mut b, format)?;
    let value = match take(&mut b, 1)? {
        [0] => None,
        [1] => {
            let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
            Some(take(&mut b, len)?.to_vec())
        }
        _ => return None,
    };
    b.is_empty().then_some(RegisterState { promised, accepted, value })
}

fn put_ballot(out: &mut Vec<u8>, b: &Ballot) {
    out.extend_from_slice(&b.round.to_le_bytes());
    out.extend_from_slice(&(b.proposer.len() as u16).to_le_bytes());
    out.extend_from_slice(b.proposer.as_bytes());
    out.extend_from_slice(&b.incarnation.to_le_bytes());
    out.extend_from_slice(&b.step.to_le_bytes());
}

fn get_ballot(b: &mut &[u8], format: u8) -> Option<Ballot> {
    let u64_at = |b: &mut &[u8]| take(b, 8).and_then(|x| x.try_into().ok()).map(u64::from_le_bytes);
    let round = u64_at(b)?;
    let len = u16::from_le_bytes(take(b, 2)?.try_into().ok()?) as usize;
    let proposer = String::from_utf8(take(b, len)?.to_vec()).ok()?;
    let (incarnation, step) = if format >= 2 { (u64_at(b)?, u64_at(b)?) } else { (0, 0) };
    Some(Ballot { round, proposer, incarnation, step })
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(r: u64, p: &str) -> Ballot {
        Ballot::new(r, p)
    }

    #[test]
    fn promise_then_reject_lower() {
        let mut s = AcceptorState::default();
        assert!(matches!(s.prepare("k", &b(2, "a")).0, PrepareReply::Promised { .. }));
        assert_eq!(s.prepare("k", &b(1, "z")).0, PrepareReply::Rejected { promised: b(2, "a") });
        assert_eq!(
            s.accept("k", &b(1, "z"), Some(vec![1]), None, &[]).0,
            AcceptReply::Rejected { promised: b(2, "a") }
        );
        assert_eq!(
            s.accept("k", &b(2, "a"), Some(vec![7]), Some(&b(3, "a")), &[]).0,
            AcceptReply::Accepted { fences: vec![] }
        );
        // The fast-path promise blocks a ballot between the two.
        assert!(matches!(s.accept("k", &b(2, "b"), Some(vec![9]), None, &[]).0, AcceptReply::Rejected { .. }));
        match s.prepare("k", &b(4, "b")).0 {
            PrepareReply::Promised { accepted, value } => {
                assert_eq!(accepted, b(2, "a"));
                assert_eq!(value, Some(vec![7]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_round_overtaken_by_its_own_chain_counts_and_changes_nothing() {
        let mut s = AcceptorState::default();
        let b0 = Ballot::of(4, "p", 9);
        let (b1, b2) = (b0.next(), b0.next().next());
        s.accept("k", &b0, Some(vec![1]), Some(&b1), &[]);
        // Round 2 arrives before round 1.
        assert_eq!(
            s.accept("k", &b2, Some(vec![3]), Some(&b2.next()), &[]).0,
            AcceptReply::Accepted { fences: vec![] }
        );
        assert_eq!(
            s.accept("k", &b1, Some(vec![2]), Some(&b2), &[]),
            (AcceptReply::Accepted { fences: vec![] }, false)
        );
        assert_eq!(s.registers["k"].value, Some(vec![3]));
        assert_eq!(s.registers["k"].accepted, b2);
        // Another chain (another incarnation of the same proposer) is refused as usual.
        let other = Ballot { step: 1, ..Ballot::of(4, "p", 8) };
        assert!(matches!(s.accept("k", &other, Some(vec![7]), None, &[]).0, AcceptReply::Rejected { .. }));
    }

    #[test]
    fn stale_voters_are_refused() {
        let mut s = AcceptorState::default();
        s.fence("m1", 2);
        let stale = [Voter { member: "m1".into(), incarnation: 1 }];
        assert_eq!(
            s.accept("k", &b(1, "p"), Some(vec![]), None, &stale).0,
            AcceptReply::StaleVoter { member: "m1".into(), counted: 1, current: 2 }
        );
        let fresh = [Voter { member: "m1".into(), incarnation: 2 }, Voter { member: "m2".into(), incarnation: 9 }];
        // The reply reports this acceptor's fences, so the proposer can discount other replies
        // from m1's replaced incarnation.
        assert_eq!(
            s.accept("k", &b(1, "p"), Some(vec![]), None, &fresh).0,
            AcceptReply::Accepted { fences: vec![Voter { member: "m1".into(), incarnation: 2 }] }
        );
    }

    #[test]
    fn merge_copy_keeps_highest() {
        let mut s = AcceptorState::default();
        s.accept("k", &b(5, "a"), Some(vec![5]), None, &[]);
        let older = RegisterState { promised: b(9, "x"), accepted: b(3, "b"), value: Some(vec![3]) };
        assert!(s.merge_copy("k", &older));
        assert_eq!(s.registers["k"].value, Some(vec![5]));
        assert_eq!(s.registers["k"].promised, b(9, "x"));
    }

    proptest! {
        #[test]
        fn codec_round_trips(round in any::<u64>(), p in "[a-z0-9-]{0,40}", ar in any::<u64>(), inc in any::<u64>(), step in any::<u64>(), v in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
            let accepted = Ballot { round: ar, proposer: "q".into(), incarnation: inc, step };
            let r = RegisterState { promised: b(round, &p), accepted, value: v };
            prop_assert_eq!(decode_register(&encode_register(&r)), Some(r));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_register(&bytes);
        }
    }
}
