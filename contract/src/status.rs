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
}

/// A `/status` body that does not parse as a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("/status body is not a status report: {0}")]
pub struct StatusError(String);

impl StatusReport {
    /// The JSON body the admin endpoint serves.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a status report serializes")
    }

    /// Parses a `/status` body.
    pub fn from_json(body: &[u8]) -> Result<Self, StatusError> {
        serde_json::from_slice(body).map_err(|e| StatusError(e.to_string()))
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
        }
    }

    #[test]
    fn round_trips_with_the_field_names_operators_read() {
        let json = report().to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["role"], "member");
        assert_eq!(v["migrated_epoch"], 2);
        assert_eq!(StatusReport::from_json(json.as_bytes()).unwrap(), report());
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
