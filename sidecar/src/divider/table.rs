//! The assignment table a sidecar computes from what it read: the key set, the live members
//! with their affinities, and the keys handed back (a key handed back by a live session is
//! assigned among the other members). Pure: every sidecar that read the same registers
//! computes the same table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ordo_contract::assign::{assign, Member};

/// A live member as the table sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMember {
    /// Member id.
    pub id: String,
    /// Its live session.
    pub session: String,
    /// Affinity.
    pub affinity: u32,
    /// Address.
    pub address: String,
}

/// Who should own which key.
#[derive(Debug, Clone, Default)]
pub struct AssignmentTable {
    /// Grows with every change of the assignment's inputs: the key-set counter plus the sum of
    /// the member records' `changed` fields (renewals leave it alone; see
    /// [`super::records::MemberRecord::changed`]).
    pub version: u64,
    /// Live members, by id.
    pub members: Vec<TableMember>,
    /// Keys, sorted.
    pub keys: Arc<Vec<String>>,
    /// `owners[i]`: index into `members` of the owner of `keys[i]`.
    pub owners: Vec<Option<u32>>,
}

impl AssignmentTable {
    /// Computes the table. `handbacks` maps a key to the sessions that handed it back.
    pub fn compute(
        version: u64,
        mut members: Vec<TableMember>,
        keys: Arc<Vec<String>>,
        handbacks: &BTreeMap<String, BTreeSet<String>>,
    ) -> Self {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let candidates: Vec<Member> =
            members.iter().map(|m| Member { id: m.id.clone(), affinity: m.affinity }).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut owners = assign(&refs, &candidates);
        for (key, sessions) in handbacks {
            let Ok(i) = keys.binary_search(key) else { continue };
            let others: Vec<Member> = members
                .iter()
                .map(|m| Member {
                    id: m.id.clone(),
                    affinity: if sessions.contains(&m.session) { 0 } else { m.affinity },
                })
                .collect();
            owners[i] = assign(&[key.as_str()], &others)[0];
        }
        Self { version, members, keys, owners }
    }

    /// The member that should own `key` (`None`: unknown key, or no member with affinity > 0).
    pub fn owner_of(&self, key: &str) -> Option<&TableMember> {
        let i = self.keys.binary_search_by(|k| k.as_str().cmp(key)).ok()?;
        self.owners[i].map(|m| &self.members[m as usize])
    }

    /// One search for both questions: `None` when `key` is not in the key set, else its owner
    /// (`Some(None)`: no member with affinity > 0).
    pub fn lookup(&self, key: &str) -> Option<Option<&TableMember>> {
        let i = self.keys.binary_search_by(|k| k.as_str().cmp(key)).ok()?;
        Some(self.owners[i].map(|m| &self.members[m as usize]))
    }

    /// True when the key is in the key set.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok()
    }

    /// Keys assigned to `member`.
    pub fn keys_of(&self, member: &str) -> Vec<String> {
        self.iter_keys_of(member).cloned().collect()
    }

    /// Keys assigned to `member`, borrowed (a pass over the table allocates nothing).
    pub fn iter_keys_of<'a>(&'a self, member: &str) -> impl Iterator<Item = &'a String> + 'a {
        let idx = self.members.iter().position(|m| m.id == member).map(|i| i as u32);
        self.keys.iter().zip(&self.owners).filter(move |(_, o)| idx.is_some() && **o == idx).map(|(k, _)| k)
    }

    /// True when some member has affinity > 0.
    pub fn anyone_works(&self) -> bool {
        self.members.iter().any(|m| m.affinity > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, affinity: u32) -> TableMember {
        TableMember { id: id.into(), session: format!("s-{id}"), affinity, address: String::new() }
    }

    #[test]
    fn zero_affinity_gets_nothing_and_a_handback_goes_elsewhere() {
        let keys: Arc<Vec<String>> = Arc::new((0..200).map(|i| format!("k{i:03}")).collect());
        let t = AssignmentTable::compute(1, vec![m("b", 1), m("a", 1), m("z", 0)], keys.clone(), &BTreeMap::new());
        assert!(t.keys_of("z").is_empty());
        assert_eq!(t.keys_of("a").len() + t.keys_of("b").len(), 200);
        let key = t.keys_of("a")[0].clone();
        let hb = BTreeMap::from([(key.clone(), BTreeSet::from(["s-a".to_string()]))]);
        let t2 = AssignmentTable::compute(2, vec![m("a", 1), m("b", 1), m("z", 0)], keys, &hb);
        assert_eq!(t2.owner_of(&key).map(|m| m.id.as_str()), Some("b"));
        assert_eq!(t2.keys_of("a").len(), t.keys_of("a").len() - 1);
        assert!(t2.owner_of("nope").is_none() && !t2.contains("nope"));
        assert!(t2.lookup("nope").is_none());
        assert_eq!(t2.lookup(&key).flatten().map(|m| m.id.as_str()), Some("b"));
        let z0 = AssignmentTable::compute(3, vec![m("z", 0)], t2.keys.clone(), &BTreeMap::new());
        assert_eq!(z0.lookup(&key).map(|o| o.is_none()), Some(true), "in the key set, no owner");
        assert_eq!(t2.iter_keys_of("a").count(), t2.keys_of("a").len());
        assert_eq!(t2.iter_keys_of("nobody").count(), 0);
    }
}
