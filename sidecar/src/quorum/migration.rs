//! Migration of every register to the new configuration during a joint epoch.
//!
//! In a joint epoch every quorum is a quorum of the previous *and* the current member set, so
//! it intersects every quorum of either. Rewriting each register once through such a quorum
//! (an identity change at a new ballot) leaves it accepted by a write quorum of the current
//! set, so once every register is migrated, quorums of the current set alone see every value
//! and the next epoch may drop the previous set.
//!
//! **Listing.** Keys are listed from a read quorum (in both sets) of caught-up members already
//! at this epoch: those refuse rounds of older epochs, so a value chosen by an older
//! configuration was accepted by a write quorum of it before its members moved on, and that
//! write quorum meets the listing quorum. The listing walks the keyspace in pages, all listed
//! members in lockstep: each step asks every member for the page after the cursor, merges the
//! keys up to the smallest page end (so every key up to there was listed by every member that
//! answered the step) and moves the cursor there. A member that fails a step leaves the
//! listing for good; the listing fails when those left are no longer a read quorum, so every
//! key interval was listed by the same read quorum. [`crate::quorum::store::Page::check`] makes the
//! intervals consecutive, so no key is skipped, whatever rounds run meanwhile: a key missing
//! behind the cursor was created at this epoch, through joint quorums already.
//!
//! **Shares.** The change to the current set alone waits until *every* member of the current
//! set reports this epoch migrated ([`crate::membership`]). So each member rewrites only its
//! share: the keys whose home among all current members (the same hash the proposer routes
//! by) is itself. The shares cover the keyspace, so once every member reported, every register
//! was rewritten; a member of the previous set only has no share. Rewrites run
//! [`IN_FLIGHT`] at a time, so group commit batches them.
//!
//! **Memory.** A migration holds one listing step (a page from each listing member) and
//! [`IN_FLIGHT`] rounds, whatever the number of registers; a failed attempt resumes from
//! [`Progress`]. The proposer keeps a register's worker (about 5 KB) for 30 s after its last
//! round only while it has at most [`super::proposer::WORKERS_CROWDED`] of them; above that,
//! idle workers retire after 250 ms, so a member rewriting `r` registers/s holds about
//! `1024 + r / 4` of them (`quorum_sim.rs::workers_of_a_pass_over_many_registers_retire_quickly`).
//!
//! Shown by `e2e/tests/sequencer.rs::membership_change_3_to_5_to_3_keeps_ids_unique` and
//! `sidecar/tests/catchup_sim.rs::migration_rewrites_every_register_of_a_paged_listing`
//! (fails when a page is skipped).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::proposer::{Change, ChangeError, Proposer};
use super::route::home_for;
use super::transport::{fetch_page, Peers};
use crate::membership::{Member, MembersFile};

/// Deadline of one identity round, and of one listing page.
const ROUND_DEADLINE: Duration = Duration::from_secs(5);
/// Registers listed per page from each member.
pub const PAGE: usize = 2048;
/// Identity rounds in flight at once.
pub const IN_FLIGHT: usize = 64;
/// Tries of one register's rewrite.
const REWRITE_TRIES: u32 = 5;
/// Pause after a failed rewrite, times the number of tries so far.
const REWRITE_PAUSE: Duration = Duration::from_millis(100);

/// Where this member's migration of one joint epoch stands; kept across failed attempts of
/// the same epoch, so that a retry resumes instead of starting over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every register of this member's share up to this key was rewritten (`None`: none yet).
    pub done_through: Option<String>,
    /// Registers rewritten so far.
    pub rewritten: usize,
}

/// Lists the registers of the joint configuration after `progress.done_through` and rewrites
/// this member's share through joint quorums, listing `page` keys per step; `progress` follows
/// along. Returns how many registers this epoch's migration rewrote in all.
///
/// Resuming is sound because the argument above is about each key alone: the keys up to
/// `done_through` were listed by a read quorum and rewritten at this epoch, and the rest are
/// listed now, by the read quorum answering this attempt.
pub async fn migrate<P: Peers>(
    me: &str,
    proposer: &Proposer<P>,
    peers: &P,
    cfg: &Arc<MembersFile>,
    page: usize,
    progress: &mut Progress,
) -> Result<usize, String> {
    let everyone: Vec<String> = {
        let mut ids: Vec<String> = cfg.current.members.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        ids
    };
    let mine = |key: &String| home_for(key, cfg, &everyone).is_some_and(|m| m.id == me);
    let cursor = progress.done_through.clone();
    let mut listing = Listing { peers, cfg, members: cfg.all_members(), cursor, page };
    // Listed steps not yet fully rewritten, oldest first: (end of the step, rewrites left).
    let mut steps: VecDeque<(Option<String>, usize)> = VecDeque::new();
    let mut first_step = 0usize;
    let (mut listed_all, mut queue, mut rounds) = (false, VecDeque::new(), FuturesUnordered::new());
    loop {
        // List only as far ahead of the rewrites as keeps them busy (memory stays bounded).
        while !listed_all && queue.len() < IN_FLIGHT {
            let (keys, end) = listing.step().await?;
            let step = first_step + steps.len();
            let before = queue.len();
            queue.extend(keys.into_iter().filter(&mine).map(|k| (k, step)));
            listed_all = end.is_none();
            steps.push_back((end, queue.len() - before));
        }
        while rounds.len() < IN_FLIGHT {
            let Some((key, step)) = queue.pop_front() else { break };
            rounds.push(async move { rewrite(proposer, key).await.map(|()| step) });
        }
        if let Some(done) = rounds.next().await {
            let step = done?;
            progress.rewritten += 1;
            if let Some((_, left)) = steps.get_mut(step - first_step) {
                *left -= 1;
            }
        }
        // The longest prefix of fully rewritten steps is done for good.
        while steps.front().is_some_and(|(_, left)| *left == 0) {
            if let Some((Some(end), _)) = steps.pop_front() {
                progress.done_through = Some(end);
            }
            first_step += 1;
        }
        if listed_all && steps.is_empty() {
            return Ok(progress.rewritten);
        }
    }
}

/// Rewrites one register through a round, retrying a round that found no quorum a few times
/// (a long migration should not start over for one lost message).
async fn rewrite<P: Peers>(proposer: &Proposer<P>, key: String) -> Result<(), String> {
    let mut tries = 0;
    loop {
        tries += 1;
        match proposer.change(&key, Change::Read, Instant::now() + ROUND_DEADLINE).await {
            Ok(_) => return Ok(()),
            Err(ChangeError::Unavailable { .. } | ChangeError::OutcomeUnknown { .. }) if tries < REWRITE_TRIES => {
                tokio::time::sleep(REWRITE_PAUSE * tries).await;
            }
            Err(e) => return Err(format!("rewriting register {key}: {e}")),
        }
    }
}

/// The lockstep walk over the keyspaces of the members that list.
struct Listing<'a, P> {
    peers: &'a P,
    cfg: &'a MembersFile,
    /// Members that answered every step so far.
    members: Vec<&'a Member>,
    cursor: Option<String>,
    page: usize,
}

impl<P: Peers> Listing<'_, P> {
    /// The next step: the keys holding a value up to the smallest page end, and that end
    /// (`None` when the listing reached the end of every keyspace).
    async fn step(&mut self) -> Result<(Vec<String>, Option<String>), String> {
        let (peers, cfg, page, after) = (self.peers, self.cfg, self.page, self.cursor.as_deref());
        let pages = join_all(
            self.members
                .iter()
                .map(|m| async move { (*m, fetch_page(peers, m, cfg.epoch, after, page, ROUND_DEADLINE).await) }),
        )
        .await;
        let mut errors = Vec::new();
        let mut answered = Vec::new();
        for (m, p) in pages {
            match p {
                Ok(p) if p.caught_up => answered.push((m, p)),
                Ok(_) => errors.push(format!("{}: catching up", m.id)),
                Err(e) => errors.push(format!("{}: {e}", m.id)),
            }
        }
        self.members = answered.iter().map(|(m, _)| *m).collect();
        if !cfg.is_read_quorum(self.members.iter().map(|m| m.id.as_str())) {
            return Err(format!(
                "only {} caught-up member(s) at epoch {} answered every page of the listing ({}); {}",
                self.members.len(),
                cfg.epoch,
                self.members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", "),
                errors.join("; ")
            ));
        }
        // Every member listed the keys up to the smallest page end (a last page ends nowhere).
        let end: Option<String> = answered.iter().filter_map(|(_, p)| p.next.clone()).min();
        let keys: BTreeSet<String> = answered
            .into_iter()
            .flat_map(|(_, p)| p.registers)
            .filter(|(k, r)| r.value.is_some() && end.as_ref().is_none_or(|e| k <= e))
            .map(|(k, _)| k)
            .collect();
        self.cursor.clone_from(&end);
        Ok((keys.into_iter().collect(), end))
    }
}
