//! Randomized simulation of the quorum store: several proposers race counter additions of
//! different sizes on one register through in-memory acceptors that drop messages (before or
//! after applying them) and delay them. Every acknowledged range must be disjoint from every
//! other (rr_seq's read-max-then-set hands out overlapping ranges in exactly this situation).

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::SimNet;
use ordo_sidecar::membership::MembersFile;
use ordo_sidecar::metrics::Metrics;
use ordo_sidecar::quorum::proposer::{decode_u64, Change, ChangeError, Proposer};
use ordo_sidecar::quorum::Ballot;
use tokio::sync::watch;
use tokio::time::Instant;

fn config(n: usize) -> MembersFile {
    common::members(&(0..n).map(|i| format!("a{i}")).collect::<Vec<_>>())
}

/// One simulated race; returns (acknowledged changes, failed changes, overlapping pairs).
async fn race(seed: u64, acceptors: usize, proposers: usize, loss: f64) -> (usize, usize) {
    let r = race_with(seed, acceptors, proposers, 2, loss, false).await;
    assert_eq!(r.2, 0, "seed {seed}: acknowledged ranges overlap");
    (r.0, r.1)
}

async fn race_with(
    seed: u64,
    acceptors: usize,
    proposers: usize,
    callers: u64,
    loss: f64,
    non_adjacent: bool,
) -> (usize, usize, usize) {
    let cfg = config(acceptors);
    let net = Arc::new(SimNet::new(&cfg, seed, loss));
    let (_tx, rx) = watch::channel(Arc::new(cfg));
    let metrics = Arc::new(Metrics::new());
    let mut tasks = Vec::new();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(0usize));
    for p in 0..proposers {
        let proposer = Proposer::new(format!("p{p}"), net.clone(), rx.clone(), metrics.clone());
        if non_adjacent {
            proposer.pipeline_at_non_adjacent_ballots_for_simulation();
        }
        // Concurrent callers per proposer, with different sizes, so batches and pipelines form.
        for c in 0..callers {
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
                        Err(ChangeError::Unavailable { .. } | ChangeError::OutcomeUnknown { .. }) => {
                            *failures.lock().unwrap() += 1
                        }
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
    let overlaps = r.windows(2).filter(|w| w[1].0 < w[0].1).count();
    let failed = *failures.lock().unwrap();
    (r.len(), failed, overlaps)
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

/// Pipelined chains of rounds (several callers per proposer keep up to four rounds in flight)
/// racing other proposers on a lossy network never hand out an ID twice.
#[tokio::test(flavor = "current_thread")]
async fn pipelined_rounds_never_overlap_with_message_loss() {
    for seed in 0..4 {
        let (ok, _, overlaps) = race_with(500 + seed, 3, 3, 6, 0.12, false).await;
        assert_eq!(overlaps, 0, "seed {seed}: pipelined rounds handed out an ID twice");
        assert!(ok > 0);
    }
}

/// The interleaving that makes pipelining unsafe unless a chained round's ballot is the
/// immediate successor of the previous one (see `quorum/round.rs`), played step by step on
/// acceptors A, B, C with the real round code: P's round k reaches only A; Q prepares on B and C
/// and gets its value chosen; P's round k+1 follows. At the adjacent ballot B and C refuse it and
/// Q's value survives; at `(round + 1, P)` (the "conditional accept" scheme's ballot, which A
/// would take since it accepted round k) B and C take it too, and Q's acknowledged range is
/// handed out again.
#[tokio::test(flavor = "current_thread")]
async fn pipelining_is_safe_only_at_the_adjacent_ballot() {
    assert_eq!(play_interleaving(|b| b.next()).await, None);
    let lost = play_interleaving(|b| Ballot { round: b.round + 1, step: 0, ..b.clone() }).await;
    assert!(lost.is_some(), "at a non-adjacent ballot the interleaving must lose Q's chosen value");
}

/// Plays the interleaving with `successor` as the chained rounds' ballot; returns the overlap
/// between Q's acknowledged range and P's, if any.
async fn play_interleaving(successor: impl Fn(&Ballot) -> Ballot) -> Option<((u64, u64), (u64, u64))> {
    use ordo_sidecar::quorum::round;
    let cfg = config(3);
    let net = SimNet::new(&cfg, 1, 0.0);
    let only = |ids: &[&str]| {
        let mut c = cfg.clone();
        c.current.members.retain(|m| ids.contains(&m.id.as_str()));
        c
    };
    let deadline = || Instant::now() + Duration::from_secs(1);
    let counter = |v: u64| v.to_be_bytes().to_vec();
    // P's Prepare round on everyone: the counter goes 1 -> 11 (P's first range [1, 11)).
    let b0 = Ballot::of(5, "p", 1);
    let (_, voters) = round::prepare(&net, &cfg, "seq/x", &b0, deadline()).await.unwrap();
    round::accept(&net, &cfg, "seq/x", &b0, Some(&counter(11)), &voters, deadline()).await.unwrap();
    // Round k, 11 -> 21, reaches only A (a0).
    let b1 = successor(&b0);
    let _ = round::accept(&net, &only(&["a0"]), "seq/x", &b1, Some(&counter(21)), &voters, deadline()).await;
    // Q (ordered above P in the same round) prepares on B and C, sees 11, gets 11 -> 16 chosen.
    let m = Ballot::of(5, "q", 1);
    let bc = only(&["a1", "a2"]);
    let (current, qvoters) = round::prepare(&net, &bc, "seq/x", &m, deadline()).await.unwrap();
    assert_eq!(decode_u64(current.as_deref()), Some(11));
    round::accept(&net, &bc, "seq/x", &m, Some(&counter(16)), &qvoters, deadline()).await.unwrap();
    let q_range = (11, 16);
    // Round k+1, 21 -> 31, to everyone. If it is chosen, P acknowledges rounds k and k+1: [11, 31).
    let b2 = successor(&b1);
    match round::accept(&net, &cfg, "seq/x", &b2, Some(&counter(31)), &voters, deadline()).await {
        Ok(_) => Some((q_range, (11, 31))),
        Err(_) => {
            // A later Prepare must see Q's value (or something built on it).
            let (v, _) = round::prepare(&net, &cfg, "seq/x", &Ballot::of(9, "r", 1), deadline()).await.unwrap();
            let v = decode_u64(v.as_deref()).unwrap();
            (v < 16).then_some((q_range, (11, v)))
        }
    }
}

/// Routing: a lone writer proposes itself (no forward, no conflict); proposers that pre-empt
/// each other on one register start forwarding to its home. Fails with the old rule (every
/// change of a non-home sidecar forwarded) and when a lost round does not mark the register
/// contended.
#[tokio::test(flavor = "current_thread")]
async fn a_lone_writer_proposes_itself_and_contending_writers_forward() {
    let cfg = config(3);
    let net = Arc::new(SimNet::new(&cfg, 7, 0.0));
    let (_tx, rx) = watch::channel(Arc::new(cfg));
    let metrics = Arc::new(Metrics::new());
    let live = || (0..3).map(|i| format!("a{i}")).collect::<Vec<_>>();
    let lone = Proposer::new("p0".into(), net.clone(), rx.clone(), metrics.clone());
    lone.set_live(live());
    for _ in 0..20 {
        let deadline = Instant::now() + Duration::from_secs(2);
        lone.change("seq/lone", Change::Add { n: 1, start: 1 }, deadline).await.unwrap();
    }
    assert_eq!((metrics.forwards.get(), metrics.conflicts.get()), (0, 0), "a lone writer forwards nothing");

    let mut tasks = Vec::new();
    for p in 1..3 {
        let proposer = Proposer::new(format!("p{p}"), net.clone(), rx.clone(), metrics.clone());
        // Every member is live, so the register has a home to forward to (the simulated network
        // refuses forwards; the attempt is what counts here).
        proposer.set_live(live());
        for _ in 0..3 {
            let proposer = proposer.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    let deadline = Instant::now() + Duration::from_secs(2);
                    let _ = proposer.change("seq/hot", Change::Add { n: 1, start: 1 }, deadline).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(metrics.conflicts.get() > 0, "two writers of one register pre-empt each other at first");
    assert!(metrics.forwards.get() > 0, "after a lost round, changes go to the register's home");
}

/// A pass over many registers (a migration rewrites each once) does not keep a worker per
/// register for the full idle time: above `WORKERS_CROWDED` they retire quickly. Fails when
/// every worker stays 30 s.
#[tokio::test(flavor = "current_thread")]
async fn workers_of_a_pass_over_many_registers_retire_quickly() {
    use ordo_sidecar::quorum::proposer::WORKERS_CROWDED;
    let cfg = config(3);
    let net = Arc::new(SimNet::new(&cfg, 11, 0.0));
    let (_tx, rx) = watch::channel(Arc::new(cfg));
    let proposer = Proposer::new("p0".into(), net, rx, Arc::new(Metrics::new()));
    let n = WORKERS_CROWDED * 2;
    for i in 0..n {
        let deadline = Instant::now() + Duration::from_secs(2);
        proposer.change(&format!("r/{i}"), Change::Add { n: 1, start: 1 }, deadline).await.unwrap();
    }
    assert!(proposer.worker_count() > WORKERS_CROWDED, "{} workers right after the pass", proposer.worker_count());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = proposer.worker_count();
    assert!(left <= WORKERS_CROWDED, "{left} workers 2 s after a pass over {n} registers");
}
