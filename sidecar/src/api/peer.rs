//! Peer API: the QuorumPeer gRPC server (authenticated by the shared token, epoch-checked,
//! validated) and [`GrpcPeers`], the client side implementing [`Peers`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ordo_proto::v1 as pb;
use ordo_proto::v1::quorum_peer_client::QuorumPeerClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::membership::Member;
use crate::node::Node;
use crate::quorum::acceptor::{AcceptReply, PrepareReply, RegisterState, Voter};
use crate::quorum::proposer::{Change, ChangeError, Outcome};
use crate::quorum::store::{check_page_limit, Page, RegisterStore, StoreError};
use crate::quorum::transport::{PeerError, Peers, ProbeInfo};
use crate::quorum::Ballot;
use crate::validate::validate_name;

/// Largest register value accepted from a peer.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Longest register key.
pub const MAX_KEY_BYTES: usize = 256;
/// Calls to one peer that a client may have cancelled recently and still recognise.
const PEER_RESET_STREAMS_REMEMBERED: usize = 4096;
/// Metadata key carrying the answering member's epoch on an epoch mismatch.
const EPOCH_HEADER: &str = "ordo-epoch";
/// Metadata key marking a refusal because the member is catching up.
const CATCHING_UP_HEADER: &str = "ordo-catching-up";

// ---------------------------------------------------------------------------------------------
// Validation and conversion (pure, property-tested).

/// Checks a register key: `/`-separated names.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("key must be 1..={MAX_KEY_BYTES} bytes"));
    }
    for part in key.split('/') {
        validate_name(part).map_err(|e| format!("key {key:?}: {e}"))?;
    }
    Ok(())
}

/// Converts and checks a ballot from the wire.
pub fn ballot_from_pb(b: Option<pb::Ballot>, what: &str) -> Result<Ballot, String> {
    let b = b.ok_or_else(|| format!("{what} ballot is missing"))?;
    if b.round == 0 {
        return Err(format!("{what} ballot round must be at least 1"));
    }
    validate_name(&b.proposer).map_err(|e| format!("{what} ballot proposer: {e}"))?;
    Ok(Ballot { round: b.round, proposer: b.proposer })
}

fn opt_ballot(b: Option<pb::Ballot>) -> Ballot {
    b.map(|b| Ballot { round: b.round, proposer: b.proposer }).unwrap_or_default()
}

fn ballot_to_pb(b: &Ballot) -> Option<pb::Ballot> {
    (!b.is_zero()).then(|| pb::Ballot { round: b.round, proposer: b.proposer.clone() })
}

/// A validated Accept request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptMsg {
    /// Register key.
    pub key: String,
    /// Ballot.
    pub ballot: Ballot,
    /// Value.
    pub value: Vec<u8>,
    /// Promise of the next ballot.
    pub promise_next: Option<Ballot>,
    /// Incarnations of the prepare quorum.
    pub voters: Vec<Voter>,
}

/// Validates an Accept request from the wire.
pub fn accept_from_pb(r: pb::AcceptRequest) -> Result<AcceptMsg, String> {
    validate_key(&r.key)?;
    let ballot = ballot_from_pb(r.ballot, "accept")?;
    let promise_next = match r.promise_next {
        None => None,
        Some(b) => {
            let next = ballot_from_pb(Some(b), "promise_next")?;
            if next <= ballot || next.proposer != ballot.proposer {
                return Err("promise_next must be a later ballot of the same proposer".into());
            }
            Some(next)
        }
    };
    if r.value.len() > MAX_VALUE_BYTES {
        return Err(format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", r.value.len()));
    }
    if r.voters.len() > 64 {
        return Err("more than 64 voters".into());
    }
    let voters = r
        .voters
        .into_iter()
        .map(|v| validate_name(&v.member).map(|_| Voter { member: v.member, incarnation: v.incarnation }))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("voter: {e}"))?;
    Ok(AcceptMsg { key: r.key, ballot, value: r.value, promise_next, voters })
}

/// Most changes in one forwarded batch.
pub const MAX_FORWARDED: usize = 4096;

/// Converts a change for the wire.
pub fn change_to_pb(c: &Change) -> pb::Change {
    use pb::change::Kind;
    let kind = match c {
        Change::Read => Kind::Read(pb::ChangeRead {}),
        Change::Add { n, start } => Kind::Add(pb::ChangeAdd { n: *n, start: *start }),
        Change::CompareAndSet { expect, new } => Kind::CompareAndSet(pb::ChangeCompareAndSet {
            expect_present: expect.is_some(),
            expect: expect.clone().unwrap_or_default(),
            new: new.clone(),
        }),
    };
    pb::Change { kind: Some(kind) }
}

/// Converts and checks a change from the wire.
pub fn change_from_pb(c: pb::Change) -> Result<Change, String> {
    use pb::change::Kind;
    match c.kind.ok_or("change has no kind")? {
        Kind::Read(_) => Ok(Change::Read),
        Kind::Add(a) => Ok(Change::Add { n: a.n, start: a.start }),
        Kind::CompareAndSet(cas) => {
            if cas.expect.len() > MAX_VALUE_BYTES || cas.new.len() > MAX_VALUE_BYTES {
                return Err(format!("compare-and-set values are limited to {MAX_VALUE_BYTES} bytes"));
            }
            Ok(Change::CompareAndSet { expect: cas.expect_present.then_some(cas.expect), new: cas.new })
        }
    }
}

fn outcome_to_pb(o: Result<Outcome, ChangeError>) -> pb::Outcome {
    match o {
        Ok(o) => pb::Outcome {
            error: String::new(),
            before_present: o.before.is_some(),
            before: o.before.unwrap_or_default(),
            after_present: o.after.is_some(),
            after: o.after.unwrap_or_default(),
            applied: o.applied,
            unavailable: false,
        },
        Err(e) => pb::Outcome {
            unavailable: !matches!(e, ChangeError::Invalid(_)),
            error: e.to_string(),
            ..Default::default()
        },
    }
}

fn outcome_from_pb(o: pb::Outcome) -> Result<Outcome, ChangeError> {
    if o.unavailable {
        return Err(ChangeError::Unavailable {
            answered: 0,
            total: 0,
            detail: format!("at the home member: {}", o.error),
        });
    }
    if !o.error.is_empty() {
        return Err(ChangeError::Invalid(o.error));
    }
    Ok(Outcome {
        before: o.before_present.then_some(o.before),
        after: o.after_present.then_some(o.after),
        applied: o.applied,
    })
}

/// Validates a Dump request: the cursor (`None` for the first page) and the page size.
pub fn dump_request_from_pb(r: &pb::DumpRequest) -> Result<(Option<String>, usize), String> {
    let limit = check_page_limit(usize::try_from(r.limit).unwrap_or(usize::MAX))?;
    if r.after_key.is_empty() {
        return Ok((None, limit));
    }
    validate_key(&r.after_key).map_err(|e| format!("after_key: {e}"))?;
    Ok((Some(r.after_key.clone()), limit))
}

fn page_to_pb(page: Page) -> pb::DumpResponse {
    pb::DumpResponse {
        caught_up: page.caught_up,
        incarnation: page.incarnation,
        registers: page
            .registers
            .into_iter()
            .map(|(key, r)| pb::RegisterState {
                key,
                promised: ballot_to_pb(&r.promised),
                accepted: ballot_to_pb(&r.accepted),
                has_value: r.value.is_some(),
                value: r.value.unwrap_or_default(),
            })
            .collect(),
        fences: page.fences.into_iter().map(|v| pb::Voter { member: v.member, incarnation: v.incarnation }).collect(),
        next_after_key: page.next.unwrap_or_default(),
    }
}

fn page_from_pb(r: pb::DumpResponse) -> Page {
    Page {
        caught_up: r.caught_up,
        incarnation: r.incarnation,
        registers: r
            .registers
            .into_iter()
            .map(|s| {
                let reg = RegisterState {
                    promised: opt_ballot(s.promised),
                    accepted: opt_ballot(s.accepted),
                    value: s.has_value.then_some(s.value),
                };
                (s.key, reg)
            })
            .collect(),
        fences: r.fences.into_iter().map(|v| Voter { member: v.member, incarnation: v.incarnation }).collect(),
        next: (!r.next_after_key.is_empty()).then_some(r.next_after_key),
    }
}

// ---------------------------------------------------------------------------------------------
// Server.

/// The QuorumPeer service of a member.
pub struct PeerService {
    node: Arc<Node<GrpcPeers>>,
    store: RegisterStore,
}

impl PeerService {
    /// The service, wrapped in the token check.
    pub fn server(
        node: Arc<Node<GrpcPeers>>,
        store: RegisterStore,
        token: String,
    ) -> InterceptedService<
        pb::quorum_peer_server::QuorumPeerServer<PeerService>,
        impl tonic::service::Interceptor + Clone,
    > {
        let expected = format!("Bearer {token}");
        let check = move |req: Request<()>| -> Result<Request<()>, Status> {
            let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                Ok(req)
            } else {
                Err(Status::unauthenticated("peer token missing or wrong"))
            }
        };
        let svc = pb::quorum_peer_server::QuorumPeerServer::new(PeerService { node, store })
            .max_decoding_message_size(MAX_VALUE_BYTES + 64 * 1024);
        InterceptedService::new(svc, check)
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), Status> {
        let mine = self.node.epoch();
        if epoch != mine {
            self.node.epoch_hint(epoch);
            let mut s = Status::failed_precondition(format!(
                "epoch mismatch: the request is from epoch {epoch}, member {} is at epoch {mine}",
                self.node.id
            ));
            s.metadata_mut().insert(EPOCH_HEADER, MetadataValue::from(mine));
            return Err(s);
        }
        Ok(())
    }

    fn check_voting(&self) -> Result<(), Status> {
        if !self.node.config().contains(&self.node.id) {
            return Err(Status::failed_precondition(format!(
                "{} is not a member of configuration epoch {}",
                self.node.id,
                self.node.epoch()
            )));
        }
        Ok(())
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotCaughtUp => {
            let mut s = Status::unavailable(e.to_string());
            s.metadata_mut().insert(CATCHING_UP_HEADER, MetadataValue::from_static("1"));
            s
        }
        StoreError::Invalid(m) => Status::invalid_argument(m),
        other => Status::unavailable(other.to_string()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl pb::quorum_peer_server::QuorumPeer for PeerService {
    async fn prepare(&self, req: Request<pb::PrepareRequest>) -> Result<Response<pb::PrepareResponse>, Status> {
        let r = req.into_inner();
        self.check_epoch(r.epoch)?;
        self.check_voting()?;
        validate_key(&r.key).map_err(Status::invalid_argument)?;
        let ballot = ballot_from_pb(r.ballot, "prepare").map_err(Status::invalid_argument)?;
        let reply = self.store.prepare(r.key, ballot).await.map_err(store_status)?;
        let incarnation = self.store.meta().incarnation;
        Ok(Response::new(match reply {
            PrepareReply::Promised { accepted, value } => pb::PrepareResponse {
                ok: true,
                promised: None,
                accepted: ballot_to_pb(&accepted),
                has_value: value.is_some(),
                value: value.unwrap_or_default(),
                incarnation,
            },
            PrepareReply::Rejected { promised } => {
                pb::PrepareResponse { ok: false, promised: ballot_to_pb(&promised), incarnation, ..Default::default() }
            }
        }))
    }

    async fn accept(&self, req: Request<pb::AcceptRequest>) -> Result<Response<pb::AcceptResponse>, Status> {
        let r = req.into_inner();
        self.check_epoch(r.epoch)?;
        self.check_voting()?;
        let m = accept_from_pb(r).map_err(Status::invalid_argument)?;
        let reply =
            self.store.accept(m.key, m.ballot, m.value, m.promise_next, m.voters).await.map_err(store_status)?;
        let incarnation = self.store.meta().incarnation;
        Ok(Response::new(match reply {
            AcceptReply::Accepted => pb::AcceptResponse { ok: true, promised: None, incarnation },
            AcceptReply::Rejected { promised } => {
                pb::AcceptResponse { ok: false, promised: ballot_to_pb(&promised), incarnation }
            }
            AcceptReply::StaleVoter { member } => {
                return Err(Status::aborted(format!(
                    "the round counted a promise of an old incarnation of {member}, which lost its data since"
                )))
            }
        }))
    }

    async fn fence(&self, req: Request<pb::FenceRequest>) -> Result<Response<pb::FenceResponse>, Status> {
        let r = req.into_inner();
        self.check_epoch(r.epoch)?;
        validate_name(&r.member).map_err(|e| Status::invalid_argument(format!("member: {e}")))?;
        if !self.node.config().contains(&r.member) {
            return Err(Status::failed_precondition(format!("{} is not a member of epoch {}", r.member, r.epoch)));
        }
        self.store.fence(r.member, r.incarnation).await.map_err(store_status)?;
        Ok(Response::new(pb::FenceResponse {}))
    }

    async fn dump(&self, req: Request<pb::DumpRequest>) -> Result<Response<pb::DumpResponse>, Status> {
        let r = req.into_inner();
        self.check_epoch(r.epoch)?;
        let (after, limit) = dump_request_from_pb(&r).map_err(Status::invalid_argument)?;
        let page = self.store.scan(after, limit).await.map_err(store_status)?;
        Ok(Response::new(page_to_pb(page)))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let r = req.into_inner();
        self.check_epoch(r.epoch)?;
        validate_key(&r.key).map_err(Status::invalid_argument)?;
        if r.changes.is_empty() || r.changes.len() > MAX_FORWARDED {
            return Err(Status::invalid_argument(format!("a forward carries 1..={MAX_FORWARDED} changes")));
        }
        let changes = r
            .changes
            .into_iter()
            .map(change_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let timeout = Duration::from_millis(r.timeout_ms.clamp(1, 30_000));
        let deadline = tokio::time::Instant::now() + timeout;
        let outcomes = self.node.proposer.change_forwarded(&r.key, changes, deadline).await;
        Ok(Response::new(pb::ProposeResponse { outcomes: outcomes.into_iter().map(outcome_to_pb).collect() }))
    }

    async fn probe(&self, req: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let r = req.into_inner();
        if r.epoch > self.node.epoch() {
            self.node.epoch_hint(r.epoch);
        }
        let st = self.node.status();
        Ok(Response::new(pb::ProbeResponse {
            id: st.id,
            epoch: st.epoch,
            caught_up: st.caught_up,
            ready: st.ready,
            pid: std::process::id(),
            app_socket: self.node.endpoints.app_socket.clone(),
            admin_addr: self.node.endpoints.admin_addr.clone(),
            migrated_epoch: st.migrated_epoch,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Client.

/// gRPC client to the other members; calls to this member's own id go straight to its store.
pub struct GrpcPeers {
    local: OnceLock<(String, RegisterStore)>,
    token: String,
    channels: Mutex<HashMap<String, Channel>>,
}

type AuthClient = QuorumPeerClient<InterceptedService<Channel, AuthHeader>>;

/// Adds the peer token to every call.
#[derive(Clone)]
pub struct AuthHeader(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AuthHeader {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

impl GrpcPeers {
    /// A client presenting `token`.
    pub fn new(token: String) -> Self {
        Self { local: OnceLock::new(), token, channels: Mutex::new(HashMap::new()) }
    }

    /// Routes calls for member `id` to `store` in-process.
    pub fn set_local(&self, id: String, store: RegisterStore) {
        let _ = self.local.set((id, store));
    }

    fn local_store(&self, to: &Member) -> Option<&RegisterStore> {
        self.local.get().filter(|(id, _)| *id == to.id).map(|(_, s)| s)
    }

    fn client(&self, to: &Member) -> Result<AuthClient, PeerError> {
        let channel = {
            let mut channels = self.channels.lock().expect("channels lock");
            match channels.get(&to.peer_addr) {
                Some(c) => c.clone(),
                None => {
                    let c = Endpoint::from_shared(format!("http://{}", to.peer_addr))
                        .map_err(|e| PeerError::Refused(format!("bad peer address {}: {e}", to.peer_addr)))?
                        .connect_timeout(Duration::from_millis(500))
                        .tcp_nodelay(true)
                        // Rounds drop the calls still running once a quorum answered; frames
                        // the peer already sent for them must be ignored, not counted as errors
                        // (h2 closes the connection after 1024 such errors otherwise).
                        .http2_max_concurrent_reset_streams(PEER_RESET_STREAMS_REMEMBERED)
                        .http2_keep_alive_interval(Duration::from_secs(10))
                        .keep_alive_while_idle(true)
                        .connect_lazy();
                    channels.insert(to.peer_addr.clone(), c.clone());
                    c
                }
            }
        };
        let header = MetadataValue::try_from(format!("Bearer {}", self.token))
            .map_err(|_| PeerError::Refused("peer token is not valid header text".into()))?;
        Ok(QuorumPeerClient::with_interceptor(channel, AuthHeader(header)).max_decoding_message_size(64 << 20))
    }
}

fn peer_error(s: Status) -> PeerError {
    if let Some(theirs) = s.metadata().get(EPOCH_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
        return PeerError::EpochMismatch { theirs };
    }
    if s.metadata().get(CATCHING_UP_HEADER).is_some() {
        return PeerError::NotCaughtUp;
    }
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            PeerError::Unreachable(s.message().to_string())
        }
        _ => PeerError::Refused(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn local_error(e: StoreError) -> PeerError {
    match e {
        StoreError::NotCaughtUp => PeerError::NotCaughtUp,
        StoreError::Invalid(m) => PeerError::Refused(m),
        other => PeerError::Unreachable(other.to_string()),
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<T, PeerError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(peer_error(s)),
        Err(_) => Err(PeerError::Unreachable(format!("no answer within {} ms", timeout.as_millis()))),
    }
}

fn timed<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

impl Peers for GrpcPeers {
    async fn propose(
        &self,
        to: &Member,
        epoch: u64,
        key: &str,
        changes: &[Change],
        timeout: Duration,
    ) -> Result<Vec<Result<Outcome, ChangeError>>, PeerError> {
        let mut c = self.client(to)?;
        let req = pb::ProposeRequest {
            epoch,
            key: key.to_string(),
            changes: changes.iter().map(change_to_pb).collect(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let r = with_timeout(timeout, c.propose(timed(req, timeout))).await?;
        Ok(r.outcomes.into_iter().map(outcome_from_pb).collect())
    }

    async fn prepare(
        &self,
        to: &Member,
        epoch: u64,
        key: &str,
        ballot: &Ballot,
        timeout: Duration,
    ) -> Result<(PrepareReply, u64), PeerError> {
        if let Some(store) = self.local_store(to) {
            let r = store.prepare(key.to_string(), ballot.clone()).await.map_err(local_error)?;
            return Ok((r, store.meta().incarnation));
        }
        let mut c = self.client(to)?;
        let req = pb::PrepareRequest { epoch, key: key.to_string(), ballot: ballot_to_pb(ballot) };
        let r = with_timeout(timeout, c.prepare(timed(req, timeout))).await?;
        let reply = if r.ok {
            PrepareReply::Promised { accepted: opt_ballot(r.accepted), value: r.has_value.then_some(r.value) }
        } else {
            PrepareReply::Rejected { promised: opt_ballot(r.promised) }
        };
        Ok((reply, r.incarnation))
    }

    async fn accept(
        &self,
        to: &Member,
        epoch: u64,
        key: &str,
        ballot: &Ballot,
        value: &[u8],
        promise_next: Option<&Ballot>,
        voters: &[Voter],
        timeout: Duration,
    ) -> Result<(AcceptReply, u64), PeerError> {
        if let Some(store) = self.local_store(to) {
            let r = store
                .accept(key.to_string(), ballot.clone(), value.to_vec(), promise_next.cloned(), voters.to_vec())
                .await
                .map_err(local_error)?;
            return Ok((r, store.meta().incarnation));
        }
        let mut c = self.client(to)?;
        let req = pb::AcceptRequest {
            epoch,
            key: key.to_string(),
            ballot: ballot_to_pb(ballot),
            value: value.to_vec(),
            promise_next: promise_next.and_then(ballot_to_pb),
            voters: voters.iter().map(|v| pb::Voter { member: v.member.clone(), incarnation: v.incarnation }).collect(),
        };
        match with_timeout(timeout, c.accept(timed(req, timeout))).await {
            Ok(r) if r.ok => Ok((AcceptReply::Accepted, r.incarnation)),
            Ok(r) => Ok((AcceptReply::Rejected { promised: opt_ballot(r.promised) }, r.incarnation)),
            Err(PeerError::Refused(m)) if m.starts_with("Aborted") => Ok((AcceptReply::StaleVoter { member: m }, 0)),
            Err(e) => Err(e),
        }
    }

    async fn fence(
        &self,
        to: &Member,
        epoch: u64,
        member: &str,
        incarnation: u64,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        if let Some(store) = self.local_store(to) {
            return store.fence(member.to_string(), incarnation).await.map_err(local_error);
        }
        let mut c = self.client(to)?;
        let req = pb::FenceRequest { epoch, member: member.to_string(), incarnation };
        with_timeout(timeout, c.fence(timed(req, timeout))).await.map(|_| ())
    }

    async fn dump(
        &self,
        to: &Member,
        epoch: u64,
        after: Option<&str>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Page, PeerError> {
        if let Some(store) = self.local_store(to) {
            return store.scan(after.map(String::from), limit).await.map_err(local_error);
        }
        let mut c = self.client(to)?;
        let limit = u32::try_from(limit).map_err(|_| PeerError::Refused(format!("page size {limit} is too large")))?;
        let req = pb::DumpRequest { epoch, after_key: after.unwrap_or_default().to_string(), limit };
        let r = with_timeout(timeout, c.dump(timed(req, timeout))).await?;
        Ok(page_from_pb(r))
    }

    async fn probe(&self, to: &Member, epoch: u64, timeout: Duration) -> Result<ProbeInfo, PeerError> {
        let mut c = self.client(to)?;
        let r = with_timeout(timeout, c.probe(timed(pb::ProbeRequest { epoch }, timeout))).await?;
        Ok(ProbeInfo {
            id: r.id,
            epoch: r.epoch,
            caught_up: r.caught_up,
            ready: r.ready,
            pid: r.pid,
            app_socket: r.app_socket,
            admin_addr: r.admin_addr,
            migrated_epoch: r.migrated_epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys() {
        assert!(validate_key("seq/orders").is_ok());
        assert!(validate_key("seq//x").is_err());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"a".repeat(300)).is_err());
    }

    #[test]
    fn accept_validation() {
        let ok = pb::AcceptRequest {
            epoch: 1,
            key: "seq/a".into(),
            ballot: Some(pb::Ballot { round: 3, proposer: "m-0".into() }),
            value: vec![0; 8],
            promise_next: Some(pb::Ballot { round: 4, proposer: "m-0".into() }),
            voters: vec![pb::Voter { member: "m-1".into(), incarnation: 7 }],
        };
        assert!(accept_from_pb(ok.clone()).is_ok());
        let mut bad = ok.clone();
        bad.ballot = None;
        assert!(accept_from_pb(bad).unwrap_err().contains("missing"));
        let mut bad = ok.clone();
        bad.promise_next = Some(pb::Ballot { round: 9, proposer: "other".into() });
        assert!(accept_from_pb(bad).is_err());
        let mut bad = ok;
        bad.value = vec![0; MAX_VALUE_BYTES + 1];
        assert!(accept_from_pb(bad).unwrap_err().contains("limit"));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder or the validation, whatever they decode to.
        #[test]
        fn malformed_peer_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = <pb::AcceptRequest as prost::Message>::decode(bytes.as_slice()) {
                let _ = accept_from_pb(r);
            }
            if let Ok(r) = <pb::PrepareRequest as prost::Message>::decode(bytes.as_slice()) {
                let _ = validate_key(&r.key);
                let _ = ballot_from_pb(r.ballot, "prepare");
            }
        }
    }
}
