//! Catch-up of a member that starts with an empty data directory (new, or wiped).
//!
//! Until it finishes, the member refuses Prepare and Accept, so it never counts in a quorum.
//! It finishes when, in one attempt:
//!
//! 1. its new incarnation is **fenced** on enough peers of every configuration it belongs to
//!    (`|S| - W` of the others in `S`): a round that counted a promise its old incarnation gave
//!    before the wipe can then no longer gather a write quorum, because fenced acceptors refuse
//!    accepts citing the old incarnation and the member itself refuses everything;
//! 2. it **copies** the registers of caught-up peers that meet every write quorum outside itself
//!    (`|ids ∩ S| + W > |S|`), keeping for each register the highest accepted ballot: that
//!    includes every chosen value, and is a state an acceptor could have reached by receiving
//!    those accept messages late.
//!
//! A brand-new cluster bootstraps when every member answers and none holds a value: nothing
//! was ever chosen, so an empty state is that of an acceptor that never voted. If more members lost their data than the quorums tolerate, the member keeps
//! waiting and says why: it never invents state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;

use super::acceptor::{RegisterState, Voter};
use super::store::{RegisterStore, StoreError};
use super::transport::Peers;
use crate::membership::MembersFile;

/// How long one attempt waits for peers.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts.
const RETRY_EVERY: Duration = Duration::from_millis(300);

/// What one catch-up attempt decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Copied from caught-up peers.
    Copied {
        /// Peers copied from.
        from: Vec<String>,
        /// Registers installed.
        registers: usize,
    },
    /// Every member was new: started empty.
    Bootstrapped,
    /// Not yet possible.
    Waiting(String),
}

/// Runs attempts until the store is caught up.
pub async fn run<P: Peers>(me: String, store: RegisterStore, peers: Arc<P>, config: watch::Receiver<Arc<MembersFile>>) {
    let mut last_reason = String::new();
    while !store.meta().caught_up {
        let cfg = config.borrow().clone();
        match attempt(&me, &store, peers.as_ref(), &cfg).await {
            Ok(Attempt::Waiting(reason)) => {
                if reason != last_reason {
                    tracing::warn!(%reason, "catching up: not yet possible");
                    last_reason = reason;
                }
            }
            Ok(done) => {
                tracing::info!(outcome = ?done, "caught up; this member now votes");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "catching up: storage error"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// One attempt: fence, dump, then copy or bootstrap if the answers allow it.
pub async fn attempt<P: Peers>(
    me: &str,
    store: &RegisterStore,
    peers: &P,
    cfg: &MembersFile,
) -> Result<Attempt, StoreError> {
    let incarnation = store.meta().incarnation;
    let others: Vec<_> = cfg.all_members().into_iter().filter(|m| m.id != me).collect();
    let answers = join_all(others.iter().map(|m| async move {
        let fenced = peers.fence(m, cfg.epoch, me, incarnation, ATTEMPT_TIMEOUT).await;
        let dump = peers.dump(m, cfg.epoch, ATTEMPT_TIMEOUT).await;
        (m.id.as_str(), fenced, dump)
    }))
    .await;

    let fenced: Vec<&str> = answers.iter().filter(|(_, f, _)| f.is_ok()).map(|(id, _, _)| *id).collect();
    let fence_enough = cfg
        .quorum_sets()
        .iter()
        .filter(|s| s.contains(me))
        .all(|s| fenced.iter().filter(|id| s.contains(id)).count() + s.write_quorum() >= s.len());
    if !fence_enough {
        return Ok(Attempt::Waiting(describe("could not fence the old incarnation on enough peers", &answers)));
    }
    let dumps: Vec<_> = answers.iter().filter_map(|(id, _, d)| d.as_ref().ok().map(|s| (*id, s))).collect();
    let caught_up: Vec<&str> = dumps.iter().filter(|(_, s)| s.caught_up).map(|(id, _)| *id).collect();

    if cfg.covers_write_quorums(caught_up.iter().copied()) {
        let mut registers: HashMap<String, RegisterState> = HashMap::new();
        let mut fences: HashMap<String, u64> = HashMap::new();
        for (_, snap) in dumps.iter().filter(|(_, s)| s.caught_up) {
            for (key, reg) in &snap.registers {
                let slot = registers.entry(key.clone()).or_default();
                if reg.accepted > slot.accepted {
                    slot.accepted = reg.accepted.clone();
                    slot.value = reg.value.clone();
                }
                slot.promised = slot.promised.clone().max(reg.promised.clone());
            }
            for f in &snap.fences {
                let e = fences.entry(f.member.clone()).or_insert(f.incarnation);
                *e = (*e).max(f.incarnation);
            }
        }
        let n = registers.len();
        store
            .install_copy(
                registers.into_iter().collect(),
                fences.into_iter().map(|(member, incarnation)| Voter { member, incarnation }).collect(),
            )
            .await?;
        return Ok(Attempt::Copied { from: caught_up.iter().map(|s| s.to_string()).collect(), registers: n });
    }

    // Nobody holds a value: nothing was ever chosen (outside members that lost their data too),
    // so starting empty is the state of an acceptor that never voted.
    let everyone_answered = dumps.len() == others.len();
    let nothing_written = dumps.iter().all(|(_, s)| s.registers.iter().all(|(_, r)| r.value.is_none()));
    if everyone_answered && nothing_written && fenced.len() == others.len() {
        store.install_copy(Vec::new(), Vec::new()).await?;
        return Ok(Attempt::Bootstrapped);
    }
    Ok(Attempt::Waiting(describe(
        &format!(
            "{} caught-up peer(s) answered ({}), not enough to cover every write quorum",
            caught_up.len(),
            caught_up.join(", ")
        ),
        &answers,
    )))
}

/// One peer's answers to a catch-up attempt: fence and dump.
type Answer<'a, E, T> = (&'a str, Result<(), E>, Result<T, E>);

fn describe<E: std::fmt::Display, T>(what: &str, answers: &[Answer<'_, E, T>]) -> String {
    let failures: Vec<String> = answers
        .iter()
        .filter_map(|(id, f, d)| match (f, d) {
            (Err(e), _) | (_, Err(e)) => Some(format!("{id}: {e}")),
            _ => None,
        })
        .collect();
    if failures.is_empty() {
        what.to_string()
    } else {
        format!("{what}; {}", failures.join("; "))
    }
}
