//! Simulation of members losing their data while proposers race: acceptors are real
//! `RegisterStore`s (redb, fsync) behind a lossy in-memory network. Midway, one member's data
//! directory is replaced by an empty one; it must fence and copy (`catchup::attempt`) before it
//! votes. Then, with the load paused so no round refreshes them, two members are wiped back to
//! back and the third is cut off: every later quorum relies on copied state alone.
//! Every acknowledged range must stay disjoint from every other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

mod common;

use ordo_sidecar::membership::{Member, MembersFile};
use ordo_sidecar::metrics::Metrics;
use ordo_sidecar::quorum::acceptor::{AcceptReply, PrepareReply, Voter};
use ordo_sidecar::quorum::catchup::{attempt, Attempt};
use ordo_sidecar::quorum::proposer::{decode_u64, Change, ChangeError, Outcome, Proposer};
use ordo_sidecar::quorum::store::{RegisterStore, Snapshot, StoreError};
use ordo_sidecar::quorum::transport::{KeyPage, PeerError, Peers, ProbeInfo};
use ordo_sidecar::quorum::Ballot;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

struct Net {
    stores: RwLock<HashMap<String, RegisterStore>>,
    /// Members cut off from everyone.
    down: RwLock<std::collections::HashSet<String>>,
    rng: Mutex<rand::rngs::StdRng>,
    loss: f64,
}

fn peer_err(e: StoreError) -> PeerError {
    match e {
        StoreError::NotCaughtUp => PeerError::NotCaughtUp,
        other => PeerError::Unreachable(other.to_string()),
    }
}

impl Net {
    async fn hop(&self, to: &str) -> Result<(), PeerError> {
        if self.down.read().unwrap().contains(to) {
            return Err(PeerError::Unreachable("partitioned".into()));
        }
        let (delay, lost) = {
            let mut rng = self.rng.lock().unwrap();
            (rng.random_range(0..200u64), rng.random_bool(self.loss))
        };
        tokio::time::sleep(Duration::from_micros(delay)).await;
        if lost {
            Err(PeerError::Unreachable("lost".into()))
        } else {
            Ok(())
        }
    }

    fn store(&self, id: &str) -> RegisterStore {
        self.stores.read().unwrap()[id].clone()
    }
}

impl Peers for Net {
    async fn prepare(
        &self,
        to: &Member,
        _: u64,
        key: &str,
        b: &Ballot,
        _: Duration,
    ) -> Result<(PrepareReply, u64), PeerError> {
        self.hop(&to.id).await?;
        let s = self.store(&to.id);
        let r = s.prepare(key.into(), b.clone()).await.map_err(peer_err)?;
        self.hop(&to.id).await?;
        Ok((r, s.meta().incarnation))
    }

    async fn accept(
        &self,
        to: &Member,
        _: u64,
        key: &str,
        b: &Ballot,
        v: Option<&[u8]>,
        next: Option<&Ballot>,
        voters: &[Voter],
        _: Duration,
    ) -> Result<(AcceptReply, u64), PeerError> {
        self.hop(&to.id).await?;
        let s = self.store(&to.id);
        let r = s
            .accept(key.into(), b.clone(), v.map(<[u8]>::to_vec), next.cloned(), voters.to_vec())
            .await
            .map_err(peer_err)?;
        self.hop(&to.id).await?;
        Ok((r, s.meta().incarnation))
    }

    async fn fence(&self, to: &Member, _: u64, member: &str, inc: u64, _: Duration) -> Result<(), PeerError> {
        self.hop(&to.id).await?;
        self.store(&to.id).fence(member.into(), inc).await.map_err(peer_err)?;
        self.hop(&to.id).await
    }

    async fn dump(&self, to: &Member, _: u64, _: Duration) -> Result<Snapshot, PeerError> {
        self.hop(&to.id).await?;
        let snap = self.store(&to.id).snapshot().await.map_err(peer_err)?;
        self.hop(&to.id).await?;
        Ok(snap)
    }

    async fn list_keys(
        &self,
        to: &Member,
        _: u64,
        prefix: &str,
        after: &str,
        limit: usize,
        _: Duration,
    ) -> Result<KeyPage, PeerError> {
        self.hop(&to.id).await?;
        let page = self.store(&to.id).list_keys(prefix.into(), after.into(), limit).await.map_err(peer_err)?;
        self.hop(&to.id).await?;
        Ok(page)
    }

    async fn probe(&self, _: &Member, _: u64, _: Duration) -> Result<ProbeInfo, PeerError> {
        Err(PeerError::Refused("not simulated".into()))
    }

    async fn propose(
        &self,
        _: &Member,
        _: u64,
        _: &str,
        _: &[Change],
        _: Duration,
    ) -> Result<Vec<Result<Outcome, ChangeError>>, PeerError> {
        Err(PeerError::Unreachable("every proposer proposes itself here".into()))
    }
}

/// Replaces member `id`'s store with an empty one and runs catch-up attempts until it votes.
async fn wipe_and_catch_up(net: &Net, cfg: &MembersFile, id: &str, dir: &std::path::Path) -> Attempt {
    let fresh = RegisterStore::open(dir, id).unwrap();
    assert!(!fresh.meta().caught_up);
    net.stores.write().unwrap().insert(id.to_string(), fresh.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match attempt(id, &fresh, net, cfg).await.unwrap() {
            Attempt::Waiting(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(5)).await,
            Attempt::Waiting(why) => panic!("{id} never caught up: {why}"),
            done => return done,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_members_catch_up_without_any_id_handed_out_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ["m0", "m1", "m2"];
    let cfg = common::members(&ids.map(String::from));
    let mut stores = HashMap::new();
    for id in ids {
        let s = RegisterStore::open(&tmp.path().join(id), id).unwrap();
        s.install_copy(vec![], vec![]).await.unwrap();
        stores.insert(id.to_string(), s);
    }
    let net = Arc::new(Net {
        stores: RwLock::new(stores),
        down: RwLock::default(),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(7)),
        loss: 0.05,
    });
    let (_tx, rx) = watch::channel(Arc::new(cfg.clone()));
    let metrics = Arc::new(Metrics::new());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..3 {
        let proposer = Proposer::new(format!("p{p}"), net.clone(), rx.clone(), metrics.clone());
        for c in 0..2u64 {
            let (proposer, ranges, stop, paused) = (proposer.clone(), ranges.clone(), stop.clone(), paused.clone());
            let size = [1u64, 3, 1000][(p + c as usize) % 3];
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && ok < 100_000 {
                    if paused.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let deadline = Instant::now() + Duration::from_millis(300);
                    match proposer.change("seq/x", Change::Add { n: size, start: 1 }, deadline).await {
                        Ok(o) => {
                            let start = decode_u64(o.before.as_deref()).unwrap_or(1);
                            let end = decode_u64(o.after.as_deref()).unwrap();
                            ranges.lock().unwrap().push((start, end));
                            ok += 1;
                        }
                        Err(ChangeError::Unavailable { .. } | ChangeError::OutcomeUnknown { .. }) => {}
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = wipe_and_catch_up(&net, &cfg, "m0", &tmp.path().join("m0-wiped")).await;
    assert!(matches!(first, Attempt::Copied { .. }), "{first:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Quiesce, then lose m1's and m2's data back to back (m0 was caught up by copying).
    paused.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (id, dir) in [("m1", "m1-wiped"), ("m2", "m2-wiped")] {
        let done = wipe_and_catch_up(&net, &cfg, id, &tmp.path().join(dir)).await;
        assert!(matches!(done, Attempt::Copied { .. }), "{id}: {done:?}");
    }
    // m0 never lost its data; cut it off, so every quorum is {m1, m2}: copied state only.
    net.down.write().unwrap().insert("m0".to_string());
    let before_resume = ranges.lock().unwrap().len();
    paused.store(false, std::sync::atomic::Ordering::SeqCst);
    // Poll with a deadline (a loaded machine is slow, not wrong).
    let resumed = Instant::now() + Duration::from_secs(20);
    while ranges.lock().unwrap().len() <= before_resume + 20 && Instant::now() < resumed {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ranges.lock().unwrap().len() > before_resume + 20, "changes completed after the wipes");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let mut r = ranges.lock().unwrap().clone();
    r.sort();
    for w in r.windows(2) {
        assert!(w[1].0 >= w[0].1, "ranges {:?} and {:?} overlap", w[0], w[1]);
    }
    assert!(r.len() > 50, "changes kept completing across both wipes ({})", r.len());
}
