//! Shared by the simulation tests.

use ordo_sidecar::membership::{Member, MemberSet, MembersFile};

/// Epoch 1 with `ids` as members (majority quorums) at simulated addresses.
pub fn members(ids: &[String]) -> MembersFile {
    MembersFile {
        epoch: 1,
        current: MemberSet {
            members: ids.iter().map(|i| Member { id: i.clone(), peer_addr: format!("sim:{i}") }).collect(),
            read_quorum: None,
            write_quorum: None,
        },
        previous: None,
    }
}
