//! Durable acceptor: the acceptor state machine persisted in redb, with group commit.
//!
//! One writer thread owns the registers. It takes every message waiting in its queue, applies
//! them in arrival order, makes the registers they changed durable, and only then sends the
//! replies. A reply therefore never reveals state that a crash could lose, and a burst of
//! messages costs one sync. Durable means: appended and synced to the write-ahead log
//! ([`super::wal`], one small record); the replies go out, and then the batch is committed to
//! redb without a sync, before the writer takes the next batch; a durable redb commit (a
//! checkpoint) happens when the log is full, when the batch changes fences or metadata, and at
//! close, and it restarts the log in a new generation (its replies wait for it). Opening the
//! store replays the log's current generation over redb. `super::wal` argues why that loses
//! nothing and never moves a register back.
//!
//! Readers of redb (scans for catch-up and migration, key listings, the register count) first
//! pass a barrier through the writer's queue, answered after the commit of the batch it came
//! in: a read therefore sees every write acknowledged before it started. Catch-up depends on
//! that (a value chosen by a quorum that includes this member must be in the pages a wiped
//! member copies; `reads_right_after_an_acknowledged_write_see_it` fails without the barrier).
//! redb's code was about a fifth of the writer's CPU samples in a strict sequencer benchmark;
//! it now runs after the replies instead of before them.
//!
//! # Bounded memory
//!
//! redb holds every register; memory holds only a cache of recently used ones, so a member's
//! memory does not grow with its keyspace. The cache has two generations: registers a batch
//! touches are (re)loaded into the hot one (from the cold one, else from the last commit);
//! when the hot generation exceeds [`StoreOptions::cache_registers`] after a commit, it becomes
//! the cold one and the old cold one is dropped. A hot register therefore stays cached, at most
//! about twice `cache_registers` registers are in memory, and since eviction happens only after
//! the commit of the batch that changed a register, the cache never differs from the disk
//! between batches (the writer is redb's only writer).
//!
//! Catch-up and migration read the keyspace in pages ([`RegisterStore::scan`]): each page comes
//! from its own redb read transaction, off the writer thread, so it sees exactly the state of
//! one commit and never delays group commit.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use super::acceptor::{
    decode_register, encode_register, page_keys, AcceptReply, AcceptorState, PrepareReply, RegisterState, Voter,
};
use super::transport::KeyPage;
use super::wal::Wal;
use super::Ballot;

const REGISTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("registers");
const FENCES: TableDefinition<&str, u64> = TableDefinition::new("fences");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The META row holding the write-ahead log's generation (see [`super::wal`]).
const WAL_GENERATION: &str = "wal_generation";
/// Most messages folded into one commit.
const MAX_GROUP: usize = 4096;
/// Most registers one page of a scan may be asked for.
pub const MAX_PAGE_REGISTERS: usize = 16_384;
/// A page stops growing once its registers take this many bytes (it always holds at least one,
/// and one register is at most a key and a 1 MiB value, so a page stays far below the 64 MiB
/// a peer accepts in one message).
pub const PAGE_BYTES: usize = 4 << 20;

/// Tuning of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Registers in one cache generation (memory holds at most about twice this many).
    pub cache_registers: usize,
    /// Bytes of redb's own page cache.
    pub page_cache_bytes: usize,
    /// Size of the write-ahead log: a checkpoint (durable redb commit) happens when it is full.
    pub wal_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { cache_registers: 65_536, page_cache_bytes: 64 << 20, wal_bytes: 4 << 20 }
    }
}

/// What the store's writer reports (registered on the sidecar's `/metrics`).
#[derive(Clone)]
pub struct StoreMetrics {
    /// Time from a batch's first message taken to its replies: applying it and making it
    /// durable (the log record's `fdatasync`, or a checkpoint).
    pub batch_seconds: Histogram,
    /// Messages (acceptor calls) folded into one batch.
    pub batch_messages: Histogram,
    /// Batches made durable by a checkpoint (a durable redb commit) instead of a log record.
    pub checkpoints: Counter,
}

impl StoreMetrics {
    /// Metrics not registered anywhere (tests, tools).
    pub fn unregistered() -> Self {
        Self {
            batch_seconds: Histogram::new(exponential_buckets(0.000_025, 2.0, 18)),
            batch_messages: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            checkpoints: Counter::default(),
        }
    }

    /// Registers the store's metrics (`ordo_quorum_store_*`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        registry.register(
            "quorum_store_batch_seconds",
            "Time for the quorum store to apply a batch of acceptor calls and make it durable",
            m.batch_seconds.clone(),
        );
        registry.register(
            "quorum_store_batch_messages",
            "Acceptor calls folded into one durable batch",
            m.batch_messages.clone(),
        );
        registry.register(
            "quorum_store_checkpoints",
            "Batches made durable by a checkpoint (durable redb commit) instead of a log record",
            m.checkpoints.clone(),
        );
        m
    }
}

/// Facts about this member's store that outlive restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreMeta {
    /// Random id chosen when the data directory was created.
    pub incarnation: u64,
    /// The store holds state that may count in quorums (false until catch-up finished).
    pub caught_up: bool,
    /// Highest configuration epoch this member has loaded.
    pub max_epoch: u64,
    /// Highest joint epoch whose migration this member finished.
    pub migrated_epoch: u64,
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The member is catching up and does not vote yet.
    #[error("member is catching up after starting with an empty data directory; it does not vote yet")]
    NotCaughtUp,
    /// The caller asked for something the store does not serve (e.g. a page size out of range).
    #[error("{0}")]
    Invalid(String),
    /// redb or I/O failure.
    #[error("storage: {0}")]
    Storage(String),
    /// The writer thread is gone (shutting down).
    #[error("storage is shut down")]
    Closed,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

/// Maps any redb error type into a [`StoreError`].
fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::from(e.into())
}

/// Checks the number of registers a caller asks for in one page.
pub fn check_page_limit(limit: usize) -> Result<usize, String> {
    if limit == 0 || limit > MAX_PAGE_REGISTERS {
        return Err(format!("page size must be 1..={MAX_PAGE_REGISTERS} registers, got {limit}"));
    }
    Ok(limit)
}

/// One page of a member's registers, in key order, with what a copier needs to trust it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The member's registers count in quorums (as of this page's commit).
    pub caught_up: bool,
    /// The member's incarnation: a change between two pages means it lost its data in between.
    pub incarnation: u64,
    /// Latest known incarnation of each member.
    pub fences: Vec<Voter>,
    /// Registers with keys after the requested one, in increasing key order.
    pub registers: Vec<(String, RegisterState)>,
    /// `Some(last key)` when registers follow this page: ask for the ones after it next.
    /// `None` when the page reaches the end of the keyspace.
    pub next: Option<String>,
}

impl Page {
    /// Checks that this page answers a request for the registers after `after`: keys strictly
    /// increasing and all after `after`, and `next`, if any, is the last key (so an empty page
    /// is the last one). Then the pages of a walk cover every key exactly once, each as of the
    /// commit its page was read at, and every walk ends.
    pub fn check(&self, after: Option<&str>) -> Result<(), String> {
        let mut prev = after;
        for (key, _) in &self.registers {
            if prev.is_some_and(|p| key.as_str() <= p) {
                return Err(format!("page out of order: key {key:?} does not follow {:?}", prev.unwrap_or("")));
            }
            prev = Some(key);
        }
        match (&self.next, self.registers.last()) {
            (None, _) => Ok(()),
            (Some(next), Some((last, _))) if next == last => Ok(()),
            (Some(next), _) => Err(format!("page continues after {next:?}, which is not its last key")),
        }
    }
}

enum Op {
    Prepare {
        key: String,
        ballot: Ballot,
        reply: oneshot::Sender<Result<PrepareReply, StoreError>>,
    },
    Accept {
        key: String,
        ballot: Ballot,
        value: Option<Vec<u8>>,
        promise_next: Option<Ballot>,
        voters: Vec<Voter>,
        reply: oneshot::Sender<Result<AcceptReply, StoreError>>,
    },
    Fence {
        member: String,
        incarnation: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    InstallPage {
        registers: Vec<(String, RegisterState)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    FinishCopy {
        fences: Vec<Voter>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SetMeta {
        max_epoch: Option<u64>,
        migrated_epoch: Option<u64>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Answered once every batch queued before it is committed to redb (readers then see it).
    Barrier {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Handle to the durable acceptor of this member.
#[derive(Clone)]
pub struct RegisterStore {
    tx: mpsc::UnboundedSender<Op>,
    meta: watch::Receiver<StoreMeta>,
    db: Arc<Database>,
}

impl RegisterStore {
    /// Opens (or creates) the store in `dir` with default options. A new store gets a fresh
    /// incarnation and is not caught up. `member` is this member's id (its own fence).
    pub fn open(dir: &Path, member: &str) -> Result<Self, StoreError> {
        Self::open_with(dir, member, StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir` with `options`.
    pub fn open_with(dir: &Path, member: &str, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_observed(dir, member, options, StoreMetrics::unregistered())
    }

    /// Opens (or creates) the store in `dir` with `options`, reporting to `metrics`.
    pub fn open_observed(
        dir: &Path,
        member: &str,
        options: StoreOptions,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Storage(format!("{}: {e}", dir.display())))?;
        let db = redb::Builder::new()
            .set_cache_size(options.page_cache_bytes)
            .create(dir.join("ordo.redb"))
            .map_err(db_err)?;
        let db = Arc::new(db);
        let (fences, meta) = load(&db, member)?;
        let wal = open_wal(&db, &dir.join("ordo.wal"), options.wal_bytes)?;
        let member = member.to_string();
        let (meta_tx, meta_rx) = watch::channel(meta);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            member,
            db: db.clone(),
            state: AcceptorState { registers: HashMap::new(), fences },
            cold: HashMap::new(),
            cache_registers: options.cache_registers.max(1),
            meta,
            meta_tx,
            closing: None,
            wal,
            metrics,
        };
        std::thread::Builder::new()
            .name("ordo-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        Ok(Self { tx, meta: meta_rx, db })
    }

    /// Current metadata.
    pub fn meta(&self) -> StoreMeta {
        *self.meta.borrow()
    }

    /// Watch metadata changes.
    pub fn watch_meta(&self) -> watch::Receiver<StoreMeta> {
        self.meta.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once every write acknowledged before this call is visible to redb's readers
    /// (replies go out when a batch is durable in the log, before its redb commit).
    async fn barrier(&self) -> Result<(), StoreError> {
        self.call(|reply| Op::Barrier { reply }).await
    }

    /// CASPaxos phase 1.
    pub async fn prepare(&self, key: String, ballot: Ballot) -> Result<PrepareReply, StoreError> {
        self.call(|reply| Op::Prepare { key, ballot, reply }).await
    }

    /// CASPaxos phase 2.
    pub async fn accept(
        &self,
        key: String,
        ballot: Ballot,
        value: Option<Vec<u8>>,
        promise_next: Option<Ballot>,
        voters: Vec<Voter>,
    ) -> Result<AcceptReply, StoreError> {
        self.call(|reply| Op::Accept { key, ballot, value, promise_next, voters, reply }).await
    }

    /// Records a member's new incarnation.
    pub async fn fence(&self, member: String, incarnation: u64) -> Result<(), StoreError> {
        self.call(|reply| Op::Fence { member, incarnation, reply }).await
    }

    /// Up to `limit` registers with keys after `after` (from the first key when `None`), read
    /// from one commit. Fails with [`StoreError::Invalid`] unless `limit` is
    /// 1..=[`MAX_PAGE_REGISTERS`].
    pub async fn scan(&self, after: Option<String>, limit: usize) -> Result<Page, StoreError> {
        check_page_limit(limit).map_err(StoreError::Invalid)?;
        self.barrier().await?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || scan(&db, after.as_deref(), limit, PAGE_BYTES))
            .await
            .map_err(|e| StoreError::Storage(format!("scan task: {e}")))?
    }

    /// Up to `limit` keys under `prefix` after `after` (exclusive), in key order, with the state
    /// of each one's accepted value, read from one commit (register listing).
    pub async fn list_keys(&self, prefix: String, after: String, limit: usize) -> Result<KeyPage, StoreError> {
        self.barrier().await?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || list_keys(&db, &prefix, &after, limit))
            .await
            .map_err(|e| StoreError::Storage(format!("list task: {e}")))?
    }

    /// Number of registers stored (as of the last commit).
    pub async fn register_count(&self) -> Result<u64, StoreError> {
        self.barrier().await?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            use redb::ReadableTableMetadata;
            db.begin_read().map_err(db_err)?.open_table(REGISTERS).map_err(db_err)?.len().map_err(db_err)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("count task: {e}")))?
    }

    /// Merges copied registers into the store (keeping the higher accepted ballot and the
    /// higher promise of each), durably, without making the store caught up. The merge is
    /// queued when this is called (so several pages share one commit); the future resolves once
    /// it is committed.
    pub fn install_page(
        &self,
        registers: Vec<(String, RegisterState)>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = self.tx.send(Op::InstallPage { registers, reply }).map_err(|_| StoreError::Closed);
        async move {
            queued?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Records copied fences and marks the store caught up: from the reply on, it votes.
    pub async fn finish_copy(&self, fences: Vec<Voter>) -> Result<(), StoreError> {
        self.call(|reply| Op::FinishCopy { fences, reply }).await
    }

    /// Stops the writer after the messages queued before this call and closes the database,
    /// so that another process may open it once this returns (other clones of this handle
    /// must be gone, and no scan running).
    pub async fn close(self) -> Result<(), StoreError> {
        let Self { tx, db, .. } = self;
        drop(db);
        let (reply, rx) = oneshot::channel();
        tx.send(Op::Close { reply }).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Persists the highest loaded epoch and/or the highest migrated epoch.
    pub async fn set_meta(&self, max_epoch: Option<u64>, migrated_epoch: Option<u64>) -> Result<(), StoreError> {
        self.call(|reply| Op::SetMeta { max_epoch, migrated_epoch, reply }).await
    }
}

/// Opens the write-ahead log and replays its current generation over redb in one durable
/// commit that also starts the next generation (see [`super::wal`]).
fn open_wal(db: &Database, path: &Path, bytes: u64) -> Result<Wal, StoreError> {
    let storage = |e: std::io::Error| StoreError::Storage(format!("{}: {e}", path.display()));
    let generation = {
        let txn = db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let g = meta.get(WAL_GENERATION).map_err(db_err)?.map(|g| g.value());
        g.unwrap_or(1)
    };
    let (mut wal, batches) = Wal::open(path, bytes, generation).map_err(storage)?;
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut regs = txn.open_table(REGISTERS).map_err(db_err)?;
        for (key, value) in batches.iter().flatten() {
            decode_row(key, value)?;
            regs.insert(key.as_str(), value.as_slice()).map_err(db_err)?;
        }
        txn.open_table(META).map_err(db_err)?.insert(WAL_GENERATION, generation + 1).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    if !batches.is_empty() {
        tracing::info!(batches = batches.len(), "replayed the register store's write-ahead log");
    }
    wal.restart(generation + 1);
    Ok(wal)
}

/// Creates the tables (and the incarnation of a new store); returns the fences and metadata.
fn load(db: &Database, member: &str) -> Result<(HashMap<String, u64>, StoreMeta), StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    let fresh;
    {
        txn.open_table(REGISTERS).map_err(db_err)?;
        let mut fences = txn.open_table(FENCES).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        fresh = meta.get("incarnation").map_err(db_err)?.is_none();
        if fresh {
            let inc = rand::random::<u64>() | 1;
            meta.insert("incarnation", inc).map_err(db_err)?;
            meta.insert("caught_up", 0).map_err(db_err)?;
            fences.insert(member, inc).map_err(db_err)?;
            // A random first generation: a write-ahead log left behind by an earlier store in
            // this directory (its redb file lost) never matches, so a new store replays nothing
            // and invents no state.
            meta.insert(WAL_GENERATION, rand::random::<u64>() >> 2).map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)?;

    let txn = db.begin_read().map_err(db_err)?;
    let fences = read_fences(&txn.open_table(FENCES).map_err(db_err)?)?;
    let meta = read_meta(&txn.open_table(META).map_err(db_err)?)?;
    if fresh {
        tracing::info!(
            incarnation = meta.incarnation,
            "created a new data directory; this member catches up before it votes"
        );
    }
    Ok((fences.into_iter().map(|v| (v.member, v.incarnation)).collect(), meta))
}

fn read_fences(table: &ReadOnlyTable<&str, u64>) -> Result<Vec<Voter>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        out.push(Voter { member: k.value().to_string(), incarnation: v.value() });
    }
    Ok(out)
}

fn read_meta(table: &ReadOnlyTable<&str, u64>) -> Result<StoreMeta, StoreError> {
    let get =
        |k: &str| -> Result<u64, StoreError> { Ok(table.get(k).map_err(db_err)?.map(|g| g.value()).unwrap_or(0)) };
    Ok(StoreMeta {
        incarnation: get("incarnation")?,
        caught_up: get("caught_up")? == 1,
        max_epoch: get("max_epoch")?,
        migrated_epoch: get("migrated_epoch")?,
    })
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<RegisterState, StoreError> {
    decode_register(bytes).ok_or_else(|| StoreError::Storage(format!("register {key:?} is corrupt")))
}

/// One page of registers after `after`, from one read transaction (see [`Page::check`]).
fn scan(db: &Database, after: Option<&str>, limit: usize, budget: usize) -> Result<Page, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let meta = read_meta(&txn.open_table(META).map_err(db_err)?)?;
    let fences = read_fences(&txn.open_table(FENCES).map_err(db_err)?)?;
    let table = txn.open_table(REGISTERS).map_err(db_err)?;
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut registers = Vec::new();
    let mut bytes = 0;
    let mut more = false;
    for row in table.range::<&str>((lower, Bound::Unbounded)).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        if registers.len() >= limit || bytes >= budget {
            more = true;
            break;
        }
        bytes += k.value().len() + v.value().len();
        registers.push((k.value().to_string(), decode_row(k.value(), v.value())?));
    }
    let next = if more { registers.last().map(|(k, _)| k.clone()) } else { None };
    Ok(Page { caught_up: meta.caught_up, incarnation: meta.incarnation, fences, registers, next })
}

/// Keys under `prefix` after `after`, at most `limit` (one more is read to tell whether any follow).
fn list_keys(db: &Database, prefix: &str, after: &str, limit: usize) -> Result<KeyPage, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    if !read_meta(&txn.open_table(META).map_err(db_err)?)?.caught_up {
        return Err(StoreError::NotCaughtUp);
    }
    let table = txn.open_table(REGISTERS).map_err(db_err)?;
    let lower = if after >= prefix { Bound::Excluded(after) } else { Bound::Included(prefix) };
    let mut rows = Vec::new();
    for row in table.range::<&str>((lower, Bound::Unbounded)).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        if !k.value().starts_with(prefix) || rows.len() > limit {
            break;
        }
        rows.push((k.value().to_string(), decode_row(k.value(), v.value())?));
    }
    Ok(page_keys(rows.iter().map(|(k, r)| (k, r)), prefix, after, limit))
}

struct Writer {
    member: String,
    db: Arc<Database>,
    /// The hot cache generation and every fence.
    state: AcceptorState,
    /// The cold cache generation.
    cold: HashMap<String, RegisterState>,
    cache_registers: usize,
    meta: StoreMeta,
    meta_tx: watch::Sender<StoreMeta>,
    /// Answered once the writer stopped and let go of the database.
    closing: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// Write-ahead log of register changes between checkpoints.
    wal: Wal,
    metrics: StoreMetrics,
}

/// The registers table as of the last commit, opened at a batch's first cache miss.
type Reader = Option<ReadOnlyTable<&'static str, &'static [u8]>>;

/// A reply to send once the batch is durable.
type Deferred = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn defer<T: Send + 'static>(reply: oneshot::Sender<Result<T, StoreError>>, value: Result<T, StoreError>) -> Deferred {
    Box::new(move |failed| {
        let _ = reply.send(match failed {
            Some(e) => Err(StoreError::Storage(e.to_string())),
            None => value,
        });
    })
}

/// What a batch changed and must persist before its replies go out.
#[derive(Default)]
struct Dirty {
    registers: HashSet<String>,
    fences: bool,
    meta: bool,
    /// Pages of a catch-up copy: written straight to redb (durably), not through the log.
    bulk: bool,
    /// Barriers to answer once the batch is committed to redb.
    barriers: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

/// Memory now holds state the disk may not: stop rather than answer from it (the member
/// restarts from disk: redb's last durable commit plus the log).
fn exit_on_storage_failure(e: &StoreError, replies: Vec<Deferred>) -> ! {
    tracing::error!(error = %e, "storage commit failed; exiting so the member restarts from disk");
    for r in replies {
        r(Some(e));
    }
    std::process::exit(70);
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let started = std::time::Instant::now();
            let mut ops = vec![first];
            while ops.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut dirty = Dirty::default();
            let mut reader: Reader = None;
            let replies: Vec<Deferred> = ops.into_iter().map(|op| self.apply(op, &mut dirty, &mut reader)).collect();
            drop(reader);
            let nothing = dirty.registers.is_empty() && !dirty.fences && !dirty.meta;
            let result = if nothing && self.closing.is_none() { Ok(None) } else { self.persist(&dirty) };
            let deferred = match result {
                Ok(deferred) => deferred,
                Err(e) => exit_on_storage_failure(&e, replies),
            };
            self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
            self.metrics.batch_messages.observe(replies.len() as f64);
            if dirty.meta {
                let _ = self.meta_tx.send(self.meta);
            }
            for r in replies {
                r(None);
            }
            // Durable in the log and answered; now visible to redb's readers, before the next
            // batch (whose cache misses read redb) and before any barrier is answered.
            if let Some(txn) = deferred {
                if let Err(e) = txn.commit().map_err(db_err) {
                    exit_on_storage_failure(&e, Vec::new());
                }
            }
            for b in dirty.barriers {
                let _ = b.send(Ok(()));
            }
            if let Some(closed) = self.closing.take() {
                drop(self);
                let _ = closed.send(Ok(()));
                return;
            }
            // Everything cached is committed now: the hot generation may retire.
            if self.state.registers.len() > self.cache_registers {
                self.cold = std::mem::take(&mut self.state.registers);
            }
        }
    }

    /// Puts `key`'s committed state into the hot generation (a register never written stays
    /// absent: the acceptor treats that as the empty state).
    fn load(&mut self, key: &str, reader: &mut Reader) -> Result<(), StoreError> {
        if self.state.registers.contains_key(key) {
            return Ok(());
        }
        if let Some(r) = self.cold.remove(key) {
            self.state.registers.insert(key.to_string(), r);
            return Ok(());
        }
        let table = match reader {
            Some(t) => t,
            None => reader.insert(self.db.begin_read().map_err(db_err)?.open_table(REGISTERS).map_err(db_err)?),
        };
        if let Some(v) = table.get(key).map_err(db_err)? {
            let reg = decode_row(key, v.value())?;
            self.state.registers.insert(key.to_string(), reg);
        }
        Ok(())
    }

    fn apply(&mut self, op: Op, dirty: &mut Dirty, reader: &mut Reader) -> Deferred {
        match op {
            Op::Prepare { key, ballot, reply } => {
                if !self.meta.caught_up {
                    return defer(reply, Err(StoreError::NotCaughtUp));
                }
                if let Err(e) = self.load(&key, reader) {
                    return defer(reply, Err(e));
                }
                let (r, changed) = self.state.prepare(&key, &ballot);
                if changed {
                    dirty.registers.insert(key);
                }
                defer(reply, Ok(r))
            }
            Op::Accept { key, ballot, value, promise_next, voters, reply } => {
                if !self.meta.caught_up {
                    return defer(reply, Err(StoreError::NotCaughtUp));
                }
                if let Err(e) = self.load(&key, reader) {
                    return defer(reply, Err(e));
                }
                let (r, changed) = self.state.accept(&key, &ballot, value, promise_next.as_ref(), &voters);
                if changed {
                    dirty.registers.insert(key);
                }
                defer(reply, Ok(r))
            }
            Op::Fence { member, incarnation, reply } => {
                dirty.fences |= self.state.fence(&member, incarnation);
                defer(reply, Ok(()))
            }
            Op::InstallPage { registers, reply } => {
                dirty.bulk = true;
                for (k, r) in &registers {
                    if let Err(e) = self.load(k, reader) {
                        return defer(reply, Err(e));
                    }
                    if self.state.merge_copy(k, r) {
                        dirty.registers.insert(k.clone());
                    }
                }
                defer(reply, Ok(()))
            }
            Op::FinishCopy { fences, reply } => {
                // Our own incarnation is ours to say; peers may only know an older one.
                for f in fences.into_iter().filter(|f| f.member != self.member) {
                    dirty.fences |= self.state.fence(&f.member, f.incarnation);
                }
                self.meta.caught_up = true;
                dirty.meta = true;
                defer(reply, Ok(()))
            }
            Op::SetMeta { max_epoch, migrated_epoch, reply } => {
                if let Some(e) = max_epoch.filter(|e| *e > self.meta.max_epoch) {
                    self.meta.max_epoch = e;
                    dirty.meta = true;
                }
                if let Some(e) = migrated_epoch.filter(|e| *e > self.meta.migrated_epoch) {
                    self.meta.migrated_epoch = e;
                    dirty.meta = true;
                }
                defer(reply, Ok(()))
            }
            Op::Close { reply } => {
                self.closing = Some(reply);
                Box::new(|_| {})
            }
            Op::Barrier { reply } => {
                dirty.barriers.push(reply);
                Box::new(|_| {})
            }
        }
    }

    /// Makes the batch durable: a log record, synced, and a redb transaction without sync that
    /// is returned uncommitted (the caller commits it after sending the replies: the record
    /// already makes them durable); or a checkpoint (a durable redb commit that starts the
    /// log's next generation, committed here) when the record does not fit, fences or metadata
    /// changed, the batch installs catch-up pages (written once, not twice), or the store closes.
    fn persist(&mut self, dirty: &Dirty) -> Result<Option<redb::WriteTransaction>, StoreError> {
        let rows: Vec<(&str, Vec<u8>)> = dirty
            .registers
            .iter()
            .filter_map(|k| self.state.registers.get(k).map(|r| (k.as_str(), encode_register(r))))
            .collect();
        let pairs = || rows.iter().map(|(k, v)| (*k, v.as_slice()));
        let checkpoint = dirty.fences
            || dirty.meta
            || dirty.bulk
            || self.closing.is_some()
            || !self.wal.fits(Wal::payload_len(pairs()));
        let mut txn = self.db.begin_write().map_err(db_err)?;
        if checkpoint {
            let next = self.wal.generation() + 1;
            txn.open_table(META).map_err(db_err)?.insert(WAL_GENERATION, next).map_err(db_err)?;
        } else {
            // Synced before the commit, so readers of redb (catch-up scans) never see a state
            // that a crash could take back.
            self.wal.append(pairs()).map_err(|e| StoreError::Storage(format!("write-ahead log: {e}")))?;
            txn.set_durability(redb::Durability::None).map_err(|e| StoreError::Storage(e.to_string()))?;
        }
        {
            let mut regs = txn.open_table(REGISTERS).map_err(db_err)?;
            for (key, value) in &rows {
                regs.insert(*key, value.as_slice()).map_err(db_err)?;
            }
            if dirty.fences {
                let mut fences = txn.open_table(FENCES).map_err(db_err)?;
                for (m, inc) in &self.state.fences {
                    fences.insert(m.as_str(), *inc).map_err(db_err)?;
                }
            }
            if dirty.meta {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert("caught_up", u64::from(self.meta.caught_up)).map_err(db_err)?;
                meta.insert("max_epoch", self.meta.max_epoch).map_err(db_err)?;
                meta.insert("migrated_epoch", self.meta.migrated_epoch).map_err(db_err)?;
            }
        }
        if !checkpoint {
            return Ok(Some(txn));
        }
        self.metrics.checkpoints.inc();
        txn.commit().map_err(db_err)?;
        self.wal.restart(self.wal.generation() + 1);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(round: u64) -> Ballot {
        Ballot::new(round, "p")
    }

    #[tokio::test]
    async fn state_survives_reopen_and_new_store_is_not_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegisterStore::open(dir.path(), "m0").unwrap();
        let inc = store.meta().incarnation;
        assert!(!store.meta().caught_up);
        assert!(matches!(store.prepare("k".into(), b(1)).await, Err(StoreError::NotCaughtUp)));
        store.finish_copy(vec![]).await.unwrap();
        assert!(store.meta().caught_up);
        store.accept("k".into(), b(1), Some(vec![42]), Some(b(2)), vec![]).await.unwrap();
        store.set_meta(Some(3), Some(2)).await.unwrap();
        store.close().await.unwrap();
        let store = RegisterStore::open(dir.path(), "m0").unwrap();
        let m = store.meta();
        assert_eq!((m.incarnation, m.caught_up, m.max_epoch, m.migrated_epoch), (inc, true, 3, 2));
        let page = store.scan(None, 10).await.unwrap();
        assert_eq!(page.next, None);
        let (_, reg) = page.registers.iter().find(|(k, _)| k == "k").unwrap();
        assert_eq!(reg.value, Some(vec![42]));
        assert_eq!(reg.promised, b(2));
    }

    const CRASH_CHILD: &str = "ORDO_STORE_CRASH_CHILD";

    /// The child half of the crash test: writes through the log (a small log, so that some
    /// batches also go through checkpoints and generations), prints what was acknowledged, then
    /// exits without closing anything: redb's commits since the last checkpoint were never made
    /// durable, only the log holds them.
    async fn crash_child(dir: &Path) {
        let opts = StoreOptions { wal_bytes: 4096, ..Default::default() };
        let store = RegisterStore::open_with(dir, "m0", opts).unwrap();
        store.finish_copy(vec![]).await.unwrap();
        for i in 0..250u64 {
            let key = format!("k{}", i % 50);
            let r = store.accept(key, b(i + 1), Some(i.to_be_bytes().to_vec()), Some(b(i + 2)), vec![]).await.unwrap();
            assert!(matches!(r, AcceptReply::Accepted { .. }), "{r:?}");
        }
        println!("acknowledged 250");
        std::process::exit(0);
    }

    /// Runs [`crash_child`] on `dir` in a child process (this test binary again) and checks
    /// that it acknowledged every write before it exited.
    fn crash_child_in(dir: &Path) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "quorum::store::tests::acknowledged_writes_survive_a_crash_between_checkpoints"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD, dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains("acknowledged 250"), "child: {stdout} {:?}", out);
    }

    /// Fails when the log is not replayed at open (the last 50 acknowledged writes, and their
    /// promises, come back older or not at all).
    #[tokio::test]
    async fn acknowledged_writes_survive_a_crash_between_checkpoints() {
        if let Ok(dir) = std::env::var(CRASH_CHILD) {
            return crash_child(Path::new(&dir)).await;
        }
        let dir = tempfile::tempdir().unwrap();
        crash_child_in(dir.path());
        let store = RegisterStore::open(dir.path(), "m0").unwrap();
        let page = store.scan(None, 100).await.unwrap();
        assert_eq!(page.registers.len(), 50);
        for k in 0..50u64 {
            let last = 200 + k;
            let (_, reg) = page.registers.iter().find(|(key, _)| *key == format!("k{k}")).unwrap();
            assert_eq!(reg.value, Some(last.to_be_bytes().to_vec()), "k{k}: an acknowledged accept was lost");
            match store.prepare(format!("k{k}"), b(1)).await.unwrap() {
                PrepareReply::Rejected { promised } => assert_eq!(promised, b(last + 2), "k{k}'s promise"),
                other => panic!("k{k}: the promise of an acknowledged accept was lost: {other:?}"),
            }
        }
    }

    /// A store whose redb file was lost starts empty even though the write-ahead log of the
    /// store before it is still there: it does not replay another store's records (theirs are
    /// never of the new store's generation: every open moves a store past the generation it
    /// replayed, and a new store starts at a random one). Fails if replay ignores generations.
    #[tokio::test]
    async fn a_new_store_does_not_replay_a_log_left_by_an_earlier_one() {
        if std::env::var(CRASH_CHILD).is_ok() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        crash_child_in(dir.path());
        std::fs::remove_file(dir.path().join("ordo.redb")).unwrap();
        assert!(dir.path().join("ordo.wal").exists());
        let store = RegisterStore::open(dir.path(), "m0").unwrap();
        assert!(!store.meta().caught_up, "a new store catches up before it votes");
        let page = store.scan(None, 100).await.unwrap();
        assert!(page.registers.is_empty(), "a new store replayed {} registers of another", page.registers.len());
    }

    /// With a cache of 4 registers, 300 registers are evicted and read back from disk: every
    /// prepare must still see the value accepted before (fails if a miss does not read redb).
    #[tokio::test]
    async fn registers_evicted_from_a_tiny_cache_are_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions { cache_registers: 4, page_cache_bytes: 1 << 20, ..Default::default() };
        let store = RegisterStore::open_with(dir.path(), "m0", opts).unwrap();
        store.finish_copy(vec![]).await.unwrap();
        let key = |i: u32| format!("k{i:04}");
        for i in 0..300 {
            let r = store.accept(key(i), b(1), Some(i.to_be_bytes().to_vec()), None, vec![]).await.unwrap();
            assert!(matches!(r, AcceptReply::Accepted { .. }));
        }
        for round in 2..4 {
            for i in (0..300).rev() {
                match store.prepare(key(i), b(round)).await.unwrap() {
                    PrepareReply::Promised { accepted, value } => {
                        assert_eq!((accepted, value), (b(1), Some(i.to_be_bytes().to_vec())), "register {i}")
                    }
                    other => panic!("register {i}: {other:?}"),
                }
            }
        }
        // A stale ballot is refused by a register that left the cache long ago.
        assert_eq!(store.prepare(key(7), b(2)).await.unwrap(), PrepareReply::Rejected { promised: b(3) });
        store.close().await.unwrap();
        let store = RegisterStore::open_with(dir.path(), "m0", opts).unwrap();
        assert_eq!(store.register_count().await.unwrap(), 300);
        assert_eq!(store.prepare(key(299), b(1)).await.unwrap(), PrepareReply::Rejected { promised: b(3) });
    }

    #[tokio::test]
    async fn scans_page_through_every_register_once_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegisterStore::open(dir.path(), "m0").unwrap();
        let copied: Vec<_> = (0..1000)
            .map(|i| {
                let reg = RegisterState { promised: b(i + 1), accepted: b(i + 1), value: Some(vec![i as u8]) };
                (format!("r{i:05}"), reg)
            })
            .collect();
        store.install_page(copied.clone()).await.unwrap();
        assert!(!store.meta().caught_up, "installing a page does not make a store vote");
        let (mut after, mut seen, mut pages) = (None::<String>, Vec::new(), 0);
        loop {
            let page = store.scan(after.clone(), 7).await.unwrap();
            page.check(after.as_deref()).unwrap();
            assert!(page.registers.len() <= 7);
            pages += 1;
            seen.extend(page.registers);
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 1000usize.div_ceil(7));
        assert_eq!(seen, copied);
        for bad in [0, MAX_PAGE_REGISTERS + 1, usize::MAX] {
            let e = store.scan(None, bad).await.unwrap_err();
            assert!(matches!(&e, StoreError::Invalid(m) if m.contains("page size")), "{e}");
        }
    }

    /// Replies go out before the batch's redb commit; readers wait for it through a barrier.
    /// Without the barrier, scans and listings right after an acknowledged write miss it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_right_after_an_acknowledged_write_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegisterStore::open(dir.path(), "m0").unwrap();
        store.finish_copy(vec![]).await.unwrap();
        for i in 0..300u64 {
            let key = format!("k{i:04}");
            let r = store.accept(key.clone(), b(1), Some(vec![1]), None, vec![]).await.unwrap();
            assert!(matches!(r, AcceptReply::Accepted { .. }), "{r:?}");
            let page = store.scan(None, MAX_PAGE_REGISTERS).await.unwrap();
            assert!(page.registers.iter().any(|(k, _)| *k == key), "scan after write {i} misses {key}");
            let listed = store.list_keys("k".into(), String::new(), 100_000).await.unwrap();
            assert_eq!(listed.keys.len() as u64, i + 1, "listing after write {i}");
            assert_eq!(store.register_count().await.unwrap(), i + 1);
        }
    }

    #[tokio::test]
    async fn a_page_stops_at_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegisterStore::open(dir.path(), "m0").unwrap();
        let big = |i: u8| {
            let reg = RegisterState { promised: b(1), accepted: b(1), value: Some(vec![i; 1 << 20]) };
            (format!("big{i}"), reg)
        };
        store.install_page((0..6).map(big).collect()).await.unwrap();
        let page = store.scan(None, 100).await.unwrap();
        assert_eq!(page.registers.len(), PAGE_BYTES >> 20, "a page holds about PAGE_BYTES");
        assert_eq!(page.next.as_deref(), Some("big3"));
        let rest = store.scan(page.next, 100).await.unwrap();
        assert_eq!((rest.registers.len(), rest.next), (2, None));
    }

    #[test]
    fn page_check_refuses_gaps_disorder_and_endless_walks() {
        let reg = |k: &str| (k.to_string(), RegisterState::default());
        let page = |keys: &[&str], next: Option<&str>| Page {
            registers: keys.iter().map(|k| reg(k)).collect(),
            next: next.map(String::from),
            ..Default::default()
        };
        assert!(page(&["a", "b"], Some("b")).check(None).is_ok());
        assert!(page(&["b", "c"], None).check(Some("a")).is_ok());
        assert!(page(&[], None).check(Some("a")).is_ok());
        assert!(page(&["b", "a"], None).check(None).is_err(), "out of order");
        assert!(page(&["a", "b"], None).check(Some("a")).is_err(), "not after the cursor");
        assert!(page(&["a", "b"], Some("c")).check(None).is_err(), "claims more than it holds");
        assert!(page(&[], Some("z")).check(Some("a")).is_err(), "an empty page cannot continue");
    }
}
