//! App API: the Sequencer and Cluster gRPC services, served on the Unix socket and loopback.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use ordo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::peer::GrpcPeers;
use crate::node::{Node, PeerView};
use crate::quorum::proposer::ChangeError;
use crate::sequencer::{SeqError, Sequencer};

/// Maps a sequencer error to a gRPC status.
pub fn seq_status(e: SeqError) -> Status {
    match &e {
        SeqError::InvalidName(_) | SeqError::InvalidCount { .. } => Status::invalid_argument(e.to_string()),
        SeqError::NotFound(_) => Status::not_found(e.to_string()),
        SeqError::Quorum(ChangeError::Unavailable { .. })
        | SeqError::Quorum(ChangeError::Closed)
        | SeqError::Timeout(_) => Status::unavailable(e.to_string()),
        SeqError::Quorum(ChangeError::Invalid(_)) => Status::failed_precondition(e.to_string()),
    }
}

/// The Sequencer service.
pub struct SequencerService {
    seq: Arc<Sequencer<GrpcPeers>>,
    node: Arc<Node<GrpcPeers>>,
}

impl SequencerService {
    /// A service over `seq`.
    pub fn new(seq: Arc<Sequencer<GrpcPeers>>, node: Arc<Node<GrpcPeers>>) -> Self {
        Self { seq, node }
    }

    fn record<T>(&self, method: &str, started: Instant, r: &Result<T, Status>) {
        let code = r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.node.metrics.observe_request(method, code, started.elapsed());
    }
}

type IdStream = Pin<Box<dyn Stream<Item = Result<pb::NextResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::sequencer_server::Sequencer for SequencerService {
    async fn next(&self, req: Request<pb::NextRequest>) -> Result<Response<pb::NextResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let out = self
            .seq
            .next(&r.sequence, r.count, r.strict)
            .await
            .map(|ids| Response::new(pb::NextResponse { sequence: r.sequence, start: ids.start, end: ids.end }))
            .map_err(seq_status);
        self.record(if r.strict { "NextStrict" } else { "Next" }, started, &out);
        out
    }

    type StreamStream = IdStream;

    async fn stream(&self, req: Request<pb::StreamRequest>) -> Result<Response<Self::StreamStream>, Status> {
        let r = req.into_inner();
        let batch = r.batch.max(1);
        self.seq.validate(&r.sequence, batch).map_err(seq_status)?;
        let seq = self.seq.clone();
        let name = r.sequence;
        // Each message is produced when the client asks for it: no unbounded buffering.
        let stream = futures::stream::unfold((seq, name, false), move |(seq, name, failed)| async move {
            if failed {
                return None;
            }
            match seq.next(&name, batch, false).await {
                Ok(ids) => {
                    let msg = pb::NextResponse { sequence: name.clone(), start: ids.start, end: ids.end };
                    Some((Ok(msg), (seq, name, false)))
                }
                Err(e) => Some((Err(seq_status(e)), (seq, name, true))),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn current(&self, req: Request<pb::CurrentRequest>) -> Result<Response<pb::CurrentResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let out = self
            .seq
            .current(&r.sequence)
            .await
            .map(|next| Response::new(pb::CurrentResponse { sequence: r.sequence, next }))
            .map_err(seq_status);
        self.record("Current", started, &out);
        out
    }
}

/// The Cluster service.
pub struct ClusterService {
    node: Arc<Node<GrpcPeers>>,
}

impl ClusterService {
    /// A service reporting on `node`.
    pub fn new(node: Arc<Node<GrpcPeers>>) -> Self {
        Self { node }
    }
}

/// Builds the status message of a node (also used by the admin `/status` endpoint).
pub fn status_message(node: &Node<GrpcPeers>) -> pb::StatusResponse {
    let st = node.status();
    let members = st
        .config
        .all_members()
        .into_iter()
        .map(|m| {
            if m.id == st.id {
                return pb::MemberStatus {
                    id: m.id.clone(),
                    peer_addr: m.peer_addr.clone(),
                    reachable: true,
                    caught_up: st.caught_up,
                    epoch: st.epoch,
                    pid: std::process::id(),
                    app_socket: node.endpoints.app_socket.clone(),
                    admin_addr: node.endpoints.admin_addr.clone(),
                    ready: st.ready,
                };
            }
            match st.peers.get(&m.id) {
                Some(PeerView::Up(p)) => pb::MemberStatus {
                    id: m.id.clone(),
                    peer_addr: m.peer_addr.clone(),
                    reachable: true,
                    caught_up: p.caught_up,
                    epoch: p.epoch,
                    pid: p.pid,
                    app_socket: p.app_socket.clone(),
                    admin_addr: p.admin_addr.clone(),
                    ready: p.ready,
                },
                _ => pb::MemberStatus { id: m.id.clone(), peer_addr: m.peer_addr.clone(), ..Default::default() },
            }
        })
        .collect();
    pb::StatusResponse {
        id: st.id.clone(),
        role: st.role.to_string(),
        pid: std::process::id(),
        epoch: st.epoch,
        ready: st.ready,
        caught_up: st.caught_up,
        members,
        app_socket: node.endpoints.app_socket.clone(),
        app_tcp: node.endpoints.app_tcp.clone(),
        admin_addr: node.endpoints.admin_addr.clone(),
        previous_members: st.config.previous.iter().flat_map(|p| p.members.iter().map(|m| m.id.clone())).collect(),
        migrated_epoch: st.migrated_epoch,
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status_message(&self.node)))
    }

    async fn ping(&self, _req: Request<pb::PingRequest>) -> Result<Response<pb::PingResponse>, Status> {
        Ok(Response::new(pb::PingResponse {}))
    }
}
