//! The Log gRPC service (`ordo.v1.Log`) over [`crate::log::router::LogRouter`]: the Append
//! stream with its pipeline, reads, Subscribe's follow loop, trims and stream metadata.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use ordo_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::AppServices;
use crate::api::log_peer::{append_response, batch_of, log_status, Router};
use crate::log::router::{validate_stream, StreamInfo};
use crate::log::LogError;

/// Default pipeline size of an appender.
pub const DEFAULT_PIPELINE: u32 = 2;
/// Largest pipeline size.
pub const MAX_PIPELINE: u32 = 8;
/// Default and largest `max` of a read.
const DEFAULT_READ: u32 = 100;
const MAX_READ: u32 = 10_000;
/// How long one Subscribe poll waits for new entries at the primary.
const FOLLOW_WAIT: Duration = Duration::from_millis(1000);
/// How long Subscribe retries while a stream has no reachable primary before it ends.
const FOLLOW_GIVE_UP: Duration = Duration::from_secs(30);

/// The log's app services. One Append stream stops reading new batches while its batches in
/// flight hold `max_inflight` bytes or more (or its pipeline is full): backpressure that bounds the
/// sidecar's memory per connection to about `max_inflight` plus one batch.
pub fn services(router: &Arc<Router>, max_message: usize, max_inflight: usize) -> AppServices {
    AppServices::default().with_service(
        pb::log_server::LogServer::new(LogService { router: router.clone(), max_inflight })
            .max_decoding_message_size(max_message)
            // Reads answer up to MAX_READ_BYTES of entries whatever the batch limit (found by
            // `a_small_inflight_limit_holds_a_flooding_client_back`: with a 256 KiB batch
            // limit, reads of 2 MiB failed with OUT_OF_RANGE).
            .max_encoding_message_size(max_message.max(crate::log::store::MAX_READ_BYTES + (1 << 20))),
    )
}

/// The Log service.
pub struct LogService {
    router: Arc<Router>,
    max_inflight: usize,
}

fn info_to_pb(i: StreamInfo) -> pb::StreamInfo {
    pb::StreamInfo {
        name: i.name,
        replication_factor: i.meta.replication_factor,
        ack_quorum: i.meta.ack_quorum,
        replicas: i.meta.replicas,
        primary: i.primary,
        epoch: i.epoch,
        first_lsn: i.meta.first_lsn,
        last_lsn: i.last_lsn,
    }
}

fn read_max(max: u32) -> Result<u32, Status> {
    match max {
        0 => Ok(DEFAULT_READ),
        m if m > MAX_READ => Err(Status::invalid_argument(format!("max must be at most {MAX_READ}, got {m}"))),
        m => Ok(m),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::log_server::Log for LogService {
    type AppendStream = BoxStream<pb::AppendResponse>;

    async fn append(&self, req: Request<Streaming<pb::AppendRequest>>) -> Result<Response<Self::AppendStream>, Status> {
        let mut inbound = req.into_inner();
        let router = self.router.clone();
        let max_inflight = self.max_inflight;
        let in_flight = router.metrics().batches_in_flight.clone();
        let (out_tx, out_rx) = mpsc::channel::<Result<pb::AppendResponse, Status>>(MAX_PIPELINE as usize);
        tokio::spawn(async move {
            let mut pipeline = DEFAULT_PIPELINE as usize;
            let mut inflight = FuturesOrdered::new();
            // Payload bytes of the batches in flight.
            let mut inflight_bytes = 0usize;
            let mut open = true;
            // A message that does not decode ends the stream with its error, after the results
            // of the batches before it.
            let mut malformed: Option<Status> = None;
            loop {
                if !open && inflight.is_empty() {
                    if let Some(s) = malformed.take() {
                        let _ = out_tx.send(Err(s)).await;
                    }
                    return;
                }
                tokio::select! {
                    // A new batch is read only while the pipeline has room: backpressure.
                    msg = inbound.next(), if open && inflight.len() < pipeline && inflight_bytes < max_inflight => {
                        let mut m = match msg {
                            Some(Ok(m)) => m,
                            Some(Err(s)) => {
                                open = false;
                                malformed = Some(Status::invalid_argument(format!("malformed append request: {}", s.message())));
                                continue;
                            }
                            None => { open = false; continue; }
                        };
                        let (stream, seq) = (m.stream.clone(), m.batch_seq);
                        let bytes: usize = m.entries.iter().map(Vec::len).sum();
                        inflight_bytes += bytes;
                        in_flight.inc();
                        let submitted = match m.pipeline_size {
                            p if p > MAX_PIPELINE => Err(LogError::Invalid(format!(
                                "pipeline_size must be 1..={MAX_PIPELINE} (0 for the default {DEFAULT_PIPELINE}), got {p}"
                            ))),
                            p => {
                                pipeline = if p == 0 { DEFAULT_PIPELINE as usize } else { p as usize };
                                let batch = batch_of(&mut m);
                                Ok(router.submit(&stream, batch, false))
                            }
                        };
                        inflight.push_back(async move {
                            let r = match submitted {
                                Ok(rx) => rx.await.unwrap_or_else(|_| Err(LogError::Unavailable("the primary went away".into()))),
                                Err(e) => Err(e),
                            };
                            (bytes, append_response(stream, seq, r))
                        });
                    }
                    // The response is gone (the app went away, or the sidecar ended the
                    // stream at shutdown): stop reading, so the app's open request side does
                    // not hold the call (and a graceful shutdown) open.
                    _ = out_tx.closed() => {
                        in_flight.dec_by(inflight.len() as i64);
                        return;
                    }
                    Some((bytes, resp)) = inflight.next(), if !inflight.is_empty() => {
                        inflight_bytes -= bytes;
                        in_flight.dec();
                        if out_tx.send(Ok(resp)).await.is_err() {
                            in_flight.dec_by(inflight.len() as i64);
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Result<Response<pb::ReadResponse>, Status> {
        let r = req.into_inner();
        let max = read_max(r.max)?;
        let (entries, first, last) =
            self.router.read(&r.stream, r.from, max, Duration::ZERO, false).await.map_err(log_status)?;
        Ok(Response::new(pb::ReadResponse {
            stream: r.stream,
            entries: entries.into_iter().map(|e| pb::LogEntry { lsn: e.lsn, data: e.data }).collect(),
            first_lsn: first,
            last_lsn: last,
        }))
    }

    type SubscribeStream = BoxStream<pb::SubscribeResponse>;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = req.into_inner();
        validate_stream(&r.stream).map_err(log_status)?;
        // Checked once up front, so a bad start is an error of the call itself.
        let (_, first, _) = self.router.read(&r.stream, r.from, 0, Duration::ZERO, false).await.map_err(log_status)?;
        let router = self.router.clone();
        // A small buffer: the next read happens when the client has taken the previous one.
        let (tx, rx) = mpsc::channel::<Result<pb::SubscribeResponse, Status>>(2);
        let stream = r.stream;
        let mut next = if r.from == 0 { first } else { r.from };
        tokio::spawn(async move {
            let mut failing_since: Option<tokio::time::Instant> = None;
            let mut backoff = Duration::from_millis(50);
            loop {
                if tx.is_closed() {
                    return;
                }
                match router.read(&stream, next, 1000, FOLLOW_WAIT, false).await {
                    Ok((entries, _, _)) => {
                        failing_since = None;
                        backoff = Duration::from_millis(50);
                        let Some(last) = entries.last().map(|e| e.lsn) else { continue };
                        next = last + 1;
                        let msg = pb::SubscribeResponse {
                            stream: stream.clone(),
                            entries: entries.into_iter().map(|e| pb::LogEntry { lsn: e.lsn, data: e.data }).collect(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(LogError::Unavailable(why)) => {
                        // A primary change: follow the new one, for a while.
                        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > FOLLOW_GIVE_UP {
                            let _ = tx.send(Err(Status::unavailable(why))).await;
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(log_status(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn tail(&self, req: Request<pb::TailRequest>) -> Result<Response<pb::TailResponse>, Status> {
        let r = req.into_inner();
        let (_, first, last) = self.router.read(&r.stream, 0, 0, Duration::ZERO, false).await.map_err(log_status)?;
        Ok(Response::new(pb::TailResponse { stream: r.stream, first_lsn: first, last_lsn: last }))
    }

    async fn trim(&self, req: Request<pb::TrimRequest>) -> Result<Response<pb::TrimResponse>, Status> {
        let r = req.into_inner();
        let first = self.router.trim(&r.stream, r.before, false).await.map_err(log_status)?;
        Ok(Response::new(pb::TrimResponse { stream: r.stream, first_lsn: first }))
    }

    async fn create_stream(&self, req: Request<pb::CreateStreamRequest>) -> Result<Response<pb::StreamInfo>, Status> {
        let r = req.into_inner();
        self.router.create(&r.name, r.replication_factor, r.ack_quorum).await.map_err(log_status)?;
        Ok(Response::new(info_to_pb(self.router.describe(&r.name).await.map_err(log_status)?)))
    }

    async fn describe_stream(
        &self,
        req: Request<pb::DescribeStreamRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let r = req.into_inner();
        Ok(Response::new(info_to_pb(self.router.describe(&r.name).await.map_err(log_status)?)))
    }

    async fn move_stream(&self, req: Request<pb::MoveStreamRequest>) -> Result<Response<pb::StreamInfo>, Status> {
        let r = req.into_inner();
        validate_stream(&r.name).map_err(log_status)?;
        self.router.move_to(&r.name, &r.replicas).await.map_err(log_status)?;
        Ok(Response::new(info_to_pb(self.router.describe(&r.name).await.map_err(log_status)?)))
    }

    async fn list_streams(
        &self,
        _req: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        Ok(Response::new(pb::ListStreamsResponse { names: self.router.list().await.map_err(log_status)? }))
    }
}
