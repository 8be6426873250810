//! What the quorum logic needs from the network, as a trait: the gRPC implementation lives in
//! [`crate::api::peer`], tests can substitute an in-memory one.

use std::future::Future;
use std::time::Duration;

use super::acceptor::{AcceptReply, PrepareReply, Voter};
use super::change::{Change, ChangeError, Outcome};
use super::store::Page;
use super::Ballot;
use crate::membership::Member;

/// Why a peer call did not produce a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Network failure or deadline.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer is at another configuration epoch.
    #[error("epoch mismatch: the peer is at epoch {theirs}")]
    EpochMismatch {
        /// The peer's epoch.
        theirs: u64,
    },
    /// The peer is catching up and does not vote.
    #[error("catching up")]
    NotCaughtUp,
    /// The peer (or the member a request names) is not in the peer's configuration.
    #[error("{member} is not a member of the peer's configuration (epoch {epoch})")]
    NotMember {
        /// The member.
        member: String,
        /// The peer's epoch.
        epoch: u64,
    },
    /// Any other refusal (authentication, validation, not a member).
    #[error("refused: {0}")]
    Refused(String),
}

/// State a peer reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeInfo {
    /// Member id.
    pub id: String,
    /// Its configuration epoch.
    pub epoch: u64,
    /// It votes.
    pub caught_up: bool,
    /// Its readiness.
    pub ready: bool,
    /// Process id.
    pub pid: u32,
    /// Its app socket path.
    pub app_socket: String,
    /// Its admin address.
    pub admin_addr: String,
    /// Highest joint epoch it finished migrating.
    pub migrated_epoch: u64,
}

/// A key an acceptor holds, with the state of its highest accepted ballot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// Register key.
    pub key: String,
    /// Ballot of the accepted value.
    pub accepted: Ballot,
    /// The accepted value is a live versioned value (not absent, not a tombstone).
    pub live: bool,
}

/// One acceptor's page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys in order.
    pub keys: Vec<ListedKey>,
    /// No keys under the prefix follow the last one.
    pub complete: bool,
}

/// Calls to other members' acceptors. `epoch` is the caller's configuration epoch.
pub trait Peers: Send + Sync + 'static {
    /// CASPaxos phase 1; returns the reply and the acceptor's incarnation.
    fn prepare(
        &self,
        to: &Member,
        epoch: u64,
        key: &str,
        ballot: &Ballot,
        timeout: Duration,
    ) -> impl Future<Output = Result<(PrepareReply, u64), PeerError>> + Send;

    /// CASPaxos phase 2; returns the reply and the acceptor's incarnation.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &self,
        to: &Member,
        epoch: u64,
        key: &str,
        ballot: &Ballot,
        value: Option<&[u8]>,
        promise_next: Option<&Ballot>,
        voters: &[Voter],
        timeout: Duration,
    ) -> impl Future<Output = Result<(AcceptReply, u64), PeerError>> + Send;

    /// Records `member`'s new incarnation on the peer.
    fn fence(
        &self,
        to: &Member,
        epoch: u64,
        member: &str,
        incarnation: u64,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), PeerError>> + Send;

    /// One page of the peer's registers: up to `limit` with keys after `after` (from the first
    /// key when `None`), read from one commit (see [`Page`]).
    fn dump(
        &self,
        to: &Member,
        epoch: u64,
        after: Option<&str>,
        limit: usize,
        timeout: Duration,
    ) -> impl Future<Output = Result<Page, PeerError>> + Send;

    /// Up to `limit` keys under `prefix` after `after` that the peer holds, in key order.
    fn list_keys(
        &self,
        to: &Member,
        epoch: u64,
        prefix: &str,
        after: &str,
        limit: usize,
        timeout: Duration,
    ) -> impl Future<Output = Result<KeyPage, PeerError>> + Send;

    /// The peer's state.
    fn probe(
        &self,
        to: &Member,
        epoch: u64,
        timeout: Duration,
    ) -> impl Future<Output = Result<ProbeInfo, PeerError>> + Send;

    /// Runs `changes` to register `key` through the peer's proposer (forwarding to the home).
    fn propose(
        &self,
        to: &Member,
        epoch: u64,
        key: &str,
        changes: &[Change],
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<Result<Outcome, ChangeError>>, PeerError>> + Send;
}

/// Tries of one page before giving up on a peer (a long walk should not restart from its
/// first page because one message was lost).
const PAGE_TRIES: usize = 4;
/// Pause before asking for a page again.
const PAGE_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Fetches one page of `from`'s registers (retrying an unreachable peer a few times) and
/// checks it ([`Page::check`]): a malformed page (keys out of order, a cursor that does not
/// advance) is refused, so that a walk built on these pages covers every key once and ends.
pub async fn fetch_page<P: Peers>(
    peers: &P,
    from: &Member,
    epoch: u64,
    after: Option<&str>,
    limit: usize,
    timeout: Duration,
) -> Result<Page, PeerError> {
    let mut tries = 1;
    let page = loop {
        match peers.dump(from, epoch, after, limit, timeout).await {
            Err(PeerError::Unreachable(_)) if tries < PAGE_TRIES => {
                tries += 1;
                tokio::time::sleep(PAGE_RETRY_PAUSE).await;
            }
            done => break done?,
        }
    };
    page.check(after).map_err(|e| PeerError::Refused(format!("malformed page: {e}")))?;
    Ok(page)
}
