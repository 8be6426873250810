//! The proposer: runs CASPaxos rounds, batching concurrent changes of one register into one
//! round and retrying conflicts with jittered exponential backoff until the caller's deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::acceptor::{AcceptReply, PrepareReply, Voter};
use super::transport::{PeerError, Peers};
use super::Ballot;
use crate::membership::{Member, MembersFile};
use crate::metrics::Metrics;

/// Most changes folded into one round.
const MAX_BATCH: usize = 4096;
/// A register's worker exits after this long without requests.
const WORKER_IDLE: Duration = Duration::from_secs(30);
/// Backoff bounds after a failed round.
const BACKOFF_BASE: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// A change to a register's value, applied by the proposer to the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Leave the value as it is (a linearizable read).
    Read,
    /// Treat the value as a big-endian u64 counter (absent = `start`) and add `n`.
    Add {
        /// Amount to add.
        n: u64,
        /// Value of an absent register.
        start: u64,
    },
    /// Set `new` if the value equals `expect` (`None` = absent).
    CompareAndSet {
        /// Expected current value.
        expect: Option<Vec<u8>>,
        /// Value to set.
        new: Vec<u8>,
    },
}

/// What one change saw and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Value before the change.
    pub before: Option<Vec<u8>>,
    /// Value after the change (equal to `before` when not applied).
    pub after: Option<Vec<u8>>,
    /// False for a failed compare-and-set.
    pub applied: bool,
}

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// No quorum answered before the deadline.
    #[error("quorum unavailable: {detail}")]
    Unavailable {
        /// Members that answered in the last attempt.
        answered: usize,
        /// Members asked.
        total: usize,
        /// Human-readable account of who answered what.
        detail: String,
    },
    /// The change cannot apply to the current value.
    #[error("{0}")]
    Invalid(String),
    /// This sidecar is shutting down.
    #[error("shutting down")]
    Closed,
}

/// Decodes a counter register value.
pub fn decode_u64(v: Option<&[u8]>) -> Option<u64> {
    v.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes)
}

impl Change {
    fn apply(&self, current: Option<&[u8]>) -> Result<Outcome, ChangeError> {
        let before = current.map(<[u8]>::to_vec);
        match self {
            Change::Read => Ok(Outcome {
                after: before.clone(),
                before,
                applied: true,
            }),
            Change::Add { n, start } => {
                let x = match current {
                    None => *start,
                    Some(_) => decode_u64(current)
                        .ok_or_else(|| ChangeError::Invalid("register does not hold a counter".into()))?,
                };
                let y = x
                    .checked_add(*n)
                    .ok_or_else(|| ChangeError::Invalid("counter would overflow u64".into()))?;
                Ok(Outcome {
                    before,
                    after: Some(y.to_be_bytes().to_vec()),
                    applied: true,
                })
            }
            Change::CompareAndSet { expect, new } => {
                if expect.as_deref() == current {
                    Ok(Outcome {
                        before,
                        after: Some(new.clone()),
                        applied: true,
                    })
                } else {
                    Ok(Outcome {
                        after: before.clone(),
                        before,
                        applied: false,
                    })
                }
            }
        }
    }
}

struct Pending {
    change: Change,
    deadline: Instant,
    reply: oneshot::Sender<Result<Outcome, ChangeError>>,
}

/// Runs changes against the registers of the configured members.
pub struct Proposer<P: Peers> {
    inner: Arc<Inner<P>>,
}

impl<P: Peers> Clone for Proposer<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<P> {
    id: String,
    peers: Arc<P>,
    config: watch::Receiver<Arc<MembersFile>>,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
    metrics: Arc<Metrics>,
}

/// The fast path left by a round whose accept also promised the next ballot on a read quorum.
struct FastPath {
    epoch: u64,
    ballot: Ballot,
    value: Option<Vec<u8>>,
    voters: Vec<Voter>,
}

enum RoundError {
    Conflict,
    Unavailable {
        answered: usize,
        total: usize,
        detail: String,
    },
}

impl<P: Peers> Proposer<P> {
    /// A proposer with id `id` (unique among proposers: the member or pod name).
    pub fn new(id: String, peers: Arc<P>, config: watch::Receiver<Arc<MembersFile>>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                id,
                peers,
                config,
                workers: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// Applies `change` to register `key` through a quorum, waiting at most until `deadline`.
    pub async fn change(&self, key: &str, change: Change, deadline: Instant) -> Result<Outcome, ChangeError> {
        let (reply, rx) = oneshot::channel();
        let mut pending = Pending {
            change,
            deadline,
            reply,
        };
        loop {
            let tx = {
                let mut workers = self.inner.workers.lock().expect("workers lock");
                match workers.get(key) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        workers.insert(key.to_string(), tx.clone());
                        tokio::spawn(run_worker(self.inner.clone(), key.to_string(), rx));
                        tx
                    }
                }
            };
            match tx.send(pending) {
                Ok(()) => break,
                // The worker retired between lookup and send: start another.
                Err(mpsc::error::SendError(p)) => pending = p,
            }
        }
        rx.await.unwrap_or(Err(ChangeError::Closed))
    }
}

async fn run_worker<P: Peers>(inner: Arc<Inner<P>>, key: String, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut fast: Option<FastPath> = None;
    let mut max_round = 0u64;
    loop {
        let first = match tokio::time::timeout(WORKER_IDLE, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => {
                let mut workers = inner.workers.lock().expect("workers lock");
                match rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => {
                        workers.remove(&key);
                        return;
                    }
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut attempt = 0u32;
        let mut last = ChangeError::Unavailable {
            answered: 0,
            total: 0,
            detail: "deadline passed before the first attempt".into(),
        };
        loop {
            let now = Instant::now();
            let (live, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.deadline > now);
            for p in expired {
                let _ = p.reply.send(Err(last.clone()));
            }
            batch = live;
            if batch.is_empty() {
                break;
            }
            let deadline = batch.iter().map(|p| p.deadline).max().expect("non-empty");
            let started = Instant::now();
            let result = round(&inner, &key, &batch, &mut fast, &mut max_round, deadline).await;
            inner
                .metrics
                .observe_round(started.elapsed(), result.is_ok(), batch.len());
            match result {
                Ok(outcomes) => {
                    for (p, o) in batch.drain(..).zip(outcomes) {
                        let _ = p.reply.send(o);
                    }
                    break;
                }
                Err(e) => {
                    last = match e {
                        RoundError::Conflict => {
                            inner.metrics.conflicts.inc();
                            ChangeError::Unavailable {
                                answered: 0,
                                total: 0,
                                detail: "rounds kept conflicting with other proposers until the deadline".into(),
                            }
                        }
                        RoundError::Unavailable {
                            answered,
                            total,
                            detail,
                        } => ChangeError::Unavailable {
                            answered,
                            total,
                            detail,
                        },
                    };
                    attempt = attempt.saturating_add(1);
                    let cap = BACKOFF_BASE.saturating_mul(1 << attempt.min(12)).min(BACKOFF_MAX);
                    let pause = rand::rng().random_range(Duration::ZERO..=cap);
                    let earliest = batch.iter().map(|p| p.deadline).min().expect("non-empty");
                    tokio::time::sleep_until((Instant::now() + pause).min(earliest)).await;
                }
            }
        }
    }
}

/// Applies the batch's changes in order to `current`; returns the new value and each outcome.
fn apply_batch(batch: &[Pending], current: Option<Vec<u8>>) -> (Option<Vec<u8>>, Vec<Result<Outcome, ChangeError>>) {
    let mut value = current;
    let outcomes = batch
        .iter()
        .map(|p| {
            let o = p.change.apply(value.as_deref());
            if let Ok(o) = &o {
                value = o.after.clone();
            }
            o
        })
        .collect();
    (value, outcomes)
}

async fn round<P: Peers>(
    inner: &Inner<P>,
    key: &str,
    batch: &[Pending],
    fast: &mut Option<FastPath>,
    max_round: &mut u64,
    deadline: Instant,
) -> Result<Vec<Result<Outcome, ChangeError>>, RoundError> {
    let cfg = inner.config.borrow().clone();
    let members: Vec<Member> = cfg.all_members().into_iter().cloned().collect();
    let epoch = cfg.epoch;

    // Phase 1, unless the previous round left a promise of this ballot on a read quorum.
    let (ballot, current, voters) = match fast.take().filter(|f| f.epoch == epoch) {
        Some(f) => (f.ballot, f.value, f.voters),
        None => {
            *max_round += 1;
            let ballot = Ballot::new(*max_round, inner.id.clone());
            let peers = &inner.peers;
            let replies = gather(
                &members,
                deadline,
                |m, t| {
                    let ballot = ballot.clone();
                    async move { peers.prepare(m, epoch, key, &ballot, t).await }
                },
                |oks: &[&str]| cfg.is_read_quorum(oks.iter().copied()),
                |r| matches!(r, (PrepareReply::Promised { .. }, _)),
            )
            .await;
            let mut best: Option<(Ballot, Option<Vec<u8>>)> = None;
            let mut voters = Vec::new();
            let mut conflict = false;
            for (id, r) in &replies.replies {
                match r {
                    (PrepareReply::Promised { accepted, value }, inc) => {
                        *max_round = (*max_round).max(accepted.round);
                        voters.push(Voter {
                            member: id.clone(),
                            incarnation: *inc,
                        });
                        if best.as_ref().is_none_or(|(b, _)| accepted > b) {
                            best = Some((accepted.clone(), value.clone()));
                        }
                    }
                    (PrepareReply::Rejected { promised }, _) => {
                        *max_round = (*max_round).max(promised.round);
                        conflict = true;
                    }
                }
            }
            if !cfg.is_read_quorum(voters.iter().map(|v| v.member.as_str())) {
                return Err(replies.failure("prepare", voters.len(), members.len(), conflict));
            }
            (ballot, best.and_then(|(_, v)| v), voters)
        }
    };

    // Phase 2, promising the next ballot so the next round can skip phase 1.
    let (new_value, outcomes) = apply_batch(batch, current);
    let value = new_value.clone().unwrap_or_default();
    let next = ballot.next();
    *max_round = (*max_round).max(next.round);
    let peers = &inner.peers;
    let replies = gather(
        &members,
        deadline,
        |m, t| {
            let (ballot, next, value, voters) = (&ballot, &next, &value, &voters);
            async move { peers.accept(m, epoch, key, ballot, value, Some(next), voters, t).await }
        },
        |oks: &[&str]| cfg.is_write_quorum(oks.iter().copied()) && cfg.is_read_quorum(oks.iter().copied()),
        |r| matches!(r, (AcceptReply::Accepted, _)),
    )
    .await;
    let mut accepted = Vec::new();
    let mut conflict = false;
    for (id, r) in &replies.replies {
        match r {
            (AcceptReply::Accepted, inc) => accepted.push(Voter {
                member: id.clone(),
                incarnation: *inc,
            }),
            (AcceptReply::Rejected { promised }, _) => {
                *max_round = (*max_round).max(promised.round);
                conflict = true;
            }
            (AcceptReply::StaleVoter { .. }, _) => conflict = true,
        }
    }
    if !cfg.is_write_quorum(accepted.iter().map(|v| v.member.as_str())) {
        return Err(replies.failure("accept", accepted.len(), members.len(), conflict));
    }
    if cfg.is_read_quorum(accepted.iter().map(|v| v.member.as_str())) {
        *fast = Some(FastPath {
            epoch,
            ballot: next,
            value: new_value,
            voters: accepted,
        });
    }
    Ok(outcomes)
}

/// Replies and failures of one phase.
struct Gathered<T> {
    replies: Vec<(String, T)>,
    failures: Vec<(String, PeerError)>,
    timed_out: usize,
}

impl<T> Gathered<T> {
    fn failure(&self, phase: &str, oks: usize, total: usize, conflict: bool) -> RoundError {
        if conflict && self.failures.is_empty() && self.timed_out == 0 {
            return RoundError::Conflict;
        }
        let mut detail = format!(
            "{} of {total} members answered the {phase} phase ({oks} in favour)",
            self.replies.len()
        );
        for (id, e) in &self.failures {
            detail.push_str(&format!("; {id}: {e}"));
        }
        if self.timed_out > 0 {
            detail.push_str(&format!("; {} did not answer before the deadline", self.timed_out));
        }
        if conflict {
            detail.push_str("; conflicting ballots seen");
        }
        RoundError::Unavailable {
            answered: self.replies.len(),
            total,
            detail,
        }
    }
}

/// Calls every member at once and returns as soon as `enough` holds for the replies that pass
/// `favourable`, when every call has ended, or at the deadline.
async fn gather<'a, T, F, Fut>(
    members: &'a [Member],
    deadline: Instant,
    call: F,
    enough: impl Fn(&[&str]) -> bool,
    favourable: impl Fn(&T) -> bool,
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
    let mut out = Gathered {
        replies: Vec::new(),
        failures: Vec::new(),
        timed_out: 0,
    };
    let mut oks: Vec<&str> = Vec::new();
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            next = calls.next() => match next {
                None => break,
                Some((id, Ok(r))) => {
                    if favourable(&r) {
                        oks.push(id);
                    }
                    out.replies.push((id.to_string(), r));
                    if enough(&oks) {
                        break;
                    }
                }
                Some((id, Err(e))) => out.failures.push((id.to_string(), e)),
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

    #[test]
    fn add_counts_from_start_and_checks_overflow() {
        let o = Change::Add { n: 5, start: 1 }.apply(None).unwrap();
        assert_eq!(decode_u64(o.after.as_deref()), Some(6));
        let o = Change::Add { n: 1, start: 1 }
            .apply(Some(&u64::MAX.to_be_bytes()))
            .unwrap_err();
        assert!(o.to_string().contains("overflow"));
        assert!(Change::Add { n: 1, start: 1 }.apply(Some(b"abc")).is_err());
    }

    #[test]
    fn compare_and_set() {
        let cas = Change::CompareAndSet {
            expect: None,
            new: b"x".to_vec(),
        };
        assert!(cas.apply(None).unwrap().applied);
        assert!(!cas.apply(Some(b"y")).unwrap().applied);
    }
}
