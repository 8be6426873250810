//! The Divider gRPC service (`ordo.v1.Divider`): a thin adapter over [`crate::divider`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use ordo_contract::divider::DividerConfig;
use ordo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::registers::register_status;
use super::AppServices;
use crate::api::peer::GrpcPeers;
use crate::config::DividerArgs;
use crate::divider::handoff::StopReason;
use crate::divider::lease::LeaseTiming;
use crate::divider::runtime::{Divider, DividerError, DividerSettings, Dividers, Event};
use crate::divider::table::AssignmentTable;
use crate::node::Node;

/// Largest page of `Assignment` and `ListKeys`.
pub const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 1000;

/// The dividers this sidecar serves, configured by `args` (and its config file, already loaded);
/// the server also makes their sessions leave on SIGTERM ([`Dividers::leave_all`]).
pub fn dividers(
    args: &DividerArgs,
    config: Option<DividerConfig>,
    timeout: Duration,
    node: &Arc<Node<GrpcPeers>>,
) -> Arc<Dividers<GrpcPeers>> {
    // A WorkDivider's pods all get the same config file, whose timing wins over the flags (member
    // records carry the holder's timing, so observers wait at least that long either way).
    let (lease_ms, stop_timeout_ms) = match &config {
        Some(c) => (c.lease_ms, c.stop_timeout_ms),
        None => (args.divider_lease_ms, args.divider_stop_timeout_ms),
    };
    let settings = DividerSettings {
        timing: LeaseTiming {
            lease: Duration::from_millis(lease_ms),
            margin: Duration::from_millis(args.divider_drift_margin_ms.min(lease_ms / 4)),
        },
        stop_timeout: Duration::from_millis(stop_timeout_ms),
        request_timeout: timeout,
    };
    let registers = crate::quorum::register::Registers::new(node.proposer.clone(), timeout);
    Dividers::new(registers, settings, config, node.id.clone(), node.metrics.divider.clone())
}

/// The divider's app services.
pub fn services(dividers: Arc<Dividers<GrpcPeers>>) -> AppServices {
    AppServices::default().with_service(pb::divider_server::DividerServer::new(DividerService { dividers }))
}

/// Stops one ConfirmStops call may confirm.
pub const MAX_CONFIRMS: usize = 10_000;

/// Maps a divider error to a gRPC status.
pub fn divider_status(e: DividerError) -> Status {
    match e {
        DividerError::Invalid(m) => Status::invalid_argument(m),
        DividerError::NotFound(m) => Status::not_found(m),
        DividerError::AlreadyExists(m) => Status::already_exists(m),
        DividerError::Precondition(m) => Status::failed_precondition(m),
        DividerError::OutOfRange(m) => Status::out_of_range(m),
        DividerError::Quorum(e) => register_status(e),
        DividerError::Timeout(m) => Status::deadline_exceeded(m),
    }
}

fn stop_reason(r: StopReason) -> pb::stop::Reason {
    match r {
        StopReason::Reassigned => pb::stop::Reason::Reassigned,
        StopReason::Timeout => pb::stop::Reason::Timeout,
        StopReason::LeaseLost => pb::stop::Reason::LeaseLost,
        StopReason::Removed => pb::stop::Reason::Removed,
        StopReason::Leaving => pb::stop::Reason::Leaving,
    }
}

fn event(e: Event) -> pb::DividerEvent {
    use pb::divider_event::Event as E;
    let event = match e {
        Event::Joined { member, session, affinity } => {
            E::Joined(pb::Joined { member, session, affinity: u64::from(affinity) })
        }
        Event::Start { key, token } => E::Start(pb::Start { key, token }),
        Event::Stop { key, token, reason } => E::Stop(pb::Stop { key, token, reason: stop_reason(reason) as i32 }),
        Event::Lease { valid_for } => E::Lease(pb::Lease { valid_for_ms: valid_for.as_millis() as u64 }),
    };
    pb::DividerEvent { event: Some(event) }
}

fn page_size(limit: u32) -> Result<usize, Status> {
    match limit as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n <= MAX_PAGE => Ok(n),
        n => Err(Status::invalid_argument(format!("limit must be 1..={MAX_PAGE} (0: {DEFAULT_PAGE}), got {n}"))),
    }
}

fn members(t: &AssignmentTable) -> Vec<pb::AssignmentMember> {
    t.members
        .iter()
        .map(|m| pb::AssignmentMember { id: m.id.clone(), affinity: u64::from(m.affinity), address: m.address.clone() })
        .collect()
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Divider service.
pub struct DividerService {
    dividers: Arc<Dividers<GrpcPeers>>,
}

impl DividerService {
    fn divider(&self, name: &str) -> Result<Arc<Divider<GrpcPeers>>, Status> {
        self.dividers.get(name).map_err(divider_status)
    }

    fn member<'a>(&'a self, member: &'a str) -> &'a str {
        if member.is_empty() {
            self.dividers.sidecar_id()
        } else {
            member
        }
    }
}

#[tonic::async_trait]
impl pb::divider_server::Divider for DividerService {
    type WatchStream = EventStream<pb::DividerEvent>;
    type FollowAssignmentStream = EventStream<pb::AssignmentChange>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        let d = self.divider(&r.divider)?;
        let rx = d.watch(self.member(&r.member), r.affinity, &r.address).await.map_err(divider_status)?;
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::map(stream, |e| Ok(event(e))))))
    }

    async fn confirm_stop(&self, req: Request<pb::KeyTokenRequest>) -> Result<Response<pb::DividerAck>, Status> {
        let r = req.into_inner();
        let d = self.divider(&r.divider)?;
        d.confirm_stop(self.member(&r.member), &r.key, r.token).await.map_err(divider_status)?;
        Ok(Response::new(pb::DividerAck {}))
    }

    async fn confirm_stops(
        &self,
        req: Request<pb::ConfirmStopsRequest>,
    ) -> Result<Response<pb::ConfirmStopsResponse>, Status> {
        let r = req.into_inner();
        if r.stops.len() > MAX_CONFIRMS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_CONFIRMS} stops per ConfirmStops, got {}",
                r.stops.len()
            )));
        }
        let d = self.divider(&r.divider)?;
        let stops: Vec<(String, u64)> = r.stops.into_iter().map(|s| (s.key, s.token)).collect();
        let refused = d.confirm_stops(self.member(&r.member), &stops).await.map_err(divider_status)?;
        let refused = refused
            .into_iter()
            .map(|(key, e)| {
                let s = divider_status(e);
                pb::RefusedKey { key, code: s.code() as i32, message: s.message().to_string() }
            })
            .collect();
        Ok(Response::new(pb::ConfirmStopsResponse { refused }))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::DividerAck>, Status> {
        let r = req.into_inner();
        let done = match pb::release_request::Mode::try_from(r.mode) {
            Ok(pb::release_request::Mode::Done) => true,
            Ok(pb::release_request::Mode::Handback) => false,
            _ => return Err(Status::invalid_argument("mode must be DONE or HANDBACK")),
        };
        let d = self.divider(&r.divider)?;
        d.release(self.member(&r.member), &r.key, r.token, done).await.map_err(divider_status)?;
        Ok(Response::new(pb::DividerAck {}))
    }

    async fn list_assigned(
        &self,
        req: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::ListAssignedResponse>, Status> {
        let r = req.into_inner();
        let member = self.member(&r.member).to_string();
        let keys = self.divider(&r.divider)?.assigned(&member).await.map_err(divider_status)?;
        let keys = keys.into_iter().map(|(key, token)| pb::KeyToken { key, token }).collect();
        Ok(Response::new(pb::ListAssignedResponse { member, keys }))
    }

    async fn get_affinity(&self, req: Request<pb::MemberRequest>) -> Result<Response<pb::AffinityResponse>, Status> {
        let r = req.into_inner();
        let a = self.divider(&r.divider)?.affinity(self.member(&r.member)).await.map_err(divider_status)?;
        Ok(Response::new(pb::AffinityResponse { affinity: u64::from(a) }))
    }

    async fn set_affinity(
        &self,
        req: Request<pb::SetAffinityRequest>,
    ) -> Result<Response<pb::AffinityResponse>, Status> {
        let r = req.into_inner();
        let value = u32::try_from(r.affinity)
            .map_err(|_| Status::invalid_argument(format!("affinity must be 0..={}, got {}", u32::MAX, r.affinity)))?;
        let d = self.divider(&r.divider)?;
        let a = d.update_affinity(self.member(&r.member), |_| Ok(value)).await.map_err(divider_status)?;
        Ok(Response::new(pb::AffinityResponse { affinity: u64::from(a) }))
    }

    async fn alter_affinity(
        &self,
        req: Request<pb::AlterAffinityRequest>,
    ) -> Result<Response<pb::AffinityResponse>, Status> {
        let r = req.into_inner();
        let d = self.divider(&r.divider)?;
        let delta = r.delta;
        let a = d
            .update_affinity(self.member(&r.member), |old| {
                i64::from(old).checked_add(delta).and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    DividerError::OutOfRange(format!(
                        "affinity {old} + {delta} is outside 0..={}; affinity unchanged",
                        u32::MAX
                    ))
                })
            })
            .await
            .map_err(divider_status)?;
        Ok(Response::new(pb::AffinityResponse { affinity: u64::from(a) }))
    }

    async fn flush(&self, req: Request<pb::MemberRequest>) -> Result<Response<pb::DividerAck>, Status> {
        let r = req.into_inner();
        self.divider(&r.divider)?.flush(self.member(&r.member)).await.map_err(divider_status)?;
        Ok(Response::new(pb::DividerAck {}))
    }

    async fn cancel(&self, req: Request<pb::MemberRequest>) -> Result<Response<pb::DividerAck>, Status> {
        let r = req.into_inner();
        self.divider(&r.divider)?.cancel(self.member(&r.member)).await.map_err(divider_status)?;
        Ok(Response::new(pb::DividerAck {}))
    }

    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let r = req.into_inner();
        let o = self.divider(&r.divider)?.lookup(&r.key).await.map_err(divider_status)?;
        Ok(Response::new(pb::LookupResponse {
            key: r.key,
            owner: o.member.unwrap_or_default(),
            address: o.address,
            token: o.token,
        }))
    }

    async fn assignment(
        &self,
        req: Request<pb::AssignmentRequest>,
    ) -> Result<Response<pb::AssignmentResponse>, Status> {
        let r = req.into_inner();
        let limit = page_size(r.limit)?;
        let t = self.divider(&r.divider)?.table();
        let start = t.keys.partition_point(|k| !r.after_key.is_empty() && k.as_str() <= r.after_key.as_str());
        let end = (start + limit).min(t.keys.len());
        let keys = (start..end)
            .map(|i| pb::KeyOwner {
                key: t.keys[i].clone(),
                member: t.owners[i].map(|m| t.members[m as usize].id.clone()).unwrap_or_default(),
            })
            .collect();
        let next_after_key = if end < t.keys.len() { t.keys[end - 1].clone() } else { String::new() };
        Ok(Response::new(pb::AssignmentResponse {
            version: t.version,
            algorithm: ordo_contract::assign::ALGORITHM.to_string(),
            members: members(&t),
            total_keys: t.keys.len() as u64,
            keys,
            next_after_key,
        }))
    }

    async fn follow_assignment(
        &self,
        req: Request<pb::FollowAssignmentRequest>,
    ) -> Result<Response<Self::FollowAssignmentStream>, Status> {
        let d = self.divider(&req.into_inner().divider)?;
        let rx = d.follow();
        let stream = futures::stream::unfold((rx, None::<u64>), |(mut rx, last)| async move {
            loop {
                let t = rx.borrow_and_update().clone();
                if last != Some(t.version) {
                    let change = pb::AssignmentChange {
                        version: t.version,
                        algorithm: ordo_contract::assign::ALGORITHM.to_string(),
                        members: members(&t),
                        total_keys: t.keys.len() as u64,
                    };
                    return Some((Ok(change), (rx, Some(t.version))));
                }
                rx.changed().await.ok()?;
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn add_keys(&self, req: Request<pb::KeysRequest>) -> Result<Response<pb::KeysResponse>, Status> {
        let r = req.into_inner();
        let changed = self.divider(&r.divider)?.add_keys(&r.keys).await.map_err(divider_status)?;
        Ok(Response::new(pb::KeysResponse { changed }))
    }

    async fn remove_keys(&self, req: Request<pb::KeysRequest>) -> Result<Response<pb::KeysResponse>, Status> {
        let r = req.into_inner();
        let changed = self.divider(&r.divider)?.remove_keys(&r.keys).await.map_err(divider_status)?;
        Ok(Response::new(pb::KeysResponse { changed }))
    }

    async fn list_keys(
        &self,
        req: Request<pb::DividerListKeysRequest>,
    ) -> Result<Response<pb::DividerListKeysResponse>, Status> {
        let r = req.into_inner();
        let limit = page_size(r.limit)?;
        let d = self.divider(&r.divider)?;
        let (keys, next) = d.list_keys(&r.prefix, &r.after_key, limit).await.map_err(divider_status)?;
        Ok(Response::new(pb::DividerListKeysResponse { keys, next_after_key: next.unwrap_or_default() }))
    }
}
