//! Durable acceptor: the acceptor state machine persisted in redb, with group commit.
//!
//! One writer thread owns the state. It takes every message waiting in its queue, applies them
//! in arrival order, writes the registers they changed in one redb transaction, commits it with
//! fsync, and only then sends the replies. A reply therefore never reveals state that a crash
//! could lose, and a burst of messages costs one fsync.

use std::collections::HashSet;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use super::acceptor::{
    decode_register, encode_register, page_keys, AcceptReply, AcceptorState, PrepareReply, RegisterState, Voter,
};
use super::transport::KeyPage;
use super::Ballot;

const REGISTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("registers");
const FENCES: TableDefinition<&str, u64> = TableDefinition::new("fences");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Most messages folded into one commit.
const MAX_GROUP: usize = 4096;

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

/// Everything a catching-up or migrating member copies from a peer.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The peer's registers count in quorums.
    pub caught_up: bool,
    /// Registers by key.
    pub registers: Vec<(String, RegisterState)>,
    /// Latest known incarnations.
    pub fences: Vec<Voter>,
    /// The peer's incarnation.
    pub incarnation: u64,
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
    Snapshot {
        reply: oneshot::Sender<Result<Snapshot, StoreError>>,
    },
    ListKeys {
        prefix: String,
        after: String,
        limit: usize,
        reply: oneshot::Sender<Result<KeyPage, StoreError>>,
    },
    InstallCopy {
        registers: Vec<(String, RegisterState)>,
        fences: Vec<Voter>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SetMeta {
        max_epoch: Option<u64>,
        migrated_epoch: Option<u64>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Handle to the durable acceptor of this member.
#[derive(Clone)]
pub struct RegisterStore {
    tx: mpsc::UnboundedSender<Op>,
    meta: watch::Receiver<StoreMeta>,
}

impl RegisterStore {
    /// Opens (or creates) the store in `dir`. A new store gets a fresh incarnation and is not
    /// caught up. `member` is this member's id (its own fence).
    pub fn open(dir: &Path, member: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Storage(format!("{}: {e}", dir.display())))?;
        let db = Database::create(dir.join("ordo.redb")).map_err(|e| StoreError::Storage(e.to_string()))?;
        let (state, meta) = load(&db, member)?;
        let member = member.to_string();
        let (meta_tx, meta_rx) = watch::channel(meta);
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("ordo-store".into())
            .spawn(move || Writer { member, db, state, meta, meta_tx }.run(rx))
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        Ok(Self { tx, meta: meta_rx })
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

    /// Up to `limit` keys under `prefix` after `after`, in key order (register listing).
    pub async fn list_keys(&self, prefix: String, after: String, limit: usize) -> Result<KeyPage, StoreError> {
        self.call(|reply| Op::ListKeys { prefix, after, limit, reply }).await
    }

    /// All registers and fences.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.call(|reply| Op::Snapshot { reply }).await
    }

    /// Installs copied registers and fences and marks the store caught up.
    pub async fn install_copy(
        &self,
        registers: Vec<(String, RegisterState)>,
        fences: Vec<Voter>,
    ) -> Result<(), StoreError> {
        self.call(|reply| Op::InstallCopy { registers, fences, reply }).await
    }

    /// Persists the highest loaded epoch and/or the highest migrated epoch.
    pub async fn set_meta(&self, max_epoch: Option<u64>, migrated_epoch: Option<u64>) -> Result<(), StoreError> {
        self.call(|reply| Op::SetMeta { max_epoch, migrated_epoch, reply }).await
    }
}

fn load(db: &Database, member: &str) -> Result<(AcceptorState, StoreMeta), StoreError> {
    let err = |e: &dyn std::fmt::Display| StoreError::Storage(e.to_string());
    // Make sure the tables exist, and create the incarnation of a new store.
    let txn = db.begin_write().map_err(|e| err(&e))?;
    let fresh;
    {
        txn.open_table(REGISTERS).map_err(|e| err(&e))?;
        let mut fences = txn.open_table(FENCES).map_err(|e| err(&e))?;
        let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
        fresh = meta.get("incarnation").map_err(|e| err(&e))?.is_none();
        if fresh {
            let inc = rand::random::<u64>() | 1;
            meta.insert("incarnation", inc).map_err(|e| err(&e))?;
            meta.insert("caught_up", 0).map_err(|e| err(&e))?;
            fences.insert(member, inc).map_err(|e| err(&e))?;
        }
    }
    txn.commit().map_err(|e| err(&e))?;

    let txn = db.begin_read().map_err(|e| err(&e))?;
    let mut state = AcceptorState::default();
    let regs = txn.open_table(REGISTERS).map_err(|e| err(&e))?;
    for row in regs.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let reg = decode_register(v.value())
            .ok_or_else(|| StoreError::Storage(format!("register {:?} is corrupt", k.value())))?;
        state.registers.insert(k.value().to_string(), reg);
    }
    let fences = txn.open_table(FENCES).map_err(|e| err(&e))?;
    for row in fences.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        state.fences.insert(k.value().to_string(), v.value());
    }
    let meta_t = txn.open_table(META).map_err(|e| err(&e))?;
    let get = |k: &str| -> Result<u64, StoreError> {
        Ok(meta_t.get(k).map_err(|e| err(&e))?.map(|g| g.value()).unwrap_or(0))
    };
    let meta = StoreMeta {
        incarnation: get("incarnation")?,
        caught_up: get("caught_up")? == 1,
        max_epoch: get("max_epoch")?,
        migrated_epoch: get("migrated_epoch")?,
    };
    if fresh {
        tracing::info!(
            incarnation = meta.incarnation,
            "created a new data directory; this member catches up before it votes"
        );
    }
    Ok((state, meta))
}

struct Writer {
    member: String,
    db: Database,
    state: AcceptorState,
    meta: StoreMeta,
    meta_tx: watch::Sender<StoreMeta>,
}

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

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let mut ops = vec![first];
            while ops.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut dirty = HashSet::new();
            let mut fences_dirty = false;
            let mut meta_dirty = false;
            let replies: Vec<Deferred> =
                ops.into_iter().map(|op| self.apply(op, &mut dirty, &mut fences_dirty, &mut meta_dirty)).collect();
            let result = if dirty.is_empty() && !fences_dirty && !meta_dirty {
                Ok(())
            } else {
                self.persist(&dirty, fences_dirty, meta_dirty)
            };
            if let Err(e) = &result {
                // Memory now holds state the disk does not: stop rather than answer from it.
                tracing::error!(error = %e, "storage commit failed; exiting so the member restarts from disk");
                for r in replies {
                    r(Some(e));
                }
                std::process::exit(70);
            }
            if meta_dirty {
                let _ = self.meta_tx.send(self.meta);
            }
            for r in replies {
                r(None);
            }
        }
    }

    fn apply(
        &mut self,
        op: Op,
        dirty: &mut HashSet<String>,
        fences_dirty: &mut bool,
        meta_dirty: &mut bool,
    ) -> Deferred {
        match op {
            Op::Prepare { key, ballot, reply } => {
                if !self.meta.caught_up {
                    return defer(reply, Err(StoreError::NotCaughtUp));
                }
                let (r, changed) = self.state.prepare(&key, &ballot);
                if changed {
                    dirty.insert(key);
                }
                defer(reply, Ok(r))
            }
            Op::Accept { key, ballot, value, promise_next, voters, reply } => {
                if !self.meta.caught_up {
                    return defer(reply, Err(StoreError::NotCaughtUp));
                }
                let (r, changed) = self.state.accept(&key, &ballot, value, promise_next.as_ref(), &voters);
                if changed {
                    dirty.insert(key);
                }
                defer(reply, Ok(r))
            }
            Op::Fence { member, incarnation, reply } => {
                *fences_dirty |= self.state.fence(&member, incarnation);
                defer(reply, Ok(()))
            }
            Op::ListKeys { prefix, after, limit, reply } => {
                if !self.meta.caught_up {
                    return defer(reply, Err(StoreError::NotCaughtUp));
                }
                defer(reply, Ok(page_keys(self.state.registers.iter(), &prefix, &after, limit)))
            }
            Op::Snapshot { reply } => {
                let snap = Snapshot {
                    caught_up: self.meta.caught_up,
                    registers: self.state.registers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    fences: self
                        .state
                        .fences
                        .iter()
                        .map(|(m, i)| Voter { member: m.clone(), incarnation: *i })
                        .collect(),
                    incarnation: self.meta.incarnation,
                };
                defer(reply, Ok(snap))
            }
            Op::InstallCopy { registers, fences, reply } => {
                for (k, r) in &registers {
                    if self.state.merge_copy(k, r) {
                        dirty.insert(k.clone());
                    }
                }
                // Our own incarnation is ours to say; peers may only know an older one.
                for f in fences.into_iter().filter(|f| f.member != self.member) {
                    *fences_dirty |= self.state.fence(&f.member, f.incarnation);
                }
                self.meta.caught_up = true;
                *meta_dirty = true;
                defer(reply, Ok(()))
            }
            Op::SetMeta { max_epoch, migrated_epoch, reply } => {
                if let Some(e) = max_epoch.filter(|e| *e > self.meta.max_epoch) {
                    self.meta.max_epoch = e;
                    *meta_dirty = true;
                }
                if let Some(e) = migrated_epoch.filter(|e| *e > self.meta.migrated_epoch) {
                    self.meta.migrated_epoch = e;
                    *meta_dirty = true;
                }
                defer(reply, Ok(()))
            }
        }
    }

    fn persist(&mut self, dirty: &HashSet<String>, fences_dirty: bool, meta_dirty: bool) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut regs = txn.open_table(REGISTERS).map_err(redb::Error::from)?;
            for key in dirty {
                if let Some(r) = self.state.registers.get(key) {
                    regs.insert(key.as_str(), encode_register(r).as_slice()).map_err(redb::Error::from)?;
                }
            }
            if fences_dirty {
                let mut fences = txn.open_table(FENCES).map_err(redb::Error::from)?;
                for (m, inc) in &self.state.fences {
                    fences.insert(m.as_str(), *inc).map_err(redb::Error::from)?;
                }
            }
            if meta_dirty {
                let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
                meta.insert("caught_up", u64::from(self.meta.caught_up)).map_err(redb::Error::from)?;
                meta.insert("max_epoch", self.meta.max_epoch).map_err(redb::Error::from)?;
                meta.insert("migrated_epoch", self.meta.migrated_epoch).map_err(redb::Error::from)?;
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn state_survives_reopen_and_new_store_is_not_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegisterStore::open(dir.path(), "m0").unwrap();
        let inc = store.meta().incarnation;
        assert!(!store.meta().caught_up);
        assert!(matches!(store.prepare("k".into(), Ballot::new(1, "p")).await, Err(StoreError::NotCaughtUp)));
        store.install_copy(vec![], vec![]).await.unwrap();
        assert!(store.meta().caught_up);
        store.accept("k".into(), Ballot::new(1, "p"), Some(vec![42]), Some(Ballot::new(2, "p")), vec![]).await.unwrap();
        store.set_meta(Some(3), Some(2)).await.unwrap();
        drop(store);
        // The writer thread exits when the handle drops; give redb the file back.
        let store = reopen(dir.path()).await;
        let m = store.meta();
        assert_eq!((m.incarnation, m.caught_up, m.max_epoch, m.migrated_epoch), (inc, true, 3, 2));
        let snap = store.snapshot().await.unwrap();
        let (_, reg) = snap.registers.iter().find(|(k, _)| k == "k").unwrap();
        assert_eq!(reg.value, Some(vec![42]));
        assert_eq!(reg.promised, Ballot::new(2, "p"));
    }

    async fn reopen(dir: &Path) -> RegisterStore {
        for _ in 0..100 {
            if let Ok(s) = RegisterStore::open(dir, "m0") {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("store did not reopen");
    }
}
