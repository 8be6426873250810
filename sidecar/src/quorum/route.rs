//! Routing: which member runs a register's rounds (its *home*), and forwarding changes there.
//!
//! A sidecar proposes its own changes as long as nobody else writes the register: a lone
//! writer (one app's sequence, a divider member's own record, a stream's epoch) pays no extra
//! hop. Once it loses a round on a register to another proposer's ballot, the register counts
//! as contended here for [`super::proposer::CONTENDED_FOR`], and meanwhile the sidecar forwards
//! the register's changes to its home: a member picked by hashing the key over the live,
//! caught-up members of the current configuration, so every contending sidecar picks the same
//! one. The home batches and pipelines them into rounds that skip Prepare (one proposer, no
//! more pre-emption); after the window each sidecar tries on its own again, costing at most one
//! lost round per window while the contention lasts. Measured with one client
//! (`ordo-bench --ranges strict --clients 1 --only strict`, release, loaded machine): p50
//! 0.83-0.86 ms proposing locally against 1.1-1.2 ms through a forward. Forwarding is only an
//! optimisation: when the home does not answer in time, the
//! sidecar proposes itself (safety never depends on who proposes). A forwarded change that timed
//! out may still have been applied by the home: it is marked as sent, so if it finally fails its
//! caller learns that the outcome is unknown; a counter then skips IDs (never reuses them), and a
//! versioned write retried here is recognised by its write id and applied once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::change::Change;
use super::proposer::{dispatch, Inner, Pending};
use super::transport::Peers;
use crate::membership::{Member, MembersFile};

/// Longest wait for a home member before proposing locally.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(1000);
/// Forwards of one register in flight from one sidecar at a time.
pub(super) const FORWARDS_IN_FLIGHT: usize = 2;
/// How long a home that failed a forward is bypassed.
const HOME_SUSPECT_FOR: Duration = Duration::from_secs(2);

/// The home member of `key` among `live` members of the current configuration.
pub fn home_for<'a>(key: &str, cfg: &'a MembersFile, live: &[String]) -> Option<&'a Member> {
    let mut candidates: Vec<&Member> =
        cfg.current.members.iter().filter(|m| live.binary_search(&m.id).is_ok()).collect();
    if candidates.is_empty() {
        return None;
    }
    // FNV-1a: stable across processes and versions, unlike the std hasher.
    let h = key.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    Some(candidates[(h % candidates.len() as u64) as usize])
}

/// The home another member should run `key`'s changes, if not this sidecar: a live member not
/// suspected by this sidecar, so that sidecars agreeing on who is live also agree on a fallback
/// when one stops answering.
pub(super) fn remote_home<P: Peers>(inner: &Inner<P>, key: &str, cfg: &MembersFile) -> Option<Member> {
    let now = Instant::now();
    let mut suspects = inner.suspects.lock().expect("suspects lock");
    suspects.retain(|_, until| *until > now);
    let live: Vec<String> =
        inner.live.read().expect("live lock").iter().filter(|id| !suspects.contains_key(*id)).cloned().collect();
    home_for(key, cfg, &live).filter(|m| m.id != inner.id).cloned()
}

/// Forwards `batch` to the key's home (trying the next home when one fails, within half the
/// deadline), or, when `holder` is given, to that proposer once. Runs in its own task so the
/// register's worker keeps serving changes forwarded to it meanwhile (two sidecars forwarding
/// to each other must not wait on each other). What could not be forwarded goes back to the
/// worker to run here, marked as sent.
pub(super) async fn forward<P: Peers>(
    inner: Arc<Inner<P>>,
    key: String,
    mut batch: Vec<Pending>,
    holder: Option<Member>,
) {
    let cfg = inner.config.borrow().clone();
    let deadline = batch.iter().map(|p| p.deadline).min().expect("non-empty");
    let budget_end = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
    let changes: Vec<Change> = batch.iter().map(|p| p.change.clone()).collect();
    let mut target = holder.clone().or_else(|| remote_home(&inner, &key, &cfg));
    while let Some(to) = target {
        let timeout = budget_end.saturating_duration_since(Instant::now()).min(FORWARD_TIMEOUT);
        if timeout.is_zero() {
            break;
        }
        for p in &mut batch {
            p.sent = true;
        }
        inner.metrics.forwards.inc();
        match inner.peers.propose(&to, cfg.epoch, &key, &changes, timeout).await {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                for (p, o) in batch.drain(..).zip(outcomes) {
                    let _ = p.reply.send(o);
                }
                return;
            }
            Ok(_) => tracing::warn!(to = %to.id, "a forward came back with the wrong number of outcomes"),
            Err(e) => tracing::debug!(to = %to.id, error = %e, key, "forward failed"),
        }
        inner.suspects.lock().expect("suspects lock").insert(to.id.clone(), Instant::now() + HOME_SUSPECT_FOR);
        target = if holder.is_some() { None } else { remote_home(&inner, &key, &cfg) };
    }
    for mut p in batch {
        p.to_home = false;
        if holder.is_some() {
            p.to_holder = false;
        }
        dispatch(&inner, &key, p);
    }
}

/// Changes waiting to be forwarded to the home, and how many forwards are in flight.
#[derive(Default)]
pub(super) struct ForwardQueue {
    pub(super) in_flight: usize,
    pub(super) held: Vec<Pending>,
}

/// Forwards held changes to the home, one batch at a time, until none are left.
pub(super) async fn forward_queued<P: Peers>(inner: Arc<Inner<P>>, key: String, queue: Arc<Mutex<ForwardQueue>>) {
    loop {
        let batch = {
            let mut q = queue.lock().expect("forward queue");
            if q.held.is_empty() {
                q.in_flight -= 1;
                return;
            }
            std::mem::take(&mut q.held)
        };
        forward(inner.clone(), key.clone(), batch, None).await;
    }
}
