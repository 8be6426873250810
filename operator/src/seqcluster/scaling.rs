//! The member-configuration state machine that makes scaling safe (joint consensus).
//!
//! From configuration A (epoch e) to B: grow the StatefulSet first, then write
//! `B with previous: A` (epoch e+1, joint), wait until every member of B reports
//! `epoch == e+1 && migrated_epoch >= e+1`, write `B` alone (epoch e+2), wait until every member
//! of B runs e+2, and only then shrink the StatefulSet. A step is only taken when a write quorum
//! of caught-up members of every configuration it involves is available. Pure: the reconcile
//! feeds it the applied state (from status) and the members' `/status` reports.

use std::collections::BTreeMap;

use ordo_contract::status::StatusReport;

use crate::crd::{MemberSetStatus, MembershipPhase, MembershipStatus};

/// Reports by member id; an absent id did not answer.
pub type Reports = BTreeMap<String, StatusReport>;

/// What to do in this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The configuration to write (ConfigMap) and record (status).
    pub membership: MembershipStatus,
    /// StatefulSet replicas: never below any member of a configuration still in use.
    pub statefulset_replicas: i32,
    /// How the change stands.
    pub step: Step,
}

/// Outcome of planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change.
    Steady,
    /// A new configuration is written in this reconcile (`reason`, message).
    Advanced(&'static str, String),
    /// A change is in flight but must wait (`reason`, message).
    Waiting(&'static str, String),
}

/// Member id of ordinal `i` of StatefulSet `name`.
pub fn member_id(name: &str, i: i32) -> String {
    format!("{name}-{i}")
}

fn majority(n: i32) -> i32 {
    n / 2 + 1
}

/// Write quorum of a configuration.
pub fn write_quorum(set: &MemberSetStatus) -> i32 {
    set.write_quorum.unwrap_or_else(|| majority(set.members))
}

fn count(name: &str, set: &MemberSetStatus, mut ok: impl FnMut(&str) -> bool) -> i32 {
    (0..set.members).filter(|i| ok(&member_id(name, *i))).count() as i32
}

fn caught_up_at(reports: &Reports, id: &str, epoch: i64) -> bool {
    reports.get(id).is_some_and(|r| r.caught_up && r.epoch as i64 == epoch)
}

/// Decides the next configuration.
pub fn plan(name: &str, desired: &MemberSetStatus, applied: Option<&MembershipStatus>, reports: &Reports) -> Plan {
    let Some(applied) = applied else {
        return Plan {
            membership: MembershipStatus {
                epoch: 1,
                current: desired.clone(),
                previous: None,
                phase: MembershipPhase::Stable,
            },
            statefulset_replicas: desired.members,
            step: Step::Advanced("Bootstrapped", format!("initial configuration of {} members", desired.members)),
        };
    };
    let e = applied.epoch;
    let current = &applied.current;
    let widest = |a: &MemberSetStatus, b: &MemberSetStatus| a.members.max(b.members);
    let wait = |replicas: i32, reason: &'static str, msg: String| Plan {
        membership: applied.clone(),
        statefulset_replicas: replicas,
        step: Step::Waiting(reason, msg),
    };

    match (applied.phase, &applied.previous) {
        (MembershipPhase::Stable, _) | (_, None) => {
            if current == desired {
                return Plan {
                    membership: MembershipStatus { previous: None, phase: MembershipPhase::Stable, ..applied.clone() },
                    statefulset_replicas: current.members,
                    step: Step::Steady,
                };
            }
            let replicas = widest(current, desired);
            // Quorums of the old configuration must be reachable to migrate anything.
            let old_ok = count(name, current, |id| caught_up_at(reports, id, e));
            if old_ok < write_quorum(current) {
                return wait(
                    replicas,
                    "WaitingForQuorum",
                    format!(
                        "{old_ok} of {} members are caught up at epoch {e}; a write quorum of {} is needed before changing to {} members",
                        current.members,
                        write_quorum(current),
                        desired.members
                    ),
                );
            }
            // New pods must be started before they are written into a configuration.
            let joining: Vec<String> = (current.members..desired.members)
                .map(|i| member_id(name, i))
                .filter(|id| !reports.contains_key(id))
                .collect();
            if !joining.is_empty() {
                return wait(
                    replicas,
                    "WaitingForNewMembers",
                    format!("waiting for new members to start: {}", joining.join(", ")),
                );
            }
            let new_ok = count(name, desired, |id| {
                caught_up_at(reports, id, e) || (id_ordinal(name, id) >= current.members && reports.contains_key(id))
            });
            if new_ok < write_quorum(desired) {
                return wait(
                    replicas,
                    "WaitingForQuorum",
                    format!(
                        "only {new_ok} members of the new configuration of {} are available; its write quorum is {}",
                        desired.members,
                        write_quorum(desired)
                    ),
                );
            }
            Plan {
                membership: MembershipStatus {
                    epoch: e + 1,
                    current: desired.clone(),
                    previous: Some(current.clone()),
                    phase: MembershipPhase::Joint,
                },
                statefulset_replicas: replicas,
                step: Step::Advanced(
                    "JointConfiguration",
                    format!("epoch {}: {} members joint with the previous {}", e + 1, desired.members, current.members),
                ),
            }
        }
        (MembershipPhase::Joint, Some(previous)) => {
            let replicas = widest(current, previous);
            // Each lagging member, with why its last attempt failed when it says so (a log stream
            // that cannot move, for example).
            let lagging: Vec<String> = (0..current.members)
                .map(|i| member_id(name, i))
                .filter(|id| !reports.get(id).is_some_and(|r| r.epoch as i64 == e && r.migrated_epoch as i64 >= e))
                .map(|id| match reports.get(&id).and_then(|r| r.migration_error.as_deref()) {
                    Some(why) => format!("{id} ({why})"),
                    None => id,
                })
                .collect();
            if !lagging.is_empty() {
                return wait(
                    replicas,
                    "WaitingForMigration",
                    format!("waiting for members to migrate to epoch {e}: {}", lagging.join(", ")),
                );
            }
            Plan {
                membership: MembershipStatus {
                    epoch: e + 1,
                    current: current.clone(),
                    previous: Some(previous.clone()),
                    phase: MembershipPhase::Finalizing,
                },
                statefulset_replicas: replicas,
                step: Step::Advanced(
                    "NewConfiguration",
                    format!("epoch {}: {} members, previous configuration dropped", e + 1, current.members),
                ),
            }
        }
        (MembershipPhase::Finalizing, Some(previous)) => {
            let replicas = widest(current, previous);
            let lagging: Vec<String> = (0..current.members)
                .map(|i| member_id(name, i))
                .filter(|id| reports.get(id).is_none_or(|r| (r.epoch as i64) < e))
                .collect();
            if !lagging.is_empty() {
                return wait(
                    replicas,
                    "WaitingForEpoch",
                    format!("waiting for members to load epoch {e}: {}", lagging.join(", ")),
                );
            }
            let ok = count(name, current, |id| caught_up_at(reports, id, e));
            if ok < write_quorum(current) {
                return wait(
                    replicas,
                    "WaitingForQuorum",
                    format!(
                        "{ok} of {} members are caught up; keeping the old pods until a write quorum of {} is",
                        current.members,
                        write_quorum(current)
                    ),
                );
            }
            Plan {
                membership: MembershipStatus {
                    epoch: e,
                    current: current.clone(),
                    previous: None,
                    phase: MembershipPhase::Stable,
                },
                statefulset_replicas: current.members,
                step: Step::Advanced("ScaledTo", format!("{} members at epoch {e}", current.members)),
            }
        }
    }
}

fn id_ordinal(name: &str, id: &str) -> i32 {
    id.strip_prefix(name).and_then(|rest| rest.strip_prefix('-')).and_then(|n| n.parse().ok()).unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: i32) -> MemberSetStatus {
        MemberSetStatus { members: n, read_quorum: None, write_quorum: None }
    }

    fn report(id: &str, epoch: u64, migrated: u64) -> StatusReport {
        StatusReport {
            id: id.into(),
            role: ordo_contract::config::Role::Member,
            epoch,
            caught_up: true,
            migrated_epoch: migrated,
            ready: true,
            pid: 1,
            migration_error: None,
        }
    }

    fn reports(n: i32, epoch: u64, migrated: u64) -> Reports {
        (0..n)
            .map(|i| {
                let id = member_id("s", i);
                (id.clone(), report(&id, epoch, migrated))
            })
            .collect()
    }

    fn stable(epoch: i64, n: i32) -> MembershipStatus {
        MembershipStatus { epoch, current: set(n), previous: None, phase: MembershipPhase::Stable }
    }

    #[test]
    fn bootstrap_writes_epoch_one() {
        let p = plan("s", &set(3), None, &Reports::new());
        assert_eq!(p.membership, stable(1, 3));
        assert_eq!(p.statefulset_replicas, 3);
    }

    #[test]
    fn scale_up_grows_pods_first_then_goes_joint_then_final() {
        let applied = stable(1, 3);
        // New pods not started yet: grow the StatefulSet, keep the configuration.
        let p = plan("s", &set(5), Some(&applied), &reports(3, 1, 1));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(p.membership, applied);
        assert!(matches!(p.step, Step::Waiting("WaitingForNewMembers", _)));
        // New pods answer (not yet in any configuration): joint epoch 2.
        let mut r = reports(3, 1, 1);
        for i in 3..5 {
            let id = member_id("s", i);
            r.insert(id.clone(), StatusReport { caught_up: false, ..report(&id, 1, 1) });
        }
        let p = plan("s", &set(5), Some(&applied), &r);
        assert_eq!(p.membership.epoch, 2);
        assert_eq!(p.membership.phase, MembershipPhase::Joint);
        assert_eq!(p.membership.previous, Some(set(3)));
        // Not every member migrated: wait.
        let joint = p.membership;
        let mut r = reports(5, 2, 2);
        r.get_mut("s-4").unwrap().migrated_epoch = 1;
        let p = plan("s", &set(5), Some(&joint), &r);
        assert!(matches!(p.step, Step::Waiting("WaitingForMigration", ref m) if m.contains("s-4")));
        // A member that says why its migration fails: the reason reaches the status message.
        r.get_mut("s-4").unwrap().migration_error = Some("log streams: stream orders cannot move".into());
        let p = plan("s", &set(5), Some(&joint), &r);
        assert!(
            matches!(p.step, Step::Waiting("WaitingForMigration", ref m) if m.contains("s-4 (log streams: stream orders cannot move)")),
            "{:?}",
            p.step
        );
        assert_eq!(p.membership, joint);
        // All migrated: epoch 3 with the new members alone.
        let p = plan("s", &set(5), Some(&joint), &reports(5, 2, 2));
        assert_eq!(p.membership.epoch, 3);
        assert_eq!(p.membership.phase, MembershipPhase::Finalizing);
        let fin = p.membership;
        let p = plan("s", &set(5), Some(&fin), &reports(5, 3, 2));
        assert_eq!(p.membership, stable(3, 5));
        assert_eq!(p.statefulset_replicas, 5);
    }

    #[test]
    fn scale_down_shrinks_pods_only_after_the_new_configuration_is_loaded() {
        let applied = stable(4, 5);
        let p = plan("s", &set(3), Some(&applied), &reports(5, 4, 4));
        assert_eq!(p.membership.phase, MembershipPhase::Joint);
        assert_eq!(p.statefulset_replicas, 5);
        let p = plan("s", &set(3), Some(&p.membership), &reports(5, 5, 5));
        assert_eq!(p.membership.phase, MembershipPhase::Finalizing);
        assert_eq!(p.statefulset_replicas, 5, "old members stay until the new file is loaded");
        let fin = p.membership;
        let mut r = reports(3, 6, 5);
        r.get_mut("s-2").unwrap().epoch = 5;
        assert_eq!(plan("s", &set(3), Some(&fin), &r).statefulset_replicas, 5);
        let p = plan("s", &set(3), Some(&fin), &reports(3, 6, 5));
        assert_eq!(p.membership, stable(6, 3));
        assert_eq!(p.statefulset_replicas, 3);
    }

    #[test]
    fn never_changes_without_a_write_quorum_of_caught_up_members() {
        let applied = stable(2, 5);
        // Only 2 of 5 caught up: no change, and the pods stay.
        let mut r = reports(5, 2, 2);
        for id in ["s-0", "s-1", "s-2"] {
            r.get_mut(id).unwrap().caught_up = false;
        }
        let p = plan("s", &set(3), Some(&applied), &r);
        assert_eq!(p.membership, applied);
        assert_eq!(p.statefulset_replicas, 5);
        assert!(matches!(p.step, Step::Waiting("WaitingForQuorum", _)));
        // Scaling 5 -> 3 keeps s-0..s-2; with s-0 and s-1 down the new set has 1 of 3 caught up.
        let mut r = reports(5, 2, 2);
        r.remove("s-0");
        r.remove("s-1");
        let p = plan("s", &set(3), Some(&applied), &r);
        assert!(matches!(p.step, Step::Waiting("WaitingForQuorum", ref m) if m.contains("only 1")));
    }

    #[test]
    fn a_new_target_waits_for_the_change_in_flight() {
        let joint =
            MembershipStatus { epoch: 2, current: set(5), previous: Some(set(3)), phase: MembershipPhase::Joint };
        let p = plan("s", &set(7), Some(&joint), &reports(5, 2, 2));
        assert_eq!(p.membership.current, set(5), "finishes 3 -> 5 before starting 5 -> 7");
        assert_eq!(p.membership.phase, MembershipPhase::Finalizing);
    }

    #[test]
    fn quorum_size_change_is_a_membership_change() {
        let applied = stable(1, 5);
        let stricter = MemberSetStatus { members: 5, read_quorum: Some(2), write_quorum: Some(4) };
        let p = plan("s", &stricter, Some(&applied), &reports(5, 1, 1));
        assert_eq!(p.membership.phase, MembershipPhase::Joint);
        assert_eq!(p.membership.previous, Some(set(5)));
    }
}
