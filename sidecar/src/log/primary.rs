//! A stream's primary for one epoch: recovery (seal, choose the most up-to-date log, copy it
//! with fencing reads, re-replicate the tail under the new epoch), then pipelined appends
//! replicated to every replica over one long-lived link each, acknowledged once `ack_quorum`
//! replicas hold them durably. The safety argument is in the module docs of [`super`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};

use super::fence::FenceTable;
use super::history::History;
use super::metrics::LogMetrics;
use super::producer::{ProducerTable, Verdict};
use super::segment::{epoch_at, matching_prefix};
use super::store::{AppendReply, FetchReply, ReplicaStore, ReplicaWrite, SealReply, StoreError};
use super::{AppendResult, AppendResultTx, Batch, EpochStart, LogEntry, LogError};

/// Entries per replication message.
const MAX_SEND_ENTRIES: usize = 512;
/// Bytes of entry data per replication message.
const MAX_SEND_BYTES: usize = 1 << 20;
/// Replication messages in flight per replica.
const REPLICA_WINDOW: usize = 16;
/// Entries per recovery read.
const FETCH_CHUNK: u32 = 1000;
/// A replica that was sent everything learns a new commit point after at most this long (with
/// an empty message), so it can serve reads up to it (see `LogRouter::replica_read`). Under
/// load the commit point rides on the next entries instead.
const COMMIT_NOTICE: Duration = Duration::from_millis(20);

/// One replication message from a primary to a replica.
#[derive(Debug, Clone)]
pub struct ReplicateMsg {
    /// The primary's epoch.
    pub epoch: u64,
    /// LSN of the entry before `entries`.
    pub prev_lsn: u64,
    /// Its epoch.
    pub prev_epoch: u64,
    /// Consecutive entries.
    pub entries: Vec<LogEntry>,
    /// Commit point the primary knows.
    pub commit: u64,
    /// A rebuilding replica counts again once it holds the log through this LSN.
    pub complete_through: u64,
    /// The stream's trim point (the replica deletes its files wholly below it).
    pub first_lsn: u64,
    /// The replica drops its log and continues after `prev_lsn` if it does not hold it
    /// ([`ReplicaWrite::reset`]).
    pub reset: bool,
}

impl ReplicateMsg {
    /// The write a replica applies.
    pub fn into_write(self) -> ReplicaWrite {
        ReplicaWrite {
            epoch: self.epoch,
            prev_lsn: self.prev_lsn,
            prev_epoch: self.prev_epoch,
            entries: self.entries,
            complete_through: self.complete_through,
            commit: self.commit,
            first_lsn: self.first_lsn,
            reset: self.reset,
        }
    }
}

/// A replica's answer to one [`ReplicateMsg`].
#[derive(Debug, Clone)]
pub struct ReplicateAck {
    /// The message's `prev_lsn`.
    pub prev_lsn: u64,
    /// What the replica did.
    pub reply: AppendReply,
}

/// A long-lived replication link to one replica: messages in order, answers in order.
pub struct ReplicaLink {
    /// Messages to the replica.
    pub tx: mpsc::Sender<ReplicateMsg>,
    /// Its answers; closed when the link broke.
    pub rx: mpsc::Receiver<ReplicateAck>,
}

/// What a primary needs from the network: calls to the replicas of a stream by member id.
pub trait LogPeers: Send + Sync + 'static {
    /// Seals `stream` at `epoch` on replica `to` (`fresh_stream`: the stream's first epoch)
    /// and tells it the trim point `first_lsn`.
    fn seal(
        &self,
        to: &str,
        stream: &str,
        epoch: u64,
        fresh_stream: bool,
        first_lsn: u64,
    ) -> impl Future<Output = Result<SealReply, String>> + Send;
    /// A fencing recovery read on replica `to`.
    fn fetch(
        &self,
        to: &str,
        stream: &str,
        epoch: u64,
        from: u64,
        max: u32,
    ) -> impl Future<Output = Result<FetchReply, String>> + Send;
    /// Opens a replication link to replica `to`.
    fn replicate(&self, to: &str, stream: &str) -> impl Future<Output = Result<ReplicaLink, String>> + Send;
}

/// A replication link to this member's own store: writes queued in order, answers in order.
pub fn local_link(store: ReplicaStore, stream: String) -> ReplicaLink {
    let (tx, mut msgs) = mpsc::channel::<ReplicateMsg>(REPLICA_WINDOW * 2);
    let (ack_tx, rx) = mpsc::channel(REPLICA_WINDOW * 2);
    let (pending_tx, mut pending) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = msgs.recv().await {
            let prev_lsn = m.prev_lsn;
            let r = store.write_queued(&stream, m.into_write());
            if pending_tx.send((prev_lsn, r)).is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some((prev_lsn, r)) = pending.recv().await {
            let Ok(Ok(reply)) = r.await else { return };
            if ack_tx.send(ReplicateAck { prev_lsn, reply }).await.is_err() {
                return;
            }
        }
    });
    ReplicaLink { tx, rx }
}

/// Settings of a primary.
#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    /// Stream name.
    pub stream: String,
    /// This member's id (one of `replicas`).
    pub me: String,
    /// The stream's replicas.
    pub replicas: Vec<String>,
    /// Replicas that must hold an entry before it is acknowledged.
    pub ack_quorum: usize,
    /// The epoch (the epoch register's version).
    pub epoch: u64,
    /// First available LSN (trim point).
    pub first_lsn: u64,
    /// Deadline of each recovery call.
    pub timeout: Duration,
    /// The epoch register was just created: no earlier primary existed, so no entry either.
    pub fresh_stream: bool,
    /// What trimmed entries said (the stream's history register), if stored.
    pub history: Option<History>,
    /// Where the primary counts what it does.
    pub metrics: LogMetrics,
}

/// The primary's log: what is not yet known to be on the local disk and committed, plus the
/// epochs of the whole log.
struct Tail {
    /// Entries from `start` to `last`.
    entries: VecDeque<LogEntry>,
    start: u64,
    last: u64,
    epochs: Vec<EpochStart>,
}

impl Tail {
    fn epoch_at(&self, lsn: u64) -> u64 {
        epoch_at(&self.epochs, lsn, self.last)
    }
}

struct Waiter {
    first_lsn: u64,
    len: u32,
    reply: AppendResultTx,
    queued: Instant,
}

enum Cmd {
    Append {
        batch: Batch,
        reply: AppendResultTx,
        queued: Instant,
    },
    Durable {
        replica: usize,
        lsn: u64,
    },
    Deposed {
        by: u64,
        replica: String,
    },
    /// A replica the stream is moving to: replicated to, not counted ([`Primary::add_replicas`]).
    AddReplica,
    /// Refuse appends (with this reason) or take them again.
    Pause(Option<String>),
    /// Stop serving for good (the stream moved on).
    StepDown(String),
    /// The tables' part that only entries below an LSN carry.
    History {
        first: u64,
        reply: oneshot::Sender<History>,
    },
}

struct Shared {
    tail: Mutex<Tail>,
    last_tx: watch::Sender<u64>,
    commit_tx: watch::Sender<u64>,
    deposed_tx: watch::Sender<Option<String>>,
    /// The trim point (first available LSN); replication tells the replicas when it moves.
    first_tx: watch::Sender<u64>,
    /// Every replica replicated to: the stream's, then those it is moving to.
    replicas: Mutex<Vec<String>>,
    /// Durable LSN of each of `replicas` (this epoch's acknowledgements).
    matched_tx: watch::Sender<Vec<u64>>,
}

/// Starts the replication task to the replica at an index of [`Shared::replicas`].
type SpawnReplica = Arc<dyn Fn(usize, String) + Send + Sync>;

/// A running primary (cheap to clone).
#[derive(Clone)]
pub struct Primary {
    /// Its epoch.
    pub epoch: u64,
    stream: String,
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    store: ReplicaStore,
    spawn_replica: SpawnReplica,
    replicas: Vec<String>,
    ack_quorum: usize,
}

impl Primary {
    /// Recovers the stream at `cfg.epoch` and starts serving it.
    pub async fn start<P: LogPeers>(cfg: PrimaryConfig, store: ReplicaStore, peers: Arc<P>) -> Result<Self, LogError> {
        let started = Self::recover_and_start(cfg.clone(), store, peers).await;
        cfg.metrics.recovery(started.is_ok());
        started
    }

    async fn recover_and_start<P: LogPeers>(
        cfg: PrimaryConfig,
        store: ReplicaStore,
        peers: Arc<P>,
    ) -> Result<Self, LogError> {
        let recovered = recover(&cfg, &store, peers.as_ref()).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (last_tx, _) = watch::channel(recovered.last);
        let (commit_tx, _) = watch::channel(0);
        let (deposed_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            tail: Mutex::new(Tail {
                entries: recovered.retagged.into(),
                start: recovered.e_start,
                last: recovered.last,
                epochs: recovered.epochs,
            }),
            last_tx,
            commit_tx,
            deposed_tx,
            first_tx: watch::channel(cfg.first_lsn.max(1)).0,
            replicas: Mutex::new(cfg.replicas.clone()),
            matched_tx: watch::channel(vec![0; cfg.replicas.len()]).0,
        });
        let spawn_replica: SpawnReplica = {
            let (cfg, shared, store, tx) = (cfg.clone(), shared.clone(), store.clone(), tx.clone());
            let (start, recovered) = (recovered.e_start, recovered.last);
            Arc::new(move |index, replica| {
                // From the re-replicated tail: every replica must take the entries of this epoch
                // (a replica whose log differs earlier answers with a divergence).
                let local = (replica == cfg.me).then(|| store.clone());
                let link = ReplicaTask {
                    index,
                    replica,
                    stream: cfg.stream.clone(),
                    epoch: cfg.epoch,
                    next: start,
                    recovered,
                    replica_base: 0,
                    reset: false,
                    shared: shared.clone(),
                    store: store.clone(),
                    tx: tx.clone(),
                    metrics: cfg.metrics.clone(),
                };
                tokio::spawn(link.run(peers.clone(), local));
            })
        };
        for (i, r) in cfg.replicas.iter().enumerate() {
            spawn_replica(i, r.clone());
        }
        let actor = Actor {
            cfg: cfg.clone(),
            shared: shared.clone(),
            producers: {
                let mut p = recovered.producers;
                p.set_history_trimmed(recovered.history_gap);
                p
            },
            fences: recovered.fences,
            matched: vec![0; cfg.replicas.len()],
            commit: 0,
            e_start: recovered.e_start,
            waiters: BTreeMap::new(),
            deposed: None,
            paused: None,
        };
        tokio::spawn(actor.run(rx));
        // Recovery ends when the recovered tail is committed under this epoch: until then the
        // committed LSN would read lower than what earlier primaries acknowledged.
        let mut commit_rx = shared.commit_tx.subscribe();
        let h = recovered.last;
        if tokio::time::timeout(cfg.timeout, commit_rx.wait_for(|c| *c >= h)).await.is_err() {
            let why = format!(
                "stream {}: the recovered tail (LSN {h}) did not reach {} replicas within {} ms",
                cfg.stream,
                cfg.ack_quorum,
                cfg.timeout.as_millis()
            );
            shared.deposed_tx.send_replace(Some(why.clone()));
            return Err(LogError::Unavailable(why));
        }
        tracing::info!(stream = %cfg.stream, epoch = cfg.epoch, last = recovered.last, from = recovered.e_start, "log primary recovered the stream");
        Ok(Self {
            epoch: cfg.epoch,
            stream: cfg.stream,
            tx,
            shared,
            store,
            spawn_replica,
            replicas: cfg.replicas.clone(),
            ack_quorum: cfg.ack_quorum,
        })
    }

    /// The stream's replicas (this epoch's).
    pub fn replicas(&self) -> &[String] {
        &self.replicas
    }

    /// What its producer and fence tables know that only entries below `first` say (for the
    /// stream's history register before a trim at `first`); `None` once it stopped.
    pub async fn history(&self, first: u64) -> Option<History> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::History { first, reply }).ok()?;
        rx.await.ok()
    }

    /// Its ack quorum.
    pub fn ack_quorum(&self) -> usize {
        self.ack_quorum
    }

    /// Starts replicating to `names` too (those not replicated to yet), without counting their
    /// answers toward the ack quorum: replicas a move will hand the stream to. A replica that
    /// lacks the stream rebuilds it from this primary's log (from the trim point).
    pub fn add_replicas(&self, names: &[String]) {
        let mut all = self.shared.replicas.lock().expect("replicas lock");
        for n in names {
            if all.contains(n) {
                continue;
            }
            all.push(n.clone());
            // Queued before the task starts, so the actor knows the index before any answer.
            let _ = self.tx.send(Cmd::AddReplica);
            (self.spawn_replica)(all.len() - 1, n.clone());
        }
    }

    /// What each replica replicated to holds durably of this epoch's log, by id.
    pub fn matched(&self) -> Vec<(String, u64)> {
        let all = self.shared.replicas.lock().expect("replicas lock").clone();
        let m = self.shared.matched_tx.borrow();
        all.into_iter().enumerate().map(|(i, r)| (r, m.get(i).copied().unwrap_or(0))).collect()
    }

    /// Waits until `done(self)` holds (checked after every durable answer and commit) or `wait`
    /// passes; true when it held.
    pub async fn wait_until(&self, wait: Duration, done: impl Fn(&Primary) -> bool) -> bool {
        let mut m = self.shared.matched_tx.subscribe();
        let mut c = self.shared.commit_tx.subscribe();
        let mut deposed = self.shared.deposed_tx.subscribe();
        tokio::time::timeout(wait, async {
            loop {
                if done(self) {
                    return true;
                }
                if deposed.borrow_and_update().is_some() {
                    return false;
                }
                tokio::select! {
                    r = m.changed() => if r.is_err() { return false },
                    r = c.changed() => if r.is_err() { return false },
                    r = deposed.changed() => if r.is_err() { return false },
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Last assigned LSN (committed or not).
    pub fn last(&self) -> u64 {
        *self.shared.last_tx.borrow()
    }

    /// Refuses new appends with `reason` (`None`: takes them again). Appends already queued
    /// before the pause go on to commit.
    pub fn pause(&self, reason: Option<String>) {
        let _ = self.tx.send(Cmd::Pause(reason));
    }

    /// Stops serving for good: pending and later appends fail with `why`, and the router settles
    /// the stream's primary again.
    pub fn step_down(&self, why: String) {
        let _ = self.tx.send(Cmd::StepDown(why));
    }

    /// Queues a batch (in call order) and returns where its answer will arrive.
    pub fn submit(&self, batch: Batch) -> oneshot::Receiver<AppendResult> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Append { batch, reply, queued: Instant::now() };
        if let Err(mpsc::error::SendError(Cmd::Append { reply, .. })) = self.tx.send(cmd) {
            let _ = reply.send(Err(LogError::Unavailable("the primary stopped".into())));
        }
        rx
    }

    /// Why this primary stepped down, if it did.
    pub fn deposed(&self) -> Option<String> {
        self.shared.deposed_tx.borrow().clone()
    }

    /// Last committed LSN.
    pub fn commit(&self) -> u64 {
        *self.shared.commit_tx.borrow()
    }

    /// First available LSN.
    pub fn first_lsn(&self) -> u64 {
        *self.shared.first_tx.borrow()
    }

    /// Raises the first available LSN (after the trim point was stored): replication carries
    /// it to every replica, which deletes its segment files below it.
    pub fn set_first_lsn(&self, first: u64) {
        self.shared.first_tx.send_if_modified(|f| {
            let raise = first > *f;
            if raise {
                *f = first;
            }
            raise
        });
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Up to `max` committed entries from `from` (0: the first available), waiting up to `wait`
    /// for `from` to commit. Returns the entries, the first available and the committed LSN.
    pub async fn read(&self, from: u64, max: usize, wait: Duration) -> Result<(Vec<LogEntry>, u64, u64), LogError> {
        let first = self.first_lsn();
        let from = if from == 0 { first } else { from };
        if from < first {
            return Err(LogError::Trimmed { requested: from, first });
        }
        let mut commit_rx = self.shared.commit_tx.subscribe();
        let mut deposed_rx = self.shared.deposed_tx.subscribe();
        let waited = tokio::time::timeout(wait, async {
            loop {
                if *commit_rx.borrow_and_update() >= from {
                    return;
                }
                tokio::select! {
                    r = commit_rx.changed() => if r.is_err() { return },
                    _ = deposed_rx.changed() => return,
                }
            }
        })
        .await;
        let _ = waited;
        if let Some(why) = self.deposed() {
            return Err(LogError::Unavailable(why));
        }
        let commit = self.commit();
        if from > commit || max == 0 {
            return Ok((Vec::new(), first, commit));
        }
        let n = max.min((commit - from + 1) as usize);
        let got = self.store.fetch(&self.stream, None, from, n).await.map_err(store_unavailable)?;
        Ok((got.entries, first, commit))
    }
}

fn store_unavailable(e: StoreError) -> LogError {
    LogError::Unavailable(format!("log store: {e}"))
}

struct Recovered {
    last: u64,
    e_start: u64,
    epochs: Vec<EpochStart>,
    retagged: Vec<LogEntry>,
    producers: ProducerTable,
    fences: FenceTable,
    /// Entries between what the history covers and the local log's start are unknown.
    history_gap: bool,
}

/// Recovery: seal, choose, copy, re-replicate (see the module docs of [`super`]).
async fn recover<P: LogPeers>(cfg: &PrimaryConfig, store: &ReplicaStore, peers: &P) -> Result<Recovered, LogError> {
    let stream = cfg.stream.as_str();
    let seals = cfg.replicas.iter().map(|r| async move {
        let reply = if *r == cfg.me {
            store.seal(stream, cfg.epoch, cfg.fresh_stream, cfg.first_lsn).await.map_err(|e| e.to_string())
        } else {
            let sealing = peers.seal(r, stream, cfg.epoch, cfg.fresh_stream, cfg.first_lsn);
            match tokio::time::timeout(cfg.timeout, sealing).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", cfg.timeout.as_millis())),
            }
        };
        (r.clone(), reply)
    });
    let mut sealed: Vec<(String, SealReply)> = Vec::new();
    let mut failures = Vec::new();
    for (r, reply) in join_all(seals).await {
        match reply {
            Ok(s) if s.ok => sealed.push((r, s)),
            Ok(s) => {
                return Err(LogError::Unavailable(format!(
                    "stream {stream}: replica {r} is sealed at epoch {} above this primary's {}",
                    s.sealed, cfg.epoch
                )))
            }
            Err(e) => failures.push(format!("{r}: {e}")),
        }
    }
    // Only replicas that did not lose the stream count: a wiped replica answers as an empty log
    // and must be rebuilt from a primary before its answer can stand for what it acknowledged.
    let needed = cfg.replicas.len() + 1 - cfg.ack_quorum;
    let complete = sealed.iter().filter(|(_, s)| !s.rebuilding).count();
    let Some(local) = sealed.iter().find(|(r, _)| *r == cfg.me).map(|(_, s)| s.clone()) else {
        return Err(LogError::Unavailable(format!("stream {stream}: the local replica did not seal")));
    };
    if complete < needed {
        let rebuilding: Vec<&str> = sealed.iter().filter(|(_, s)| s.rebuilding).map(|(r, _)| r.as_str()).collect();
        return Err(LogError::Unavailable(format!(
            "stream {stream}: recovery sealed {complete} complete replicas of {}, {needed} needed (rebuilding: {rebuilding:?}; {})",
            cfg.replicas.len(),
            failures.join("; ")
        )));
    }
    // The most up-to-date log among the sealed replicas: highest (last epoch, last LSN).
    let rank = |s: &SealReply| (epoch_at(&s.epochs, s.last_lsn, s.last_lsn), s.last_lsn);
    let (best_id, best) = sealed.iter().max_by_key(|(_, s)| rank(s)).cloned().expect("at least the local replica");
    let min_last = sealed.iter().map(|(_, s)| s.last_lsn).min().unwrap_or(0);
    let h = best.last_lsn;
    // Copy what the local log lacks of the chosen one.
    if best_id != cfg.me {
        let m = matching_prefix(&local.epochs, local.last_lsn, &best.epochs, best.last_lsn);
        // Below either replica's base the match is unknown, and the chosen replica cannot send
        // what lies below its own: the local log is reset to the chosen one's base. What it
        // drops is below the trim point (bases never pass it) or conflicts with the chosen log
        // (so was never acknowledged).
        let mut reset = m < local.base_lsn.max(best.base_lsn);
        let (mut next, mut prev_epoch) = if reset {
            (best.base_lsn + 1, epoch_at(&best.epochs, best.base_lsn, best.last_lsn))
        } else {
            (m + 1, epoch_at(&local.epochs, m, local.last_lsn))
        };
        while next <= h {
            let got = tokio::time::timeout(cfg.timeout, peers.fetch(&best_id, stream, cfg.epoch, next, FETCH_CHUNK))
                .await
                .map_err(|_| LogError::Unavailable(format!("stream {stream}: recovery read from {best_id} timed out")))?
                .map_err(|e| LogError::Unavailable(format!("stream {stream}: recovery read from {best_id}: {e}")))?;
            if !got.ok {
                return Err(LogError::Unavailable(format!(
                    "stream {stream}: {best_id} is sealed at epoch {} above {}",
                    got.sealed, cfg.epoch
                )));
            }
            let entries: Vec<LogEntry> = got.entries.into_iter().filter(|e| e.lsn <= h).collect();
            let Some(last) = entries.last().map(|e| (e.lsn, e.epoch)) else {
                return Err(LogError::Unavailable(format!("stream {stream}: {best_id} returned no entry at {next}")));
            };
            if entries[0].lsn != next {
                return Err(LogError::Unavailable(format!(
                    "stream {stream}: {best_id} no longer holds LSN {next} (trimmed meanwhile)"
                )));
            }
            let write = ReplicaWrite {
                epoch: cfg.epoch,
                prev_lsn: next - 1,
                prev_epoch,
                entries,
                complete_through: u64::MAX,
                reset: std::mem::take(&mut reset),
                ..Default::default()
            };
            let copied = store.write(stream, write).await;
            match copied.map_err(store_unavailable)? {
                AppendReply::Durable(_) => {}
                other => return Err(LogError::Unavailable(format!("stream {stream}: local copy refused: {other:?}"))),
            }
            next = last.0 + 1;
            prev_epoch = last.1;
        }
    }
    expect_durable(stream, store.truncate_after(stream, cfg.epoch, h).await)?;
    // Re-replicate the tail under the new epoch (at least the last entry, so that the recovered
    // log commits without waiting for a new append).
    // Entries up to the local base are trimmed: re-replication starts after it.
    let local_base = store.state(stream).await.map_err(store_unavailable)?.base_lsn;
    let e_start = if h == 0 { 1 } else { min_last.max(local_base + 1).clamp(1, h) };
    let mut retagged = Vec::new();
    if h > 0 {
        let state = store.state(stream).await.map_err(store_unavailable)?;
        let mut from = e_start;
        while from <= h {
            let got = store.fetch(stream, None, from, FETCH_CHUNK as usize).await.map_err(store_unavailable)?;
            let Some(last) = got.entries.last().map(|e| e.lsn) else { break };
            from = last + 1;
            retagged.extend(got.entries.into_iter().map(|mut e| {
                e.epoch = cfg.epoch;
                e
            }));
        }
        let prev_epoch = epoch_at(&state.epochs, e_start - 1, state.last_lsn);
        let rewritten = store.append(stream, cfg.epoch, e_start - 1, prev_epoch, retagged.clone(), u64::MAX).await;
        expect_durable(stream, rewritten)?;
    }
    let state = store.state(stream).await.map_err(store_unavailable)?;
    if state.last_lsn != h {
        return Err(LogError::Unavailable(format!(
            "stream {stream}: recovered log ends at {} instead of {h}",
            state.last_lsn
        )));
    }
    // Producer and fence state: the history of trimmed entries, then the log itself (what is
    // left of it after trims).
    let mut producers = ProducerTable::default();
    let mut fences = FenceTable::default();
    let mut covered_below = 1;
    if let Some(h) = &cfg.history {
        h.seed(&mut producers, &mut fences);
        if h.complete {
            covered_below = h.first;
        }
    }
    let history_gap = state.base_lsn + 1 > covered_below;
    let mut from = 1;
    while from <= h {
        let got = store.fetch(stream, None, from, FETCH_CHUNK as usize).await.map_err(store_unavailable)?;
        let Some(last) = got.entries.last().map(|e| e.lsn) else { break };
        from = last + 1;
        for e in &got.entries {
            producers.observe(e);
            fences.observe(e);
        }
    }
    Ok(Recovered { last: h, e_start, epochs: state.epochs, retagged, producers, fences, history_gap })
}

fn expect_durable(stream: &str, r: Result<AppendReply, StoreError>) -> Result<(), LogError> {
    match r.map_err(store_unavailable)? {
        AppendReply::Durable(_) => Ok(()),
        AppendReply::Sealed(e) => {
            Err(LogError::Unavailable(format!("stream {stream}: sealed at epoch {e} during recovery")))
        }
        AppendReply::Diverged { last_lsn, .. } => {
            Err(LogError::Unavailable(format!("stream {stream}: local log diverged at {last_lsn} during recovery")))
        }
    }
}

struct Actor {
    cfg: PrimaryConfig,
    shared: Arc<Shared>,
    producers: ProducerTable,
    fences: FenceTable,
    matched: Vec<u64>,
    commit: u64,
    e_start: u64,
    waiters: BTreeMap<u64, Vec<Waiter>>,
    deposed: Option<String>,
    paused: Option<String>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Append { batch, reply, queued } => self.append(batch, reply, queued),
                Cmd::Durable { replica, lsn } => {
                    if let Some(m) = self.matched.get_mut(replica) {
                        *m = (*m).max(lsn);
                    }
                    self.shared.matched_tx.send_replace(self.matched.clone());
                    self.advance_commit();
                }
                Cmd::AddReplica => {
                    self.matched.push(0);
                    self.shared.matched_tx.send_replace(self.matched.clone());
                }
                Cmd::Pause(reason) => self.paused = reason,
                Cmd::History { first, reply } => {
                    let _ = reply.send(History::capture(&self.producers, &self.fences, first));
                }
                Cmd::Deposed { by, replica } => {
                    let why = format!(
                        "primary of stream {} at epoch {} was deposed: replica {replica} is sealed at epoch {by}",
                        self.cfg.stream, self.cfg.epoch
                    );
                    tracing::warn!("{why}");
                    self.step_down(why);
                }
                Cmd::StepDown(why) => {
                    tracing::info!(stream = %self.cfg.stream, epoch = self.cfg.epoch, "{why}");
                    self.step_down(why);
                }
            }
        }
    }

    fn step_down(&mut self, why: String) {
        for (_, ws) in std::mem::take(&mut self.waiters) {
            for w in ws {
                let _ = w.reply.send(Err(LogError::Unavailable(why.clone())));
            }
        }
        self.deposed = Some(why.clone());
        self.shared.deposed_tx.send_replace(Some(why));
    }

    fn append(&mut self, batch: Batch, reply: AppendResultTx, queued: Instant) {
        if let Some(why) = self.deposed.as_ref().or(self.paused.as_ref()) {
            let _ = reply.send(Err(LogError::Unavailable(why.clone())));
            return;
        }
        let len = batch.entries.len() as u32;
        match self.producers.check(batch.producer_id, batch.producer_epoch, batch.batch_seq, len) {
            Verdict::Refuse(why) => {
                let _ = reply.send(Err(LogError::Refused(why)));
            }
            Verdict::Duplicate { first_lsn, len } => self.wait(first_lsn, len, reply, queued),
            Verdict::Append => {
                if let Err(why) = self.fences.check(&self.cfg.stream, batch.fence.as_ref()) {
                    let _ = reply.send(Err(LogError::Fenced(why)));
                    return;
                }
                let batch_bytes: usize = batch.entries.iter().map(Vec::len).sum();
                let mut tail = self.shared.tail.lock().expect("tail lock");
                let first = tail.last + 1;
                self.fences.record(batch.fence.as_ref(), first);
                let epoch = self.cfg.epoch;
                if tail.epochs.last().is_none_or(|e| e.epoch != epoch) {
                    tail.epochs.push(EpochStart { epoch, start_lsn: first });
                }
                for (i, data) in batch.entries.into_iter().enumerate() {
                    tail.entries.push_back(LogEntry {
                        lsn: first + i as u64,
                        epoch,
                        producer_id: batch.producer_id,
                        producer_epoch: batch.producer_epoch,
                        batch_seq: batch.batch_seq,
                        batch_index: i as u32,
                        batch_len: len,
                        fence: if i == 0 { batch.fence.clone() } else { None },
                        data,
                    });
                }
                tail.last += u64::from(len);
                let last = tail.last;
                drop(tail);
                let bytes: usize = batch_bytes;
                self.cfg.metrics.appended_entries.inc_by(u64::from(len));
                self.cfg.metrics.appended_bytes.inc_by(bytes as u64);
                self.cfg.metrics.batch_entries.observe(f64::from(len));
                self.producers.record(batch.producer_id, batch.producer_epoch, batch.batch_seq, first, len);
                self.shared.last_tx.send_replace(last);
                self.wait(first, len, reply, queued);
            }
        }
    }

    fn wait(&mut self, first_lsn: u64, len: u32, reply: AppendResultTx, queued: Instant) {
        let last = first_lsn + u64::from(len) - 1;
        if last <= self.commit {
            let _ = reply.send(Ok((first_lsn..=last).collect()));
        } else {
            self.waiters.entry(last).or_default().push(Waiter { first_lsn, len, reply, queued });
        }
    }

    fn advance_commit(&mut self) {
        // Only the stream's replicas count (not those a move is adding).
        let mut m = self.matched[..self.cfg.replicas.len()].to_vec();
        m.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = m.get(self.cfg.ack_quorum - 1).copied().unwrap_or(0);
        // Only entries of this epoch commit by counting (older ones commit with them).
        if candidate < self.e_start || candidate <= self.commit {
            return;
        }
        self.commit = candidate;
        self.shared.commit_tx.send_replace(candidate);
        let later = self.waiters.split_off(&(candidate + 1));
        for (_, ws) in std::mem::replace(&mut self.waiters, later) {
            for w in ws {
                let last = w.first_lsn + u64::from(w.len) - 1;
                let _ = w.reply.send(Ok((w.first_lsn..=last).collect()));
                self.cfg.metrics.primary_ack_seconds.observe(w.queued.elapsed().as_secs_f64());
            }
        }
        // Entries committed and on the local disk are read from the store from now on.
        let local = self.cfg.replicas.iter().position(|r| *r == self.cfg.me).map_or(0, |i| self.matched[i]);
        let keep_from = candidate.min(local) + 1;
        let mut tail = self.shared.tail.lock().expect("tail lock");
        while tail.entries.front().is_some_and(|e| e.lsn < keep_from) {
            tail.entries.pop_front();
            tail.start += 1;
        }
    }
}

/// Replication to one replica: sends what it lacks, pipelined, and reports what it holds.
struct ReplicaTask {
    index: usize,
    replica: String,
    stream: String,
    epoch: u64,
    next: u64,
    /// Last LSN of the recovered log: a commit point at or above it covers every entry an
    /// earlier epoch acknowledged.
    recovered: u64,
    /// Entries up to here are deleted on the replica (as it last reported).
    replica_base: u64,
    /// The replica must drop its log and take this primary's from the trim point.
    reset: bool,
    shared: Arc<Shared>,
    store: ReplicaStore,
    tx: mpsc::UnboundedSender<Cmd>,
    metrics: LogMetrics,
}

impl ReplicaTask {
    async fn run<P: LogPeers>(mut self, peers: Arc<P>, local: Option<ReplicaStore>) {
        let mut backoff = Duration::from_millis(50);
        let mut deposed = self.shared.deposed_tx.subscribe();
        loop {
            if deposed.borrow_and_update().is_some() || self.tx.is_closed() {
                return;
            }
            let link = match &local {
                Some(store) => Ok(local_link(store.clone(), self.stream.clone())),
                None => peers.replicate(&self.replica, &self.stream).await,
            };
            match link {
                Ok(link) => {
                    match self.drive(link).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::debug!(stream = %self.stream, replica = %self.replica, error = %e, "replication link broke")
                        }
                    }
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::debug!(stream = %self.stream, replica = %self.replica, error = %e, "cannot reach replica")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = deposed.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The next message's entries from `self.next` (at most one message's worth), the epoch
    /// before them, and whether the replica must be reset first; `None` when it has everything.
    async fn gather(&mut self) -> Result<Option<(u64, Vec<LogEntry>, bool)>, String> {
        for _ in 0..2 {
            if self.reset {
                // The replica cannot take what follows its log (it diverged below a base, or it
                // lacks what this primary trimmed): send it the log from the trim point (or the
                // last entry, at least one is sent) over what it holds.
                let base = self.store.state(&self.stream).await.map_err(|e| e.to_string())?.base_lsn;
                let tail = self.shared.tail.lock().expect("tail lock");
                if tail.last == 0 {
                    self.reset = false;
                    return Ok(None);
                }
                let first = *self.shared.first_tx.borrow();
                self.next = base.max(first.saturating_sub(1)).min(tail.last - 1) + 1;
            }
            let (prev_epoch, last) = {
                let tail = self.shared.tail.lock().expect("tail lock");
                if self.next > tail.last {
                    return Ok(None);
                }
                let prev_epoch = tail.epoch_at(self.next - 1);
                if self.next >= tail.start {
                    let skip = (self.next - tail.start) as usize;
                    let mut bytes = 0;
                    let entries: Vec<LogEntry> = tail
                        .entries
                        .iter()
                        .skip(skip)
                        .take_while(|e| {
                            bytes += e.data.len();
                            bytes <= MAX_SEND_BYTES || e.lsn == self.next
                        })
                        .take(MAX_SEND_ENTRIES)
                        .cloned()
                        .collect();
                    return Ok(Some((prev_epoch, entries, std::mem::take(&mut self.reset))));
                }
                (prev_epoch, tail.start - 1)
            };
            let n = ((last - self.next + 1) as usize).min(MAX_SEND_ENTRIES);
            let got = self.store.fetch(&self.stream, None, self.next, n).await.map_err(|e| e.to_string())?;
            self.metrics.replicated_from_store.inc_by(got.entries.len() as u64);
            if got.entries.first().is_some_and(|e| e.lsn == self.next) {
                return Ok(Some((prev_epoch, got.entries, std::mem::take(&mut self.reset))));
            }
            // This primary's own files no longer hold `next` (trimmed): reset the replica.
            self.reset = true;
        }
        Err(format!("stream {}: cannot find entries to send from LSN {}", self.stream, self.next))
    }

    fn message(&self, prev_epoch: u64, entries: Vec<LogEntry>, reset: bool, first_lsn: u64) -> ReplicateMsg {
        let commit = *self.shared.commit_tx.borrow();
        ReplicateMsg {
            epoch: self.epoch,
            prev_lsn: self.next - 1,
            prev_epoch,
            entries,
            commit,
            complete_through: if commit >= self.recovered { commit } else { u64::MAX },
            first_lsn,
            reset,
        }
    }

    async fn drive(&mut self, mut link: ReplicaLink) -> Result<(), String> {
        let mut last_rx = self.shared.last_tx.subscribe();
        let mut first_rx = self.shared.first_tx.subscribe();
        let mut commit_rx = self.shared.commit_tx.subscribe();
        let mut deposed = self.shared.deposed_tx.subscribe();
        // When each message in flight was sent (answers come in order).
        let mut inflight: VecDeque<Instant> = VecDeque::with_capacity(REPLICA_WINDOW);
        // The trim point this replica was last told (0: not yet on this link).
        let mut told_first = 0;
        // The commit point it was last told, and when an empty message will tell a newer one.
        let mut told_commit = 0;
        let mut notice_at: Option<tokio::time::Instant> = None;
        loop {
            // Marked seen before gathering, so an append after this point wakes the select.
            last_rx.borrow_and_update();
            let first = *first_rx.borrow_and_update();
            while inflight.len() < REPLICA_WINDOW {
                let Some((prev_epoch, entries, reset)) = self.gather().await? else { break };
                if entries.is_empty() {
                    break;
                }
                let n = entries.len() as u64;
                let msg = self.message(prev_epoch, entries, reset, first);
                told_commit = msg.commit;
                link.tx.send(msg).await.map_err(|_| "link closed".to_string())?;
                told_first = first;
                self.next += n;
                inflight.push_back(Instant::now());
            }
            if told_first < first && inflight.len() < REPLICA_WINDOW {
                // Nothing to send but a new trim point (or a new link): the replica deletes
                // what lies below it now, not at the next append.
                let prev_epoch = self.shared.tail.lock().expect("tail lock").epoch_at(self.next - 1);
                let msg = self.message(prev_epoch, Vec::new(), false, first);
                told_commit = msg.commit;
                link.tx.send(msg).await.map_err(|_| "link closed")?;
                told_first = first;
                inflight.push_back(Instant::now());
            }
            let commit = *commit_rx.borrow_and_update();
            if told_commit >= commit {
                notice_at = None;
            } else if notice_at.is_some_and(|t| t <= tokio::time::Instant::now()) && inflight.len() < REPLICA_WINDOW {
                let prev_epoch = self.shared.tail.lock().expect("tail lock").epoch_at(self.next - 1);
                let msg = self.message(prev_epoch, Vec::new(), false, first);
                told_commit = msg.commit;
                link.tx.send(msg).await.map_err(|_| "link closed")?;
                inflight.push_back(Instant::now());
                notice_at = None;
            } else if notice_at.is_none() {
                notice_at = Some(tokio::time::Instant::now() + COMMIT_NOTICE);
            }
            tokio::select! {
                ack = link.rx.recv() => {
                    let Some(ack) = ack else { return Err("link closed".into()) };
                    if let Some(sent) = inflight.pop_front() {
                        self.metrics.replicate_seconds.observe(sent.elapsed().as_secs_f64());
                    }
                    match ack.reply {
                        AppendReply::Durable(lsn) => {
                            let _ = self.tx.send(Cmd::Durable { replica: self.index, lsn });
                        }
                        AppendReply::Sealed(by) => {
                            let _ = self.tx.send(Cmd::Deposed { by, replica: self.replica.clone() });
                            return Ok(());
                        }
                        AppendReply::Diverged { last_lsn, epochs, base_lsn } => {
                            let tail = self.shared.tail.lock().expect("tail lock");
                            let m = matching_prefix(&tail.epochs, tail.last, &epochs, last_lsn);
                            // Resend from the divergence point (acks of messages already in
                            // flight may diverge too and land here again: resends are harmless,
                            // a replica skips what it holds). Below the replica's base the
                            // match is unknown: everything it holds after `m` conflicts with
                            // this log and everything up to `m` is below the trim point, so it
                            // is reset (as it is when this primary no longer holds `m + 1`).
                            self.next = m + 1;
                            self.replica_base = base_lsn;
                            self.reset = m < base_lsn;
                        }
                    }
                }
                r = last_rx.changed() => if r.is_err() { return Ok(()) },
                r = first_rx.changed() => if r.is_err() { return Ok(()) },
                r = commit_rx.changed() => if r.is_err() { return Ok(()) },
                _ = tokio::time::sleep_until(notice_at.unwrap_or_else(tokio::time::Instant::now)), if notice_at.is_some() => {}
                _ = deposed.changed() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
