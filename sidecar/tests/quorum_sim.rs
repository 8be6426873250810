//! Randomized simulation of the quorum store: several proposers race counter additions of
//! different sizes on one register through in-memory acceptors that drop messages (before or
//! after applying them) and delay them. Every acknowledged range must be disjoint from every
//! other (rr_seq's read-max-then-set hands out overlapping ranges in exactly this situation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use ordo_sidecar::membership::{Member, MembersFile};
use ordo_sidecar::metrics::Metrics;
use ordo_sidecar::quorum::acceptor::{AcceptReply, AcceptorState, PrepareReply, Voter};
use ordo_sidecar::quorum::proposer::{decode_u64, Change, ChangeError, Outcome, Proposer};
use ordo_sidecar::quorum::store::Page;
use ordo_sidecar::quorum::transport::{PeerError, Peers, ProbeInfo};
use ordo_sidecar::quorum::Ballot;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

/// In-memory acceptors with a lossy, slow network.
struct SimNet {
    acceptors: HashMap<String, Mutex<AcceptorState>>,
    rng: Mutex<rand::rngs::StdRng>,
    loss: f64,
}

impl SimNet {
    async fn hop(&self) -> bool {
        let (delay, lost) = {
            let mut rng = self.rng.lock().unwrap();
            (rng.random_range(0..300u64), rng.random_bool(self.loss))
        };
        tokio::time::sleep(Duration::from_micros(delay)).await;
        !lost
    }

    /// Delivers a message (maybe), applies it, and delivers the reply (maybe).
    async fn deliver<T>(&self, to: &str, f: impl FnOnce(&mut AcceptorState) -> T) -> Result<T, PeerError> {
        if !self.hop().await {
            return Err(PeerError::Unreachable("request lost".into()));
        }
        let r = f(&mut self.acceptors[to].lock().unwrap());
        if !self.hop().await {
            return Err(PeerError::Unreachable("reply lost".into()));
        }
        Ok(r)
    }
}

impl Peers for SimNet {
    async fn prepare(
        &self,
        to: &Member,
        _e: u64,
        key: &str,
        b: &Ballot,
        _t: Duration,
    ) -> Result<(PrepareReply, u64), PeerError> {
        self.deliver(&to.id, |s| (s.prepare(key, b).0, 1)).await
    }

    async fn accept(
        &self,
        to: &Member,
        _e: u64,
        key: &str,
        b: &Ballot,
        v: &[u8],
        next: Option<&Ballot>,
        voters: &[Voter],
        _t: Duration,
    ) -> Result<(AcceptReply, u64), PeerError> {
        self.deliver(&to.id, |s| (s.accept(key, b, v.to_vec(), next, voters).0, 1)).await
    }

    async fn fence(&self, _: &Member, _: u64, _: &str, _: u64, _: Duration) -> Result<(), PeerError> {
        Ok(())
    }

    async fn dump(&self, _: &Member, _: u64, _: Option<&str>, _: usize, _: Duration) -> Result<Page, PeerError> {
        Err(PeerError::Refused("not simulated".into()))
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

fn config(n: usize) -> MembersFile {
    common::members(&(0..n).map(|i| format!("a{i}")).collect::<Vec<_>>())
}

async fn race(seed: u64, acceptors: usize, proposers: usize, loss: f64) -> (usize, usize) {
    let cfg = config(acceptors);
    let net = Arc::new(SimNet {
        acceptors: cfg.current.members.iter().map(|m| (m.id.clone(), Mutex::new(AcceptorState::default()))).collect(),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        loss,
    });
    let (_tx, rx) = watch::channel(Arc::new(cfg));
    let metrics = Arc::new(Metrics::new());
    let mut tasks = Vec::new();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(0usize));
    for p in 0..proposers {
        let proposer = Proposer::new(format!("p{p}"), net.clone(), rx.clone(), metrics.clone());
        // Two concurrent callers per proposer, with different sizes, so batches form too.
        for c in 0..2u64 {
            let (proposer, ranges, failures) = (proposer.clone(), ranges.clone(), failures.clone());
            let size = [1u64, 2, 3, 1000, 1024][(p + c as usize) % 5];
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    let deadline = Instant::now() + Duration::from_millis(500);
                    match proposer.change("seq/x", Change::Add { n: size, start: 1 }, deadline).await {
                        Ok(o) => {
                            let start = decode_u64(o.before.as_deref()).unwrap_or(1);
                            let end = decode_u64(o.after.as_deref()).unwrap();
                            assert_eq!(end - start, size);
                            ranges.lock().unwrap().push((start, end));
                        }
                        Err(ChangeError::Unavailable { .. }) => *failures.lock().unwrap() += 1,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut r = ranges.lock().unwrap().clone();
    r.sort();
    for w in r.windows(2) {
        assert!(w[1].0 >= w[0].1, "seed {seed}: ranges {:?} and {:?} overlap", w[0], w[1]);
    }
    let failed = *failures.lock().unwrap();
    (r.len(), failed)
}

#[tokio::test(flavor = "current_thread")]
async fn racing_proposers_never_overlap_on_a_reliable_network() {
    for seed in 0..4 {
        let (ok, failed) = race(seed, 3, 3, 0.0).await;
        assert_eq!(failed, 0, "seed {seed}: no losses, so every change completes");
        assert_eq!(ok, 3 * 2 * 25);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn racing_proposers_never_overlap_with_message_loss() {
    for seed in 0..6 {
        let (ok, _failed) = race(100 + seed, 5, 4, 0.15).await;
        assert!(ok > 0, "seed {seed}: some changes complete despite 15% loss");
    }
}
