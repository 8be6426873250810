//! Moving a stream's replicas: off members that leave the cluster (on its own), or to any
//! replicas an operator names (`MoveStream`, `ordoctl log move`; same protocol).
//!
//! A stream's replicas are chosen when it is created. When the SeqCluster's membership changes,
//! a member that leaves may hold replicas of streams; once it is gone, those streams would run
//! with fewer replicas, and a stream that lost `AQ` replicas could never commit or recover
//! again. So during the joint epoch of a membership change (while the leaving members still
//! run), every stream with a replica outside the new member set moves to a new set before the
//! epoch counts as migrated (a [`crate::node::MigrationStep`]); the operator removes the
//! leaving members only after that.
//!
//! # The move
//!
//! Which streams: every member of the new set takes the streams whose metadata key's home (the
//! quorum store's routing hash) is itself, so every stream has one mover and the change to the
//! new set alone waits for all of them. The new set ([`target_replicas`]) keeps every replica
//! that stays and fills the rest in placement order.
//!
//! How: the stream's primary `P` of epoch `E` (a replica of the old set `S`; the mover asks the
//! named primary, then the other replicas, which take over first when no primary runs) does:
//! 1. starts replicating to the added replicas (their answers do not count toward the ack
//!    quorum); a replica without the stream rebuilds it from `P`'s log, from the trim point;
//! 2. once they hold the log through the commit point, refuses new appends (with a retryable
//!    error) and waits until every assigned entry is committed under `E` and at least `AQ`
//!    replicas of the new set `S'` hold all of them durably;
//! 3. writes the epoch register by compare-and-set from version `E`: the new primary (itself
//!    when it is in `S'`) and `S'`. On success it steps down; the named primary takes over
//!    with a new epoch, sealing `S'` and recovering as every takeover does.
//!
//! # Why nothing acknowledged is lost, and no two primaries commit
//!
//! - Every entry acknowledged before the move is in `P`'s log (`P` recovered it at `E`) and at
//!   step 3 is held by `AQ` replicas of `S'`, so any `RF - AQ + 1` of them that a later
//!   recovery seals include one holder (`RF - AQ + 1 + AQ > RF`); rebuilding replicas do not
//!   change this, since only complete ones count toward the `RF - AQ + 1` and each such set
//!   still meets the holders.
//! - No entry is acknowledged between step 2's check and the register write: `P` takes no
//!   appends, and every epoch below `E` was sealed out of `S` by `P`'s recovery.
//! - The register write succeeds only if version `E` is still current: a takeover that read
//!   the old set wrote a version above `E` first, and then the move fails and `P` steps down
//!   (the takeover sealed `S` at its epoch). A takeover after the write reads `S'` from the
//!   version it replaces and seals `S'`; the replicas travel with every later takeover. Old
//!   replicas outside `S'` are never sealed or written again, so whatever they hold no longer
//!   matters.
//!
//! Tests: `e2e/tests/log.rs::streams_move_off_members_that_leave_while_appending` (a stream on
//! both leaving members of 5 -> 3, the checker over every acknowledged append, then every
//! leaving member killed: the stream goes on with all its entries; verified to fail when the
//! move is skipped), `e2e/tests/log.rs::a_stream_moves_onto_members_that_joined_through_ordoctl`
//! (an appender across a move by hand, then the replicas left are killed; verified to fail
//! when the new replicas are not copied to), `log::primary::tests::replicas_a_move_adds_catch_up_but_do_not_count_toward_the_ack_quorum`,
//! and `tests::the_new_set_keeps_staying_replicas_and_fills_in_placement_order`.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;

use super::{placement, register_error, EpochValue, LogRouter, RemotePrimaries, Route};
use crate::log::primary::{LogPeers, Primary};
use crate::log::{epoch_key, meta_key, LogError};
use crate::membership::MembersFile;
use crate::node::MigrationStep;
use crate::quorum::register::Written;
use crate::quorum::route::home_for;
use crate::quorum::transport::Peers;

/// How many commit timeouts the added replicas get to catch up, per attempt (a failed attempt
/// keeps them replicating, so the next one goes on from there).
const CATCH_UP_TIMEOUTS: u32 = 4;

/// The replicas a stream on `current` moves to when only `members` remain: every replica that
/// stays, in order, then the others in placement order, `rf` in all (fewer when there are not
/// that many members).
pub fn target_replicas(stream: &str, current: &[String], members: &[String], rf: usize) -> Vec<String> {
    let mut target: Vec<String> = current.iter().filter(|r| members.contains(r)).take(rf).cloned().collect();
    for m in placement::replicas(stream, members, members.len()) {
        if target.len() >= rf {
            break;
        }
        if !target.contains(&m) {
            target.push(m);
        }
    }
    target
}

impl<P: Peers, L: LogPeers + RemotePrimaries> LogRouter<P, L> {
    /// Moves every stream this member is the mover of (see the module docs) off members outside
    /// `cfg`'s current set. Returns how many streams moved.
    pub async fn relocate_all(self: &Arc<Self>, cfg: &MembersFile) -> Result<usize, String> {
        let members: Vec<String> = cfg.current.members.iter().map(|m| m.id.clone()).collect();
        let mut sorted = members.clone();
        sorted.sort();
        let mut moved = 0;
        let mut failed = Vec::new();
        for stream in self.list().await.map_err(|e| format!("listing streams: {e}"))? {
            if home_for(&meta_key(&stream), cfg, &sorted).is_none_or(|h| h.id != self.node.id) {
                continue;
            }
            match self.relocate(&stream, &members).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => failed.push(format!("{stream}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(moved)
        } else {
            Err(format!("{} streams not moved yet: {}", failed.len(), failed.join("; ")))
        }
    }

    /// Moves `stream` off replicas outside `members`, through its primary; false when all its
    /// replicas are members already.
    pub async fn relocate(self: &Arc<Self>, stream: &str, members: &[String]) -> Result<bool, LogError> {
        let (meta, _, replicas) = self.current_replicas(stream).await?;
        if replicas.iter().all(|r| members.contains(r)) {
            return Ok(false);
        }
        let rf = meta.replication_factor as usize;
        if rf > members.len() {
            return Err(LogError::Invalid(format!(
                "stream {stream} has replication factor {rf} but the new configuration has {} members: \
                 it cannot move (delete it, or keep at least {rf} members)",
                members.len()
            )));
        }
        let target = target_replicas(stream, &replicas, members, rf);
        self.move_to(stream, &target).await.map(|()| true)
    }

    /// Moves `stream` to the replicas `target` (an app's `MoveStream`): through its primary, or
    /// a replica of its current set that takes over when none runs. Returns at once when the
    /// stream lives on `target` already.
    pub async fn move_to(self: &Arc<Self>, stream: &str, target: &[String]) -> Result<(), LogError> {
        let (meta, value, replicas) = self.current_replicas(stream).await?;
        check_target(stream, target, meta.replication_factor, &self.node.config())?;
        if replicas == target {
            return Ok(());
        }
        // The named primary first, then the other replicas (one takes over when none runs).
        let mut candidates: Vec<String> =
            value.map(|v| v.primary).into_iter().filter(|p| replicas.contains(p)).collect();
        candidates.extend(replicas.iter().filter(|r| !candidates.contains(r)).cloned().collect::<Vec<_>>());
        let mut errors = Vec::new();
        for c in candidates {
            let r = if c == self.node.id {
                self.move_local(stream, target).await
            } else {
                self.peers.primary_move(&c, stream, target).await
            };
            match r {
                Ok(()) => {
                    tracing::info!(stream, from = ?replicas, to = ?target, by = %c, "stream moved its replicas");
                    return Ok(());
                }
                Err(e @ LogError::Invalid(_)) => return Err(e),
                Err(e) => errors.push(format!("{c}: {e}")),
            }
        }
        Err(LogError::Unavailable(format!("no replica of {replicas:?} moved it: {}", errors.join("; "))))
    }

    /// Moves `stream` to `target` as its primary (taking over first when no primary runs and
    /// this member is a replica); see the module docs.
    pub async fn move_local(self: &Arc<Self>, stream: &str, target: &[String]) -> Result<(), LogError> {
        let meta = self.meta(stream, false).await?;
        check_target(stream, target, meta.replication_factor, &self.node.config())?;
        let slot = self.slot(stream);
        let _moving = slot.moving.lock().await;
        let p = match self.route(stream, &slot, false).await? {
            Route::Local(p) => p,
            Route::Remote(to) => {
                return Err(LogError::Unavailable(format!(
                    "{} is not the primary of stream {stream}; {to} is",
                    self.node.id
                )))
            }
        };
        if p.replicas() == target {
            return Ok(());
        }
        let added: Vec<String> = target.iter().filter(|t| !p.replicas().contains(t)).cloned().collect();
        p.add_replicas(&added);
        let held = |p: &Primary, who: &String| p.matched().iter().find(|(r, _)| r == who).map_or(0, |(_, m)| *m);
        let timeout = self.settings.timeout;
        let since = p.commit();
        let caught_up = p.wait_until(timeout * CATCH_UP_TIMEOUTS, |p| added.iter().all(|a| held(p, a) >= since)).await;
        if !caught_up {
            let lag: Vec<String> = added.iter().map(|a| format!("{a} at {} of {since}", held(&p, a))).collect();
            return Err(LogError::Unavailable(format!("stream {stream}: the new replicas are catching up ({lag:?})")));
        }
        p.pause(Some(format!("stream {stream} is moving its replicas to {target:?}; retry")));
        let aq = p.ack_quorum();
        let quiet = p
            .wait_until(timeout, |p| {
                let last = p.last();
                p.commit() >= last && target.iter().filter(|t| held(p, t) >= last).count() >= aq
            })
            .await;
        if !quiet {
            p.pause(None);
            return Err(LogError::Unavailable(format!(
                "stream {stream}: {aq} of {target:?} did not hold the whole log within {} ms",
                timeout.as_millis()
            )));
        }
        // A membership change that began during the catch-up may have taken a target member out
        // (a rebalance planned before it): then the move is abandoned and planned again.
        if let Err(e) = check_target(stream, target, meta.replication_factor, &self.node.config()) {
            p.pause(None);
            return Err(LogError::Unavailable(format!("the membership changed during the move: {e}")));
        }
        let me = self.node.id.clone();
        let primary = if target.contains(&me) { me.clone() } else { target[0].clone() };
        let value = EpochValue { primary, replicas: Some(target.to_vec()) }.encode();
        let written = self.registers.compare_and_set(&epoch_key(stream), p.epoch, value).await;
        match written {
            Ok(Written::Applied { version }) => {
                self.node.metrics.log.moves.inc();
                p.step_down(format!("stream {stream} moved to {target:?} at epoch {version}"));
                *slot.route.lock().await = None;
                if target.contains(&me) {
                    // Serve it again now rather than at the next request.
                    if let Err(e) = self.route(stream, &slot, false).await {
                        tracing::warn!(stream, error = %e, "could not take over the moved stream yet");
                    }
                }
                Ok(())
            }
            Ok(Written::Conflict { .. }) => {
                p.step_down(format!("stream {stream}: another primary took over during a move"));
                Err(LogError::Unavailable(format!("stream {stream}: another primary took over during the move")))
            }
            Err(e) => {
                // Outcome unknown: the write may have landed. Stepping down is safe either way
                // (a later takeover reads whichever replicas the register holds).
                p.step_down(format!("stream {stream}: the move's register write has an unknown outcome"));
                Err(register_error(e))
            }
        }
    }
}

/// Checks new replicas: `rf` distinct members of `cfg`'s current set.
fn check_target(stream: &str, target: &[String], rf: u32, cfg: &MembersFile) -> Result<(), LogError> {
    let distinct: std::collections::BTreeSet<&String> = target.iter().collect();
    let unknown: Vec<&String> = target.iter().filter(|t| !cfg.current.members.iter().any(|m| &m.id == *t)).collect();
    if target.len() != rf as usize || distinct.len() != target.len() || !unknown.is_empty() {
        return Err(LogError::Invalid(format!(
            "cannot move stream {stream} to {target:?}: it needs {rf} distinct members of the current configuration{}",
            if unknown.is_empty() { String::new() } else { format!(" ({unknown:?} are not members)") }
        )));
    }
    Ok(())
}

/// The joint-epoch step that moves streams off leaving members.
pub struct LogMoves<P: Peers, L: LogPeers + RemotePrimaries>(pub Weak<LogRouter<P, L>>);

impl<P: Peers, L: LogPeers + RemotePrimaries> MigrationStep for LogMoves<P, L> {
    fn name(&self) -> &'static str {
        "log streams"
    }

    fn run<'a>(&'a self, cfg: &'a MembersFile) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let Some(router) = self.0.upgrade() else { return Ok("no log router".into()) };
            router.relocate_all(cfg).await.map(|n| format!("{n} streams moved their replicas"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_new_set_keeps_staying_replicas_and_fills_in_placement_order() {
        let members = ids(&["m0", "m1", "m2"]);
        // Two of three leave: the one that stays comes first, then the others by placement.
        let t = target_replicas("s", &ids(&["m4", "m1", "m3"]), &members, 3);
        assert_eq!(t[0], "m1");
        assert_eq!(t.len(), 3);
        let mut sorted = t.clone();
        sorted.sort();
        assert_eq!(sorted, members);
        // All stay: nothing changes.
        assert_eq!(target_replicas("s", &ids(&["m2", "m0"]), &members, 2), ids(&["m2", "m0"]));
        // None stays: placement order among the members.
        let none = target_replicas("s", &ids(&["m7", "m8"]), &members, 2);
        assert_eq!(none, placement::replicas("s", &members, 3)[..2].to_vec());
        // Deterministic.
        assert_eq!(target_replicas("s", &ids(&["m4", "m1", "m3"]), &members, 3), t);
    }
}
