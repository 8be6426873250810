//! The replica side of every stream on this member: the rules a replica follows (refuse older
//! epochs, accept only entries that continue the primary's log, cut a conflicting suffix) and
//! one writer thread that applies every operation in arrival order and **group-commits**: it
//! takes everything queued since the last commit, writes it, starts one `fdatasync` per touched
//! segment (side by side, on sync threads) and hands the commit to a committer thread, which
//! replies once every sync of the commit succeeded, commits in order; meanwhile the writer
//! applies the next commit (at most `COMMITS_IN_FLIGHT`). An operation is applied only after
//! every earlier one and answered only after every earlier answer, so a seal still answers
//! after the writes it follows are durable. A batch is never acknowledged before it is durable
//! (tests: `a_write_is_answered_only_after_its_sync`, verified to fail when a commit does not
//! wait for its syncs; `a_pipelined_commit_is_answered_only_after_its_syncs`, verified to fail
//! when the committer answers before the syncs finish; `answers_keep_the_order_of_the_operations`).
//! A rebuilt replica syncs every file of the stream before it drops its rebuilding marker (an
//! earlier commit's syncs may still be running; not caught by a test: it needs a crash between
//! two commits).
//!
//! Trimming is physical here: every write and seal from a primary carries the stream's trim
//! point, and the replica deletes the segment files wholly below it (never the active one),
//! after making the new base durable. A replica that lacks what a trimmed primary can still
//! send is reset to the primary's log (see [`ReplicaWrite::reset`] and the argument in
//! [`super`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::metrics::LogMetrics;
use super::segment::{Segment, SegmentError, SegmentInfo, DEFAULT_SEGMENT_BYTES};
use super::{EpochStart, LogEntry};

/// Largest read answered at once, in bytes of entry data (plus at most one entry): well under
/// the 4 MiB that gRPC clients accept by default.
pub const MAX_READ_BYTES: usize = 2 << 20;

/// What a replica answers to a seal (or reports as its state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealReply {
    /// False: sealed at a higher epoch already.
    pub ok: bool,
    /// The replica's sealed epoch after the call.
    pub sealed: u64,
    /// Its last LSN.
    pub last_lsn: u64,
    /// Where each of its epochs starts.
    pub epochs: Vec<EpochStart>,
    /// It lost the stream and is not yet rebuilt (it must not count in a recovery's seal set).
    pub rebuilding: bool,
    /// Every entry up to this LSN was deleted here (trimmed); it holds `base_lsn + 1..=last_lsn`.
    pub base_lsn: u64,
}

/// What a replica did with entries from a primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendReply {
    /// The replica's log matches the primary's up to this LSN, on disk.
    Durable(u64),
    /// Refused: sealed at this higher epoch.
    Sealed(u64),
    /// The replica does not hold the primary's entry at `prev_lsn`.
    Diverged {
        /// Its last LSN.
        last_lsn: u64,
        /// Where each of its epochs starts.
        epochs: Vec<EpochStart>,
        /// Entries up to here are deleted on the replica (its epochs are unknown below).
        base_lsn: u64,
    },
}

/// Entries from a primary, as a replica applies them.
#[derive(Debug, Clone, Default)]
pub struct ReplicaWrite {
    /// The primary's epoch.
    pub epoch: u64,
    /// LSN of the entry before `entries`.
    pub prev_lsn: u64,
    /// Its epoch.
    pub prev_epoch: u64,
    /// Consecutive entries (none: only the trim point travels).
    pub entries: Vec<LogEntry>,
    /// A rebuilding replica is rebuilt once it holds the log through this LSN.
    pub complete_through: u64,
    /// The commit point the primary knew (the replica's lag metric is measured against it).
    pub commit: u64,
    /// The stream's trim point: segment files wholly below it are deleted (0: none known).
    pub first_lsn: u64,
    /// A replica that does not hold `(prev_lsn, prev_epoch)` drops its whole log and continues
    /// after `prev_lsn` instead of answering with a divergence. The primary sets it only when
    /// every entry the replica would drop is below the trim point or conflicts with the
    /// primary's log (so was never acknowledged).
    pub reset: bool,
}

/// Entries read from a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReply {
    /// False: sealed at a higher epoch (`sealed`).
    pub ok: bool,
    /// Sealed epoch.
    pub sealed: u64,
    /// The entries.
    pub entries: Vec<LogEntry>,
}

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The writer thread is gone (the sidecar is stopping).
    #[error("the log store is closed")]
    Closed,
    /// Bad request.
    #[error("{0}")]
    Invalid(String),
}

enum Op {
    Seal {
        stream: String,
        epoch: u64,
        fresh: bool,
        first_lsn: u64,
        reply: oneshot::Sender<Result<SealReply, StoreError>>,
    },
    Append {
        stream: String,
        write: ReplicaWrite,
        reply: oneshot::Sender<Result<AppendReply, StoreError>>,
        /// When it was queued (the write's wait and commit are measured from here).
        queued: Instant,
    },
    Files {
        stream: String,
        reply: oneshot::Sender<Result<Vec<SegmentInfo>, StoreError>>,
    },
    Configure {
        segment_bytes: u64,
        metrics: LogMetrics,
    },
    Truncate {
        stream: String,
        epoch: u64,
        after: u64,
        reply: oneshot::Sender<Result<AppendReply, StoreError>>,
    },
    Fetch {
        stream: String,
        fence: Option<u64>,
        from: u64,
        max: usize,
        reply: oneshot::Sender<Result<FetchReply, StoreError>>,
    },
    /// Finish what was queued before, answer, and stop touching the disk.
    Close {
        done: std_mpsc::Sender<()>,
    },
}

/// Every stream this member replicates, behind one group-committing writer thread.
#[derive(Clone)]
pub struct ReplicaStore {
    tx: std_mpsc::Sender<Op>,
    root: PathBuf,
    known: Known,
}

/// What this replica knows to be committed, by stream: `(trim point, commit point)` as the
/// primaries' writes told it, the commit point capped at the end of the log it matched with
/// that primary's (Raft's follower commit rule), so every entry up to it here is committed.
/// Kept in memory: a restarted replica knows nothing until the next write.
type Known = Arc<Mutex<HashMap<String, (u64, u64)>>>;

impl ReplicaStore {
    /// Opens the store under `root` (one directory per stream) and starts its writer.
    pub fn open(root: &Path) -> Result<Self, SegmentError> {
        std::fs::create_dir_all(root)
            .map_err(|source| SegmentError::Io { path: root.display().to_string(), source })?;
        let (tx, rx) = std_mpsc::channel();
        let known = Known::default();
        let writer = Writer {
            root: root.to_path_buf(),
            segments: HashMap::new(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            metrics: LogMetrics::default(),
            known: known.clone(),
            closed: false,
        };
        std::thread::Builder::new()
            .name("ordo-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| SegmentError::Io { path: root.display().to_string(), source })?;
        Ok(Self { tx, root: root.to_path_buf(), known })
    }

    /// `(trim point, commit point)` of `stream` as this replica knows them (see `Known`);
    /// `None` before a primary's write told it.
    pub fn known_committed(&self, stream: &str) -> Option<(u64, u64)> {
        self.known.lock().expect("known lock").get(stream).copied()
    }

    /// Stops the writer once everything queued before is written and synced, waiting up to
    /// `wait`; true when it stopped. Every later call on any handle fails with `Closed`. For
    /// owners that delete the directory afterwards (tests): the writer never touches it again.
    pub fn close_blocking(&self, wait: std::time::Duration) -> bool {
        let (done, stopped) = std_mpsc::channel();
        self.tx.send(Op::Close { done }).is_ok() && stopped.recv_timeout(wait).is_ok()
    }

    /// Directory of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Sets the size at which segment files roll and where the store counts what it does
    /// (applies to the operations queued after this call).
    pub fn configure(&self, segment_bytes: u64, metrics: LogMetrics) {
        let _ = self.tx.send(Op::Configure { segment_bytes, metrics });
    }

    /// Seals `stream` at `epoch` (durably), applies the trim point `first_lsn` (0: none) and
    /// reports its tail; `fresh_stream`: the stream never had a primary before (a replica
    /// without it starts complete, not rebuilding).
    pub async fn seal(
        &self,
        stream: &str,
        epoch: u64,
        fresh_stream: bool,
        first_lsn: u64,
    ) -> Result<SealReply, StoreError> {
        self.call(|reply| Op::Seal { stream: stream.into(), epoch, fresh: fresh_stream, first_lsn, reply }).await
    }

    /// The replica's state of `stream` without sealing (epoch 0 is never refused).
    pub async fn state(&self, stream: &str) -> Result<SealReply, StoreError> {
        self.seal(stream, 0, false, 0).await
    }

    /// The segment files of `stream` on this replica, oldest first.
    pub async fn files(&self, stream: &str) -> Result<Vec<SegmentInfo>, StoreError> {
        self.call(|reply| Op::Files { stream: stream.into(), reply }).await
    }

    /// Applies entries of a primary at `epoch` that follow `(prev_lsn, prev_epoch)`; a
    /// rebuilding replica is rebuilt once it holds the log up to `complete_through`.
    pub async fn append(
        &self,
        stream: &str,
        epoch: u64,
        prev_lsn: u64,
        prev_epoch: u64,
        entries: Vec<LogEntry>,
        complete_through: u64,
    ) -> Result<AppendReply, StoreError> {
        let write = ReplicaWrite { epoch, prev_lsn, prev_epoch, entries, complete_through, ..Default::default() };
        self.write(stream, write).await
    }

    /// Applies a [`ReplicaWrite`].
    pub async fn write(&self, stream: &str, write: ReplicaWrite) -> Result<AppendReply, StoreError> {
        self.write_queued(stream, write).await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`ReplicaStore::write`], but queued at once (in call order) and answered later:
    /// for callers that pipeline writes and must keep their order.
    pub fn write_queued(
        &self,
        stream: &str,
        write: ReplicaWrite,
    ) -> oneshot::Receiver<Result<AppendReply, StoreError>> {
        let (reply, rx) = oneshot::channel();
        // A closed writer drops `reply`, which the caller sees as a closed store.
        let _ = self.tx.send(Op::Append { stream: stream.into(), write, reply, queued: Instant::now() });
        rx
    }

    /// Cuts every entry after `after` (recovery drops a suffix the chosen log does not hold);
    /// refused like an append when sealed above `epoch`.
    pub async fn truncate_after(&self, stream: &str, epoch: u64, after: u64) -> Result<AppendReply, StoreError> {
        self.call(|reply| Op::Truncate { stream: stream.into(), epoch, after, reply }).await
    }

    /// Reads up to `max` entries from `from`; with `fence`, seals at that epoch first and
    /// refuses when sealed higher (recovery reads fence too).
    pub async fn fetch(
        &self,
        stream: &str,
        fence: Option<u64>,
        from: u64,
        max: usize,
    ) -> Result<FetchReply, StoreError> {
        self.call(|reply| Op::Fetch { stream: stream.into(), fence, from, max, reply }).await
    }
}

impl Op {
    /// When a write was queued (other operations are not measured).
    fn queued(&self) -> Option<Instant> {
        match self {
            Op::Append { queued, .. } => Some(*queued),
            _ => None,
        }
    }
}

struct Writer {
    root: PathBuf,
    segments: HashMap<String, Segment>,
    segment_bytes: u64,
    metrics: LogMetrics,
    known: Known,
    /// A `Close` was applied: later operations are dropped (their callers see `Closed`).
    closed: bool,
}

type Reply = Box<dyn FnOnce(bool) + Send>;

/// How many `fdatasync`s of one group commit run at once (`SYNC_WAYS` sync threads, each
/// syncing its share of the segments one after the other). Measured on the
/// benchmark machine with 16 files: one after the other 5.7-12 ms (median), 4 at once 3.9-6.4
/// ms, 16 at once 5.8-6.3 ms; more threads only add wake-ups, which cost most on a busy machine.
const SYNC_WAYS: usize = 4;

/// Threads that run the `fdatasync`s of one group commit side by side, started as commits need
/// them. One after the other, every touched segment cost a full journal commit: with 16
/// streams a commit took 16 syncs (48-67 ms on the benchmark machine, against 8-9 ms for the
/// same 16 syncs at once, which the filesystem joins into few journal commits), and every
/// batch that arrived meanwhile waited for all of it.
struct SyncPool {
    jobs: std_mpsc::Sender<(Job, Done)>,
    queue: Arc<Mutex<std_mpsc::Receiver<(Job, Done)>>>,
    threads: usize,
}

/// One segment's syncs ([`SyncJob::run`]; a seam for tests).
type Job = Box<dyn FnOnce() -> Result<(), SegmentError> + Send>;
/// Where a sync thread reports a job's result.
type Done = std_mpsc::Sender<Result<(), SegmentError>>;

/// Runs `jobs` one after the other and returns the first error (after every job ran).
fn in_turn(jobs: Vec<Job>) -> Result<(), SegmentError> {
    let mut first_err = None;
    for job in jobs {
        if let Err(e) = job() {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

impl SyncPool {
    fn new() -> Self {
        let (jobs, queue) = std_mpsc::channel();
        Self { jobs, queue: Arc::new(Mutex::new(queue)), threads: 0 }
    }

    /// Runs every job, [`SYNC_WAYS`] at a time, and returns the first error (after every job
    /// finished).
    #[cfg(test)]
    fn run_all(&mut self, jobs: Vec<Job>) -> Result<(), SegmentError> {
        self.start(jobs).wait()
    }

    /// Starts every job on the sync threads, [`SYNC_WAYS`] at a time; [`Syncing::wait`]
    /// returns once all finished.
    fn start(&mut self, jobs: Vec<Job>) -> Syncing {
        let ways = jobs.len().min(SYNC_WAYS);
        let mut shares: Vec<Vec<Job>> = (0..ways).map(|_| Vec::new()).collect();
        for (i, job) in jobs.into_iter().enumerate() {
            shares[i % ways].push(job);
        }
        self.grow(ways);
        let (done_tx, done) = std_mpsc::channel();
        let mut syncing = Syncing { done, sent: 0, first_err: None };
        for share in shares {
            let job = Box::new(move || in_turn(share)) as Job;
            match self.jobs.send((job, done_tx.clone())) {
                Ok(()) => syncing.sent += 1,
                // No sync thread could start (see `grow`): run it here.
                Err(std_mpsc::SendError((job, _))) => {
                    if let Err(e) = job() {
                        syncing.first_err.get_or_insert(e);
                    }
                }
            }
        }
        syncing
    }

    /// Starts sync threads until `want` run (a thread that cannot start leaves the work to the
    /// writer, which then syncs one after the other as before).
    fn grow(&mut self, want: usize) {
        while self.threads < want {
            let queue = self.queue.clone();
            let started =
                std::thread::Builder::new().name("ordo-log-sync".into()).stack_size(64 << 10).spawn(move || {
                    loop {
                        // The writer dropped the pool: nothing more to sync.
                        let Ok((job, done)) = queue.lock().map_err(drop).and_then(|q| q.recv().map_err(drop)) else {
                            return;
                        };
                        let _ = done.send(job());
                    }
                });
            if started.is_err() {
                // Without a thread the queued jobs would wait forever: stop queueing.
                let (jobs, _) = std_mpsc::channel();
                self.jobs = jobs;
                self.threads = usize::MAX;
                return;
            }
            self.threads += 1;
        }
    }
}

/// The syncs of one group commit, started by [`SyncPool::start`].
struct Syncing {
    done: std_mpsc::Receiver<Result<(), SegmentError>>,
    sent: usize,
    first_err: Option<SegmentError>,
}

impl Syncing {
    /// Waits for every sync and returns the first error.
    fn wait(mut self) -> Result<(), SegmentError> {
        for _ in 0..self.sent {
            match self.done.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.first_err.get_or_insert(e);
                }
                Err(_) => {
                    self.first_err.get_or_insert(SegmentError::Invalid("a sync thread died".into()));
                    break;
                }
            }
        }
        self.first_err.map_or(Ok(()), Err)
    }
}

/// Group commits whose syncs may run while the writer applies the next ones. Without it, a
/// write that arrived while a commit's `fdatasync`s ran waited for them and then for its own;
/// with it, the next commit's syncs start at once (the disk and the filesystem join concurrent
/// `fdatasync`s), so a write waits for about one sync.
const COMMITS_IN_FLIGHT: usize = 2;

/// A group commit handed to the committer thread: its answers go out, in commit order, once its
/// syncs (and every earlier commit's) succeeded.
struct Commit {
    syncing: Result<Syncing, SegmentError>,
    replies: Vec<Reply>,
    started: Instant,
    syncs_started: Instant,
    segments: usize,
    queued: Vec<Instant>,
    metrics: LogMetrics,
}

impl Commit {
    /// Waits for the syncs, then answers; exits the process when one failed.
    fn finish(self) {
        let synced = self.syncing.and_then(Syncing::wait);
        let sync_seconds = self.syncs_started.elapsed().as_secs_f64();
        let ok = match synced {
            Ok(()) => true,
            Err(e) => {
                // Data the kernel failed to write may be lost: do not acknowledge anything, and
                // stop (as the register store does) rather than go on with a file whose
                // contents are unknown.
                tracing::error!(error = %e, "fdatasync of a log segment failed; exiting");
                false
            }
        };
        for r in self.replies {
            r(ok);
        }
        if !ok {
            std::process::exit(70);
        }
        if self.segments > 0 {
            self.metrics.commit_seconds.observe(self.started.elapsed().as_secs_f64());
            self.metrics.sync_seconds.observe(sync_seconds);
            self.metrics.commit_segments.observe(self.segments as f64);
        }
        for q in self.queued {
            self.metrics.write_seconds.observe(q.elapsed().as_secs_f64());
        }
    }
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Op>) {
        let mut pool = SyncPool::new();
        let (commits, to_finish) = std_mpsc::sync_channel::<Commit>(COMMITS_IN_FLIGHT - 1);
        let committer = std::thread::Builder::new().name("ordo-log-commit".into()).spawn(move || {
            while let Ok(c) = to_finish.recv() {
                c.finish();
            }
        });
        // Without a committer thread, each commit finishes before the next one starts.
        let mut commits = committer.is_ok().then_some(commits);
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            while let Ok(op) = rx.try_recv() {
                ops.push(op);
                if ops.len() >= 4096 {
                    break;
                }
            }
            let started = Instant::now();
            let queued: Vec<Instant> = ops.iter().filter_map(Op::queued).collect();
            let mut dirty = HashSet::new();
            let replies: Vec<Reply> = ops.into_iter().map(|op| self.apply(op, &mut dirty)).collect();
            let mut jobs = Vec::with_capacity(dirty.len());
            let mut synced = Ok(());
            for stream in &dirty {
                if let Some(seg) = self.segments.get_mut(stream) {
                    match seg.prepare_sync() {
                        Ok(job) => jobs.push(Box::new(move || job.run()) as Job),
                        Err(e) => synced = Err(e),
                    }
                }
            }
            let segments = jobs.len();
            let commit = Commit {
                syncs_started: Instant::now(),
                syncing: synced.map(|()| pool.start(jobs)),
                replies,
                started,
                segments,
                queued,
                metrics: self.metrics.clone(),
            };
            // Answers leave in commit order: the committer finishes commits one after the other.
            let unsent = match &commits {
                Some(tx) => tx.send(commit).err().map(|std_mpsc::SendError(c)| c),
                None => Some(commit),
            };
            if let Some(commit) = unsent {
                // No committer (it could not start or is gone): finish here, in order.
                commits = None;
                commit.finish();
            }
            if self.closed {
                return;
            }
        }
    }

    fn segment(&mut self, stream: &str, fresh: bool) -> Result<&mut Segment, StoreError> {
        if !self.segments.contains_key(stream) {
            crate::validate::validate_name(stream).map_err(|e| StoreError::Invalid(format!("stream: {e}")))?;
            let mut seg =
                Segment::open(&self.root.join(stream), fresh).map_err(|e| StoreError::Invalid(e.to_string()))?;
            seg.set_roll_bytes(self.segment_bytes);
            self.segments.insert(stream.to_string(), seg);
        }
        Ok(self.segments.get_mut(stream).expect("inserted above"))
    }

    fn apply(&mut self, op: Op, dirty: &mut HashSet<String>) -> Reply {
        fn later<T: Send + 'static>(tx: oneshot::Sender<Result<T, StoreError>>, v: Result<T, StoreError>) -> Reply {
            Box::new(move |ok| {
                let _ = tx.send(if ok { v } else { Err(StoreError::Closed) });
            })
        }
        if self.closed {
            drop(op); // its reply sender goes: the caller sees `Closed`
            return Box::new(|_| {});
        }
        match op {
            Op::Close { done } => {
                self.closed = true;
                Box::new(move |_| {
                    let _ = done.send(());
                })
            }
            Op::Seal { stream, epoch, fresh, first_lsn, reply } => {
                later(reply, self.seal(&stream, epoch, fresh, first_lsn))
            }
            Op::Files { stream, reply } => later(reply, self.segment(&stream, false).map(|s| s.files())),
            Op::Configure { segment_bytes, metrics } => {
                self.segment_bytes = segment_bytes;
                self.metrics = metrics;
                for seg in self.segments.values_mut() {
                    seg.set_roll_bytes(segment_bytes);
                }
                Box::new(|_| {})
            }
            Op::Append { stream, write, reply, .. } => {
                let r = self.append(&stream, write);
                if matches!(r, Ok(AppendReply::Durable(_))) {
                    dirty.insert(stream);
                }
                later(reply, r)
            }
            Op::Truncate { stream, epoch, after, reply } => {
                let r = self.segment(&stream, false).and_then(|seg| {
                    if epoch < seg.sealed() {
                        return Ok(AppendReply::Sealed(seg.sealed()));
                    }
                    seg.truncate_from(after + 1).map_err(|e| StoreError::Invalid(e.to_string()))?;
                    Ok(AppendReply::Durable(seg.last_lsn()))
                });
                if matches!(r, Ok(AppendReply::Durable(_))) {
                    dirty.insert(stream);
                }
                later(reply, r)
            }
            Op::Fetch { stream, fence, from, max, reply } => {
                let r = self.fetch(&stream, fence, from, max);
                later(reply, r)
            }
        }
    }

    fn seal(&mut self, stream: &str, epoch: u64, fresh: bool, first_lsn: u64) -> Result<SealReply, StoreError> {
        let metrics = self.metrics.clone();
        let seg = self.segment(stream, fresh)?;
        let ok = epoch >= seg.sealed();
        if ok {
            if epoch > seg.sealed() {
                metrics.seals.inc();
            }
            seg.seal(epoch).map_err(invalid)?;
            trim(seg, first_lsn, &metrics)?;
        }
        Ok(SealReply {
            ok,
            sealed: seg.sealed(),
            last_lsn: seg.last_lsn(),
            epochs: seg.epochs().to_vec(),
            rebuilding: seg.rebuilding(),
            base_lsn: seg.base_lsn(),
        })
    }

    fn append(&mut self, stream: &str, w: ReplicaWrite) -> Result<AppendReply, StoreError> {
        let metrics = self.metrics.clone();
        let (commit, first) = (w.commit, w.first_lsn);
        let seg = self.segment(stream, false)?;
        let r = apply_write(seg, w, &metrics);
        if let Ok(AppendReply::Durable(lsn)) = &r {
            metrics.replica_lag(stream, commit.saturating_sub(*lsn));
            // The log here matches the primary's through `lsn`, and the primary's is committed
            // through `commit`.
            let mut known = self.known.lock().expect("known lock");
            let k = known.entry(stream.to_string()).or_default();
            *k = (k.0.max(first), k.1.max(commit.min(*lsn)));
        }
        r
    }
}

fn invalid(e: SegmentError) -> StoreError {
    StoreError::Invalid(e.to_string())
}

/// Deletes the files of `seg` wholly below `first_lsn` (0: nothing to do).
fn trim(seg: &mut Segment, first_lsn: u64, metrics: &LogMetrics) -> Result<(), StoreError> {
    if first_lsn <= seg.base_lsn() + 1 {
        return Ok(());
    }
    let (files, bytes) = seg.trim(first_lsn).map_err(invalid)?;
    if files > 0 {
        metrics.segments_deleted.inc_by(files as u64);
        metrics.deleted_bytes.inc_by(bytes);
    }
    Ok(())
}

/// The replica rules of one write (see [`ReplicaWrite`] and the module docs of [`super`]).
fn apply_write(seg: &mut Segment, w: ReplicaWrite, metrics: &LogMetrics) -> Result<AppendReply, StoreError> {
    let ReplicaWrite { epoch, prev_lsn, prev_epoch, entries, complete_through, first_lsn, reset, .. } = w;
    {
        if epoch < seg.sealed() {
            return Ok(AppendReply::Sealed(seg.sealed()));
        }
        seg.seal(epoch).map_err(invalid)?;
        let holds_prev =
            prev_lsn >= seg.base_lsn() && prev_lsn <= seg.last_lsn() && seg.epoch_at(prev_lsn) == prev_epoch;
        if !holds_prev && reset {
            let files = seg.files();
            seg.reset(prev_lsn, prev_epoch).map_err(invalid)?;
            metrics.segments_deleted.inc_by(files.len() as u64);
            metrics.deleted_bytes.inc_by(files.iter().map(|f| f.bytes).sum());
        } else if !holds_prev {
            trim(seg, first_lsn, metrics)?;
            return Ok(AppendReply::Diverged {
                last_lsn: seg.last_lsn(),
                epochs: seg.epochs().to_vec(),
                base_lsn: seg.base_lsn(),
            });
        }
        // The whole write is checked before anything changes: a malformed one changes nothing
        // (found by `arbitrary_operations_keep_the_replica_consistent`: a valid entry before a
        // malformed one was kept unsynced, and lost or not at a reopen depending on timing).
        for (i, e) in entries.iter().enumerate() {
            let lsn = prev_lsn + 1 + i as u64;
            if e.lsn != lsn || e.epoch == 0 || e.epoch > epoch {
                return Err(StoreError::Invalid(format!(
                    "entry {} (epoch {}) where LSN {lsn} of an epoch up to {epoch} was expected",
                    e.lsn, e.epoch
                )));
            }
        }
        let mut lsn = prev_lsn;
        for e in entries {
            lsn += 1;
            if lsn <= seg.last_lsn() {
                if seg.epoch_at(lsn) == e.epoch {
                    continue; // already held (a resend): the same entry by log matching
                }
                // A suffix no primary at this epoch's quorum holds: never acknowledged.
                seg.truncate_from(lsn).map_err(|e| StoreError::Invalid(e.to_string()))?;
            }
            seg.append(&e).map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        trim(seg, first_lsn, metrics)?;
        if seg.rebuilding() && lsn >= complete_through {
            // It holds the primary's log through a commit point that covers everything any
            // earlier epoch acknowledged: it counts again (entries synced before the marker goes,
            // also those an earlier group commit is still syncing).
            seg.sync_every_file().map_err(|e| StoreError::Invalid(e.to_string()))?;
            seg.finish_rebuild().map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        Ok(AppendReply::Durable(lsn))
    }
}

impl Writer {
    fn fetch(&mut self, stream: &str, fence: Option<u64>, from: u64, max: usize) -> Result<FetchReply, StoreError> {
        let seg = self.segment(stream, false)?;
        if let Some(epoch) = fence {
            if epoch < seg.sealed() {
                return Ok(FetchReply { ok: false, sealed: seg.sealed(), entries: Vec::new() });
            }
            seg.seal(epoch).map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        let entries = seg.read(from, max, MAX_READ_BYTES).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(FetchReply { ok: true, sealed: seg.sealed(), entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(lsn: u64, epoch: u64) -> LogEntry {
        LogEntry { lsn, epoch, data: format!("{lsn}@{epoch}").into_bytes(), ..Default::default() }
    }

    /// A group commit answers only after every segment's sync finished, and not at all (an
    /// error: the writer exits) when one of them failed.
    #[test]
    fn a_write_is_answered_only_after_its_sync() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut pool = SyncPool::new();
        for round in 0..3 {
            let done = Arc::new(AtomicUsize::new(0));
            let jobs: Vec<Job> = (0..20)
                .map(|i| {
                    let done = done.clone();
                    Box::new(move || {
                        std::thread::sleep(std::time::Duration::from_millis(((i * 7 + round) % 5) as u64));
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }) as Job
                })
                .collect();
            assert!(pool.run_all(jobs).is_ok());
            assert_eq!(done.load(Ordering::SeqCst), 20, "run_all returned before every sync finished");
        }
        let done = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<Job> = (0..8)
            .map(|i| {
                let done = done.clone();
                Box::new(move || {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    done.fetch_add(1, Ordering::SeqCst);
                    if i == 0 {
                        Err(SegmentError::Invalid("disk on fire".into()))
                    } else {
                        Ok(())
                    }
                }) as Job
            })
            .collect();
        assert!(pool.run_all(jobs).is_err(), "a failed sync must fail the commit");
        assert_eq!(done.load(Ordering::SeqCst), 8);
        assert!(pool.threads <= SYNC_WAYS);
    }

    /// A commit handed to the committer answers only once its syncs finished, even while the
    /// writer goes on with the next commit, and not at all when a sync failed.
    #[test]
    fn a_pipelined_commit_is_answered_only_after_its_syncs() {
        let mut pool = SyncPool::new();
        let (release, gate) = std_mpsc::channel::<()>();
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let job: Job = {
            let synced = synced.clone();
            Box::new(move || {
                gate.recv().expect("released");
                synced.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
        };
        let (answered_tx, answered) = std_mpsc::channel();
        let commit = Commit {
            syncing: Ok(pool.start(vec![job])),
            replies: vec![Box::new(move |ok| answered_tx.send(ok).expect("test waits"))],
            started: Instant::now(),
            syncs_started: Instant::now(),
            segments: 1,
            queued: Vec::new(),
            metrics: LogMetrics::default(),
        };
        let committer = std::thread::spawn(move || commit.finish());
        assert!(
            answered.recv_timeout(std::time::Duration::from_millis(200)).is_err(),
            "answered before its sync finished"
        );
        release.send(()).unwrap();
        assert_eq!(answered.recv_timeout(std::time::Duration::from_secs(10)), Ok(true));
        assert!(synced.load(std::sync::atomic::Ordering::SeqCst));
        committer.join().unwrap();
    }

    /// Writes to many streams, queued in one order, are answered in that order across
    /// overlapping commits: when one answer arrived, every earlier one had arrived too.
    #[tokio::test]
    async fn answers_keep_the_order_of_the_operations() {
        let dir = tempfile::tempdir().unwrap();
        let s = ReplicaStore::open(dir.path()).unwrap();
        let mut next = [0u64; 8];
        for round in 0..20u64 {
            let mut answers = Vec::new();
            for i in 0..40u64 {
                let k = ((i * 5 + round) % 8) as usize;
                let stream = format!("order-{k}");
                let w = ReplicaWrite {
                    epoch: 1,
                    prev_lsn: next[k],
                    prev_epoch: u64::from(next[k] > 0),
                    entries: vec![e(next[k] + 1, 1)],
                    ..Default::default()
                };
                next[k] += 1;
                answers.push(s.write_queued(&stream, w));
            }
            // Wait for one answer in the middle, then every earlier one must be there already.
            let at = (round as usize * 7) % answers.len();
            let mut later = answers.split_off(at);
            let r = (&mut later[0]).await.unwrap();
            assert!(matches!(r, Ok(AppendReply::Durable(_))), "{r:?}");
            for (i, a) in answers.iter_mut().enumerate() {
                assert!(
                    matches!(a.try_recv(), Ok(Ok(AppendReply::Durable(_)))),
                    "round {round}: write {i} not answered before write {at}"
                );
            }
            for a in later.into_iter().skip(1) {
                assert!(matches!(a.await, Ok(Ok(AppendReply::Durable(_)))));
            }
        }
    }

    #[tokio::test]
    async fn replicas_refuse_older_epochs_and_cut_conflicting_suffixes() {
        let dir = tempfile::tempdir().unwrap();
        let s = ReplicaStore::open(dir.path()).unwrap();
        assert_eq!(s.append("st", 1, 0, 0, vec![e(1, 1), e(2, 1), e(3, 1)], 0).await, Ok(AppendReply::Durable(3)));
        // A gap is refused with where the replica is.
        assert!(matches!(
            s.append("st", 1, 5, 1, vec![e(6, 1)], 0).await,
            Ok(AppendReply::Diverged { last_lsn: 3, .. })
        ));
        let sealed = s.seal("st", 2, false, 0).await.unwrap();
        assert_eq!((sealed.ok, sealed.last_lsn), (true, 3));
        // The deposed epoch gets nothing written after the seal.
        assert_eq!(s.append("st", 1, 3, 1, vec![e(4, 1)], 0).await, Ok(AppendReply::Sealed(2)));
        assert!(!s.fetch("st", Some(1), 1, 10).await.unwrap().ok);
        // The new epoch overwrites the unacknowledgeable suffix from LSN 3.
        assert_eq!(s.append("st", 2, 2, 1, vec![e(3, 2), e(4, 2)], 0).await, Ok(AppendReply::Durable(4)));
        // A resend of what it holds changes nothing.
        assert_eq!(s.append("st", 2, 2, 1, vec![e(3, 2)], 0).await, Ok(AppendReply::Durable(3)));
        let got = s.fetch("st", None, 1, 10).await.unwrap().entries;
        let data: Vec<_> = got.iter().map(|x| String::from_utf8(x.data.clone()).unwrap()).collect();
        assert_eq!(data, vec!["1@1", "2@1", "3@2", "4@2"]);
        // A mismatching previous entry is a divergence, not a write.
        assert!(matches!(s.append("st", 2, 4, 1, vec![e(5, 2)], 0).await, Ok(AppendReply::Diverged { .. })));
        drop(s);
        let s = ReplicaStore::open(dir.path()).unwrap();
        let st = s.state("st").await.unwrap();
        assert_eq!((st.sealed, st.last_lsn), (2, 4));
    }

    fn big(lsn: u64, epoch: u64) -> LogEntry {
        LogEntry { lsn, epoch, data: vec![b'x'; 200], ..Default::default() }
    }

    /// The trim point travels with writes and seals and deletes files on the replica (the
    /// replica's base moves up, reads start after it, the disk shrinks); a replica that lacks
    /// what the primary sends is reset to it only when the write says so.
    #[tokio::test]
    async fn writes_and_seals_carry_the_trim_point_and_a_reset_replaces_a_lagging_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = ReplicaStore::open(dir.path()).unwrap();
        let metrics = LogMetrics::default();
        s.configure(4096, metrics.clone());
        let entries: Vec<LogEntry> = (1..=200).map(|l| big(l, 1)).collect();
        assert_eq!(s.append("t", 1, 0, 0, entries, 0).await, Ok(AppendReply::Durable(200)));
        let files = s.files("t").await.unwrap();
        assert!(files.len() > 5, "{files:?}");
        // An empty write carries only the trim point.
        let trim = ReplicaWrite { epoch: 1, prev_lsn: 200, prev_epoch: 1, first_lsn: 150, ..Default::default() };
        assert_eq!(s.write("t", trim).await, Ok(AppendReply::Durable(200)));
        let st = s.state("t").await.unwrap();
        assert!(st.base_lsn > 100 && st.base_lsn < 150, "{st:?}");
        assert!(s.files("t").await.unwrap().len() < files.len());
        assert_eq!(s.fetch("t", None, 1, 1).await.unwrap().entries[0].lsn, st.base_lsn + 1);
        assert!(metrics.segments_deleted.get() > 0 && metrics.deleted_bytes.get() > 0);
        // A seal carries it too (a replica that was down learns it when a primary recovers).
        let sealed = s.seal("t", 2, false, 199).await.unwrap();
        assert!(sealed.base_lsn > st.base_lsn && sealed.base_lsn < 199, "{sealed:?}");
        // Below its base the replica cannot match: a divergence names the base.
        let below =
            ReplicaWrite { epoch: 2, prev_lsn: 10, prev_epoch: 1, entries: vec![big(11, 1)], ..Default::default() };
        assert!(
            matches!(s.write("t", below.clone()).await, Ok(AppendReply::Diverged { base_lsn, .. }) if base_lsn == sealed.base_lsn)
        );
        // A reset to a primary's log from LSN 500 (this replica lacks 201..500).
        let reset = ReplicaWrite {
            epoch: 2,
            prev_lsn: 499,
            prev_epoch: 2,
            entries: vec![big(500, 2), big(501, 2)],
            first_lsn: 500,
            reset: true,
            ..Default::default()
        };
        assert_eq!(s.write("t", reset).await, Ok(AppendReply::Durable(501)));
        let st = s.state("t").await.unwrap();
        assert_eq!((st.base_lsn, st.last_lsn), (499, 501));
        assert_eq!(s.files("t").await.unwrap().len(), 1);
        drop(s);
        let s = ReplicaStore::open(dir.path()).unwrap();
        let st = s.state("t").await.unwrap();
        assert_eq!((st.base_lsn, st.last_lsn, st.sealed), (499, 501, 2));
        // A reset of a replica that holds the base is a normal write (nothing dropped).
        let again = ReplicaWrite {
            epoch: 2,
            prev_lsn: 500,
            prev_epoch: 2,
            entries: vec![big(501, 2)],
            reset: true,
            ..Default::default()
        };
        assert_eq!(s.write("t", again).await, Ok(AppendReply::Durable(501)));
        assert_eq!(s.state("t").await.unwrap().base_lsn, 499);
    }

    #[tokio::test]
    async fn a_closed_store_finishes_what_was_queued_and_never_touches_its_directory_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = ReplicaStore::open(dir.path()).unwrap();
        let queued = s.write_queued("c", ReplicaWrite { epoch: 1, entries: vec![e(1, 1)], ..Default::default() });
        assert!(s.close_blocking(std::time::Duration::from_secs(10)));
        assert_eq!(queued.await.unwrap(), Ok(AppendReply::Durable(1)), "queued before the close");
        std::fs::remove_dir_all(dir.path()).unwrap();
        // A write after the close fails instead of recreating files (or exiting the process).
        let later = s.write("d", ReplicaWrite { epoch: 1, entries: vec![e(1, 1)], ..Default::default() }).await;
        assert_eq!(later, Err(StoreError::Closed));
        assert!(!dir.path().exists());
    }

    #[derive(Debug, Clone)]
    enum TestOp {
        Seal(u64),
        Append { epoch: u64, prev_lsn: u64, prev_epoch: u64, lsn0: u64, epochs: Vec<u64> },
        Truncate { epoch: u64, after: u64 },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = TestOp> {
        use proptest::prelude::*;
        prop_oneof![
            (0..6u64).prop_map(TestOp::Seal),
            (0..6u64, 0..12u64, 0..6u64, 0..14u64, proptest::collection::vec(0..7u64, 0..5)).prop_map(
                |(epoch, prev_lsn, prev_epoch, lsn0, epochs)| TestOp::Append {
                    epoch,
                    prev_lsn,
                    prev_epoch,
                    lsn0,
                    epochs
                }
            ),
            (0..6u64, 0..12u64).prop_map(|(epoch, after)| TestOp::Truncate { epoch, after }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Arbitrary (also malformed) operations never panic the writer, a replica never
        /// accepts an epoch below its seal, and what it holds survives a reopen unchanged.
        #[test]
        fn arbitrary_operations_keep_the_replica_consistent(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let s = ReplicaStore::open(dir.path()).unwrap();
                for op in ops {
                    let sealed_before = s.state("p").await.unwrap().sealed;
                    match op {
                        TestOp::Seal(e) => {
                            let r = s.seal("p", e, true, 0).await.unwrap();
                            assert_eq!(r.ok, e >= sealed_before);
                        }
                        TestOp::Append { epoch, prev_lsn, prev_epoch, lsn0, epochs } => {
                            let entries = epochs.iter().enumerate().map(|(i, &ep)| e(lsn0 + i as u64, ep)).collect();
                            let r = s.append("p", epoch, prev_lsn, prev_epoch, entries, 0).await;
                            if epoch < sealed_before {
                                assert_eq!(r, Ok(AppendReply::Sealed(sealed_before)));
                            }
                        }
                        TestOp::Truncate { epoch, after } => {
                            let _ = s.truncate_after("p", epoch, after).await;
                        }
                    }
                    let st = s.state("p").await.unwrap();
                    assert!(st.sealed >= sealed_before, "the sealed epoch never goes down");
                }
                let before = s.state("p").await.unwrap();
                let all = s.fetch("p", None, 1, 100).await.unwrap().entries;
                assert_eq!(all.len() as u64, before.last_lsn);
                drop(s);
                let s = ReplicaStore::open(dir.path()).unwrap();
                assert_eq!(s.state("p").await.unwrap(), before);
                assert_eq!(s.fetch("p", None, 1, 100).await.unwrap().entries, all);
            });
        }
    }
}
