//! Observed state -> [`SeqClusterStatus`]. Pure.

use k8s_openapi::jiff::Timestamp;

use super::scaling::{member_id, write_quorum, Plan, Reports, Step};
use crate::conditions::{merge, ConditionUpdate, AVAILABLE, DEGRADED, PROGRESSING};
use crate::crd::{MemberState, SeqClusterStatus};

/// Status after a reconcile that applied `plan`.
pub fn observed(
    name: &str,
    existing: Option<&SeqClusterStatus>,
    generation: Option<i64>,
    plan: &Plan,
    reports: &Reports,
    now: Timestamp,
) -> SeqClusterStatus {
    let m = &plan.membership;
    let width = m.previous.as_ref().map_or(0, |p| p.members).max(m.current.members);
    let members: Vec<MemberState> = (0..width)
        .map(|i| {
            let id = member_id(name, i);
            match reports.get(&id) {
                Some(r) => MemberState {
                    id,
                    reachable: true,
                    ready: r.ready,
                    epoch: Some(r.epoch as i64),
                    migrated_epoch: Some(r.migrated_epoch as i64),
                    caught_up: r.caught_up,
                },
                None => MemberState { id, ..Default::default() },
            }
        })
        .collect();
    let ready_in = |n: i32| (0..n).filter(|i| members.get(*i as usize).is_some_and(|s| s.ready)).count() as i32;
    let ready_members = ready_in(m.current.members);
    let quorum_sets: Vec<_> = std::iter::once(&m.current).chain(m.previous.iter()).collect();
    let available = quorum_sets.iter().all(|s| ready_in(s.members) >= write_quorum(s));
    let available_cond = if available {
        ConditionUpdate::new(
            AVAILABLE,
            true,
            "QuorumAvailable",
            format!("{ready_members} of {} members ready", m.current.members),
        )
    } else {
        ConditionUpdate::new(
            AVAILABLE,
            false,
            "QuorumUnavailable",
            format!(
                "{ready_members} of {} members ready; a write quorum of {} is needed",
                m.current.members,
                write_quorum(&m.current)
            ),
        )
    };
    let all_ready = members.iter().all(|s| s.ready);
    let progressing = match &plan.step {
        Step::Advanced(reason, msg) | Step::Waiting(reason, msg) => {
            ConditionUpdate::new(PROGRESSING, true, *reason, msg.clone())
        }
        Step::Steady if !all_ready => ConditionUpdate::new(
            PROGRESSING,
            true,
            "MembersStarting",
            format!("{} of {} members ready", members.iter().filter(|s| s.ready).count(), members.len()),
        ),
        Step::Steady => ConditionUpdate::new(
            PROGRESSING,
            false,
            "Reconciled",
            format!("{} members at epoch {}", m.current.members, m.epoch),
        ),
    };
    let degraded = ConditionUpdate::new(DEGRADED, false, "SpecValid", "the spec is valid");
    let existing_conditions = existing.map(|s| s.conditions.as_slice()).unwrap_or_default();
    SeqClusterStatus {
        observed_generation: generation,
        ready_members,
        membership: Some(m.clone()),
        members,
        conditions: merge(existing_conditions, &[available_cond, progressing, degraded], generation, now),
    }
}

/// Status of an object whose spec cannot be realised: what was applied before stays recorded.
pub fn invalid(
    existing: Option<&SeqClusterStatus>,
    generation: Option<i64>,
    err: &crate::spec_error::SpecError,
    now: Timestamp,
) -> SeqClusterStatus {
    let base = existing.cloned().unwrap_or_default();
    SeqClusterStatus {
        observed_generation: generation,
        conditions: crate::conditions::invalid_spec(&base.conditions, &err.to_string(), generation, now),
        ..base
    }
}
