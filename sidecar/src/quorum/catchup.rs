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
//! was ever chosen, so an empty state is that of an acceptor that never voted. If more members
//! lost their data than the quorums tolerate, the member keeps waiting and says why: it never
//! invents state.
//!
//! # Copying in pages while rounds go on
//!
//! The copy never holds a keyspace in memory: each source is walked in key order, one page of
//! at most `page` registers at a time ([`fetch_page`], [`Page`]), with up to
//! [`VISITS_IN_FLIGHT`] pages being merged into the store while the next is fetched (merges
//! queued together share a commit). Every page is read from one commit of its source,
//! at its own moment, while proposers keep running rounds. The argument above still holds,
//! because it is an argument about each register alone (CASPaxos registers are independent
//! instances), and for each register `k` and source `c` the walk yields exactly one state:
//!
//! - **No key is skipped.** [`Page::check`] makes a walk's pages cover consecutive,
//!   non-overlapping key intervals: keys strictly increase after the cursor, the cursor moves
//!   to the page's last key, and only a page that reaches the end of the keyspace ends the walk.
//!   So `k` falls in exactly one page, read at one moment `t(c,k)`; if `k` is absent from it,
//!   `c` had accepted nothing for `k` at `t(c,k)`, and the empty state is its true state.
//! - **Every value chosen before the copy is copied.** Each source's walk starts after the
//!   source acknowledged the fence (only fenced peers are sources). A value of `k` chosen at
//!   ballot `b` before the walks read `k` was accepted by a write quorum `Q`; `Q` meets the
//!   sources, and a source `c` in `Q` had accepted `b` (or higher: accepted ballots only grow)
//!   by `t(c,k)`. The merge keeps the highest accepted ballot, so the copy of `k` holds `b` or
//!   a later ballot.
//! - **Values chosen during or after the copy need nothing from it.** This member refuses every
//!   Prepare and Accept until the copy is complete, so such a value was accepted by a write
//!   quorum without it; once it votes, it is an acceptor that missed those accepts, which Paxos
//!   tolerates. Registers created behind a walk's cursor are of this kind, as are rounds that
//!   change `k` between `t(c,k)` and `t(c',k)` of two sources.
//! - **A source that changes mid-walk does not count.** Every page carries the source's
//!   incarnation and `caught_up`; a walk whose source changed either (it lost its data and
//!   restarted) is abandoned, and coverage is checked over the sources whose walks completed.
//!   Pages carry the attempt's epoch and peers refuse other epochs, so every page comes from a
//!   member of the configuration the coverage is checked against.
//! - **Partial copies never vote.** Pages are merged durably ([`RegisterStore::install_page`])
//!   but the store keeps refusing to vote until [`RegisterStore::finish_copy`] commits
//!   `caught_up` after the last page of every counted source. After a crash in between, the
//!   next attempt fences and copies again into the partial state; merging is monotone and every
//!   merged state is one a caught-up member really accepted, so the result is what a single
//!   copy would give, or later.
//!
//! Shown by `sidecar/tests/catchup_sim.rs::paged_catch_up_of_20k_registers_under_load_copies_every_acknowledged_value`:
//! 20k registers copied in pages of 25 while rounds change and create registers, the copy
//! checked register by register against what was acknowledged before it, then read back
//! through quorums of copied members only (both checks fail when a page is skipped).
//!
//! # A round that counted the lost incarnation's *accept*
//!
//! Fencing refuses rounds that counted an old incarnation's *promise*. A round whose prepare
//! quorum did not include this member, but whose accept this member's old incarnation took
//! before the wipe, could complete after the copy: another member of its write quorum receives
//! the accept only after the walk read that register, and neither the copy nor any later read
//! quorum through this member would see the value. Proposers close this window: every accept
//! reply carries the replier's fences, and a round does not count a reply from an incarnation
//! that another reply's fence says was replaced (`round.rs`, "Lost data", with the argument: one
//! of the copy's sources is in every such quorum, and it either accepted before its walk read the
//! register, so the copy has the value, or after its fence, so its reply discounts the old
//! incarnation). Shown by `sidecar/tests/catchup_sim.rs::an_accept_of_the_lost_incarnation_counted_after_the_copy_is_not_lost`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;

use super::acceptor::{RegisterState, Voter};
use super::store::{Page, RegisterStore, StoreError};
use super::transport::{fetch_page, PeerError, Peers};
use crate::membership::{Member, MembersFile};

/// How long one page request waits for a peer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts.
const RETRY_EVERY: Duration = Duration::from_millis(300);
/// Pages a walk hands on before it waits for the oldest to be processed (installs queued
/// together share a commit).
const VISITS_IN_FLIGHT: usize = 8;
/// Registers per page copied from a peer.
pub const PAGE: usize = 2048;

/// What one catch-up attempt decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Copied from caught-up peers.
    Copied {
        /// Peers copied from.
        from: Vec<String>,
        /// Registers the store holds after the copy.
        registers: u64,
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
        match attempt(&me, &store, peers.as_ref(), &cfg, PAGE).await {
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

/// One peer's answers to the start of an attempt: its fence and its first page.
type Answer<'a> = (&'a Member, Result<(), PeerError>, Result<Page, PeerError>);

/// One attempt: fence, then copy in pages of `page` registers (or bootstrap) if the answers
/// allow it.
pub async fn attempt<P: Peers>(
    me: &str,
    store: &RegisterStore,
    peers: &P,
    cfg: &MembersFile,
    page: usize,
) -> Result<Attempt, StoreError> {
    let incarnation = store.meta().incarnation;
    let others: Vec<&Member> = cfg.all_members().into_iter().filter(|m| m.id != me).collect();
    let answers: Vec<Answer<'_>> = join_all(others.iter().map(|m| async move {
        let fenced = peers.fence(m, cfg.epoch, me, incarnation, ATTEMPT_TIMEOUT).await;
        // The first page is asked only after the fence answered: a source's walk starts after it.
        let first = match &fenced {
            Ok(()) => fetch_page(peers, m, cfg.epoch, None, page, ATTEMPT_TIMEOUT).await,
            Err(e) => Err(e.clone()),
        };
        (*m, fenced, first)
    }))
    .await;

    let fenced: Vec<&str> = answers.iter().filter(|(_, f, _)| f.is_ok()).map(|(m, _, _)| m.id.as_str()).collect();
    let fence_enough = cfg
        .quorum_sets()
        .iter()
        .filter(|s| s.contains(me))
        .all(|s| fenced.iter().filter(|id| s.contains(id)).count() + s.write_quorum() >= s.len());
    if !fence_enough {
        return Ok(Attempt::Waiting(describe("could not fence the old incarnation on enough peers", &answers)));
    }
    let sources: Vec<(&Member, &Page)> = answers
        .iter()
        .filter_map(|(m, _, first)| first.as_ref().ok().filter(|p| p.caught_up).map(|p| (*m, p)))
        .collect();
    let source_ids: Vec<&str> = sources.iter().map(|(m, _)| m.id.as_str()).collect();

    if cfg.covers_write_quorums(source_ids.iter().copied()) {
        let walks = join_all(sources.iter().map(|(m, first)| {
            walk(peers, m, cfg.epoch, (*first).clone(), page, |registers| {
                let installed = store.install_page(registers);
                async move { installed.await.map(|()| true).map_err(|e| format!("installing a page: {e}")) }
            })
        }))
        .await;
        let mut copied = Vec::new();
        let mut failures = Vec::new();
        let mut fences: HashMap<String, u64> = HashMap::new();
        for ((m, _), walked) in sources.iter().zip(walks) {
            match walked {
                Ok(last) => {
                    copied.push(m.id.as_str());
                    for f in last {
                        let e = fences.entry(f.member).or_insert(f.incarnation);
                        *e = (*e).max(f.incarnation);
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", m.id)),
            }
        }
        if !cfg.covers_write_quorums(copied.iter().copied()) {
            return Ok(Attempt::Waiting(format!(
                "copied every page from {} peer(s) ({}), not enough to cover every write quorum; {}",
                copied.len(),
                copied.join(", "),
                failures.join("; ")
            )));
        }
        // A member's own word on its incarnation beats what others last heard (incarnations are
        // random, so the highest is not the newest).
        for (m, _, first) in &answers {
            if let Ok(p) = first {
                fences.insert(m.id.clone(), p.incarnation);
            }
        }
        store
            .finish_copy(fences.into_iter().map(|(member, incarnation)| Voter { member, incarnation }).collect())
            .await?;
        let registers = store.register_count().await?;
        return Ok(Attempt::Copied { from: copied.iter().map(|s| s.to_string()).collect(), registers });
    }

    // Nobody holds a value: nothing was ever chosen (outside members that lost their data too),
    // so starting empty is the state of an acceptor that never voted.
    let everyone_answered = answers.iter().all(|(_, f, first)| f.is_ok() && first.is_ok());
    if everyone_answered {
        let scans = join_all(answers.iter().filter_map(|(m, _, first)| first.as_ref().ok().map(|p| (*m, p))).map(
            |(m, first)| async move {
                let mut written = false;
                let w = &mut written;
                walk(peers, m, cfg.epoch, first.clone(), page, |registers| {
                    *w |= registers.iter().any(|(_, r)| r.value.is_some());
                    let more = !*w;
                    async move { Ok(more) }
                })
                .await
                .map(|_| written)
            },
        ))
        .await;
        if scans.iter().all(|s| s == &Ok(false)) {
            store.finish_copy(Vec::new()).await?;
            return Ok(Attempt::Bootstrapped);
        }
    }
    Ok(Attempt::Waiting(describe(
        &format!(
            "{} caught-up peer(s) answered ({}), not enough to cover every write quorum",
            source_ids.len(),
            source_ids.join(", ")
        ),
        &answers,
    )))
}

/// Walks `from`'s registers from its `first` page on, handing each page's registers to `visit`
/// (which starts its work when called and returns a future of it: up to [`VISITS_IN_FLIGHT`]
/// run while later pages are fetched), until the end of the keyspace or until a visit says stop
/// (`Ok(false)`). Returns once every visit finished, with the fences of the last page read;
/// fails when the source's incarnation or `caught_up` changes between pages.
async fn walk<P, F, Fut>(
    peers: &P,
    from: &Member,
    epoch: u64,
    first: Page,
    limit: usize,
    mut visit: F,
) -> Result<Vec<Voter>, String>
where
    P: Peers,
    F: FnMut(Vec<(String, RegisterState)>) -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let (incarnation, caught_up) = (first.incarnation, first.caught_up);
    let mut visits = VecDeque::new();
    let mut page = first;
    loop {
        if (page.incarnation, page.caught_up) != (incarnation, caught_up) {
            return Err(format!(
                "changed during the walk (incarnation {incarnation} -> {}, caught up {caught_up} -> {})",
                page.incarnation, page.caught_up
            ));
        }
        visits.push_back(visit(std::mem::take(&mut page.registers)));
        let last = page.next.is_none();
        while visits.len() >= VISITS_IN_FLIGHT || (last && !visits.is_empty()) {
            if let Some(v) = visits.pop_front() {
                if !v.await? {
                    return Ok(page.fences);
                }
            }
        }
        match page.next.take() {
            None => return Ok(page.fences),
            Some(after) => {
                page = fetch_page(peers, from, epoch, Some(&after), limit, ATTEMPT_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    }
}

fn describe(what: &str, answers: &[Answer<'_>]) -> String {
    let failures: Vec<String> = answers
        .iter()
        .filter_map(|(m, f, d)| match (f, d) {
            (Err(e), _) | (_, Err(e)) => Some(format!("{}: {e}", m.id)),
            _ => None,
        })
        .collect();
    if failures.is_empty() {
        what.to_string()
    } else {
        format!("{what}; {}", failures.join("; "))
    }
}
