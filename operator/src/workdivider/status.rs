//! Observed state -> [`WorkDividerStatus`]. Pure.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;

use ordo_contract::status::DividerCounts;

use crate::conditions::{merge, ConditionUpdate, AVAILABLE, DEGRADED, KEYS_OWNED, PROGRESSING};
use crate::crd::{WorkDividerMember, WorkDividerStatus};

/// Most members listed in the status (the counts cover all of them).
pub const MAX_LISTED_MEMBERS: usize = 256;

/// Why the referenced SeqCluster cannot be used yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqClusterProblem {
    /// No SeqCluster of that name in the namespace.
    NotFound(String),
    /// It exists but has not written a member configuration yet.
    NotReady(String),
}

/// Status after applying the objects; `statefulset` is what the API server returned, `divider`
/// the counts added up from the pods that answered (`None`: none did).
pub fn observed(
    existing: Option<&WorkDividerStatus>,
    generation: Option<i64>,
    desired_replicas: i32,
    seq_cluster_epoch: i64,
    statefulset: Option<&StatefulSet>,
    divider: Option<&DividerCounts>,
    now: Timestamp,
) -> WorkDividerStatus {
    let ready = statefulset.and_then(|s| s.status.as_ref()).and_then(|s| s.ready_replicas).unwrap_or(0);
    let available = if ready >= 1 || desired_replicas == 0 {
        ConditionUpdate::new(AVAILABLE, true, "PodsReady", format!("{ready} of {desired_replicas} pods ready"))
    } else {
        ConditionUpdate::new(AVAILABLE, false, "NoPodReady", format!("0 of {desired_replicas} pods ready"))
    };
    let progressing = if ready < desired_replicas {
        ConditionUpdate::new(PROGRESSING, true, "PodsStarting", format!("{ready} of {desired_replicas} pods ready"))
    } else {
        ConditionUpdate::new(PROGRESSING, false, "Reconciled", format!("{desired_replicas} pods ready"))
    };
    let degraded =
        ConditionUpdate::new(DEGRADED, false, "SeqClusterReady", "the spec is valid and its SeqCluster has members");
    let i64_of = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let keys_owned = match divider {
        None => ConditionUpdate::new(KEYS_OWNED, false, "NoReport", "no pod of this WorkDivider reported its divider"),
        Some(c) if c.keys == 0 => ConditionUpdate::new(KEYS_OWNED, true, "NoKeys", "the divider has no keys"),
        Some(c) if c.unowned == 0 => ConditionUpdate::new(
            KEYS_OWNED,
            true,
            "AllKeysOwned",
            format!("all {} keys have an owner ({} members)", c.keys, c.members.len()),
        ),
        Some(c) => ConditionUpdate::new(
            KEYS_OWNED,
            false,
            if c.members.iter().any(|m| m.affinity > 0) { "KeysUnowned" } else { "NoMemberWithAffinity" },
            format!(
                "{} of {} keys have no owner among the members of the {} pods that answered",
                c.unowned, c.keys, c.reports
            ),
        ),
    };
    let members = divider
        .map(|c| {
            c.members
                .iter()
                .take(MAX_LISTED_MEMBERS)
                .map(|m| WorkDividerMember {
                    id: m.id.clone(),
                    affinity: i64::from(m.affinity),
                    assigned_keys: i64_of(m.assigned),
                    keys: i64_of(m.held),
                })
                .collect()
        })
        .unwrap_or_default();
    WorkDividerStatus {
        observed_generation: generation,
        ready_replicas: ready,
        seq_cluster_epoch: Some(seq_cluster_epoch),
        keys: divider.map(|c| i64_of(c.keys)),
        unowned_keys: divider.map(|c| i64_of(c.unowned)),
        members,
        conditions: merge(
            existing.map(|s| s.conditions.as_slice()).unwrap_or_default(),
            &[available, progressing, degraded, keys_owned],
            generation,
            now,
        ),
    }
}

/// Status when the SeqCluster is missing or not ready: shown as conditions, not a crash.
pub fn waiting_for_seqcluster(
    existing: Option<&WorkDividerStatus>,
    generation: Option<i64>,
    problem: &SeqClusterProblem,
    now: Timestamp,
) -> WorkDividerStatus {
    let base = existing.cloned().unwrap_or_default();
    let (reason, message) = match problem {
        SeqClusterProblem::NotFound(name) => (
            "SeqClusterNotFound",
            format!("SeqCluster {name:?} does not exist in this namespace; create it or fix spec.seqClusterRef.name"),
        ),
        SeqClusterProblem::NotReady(name) => {
            ("SeqClusterNotReady", format!("SeqCluster {name:?} has no member configuration yet; waiting for it"))
        }
    };
    let conditions = merge(
        &base.conditions,
        &[
            ConditionUpdate::new(AVAILABLE, base.ready_replicas > 0, reason, message.clone()),
            ConditionUpdate::new(PROGRESSING, true, reason, message.clone()),
            ConditionUpdate::new(DEGRADED, matches!(problem, SeqClusterProblem::NotFound(_)), reason, message),
        ],
        generation,
        now,
    );
    WorkDividerStatus { observed_generation: generation, conditions, ..base }
}

/// Status of an object whose spec cannot be realised: what was applied before stays recorded.
pub fn invalid(
    existing: Option<&WorkDividerStatus>,
    generation: Option<i64>,
    err: &crate::spec_error::SpecError,
    now: Timestamp,
) -> WorkDividerStatus {
    let base = existing.cloned().unwrap_or_default();
    WorkDividerStatus {
        observed_generation: generation,
        conditions: crate::conditions::invalid_spec(&base.conditions, &err.to_string(), generation, now),
        ..base
    }
}
