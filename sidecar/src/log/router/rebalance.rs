//! Spreading existing streams over the members after a membership change: members that join
//! take replicas of streams created before them, so that a cluster scaled from 3 to 5 members
//! shares the load of its existing streams.
//!
//! # What moves
//!
//! [`plan_rebalance`] counts the replicas each member of the configuration holds and moves the
//! fewest replicas that bring every member's count to `q` or `q + 1`, where `q` is the total
//! divided by the member count (so within one of the mean): the `total mod n` members that
//! hold the most keep `q + 1` at most, the others `q`, and each member above its share gives
//! one replica at a time to one below its share (a member above holds more streams than one
//! below, so a stream on the first and not on the second always exists). That is
//! `sum(max(0, count - share))` moves, the least any balanced result needs; a cluster already
//! balanced moves nothing. Among the streams that could move, one whose placement under the
//! new membership ([`crate::log::placement`]) wants the receiving member and not the giving one
//! goes first, then by name. The moved replica takes the place of the one it replaces (so a
//! stream's preferred primary changes only when that one moves). The plan is a pure function
//! of the replica sets and the members, so every sidecar that reads the same registers plans
//! the same moves.
//!
//! # When, by whom, and how fast
//!
//! A pass runs when the sidecar starts and after every configuration change, on a plain (not
//! joint) configuration only: during the joint epoch the streams move off leaving members
//! (`relocate`), which the change waits for; the rebalance never delays a change. A pass
//! reads every stream's replicas, plans, and runs the moves, at most
//! `--streams-rebalance-moves` streams at once (default 2; 0 switches the rebalance off), each
//! through the stream's primary with the safe move of `relocate` (the new replicas rebuild
//! from the primary's log and count only once they hold it; the switch is a compare-and-set
//! of the epoch register from the primary's epoch). Passes repeat, a second apart, until one
//! finds nothing to move; a failed move is planned again by the next pass, the wait doubling
//! while passes keep failing (up to 30 s).
//!
//! The **driver** is the member of the configuration with the lowest id, and it runs a pass
//! only while it sees every member up (a move onto a member that is down cannot finish; the
//! rebalance waits for the cluster to be whole, it does not repair a lost member). Every
//! sidecar with the same configuration names the same driver, so one member drives. Two
//! sidecars can both believe they drive only while their configurations differ (one has not
//! loaded the new members file yet), and that is safe: both plan from the registers, every
//! move is the same compare-and-set from the primary's epoch (of two moves of one stream from
//! one epoch, one applies and the other fails and steps its primary down), and the moves of
//! one primary run one at a time (its stream's move lock), so no move runs its catch-up and
//! quiet check against another's un-paused appends. Since both plan the same function of the
//! same state, they agree on the targets rather than undo each other.
//!
//! A membership change can begin while a move runs. The move checks its target against the
//! configuration again right before its compare-and-set and gives up when a target member is
//! leaving. A move whose write still lands after the joint epoch's relocation looked at the
//! stream (the write was already under way) leaves one replica on a leaving member; the next
//! pass, on the plain configuration that follows, moves it off (the plan first gives every
//! stream with a replica outside the members the target `relocate` would have chosen). Until
//! then the stream has `RF - 1` live replicas, which keeps every acknowledged entry when
//! `AQ >= 2` (at the write, `AQ` replicas of the target held every entry, so at least `AQ - 1`
//! live ones do, and any `RF - AQ + 1` of the live ones include one of them); a stream with
//! `AQ = 1` waits for the member that left.
//!
//! # Why nothing acknowledged is lost, nothing duplicated, LSNs stay dense
//!
//! A rebalance adds no protocol: each move is the `relocate` move, whose argument holds for any
//! target of `rf` members of the current configuration (at the compare-and-set, `AQ` replicas
//! of the new set hold every entry ever acknowledged, and no entry is acknowledged between the
//! check and the write). Appends during a move get a retryable error and are retried
//! idempotently by the appender; LSNs are assigned by the one primary of the highest epoch.
//!
//! Tests: `tests` below (minimal, balanced, deterministic, nothing when balanced) and
//! `e2e/tests/log.rs::membership_3_to_5_to_3_while_appending_loses_and_duplicates_nothing`
//! (three streams appended to while the cluster grows to 5: the new members get replicas, all
//! members within one of the mean, then back to 3; the checker over every acknowledged append
//! and read; verified to fail, with counts `[3, 3, 3, 0, 0]`, when the rebalance is switched
//! off) and `e2e/tests/log.rs::two_moves_of_one_stream_at_once_lose_and_duplicate_nothing`
//! (two moves of one stream at once while appending, as two drivers would start them).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::{placement, target_replicas, LogRouter, RemotePrimaries};
use crate::log::primary::LogPeers;
use crate::log::LogError;
use crate::membership::MembersFile;
use crate::quorum::transport::Peers;

/// Wait before the next pass after one that moved replicas; doubled after each pass in a row
/// with a failure, up to [`MAX_BACKOFF`].
const NEXT_PASS: Duration = Duration::from_secs(1);
/// Longest wait between passes that keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a member with a pass pending that did not drive it looks again.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The moves that balance `streams` (each with its current replicas) over `members`: each
/// moved stream with its new replicas, by name. See the module docs.
pub fn plan_rebalance(streams: &BTreeMap<String, Vec<String>>, members: &[String]) -> Vec<(String, Vec<String>)> {
    if members.is_empty() {
        return Vec::new();
    }
    // A stream with a replica outside the members (a move that raced with the change that
    // removed it) first moves off it, as `relocate` would have; one whose replication factor
    // exceeds the members stays as it is (relocate refuses it, and the change waits).
    let mut assign: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (s, r) in streams {
        if r.iter().all(|m| members.contains(m)) {
            assign.insert(s, r.clone());
        } else if r.len() <= members.len() {
            assign.insert(s, target_replicas(s, r, members, r.len()));
        }
    }
    let mut counts: BTreeMap<&str, usize> = members.iter().map(|m| (m.as_str(), 0)).collect();
    for replicas in assign.values() {
        for r in replicas {
            if let Some(c) = counts.get_mut(r.as_str()) {
                *c += 1;
            }
        }
    }
    let total: usize = counts.values().sum();
    let (q, extra) = (total / members.len(), total % members.len());
    // The `extra` members holding the most (ties: lowest id) may keep q + 1.
    let mut by_load: Vec<(&str, usize)> = counts.iter().map(|(m, c)| (*m, *c)).collect();
    by_load.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let share: BTreeMap<&str, usize> =
        by_load.iter().enumerate().map(|(i, (m, _))| (*m, q + usize::from(i < extra))).collect();
    let placed: BTreeMap<&str, Vec<String>> =
        assign.iter().map(|(s, r)| (*s, placement::replicas(s, members, r.len()))).collect();
    for _ in 0..total {
        let over = counts.iter().filter(|(m, c)| **c > share[*m]).map(|(m, _)| *m).next();
        let under = counts.iter().filter(|(m, c)| **c < share[*m]).map(|(m, _)| *m).next();
        let (Some(from), Some(to)) = (over, under) else { break };
        let wants = |s: &str| {
            let p = &placed[s];
            match (p.iter().any(|m| m == to), p.iter().any(|m| m == from)) {
                (true, false) => 0,
                (true, true) | (false, false) => 1,
                (false, true) => 2,
            }
        };
        let pick = assign
            .iter()
            .filter(|(_, r)| r.iter().any(|m| m == from) && !r.iter().any(|m| m == to))
            .map(|(s, _)| *s)
            .min_by_key(|s| (wants(s), *s));
        let Some(stream) = pick else { break };
        let replicas = assign.get_mut(stream).expect("a planned stream");
        for r in replicas.iter_mut().filter(|r| *r == from) {
            *r = to.to_string();
        }
        *counts.get_mut(from).expect("a member") -= 1;
        *counts.get_mut(to).expect("a member") += 1;
    }
    assign.into_iter().filter(|(s, r)| streams.get(*s) != Some(r)).map(|(s, r)| (s.to_string(), r)).collect()
}

/// Replicas that differ between `a` and `b` (as sets).
fn moved_replicas(a: &[String], b: &[String]) -> usize {
    b.iter().filter(|m| !a.contains(m)).count()
}

/// What one pass found.
enum Pass {
    /// Another member drives, or the configuration is joint: look again later.
    Waiting,
    /// Nothing to move.
    Balanced,
    /// Moved streams (or tried to): plan again. True when a move failed.
    Moved(bool),
}

impl<P: Peers, L: LogPeers + RemotePrimaries> LogRouter<P, L> {
    /// Runs a pass at start and after every configuration change, repeating until a pass finds
    /// the streams balanced (ends with the router).
    pub(super) async fn rebalance_loop(router: Weak<Self>, mut config: watch::Receiver<Arc<MembersFile>>) {
        let mut pending = true;
        let mut failing = 0u32;
        loop {
            let mut wait = WATCH_EVERY;
            if pending {
                let Some(r) = router.upgrade() else { return };
                let pass = r.rebalance_pass().await;
                drop(r);
                failing = match &pass {
                    Ok(Pass::Moved(true)) => failing.saturating_add(1),
                    Err(e) => {
                        tracing::warn!(error = %e, "stream rebalance pass failed; retrying");
                        failing.saturating_add(1)
                    }
                    _ => 0,
                };
                match pass {
                    Ok(Pass::Balanced) => pending = false,
                    Ok(Pass::Waiting) => {}
                    _ if failing > 0 => wait = NEXT_PASS.saturating_mul(1 << (failing - 1).min(5)).min(MAX_BACKOFF),
                    _ => wait = NEXT_PASS,
                }
            }
            tokio::select! {
                changed = config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    pending = true;
                }
                _ = tokio::time::sleep(wait) => {
                    if router.strong_count() == 0 {
                        return;
                    }
                }
            }
        }
    }

    /// One pass: when this member drives, plans the moves and runs them, a bounded number at
    /// once.
    async fn rebalance_pass(self: &Arc<Self>) -> Result<Pass, LogError> {
        let cfg = self.node.config();
        if cfg.previous.is_some() || !self.node.ready() {
            return Ok(Pass::Waiting);
        }
        let mut members: Vec<String> = cfg.current.members.iter().map(|m| m.id.clone()).collect();
        members.sort();
        // The lowest id drives, and only while it sees every member up.
        if members.first().is_none_or(|d| *d != self.node.id) || members.iter().any(|m| self.is_down(m)) {
            return Ok(Pass::Waiting);
        }
        let mut streams = BTreeMap::new();
        for stream in self.list().await? {
            match self.current_replicas(&stream).await {
                Ok((_, _, replicas)) => {
                    streams.insert(stream, replicas);
                }
                Err(LogError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let plan = plan_rebalance(&streams, &members);
        let metrics = self.node.metrics.log.clone();
        let replicas: usize = plan.iter().map(|(s, t)| moved_replicas(&streams[s], t)).sum();
        metrics.rebalance_pending.set(replicas as i64);
        if plan.is_empty() {
            return Ok(Pass::Balanced);
        }
        tracing::info!(streams = plan.len(), replicas, "rebalancing log streams over the members");
        let results: Vec<(String, Vec<String>, Result<(), LogError>)> = futures::stream::iter(plan)
            .map(|(stream, target)| async move {
                let r = self.move_to(&stream, &target).await;
                (stream, target, r)
            })
            .buffer_unordered(self.settings.rebalance_moves.max(1))
            .collect()
            .await;
        let mut failed = false;
        for (stream, target, r) in results {
            match r {
                Ok(()) => {
                    metrics.rebalance_moves.inc_by(moved_replicas(&streams[&stream], &target) as u64);
                    tracing::info!(stream, from = ?streams[&stream], to = ?target, "rebalanced a stream");
                }
                Err(e) => {
                    failed = true;
                    metrics.rebalance_failures.inc();
                    tracing::warn!(stream, to = ?target, error = %e, "rebalance move failed; the next pass plans again");
                }
            }
        }
        Ok(Pass::Moved(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m-{i}")).collect()
    }

    fn counts(streams: &BTreeMap<String, Vec<String>>, members: &[String]) -> Vec<usize> {
        members.iter().map(|m| streams.values().filter(|r| r.contains(m)).count()).collect()
    }

    fn apply(streams: &mut BTreeMap<String, Vec<String>>, plan: &[(String, Vec<String>)]) -> usize {
        let mut moved = 0;
        for (s, t) in plan {
            moved += moved_replicas(&streams[s], t);
            streams.insert(s.clone(), t.clone());
        }
        moved
    }

    /// The least number of replica moves that balance `streams`: the excess over each member's
    /// share, the largest loads keeping the `+ 1`s.
    fn lower_bound(streams: &BTreeMap<String, Vec<String>>, members: &[String]) -> usize {
        let mut c = counts(streams, members);
        c.sort_by(|a, b| b.cmp(a));
        let total: usize = c.iter().sum();
        let (q, extra) = (total / members.len(), total % members.len());
        c.iter().enumerate().map(|(i, &n)| n.saturating_sub(q + usize::from(i < extra))).sum()
    }

    #[test]
    fn growing_from_3_to_5_moves_the_fewest_replicas_onto_the_new_members() {
        for (streams_n, rf) in [(3, 3), (10, 3), (100, 3), (7, 2), (50, 1)] {
            let old = ids(3);
            let mut streams: BTreeMap<String, Vec<String>> =
                (0..streams_n).map(|i| (format!("s{i}"), placement::replicas(&format!("s{i}"), &old, rf))).collect();
            let members = ids(5);
            let bound = lower_bound(&streams, &members);
            let plan = plan_rebalance(&streams, &members);
            assert_eq!(plan_rebalance(&streams, &members), plan, "deterministic");
            let moved = apply(&mut streams, &plan);
            assert_eq!(moved, bound, "{streams_n} streams rf {rf}: the fewest moves");
            let c = counts(&streams, &members);
            let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(hi - lo <= 1, "{streams_n} streams rf {rf}: balanced within one: {c:?}");
            assert!(c[3] > 0 && c[4] > 0, "the new members hold replicas: {c:?}");
            for r in streams.values() {
                let mut d = r.clone();
                d.sort();
                d.dedup();
                assert_eq!(d.len(), r.len(), "distinct replicas: {r:?}");
            }
            assert!(plan_rebalance(&streams, &members).is_empty(), "a balanced cluster moves nothing");
        }
    }

    #[test]
    fn a_balanced_cluster_moves_nothing_and_moves_keep_the_primary_slot() {
        let members = ids(3);
        // One rf-3 stream on 5 members is balanced (counts 1, 1, 1, 0, 0: within one of 0.6).
        let one: BTreeMap<String, Vec<String>> = [("s".to_string(), members.clone())].into();
        assert!(plan_rebalance(&one, &ids(5)).is_empty());
        // Two rf-2 streams on the same two members of four: two replicas move, each into the
        // place of the replica it replaces (a replica that stays keeps its slot).
        let two: BTreeMap<String, Vec<String>> = [("a".to_string(), ids(2)), ("b".to_string(), ids(2))].into();
        let plan = plan_rebalance(&two, &ids(4));
        let mut after = two.clone();
        assert_eq!(apply(&mut after, &plan), 2);
        assert_eq!(counts(&after, &ids(4)), vec![1, 1, 1, 1]);
        for (s, t) in &plan {
            for (old, new) in two[s].iter().zip(t) {
                assert!(old == new || !two[s].contains(new), "{s}: {:?} -> {t:?} reordered replicas", two[s]);
            }
        }
        // A stream with a replica outside the members moves off it; one that cannot (more
        // replicas than members) stays.
        let stray: BTreeMap<String, Vec<String>> = [
            ("x".to_string(), vec!["m-0".into(), "gone".into()]),
            ("y".to_string(), ids(2)),
            ("z".to_string(), vec!["m-0".into(), "m-1".into(), "m-2".into(), "m-3".into(), "gone".into()]),
        ]
        .into();
        let mut after = stray.clone();
        apply(&mut after, &plan_rebalance(&stray, &ids(4)));
        assert!(after["x"].contains(&"m-0".to_string()) && !after["x"].contains(&"gone".to_string()), "{after:?}");
        assert_eq!(after["z"], stray["z"]);
    }
}
