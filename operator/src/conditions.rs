//! Status conditions per the Kubernetes API conventions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition types every Ordo object reports.
pub const AVAILABLE: &str = "Available";
/// The operator is still moving the object towards its spec.
pub const PROGRESSING: &str = "Progressing";
/// The spec cannot be (fully) realised; the message says what to fix.
pub const DEGRADED: &str = "Degraded";
/// WorkDivider only: every key of the divider has an owner.
pub const KEYS_OWNED: &str = "KeysOwned";

/// A condition to set, without timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// `Available`, `Progressing`, `Degraded` or `KeysOwned`.
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl ConditionUpdate {
    /// A new update.
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// Merges `updates` into `existing`: `lastTransitionTime` only moves when the status flips, so
/// repeated reconciles of an unchanged object write an identical status.
pub fn merge(
    existing: &[Condition],
    updates: &[ConditionUpdate],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> =
        existing.iter().filter(|c| !updates.iter().any(|u| u.type_ == c.type_)).cloned().collect();
    for u in updates {
        let status = if u.status { "True" } else { "False" }.to_string();
        let previous = existing.iter().find(|c| c.type_ == u.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: u.type_.to_string(),
            status,
            reason: u.reason.clone(),
            message: u.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Conditions of an object whose spec cannot be realised: `Degraded` with what to fix, and not
/// `Progressing` until the spec changes. `Available` keeps its last value (what runs keeps running).
pub fn invalid_spec(existing: &[Condition], problems: &str, generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    merge(
        existing,
        &[
            ConditionUpdate::new(DEGRADED, true, "InvalidSpec", problems),
            ConditionUpdate::new(PROGRESSING, false, "InvalidSpec", "waiting for the spec to be fixed"),
        ],
        generation,
        now,
    )
}

/// The status of condition `type_`, if present.
pub fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_flip() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let first = merge(&[], &[ConditionUpdate::new(AVAILABLE, false, "Starting", "0/3")], Some(1), t0);
        let same = merge(&first, &[ConditionUpdate::new(AVAILABLE, false, "Starting", "1/3")], Some(1), t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].message, "1/3");
        let flipped = merge(&same, &[ConditionUpdate::new(AVAILABLE, true, "Ready", "3/3")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].observed_generation, Some(2));
        assert_eq!(is_true(&flipped, AVAILABLE), Some(true));
    }
}
