//! The LogPeer gRPC service (member-to-member, peer port, peer token) and its client
//! [`GrpcLogPeers`]: seal, fencing fetch and replication streams for primaries, forwarding
//! streams and primary reads for every other sidecar. Conversions only; the rules live in
//! [`crate::log`].

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use ordo_proto::v1 as pb;
use ordo_proto::v1::log_peer_client::LogPeerClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::api::peer::{AuthHeader, GrpcPeers};
use crate::log::primary::{LogPeers, ReplicaLink, ReplicateAck, ReplicateMsg};
use crate::log::router::{validate_stream, LogRouter, RemotePrimaries};
use crate::log::store::{AppendReply, FetchReply, ReplicaStore, SealReply};
use crate::log::{AppendResult, AppendResultTx, Batch, EpochStart, Fence, LogEntry, LogError};
use crate::node::Node;

/// Largest message on the log peer protocol.
const MAX_MESSAGE: usize = 64 << 20;
/// Batches forwarded to one primary and not yet answered, per forwarding stream.
const FORWARD_WINDOW: usize = 64;
/// Replication writes a replica link has queued on the store and not yet answered (the
/// primary keeps at most 16 messages in flight per replica).
const REPLICA_PENDING: usize = 32;

/// The log router as the gRPC services see it.
pub type Router = LogRouter<GrpcPeers, GrpcLogPeers>;

// ---------------------------------------------------------------------------------------------
// Conversions.

/// Converts an entry for the wire.
pub fn entry_to_pb(e: LogEntry) -> pb::PeerEntry {
    pb::PeerEntry {
        lsn: e.lsn,
        epoch: e.epoch,
        producer_id: e.producer_id,
        producer_epoch: e.producer_epoch,
        batch_seq: e.batch_seq,
        batch_index: e.batch_index,
        batch_len: e.batch_len,
        fence: e.fence.map(fence_to_pb),
        data: e.data,
    }
}

/// A fence for the wire.
pub fn fence_to_pb(f: Fence) -> pb::Fence {
    pb::Fence { divider: f.divider, key: f.key, token: f.token }
}

/// A fence from the wire (a token of 0 means none).
pub fn fence_from_pb(f: pb::Fence) -> Option<Fence> {
    (f.token != 0 || !f.key.is_empty()).then_some(Fence { divider: f.divider, key: f.key, token: f.token })
}

/// Converts an entry from the wire.
pub fn entry_from_pb(e: pb::PeerEntry) -> LogEntry {
    LogEntry {
        lsn: e.lsn,
        epoch: e.epoch,
        producer_id: e.producer_id,
        producer_epoch: e.producer_epoch,
        batch_seq: e.batch_seq,
        batch_index: e.batch_index,
        batch_len: e.batch_len,
        fence: e.fence.and_then(fence_from_pb),
        data: e.data,
    }
}

fn epochs_to_pb(v: Vec<EpochStart>) -> Vec<pb::EpochStart> {
    v.into_iter().map(|e| pb::EpochStart { epoch: e.epoch, start_lsn: e.start_lsn }).collect()
}

fn epochs_from_pb(v: Vec<pb::EpochStart>) -> Vec<EpochStart> {
    v.into_iter().map(|e| EpochStart { epoch: e.epoch, start_lsn: e.start_lsn }).collect()
}

/// The gRPC status of a log error.
pub fn log_status(e: LogError) -> Status {
    let msg = e.to_string();
    match e {
        LogError::Invalid(_) => Status::invalid_argument(msg),
        LogError::NotFound(_) => Status::not_found(msg),
        LogError::AlreadyExists(_) => Status::already_exists(msg),
        LogError::Trimmed { .. } | LogError::OutOfRange(_) => Status::out_of_range(msg),
        LogError::Refused(_) | LogError::Fenced(_) => Status::failed_precondition(msg),
        LogError::Unavailable(_) => Status::unavailable(msg),
    }
}

/// The log error of a gRPC status (from a primary elsewhere).
pub fn status_error(s: &Status) -> LogError {
    let m = s.message().to_string();
    match s.code() {
        tonic::Code::InvalidArgument => LogError::Invalid(m),
        tonic::Code::NotFound => LogError::NotFound(m),
        tonic::Code::AlreadyExists => LogError::AlreadyExists(m),
        tonic::Code::OutOfRange => LogError::OutOfRange(m),
        tonic::Code::FailedPrecondition => LogError::Refused(m),
        _ => LogError::Unavailable(m),
    }
}

/// An append result for the wire.
pub fn append_response(stream: String, batch_seq: u64, r: Result<Vec<u64>, LogError>) -> pb::AppendResponse {
    match r {
        Ok(lsns) => pb::AppendResponse { stream, batch_seq, lsns, error: None },
        Err(e) => {
            let reason = match e {
                LogError::Fenced(_) => pb::AppendErrorReason::Fenced,
                _ => pb::AppendErrorReason::Unspecified,
            };
            let s = log_status(e);
            pb::AppendResponse {
                stream,
                batch_seq,
                lsns: Vec::new(),
                error: Some(pb::AppendError {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                    reason: reason as i32,
                }),
            }
        }
    }
}

/// A batch from an append request.
pub fn batch_of(r: &mut pb::AppendRequest) -> Batch {
    Batch {
        entries: std::mem::take(&mut r.entries),
        producer_id: r.producer_id,
        producer_epoch: r.producer_epoch,
        batch_seq: r.batch_seq,
        fence: r.fence.take().and_then(fence_from_pb),
    }
}

/// The log error of an append result from a primary elsewhere.
pub fn append_error(e: pb::AppendError) -> LogError {
    if e.reason == pb::AppendErrorReason::Fenced as i32 {
        return LogError::Fenced(e.message);
    }
    status_error(&Status::new(tonic::Code::from_i32(e.code), e.message))
}

// ---------------------------------------------------------------------------------------------
// Server.

/// The LogPeer service of a member.
pub struct LogPeerService {
    router: Arc<Router>,
    store: ReplicaStore,
    /// Turns true when the sidecar shuts down: the long-lived replication and forwarding
    /// streams then end, so they do not hold the peer server's graceful shutdown open until the
    /// drain timeout (the primaries see the links break, as when a replica stops).
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl LogPeerService {
    /// The service, wrapped in the peer token check.
    pub fn server(
        router: Arc<Router>,
        store: ReplicaStore,
        token: String,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> InterceptedService<pb::log_peer_server::LogPeerServer<LogPeerService>, impl tonic::service::Interceptor + Clone>
    {
        let svc = pb::log_peer_server::LogPeerServer::new(LogPeerService { router, store, shutdown })
            .max_decoding_message_size(MAX_MESSAGE);
        InterceptedService::new(svc, crate::api::peer::token_check(token))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::log_peer_server::LogPeer for LogPeerService {
    async fn seal(&self, req: Request<pb::SealRequest>) -> Result<Response<pb::SealResponse>, Status> {
        let r = req.into_inner();
        validate_stream(&r.stream).map_err(log_status)?;
        let s = self
            .store
            .seal(&r.stream, r.epoch, r.fresh_stream, r.first_lsn)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::SealResponse {
            ok: s.ok,
            sealed_epoch: s.sealed,
            last_lsn: s.last_lsn,
            epochs: epochs_to_pb(s.epochs),
            rebuilding: s.rebuilding,
            base_lsn: s.base_lsn,
        }))
    }

    async fn fetch(&self, req: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        let r = req.into_inner();
        validate_stream(&r.stream).map_err(log_status)?;
        let max = (r.max as usize).clamp(1, 10_000);
        let f = self
            .store
            .fetch(&r.stream, Some(r.epoch), r.from, max)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::FetchResponse {
            ok: f.ok,
            sealed_epoch: f.sealed,
            entries: f.entries.into_iter().map(entry_to_pb).collect(),
        }))
    }

    type ReplicateStream = BoxStream<pb::ReplicateResponse>;

    async fn replicate(
        &self,
        req: Request<Streaming<pb::ReplicateRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let mut inbound = req.into_inner();
        let store = self.store.clone();
        let mut shutdown = self.shutdown.clone();
        let (out_tx, out_rx) = mpsc::channel::<Result<pb::ReplicateResponse, Status>>(64);
        tokio::spawn(async move {
            // One task per link: writes go straight to the store's queue and their answers are
            // awaited here, in order (two tasks and two channels in between cost a wake-up each
            // per message on a busy machine). At most `REPLICA_PENDING` writes wait at once.
            let mut stream: Option<String> = None;
            let mut pending = futures::stream::FuturesOrdered::new();
            loop {
                tokio::select! {
                    // Stopping: the link ends (writes not answered yet count as lost messages).
                    _ = crate::api::shutdown_begun(&mut shutdown) => return,
                    msg = inbound.next(), if pending.len() < REPLICA_PENDING => {
                        let m = match msg {
                            Some(Ok(m)) => m,
                            _ => return,
                        };
                        if let Err(e) = validate_stream(&m.stream) {
                            let _ = out_tx.send(Err(log_status(e))).await;
                            return;
                        }
                        if stream.as_ref().is_some_and(|s| *s != m.stream) {
                            let _ = out_tx.send(Err(Status::invalid_argument("one replication stream per log stream"))).await;
                            return;
                        }
                        let name = stream.get_or_insert_with(|| m.stream.clone());
                        let msg = ReplicateMsg {
                            epoch: m.epoch,
                            prev_lsn: m.prev_lsn,
                            prev_epoch: m.prev_epoch,
                            entries: m.entries.into_iter().map(entry_from_pb).collect(),
                            commit: m.commit_lsn,
                            complete_through: m.complete_through,
                            first_lsn: m.first_lsn,
                            reset: m.reset,
                        };
                        let prev_lsn = msg.prev_lsn;
                        let answer = store.write_queued(name, msg.into_write());
                        pending.push_back(async move { (prev_lsn, answer.await) });
                    }
                    Some((prev_lsn, answer)) = pending.next() => {
                        // The store closed (the sidecar is stopping): the primary sees the link break.
                        let Ok(Ok(reply)) = answer else { return };
                        use pb::replicate_response::Result as R;
                        let result = match reply {
                            AppendReply::Durable(l) => R::DurableLsn(l),
                            AppendReply::Sealed(e) => R::SealedEpoch(e),
                            AppendReply::Diverged { last_lsn, epochs, base_lsn } => {
                                R::Diverged(pb::Divergence { last_lsn, epochs: epochs_to_pb(epochs), base_lsn })
                            }
                        };
                        let resp = pb::ReplicateResponse { prev_lsn, result: Some(result) };
                        if out_tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    type ForwardStream = BoxStream<pb::AppendResponse>;

    async fn forward(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let mut inbound = req.into_inner();
        let router = self.router.clone();
        let (out_tx, out_rx) = mpsc::channel::<Result<pb::AppendResponse, Status>>(FORWARD_WINDOW);
        let (pending_tx, mut pending) = mpsc::channel(FORWARD_WINDOW);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Stopping: take no more batches; those taken are answered, then the stream ends.
            loop {
                let next = tokio::select! {
                    _ = crate::api::shutdown_begun(&mut shutdown) => return,
                    next = inbound.next() => next,
                };
                let Some(Ok(mut m)) = next else { return };
                let batch = batch_of(&mut m);
                let rx = router.submit(&m.stream, batch, true);
                if pending_tx.send((m.stream, m.batch_seq, rx)).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((stream, seq, rx)) = pending.recv().await {
                let r = rx.await.unwrap_or_else(|_| Err(LogError::Unavailable("the primary went away".into())));
                if out_tx.send(Ok(append_response(stream, seq, r))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn primary_read(&self, req: Request<pb::PrimaryReadRequest>) -> Result<Response<pb::ReadResponse>, Status> {
        let r = req.into_inner();
        let read = r.read.unwrap_or_default();
        let wait = Duration::from_millis(u64::from(r.wait_ms.min(10_000)));
        let (entries, first, last) =
            self.router.read(&read.stream, read.from, read.max, wait, true).await.map_err(log_status)?;
        Ok(Response::new(pb::ReadResponse {
            stream: read.stream,
            entries: entries.into_iter().map(|e| pb::LogEntry { lsn: e.lsn, data: e.data }).collect(),
            first_lsn: first,
            last_lsn: last,
        }))
    }

    async fn primary_trim(&self, req: Request<pb::TrimRequest>) -> Result<Response<pb::TrimResponse>, Status> {
        let r = req.into_inner();
        let first = self.router.trim(&r.stream, r.before, true).await.map_err(log_status)?;
        Ok(Response::new(pb::TrimResponse { stream: r.stream, first_lsn: first }))
    }

    async fn primary_move(&self, req: Request<pb::MoveRequest>) -> Result<Response<pb::MoveResponse>, Status> {
        let r = req.into_inner();
        crate::log::router::validate_stream(&r.stream).map_err(log_status)?;
        self.router.move_local(&r.stream, &r.replicas).await.map_err(log_status)?;
        Ok(Response::new(pb::MoveResponse {}))
    }
}

// ---------------------------------------------------------------------------------------------
// Client.

type Client = LogPeerClient<InterceptedService<Channel, AuthHeader>>;
type ForwardItem = (pb::AppendRequest, AppendResultTx);

/// gRPC client of the other members' LogPeer services.
pub struct GrpcLogPeers {
    node: Arc<Node<GrpcPeers>>,
    header: MetadataValue<tonic::metadata::Ascii>,
    channels: Mutex<HashMap<String, Channel>>,
    forwarders: Mutex<HashMap<String, mpsc::UnboundedSender<ForwardItem>>>,
}

impl GrpcLogPeers {
    /// A client presenting `token`, finding members in `node`'s configuration.
    pub fn new(node: Arc<Node<GrpcPeers>>, token: &str) -> Result<Arc<Self>, String> {
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "peer token is not valid header text".to_string())?;
        Ok(Arc::new(Self {
            node,
            header,
            channels: Mutex::new(HashMap::new()),
            forwarders: Mutex::new(HashMap::new()),
        }))
    }

    fn client(&self, to: &str) -> Result<Client, String> {
        let cfg = self.node.config();
        let member = cfg
            .all_members()
            .into_iter()
            .find(|m| m.id == to)
            .ok_or_else(|| format!("{to} is not in the configuration"))?
            .clone();
        let channel = {
            let mut channels = self.channels.lock().expect("channels lock");
            match channels.get(&member.peer_addr) {
                Some(c) => c.clone(),
                None => {
                    let c = Endpoint::from_shared(format!("http://{}", member.peer_addr))
                        .map_err(|e| format!("bad peer address {}: {e}", member.peer_addr))?
                        .connect_timeout(Duration::from_millis(500))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(5))
                        .keep_alive_timeout(Duration::from_secs(5))
                        .keep_alive_while_idle(true)
                        .connect_lazy();
                    channels.insert(member.peer_addr.clone(), c.clone());
                    c
                }
            }
        };
        Ok(LogPeerClient::with_interceptor(channel, AuthHeader(self.header.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn spawn_forwarder(&self, to: &str) -> Result<mpsc::UnboundedSender<ForwardItem>, String> {
        let mut client = self.client(to)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<ForwardItem>();
        let to = to.to_string();
        tokio::spawn(async move {
            let (req_tx, req_rx) = mpsc::channel::<pb::AppendRequest>(FORWARD_WINDOW);
            let waiting: Arc<Mutex<VecDeque<AppendResultTx>>> = Arc::default();
            let fail_all = |why: String, waiting: &Mutex<VecDeque<AppendResultTx>>| {
                for w in waiting.lock().expect("waiting lock").drain(..) {
                    let _ = w.send(Err(LogError::Unavailable(why.clone())));
                }
            };
            let mut responses = match client.forward(ReceiverStream::new(req_rx)).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    rx.close();
                    while let Some((_, reply)) = rx.recv().await {
                        let _ = reply.send(Err(LogError::Unavailable(format!("forwarding to {to}: {}", s.message()))));
                    }
                    return;
                }
            };
            loop {
                tokio::select! {
                    item = rx.recv() => {
                        let Some((req, reply)) = item else { break };
                        waiting.lock().expect("waiting lock").push_back(reply);
                        if req_tx.send(req).await.is_err() {
                            break;
                        }
                    }
                    resp = responses.next() => {
                        match resp {
                            Some(Ok(r)) => {
                                let w = waiting.lock().expect("waiting lock").pop_front();
                                let result = match r.error {
                                    Some(e) => Err(append_error(e)),
                                    None => Ok(r.lsns),
                                };
                                if let Some(w) = w {
                                    let _ = w.send(result);
                                }
                            }
                            Some(Err(s)) => {
                                fail_all(format!("forwarding to {to} broke: {}", s.message()), &waiting);
                                break;
                            }
                            None => {
                                fail_all(format!("forwarding to {to} ended"), &waiting);
                                break;
                            }
                        }
                    }
                }
            }
            rx.close();
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(Err(LogError::Unavailable(format!("forwarding to {to} broke"))));
            }
        });
        Ok(tx)
    }
}

impl LogPeers for GrpcLogPeers {
    async fn seal(
        &self,
        to: &str,
        stream: &str,
        epoch: u64,
        fresh_stream: bool,
        first_lsn: u64,
    ) -> Result<SealReply, String> {
        let mut c = self.client(to)?;
        let req = pb::SealRequest { stream: stream.into(), epoch, fresh_stream, first_lsn };
        let r = tokio::time::timeout(self.timeout(), c.seal(req))
            .await
            .map_err(|_| format!("{to}: seal timed out"))?
            .map_err(|s| format!("{to}: {}", s.message()))?
            .into_inner();
        Ok(SealReply {
            ok: r.ok,
            sealed: r.sealed_epoch,
            last_lsn: r.last_lsn,
            epochs: epochs_from_pb(r.epochs),
            rebuilding: r.rebuilding,
            base_lsn: r.base_lsn,
        })
    }

    async fn fetch(&self, to: &str, stream: &str, epoch: u64, from: u64, max: u32) -> Result<FetchReply, String> {
        let mut c = self.client(to)?;
        let req = pb::FetchRequest { stream: stream.into(), epoch, from, max };
        let r = tokio::time::timeout(self.timeout(), c.fetch(req))
            .await
            .map_err(|_| format!("{to}: fetch timed out"))?
            .map_err(|s| format!("{to}: {}", s.message()))?
            .into_inner();
        Ok(FetchReply { ok: r.ok, sealed: r.sealed_epoch, entries: r.entries.into_iter().map(entry_from_pb).collect() })
    }

    async fn replicate(&self, to: &str, stream: &str) -> Result<ReplicaLink, String> {
        let mut c = self.client(to)?;
        let (req_tx, req_rx) = mpsc::channel::<pb::ReplicateRequest>(32);
        let responses = tokio::time::timeout(self.timeout(), c.replicate(ReceiverStream::new(req_rx)))
            .await
            .map_err(|_| format!("{to}: replicate timed out"))?
            .map_err(|s| format!("{to}: {}", s.message()))?
            .into_inner();
        let (tx, mut msgs) = mpsc::channel::<ReplicateMsg>(32);
        let (ack_tx, rx) = mpsc::channel::<ReplicateAck>(32);
        let stream = stream.to_string();
        tokio::spawn(async move {
            while let Some(m) = msgs.recv().await {
                let req = pb::ReplicateRequest {
                    stream: stream.clone(),
                    epoch: m.epoch,
                    prev_lsn: m.prev_lsn,
                    prev_epoch: m.prev_epoch,
                    entries: m.entries.into_iter().map(entry_to_pb).collect(),
                    commit_lsn: m.commit,
                    complete_through: m.complete_through,
                    first_lsn: m.first_lsn,
                    reset: m.reset,
                };
                if req_tx.send(req).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut responses = responses;
            while let Some(Ok(r)) = responses.next().await {
                use pb::replicate_response::Result as R;
                let reply = match r.result {
                    Some(R::DurableLsn(l)) => AppendReply::Durable(l),
                    Some(R::SealedEpoch(e)) => AppendReply::Sealed(e),
                    Some(R::Diverged(d)) => AppendReply::Diverged {
                        last_lsn: d.last_lsn,
                        epochs: epochs_from_pb(d.epochs),
                        base_lsn: d.base_lsn,
                    },
                    None => return,
                };
                if ack_tx.send(ReplicateAck { prev_lsn: r.prev_lsn, reply }).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReplicaLink { tx, rx })
    }
}

impl RemotePrimaries for GrpcLogPeers {
    fn forward(&self, to: &str, stream: &str, batch: Batch) -> oneshot::Receiver<AppendResult> {
        let (reply, rx) = oneshot::channel();
        let req = pb::AppendRequest {
            stream: stream.to_string(),
            entries: batch.entries,
            pipeline_size: 0,
            producer_id: batch.producer_id,
            producer_epoch: batch.producer_epoch,
            batch_seq: batch.batch_seq,
            fence: batch.fence.map(fence_to_pb),
        };
        let mut forwarders = self.forwarders.lock().expect("forwarders lock");
        let mut item = (req, reply);
        for _ in 0..2 {
            let tx = match forwarders.get(to) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => match self.spawn_forwarder(to) {
                    Ok(tx) => {
                        forwarders.insert(to.to_string(), tx.clone());
                        tx
                    }
                    Err(e) => {
                        let _ = item.1.send(Err(LogError::Unavailable(e)));
                        return rx;
                    }
                },
            };
            match tx.send(item) {
                Ok(()) => return rx,
                Err(mpsc::error::SendError(back)) => {
                    forwarders.remove(to);
                    item = back;
                }
            }
        }
        let _ = item.1.send(Err(LogError::Unavailable(format!("cannot forward to {to}"))));
        rx
    }

    async fn primary_read(
        &self,
        to: &str,
        stream: &str,
        from: u64,
        max: u32,
        wait: Duration,
    ) -> Result<(Vec<LogEntry>, u64, u64), LogError> {
        let mut c = self.client(to).map_err(LogError::Unavailable)?;
        let req = pb::PrimaryReadRequest {
            read: Some(pb::ReadRequest { stream: stream.into(), from, max }),
            wait_ms: wait.as_millis() as u32,
        };
        let r = tokio::time::timeout(wait + self.timeout(), c.primary_read(req))
            .await
            .map_err(|_| LogError::Unavailable(format!("{to}: read timed out")))?
            .map_err(|s| status_error(&s))?
            .into_inner();
        let entries =
            r.entries.into_iter().map(|e| LogEntry { lsn: e.lsn, data: e.data, ..Default::default() }).collect();
        Ok((entries, r.first_lsn, r.last_lsn))
    }

    async fn primary_trim(&self, to: &str, stream: &str, before: u64) -> Result<u64, LogError> {
        let mut c = self.client(to).map_err(LogError::Unavailable)?;
        let r = tokio::time::timeout(self.timeout(), c.primary_trim(pb::TrimRequest { stream: stream.into(), before }))
            .await
            .map_err(|_| LogError::Unavailable(format!("{to}: trim timed out")))?
            .map_err(|s| status_error(&s))?
            .into_inner();
        Ok(r.first_lsn)
    }

    async fn primary_move(&self, to: &str, stream: &str, replicas: &[String]) -> Result<(), LogError> {
        let mut c = self.client(to).map_err(LogError::Unavailable)?;
        let req = pb::MoveRequest { stream: stream.into(), replicas: replicas.to_vec() };
        // The move waits for new replicas to catch up (several timeouts) and then for the tail.
        let wait = self.timeout() * 8;
        tokio::time::timeout(wait, c.primary_move(req))
            .await
            .map_err(|_| LogError::Unavailable(format!("{to}: move timed out")))?
            .map_err(|s| status_error(&s))?;
        Ok(())
    }
}
