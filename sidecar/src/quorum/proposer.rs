//! The proposer: one worker per register runs its rounds, batching every concurrent change into
//! one round ([`super::change::apply_batch`]), chaining rounds without Prepare and pipelining up
//! to [`PIPELINE_DEPTH`] of them ([`super::round`] argues why that is safe), and retrying
//! conflicts with jittered exponential backoff until the callers' deadlines. Changes made on a
//! sidecar that is not the register's home are forwarded there first ([`super::route`]).
//!
//! Rounds resolve in the order they were sent. A round that fails waits for the rounds sent after
//! it: if one of those is chosen, so is the failed one (it is part of the chosen value's history)
//! and its callers get the outcomes computed when it was sent. Otherwise the failed rounds'
//! changes are retried, marked as *sent*: an acceptor may hold them, and a later round may adopt
//! that value, so a caller whose change finally fails learns [`ChangeError::OutcomeUnknown`]
//! rather than [`ChangeError::Unavailable`] (which promises the change was never applied).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::change::apply_batch;
pub use super::change::{decode_u64, Change, ChangeError, Outcome};
use super::round::{self, RoundFailure, Tip};
use super::route::{forward, forward_queued, remote_home, ForwardQueue, FORWARDS_IN_FLIGHT};
use super::transport::Peers;
use super::Ballot;
use crate::membership::MembersFile;
use crate::metrics::Metrics;

/// Most changes folded into one round.
const MAX_BATCH: usize = 4096;
/// Rounds of one register in flight at once.
pub const PIPELINE_DEPTH: usize = 4;
/// A register's worker exits after this long without requests.
const WORKER_IDLE: Duration = Duration::from_secs(30);
/// Above this many workers (a migration or a scan touching every register once), an idle
/// worker retires after [`WORKER_IDLE_CROWDED`] instead: memory then follows the rate of new
/// registers, not the keyspace (about 5 KB a worker).
pub const WORKERS_CROWDED: usize = 1024;
/// Idle time after which a worker retires while there are more than [`WORKERS_CROWDED`].
const WORKER_IDLE_CROWDED: Duration = Duration::from_millis(250);
/// Backoff bounds after a failed round (scaled by the observed round time).
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How long a register counts as contended after this sidecar lost a round on it to another
/// proposer: meanwhile its changes go to the register's home (see [`super::route`]).
pub const CONTENDED_FOR: Duration = Duration::from_secs(10);

/// A change waiting for its round.
pub(super) struct Pending {
    pub(super) change: Change,
    pub(super) deadline: Instant,
    /// May still be forwarded to the register's home (a change made on this sidecar).
    pub(super) to_home: bool,
    /// May still be forwarded to a proposer whose ballot beat ours.
    pub(super) to_holder: bool,
    /// Was sent to an acceptor or another member: it may have been applied.
    pub(super) sent: bool,
    pub(super) reply: oneshot::Sender<Result<Outcome, ChangeError>>,
}

impl Pending {
    fn fail(self, e: &ChangeError) {
        let e = if self.sent { e.clone().maybe_applied() } else { e.clone() };
        let _ = self.reply.send(Err(e));
    }
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

pub(super) struct Inner<P> {
    pub(super) id: String,
    /// Random per process: ballots stay unique when this proposer restarts.
    incarnation: u64,
    pub(super) peers: Arc<P>,
    pub(super) config: watch::Receiver<Arc<MembersFile>>,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
    /// Members believed live and caught up (fed by the node's probes); homes are chosen among them.
    pub(super) live: std::sync::RwLock<Vec<String>>,
    /// Homes that failed a forward recently, until when they are bypassed.
    pub(super) suspects: Mutex<HashMap<String, Instant>>,
    pub(super) metrics: Arc<Metrics>,
    /// Simulation only: pipeline at non-adjacent ballots (unsafe; see [`super::round`]).
    non_adjacent: AtomicBool,
    /// The highest ballot round this proposer has seen on any register (its own rounds and
    /// refusals): a new worker starts above it, see [`Worker::fresh`].
    round_hint: AtomicU64,
}

impl<P: Peers> Proposer<P> {
    /// A proposer with id `id` (unique among proposers: the member or pod name).
    pub fn new(id: String, peers: Arc<P>, config: watch::Receiver<Arc<MembersFile>>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                id,
                incarnation: rand::rng().random(),
                peers,
                config,
                workers: Mutex::new(HashMap::new()),
                live: std::sync::RwLock::new(Vec::new()),
                suspects: Mutex::new(HashMap::new()),
                metrics,
                non_adjacent: AtomicBool::new(false),
                round_hint: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration rounds run in.
    pub fn config(&self) -> Arc<MembersFile> {
        self.inner.config.borrow().clone()
    }

    /// The transport to the members.
    pub fn peers(&self) -> &P {
        &self.inner.peers
    }

    /// Register workers alive now (each register changed recently has one).
    pub fn worker_count(&self) -> usize {
        self.inner.workers.lock().expect("workers lock").len()
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

    /// Makes pipelined rounds use a ballot that is not the immediate successor, which is
    /// UNSAFE. Only the simulation calls it, to show that its checker catches the difference.
    #[doc(hidden)]
    pub fn pipeline_at_non_adjacent_ballots_for_simulation(&self) {
        self.inner.non_adjacent.store(true, Ordering::Relaxed);
    }

    async fn enqueue(
        &self,
        key: &str,
        change: Change,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<Outcome, ChangeError> {
        let (reply, rx) = oneshot::channel();
        let pending = Pending { change, deadline, to_home: !forwarded, to_holder: !forwarded, sent: false, reply };
        dispatch(&self.inner, key, pending);
        rx.await.unwrap_or(Err(ChangeError::Closed))
    }
}

/// Hands a change to its register's worker, starting one if needed.
pub(super) fn dispatch<P: Peers>(inner: &Arc<Inner<P>>, key: &str, mut pending: Pending) {
    loop {
        let tx = {
            let mut workers = inner.workers.lock().expect("workers lock");
            match workers.get(key) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    workers.insert(key.to_string(), tx.clone());
                    tokio::spawn(Worker::new(inner.clone(), key.to_string()).run(rx));
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

/// What a round in flight resolved to.
enum Resolution {
    /// Chosen; for a round that ran Prepare, its outcomes and the chain's tip after it.
    Chosen { prepared: Option<(Vec<Result<Outcome, ChangeError>>, Tip)> },
    /// Not chosen (yet); `sent`: the accept went out, so acceptors may hold the value.
    Failed { failure: RoundFailure, sent: bool },
}

type RoundFuture = Pin<Box<dyn Future<Output = Resolution> + Send>>;

/// A round in flight, or failed and waiting for the rounds sent after it.
struct Flight {
    batch: Vec<Pending>,
    /// Outcomes computed when the round was sent (chained rounds; `None` for a Prepare round).
    outcomes: Option<Vec<Result<Outcome, ChangeError>>>,
    started: Instant,
    sent: bool,
    /// The chain's tip after this round (chained rounds), to continue from once it is chosen.
    tip: Option<Tip>,
}

/// One register's proposer loop.
struct Worker<P: Peers> {
    inner: Arc<Inner<P>>,
    key: String,
    queue: VecDeque<Pending>,
    flights: VecDeque<Flight>,
    rounds: FuturesOrdered<RoundFuture>,
    /// Failed rounds whose fate depends on the rounds still in flight.
    unresolved: Vec<Flight>,
    /// The chain rounds extend; `None` after a failure (the next round runs Prepare).
    tip: Option<Tip>,
    max_round: u64,
    /// Recent round time, to scale backoff, and failures in a row.
    round_time: Duration,
    attempt: u32,
    retry_at: Option<Instant>,
    last_error: Option<ChangeError>,
    forwards: Arc<Mutex<ForwardQueue>>,
    /// Until when another proposer is known to write this register (a lost round).
    contended_until: Option<Instant>,
    /// No round of this worker has resolved yet. Its first ballot is a guess (above the rounds
    /// this proposer saw elsewhere, [`Inner::round_hint`]): a register last written by another
    /// proposer, even one that died long ago (a divider member's keys after `kill -9`), may hold
    /// a promise above it. Losing that first Prepare is how the worker learns the register's
    /// ballots, not a sign that another proposer is active now: the worker retries at once above
    /// the refusal, without backing off, forwarding or counting the register as contended. A
    /// second loss counts as usual. Liveness only: any ballot is safe.
    fresh: bool,
}

impl<P: Peers> Worker<P> {
    fn new(inner: Arc<Inner<P>>, key: String) -> Self {
        let max_round = inner.round_hint.load(Ordering::Relaxed);
        Self {
            inner,
            key,
            queue: VecDeque::new(),
            flights: VecDeque::new(),
            rounds: FuturesOrdered::new(),
            unresolved: Vec::new(),
            tip: None,
            max_round,
            round_time: Duration::from_millis(2),
            attempt: 0,
            retry_at: None,
            last_error: None,
            forwards: Arc::new(Mutex::new(ForwardQueue::default())),
            contended_until: None,
            fresh: true,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        loop {
            self.expire();
            self.launch();
            let idle = self.rounds.is_empty() && self.queue.is_empty();
            let idle_for = if !idle {
                WORKER_IDLE
            } else if self.inner.workers.lock().expect("workers lock").len() > WORKERS_CROWDED {
                WORKER_IDLE_CROWDED
            } else {
                WORKER_IDLE
            };
            let retry_at = self.retry_at;
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => {
                        let mut incoming = vec![p];
                        while incoming.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(p) => incoming.push(p),
                                Err(_) => break,
                            }
                        }
                        self.route(incoming);
                    }
                    None => return,
                },
                Some(r) = self.rounds.next(), if !self.rounds.is_empty() => self.resolve(r),
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                }
                _ = tokio::time::sleep(idle_for), if idle => {
                    let mut workers = self.inner.workers.lock().expect("workers lock");
                    match rx.try_recv() {
                        Ok(p) => {
                            drop(workers);
                            self.route(vec![p]);
                        }
                        Err(_) => {
                            workers.remove(&self.key);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Forwards changes made here to the register's home when the register is contended and
    /// the home is another member; queues the rest for rounds here.
    fn route(&mut self, incoming: Vec<Pending>) {
        let cfg = self.inner.config.borrow().clone();
        let contended = self.contended_until.is_some_and(|t| t > Instant::now());
        let home = if contended { remote_home(&self.inner, &self.key, &cfg) } else { None };
        let (to_forward, here): (Vec<_>, Vec<_>) = incoming.into_iter().partition(|p| p.to_home && home.is_some());
        self.queue.extend(here);
        if !to_forward.is_empty() {
            // A bounded number of forwards in flight per register: what arrives meanwhile goes
            // in the next one (fewer, larger forwards; the home batches them into rounds).
            let mut q = self.forwards.lock().expect("forward queue");
            q.held.extend(to_forward);
            if q.in_flight < FORWARDS_IN_FLIGHT {
                q.in_flight += 1;
                tokio::spawn(forward_queued(self.inner.clone(), self.key.clone(), self.forwards.clone()));
            }
        }
    }

    /// Answers queued changes whose deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        if self.queue.iter().all(|p| p.deadline > now) {
            return;
        }
        let error = self.last_error.clone().unwrap_or_else(|| {
            let total = self.inner.config.borrow().all_members().len();
            ChangeError::Unavailable {
                answered: 0,
                total,
                detail: format!("the deadline passed before a round could start (0 of {total} members asked)"),
            }
        });
        let (live, expired): (VecDeque<_>, VecDeque<_>) = self.queue.drain(..).partition(|p| p.deadline > now);
        self.queue = live;
        for p in expired {
            p.fail(&error);
        }
    }

    /// Sends as many rounds as the pipeline allows.
    fn launch(&mut self) {
        if let Some(t) = self.retry_at {
            if t > Instant::now() {
                return;
            }
            self.retry_at = None;
        }
        while !self.queue.is_empty() && self.rounds.len() < PIPELINE_DEPTH && self.unresolved.is_empty() {
            let cfg = self.inner.config.borrow().clone();
            let take = self.queue.len().min(MAX_BATCH);
            let chained = self.tip.as_ref().is_some_and(|t| t.epoch == cfg.epoch);
            if !chained && !self.rounds.is_empty() {
                // A Prepare round is in flight: the chain's tip is known once it completes.
                return;
            }
            let mut batch: Vec<Pending> = self.queue.drain(..take).collect();
            let deadline = batch.iter().map(|p| p.deadline).max().expect("non-empty");
            let changes: Vec<Change> = batch.iter().map(|p| p.change.clone()).collect();
            let (peers, key) = (self.inner.peers.clone(), self.key.clone());
            if chained {
                let tip = self.tip.take().expect("chained");
                let ballot = if self.inner.non_adjacent.load(Ordering::Relaxed) {
                    Ballot { round: tip.ballot.round + 1, step: 0, ..tip.ballot.clone() }
                } else {
                    tip.ballot.next()
                };
                let (value, outcomes) = apply_batch(&changes, tip.value);
                for p in &mut batch {
                    p.sent = true;
                }
                let next = Tip { epoch: tip.epoch, ballot: ballot.clone(), value: value.clone(), voters: tip.voters };
                let voters = next.voters.clone();
                self.rounds.push_back(Box::pin(async move {
                    match round::accept(peers.as_ref(), &cfg, &key, &ballot, value.as_deref(), &voters, deadline).await
                    {
                        Ok(_) => Resolution::Chosen { prepared: None },
                        Err(failure) => Resolution::Failed { failure, sent: true },
                    }
                }));
                self.flights.push_back(Flight {
                    batch,
                    outcomes: Some(outcomes),
                    started: Instant::now(),
                    sent: true,
                    tip: Some(next.clone()),
                });
                self.tip = Some(next);
            } else {
                self.max_round += 1;
                let ballot = Ballot::of(self.max_round, self.inner.id.clone(), self.inner.incarnation);
                self.rounds.push_back(Box::pin(async move {
                    let (current, voters) = match round::prepare(peers.as_ref(), &cfg, &key, &ballot, deadline).await {
                        Ok(r) => r,
                        Err(failure) => return Resolution::Failed { failure, sent: false },
                    };
                    let (value, outcomes) = apply_batch(&changes, current);
                    match round::accept(peers.as_ref(), &cfg, &key, &ballot, value.as_deref(), &voters, deadline).await
                    {
                        Ok(_) => {
                            let tip = Tip { epoch: cfg.epoch, ballot, value, voters };
                            Resolution::Chosen { prepared: Some((outcomes, tip)) }
                        }
                        Err(failure) => Resolution::Failed { failure, sent: true },
                    }
                }));
                self.flights.push_back(Flight {
                    batch,
                    outcomes: None,
                    started: Instant::now(),
                    sent: false,
                    tip: None,
                });
                return;
            }
        }
    }

    /// Handles the oldest round in flight.
    fn resolve(&mut self, r: Resolution) {
        let mut flight = self.flights.pop_front().expect("a flight per round");
        let took = flight.started.elapsed();
        self.round_time = (self.round_time * 7 + took) / 8;
        match r {
            Resolution::Chosen { prepared } => {
                self.fresh = false;
                self.inner.metrics.observe_round(took, true, flight.batch.len());
                if took > Duration::from_millis(200) {
                    tracing::debug!(key = %self.key, batch = flight.batch.len(), took_ms = took.as_millis() as u64, "slow round");
                }
                // Every earlier failed round is part of this round's history: it was chosen too.
                for earlier in std::mem::take(&mut self.unresolved) {
                    answer(earlier.batch, earlier.outcomes.expect("chained rounds keep their outcomes"));
                }
                let (outcomes, tip) = match prepared {
                    Some((outcomes, tip)) => {
                        self.inner.round_hint.fetch_max(tip.ballot.round, Ordering::Relaxed);
                        (outcomes, Some(tip))
                    }
                    None => (flight.outcomes.take().expect("chained rounds keep their outcomes"), flight.tip.take()),
                };
                // The chain goes on from the last round sent once it is chosen (the tip is unset
                // while a failure waits for the rounds after it).
                if self.rounds.is_empty() && self.tip.is_none() {
                    self.tip = tip;
                }
                answer(flight.batch, outcomes);
                self.attempt /= 2;
                self.last_error = None;
            }
            Resolution::Failed { failure, sent } => {
                self.inner.metrics.observe_round(took, false, flight.batch.len());
                // A round refused because an acceptor already took this chain's next round (the
                // two accepts crossed on the way) is resolved by that round, not a conflict.
                let own = failure.holder.as_deref() == Some(self.inner.id.as_str()) && !self.rounds.is_empty();
                // The first Prepare of a fresh worker lost to a promise it could not know of.
                let discovery = std::mem::take(&mut self.fresh) && failure.conflict && !sent && self.rounds.is_empty();
                self.inner.round_hint.fetch_max(failure.seen_round, Ordering::Relaxed);
                if discovery {
                    self.inner.metrics.conflicts.inc();
                    self.max_round = self.max_round.max(failure.seen_round);
                    for p in flight.batch.into_iter().rev() {
                        self.queue.push_front(p);
                    }
                    return;
                }
                if failure.conflict && !own {
                    self.inner.metrics.conflicts.inc();
                    self.contended_until = Some(Instant::now() + CONTENDED_FOR);
                }
                if took > Duration::from_millis(200) || !failure.conflict {
                    tracing::debug!(key = %self.key, batch = flight.batch.len(), took_ms = took.as_millis() as u64, error = %failure.detail, "round failed");
                }
                self.tip = None;
                self.max_round = self.max_round.max(failure.seen_round);
                flight.sent |= sent;
                self.unresolved.push(flight);
                self.last_error = Some(ChangeError::Unavailable {
                    answered: failure.answered,
                    total: failure.total,
                    detail: if failure.conflict {
                        format!("rounds kept conflicting with other proposers: {}", failure.detail)
                    } else {
                        failure.detail.clone()
                    },
                });
                if self.rounds.is_empty() {
                    self.retry_unresolved(failure.holder);
                }
                return;
            }
        }
        if self.rounds.is_empty() && !self.unresolved.is_empty() {
            // Unreachable in practice (a chosen round resolves every earlier one), kept total.
            self.retry_unresolved(None);
        }
    }

    /// No round after the failed ones was chosen: put their changes back at the front of the
    /// queue (marked as sent where acceptors may hold them), hand what may go to the proposer
    /// that beat us, and back off.
    fn retry_unresolved(&mut self, holder: Option<String>) {
        let mut retry: Vec<Pending> = Vec::new();
        for flight in std::mem::take(&mut self.unresolved) {
            for mut p in flight.batch {
                p.sent |= flight.sent;
                retry.push(p);
            }
        }
        // Another proposer holds the promise: it is evidently active, so hand it our own
        // changes instead of pre-empting it (views of who is home can differ briefly).
        let holder = holder
            .filter(|h| *h != self.inner.id)
            .and_then(|h| self.inner.config.borrow().all_members().into_iter().find(|m| m.id == h).cloned());
        if let Some(holder) = holder {
            let (to_holder, here): (Vec<_>, Vec<_>) = retry.into_iter().partition(|p| p.to_holder);
            retry = here;
            if !to_holder.is_empty() {
                tokio::spawn(forward(self.inner.clone(), self.key.clone(), to_holder, Some(holder)));
            }
        }
        for p in retry.into_iter().rev() {
            self.queue.push_front(p);
        }
        // Retry with a ballot well ahead: a busy holder advances one round per batch.
        self.max_round = self.max_round.saturating_add(16 * u64::from(self.attempt + 1));
        self.attempt = self.attempt.saturating_add(1);
        let cap = self.round_time.max(BACKOFF_MIN).saturating_mul(1 << self.attempt.min(8)).min(BACKOFF_MAX);
        let pause = rand::rng().random_range(Duration::ZERO..=cap);
        self.retry_at = Some(Instant::now() + pause);
    }
}

fn answer(batch: Vec<Pending>, outcomes: Vec<Result<Outcome, ChangeError>>) {
    for (p, o) in batch.into_iter().zip(outcomes) {
        let _ = p.reply.send(o);
    }
}
