//! One CASPaxos round: the Prepare phase, the Accept phase, and gathering replies from members.
//!
//! # Back-to-back and pipelined rounds, and why they are safe
//!
//! A round that ran Prepare at ballot `b0 = (round, proposer, incarnation, 0)` proposes
//! `v1 = f1(v0)` at `b0`, where `v0` is the value of the highest accepted ballot in a read quorum
//! of promises: the textbook rule, so `v1` is *safe* at `b0` (every value chosen at a lower ballot
//! is one `v1` builds on). The proposer's next round does not run Prepare again: it proposes
//! `v2 = f2(v1)` at `b0.next()`, the next one `f3(v2)` at `b0.next().next()`, and so on, and it may
//! send round `k+1` before round `k` was acknowledged (up to [`super::proposer`]'s pipeline depth).
//!
//! Claim: if `vk` was proposed at ballot `bk`, then `f(vk)` may be proposed at `bk.next()`.
//! A value is safe at ballot `c` when every value chosen at a ballot below `c` is one it builds on.
//! Ballots below `bk.next()` are ballots below `bk`, plus `bk` itself, because **no ballot lies
//! strictly between `bk` and `bk.next()`** ([`super::Ballot::next`] bumps only the step of the
//! same proposer process, and ballots are unique per process). `vk` is safe at `bk` (induction;
//! the base is the Prepare rule above), and the only value that can be chosen at `bk` is `vk`
//! (one value per ballot). So `vk` is safe at `bk.next()`, and `f(vk)` builds on it. Acceptors
//! need no new check: they accept `bk.next()` unless they promised a higher ballot.
//!
//! Adjacency is the condition that matters. The naive scheme, pipelining at `(round + 1,
//! proposer)`, is unsafe even when acceptors take round `k+1` only if they accepted round `k`
//! (a "conditional accept"): with members A, B, C, proposer P's accept at `(5, P)` reaches only A
//! (which also promises `(6, P)`), proposer Q > P prepares `(5, Q)` on B and C and gets `w` chosen
//! there; A takes P's pipelined `(6, P)` because it did accept `(5, P)`; a later Prepare on
//! {A, B} sees `(6, P)` as the highest accepted ballot and adopts P's value: `w` is lost. With
//! adjacent ballots, `(5, Q)` is above `(5, P, _, 1)`, so the later Prepare picks `w`.
//! `sidecar/tests/quorum_sim.rs` runs pipelined proposers with the successor made non-adjacent
//! and asserts that the checker catches overlapping ranges, and with it adjacent that it never does.
//!
//! Outcomes: if round `j` is chosen, every earlier round of the chain is part of the chosen
//! history (`vj` applies their changes in order), so their callers are answered with the
//! outcomes computed when they were sent, even if their own replies were lost
//! ([`super::proposer`] resolves rounds in order). Accepts of one chain may cross on the way; an
//! acceptor that already accepted a later step of the chain answers an earlier step's accept
//! with "accepted" and changes nothing. That counts safely: say a write quorum Q holds, for round
//! `k`, either `(bk, vk)` or a later step of the chain (values that extend `vk`). Every ballot `c`
//! of a Prepare above `bk` is above the whole chain (it has a higher round, or the same round and
//! a higher proposer process), so a member of Q that promised `c` first would have refused the
//! chain's accept; hence each member of `c`'s read quorum in Q reports an accepted ballot at or
//! above `bk`, and by induction on ballots every value proposed above `bk` extends `vk`.
//!
//! **Lost data**: accepts carry the incarnations of the members whose promises the chain's
//! Prepare counted ([`super::catchup`]), so a chain rooted in a promise of a wiped member's old
//! incarnation cannot gather a write quorum once that member is fenced.
//!
//! A round must not count an *accept* of a wiped member's old incarnation either, once that
//! member has caught up: its copy may have missed the value (the accept reached the old
//! incarnation before the wipe and the rest of the quorum only after the copy read the
//! register), so nothing would hold it. Every "accepted" reply carries the replier's fences as
//! of that accept, and the round counts no reply from an incarnation another reply's fence says
//! was replaced ([`counted_accepts`]). Why that suffices: let `Q` be the counted quorum, with the
//! old incarnation `m` in it. The copy's sources meet every write quorum outside `m`
//! ([`super::catchup`]: `|sources| + W > |S|`), so some source `c` is in `Q`, and `c` was fenced
//! before its walk read the register. If `c` accepted before that read, the copy holds the value
//! (or a later one). Otherwise `c` accepted after its fence, so its reply carries the fence and
//! `m` is not counted. Shown by
//! `sidecar/tests/catchup_sim.rs::an_accept_of_the_lost_incarnation_counted_after_the_copy_is_not_lost`,
//! which fails when [`counted_accepts`] ignores the fences.

use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::acceptor::{AcceptReply, PrepareReply, Voter};
use super::transport::{PeerError, Peers};
use super::Ballot;
use crate::membership::{Member, MembersFile};

/// Where a chain of rounds stands: the ballot of the last round sent, the value it proposed, and
/// the promises the chain's Prepare counted. The next round proposes at `ballot.next()`.
#[derive(Debug, Clone)]
pub struct Tip {
    /// Configuration epoch the chain runs in.
    pub epoch: u64,
    /// Ballot of the last round sent.
    pub ballot: Ballot,
    /// The value that round proposes.
    pub value: Option<Vec<u8>>,
    /// Incarnations whose promises the chain's Prepare counted.
    pub voters: Vec<Voter>,
}

/// Why a phase did not reach its quorum, with the true figures of the last attempt.
#[derive(Debug, Clone)]
pub struct RoundFailure {
    /// Pre-empted by a higher ballot (retry after backoff), rather than members not answering.
    pub conflict: bool,
    /// Members that answered.
    pub answered: usize,
    /// Members asked.
    pub total: usize,
    /// Who answered what.
    pub detail: String,
    /// Highest round number seen in a refusal (the next ballot goes above it).
    pub seen_round: u64,
    /// Proposer holding the higher promise, if one was seen.
    pub holder: Option<String>,
}

/// Phase 1 at `ballot`: on success, the value of the highest accepted ballot in a read quorum of
/// promises and the promises counted.
pub async fn prepare<P: Peers>(
    peers: &P,
    cfg: &MembersFile,
    key: &str,
    ballot: &Ballot,
    deadline: Instant,
) -> Result<(Option<Vec<u8>>, Vec<Voter>), RoundFailure> {
    let members: Vec<Member> = cfg.all_members().into_iter().cloned().collect();
    let epoch = cfg.epoch;
    let replies = gather(
        &members,
        deadline,
        |m, t| async move { peers.prepare(m, epoch, key, ballot, t).await },
        |oks: &[&str]| cfg.is_read_quorum(oks.iter().copied()),
        |replies| {
            replies
                .iter()
                .filter(|(_, r)| matches!(r, (PrepareReply::Promised { .. }, _)))
                .map(|(id, _)| id.clone())
                .collect()
        },
        |r| matches!(r, (PrepareReply::Rejected { .. }, _)),
    )
    .await;
    let mut best: Option<(Ballot, Option<Vec<u8>>)> = None;
    let mut voters = Vec::new();
    let mut seen = Refusals::default();
    for (id, r) in &replies.replies {
        match r {
            (PrepareReply::Promised { accepted, value }, inc) => {
                seen.round = seen.round.max(accepted.round);
                voters.push(Voter { member: id.clone(), incarnation: *inc });
                if best.as_ref().is_none_or(|(b, _)| accepted > b) {
                    best = Some((accepted.clone(), value.clone()));
                }
            }
            (PrepareReply::Rejected { promised }, _) => seen.note(promised),
        }
    }
    if !cfg.is_read_quorum(voters.iter().map(|v| v.member.as_str())) {
        return Err(replies.failure("prepare", voters.len(), members.len(), seen));
    }
    Ok((best.and_then(|(_, v)| v), voters))
}

/// Phase 2: asks every member to accept `value` at `ballot` (promising `ballot.next()`, so that
/// acceptors refuse nothing the chain's next round sends). On success, the members that accepted.
pub async fn accept<P: Peers>(
    peers: &P,
    cfg: &MembersFile,
    key: &str,
    ballot: &Ballot,
    value: Option<&[u8]>,
    voters: &[Voter],
    deadline: Instant,
) -> Result<Vec<Voter>, RoundFailure> {
    let members: Vec<Member> = cfg.all_members().into_iter().cloned().collect();
    let epoch = cfg.epoch;
    let next = ballot.next();
    let replies = gather(
        &members,
        deadline,
        |m, t| {
            let next = &next;
            async move { peers.accept(m, epoch, key, ballot, value, Some(next), voters, t).await }
        },
        |oks: &[&str]| cfg.is_write_quorum(oks.iter().copied()),
        |replies| counted_accepts(replies).into_iter().map(|v| v.member).collect(),
        |r| !matches!(r, (AcceptReply::Accepted { .. }, _)),
    )
    .await;
    let accepted = counted_accepts(&replies.replies);
    let mut seen = Refusals::default();
    for (_, r) in &replies.replies {
        match r {
            (AcceptReply::Accepted { .. }, _) => {}
            (AcceptReply::Rejected { promised }, _) => seen.note(promised),
            (AcceptReply::StaleVoter { .. }, _) => seen.conflict = true,
        }
    }
    if !cfg.is_write_quorum(accepted.iter().map(|v| v.member.as_str())) {
        return Err(replies.failure("accept", accepted.len(), members.len(), seen));
    }
    Ok(accepted)
}

/// The accepts a round may count: every "accepted" reply except those from an incarnation that
/// another accepted reply's fences say was replaced (the member lost its data since; see
/// "Lost data" above). A fence that differs from the replier's incarnation in either direction
/// discounts it: incarnations are random, so an older fence cannot be told from a newer one,
/// and discounting is always safe (the round may then need another member's accept).
pub fn counted_accepts(replies: &[(String, (AcceptReply, u64))]) -> Vec<Voter> {
    let fenced = |member: &str, incarnation: u64| {
        replies.iter().any(|(_, (r, _))| match r {
            AcceptReply::Accepted { fences } => {
                fences.iter().any(|f| f.member == member && f.incarnation != incarnation)
            }
            _ => false,
        })
    };
    replies
        .iter()
        .filter(|(id, (r, inc))| matches!(r, AcceptReply::Accepted { .. }) && !fenced(id, *inc))
        .map(|(id, (_, inc))| Voter { member: id.clone(), incarnation: *inc })
        .collect()
}

/// Higher ballots seen in refusals.
#[derive(Default)]
struct Refusals {
    conflict: bool,
    round: u64,
    holder: Option<Ballot>,
}

impl Refusals {
    fn note(&mut self, promised: &Ballot) {
        self.conflict = true;
        self.round = self.round.max(promised.round);
        if self.holder.as_ref().is_none_or(|h| promised > h) {
            self.holder = Some(promised.clone());
        }
    }
}

/// Replies and failures of one phase.
struct Gathered<T> {
    replies: Vec<(String, T)>,
    failures: Vec<(String, PeerError)>,
    timed_out: usize,
}

impl<T> Gathered<T> {
    fn failure(&self, phase: &str, oks: usize, total: usize, seen: Refusals) -> RoundFailure {
        let answered = self.replies.len();
        let mut detail = format!("{answered} of {total} members answered the {phase} phase ({oks} in favour)");
        for (id, e) in &self.failures {
            detail.push_str(&format!("; {id}: {e}"));
        }
        if self.timed_out > 0 {
            detail.push_str(&format!("; {} did not answer before the deadline", self.timed_out));
        }
        if let Some(h) = &seen.holder {
            detail.push_str(&format!("; pre-empted by ballot {h}"));
        } else if seen.conflict {
            detail.push_str("; a promise counted by this round came from a member that has since lost its data");
        }
        RoundFailure {
            // Retrying beats reporting members as unreachable when every refusal was a conflict.
            conflict: seen.conflict && self.failures.is_empty() && self.timed_out == 0,
            answered,
            total,
            detail,
            seen_round: seen.round,
            holder: seen.holder.map(|b| b.proposer),
        }
    }
}

/// Calls every member at once and returns as soon as `enough` holds for the members `counted`
/// picks from the replies so far, when a reply shows a higher ballot (the round is pre-empted:
/// retrying beats waiting for slow members), when a quorum is out of reach, or at the deadline.
async fn gather<'a, T, F, Fut>(
    members: &'a [Member],
    deadline: Instant,
    call: F,
    enough: impl Fn(&[&str]) -> bool,
    counted: impl Fn(&[(String, T)]) -> Vec<String>,
    preempted: impl Fn(&T) -> bool,
) -> Gathered<T>
where
    F: Fn(&'a Member, Duration) -> Fut,
    Fut: Future<Output = Result<T, PeerError>>,
{
    let timeout = deadline.saturating_duration_since(Instant::now());
    let mut calls: FuturesUnordered<_> = members
        .iter()
        .map(|m| {
            let fut = call(m, timeout);
            async move { (m.id.as_str(), fut.await) }
        })
        .collect();
    let mut out = Gathered { replies: Vec::new(), failures: Vec::new(), timed_out: 0 };
    // Members that have not answered yet: once even all of them could not make a quorum,
    // stop waiting (a frozen member must not hold a doomed round until the deadline).
    let mut undecided: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            next = calls.next() => {
                let Some((id, r)) = next else { break };
                undecided.retain(|u| *u != id);
                match r {
                    Ok(r) => {
                        let stop = preempted(&r);
                        out.replies.push((id.to_string(), r));
                        if stop {
                            break;
                        }
                    }
                    Err(e) => out.failures.push((id.to_string(), e)),
                }
                let oks = counted(&out.replies);
                let oks: Vec<&str> = oks.iter().map(String::as_str).collect();
                if enough(&oks) {
                    break;
                }
                let best_case: Vec<&str> = oks.iter().chain(undecided.iter()).copied().collect();
                if !enough(&best_case) {
                    break;
                }
            },
            _ = &mut sleep => {
                out.timed_out = calls.len();
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(id: &str, inc: u64, fences: &[(&str, u64)]) -> (String, (AcceptReply, u64)) {
        let fences = fences.iter().map(|(m, i)| Voter { member: m.to_string(), incarnation: *i }).collect();
        (id.to_string(), (AcceptReply::Accepted { fences }, inc))
    }

    #[test]
    fn an_accept_from_a_replaced_incarnation_is_not_counted() {
        let ids = |v: Vec<Voter>| v.into_iter().map(|v| v.member).collect::<Vec<_>>();
        // m0 answered from incarnation 7; m2 knows m0 is 9 now: m0 does not count.
        let replies = vec![accepted("m0", 7, &[]), accepted("m2", 3, &[("m0", 9)])];
        assert_eq!(ids(counted_accepts(&replies)), ["m2"]);
        // A fence naming the incarnation that answered changes nothing.
        let replies = vec![accepted("m0", 9, &[]), accepted("m2", 3, &[("m0", 9)])];
        assert_eq!(ids(counted_accepts(&replies)), ["m0", "m2"]);
        // Refusals are never counted, and their (absent) fences discount nothing.
        let refused = ("m1".to_string(), (AcceptReply::Rejected { promised: Ballot::new(9, "q") }, 1));
        let replies = vec![accepted("m0", 7, &[]), refused];
        assert_eq!(ids(counted_accepts(&replies)), ["m0"]);
    }
}
