//! The Registers gRPC service (`ordo.v1.Registers`): the typed register API
//! ([`crate::quorum::register`]) for apps, in their own `app/` namespace. Served only with
//! `--registers-api`.

use std::sync::Arc;

use ordo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::AppServices;
use crate::api::peer::GrpcPeers;
use crate::config::RegistersArgs;
use crate::node::Node;
use crate::quorum::register::{Entry, RegisterError, Registers, Written};

/// Namespace of app keys in the quorum store.
pub const APP_PREFIX: &str = "app/";

/// The registers' app services (none unless `args.registers_api`).
pub fn services(args: &RegistersArgs, timeout: std::time::Duration, node: &Arc<Node<GrpcPeers>>) -> AppServices {
    if !args.registers_api {
        return AppServices::default();
    }
    let registers = Registers::new(node.proposer.clone(), timeout);
    AppServices::default().with_service(pb::registers_server::RegistersServer::new(RegistersService { registers }))
}

/// Maps a register error to a gRPC status (see `registers.proto`).
pub fn register_status(e: RegisterError) -> Status {
    match &e {
        RegisterError::Invalid(_) => Status::invalid_argument(e.to_string()),
        RegisterError::Refused { .. } => Status::failed_precondition(e.to_string()),
        RegisterError::Unavailable { .. } | RegisterError::Closed => Status::unavailable(e.to_string()),
        RegisterError::OutcomeUnknown { .. } => Status::deadline_exceeded(e.to_string()),
    }
}

fn read_response(e: Option<Entry>) -> pb::RegisterReadResponse {
    match e {
        Some(Entry { version, value }) => pb::RegisterReadResponse { found: true, version, value },
        None => pb::RegisterReadResponse::default(),
    }
}

fn write_response(w: Result<Written, RegisterError>) -> Result<Response<pb::RegisterWriteResponse>, Status> {
    Ok(Response::new(match w.map_err(register_status)? {
        Written::Applied { version } => pb::RegisterWriteResponse { applied: true, version, current: None },
        Written::Conflict { current } => {
            pb::RegisterWriteResponse { applied: false, version: 0, current: Some(read_response(current)) }
        }
    }))
}

fn app_key(key: &str) -> Result<String, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key is empty"));
    }
    Ok(format!("{APP_PREFIX}{key}"))
}

/// The Registers service.
pub struct RegistersService {
    registers: Registers<GrpcPeers>,
}

#[tonic::async_trait]
impl pb::registers_server::Registers for RegistersService {
    async fn read(&self, req: Request<pb::RegisterReadRequest>) -> Result<Response<pb::RegisterReadResponse>, Status> {
        let key = app_key(&req.into_inner().key)?;
        Ok(Response::new(read_response(self.registers.read(&key).await.map_err(register_status)?)))
    }

    async fn compare_and_set(
        &self,
        req: Request<pb::CompareAndSetRequest>,
    ) -> Result<Response<pb::RegisterWriteResponse>, Status> {
        let r = req.into_inner();
        write_response(self.registers.compare_and_set(&app_key(&r.key)?, r.version, r.value).await)
    }

    async fn create(
        &self,
        req: Request<pb::RegisterCreateRequest>,
    ) -> Result<Response<pb::RegisterWriteResponse>, Status> {
        let r = req.into_inner();
        write_response(self.registers.create(&app_key(&r.key)?, r.value).await)
    }

    async fn delete(
        &self,
        req: Request<pb::RegisterDeleteRequest>,
    ) -> Result<Response<pb::RegisterWriteResponse>, Status> {
        let r = req.into_inner();
        write_response(self.registers.delete(&app_key(&r.key)?, r.version).await)
    }

    async fn list(&self, req: Request<pb::RegisterListRequest>) -> Result<Response<pb::RegisterListResponse>, Status> {
        let r = req.into_inner();
        let prefix = format!("{APP_PREFIX}{}", r.prefix);
        let after = (!r.after.is_empty()).then(|| format!("{APP_PREFIX}{}", r.after));
        let page = self.registers.list(&prefix, after.as_deref(), r.limit as usize).await.map_err(register_status)?;
        let strip = |k: String| k.strip_prefix(APP_PREFIX).map(str::to_string).unwrap_or(k);
        Ok(Response::new(pb::RegisterListResponse {
            keys: page.keys.into_iter().map(strip).collect(),
            next_after: page.next_after.map(strip).unwrap_or_default(),
        }))
    }
}
