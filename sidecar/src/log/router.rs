//! Any sidecar's entry point to log streams: stream metadata in registers (create, describe,
//! list, trim point), who the primary is (the epoch register), taking over as primary, and
//! forwarding appends and reads to a primary elsewhere.
//!
//! An appender's batches keep their order: every batch of a stream passes through one queue per
//! stream on this sidecar, which hands it, in order and without awaiting, to the local primary
//! or to the long-lived forwarding stream of the remote primary.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::history::{History, MAX_HISTORY_BYTES};
use super::placement;
use super::primary::{LogPeers, Primary, PrimaryConfig};
use super::retention::Retention;
use super::store::ReplicaStore;
use super::{epoch_key, history_key, meta_key, AppendResult, AppendResultTx, Batch, LogEntry, LogError};
use crate::config::Role;
use crate::node::{Node, PeerView};
use crate::quorum::register::{RegisterError, Registers, Written};
use crate::quorum::transport::Peers;
use crate::validate::validate_name;

mod rebalance;
mod relocate;
pub use rebalance::plan_rebalance;
pub use relocate::target_replicas;

/// Attempts to settle who the primary is before giving up on a request.
const ROUTE_ATTEMPTS: usize = 4;
/// How often the primaries on this member apply retention.
const RETENTION_TICK: Duration = Duration::from_secs(1);

/// Log settings of this sidecar.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Replication factor of streams created without one.
    pub default_replication_factor: u32,
    /// Ack quorum of streams created without one.
    pub default_ack_quorum: u32,
    /// An append to an unknown stream creates it with the defaults.
    pub auto_create: bool,
    /// Largest entry, in bytes.
    pub max_entry_bytes: usize,
    /// Largest batch, in bytes.
    pub max_batch_bytes: usize,
    /// Most entries in a batch.
    pub max_batch_entries: usize,
    /// Deadline of metadata and recovery calls.
    pub timeout: Duration,
    /// How much of each stream its primary keeps on its own.
    pub retention: Retention,
    /// Streams the rebalancer moves at once after a membership change (0: no rebalance).
    pub rebalance_moves: usize,
}

impl LogSettings {
    /// The settings of the sidecar's log flags, with `timeout` for metadata and recovery calls.
    pub fn from_args(a: &crate::config::LogArgs, timeout: Duration) -> Self {
        Self {
            default_replication_factor: a.replication_factor,
            default_ack_quorum: a.effective_ack_quorum(),
            auto_create: !a.no_auto_create,
            max_entry_bytes: usize::try_from(a.max_entry_bytes).unwrap_or(usize::MAX),
            max_batch_bytes: usize::try_from(a.max_batch_bytes).unwrap_or(usize::MAX),
            max_batch_entries: a.max_batch_entries as usize,
            timeout,
            retention: Retention {
                bytes: a.retention_bytes,
                age: (a.retention_seconds > 0).then(|| Duration::from_secs(a.retention_seconds)),
            },
            rebalance_moves: a.rebalance_moves as usize,
        }
    }
}

/// A stream's settings, as stored in its metadata register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    /// Replication factor.
    pub replication_factor: u32,
    /// Ack quorum.
    pub ack_quorum: u32,
    /// Members holding it, preferred primary first.
    pub replicas: Vec<String>,
    /// First available LSN.
    pub first_lsn: u64,
}

impl StreamMeta {
    /// The register value.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "rf={};aq={};replicas={};first={}",
            self.replication_factor,
            self.ack_quorum,
            self.replicas.join(","),
            self.first_lsn
        )
        .into_bytes()
    }

    /// Parses a register value.
    pub fn decode(raw: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(raw).map_err(|_| "stream metadata is not text".to_string())?;
        let mut m = StreamMeta { replication_factor: 0, ack_quorum: 0, replicas: Vec::new(), first_lsn: 1 };
        for part in text.split(';') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("bad stream metadata field {part:?}"))?;
            let num = || v.parse::<u64>().map_err(|_| format!("bad stream metadata number {v:?}"));
            match k {
                "rf" => m.replication_factor = num()? as u32,
                "aq" => m.ack_quorum = num()? as u32,
                "replicas" => m.replicas = v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                "first" => m.first_lsn = num()?.max(1),
                _ => {}
            }
        }
        if m.ack_quorum == 0 || m.ack_quorum > m.replication_factor || m.replicas.len() != m.replication_factor as usize
        {
            return Err(format!("inconsistent stream metadata {text:?}"));
        }
        Ok(m)
    }
}

/// The value of a stream's epoch register: its primary and, once the stream moved off its first
/// replicas, the replicas of this epoch. The replica set lives beside the epoch because both
/// change by one compare-and-set: a primary that took over from version `v` seals the replicas
/// that version names, and a move writes new replicas only while version `v` is still current
/// (see the `relocate` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochValue {
    /// The primary (the member that wrote this version, or the one a move named).
    pub primary: String,
    /// The replicas, when they differ from the metadata's (the stream moved).
    pub replicas: Option<Vec<String>>,
}

impl EpochValue {
    /// The register value: `primary` or `primary;replicas=a,b,c` (names never hold `;`).
    pub fn encode(&self) -> Vec<u8> {
        match &self.replicas {
            None => self.primary.clone().into_bytes(),
            Some(r) => format!("{};replicas={}", self.primary, r.join(",")).into_bytes(),
        }
    }

    /// Parses a register value.
    pub fn decode(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw);
        match text.split_once(";replicas=") {
            Some((p, r)) => EpochValue {
                primary: p.to_string(),
                replicas: Some(r.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()),
            },
            None => EpochValue { primary: text.to_string(), replicas: None },
        }
    }

    /// The replicas of a stream with metadata `meta` under `epoch` (none yet: the metadata's).
    pub fn replicas_of(epoch: Option<&EpochValue>, meta: &StreamMeta) -> Vec<String> {
        epoch.and_then(|v| v.replicas.clone()).unwrap_or_else(|| meta.replicas.clone())
    }
}

/// What a stream looks like from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Name.
    pub name: String,
    /// Settings.
    pub meta: StreamMeta,
    /// Current primary (empty: none yet) and its epoch.
    pub primary: String,
    /// Its epoch.
    pub epoch: u64,
    /// Last committed LSN.
    pub last_lsn: u64,
}

/// Calls to a primary on another sidecar.
pub trait RemotePrimaries: Send + Sync + 'static {
    /// Queues a batch on the forwarding stream to `to` (in call order).
    fn forward(&self, to: &str, stream: &str, batch: Batch) -> oneshot::Receiver<AppendResult>;
    /// Reads committed entries at `to` (long poll up to `wait`).
    fn primary_read(
        &self,
        to: &str,
        stream: &str,
        from: u64,
        max: u32,
        wait: Duration,
    ) -> impl Future<Output = Result<(Vec<LogEntry>, u64, u64), LogError>> + Send;
    /// Trims at `to`.
    fn primary_trim(&self, to: &str, stream: &str, before: u64) -> impl Future<Output = Result<u64, LogError>> + Send;
    /// Asks `to` (a replica of the stream) to move the stream to `replicas` as its primary.
    fn primary_move(
        &self,
        to: &str,
        stream: &str,
        replicas: &[String],
    ) -> impl Future<Output = Result<(), LogError>> + Send;
}

/// Where a stream's primary is, from this sidecar.
#[derive(Clone)]
enum Route {
    Local(Primary),
    Remote(String),
}

type Queued = (Batch, bool, AppendResultTx);

struct StreamSlot {
    route: tokio::sync::Mutex<Option<Route>>,
    queue: mpsc::UnboundedSender<Queued>,
    /// Held through a move by this member's primary: two moves of one primary at once (a
    /// rebalance and a `MoveStream`, or two rebalancers) would let one's un-pause break the
    /// other's quiet log.
    moving: tokio::sync::Mutex<()>,
}

/// The log streams as this sidecar serves them.
pub struct LogRouter<P: Peers, L: LogPeers + RemotePrimaries> {
    node: Arc<Node<P>>,
    registers: Registers<P>,
    store: Option<ReplicaStore>,
    peers: Arc<L>,
    settings: LogSettings,
    slots: Mutex<HashMap<String, Arc<StreamSlot>>>,
}

fn register_error(e: RegisterError) -> LogError {
    match e {
        RegisterError::Invalid(m) => LogError::Invalid(m),
        other => LogError::Unavailable(other.to_string()),
    }
}

/// Checks a stream name.
pub fn validate_stream(name: &str) -> Result<(), LogError> {
    validate_name(name).map_err(|e| LogError::Invalid(format!("stream name {name:?}: {e}")))
}

impl<P: Peers, L: LogPeers + RemotePrimaries> LogRouter<P, L> {
    /// A router for `node` (with its replica store in the member role).
    /// Starts the retention task when a retention limit is set.
    pub fn new(node: Arc<Node<P>>, store: Option<ReplicaStore>, peers: Arc<L>, settings: LogSettings) -> Arc<Self> {
        if let Some(s) = &store {
            s.configure(settings.retention.segment_bytes(), node.metrics.log.clone());
        }
        let registers = Registers::new(node.proposer.clone(), settings.timeout);
        let router = Arc::new(Self { node, registers, store, peers, settings, slots: Mutex::new(HashMap::new()) });
        if router.store.is_some() {
            router.node.add_migration_step(Arc::new(relocate::LogMoves(Arc::downgrade(&router))));
        }
        if router.settings.retention.enabled() && router.store.is_some() {
            tokio::spawn(Self::retain(Arc::downgrade(&router)));
        }
        if router.settings.rebalance_moves > 0 && router.store.is_some() {
            tokio::spawn(Self::rebalance_loop(Arc::downgrade(&router), router.node.watch_config()));
        }
        router
    }

    /// Every [`RETENTION_TICK`], trims each stream this member is the primary of as far as
    /// [`Retention`] asks (one store call per stream; ends with the router).
    async fn retain(router: std::sync::Weak<Self>) {
        let mut tick = tokio::time::interval(RETENTION_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(router) = router.upgrade() else { return };
            let Some(store) = router.store.clone() else { return };
            let slots: Vec<Arc<StreamSlot>> = router.slots.lock().expect("slots lock").values().cloned().collect();
            for slot in slots {
                // A slot busy settling its primary is skipped this tick.
                let Ok(route) = slot.route.try_lock() else { continue };
                let Some(Route::Local(p)) = route.clone() else { continue };
                drop(route);
                if p.deposed().is_some() {
                    continue;
                }
                let Ok(files) = store.files(p.stream()).await else { continue };
                let point = router.settings.retention.trim_point(&files, std::time::SystemTime::now(), p.commit());
                if point > p.first_lsn() {
                    match router.trim_as(p.stream(), point, true, "retention").await {
                        Ok(first) => tracing::debug!(stream = p.stream(), first, "retention trimmed the stream"),
                        Err(e) => tracing::warn!(stream = p.stream(), error = %e, "retention could not trim"),
                    }
                }
            }
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LogSettings {
        &self.settings
    }

    /// The log metrics of this sidecar.
    pub fn metrics(&self) -> &super::metrics::LogMetrics {
        &self.node.metrics.log
    }

    /// Checks a batch against the limits.
    pub fn validate_batch(&self, stream: &str, batch: &Batch) -> Result<(), LogError> {
        validate_stream(stream)?;
        let s = &self.settings;
        if batch.entries.is_empty() {
            return Err(LogError::Invalid("the batch is empty: send at least one entry".into()));
        }
        if batch.entries.len() > s.max_batch_entries {
            return Err(LogError::Invalid(format!(
                "the batch has {} entries; the limit is {}",
                batch.entries.len(),
                s.max_batch_entries
            )));
        }
        if let Some((i, e)) = batch.entries.iter().enumerate().find(|(_, e)| e.len() > s.max_entry_bytes) {
            return Err(LogError::Invalid(format!(
                "entry {i} is {} bytes; the limit is {}",
                e.len(),
                s.max_entry_bytes
            )));
        }
        let total: usize = batch.entries.iter().map(Vec::len).sum();
        if total > s.max_batch_bytes {
            return Err(LogError::Invalid(format!("the batch is {total} bytes; the limit is {}", s.max_batch_bytes)));
        }
        if let Some(f) = &batch.fence {
            super::fence::validate(f).map_err(LogError::Invalid)?;
        }
        Ok(())
    }

    fn slot(self: &Arc<Self>, stream: &str) -> Arc<StreamSlot> {
        let mut slots = self.slots.lock().expect("slots lock");
        if let Some(s) = slots.get(stream) {
            return s.clone();
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let slot =
            Arc::new(StreamSlot { route: tokio::sync::Mutex::new(None), queue, moving: tokio::sync::Mutex::new(()) });
        slots.insert(stream.to_string(), slot.clone());
        tokio::spawn(self.clone().run_queue(stream.to_string(), slot.clone(), rx));
        slot
    }

    /// Queues a batch of `stream` (in call order) and returns where its result will arrive.
    /// With `local_only` (a batch forwarded by another sidecar) it is never forwarded again.
    pub fn submit(self: &Arc<Self>, stream: &str, batch: Batch, local_only: bool) -> oneshot::Receiver<AppendResult> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.validate_batch(stream, &batch) {
            let _ = reply.send(Err(e));
            return rx;
        }
        let _ = self.slot(stream).queue.send((batch, local_only, reply));
        rx
    }

    async fn run_queue(
        self: Arc<Self>,
        stream: String,
        slot: Arc<StreamSlot>,
        mut rx: mpsc::UnboundedReceiver<Queued>,
    ) {
        while let Some((batch, local_only, reply)) = rx.recv().await {
            let route = match self.route(&stream, &slot, true).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            let result = match route {
                Route::Local(p) => p.submit(batch),
                Route::Remote(to) if local_only => {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(Err(LogError::Unavailable(format!(
                        "{} is not the primary of stream {stream}; {to} is",
                        self.node.id
                    ))));
                    *slot.route.lock().await = None;
                    rx
                }
                Route::Remote(to) => self.peers.forward(&to, &stream, batch),
            };
            let slot = slot.clone();
            let ack_seconds = self.node.metrics.log.ack_seconds.clone();
            let queued = std::time::Instant::now();
            // A primary that cannot reach its ack quorum (or a forward into a partition) must
            // not hold the appender forever: the batch may still commit later, which an
            // idempotent retry resolves.
            let deadline = self.settings.timeout * 2;
            tokio::spawn(async move {
                let r = match tokio::time::timeout(deadline, result).await {
                    Ok(r) => r.unwrap_or_else(|_| Err(LogError::Unavailable("the primary went away".into()))),
                    Err(_) => Err(LogError::Unavailable(format!(
                        "not acknowledged within {} ms (it may still be written: retry idempotently)",
                        deadline.as_millis()
                    ))),
                };
                ack_seconds.observe(queued.elapsed().as_secs_f64());
                if matches!(r, Err(LogError::Unavailable(_))) {
                    // Ask again who the primary is for the next batch.
                    *slot.route.lock().await = None;
                }
                let _ = reply.send(r);
            });
        }
    }

    fn is_down(&self, member: &str) -> bool {
        matches!(self.node.status().peers.get(member), Some(PeerView::Down(_)))
    }

    /// The stream's metadata; created with the defaults when absent and `create` is set.
    pub async fn meta(&self, stream: &str, create: bool) -> Result<StreamMeta, LogError> {
        validate_stream(stream)?;
        match self.registers.read(&meta_key(stream)).await.map_err(register_error)? {
            Some(e) => StreamMeta::decode(&e.value).map_err(LogError::Unavailable),
            None if create => self.create(stream, 0, 0).await,
            None => Err(LogError::NotFound(stream.to_string())),
        }
    }

    /// The stream's metadata, its epoch register's value, and its replicas under that epoch.
    async fn current_replicas(&self, stream: &str) -> Result<(StreamMeta, Option<EpochValue>, Vec<String>), LogError> {
        let meta = self.meta(stream, false).await?;
        let ep = self.registers.read(&epoch_key(stream)).await.map_err(register_error)?;
        let value = ep.as_ref().map(|e| EpochValue::decode(&e.value));
        let replicas = EpochValue::replicas_of(value.as_ref(), &meta);
        Ok((meta, value, replicas))
    }

    /// Creates a stream (idempotent with the same settings; 0 takes the defaults).
    pub async fn create(&self, stream: &str, rf: u32, aq: u32) -> Result<StreamMeta, LogError> {
        validate_stream(stream)?;
        let cfg = self.node.config();
        let members: Vec<String> = cfg.current.members.iter().map(|m| m.id.clone()).collect();
        let n = members.len() as u32;
        let rf = if rf == 0 { self.settings.default_replication_factor.min(n) } else { rf };
        let aq = if aq == 0 { self.settings.default_ack_quorum.min(rf) } else { aq };
        if rf == 0 || rf > n {
            return Err(LogError::Invalid(format!("replication factor must be 1..={n} (the members), got {rf}")));
        }
        if aq == 0 || aq > rf {
            return Err(LogError::Invalid(format!("ack quorum must be 1..={rf} (the replication factor), got {aq}")));
        }
        let meta = StreamMeta {
            replication_factor: rf,
            ack_quorum: aq,
            replicas: placement::replicas(stream, &members, rf as usize),
            first_lsn: 1,
        };
        match self.registers.create(&meta_key(stream), meta.encode()).await.map_err(register_error)? {
            Written::Applied { .. } => Ok(meta),
            Written::Conflict { current: Some(cur) } => {
                let existing = StreamMeta::decode(&cur.value).map_err(LogError::Unavailable)?;
                if existing.replication_factor == rf && existing.ack_quorum == aq {
                    Ok(existing)
                } else {
                    Err(LogError::AlreadyExists(format!(
                        "stream {stream} exists with replication factor {} and ack quorum {}",
                        existing.replication_factor, existing.ack_quorum
                    )))
                }
            }
            Written::Conflict { current: None } => {
                Err(LogError::Unavailable(format!("stream {stream}: creation raced with a deletion")))
            }
        }
    }

    /// Names of all streams (paged through the register list).
    pub async fn list(&self) -> Result<Vec<String>, LogError> {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10_000 {
            let page = self.registers.list("log/", after.as_deref(), 1000).await.map_err(register_error)?;
            for k in &page.keys {
                if let Some(name) = k.strip_prefix("log/").and_then(|k| k.strip_suffix("/meta")) {
                    names.push(name.to_string());
                }
            }
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        Ok(names)
    }

    /// Settings, primary and tail of a stream.
    pub async fn describe(self: &Arc<Self>, stream: &str) -> Result<StreamInfo, LogError> {
        let meta = self.meta(stream, false).await?;
        let (_, first, last) = self.read(stream, 0, 0, Duration::ZERO, false).await.unwrap_or((Vec::new(), 1, 0));
        let ep = self.registers.read(&epoch_key(stream)).await.map_err(register_error)?;
        let (value, epoch) = ep.map_or((None, 0), |e| (Some(EpochValue::decode(&e.value)), e.version));
        let replicas = EpochValue::replicas_of(value.as_ref(), &meta);
        let primary = value.map(|v| v.primary).unwrap_or_default();
        Ok(StreamInfo {
            name: stream.to_string(),
            meta: StreamMeta { first_lsn: first, replicas, ..meta },
            primary,
            epoch,
            last_lsn: last,
        })
    }

    /// Committed entries from `from` (0: the first available), up to `max`, waiting up to
    /// `wait` for `from` to commit; with the first available and last committed LSN.
    pub async fn read(
        self: &Arc<Self>,
        stream: &str,
        from: u64,
        max: u32,
        wait: Duration,
        local_only: bool,
    ) -> Result<(Vec<LogEntry>, u64, u64), LogError> {
        validate_stream(stream)?;
        if let Some(got) = self.replica_read(stream, from, max).await {
            return Ok(got);
        }
        let slot = self.slot(stream);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = match self.route(stream, &slot, false).await? {
                Route::Local(p) => match p.read(from, max as usize, wait).await {
                    Ok(got) => self.confirm_epoch(stream, p.epoch).await.map(|()| got),
                    Err(e) => Err(e),
                },
                Route::Remote(to) if local_only => Err(LogError::Unavailable(format!(
                    "{} is not the primary of stream {stream}; {to} is",
                    self.node.id
                ))),
                Route::Remote(to) => self.peers.primary_read(&to, stream, from, max, wait).await,
            };
            if matches!(r, Err(LogError::Unavailable(_))) {
                *slot.route.lock().await = None;
                if attempt < 2 && !local_only {
                    continue;
                }
            }
            return r;
        }
    }

    /// A read this member's own replica answers without the primary: a whole page (`max`
    /// entries from `from`) of entries it knows are committed (see
    /// [`ReplicaStore::known_committed`]). Committed entries never change, and the primary
    /// would answer the same page, so such a read is as fresh as one through the primary; only
    /// its last LSN is this replica's commit point, a lower bound of the primary's (and a trim
    /// racing with the read may not have reached this replica yet: it returns the entries).
    /// Reads that reach beyond it, reads of the first available LSN (`from` 0) or below the
    /// trim point, and `Tail`, go to the primary. So readers that catch up (a `Subscribe` far
    /// behind, paged reads of old entries) are served by every replica, even while the primary
    /// is down. Test: `e2e/tests/log.rs::committed_pages_are_read_from_any_replica_while_the_primary_is_paused`
    /// (verified to fail, waiting on the paused primary, without this path).
    async fn replica_read(&self, stream: &str, from: u64, max: u32) -> Option<(Vec<LogEntry>, u64, u64)> {
        let store = self.store.as_ref()?;
        let (first, commit) = store.known_committed(stream)?;
        if from == 0 || max == 0 || from < first.max(1) || from + u64::from(max) - 1 > commit {
            return None;
        }
        let got = store.fetch(stream, None, from, max as usize).await.ok()?;
        let dense = got.entries.len() == max as usize && got.entries.iter().zip(from..).all(|(e, l)| e.lsn == l);
        if !dense {
            return None; // reset or trimmed here meanwhile: the primary answers
        }
        self.node.metrics.log.replica_reads.inc();
        Some((got.entries, first.max(1), commit))
    }

    /// Reads are linearizable: a primary learns that it was replaced only when a replica refuses
    /// its next write, so one that was paused or cut off (and serves no appends) could go on
    /// answering reads from its old commit point. After reading, it confirms that the epoch
    /// register still holds its epoch: a newer primary's acknowledged writes all follow that
    /// register's change, so if the confirmation (which starts after the read request arrived)
    /// sees the old epoch, no write acknowledged before the request is missing from the answer.
    /// Found by the stocks demo's checker (`scripts/stocks-demo.sh`: a sidecar paused past its
    /// lease served a stale tail after SIGCONT). Test:
    /// `e2e/tests/log.rs::reads_through_a_paused_and_replaced_primary_are_not_stale` (verified to
    /// fail, with a stale tail, without this confirmation).
    async fn confirm_epoch(&self, stream: &str, epoch: u64) -> Result<(), LogError> {
        let ep = self.registers.read(&epoch_key(stream)).await.map_err(register_error)?;
        match ep {
            Some(e) if e.version == epoch => Ok(()),
            other => Err(LogError::Unavailable(format!(
                "stream {stream}: this member's primary (epoch {epoch}) was replaced (epoch register at version {})",
                other.map_or(0, |e| e.version)
            ))),
        }
    }

    /// Trims the stream below `before` (at most its last committed LSN + 1): the trim point is
    /// stored in the metadata register first, then every replica deletes its segment files
    /// wholly below it (the primary's replication carries it).
    pub async fn trim(self: &Arc<Self>, stream: &str, before: u64, local_only: bool) -> Result<u64, LogError> {
        self.trim_as(stream, before, local_only, "app").await
    }

    /// [`LogRouter::trim`], counted under `cause`.
    async fn trim_as(
        self: &Arc<Self>,
        stream: &str,
        before: u64,
        local_only: bool,
        cause: &str,
    ) -> Result<u64, LogError> {
        validate_stream(stream)?;
        let slot = self.slot(stream);
        let p = match self.route(stream, &slot, false).await? {
            Route::Local(p) => p,
            Route::Remote(to) if local_only => {
                return Err(LogError::Unavailable(format!(
                    "{} is not the primary of stream {stream}; {to} is",
                    self.node.id
                )))
            }
            Route::Remote(to) => return self.peers.primary_trim(&to, stream, before).await,
        };
        let commit = p.commit();
        if before > commit + 1 {
            return Err(LogError::Invalid(format!(
                "cannot trim before {before}: the last committed LSN of {stream} is {commit}"
            )));
        }
        if before > p.first_lsn() {
            self.store_history(stream, &p, before).await;
        }
        for _ in 0..ROUTE_ATTEMPTS {
            let cur = self.registers.read(&meta_key(stream)).await.map_err(register_error)?;
            let Some(cur) = cur else { return Err(LogError::NotFound(stream.to_string())) };
            let mut meta = StreamMeta::decode(&cur.value).map_err(LogError::Unavailable)?;
            if meta.first_lsn >= before {
                p.set_first_lsn(meta.first_lsn);
                return Ok(meta.first_lsn);
            }
            meta.first_lsn = before;
            let w = self.registers.compare_and_set(&meta_key(stream), cur.version, meta.encode()).await;
            if let Written::Applied { .. } = w.map_err(register_error)? {
                p.set_first_lsn(before);
                self.node.metrics.log.trim(cause);
                return Ok(before);
            }
        }
        Err(LogError::Unavailable(format!("stream {stream}: the trim point kept changing")))
    }

    /// Stores what the primary's tables know of the entries below `before` in the stream's
    /// history register, unless it holds a history at `before` or higher already (see
    /// [`super::history`]). Best effort: without it, later primaries treat the trimmed
    /// producers as unknown, as before histories existed.
    async fn store_history(&self, stream: &str, p: &Primary, before: u64) {
        let Some(h) = p.history(before).await else { return };
        let raw = h.encode();
        if raw.len() > MAX_HISTORY_BYTES {
            tracing::warn!(
                stream,
                bytes = raw.len(),
                "stream history too large to store; trimmed producers will be forgotten"
            );
            return;
        }
        for _ in 0..ROUTE_ATTEMPTS {
            let cur = match self.registers.read(&history_key(stream)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(stream, error = %e, "could not read the stream history");
                    return;
                }
            };
            let write = match &cur {
                Some(c) if History::decode(&c.value).is_ok_and(|old| old.first >= before) => return,
                Some(c) => self.registers.compare_and_set(&history_key(stream), c.version, raw.clone()).await,
                None => self.registers.create(&history_key(stream), raw.clone()).await,
            };
            match write {
                Ok(Written::Applied { .. }) => return,
                Ok(Written::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(stream, error = %e, "could not store the stream history");
                    return;
                }
            }
        }
    }

    /// Who serves the stream: the cached route, or settled from the epoch register (taking
    /// over when this member should be the primary).
    async fn route(&self, stream: &str, slot: &StreamSlot, create: bool) -> Result<Route, LogError> {
        let mut cached = slot.route.lock().await;
        if let Some(r) = cached.as_ref() {
            match r {
                Route::Local(p) if p.deposed().is_some() => {}
                r => return Ok(r.clone()),
            }
        }
        let meta = self.meta(stream, create && self.settings.auto_create).await?;
        let me = self.node.id.as_str();
        let mut last_err = String::new();
        for _ in 0..ROUTE_ATTEMPTS {
            let ep = self.registers.read(&epoch_key(stream)).await.map_err(register_error)?;
            let value = ep.as_ref().map(|e| EpochValue::decode(&e.value));
            let replicas = EpochValue::replicas_of(value.as_ref(), &meta);
            let is_replica = self.node.role == Role::Member && replicas.iter().any(|r| r == me);
            let named = value.as_ref().map(|v| v.primary.clone());
            let local_active = match cached.as_ref() {
                Some(Route::Local(p)) if p.deposed().is_none() && ep.as_ref().is_some_and(|e| e.version == p.epoch) => {
                    Some(p.clone())
                }
                _ => None,
            };
            if let Some(p) = local_active {
                *cached = Some(Route::Local(p.clone()));
                return Ok(Route::Local(p));
            }
            let target = match &named {
                Some(n) if n == me && is_replica => None,
                Some(n) if !self.is_down(n) || !is_replica => Some(n.clone()),
                Some(_) => None, // the named primary is down and this member holds the stream
                None => {
                    let first_up = replicas.iter().find(|r| r.as_str() == me || !self.is_down(r)).cloned();
                    match first_up {
                        Some(r) if r == me && is_replica => None,
                        Some(r) => Some(r),
                        None => return Err(LogError::Unavailable(format!("no replica of stream {stream} is up"))),
                    }
                }
            };
            if let Some(to) = target {
                *cached = Some(Route::Remote(to.clone()));
                return Ok(Route::Remote(to));
            }
            // Take over: the CAS's resulting version is the new epoch; the replicas stay those
            // of the version it replaces.
            let fresh_stream = ep.is_none();
            let mine = EpochValue { primary: me.to_string(), replicas: value.and_then(|v| v.replicas) }.encode();
            let write = match &ep {
                Some(e) => self.registers.compare_and_set(&epoch_key(stream), e.version, mine).await,
                None => self.registers.create(&epoch_key(stream), mine).await,
            };
            let epoch = match write.map_err(register_error)? {
                Written::Applied { version } => version,
                Written::Conflict { .. } => {
                    last_err = "another sidecar took over at the same time".into();
                    continue;
                }
            };
            let store = self.store.clone().ok_or_else(|| LogError::Unavailable("no local log store".into()))?;
            let history = match self.registers.read(&history_key(stream)).await.map_err(register_error)? {
                Some(v) => match History::decode(&v.value) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::warn!(stream, error = %e, "ignoring an unreadable stream history");
                        None
                    }
                },
                None => None,
            };
            let cfg = PrimaryConfig {
                stream: stream.to_string(),
                me: me.to_string(),
                replicas,
                ack_quorum: meta.ack_quorum as usize,
                epoch,
                first_lsn: meta.first_lsn,
                timeout: self.settings.timeout,
                fresh_stream,
                history,
                metrics: self.node.metrics.log.clone(),
            };
            let p = Primary::start(cfg, store, self.peers.clone()).await?;
            *cached = Some(Route::Local(p.clone()));
            return Ok(Route::Local(p));
        }
        Err(LogError::Unavailable(format!("stream {stream}: no settled primary ({last_err})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_garbage_is_refused() {
        let m = StreamMeta {
            replication_factor: 3,
            ack_quorum: 2,
            replicas: vec!["a".into(), "b".into(), "c".into()],
            first_lsn: 7,
        };
        assert_eq!(StreamMeta::decode(&m.encode()), Ok(m));
        assert!(StreamMeta::decode(b"rf=2;aq=3;replicas=a,b;first=1").is_err());
        assert!(StreamMeta::decode(b"\xff").is_err());
        assert!(StreamMeta::decode(b"rf=x").is_err());
    }
}
