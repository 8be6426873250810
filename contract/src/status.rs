//! The admin `/status` report: what a sidecar says about itself over HTTP, and what the
//! operator reads to drive a membership change (the joint epoch is left only once every member
//! reports `epoch` and `migrated_epoch` at the joint epoch).
//!
//! Both ends use [`StatusReport`]: the sidecar serializes it, the operator parses it. Every
//! field is required (no serde defaults), so a field renamed on one side fails the operator's
//! parse loudly instead of reading as "not migrated" and stalling scaling; fields the reader
//! does not know are ignored, so a newer sidecar may add some. The e2e test
//! `e2e/tests/contract.rs` reads `/status` from a running sidecar and parses it with the
//! operator's own parser.
//!
//! [`DividerReport`] (`/divider` on the admin port) is the same kind of contract for a
//! WorkDivider's status: what one sidecar knows of a divider (the key set and the live members
//! with their assigned counts, from its assignment table; the keys its own member sessions hold
//! now). The operator adds up the reports of every pod of a WorkDivider
//! ([`DividerReport::merge`]); a key counts as owned when the pod hosting its owner says so.

use serde::{Deserialize, Serialize};

use crate::config::Role;

/// One sidecar's report of itself, served as JSON at `/status` on the admin port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Member or proposer id.
    pub id: String,
    /// Member or client.
    pub role: Role,
    /// Epoch of the members file it runs with.
    pub epoch: u64,
    /// Its votes count: it is caught up with the quorum (always true in the client role).
    pub caught_up: bool,
    /// Highest joint epoch whose registers it has rewritten through a joint quorum (the
    /// current epoch when no change is in progress).
    pub migrated_epoch: u64,
    /// Ready: caught up and a quorum of caught-up members reachable.
    pub ready: bool,
    /// Process id.
    pub pid: u32,
    /// Why the joint epoch's migration has not finished, as its last attempt failed (for
    /// example a log stream that cannot move); `None` when it did not fail. Optional: a sidecar
    /// that predates it reports none.
    pub migration_error: Option<String>,
}

/// A `/status` body that does not parse as a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("/status body is not a status report: {0}")]
pub struct StatusError(String);

/// A JSON admin report: served by the sidecar, parsed strictly by the operator.
pub trait Report: Serialize + serde::de::DeserializeOwned {
    /// The JSON body the admin endpoint serves.
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an admin report serializes")
    }

    /// Parses a body.
    fn from_json(body: &[u8]) -> Result<Self, StatusError> {
        serde_json::from_slice(body).map_err(|e| StatusError(e.to_string()))
    }
}

impl Report for StatusReport {}
impl Report for DividerReport {}

/// One sidecar's view of a divider, served as JSON at `/divider?name=D` on the admin port
/// (empty or absent name: the sidecar's configured divider).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DividerReport {
    /// Divider name.
    pub divider: String,
    /// Version of the assignment table the counts come from.
    pub version: u64,
    /// Keys in the key set.
    pub keys: u64,
    /// Live members (every sidecar sees them alike), sorted by id.
    pub members: Vec<DividerMember>,
    /// Keys held now by the member sessions on this sidecar (owned or stopping), by member id.
    pub held_here: Vec<HeldKeys>,
}

/// A live member of a divider and the keys the assignment gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DividerMember {
    /// Member id.
    pub id: String,
    /// Its affinity.
    pub affinity: u32,
    /// Keys the assignment gives it.
    pub assigned: u64,
}

/// Keys one member session holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldKeys {
    /// Member id.
    pub id: String,
    /// Keys it holds (owned, or told to stop and not yet released).
    pub keys: u64,
}

/// A divider's counts put together from the reports of its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DividerCounts {
    /// Keys in the key set (from the report with the newest table).
    pub keys: u64,
    /// Keys no answering pod holds: `keys` minus every member's held keys (never below 0).
    pub unowned: u64,
    /// Members with affinity, assigned and held keys, sorted by id.
    pub members: Vec<MemberCounts>,
    /// Reports that went into the counts.
    pub reports: usize,
}

/// One member's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCounts {
    /// Member id.
    pub id: String,
    /// Affinity.
    pub affinity: u32,
    /// Keys the assignment gives it.
    pub assigned: u64,
    /// Keys it holds now (0 when no answering pod hosts it).
    pub held: u64,
}

impl DividerReport {
    /// Adds up the reports of a divider's pods: members and key count from the newest table,
    /// held keys from every pod (a member's session lives on one sidecar; should two report the
    /// same member, during a restart, the larger count is kept). `None` without reports.
    pub fn merge(reports: &[DividerReport]) -> Option<DividerCounts> {
        let newest = reports.iter().max_by_key(|r| r.version)?;
        let mut held: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for h in reports.iter().flat_map(|r| &r.held_here) {
            let e = held.entry(h.id.as_str()).or_insert(0);
            *e = (*e).max(h.keys);
        }
        let members: Vec<MemberCounts> = newest
            .members
            .iter()
            .map(|m| MemberCounts {
                id: m.id.clone(),
                affinity: m.affinity,
                assigned: m.assigned,
                held: held.get(m.id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let owned: u64 = members.iter().map(|m| m.held).sum();
        Some(DividerCounts {
            keys: newest.keys,
            unowned: newest.keys.saturating_sub(owned),
            members,
            reports: reports.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            id: "s-0".into(),
            role: Role::Member,
            epoch: 2,
            caught_up: true,
            migrated_epoch: 2,
            ready: true,
            pid: 42,
            migration_error: None,
        }
    }

    #[test]
    fn round_trips_with_the_field_names_operators_read() {
        let json = report().to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["role"], "member");
        assert_eq!(v["migrated_epoch"], 2);
        assert_eq!(StatusReport::from_json(json.as_bytes()).unwrap(), report());
        let failing = StatusReport { migration_error: Some("log streams: x".into()), ..report() };
        assert_eq!(StatusReport::from_json(failing.to_json().as_bytes()).unwrap(), failing);
        // A sidecar that predates the field reports none.
        let old = json.replace(",\"migration_error\":null", "");
        assert!(!old.contains("migration_error"), "{old}");
        assert_eq!(StatusReport::from_json(old.as_bytes()).unwrap(), report());
    }

    fn divider(version: u64, members: &[(&str, u32, u64)], held: &[(&str, u64)]) -> DividerReport {
        DividerReport {
            divider: "d".into(),
            version,
            keys: members.iter().map(|m| m.2).sum(),
            members: members
                .iter()
                .map(|&(id, affinity, assigned)| DividerMember { id: id.into(), affinity, assigned })
                .collect(),
            held_here: held.iter().map(|&(id, keys)| HeldKeys { id: id.into(), keys }).collect(),
        }
    }

    #[test]
    fn divider_reports_round_trip_and_a_renamed_field_is_an_error() {
        let r = divider(3, &[("a", 1, 5), ("b", 2, 10)], &[("a", 4)]);
        let json = r.to_json();
        assert_eq!(DividerReport::from_json(json.as_bytes()).unwrap(), r);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["held_here"][0]["keys"], 4);
        assert!(DividerReport::from_json(json.replace("held_here", "heldHere").as_bytes()).is_err());
    }

    #[test]
    fn divider_counts_add_up_every_pod_and_take_members_from_the_newest_table() {
        assert_eq!(DividerReport::merge(&[]), None);
        // Pod 0 hosts a (holding 4 of its 5), pod 1 hosts b (all 10), with an older table.
        let pod0 = divider(3, &[("a", 1, 5), ("b", 2, 10)], &[("a", 4)]);
        let pod1 = divider(2, &[("a", 1, 8), ("b", 2, 7)], &[("b", 10)]);
        let c = DividerReport::merge(&[pod1.clone(), pod0.clone()]).unwrap();
        assert_eq!((c.keys, c.unowned, c.reports), (15, 1, 2));
        let got: Vec<_> = c.members.iter().map(|m| (m.id.as_str(), m.affinity, m.assigned, m.held)).collect();
        assert_eq!(got, [("a", 1, 5, 4), ("b", 2, 10, 10)]);
        // Only pod 0 answered: b's keys count as unowned.
        let c = DividerReport::merge(&[pod0]).unwrap();
        assert_eq!((c.unowned, c.members[1].held), (11, 0));
        // Never below zero, and a member reported twice (a restart) counts once.
        let twice = DividerReport::merge(&[
            divider(1, &[("a", 1, 2)], &[("a", 2)]),
            divider(1, &[("a", 1, 2)], &[("a", 2), ("ghost", 9)]),
        ])
        .unwrap();
        assert_eq!((twice.unowned, twice.members[0].held), (0, 2));
    }

    #[test]
    fn a_renamed_or_missing_field_is_an_error_and_an_added_one_is_ignored() {
        let json = report().to_json();
        let renamed = json.replace("\"migrated_epoch\"", "\"migratedEpoch\"");
        let e = StatusReport::from_json(renamed.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("migrated_epoch"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("ready");
        assert!(StatusReport::from_json(v.to_string().as_bytes()).is_err());
        v["ready"] = true.into();
        v["added_later"] = "x".into();
        assert_eq!(StatusReport::from_json(v.to_string().as_bytes()).unwrap(), report());
        assert!(StatusReport::from_json(b"{\"id\":\"s-0\",\"role\":\"leader\"}").is_err());
    }
}
