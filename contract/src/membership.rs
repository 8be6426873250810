//! The members file: who the members are, the configuration epoch, quorum sizes and, during a
//! membership change, the previous configuration (joint quorums).
//!
//! A change from configuration A to configuration B goes through three epochs:
//! `A` (epoch e), `B` with `previous: A` (epoch e+1, joint: every quorum is a quorum of A
//! *and* of B), then `B` alone (epoch e+2) once every member of B reports `migrated_epoch >= e+1`
//! (each register has been rewritten through a joint quorum, so a quorum of B alone sees it).
//! The operator and `ordoctl` drive these steps; the sidecar's `quorum::migration` rewrites the
//! registers.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::validate::validate_name;

/// One member: its id and peer address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member id (pod name in Kubernetes).
    pub id: String,
    /// `host:port` of its peer API.
    pub peer_addr: String,
}

/// A set of members with its quorum sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSet {
    /// The members.
    pub members: Vec<Member>,
    /// Prepare (read) quorum size; majority when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_quorum: Option<usize>,
    /// Accept (write) quorum size; majority when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_quorum: Option<usize>,
}

/// The members file as mounted from the SeqCluster's ConfigMap (or written by `ordoctl dev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersFile {
    /// Configuration epoch; members reject peer requests from any other epoch.
    pub epoch: u64,
    /// Current members and quorum sizes.
    #[serde(flatten)]
    pub current: MemberSet,
    /// Previous configuration while a change is in progress (joint quorums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<MemberSet>,
}

/// Why a members file is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// YAML/JSON syntax or shape.
    #[error("members file does not parse: {0}")]
    Parse(String),
    /// Semantic problem.
    #[error("members file is invalid: {0}")]
    Invalid(String),
}

impl MemberSet {
    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Majority of this set.
    pub fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// Prepare quorum size.
    pub fn read_quorum(&self) -> usize {
        self.read_quorum.unwrap_or_else(|| self.majority())
    }

    /// Accept quorum size.
    pub fn write_quorum(&self) -> usize {
        self.write_quorum.unwrap_or_else(|| self.majority())
    }

    /// True when `id` is a member.
    pub fn contains(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    fn validate(&self, what: &str) -> Result<(), MembershipError> {
        let n = self.members.len();
        if n == 0 {
            return Err(MembershipError::Invalid(format!("{what}: no members")));
        }
        let mut ids = BTreeSet::new();
        for m in &self.members {
            validate_name(&m.id).map_err(|e| MembershipError::Invalid(format!("{what}: member id {:?}: {e}", m.id)))?;
            if !ids.insert(m.id.as_str()) {
                return Err(MembershipError::Invalid(format!("{what}: member id {:?} appears twice", m.id)));
            }
            if m.peer_addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(MembershipError::Invalid(format!(
                    "{what}: member {:?} peer_addr {:?} is not host:port",
                    m.id, m.peer_addr
                )));
            }
        }
        check_quorum_sizes(n, self.read_quorum(), self.write_quorum())
            .map_err(|e| MembershipError::Invalid(format!("{what}: {e}")))
    }
}

/// Checks read/write quorum sizes for `n` members: `1 <= R, W <= N`, `R + W > N`, `2W > N`.
pub fn check_quorum_sizes(n: usize, r: usize, w: usize) -> Result<(), String> {
    if r == 0 || w == 0 || r > n || w > n {
        return Err(format!("quorum sizes must be in 1..={n} (read {r}, write {w})"));
    }
    if r + w <= n {
        return Err(format!("read quorum {r} + write quorum {w} must exceed the {n} members"));
    }
    if 2 * w <= n {
        return Err(format!("twice the write quorum ({w}) must exceed the {n} members"));
    }
    Ok(())
}

impl MembersFile {
    /// Parses and validates YAML or JSON.
    pub fn parse(text: &str) -> Result<Self, MembershipError> {
        let file: MembersFile = serde_yaml::from_str(text).map_err(|e| MembershipError::Parse(e.to_string()))?;
        file.validate()?;
        Ok(file)
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Self, MembershipError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| MembershipError::Parse(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Checks ids, addresses and quorum sizes of both configurations.
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.epoch == 0 {
            return Err(MembershipError::Invalid("epoch must be at least 1".into()));
        }
        self.current.validate("members")?;
        if let Some(prev) = &self.previous {
            prev.validate("previous")?;
        }
        Ok(())
    }

    /// Serializes as YAML (what the operator writes into the ConfigMap).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("members file serializes")
    }

    /// The quorum systems every round must satisfy: the current set, plus the previous one
    /// while a change is in progress.
    pub fn quorum_sets(&self) -> Vec<&MemberSet> {
        let mut sets = vec![&self.current];
        if let Some(p) = &self.previous {
            sets.push(p);
        }
        sets
    }

    /// Every member of either configuration, each once, current members first.
    pub fn all_members(&self) -> Vec<&Member> {
        let mut seen = BTreeSet::new();
        self.quorum_sets().into_iter().flat_map(|s| s.members.iter()).filter(|m| seen.insert(m.id.as_str())).collect()
    }

    /// True when `id` belongs to either configuration.
    pub fn contains(&self, id: &str) -> bool {
        self.quorum_sets().iter().any(|s| s.contains(id))
    }

    /// True when `ids` (members that answered yes) form a read quorum in every configuration.
    pub fn is_read_quorum<'a>(&self, ids: impl IntoIterator<Item = &'a str> + Clone) -> bool {
        self.quorum_sets().iter().all(|s| count_in(s, ids.clone()) >= s.read_quorum())
    }

    /// True when `ids` form a write quorum in every configuration.
    pub fn is_write_quorum<'a>(&self, ids: impl IntoIterator<Item = &'a str> + Clone) -> bool {
        self.quorum_sets().iter().all(|s| count_in(s, ids.clone()) >= s.write_quorum())
    }

    /// True when `ids` intersect every write quorum that could hold a chosen value, in every
    /// configuration that contains `exclude`-free members: `|ids ∩ S| >= |S| - W + 1`.
    /// A member that lost its data copies registers from such a set before it votes.
    pub fn covers_write_quorums<'a>(&self, ids: impl IntoIterator<Item = &'a str> + Clone) -> bool {
        self.quorum_sets().iter().all(|s| count_in(s, ids.clone()) + s.write_quorum() > s.len())
    }
}

fn count_in<'a>(set: &MemberSet, ids: impl IntoIterator<Item = &'a str>) -> usize {
    let mut seen = BTreeSet::new();
    ids.into_iter().filter(|id| set.contains(id) && seen.insert(*id)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> MemberSet {
        MemberSet {
            members: ids.iter().map(|i| Member { id: i.to_string(), peer_addr: format!("{i}:7071") }).collect(),
            read_quorum: None,
            write_quorum: None,
        }
    }

    #[test]
    fn parses_yaml_and_json() {
        let y = "epoch: 3\nmembers:\n  - id: a\n    peer_addr: 127.0.0.1:1\n  - id: b\n    peer_addr: 127.0.0.1:2\n  - id: c\n    peer_addr: 127.0.0.1:3\n";
        let f = MembersFile::parse(y).unwrap();
        assert_eq!(f.epoch, 3);
        assert_eq!(f.current.read_quorum(), 2);
        let j = serde_json::to_string(&f).unwrap();
        assert_eq!(MembersFile::parse(&j).unwrap(), f);
        assert_eq!(MembersFile::parse(&f.to_yaml()).unwrap(), f);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(matches!(MembersFile::parse("epoch: [1"), Err(MembershipError::Parse(_))));
        assert!(matches!(
            MembersFile::parse("epoch: 0\nmembers: [{id: a, peer_addr: 'h:1'}]"),
            Err(MembershipError::Invalid(_))
        ));
        assert!(matches!(MembersFile::parse("epoch: 1\nmembers: []"), Err(MembershipError::Invalid(_))));
        assert!(matches!(
            MembersFile::parse("epoch: 1\nmembers: [{id: a, peer_addr: 'h:1'}, {id: a, peer_addr: 'h:2'}]"),
            Err(MembershipError::Invalid(_))
        ));
        assert!(matches!(
            MembersFile::parse("epoch: 1\nmembers: [{id: a, peer_addr: 'nope'}]"),
            Err(MembershipError::Invalid(_))
        ));
        let weak = "epoch: 1\nread_quorum: 1\nwrite_quorum: 2\nmembers: [{id: a, peer_addr: 'h:1'}, {id: b, peer_addr: 'h:2'}, {id: c, peer_addr: 'h:3'}]";
        assert!(MembersFile::parse(weak).unwrap_err().to_string().contains("must exceed"));
    }

    #[test]
    fn quorum_size_rules() {
        assert!(check_quorum_sizes(3, 2, 2).is_ok());
        assert!(check_quorum_sizes(5, 2, 4).is_ok());
        assert!(check_quorum_sizes(5, 4, 2).is_err()); // 2W <= N
        assert!(check_quorum_sizes(5, 2, 3).is_err()); // R + W <= N
        assert!(check_quorum_sizes(3, 0, 3).is_err());
        assert!(check_quorum_sizes(3, 4, 3).is_err());
    }

    #[test]
    fn joint_quorums_need_both_configurations() {
        let f =
            MembersFile { epoch: 2, current: set(&["a", "b", "c", "d", "e"]), previous: Some(set(&["a", "b", "c"])) };
        // 3 of the new five but only 1 of the old three.
        assert!(!f.is_write_quorum(["c", "d", "e"]));
        assert!(f.is_write_quorum(["b", "c", "d"]));
        assert!(!f.is_read_quorum(["a", "b"]));
        assert_eq!(f.all_members().len(), 5);
    }

    #[test]
    fn coverage_for_catch_up() {
        let f = MembersFile { epoch: 1, current: set(&["a", "b", "c"]), previous: None };
        // a lost its data: it must read both b and c (any write quorum of 2 meets {b,c} outside a).
        assert!(f.covers_write_quorums(["b", "c"]));
        assert!(!f.covers_write_quorums(["b"]));
    }
}
