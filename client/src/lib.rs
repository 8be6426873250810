//! `ordo-client`: talk to the Ordo sidecar over its Unix socket (or loopback TCP).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ordo_client::ClientError> {
//! let client = ordo_client::Client::connect_default().await?;
//! let orders = client.sequence("orders", 1024);
//! let id = orders.next_id().await?; // in-process, from a leased range
//! let strict = client.next("orders", 1, true).await?; // through the quorum
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod divider;
mod log;
mod sequence;

use std::ops::Range;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use ordo_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};

pub use log::{AppenderOptions, BatchCallback, BatchResult, Entry, Fence, LogStreamAppender, Tail};
pub use sequence::Sequence;
/// gRPC status codes, as [`ClientError::code`] returns them.
pub use tonic::Code;

/// Environment variable naming the sidecar's socket (set by the operator in app containers).
pub const SOCKET_ENV: &str = "ORDO_SOCKET";

/// Client errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to the sidecar at {target}: {reason}")]
    Connect {
        /// Socket or address.
        target: String,
        /// Why.
        reason: String,
    },
    /// The sidecar answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    /// A fenced append was refused: the stream already took a higher token for the key, so
    /// this owner lost it (FAILED_PRECONDITION with reason FENCED on the wire).
    #[error("FailedPrecondition: {0}")]
    Fenced(String),
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(s)
    }
}

impl ClientError {
    /// The gRPC code, if the sidecar answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            ClientError::Connect { .. } => Some(tonic::Code::Unavailable),
            ClientError::Fenced(_) => Some(tonic::Code::FailedPrecondition),
        }
    }

    /// A fenced append was refused (this owner lost its key).
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClientError::Fenced(_))
    }
}

/// A connection to one sidecar. Cheap to clone; calls are multiplexed on one HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    target: String,
}

impl Client {
    /// Connects to `target`: a socket path (`/run/ordo/ordo.sock`, `unix:///...`) or
    /// `http://127.0.0.1:7070`.
    pub async fn connect(target: &str) -> Result<Self, ClientError> {
        let err = |reason: String| ClientError::Connect { target: target.to_string(), reason };
        let channel = if target.starts_with("http://") || target.starts_with("https://") {
            Endpoint::from_shared(target.to_string()).map_err(|e| err(e.to_string()))?.tcp_nodelay(true).connect().await
        } else {
            let path = PathBuf::from(target.strip_prefix("unix://").unwrap_or(target));
            if !path.exists() {
                return Err(err("no such socket (is the sidecar running?)".into()));
            }
            Endpoint::from_static("http://ordo.sock")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }))
                .await
        }
        .map_err(|e| err(e.to_string()))?;
        Ok(Self { channel, target: target.to_string() })
    }

    /// Connects to `$ORDO_SOCKET`, or the default socket path.
    pub async fn connect_default() -> Result<Self, ClientError> {
        let target = std::env::var(SOCKET_ENV).unwrap_or_else(|_| ordo_contract::config::DEFAULT_SOCKET.to_string());
        Self::connect(&target).await
    }

    /// The underlying gRPC channel, for any other client generated from the sidecar's services
    /// (e.g. `grpc.health.v1`).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Where this client is connected.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn seq(&self) -> pb::sequencer_client::SequencerClient<Channel> {
        pb::sequencer_client::SequencerClient::new(self.channel.clone())
    }

    /// A client of `ordo.v1.Registers` on this connection (served with `--registers-api`).
    pub fn registers(&self) -> pb::registers_client::RegistersClient<Channel> {
        pb::registers_client::RegistersClient::new(self.channel.clone())
    }

    /// A client of `ordo.v1.Divider` on this connection (the raw gRPC API).
    pub fn divider_api(&self) -> pb::divider_client::DividerClient<Channel> {
        pb::divider_client::DividerClient::new(self.channel.clone())
    }

    /// A handle on the divider `name` (empty: the sidecar's configured divider).
    pub fn divider(&self, name: &str) -> divider::Divider {
        divider::Divider::new(self.channel.clone(), name)
    }

    fn cluster(&self) -> pb::cluster_client::ClusterClient<Channel> {
        pb::cluster_client::ClusterClient::new(self.channel.clone())
    }

    /// `count` contiguous IDs; `strict` allocates through the quorum (ordered in real time).
    pub async fn next(&self, sequence: &str, count: u64, strict: bool) -> Result<Range<u64>, ClientError> {
        let r = self.seq().next(pb::NextRequest { sequence: sequence.to_string(), count, strict }).await?.into_inner();
        Ok(r.start..r.end)
    }

    /// The next ID the quorum would hand out.
    pub async fn current(&self, sequence: &str) -> Result<u64, ClientError> {
        Ok(self.seq().current(pb::CurrentRequest { sequence: sequence.to_string() }).await?.into_inner().next)
    }

    /// A stream of ID ranges of `batch` IDs each.
    pub async fn stream(&self, sequence: &str, batch: u64) -> Result<tonic::Streaming<pb::NextResponse>, ClientError> {
        Ok(self.seq().stream(pb::StreamRequest { sequence: sequence.to_string(), batch }).await?.into_inner())
    }

    /// Status of the sidecar and its view of the cluster.
    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        Ok(self.cluster().status(pb::StatusRequest {}).await?.into_inner())
    }

    /// A no-op call (measures the socket's round trip).
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.cluster().ping(pb::PingRequest {}).await?;
        Ok(())
    }

    /// A handle that leases `lease` IDs at a time from the sidecar and hands them out in-process.
    pub fn sequence(&self, name: &str, lease: u64) -> Sequence {
        Sequence::new(self.clone(), name.to_string(), lease)
    }
}

/// True when `p` looks like a socket path rather than a URL.
pub fn is_socket_path(p: &str) -> bool {
    !p.starts_with("http://")
        && !p.starts_with("https://")
        && Path::new(p.strip_prefix("unix://").unwrap_or(p)).is_absolute()
}
