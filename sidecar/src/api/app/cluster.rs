//! The Cluster gRPC service (`ordo.v1.Cluster`): this sidecar's status and its view of the
//! members, and a no-op Ping.

use std::sync::Arc;

use ordo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::AppServices;
use crate::api::peer::GrpcPeers;
use crate::node::{Node, PeerView};

/// The cluster's app services.
pub fn services(node: &Arc<Node<GrpcPeers>>) -> AppServices {
    AppServices::default().with_service(pb::cluster_server::ClusterServer::new(ClusterService::new(node.clone())))
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
