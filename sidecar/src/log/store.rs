//! The replica side of every stream on this member: the rules a replica follows (refuse older
//! epochs, accept only entries that continue the primary's log, cut a conflicting suffix) and
//! one writer thread that applies every operation in arrival order and **group-commits**: it
//! takes everything queued while the disk was busy, writes it, `fdatasync`s each touched
//! segment once, and only then replies. A batch is never acknowledged before it is durable.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use super::segment::{Segment, SegmentError};
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
    },
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
        reply: oneshot::Sender<Result<SealReply, StoreError>>,
    },
    Append {
        stream: String,
        epoch: u64,
        prev_lsn: u64,
        prev_epoch: u64,
        entries: Vec<LogEntry>,
        complete_through: u64,
        reply: oneshot::Sender<Result<AppendReply, StoreError>>,
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
}

/// Every stream this member replicates, behind one group-committing writer thread.
#[derive(Clone)]
pub struct ReplicaStore {
    tx: std_mpsc::Sender<Op>,
    root: PathBuf,
}

impl ReplicaStore {
    /// Opens the store under `root` (one directory per stream) and starts its writer.
    pub fn open(root: &Path) -> Result<Self, SegmentError> {
        std::fs::create_dir_all(root)
            .map_err(|source| SegmentError::Io { path: root.display().to_string(), source })?;
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer { root: root.to_path_buf(), segments: HashMap::new() };
        std::thread::Builder::new()
            .name("ordo-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| SegmentError::Io { path: root.display().to_string(), source })?;
        Ok(Self { tx, root: root.to_path_buf() })
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

    /// Seals `stream` at `epoch` (durably) and reports its tail; `fresh_stream`: the stream
    /// never had a primary before (a replica without it starts complete, not rebuilding).
    pub async fn seal(&self, stream: &str, epoch: u64, fresh_stream: bool) -> Result<SealReply, StoreError> {
        self.call(|reply| Op::Seal { stream: stream.into(), epoch, fresh: fresh_stream, reply }).await
    }

    /// The replica's state of `stream` without sealing (epoch 0 is never refused).
    pub async fn state(&self, stream: &str) -> Result<SealReply, StoreError> {
        self.seal(stream, 0, false).await
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
        let rx = self.append_queued(stream, epoch, prev_lsn, prev_epoch, entries, complete_through);
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`ReplicaStore::append`], but queued at once (in call order) and answered later:
    /// for callers that pipeline writes and must keep their order.
    pub fn append_queued(
        &self,
        stream: &str,
        epoch: u64,
        prev_lsn: u64,
        prev_epoch: u64,
        entries: Vec<LogEntry>,
        complete_through: u64,
    ) -> oneshot::Receiver<Result<AppendReply, StoreError>> {
        let (reply, rx) = oneshot::channel();
        // A closed writer drops `reply`, which the caller sees as a closed store.
        let op = Op::Append { stream: stream.into(), epoch, prev_lsn, prev_epoch, entries, complete_through, reply };
        let _ = self.tx.send(op);
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

struct Writer {
    root: PathBuf,
    segments: HashMap<String, Segment>,
}

type Reply = Box<dyn FnOnce(bool) + Send>;

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            while let Ok(op) = rx.try_recv() {
                ops.push(op);
                if ops.len() >= 4096 {
                    break;
                }
            }
            let mut dirty = HashSet::new();
            let replies: Vec<Reply> = ops.into_iter().map(|op| self.apply(op, &mut dirty)).collect();
            let mut ok = true;
            for stream in &dirty {
                if let Some(seg) = self.segments.get(stream) {
                    if let Err(e) = seg.sync() {
                        // Data the kernel failed to write may be lost: do not acknowledge
                        // anything, and stop (as the register store does) rather than go on
                        // with a file whose contents are unknown.
                        tracing::error!(error = %e, "fdatasync of a log segment failed; exiting");
                        ok = false;
                    }
                }
            }
            for r in replies {
                r(ok);
            }
            if !ok {
                std::process::exit(70);
            }
        }
    }

    fn segment(&mut self, stream: &str, fresh: bool) -> Result<&mut Segment, StoreError> {
        if !self.segments.contains_key(stream) {
            crate::validate::validate_name(stream).map_err(|e| StoreError::Invalid(format!("stream: {e}")))?;
            let seg = Segment::open(&self.root.join(stream), fresh).map_err(|e| StoreError::Invalid(e.to_string()))?;
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
        match op {
            Op::Seal { stream, epoch, fresh, reply } => later(reply, self.seal(&stream, epoch, fresh)),
            Op::Append { stream, epoch, prev_lsn, prev_epoch, entries, complete_through, reply } => {
                let r = self.append(&stream, epoch, prev_lsn, prev_epoch, entries, complete_through);
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

    fn seal(&mut self, stream: &str, epoch: u64, fresh: bool) -> Result<SealReply, StoreError> {
        let seg = self.segment(stream, fresh)?;
        let ok = epoch >= seg.sealed();
        if ok {
            seg.seal(epoch).map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        Ok(SealReply {
            ok,
            sealed: seg.sealed(),
            last_lsn: seg.last_lsn(),
            epochs: seg.epochs().to_vec(),
            rebuilding: seg.rebuilding(),
        })
    }

    fn append(
        &mut self,
        stream: &str,
        epoch: u64,
        prev_lsn: u64,
        prev_epoch: u64,
        entries: Vec<LogEntry>,
        complete_through: u64,
    ) -> Result<AppendReply, StoreError> {
        let seg = self.segment(stream, false)?;
        if epoch < seg.sealed() {
            return Ok(AppendReply::Sealed(seg.sealed()));
        }
        seg.seal(epoch).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if prev_lsn > seg.last_lsn() || seg.epoch_at(prev_lsn) != prev_epoch {
            return Ok(AppendReply::Diverged { last_lsn: seg.last_lsn(), epochs: seg.epochs().to_vec() });
        }
        let mut lsn = prev_lsn;
        for e in entries {
            lsn += 1;
            if e.lsn != lsn || e.epoch == 0 || e.epoch > epoch {
                return Err(StoreError::Invalid(format!(
                    "entry {} (epoch {}) where LSN {lsn} of an epoch up to {epoch} was expected",
                    e.lsn, e.epoch
                )));
            }
            if lsn <= seg.last_lsn() {
                if seg.epoch_at(lsn) == e.epoch {
                    continue; // already held (a resend): the same entry by log matching
                }
                // A suffix no primary at this epoch's quorum holds: never acknowledged.
                seg.truncate_from(lsn).map_err(|e| StoreError::Invalid(e.to_string()))?;
            }
            seg.append(&e).map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        if seg.rebuilding() && lsn >= complete_through {
            // It holds the primary's log through a commit point that covers everything any
            // earlier epoch acknowledged: it counts again (entries synced before the marker goes).
            seg.sync().map_err(|e| StoreError::Invalid(e.to_string()))?;
            seg.finish_rebuild().map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        Ok(AppendReply::Durable(lsn))
    }

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
        let sealed = s.seal("st", 2, false).await.unwrap();
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
                            let r = s.seal("p", e, true).await.unwrap();
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
