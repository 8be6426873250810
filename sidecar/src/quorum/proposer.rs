//! The proposer: runs CASPaxos rounds, batching concurrent changes of one register into one
//! round and retrying conflicts with jittered exponential backoff until the caller's deadline.
//!
//! To keep proposers from pre-empting each other on a hot register, every sidecar forwards a
//! register's changes to its *home*: a member picked by hashing the key over the live, caught-up
//! members of the current configuration. The home batches everything into rounds that mostly
//! take the one-round-trip fast path. Forwarding is only an optimisation: when the home does
//! not answer in time, the sidecar proposes itself (safety never depends on who proposes).
//! A forwarded change that timed out may still have been applied by the home; a counter then
//! skips IDs (never reuses them), and a compare-and-set retried locally reports "not applied".

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
/// Backoff bounds after a failed round (scaled by the observed round time).
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Longest wait for a home member before proposing locally.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(1000);
/// Forwards of one register in flight from one sidecar at a time.
const FORWARDS_IN_FLIGHT: usize = 2;
/// How long a home that failed a forward is bypassed.
const HOME_SUSPECT_FOR: Duration = Duration::from_secs(2);

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
            Change::Read => Ok(Outcome { after: before.clone(), before, applied: true }),
            Change::Add { n, start } => {
                let x = match current {
                    None => *start,
                    Some(_) => decode_u64(current)
                        .ok_or_else(|| ChangeError::Invalid("register does not hold a counter".into()))?,
                };
                let y = x.checked_add(*n).ok_or_else(|| ChangeError::Invalid("counter would overflow u64".into()))?;
                Ok(Outcome { before, after: Some(y.to_be_bytes().to_vec()), applied: true })
            }
            Change::CompareAndSet { expect, new } => {
                if expect.as_deref() == current {
                    Ok(Outcome { before, after: Some(new.clone()), applied: true })
                } else {
                    Ok(Outcome { after: before.clone(), before, applied: false })
                }
            }
        }
    }
}

struct Pending {
    change: Change,
    deadline: Instant,
    /// May still be forwarded to the register's home (a change made on this sidecar).
    to_home: bool,
    /// May still be forwarded to a proposer whose ballot beat ours.
    to_holder: bool,
    reply: oneshot::Sender<Result<Outcome, ChangeError>>,
}

/// Runs changes against the registers of the configured members.
pub struct Proposer<P: Peers> {
    inner: Arc<Inner<P>>,
}

impl<P: Peers> Clone for Proposer<P> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<P> {
    id: String,
    peers: Arc<P>,
    config: watch::Receiver<Arc<MembersFile>>,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
    /// Members believed live and caught up (fed by the node's probes); homes are chosen among them.
    live: std::sync::RwLock<Vec<String>>,
    /// Homes that failed a forward recently, until when they are bypassed.
    suspects: Mutex<HashMap<String, Instant>>,
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
    Unavailable { answered: usize, total: usize, detail: String },
}

impl<P: Peers> Proposer<P> {
    /// A proposer with id `id` (unique among proposers: the member or pod name).
    pub fn new(id: String, peers: Arc<P>, config: watch::Receiver<Arc<MembersFile>>, metrics: Arc<Metrics>) -> Self {
        let live = std::sync::RwLock::new(Vec::new());
        let suspects = Mutex::new(HashMap::new());
        Self {
            inner: Arc::new(Inner { id, peers, config, workers: Mutex::new(HashMap::new()), live, suspects, metrics }),
        }
    }

    /// Sets the members that are live and caught up (home candidates).
    pub fn set_live(&self, mut ids: Vec<String>) {
        ids.sort();
        *self.inner.live.write().expect("live lock") = ids;
    }

    /// Applies `change` to register `key` through a quorum, waiting at most until `deadline`.
    pub async fn change(&self, key: &str, change: Change, deadline: Instant) -> Result<Outcome, ChangeError> {
        self.enqueue(key, change, deadline, false).await
    }

    /// Runs changes another sidecar forwarded here (never forwarded again).
    pub async fn change_forwarded(
        &self,
        key: &str,
        changes: Vec<Change>,
        deadline: Instant,
    ) -> Vec<Result<Outcome, ChangeError>> {
        futures::future::join_all(changes.into_iter().map(|c| self.enqueue(key, c, deadline, true))).await
    }

    async fn enqueue(
        &self,
        key: &str,
        change: Change,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<Outcome, ChangeError> {
        let (reply, rx) = oneshot::channel();
        dispatch(&self.inner, key, Pending { change, deadline, to_home: !forwarded, to_holder: !forwarded, reply });
        rx.await.unwrap_or(Err(ChangeError::Closed))
    }
}

/// Hands a change to its register's worker, starting one if needed.
fn dispatch<P: Peers>(inner: &Arc<Inner<P>>, key: &str, mut pending: Pending) {
    loop {
        let tx = {
            let mut workers = inner.workers.lock().expect("workers lock");
            match workers.get(key) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    workers.insert(key.to_string(), tx.clone());
                    tokio::spawn(run_worker(inner.clone(), key.to_string(), rx));
                    tx
                }
            }
        };
        match tx.send(pending) {
            Ok(()) => return,
            // The worker retired between lookup and send: start another.
            Err(mpsc::error::SendError(p)) => pending = p,
        }
    }
}

/// The home member of `key` among `live` members (sorted ids) of the current configuration.
pub(crate) fn home_for<'a>(key: &str, cfg: &'a MembersFile, live: &[String]) -> Option<&'a Member> {
    let candidates: Vec<&Member> = cfg.current.members.iter().filter(|m| live.binary_search(&m.id).is_ok()).collect();
    if candidates.is_empty() {
        return None;
    }
    // FNV-1a: stable across processes and versions, unlike the std hasher.
    let h = key.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    let mut sorted = candidates;
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    Some(sorted[(h % sorted.len() as u64) as usize])
}

/// The home another member should run `key`'s changes, if not this sidecar: a live member not
/// suspected by this sidecar, so that sidecars agreeing on who is live also agree on a fallback
/// when one stops answering.
fn remote_home<P: Peers>(inner: &Inner<P>, key: &str, cfg: &MembersFile) -> Option<Member> {
    let now = Instant::now();
    let mut suspects = inner.suspects.lock().expect("suspects lock");
    suspects.retain(|_, until| *until > now);
    let live: Vec<String> =
        inner.live.read().expect("live lock").iter().filter(|id| !suspects.contains_key(*id)).cloned().collect();
    home_for(key, cfg, &live).filter(|m| m.id != inner.id).cloned()
}

/// Forwards `batch` to the key's home (trying the next home when one fails, within half the
/// deadline), or, when `holder` is given, to that proposer once. Runs in its own task so the
/// register's worker keeps serving changes forwarded to it meanwhile (two sidecars forwarding
/// to each other must not wait on each other). What could not be forwarded goes back to the
/// worker to run here.
async fn forward<P: Peers>(inner: Arc<Inner<P>>, key: String, mut batch: Vec<Pending>, holder: Option<Member>) {
    let cfg = inner.config.borrow().clone();
    let deadline = batch.iter().map(|p| p.deadline).min().expect("non-empty");
    let budget_end = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
    let changes: Vec<Change> = batch.iter().map(|p| p.change.clone()).collect();
    let mut target = holder.clone().or_else(|| remote_home(&inner, &key, &cfg));
    while let Some(to) = target {
        let timeout = budget_end.saturating_duration_since(Instant::now()).min(FORWARD_TIMEOUT);
        if timeout.is_zero() {
            break;
        }
        match inner.peers.propose(&to, cfg.epoch, &key, &changes, timeout).await {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                for (p, o) in batch.drain(..).zip(outcomes) {
                    let _ = p.reply.send(o);
                }
                return;
            }
            Ok(_) => tracing::warn!(to = %to.id, "a forward came back with the wrong number of outcomes"),
            Err(e) => tracing::debug!(to = %to.id, error = %e, key, "forward failed"),
        }
        inner.suspects.lock().expect("suspects lock").insert(to.id.clone(), Instant::now() + HOME_SUSPECT_FOR);
        target = if holder.is_some() { None } else { remote_home(&inner, &key, &cfg) };
    }
    for mut p in batch {
        p.to_home = false;
        if holder.is_some() {
            p.to_holder = false;
        }
        dispatch(&inner, &key, p);
    }
}

/// Changes waiting to be forwarded to the home, and how many forwards are in flight.
#[derive(Default)]
struct ForwardQueue {
    in_flight: usize,
    held: Vec<Pending>,
}

/// Forwards held changes to the home, one batch at a time, until none are left.
async fn forward_queued<P: Peers>(inner: Arc<Inner<P>>, key: String, queue: Arc<Mutex<ForwardQueue>>) {
    loop {
        let batch = {
            let mut q = queue.lock().expect("forward queue");
            if q.held.is_empty() {
                q.in_flight -= 1;
                return;
            }
            std::mem::take(&mut q.held)
        };
        forward(inner.clone(), key.clone(), batch, None).await;
    }
}

async fn run_worker<P: Peers>(inner: Arc<Inner<P>>, key: String, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut fast: Option<FastPath> = None;
    let mut max_round = 0u64;
    // Recent round time, to scale backoff; and contention carried across batches.
    let mut round_time = Duration::from_millis(2);
    let mut contention = 0u32;
    let forwards = Arc::new(Mutex::new(ForwardQueue::default()));
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
        // Changes made here go to the register's home when that is another member.
        let cfg = inner.config.borrow().clone();
        let home = remote_home(&inner, &key, &cfg);
        let (to_forward, here): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.to_home && home.is_some());
        batch = here;
        if !to_forward.is_empty() {
            fast = None;
            // A bounded number of forwards in flight per register: what arrives meanwhile goes
            // in the next one (fewer, larger forwards; the home batches them into rounds).
            let mut q = forwards.lock().expect("forward queue");
            q.held.extend(to_forward);
            if q.in_flight < FORWARDS_IN_FLIGHT {
                q.in_flight += 1;
                tokio::spawn(forward_queued(inner.clone(), key.clone(), forwards.clone()));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut attempt = contention;
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
            let mut holder = None;
            let result = round(&inner, &key, &batch, &mut fast, &mut max_round, deadline, &mut holder).await;
            let took = started.elapsed();
            inner.metrics.observe_round(took, result.is_ok(), batch.len());
            round_time = (round_time * 7 + took) / 8;
            if took > Duration::from_millis(200) {
                tracing::debug!(key = %key, batch = batch.len(), took_ms = took.as_millis() as u64, ok = result.is_ok(), "slow round");
            }
            match result {
                Ok(outcomes) => {
                    contention = attempt / 2;
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
                        RoundError::Unavailable { answered, total, detail } => {
                            ChangeError::Unavailable { answered, total, detail }
                        }
                    };
                    tracing::debug!(key = %key, attempt, error = %last, took_ms = took.as_millis() as u64, "round failed");
                    // Another proposer holds the promise: it is evidently active, so hand it our own
                    // changes instead of pre-empting it (views of who is home can differ briefly).
                    let holder = holder
                        .filter(|h| *h != inner.id)
                        .and_then(|h| inner.config.borrow().all_members().into_iter().find(|m| m.id == h).cloned());
                    if let Some(holder) = holder {
                        let (to_holder, here): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.to_holder);
                        batch = here;
                        if !to_holder.is_empty() {
                            tokio::spawn(forward(inner.clone(), key.clone(), to_holder, Some(holder)));
                        }
                        if batch.is_empty() {
                            break;
                        }
                    }
                    // Retry with a ballot well ahead: a busy holder advances one round per batch.
                    max_round = max_round.saturating_add(16 * u64::from(attempt + 1));
                    attempt = attempt.saturating_add(1);
                    let cap = round_time.max(BACKOFF_MIN).saturating_mul(1 << attempt.min(8)).min(BACKOFF_MAX);
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
    holder: &mut Option<String>,
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
                |r| matches!(r, (PrepareReply::Rejected { .. }, _)),
            )
            .await;
            let mut best: Option<(Ballot, Option<Vec<u8>>)> = None;
            let mut voters = Vec::new();
            let mut conflict = false;
            for (id, r) in &replies.replies {
                match r {
                    (PrepareReply::Promised { accepted, value }, inc) => {
                        *max_round = (*max_round).max(accepted.round);
                        voters.push(Voter { member: id.clone(), incarnation: *inc });
                        if best.as_ref().is_none_or(|(b, _)| accepted > b) {
                            best = Some((accepted.clone(), value.clone()));
                        }
                    }
                    (PrepareReply::Rejected { promised }, _) => {
                        *max_round = (*max_round).max(promised.round);
                        *holder = Some(promised.proposer.clone());
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
        |r| !matches!(r, (AcceptReply::Accepted, _)),
    )
    .await;
    let mut accepted = Vec::new();
    let mut conflict = false;
    for (id, r) in &replies.replies {
        match r {
            (AcceptReply::Accepted, inc) => accepted.push(Voter { member: id.clone(), incarnation: *inc }),
            (AcceptReply::Rejected { promised }, _) => {
                *max_round = (*max_round).max(promised.round);
                *holder = Some(promised.proposer.clone());
                conflict = true;
            }
            (AcceptReply::StaleVoter { .. }, _) => conflict = true,
        }
    }
    if !cfg.is_write_quorum(accepted.iter().map(|v| v.member.as_str())) {
        return Err(replies.failure("accept", accepted.len(), members.len(), conflict));
    }
    if cfg.is_read_quorum(accepted.iter().map(|v| v.member.as_str())) {
        *fast = Some(FastPath { epoch, ballot: next, value: new_value, voters: accepted });
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
        let mut detail =
            format!("{} of {total} members answered the {phase} phase ({oks} in favour)", self.replies.len());
        for (id, e) in &self.failures {
            detail.push_str(&format!("; {id}: {e}"));
        }
        if self.timed_out > 0 {
            detail.push_str(&format!("; {} did not answer before the deadline", self.timed_out));
        }
        if conflict {
            detail.push_str("; conflicting ballots seen");
        }
        RoundError::Unavailable { answered: self.replies.len(), total, detail }
    }
}

/// Calls every member at once and returns as soon as `enough` holds for the replies that pass
/// `favourable`, when a reply shows a higher ballot (the round is pre-empted: retrying beats
/// waiting for slow members), when a quorum is out of reach, or at the deadline.
async fn gather<'a, T, F, Fut>(
    members: &'a [Member],
    deadline: Instant,
    call: F,
    enough: impl Fn(&[&str]) -> bool,
    favourable: impl Fn(&T) -> bool,
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
    let mut oks: Vec<&str> = Vec::new();
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
                        if favourable(&r) {
                            oks.push(id);
                        }
                        let stop = preempted(&r);
                        out.replies.push((id.to_string(), r));
                        if stop {
                            break;
                        }
                    }
                    Err(e) => out.failures.push((id.to_string(), e)),
                }
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

    #[test]
    fn add_counts_from_start_and_checks_overflow() {
        let o = Change::Add { n: 5, start: 1 }.apply(None).unwrap();
        assert_eq!(decode_u64(o.after.as_deref()), Some(6));
        let o = Change::Add { n: 1, start: 1 }.apply(Some(&u64::MAX.to_be_bytes())).unwrap_err();
        assert!(o.to_string().contains("overflow"));
        assert!(Change::Add { n: 1, start: 1 }.apply(Some(b"abc")).is_err());
    }

    #[test]
    fn compare_and_set() {
        let cas = Change::CompareAndSet { expect: None, new: b"x".to_vec() };
        assert!(cas.apply(None).unwrap().applied);
        assert!(!cas.apply(Some(b"y")).unwrap().applied);
    }
}
