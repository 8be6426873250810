//! Migration of every register to the new configuration during a joint epoch.
//!
//! In a joint epoch every quorum is a quorum of the previous *and* the current member set, so
//! it intersects every quorum of either. Rewriting each register once through such a quorum
//! (an identity change at a new ballot) leaves it accepted by a write quorum of the current
//! set, so once every register is migrated, quorums of the current set alone see every value
//! and the next epoch may drop the previous set. Keys are listed from a read quorum (in both
//! sets) of members already at this epoch: those refuse rounds of older epochs, so no register
//! written by an older configuration can appear after the listing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::proposer::{Change, Proposer};
use super::transport::Peers;
use crate::membership::MembersFile;

/// Deadline of one identity round.
const ROUND_DEADLINE: Duration = Duration::from_secs(5);

/// Lists every register of the joint configuration and rewrites each through a joint quorum.
/// Returns how many registers were rewritten.
pub async fn migrate<P: Peers>(proposer: &Proposer<P>, peers: &P, cfg: &Arc<MembersFile>) -> Result<usize, String> {
    let members = cfg.all_members();
    let dumps = join_all(
        members.iter().map(|m| async move { (m.id.as_str(), peers.dump(m, cfg.epoch, ROUND_DEADLINE).await) }),
    )
    .await;
    let answered: Vec<&str> =
        dumps.iter().filter(|(_, d)| d.as_ref().is_ok_and(|s| s.caught_up)).map(|(id, _)| *id).collect();
    if !cfg.is_read_quorum(answered.iter().copied()) {
        let errors: Vec<String> =
            dumps.iter().filter_map(|(id, d)| d.as_ref().err().map(|e| format!("{id}: {e}"))).collect();
        return Err(format!(
            "only {} caught-up member(s) at epoch {} answered the listing ({}); {}",
            answered.len(),
            cfg.epoch,
            answered.join(", "),
            errors.join("; ")
        ));
    }
    let keys: BTreeSet<String> = dumps
        .iter()
        .filter_map(|(_, d)| d.as_ref().ok())
        .flat_map(|s| s.registers.iter().filter(|(_, r)| r.value.is_some()).map(|(k, _)| k.clone()))
        .collect();
    for key in &keys {
        proposer
            .change(key, Change::Read, Instant::now() + ROUND_DEADLINE)
            .await
            .map_err(|e| format!("rewriting register {key}: {e}"))?;
    }
    Ok(keys.len())
}
