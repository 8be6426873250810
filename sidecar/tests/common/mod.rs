//! Shared by the simulation tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ordo_sidecar::membership::{Member, MemberSet, MembersFile};
use ordo_sidecar::quorum::acceptor::{page_keys, AcceptReply, AcceptorState, PrepareReply, Voter};
use ordo_sidecar::quorum::proposer::{Change, ChangeError, Outcome};
use ordo_sidecar::quorum::store::Page;
use ordo_sidecar::quorum::transport::{KeyPage, PeerError, Peers, ProbeInfo};
use ordo_sidecar::quorum::Ballot;
use rand::{Rng, SeedableRng};

/// A register client of proposer `id` over the simulated network (its configuration never
/// changes).
pub fn registers(
    net: &std::sync::Arc<SimNet>,
    cfg: &MembersFile,
    id: &str,
    timeout: Duration,
) -> ordo_sidecar::quorum::register::Registers<SimNet> {
    let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(cfg.clone()));
    std::mem::forget(tx); // the configuration never changes here
    let metrics = std::sync::Arc::new(ordo_sidecar::metrics::Metrics::new());
    let proposer = ordo_sidecar::quorum::proposer::Proposer::new(id.into(), net.clone(), rx, metrics);
    ordo_sidecar::quorum::register::Registers::new(proposer, timeout)
}

/// Epoch 1 with `ids` as members (majority quorums) at simulated addresses.
pub fn members(ids: &[String]) -> MembersFile {
    MembersFile {
        epoch: 1,
        current: MemberSet {
            members: ids.iter().map(|i| Member { id: i.clone(), peer_addr: format!("sim:{i}") }).collect(),
            read_quorum: None,
            write_quorum: None,
        },
        previous: None,
    }
}

/// What the simulated network drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Requests and replies at random, with the net's loss rate.
    Random,
    /// Every request (nothing reaches an acceptor).
    Requests,
    /// Every reply (acceptors apply what they receive; nobody hears back).
    Replies,
    /// Nothing moves: every message waits until the mode changes (a stalled network), then
    /// goes on as in the new mode.
    Stall,
}

/// In-memory acceptors with a lossy, slow network.
pub struct SimNet {
    pub acceptors: HashMap<String, Mutex<AcceptorState>>,
    rng: Mutex<rand::rngs::StdRng>,
    loss: f64,
    drop: Mutex<Drop>,
}

impl SimNet {
    /// Empty acceptors for every member of `cfg`, losing `loss` of the messages at random.
    pub fn new(cfg: &MembersFile, seed: u64, loss: f64) -> Self {
        Self {
            acceptors: cfg.all_members().iter().map(|m| (m.id.clone(), Mutex::new(AcceptorState::default()))).collect(),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            loss,
            drop: Mutex::new(Drop::Random),
        }
    }

    /// Changes what the network drops from now on.
    pub fn set_drop(&self, d: Drop) {
        *self.drop.lock().unwrap() = d;
    }

    async fn hop(&self, reply: bool) -> bool {
        let (delay, lost) = {
            let mut rng = self.rng.lock().unwrap();
            (rng.random_range(0..300u64), rng.random_bool(self.loss))
        };
        tokio::time::sleep(Duration::from_micros(delay)).await;
        loop {
            let mode = *self.drop.lock().unwrap();
            return match mode {
                Drop::Random => !lost,
                Drop::Requests => reply,
                Drop::Replies => !reply,
                Drop::Stall => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
        }
    }

    /// Delivers a message (maybe), applies it, and delivers the reply (maybe).
    async fn deliver<T>(&self, to: &str, f: impl FnOnce(&mut AcceptorState) -> T) -> Result<T, PeerError> {
        if !self.hop(false).await {
            return Err(PeerError::Unreachable("request lost".into()));
        }
        let r = f(&mut self.acceptors[to].lock().unwrap());
        if !self.hop(true).await {
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
        v: Option<&[u8]>,
        next: Option<&Ballot>,
        voters: &[Voter],
        _t: Duration,
    ) -> Result<(AcceptReply, u64), PeerError> {
        self.deliver(&to.id, |s| (s.accept(key, b, v.map(<[u8]>::to_vec), next, voters).0, 1)).await
    }

    async fn fence(&self, _: &Member, _: u64, _: &str, _: u64, _: Duration) -> Result<(), PeerError> {
        Ok(())
    }

    async fn dump(&self, _: &Member, _: u64, _: Option<&str>, _: usize, _: Duration) -> Result<Page, PeerError> {
        Err(PeerError::Refused("not simulated".into()))
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
        self.deliver(&to.id, |s| page_keys(s.registers.iter(), prefix, after, limit)).await
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
