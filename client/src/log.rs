//! Log streams from an app: [`LogStreamAppender`] (asynchronous, pipelined, idempotent
//! appends to one stream, after Varlog's LogStreamAppender) and the stream calls on
//! [`crate::Client`] (`read`, `subscribe`, `tail`, `trim`, `create_stream`, ...).
//!
//! The appender keeps one long-lived `Append` stream to the sidecar. `append_batch` returns at
//! once while fewer than `pipeline` batches are in flight and waits for room otherwise;
//! callbacks run one at a time, in append order, on the appender's own task. A broken stream is
//! reopened and every unacknowledged batch is sent again with its original producer id, epoch
//! and batch number, so the primary writes it once; after `retry_deadline` without progress the
//! pending callbacks fail with the error (never silently dropped). A bad batch fails alone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use ordo_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{Client, ClientError};

/// Default pipeline size.
pub const DEFAULT_PIPELINE: usize = 2;
/// Largest pipeline size.
pub const MAX_PIPELINE: usize = 8;

/// The result of one batch: its LSNs, in order.
pub type BatchResult = Result<Vec<u64>, ClientError>;
/// Called once with a batch's result.
pub type BatchCallback = Box<dyn FnOnce(BatchResult) + Send>;

/// Settings of an appender.
#[derive(Debug, Clone)]
pub struct AppenderOptions {
    /// Batches in flight: clamped to 1..=8.
    pub pipeline: usize,
    /// How long a broken stream is retried without progress before pending batches fail.
    pub retry_deadline: Duration,
    /// Producer id (random when `None`) and epoch: keep both to retry across restarts.
    pub producer_id: Option<u64>,
    /// Producer epoch.
    pub producer_epoch: u64,
    /// Fencing precondition carried by every batch: a batch is refused with
    /// [`ClientError::Fenced`] once the stream took a higher token for the same divider key.
    pub fence: Option<Fence>,
}

/// A fencing precondition of an append: a work-divider key and the token of its `Start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Divider name.
    pub divider: String,
    /// Key.
    pub key: String,
    /// Token (>= 1).
    pub token: u64,
}

impl Fence {
    fn to_pb(&self) -> pb::Fence {
        pb::Fence { divider: self.divider.clone(), key: self.key.clone(), token: self.token }
    }
}

impl Default for AppenderOptions {
    fn default() -> Self {
        Self {
            pipeline: DEFAULT_PIPELINE,
            retry_deadline: Duration::from_secs(30),
            producer_id: None,
            producer_epoch: 0,
            fence: None,
        }
    }
}

struct Item {
    entries: Vec<Vec<u8>>,
    callback: BatchCallback,
    _permit: OwnedSemaphorePermit,
}

/// Appends batches to one stream, pipelined and idempotent.
pub struct LogStreamAppender {
    stream: String,
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<Item>>>,
    room: Arc<Semaphore>,
    worker: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LogStreamAppender {
    /// An appender of `stream` on `client`'s sidecar.
    pub fn new(client: &Client, stream: &str, opts: AppenderOptions) -> Self {
        let pipeline = opts.pipeline.clamp(1, MAX_PIPELINE);
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            channel: client.channel(),
            stream: stream.to_string(),
            pipeline,
            retry_deadline: opts.retry_deadline,
            producer_id: opts.producer_id.filter(|p| *p != 0).unwrap_or_else(|| rand::random::<u64>() | 1),
            producer_epoch: opts.producer_epoch,
            fence: opts.fence.as_ref().map(Fence::to_pb),
            next_seq: 0,
            pending: VecDeque::new(),
        };
        Self {
            stream: stream.to_string(),
            tx: std::sync::Mutex::new(Some(tx)),
            room: Arc::new(Semaphore::new(pipeline)),
            worker: tokio::sync::Mutex::new(Some(tokio::spawn(worker.run(rx)))),
        }
    }

    /// The stream appended to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Queues a batch; `callback` gets its LSNs or error. Returns at once while the pipeline has
    /// room, waits otherwise. Fails at once (without calling `callback`) after [`close`] or for
    /// an empty batch.
    ///
    /// [`close`]: LogStreamAppender::close
    pub async fn append_batch(
        &self,
        batch: Vec<Vec<u8>>,
        callback: impl FnOnce(BatchResult) + Send + 'static,
    ) -> Result<(), ClientError> {
        if batch.is_empty() {
            return Err(ClientError::Status(tonic::Status::invalid_argument("the batch is empty")));
        }
        let closed = || ClientError::Status(tonic::Status::failed_precondition("the appender is closed"));
        if self.tx.lock().expect("appender lock").is_none() {
            return Err(closed());
        }
        let permit = self.room.clone().acquire_owned().await.map_err(|_| closed())?;
        let item = Item { entries: batch, callback: Box::new(callback), _permit: permit };
        let guard = self.tx.lock().expect("appender lock");
        let tx = guard.as_ref().ok_or_else(closed)?;
        tx.send(item).map_err(|_| closed())
    }

    /// Appends a batch and waits for its LSNs.
    pub async fn append(&self, batch: Vec<Vec<u8>>) -> BatchResult {
        let (tx, rx) = oneshot::channel();
        self.append_batch(batch, move |r| {
            let _ = tx.send(r);
        })
        .await?;
        rx.await.map_err(|_| ClientError::Status(tonic::Status::unavailable("the appender stopped")))?
    }

    /// Fails new appends at once and returns after every pending callback ran.
    pub async fn close(&self) {
        self.tx.lock().expect("appender lock").take();
        if let Some(w) = self.worker.lock().await.take() {
            let _ = w.await;
        }
    }
}

struct Pending {
    seq: u64,
    entries: Vec<Vec<u8>>,
    callback: BatchCallback,
    _permit: OwnedSemaphorePermit,
}

struct Worker {
    channel: Channel,
    stream: String,
    pipeline: usize,
    retry_deadline: Duration,
    producer_id: u64,
    producer_epoch: u64,
    fence: Option<pb::Fence>,
    next_seq: u64,
    pending: VecDeque<Pending>,
}

/// Why a stream session ended.
enum End {
    /// The appender was closed and everything answered.
    Done,
    /// Open a new stream at once (batches were renumbered).
    Reset,
    /// The stream broke (retry with backoff).
    Broken(ClientError),
}

impl Worker {
    fn request(&self, p: &Pending) -> pb::AppendRequest {
        pb::AppendRequest {
            stream: self.stream.clone(),
            entries: p.entries.clone(),
            pipeline_size: self.pipeline as u32,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            batch_seq: p.seq,
            fence: self.fence.clone(),
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Item>) {
        let mut open = true;
        let mut backoff = Duration::from_millis(50);
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.session(&mut rx, &mut open).await {
                End::Done => return,
                End::Reset => continue,
                End::Broken(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.retry_deadline {
                        for p in self.pending.drain(..) {
                            (p.callback)(Err(e.clone()));
                        }
                        failing_since = None;
                        if !open {
                            return;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
    }

    /// One Append stream: resends what is pending, then appends until it breaks.
    async fn session(&mut self, rx: &mut mpsc::UnboundedReceiver<Item>, open: &mut bool) -> End {
        if !*open && self.pending.is_empty() {
            return End::Done;
        }
        let (tx, req_rx) = mpsc::channel(MAX_PIPELINE * 2);
        for p in &self.pending {
            let _ = tx.try_send(self.request(p));
        }
        let mut client = pb::log_client::LogClient::new(self.channel.clone()).max_encoding_message_size(64 << 20);
        let mut responses = match client.append(ReceiverStream::new(req_rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return End::Broken(ClientError::Status(s)),
        };
        loop {
            if !*open && self.pending.is_empty() {
                return End::Done;
            }
            tokio::select! {
                item = rx.recv(), if *open && self.pending.len() < self.pipeline => {
                    let Some(item) = item else { *open = false; continue };
                    let p = Pending { seq: self.next_seq, entries: item.entries, callback: item.callback, _permit: item._permit };
                    self.next_seq += 1;
                    let req = self.request(&p);
                    self.pending.push_back(p);
                    if tx.send(req).await.is_err() {
                        return End::Broken(ClientError::Status(tonic::Status::unavailable("the append stream closed")));
                    }
                }
                resp = responses.next() => {
                    let r = match resp {
                        Some(Ok(r)) => r,
                        Some(Err(s)) => return End::Broken(ClientError::Status(s)),
                        None => return End::Broken(ClientError::Status(tonic::Status::unavailable("the append stream ended"))),
                    };
                    let Some(front) = self.pending.front() else { continue };
                    if r.batch_seq != front.seq {
                        continue; // an answer to a batch of an earlier session
                    }
                    match r.error {
                        None => {
                            let p = self.pending.pop_front().expect("front");
                            (p.callback)(Ok(r.lsns));
                        }
                        Some(e) => {
                            let code = tonic::Code::from_i32(e.code);
                            let fenced = e.reason == pb::AppendErrorReason::Fenced as i32;
                            let status = tonic::Status::new(code, e.message);
                            match code {
                                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
                                    // This batch alone fails. It consumed no batch number, so the
                                    // ones sent after it move down by one (the primary refuses
                                    // them as a gap) and go again on a new stream.
                                    let p = self.pending.pop_front().expect("front");
                                    let err = if fenced {
                                        ClientError::Fenced(status.message().to_string())
                                    } else {
                                        ClientError::Status(status)
                                    };
                                    (p.callback)(Err(err));
                                    for q in self.pending.iter_mut() {
                                        q.seq -= 1;
                                    }
                                    self.next_seq -= 1;
                                    return End::Reset;
                                }
                                _ => return End::Broken(ClientError::Status(status)),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One committed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its LSN.
    pub lsn: u64,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// First available and last committed LSN of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// First available LSN.
    pub first_lsn: u64,
    /// Last committed LSN (0: empty).
    pub last_lsn: u64,
}

impl Client {
    fn log(&self) -> pb::log_client::LogClient<Channel> {
        // Reads carry up to a few MiB and a batch up to the sidecar's batch limit.
        pb::log_client::LogClient::new(self.channel()).max_decoding_message_size(64 << 20)
    }

    /// A pipelined, idempotent appender of `stream`.
    pub fn appender(&self, stream: &str, opts: AppenderOptions) -> LogStreamAppender {
        LogStreamAppender::new(self, stream, opts)
    }

    /// Creates a stream (0: the sidecar's defaults); idempotent with the same settings.
    pub async fn create_stream(&self, name: &str, rf: u32, ack_quorum: u32) -> Result<pb::StreamInfo, ClientError> {
        let req = pb::CreateStreamRequest { name: name.into(), replication_factor: rf, ack_quorum };
        Ok(self.log().create_stream(req).await?.into_inner())
    }

    /// Settings, replicas, primary and tail of a stream.
    pub async fn describe_stream(&self, name: &str) -> Result<pb::StreamInfo, ClientError> {
        Ok(self.log().describe_stream(pb::DescribeStreamRequest { name: name.into() }).await?.into_inner())
    }

    /// Moves `name` to the replicas `replicas` (distinct members, as many as its replication
    /// factor); returns the stream as it is after the move.
    pub async fn move_stream(&self, name: &str, replicas: &[String]) -> Result<pb::StreamInfo, ClientError> {
        let req = pb::MoveStreamRequest { name: name.into(), replicas: replicas.to_vec() };
        Ok(self.log().move_stream(req).await?.into_inner())
    }

    /// Names of all streams.
    pub async fn list_streams(&self) -> Result<Vec<String>, ClientError> {
        Ok(self.log().list_streams(pb::ListStreamsRequest {}).await?.into_inner().names)
    }

    /// Up to `max` committed entries from `from`.
    pub async fn read(&self, stream: &str, from: u64, max: u32) -> Result<Vec<Entry>, ClientError> {
        let r = self.log().read(pb::ReadRequest { stream: stream.into(), from, max }).await?.into_inner();
        Ok(r.entries.into_iter().map(|e| Entry { lsn: e.lsn, data: e.data }).collect())
    }

    /// First available and last committed LSN.
    pub async fn tail(&self, stream: &str) -> Result<Tail, ClientError> {
        let r = self.log().tail(pb::TailRequest { stream: stream.into() }).await?.into_inner();
        Ok(Tail { first_lsn: r.first_lsn, last_lsn: r.last_lsn })
    }

    /// Trims entries below `before`; returns the first available LSN.
    pub async fn trim(&self, stream: &str, before: u64) -> Result<u64, ClientError> {
        Ok(self.log().trim(pb::TrimRequest { stream: stream.into(), before }).await?.into_inner().first_lsn)
    }

    /// Every committed entry from `from` on, then the entries that follow, until dropped.
    pub async fn subscribe(
        &self,
        stream: &str,
        from: u64,
    ) -> Result<impl Stream<Item = Result<Entry, ClientError>> + Send + 'static, ClientError> {
        let s = self.log().subscribe(pb::SubscribeRequest { stream: stream.into(), from }).await?.into_inner();
        Ok(s.flat_map(|m| {
            let items: Vec<Result<Entry, ClientError>> = match m {
                Ok(m) => m.entries.into_iter().map(|e| Ok(Entry { lsn: e.lsn, data: e.data })).collect(),
                Err(s) => vec![Err(ClientError::Status(s))],
            };
            futures::stream::iter(items)
        }))
    }
}
