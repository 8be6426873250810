//! The Sequencer gRPC service (`ordo.v1.Sequencer`): Next, Stream and Current over the
//! [`Sequencer`] domain module, configured by the sidecar's sequencer flags.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use ordo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::AppServices;
use crate::api::peer::GrpcPeers;
use crate::config::SequencerArgs;
use crate::node::Node;
use crate::quorum::register::RegisterError;
use crate::sequencer::{SeqError, Sequencer, SequencerConfig};

/// The sequencer's app services: a [`Sequencer`] on `node`'s proposer, configured by `args`,
/// with requests bound by `timeout`.
pub fn services(args: &SequencerArgs, timeout: Duration, node: &Arc<Node<GrpcPeers>>) -> AppServices {
    let config = SequencerConfig {
        range_size: args.range_size,
        range_overrides: args.range_overrides(),
        max_count: args.max_count,
        allocations_in_flight: args.sequence_allocations_in_flight,
        timeout,
    };
    let sequencer = Arc::new(Sequencer::new(node.proposer.clone(), config, node.metrics.clone()));
    AppServices::default()
        .with_service(pb::sequencer_server::SequencerServer::new(SequencerService::new(sequencer, node.clone())))
}

/// Maps a sequencer error to a gRPC status.
pub fn seq_status(e: SeqError) -> Status {
    match &e {
        SeqError::InvalidName(_) | SeqError::InvalidCount { .. } => Status::invalid_argument(e.to_string()),
        SeqError::NotFound(_) => Status::not_found(e.to_string()),
        // For a counter an unknown outcome only skips IDs (never reissues them): retry.
        SeqError::Quorum(
            RegisterError::Unavailable { .. } | RegisterError::OutcomeUnknown { .. } | RegisterError::Closed,
        )
        | SeqError::Timeout(_) => Status::unavailable(e.to_string()),
        SeqError::Quorum(RegisterError::Invalid(_) | RegisterError::Refused { .. }) => {
            Status::failed_precondition(e.to_string())
        }
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
