//! Observed state -> [`WorkDividerStatus`]. Pure.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;

use crate::conditions::{merge, ConditionUpdate, AVAILABLE, DEGRADED, PROGRESSING};
use crate::crd::WorkDividerStatus;

/// Why the referenced SeqCluster cannot be used yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqClusterProblem {
    /// No SeqCluster of that name in the namespace.
    NotFound(String),
    /// It exists but has not written a member configuration yet.
    NotReady(String),
}

/// Status after applying the objects; `statefulset` is what the API server returned.
pub fn observed(
    existing: Option<&WorkDividerStatus>,
    generation: Option<i64>,
    desired_replicas: i32,
    seq_cluster_epoch: i64,
    statefulset: Option<&StatefulSet>,
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
    WorkDividerStatus {
        observed_generation: generation,
        ready_replicas: ready,
        seq_cluster_epoch: Some(seq_cluster_epoch),
        conditions: merge(
            existing.map(|s| s.conditions.as_slice()).unwrap_or_default(),
            &[available, progressing, degraded],
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
