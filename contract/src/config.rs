//! Sidecar configuration: command-line flags with environment fallbacks, and the default ports,
//! addresses and socket that the operator and the client rely on.
//!
//! This module is the contract between the operator and the sidecar: the operator renders
//! arguments and environment for [`SidecarArgs`] and its tests parse them with
//! [`SidecarArgs::try_parse_from`] (plus [`crate::membership::MembersFile::load`] for the
//! mounted members file and [`DividerArgs::load`] for the divider config), so it can never
//! render a pod the sidecar cannot start (`operator/tests/contract.rs`).
//!
//! Flags are grouped by what they configure: the sidecar as a whole ([`SidecarArgs`]), and one
//! section per primitive ([`SequencerArgs`], [`LogArgs`], [`DividerArgs`]), each under its own heading in
//! `--help`. A new primitive adds one section here and flattens it into [`SidecarArgs`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::divider::{DividerConfig, DividerConfigError};
use crate::validate::{validate_name, NameError};

/// Default path of the app-facing Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/ordo/ordo.sock";
/// Default loopback address of the app-facing TCP listener.
pub const DEFAULT_APP_LISTEN: &str = "127.0.0.1:7070";
/// Default peer (member-to-member) listen address.
pub const DEFAULT_PEER_LISTEN: &str = "0.0.0.0:7071";
/// Default admin HTTP listen address (`/live`, `/ready`, `/metrics`, `/status`).
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:7072";
/// Default peer port, used by the operator for Services and NetworkPolicies.
pub const DEFAULT_PEER_PORT: u16 = 7071;
/// Default admin port, used by the operator for probes.
pub const DEFAULT_ADMIN_PORT: u16 = 7072;
/// Default number of IDs a sidecar leases per refill of a sequence's buffer.
pub const DEFAULT_RANGE_SIZE: u64 = 1024;
/// Most worker threads a sidecar may be given.
pub const MAX_WORKER_THREADS: usize = 256;

/// What this sidecar does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Stores registers durably and votes in quorums (SeqCluster pods).
    Member,
    /// Holds no data; proposes to the members named in the members file (WorkDivider pods).
    Client,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable otherwise.
    Auto,
    /// One JSON object per line (in cluster).
    Json,
    /// Human-readable.
    Text,
}

/// `ordo-sidecar` flags. Every flag has an `ORDO_*` environment fallback.
#[derive(Debug, Clone, Parser)]
#[command(name = "ordo-sidecar", version, about = "Ordo sidecar: quorum sequencer served over a localhost gRPC socket")]
pub struct SidecarArgs {
    /// Member (stores data, votes) or client (proposes to a SeqCluster's members).
    #[arg(long, env = "ORDO_ROLE", value_enum, default_value = "member")]
    pub role: Role,

    /// This sidecar's id; a member's id must appear in the members file. Defaults to the pod name.
    #[arg(long, env = "ORDO_ID")]
    pub id: Option<String>,

    /// Data directory of a member (the embedded store lives here).
    #[arg(long, env = "ORDO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Members file (YAML or JSON: epoch, members, optional quorum sizes and previous configuration).
    /// Reloaded when it changes.
    #[arg(long, env = "ORDO_MEMBERS_FILE")]
    pub members_file: PathBuf,

    /// Peer API listen address (member role).
    #[arg(long, env = "ORDO_PEER_LISTEN", default_value = DEFAULT_PEER_LISTEN)]
    pub peer_listen: SocketAddr,

    /// File holding the shared peer token (a mounted Secret).
    #[arg(long, env = "ORDO_PEER_TOKEN_FILE", conflicts_with = "peer_token")]
    pub peer_token_file: Option<PathBuf>,

    /// The shared peer token itself (prefer --peer-token-file outside development).
    #[arg(long, env = "ORDO_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,

    /// App API Unix socket.
    #[arg(long = "socket", env = "ORDO_SOCKET", default_value = DEFAULT_SOCKET)]
    pub app_socket: PathBuf,

    /// App API TCP listener; must be a loopback address. `off` disables it.
    #[arg(long, env = "ORDO_APP_LISTEN", default_value = DEFAULT_APP_LISTEN)]
    pub app_listen: String,

    /// Admin HTTP listen address: /live, /ready, /metrics, /status.
    #[arg(long, env = "ORDO_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    /// Deadline of one app request (quorum rounds included), in milliseconds.
    #[arg(long, env = "ORDO_REQUEST_TIMEOUT_MS", default_value_t = 2000)]
    pub request_timeout_ms: u64,

    /// How long SIGTERM waits for in-flight requests before exiting, in milliseconds.
    #[arg(long, env = "ORDO_DRAIN_TIMEOUT_MS", default_value_t = 5000)]
    pub drain_timeout_ms: u64,

    /// Threads running the sidecar's requests and rounds (0: one per core available to the
    /// process, which counts a container's CPU limit).
    #[arg(long, env = "ORDO_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Log format.
    #[arg(long, env = "ORDO_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    /// Sequencer settings.
    #[command(flatten)]
    pub sequencer: SequencerArgs,

    /// Work divider settings.
    #[command(flatten)]
    pub divider: DividerArgs,

    /// Register API settings.
    #[command(flatten)]
    pub registers: RegistersArgs,

    /// Log streams.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Register API flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Registers")]
pub struct RegistersArgs {
    /// Serve `ordo.v1.Registers` on the app socket: linearizable versioned values with
    /// compare-and-set, in the app's own `app/` key namespace. Off by default.
    #[arg(long, env = "ORDO_REGISTERS_API")]
    pub registers_api: bool,
}

/// Sequencer flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sequencer")]
pub struct SequencerArgs {
    /// IDs leased per buffer refill, for sequences without their own setting.
    #[arg(long, env = "ORDO_RANGE_SIZE", default_value_t = DEFAULT_RANGE_SIZE)]
    pub range_size: u64,

    /// Per-sequence range sizes, `NAME=SIZE`, comma-separated or repeated.
    #[arg(long = "sequence-range", env = "ORDO_SEQUENCE_RANGES", value_delimiter = ',', value_parser = parse_sequence_range)]
    pub sequence_ranges: Vec<(String, u64)>,

    /// Largest `count` one Next request may ask for.
    #[arg(long, env = "ORDO_MAX_COUNT", default_value_t = 1_000_000)]
    pub max_count: u64,

    /// Quorum allocations of one sequence this sidecar keeps in flight for strict (and
    /// larger-than-a-range) requests, 1..=16. More lowers strict latency where cores are idle;
    /// on a CPU-bound machine one, serving every queued request at once, is fastest.
    #[arg(long, env = "ORDO_SEQUENCE_ALLOCATIONS_IN_FLIGHT", default_value_t = DEFAULT_ALLOCATIONS_IN_FLIGHT)]
    pub sequence_allocations_in_flight: usize,
}

/// Default of `--sequence-allocations-in-flight` (measured best on 2 cores: `docs/benchmarks.md`).
pub const DEFAULT_ALLOCATIONS_IN_FLIGHT: usize = 1;
/// Largest `--sequence-allocations-in-flight`.
pub const MAX_ALLOCATIONS_IN_FLIGHT: usize = 16;

/// Default replication factor of a log stream (capped at the cluster's size by the operator).
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// Largest replication factor (a SeqCluster has at most 31 members).
pub const MAX_REPLICATION_FACTOR: u32 = 31;
/// Default largest log entry, bytes.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 20;
/// Default largest batch of log entries, bytes.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 4 << 20;
/// Default most entries in one batch.
pub const DEFAULT_MAX_BATCH_ENTRIES: u32 = 4096;
/// Default append bytes one app connection may have in flight before the sidecar stops reading.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 32 << 20;
/// Largest entry, batch or in-flight limit a sidecar accepts (the peer message limit is 64 MiB).
pub const MAX_LOG_BYTES_LIMIT: u64 = 48 << 20;
/// Default of `--streams-rebalance-moves`: stream moves the rebalancer runs at once.
pub const DEFAULT_REBALANCE_MOVES: u32 = 2;
/// Largest `--streams-rebalance-moves`.
pub const MAX_REBALANCE_MOVES: u32 = 16;

/// Log stream flags: defaults for streams created without their own settings, limits, retention.
/// The operator renders them from `SeqCluster.spec.logs` with [`LogArgs::to_args`].
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(next_help_heading = "Log streams")]
pub struct LogArgs {
    /// Replicas of a stream created without its own setting.
    #[arg(long = "streams-replication-factor", env = "ORDO_STREAMS_REPLICATION_FACTOR", default_value_t = DEFAULT_REPLICATION_FACTOR)]
    pub replication_factor: u32,
    /// Replicas that must hold an entry durably before it is acknowledged (default: a majority
    /// of the replication factor).
    #[arg(long = "streams-ack-quorum", env = "ORDO_STREAMS_ACK_QUORUM")]
    pub ack_quorum: Option<u32>,
    /// Largest entry, in bytes.
    #[arg(long = "streams-max-entry-bytes", env = "ORDO_STREAMS_MAX_ENTRY_BYTES", default_value_t = DEFAULT_MAX_ENTRY_BYTES)]
    pub max_entry_bytes: u64,
    /// Largest batch, in bytes (the sum of its entries).
    #[arg(long = "streams-max-batch-bytes", env = "ORDO_STREAMS_MAX_BATCH_BYTES", default_value_t = DEFAULT_MAX_BATCH_BYTES)]
    pub max_batch_bytes: u64,
    /// Most entries in one batch.
    #[arg(long = "streams-max-batch-entries", env = "ORDO_STREAMS_MAX_BATCH_ENTRIES", default_value_t = DEFAULT_MAX_BATCH_ENTRIES)]
    pub max_batch_entries: u32,
    /// Append bytes one Append stream may have in flight; beyond it the sidecar stops reading
    /// (backpressure), so its memory stays bounded.
    #[arg(long = "streams-max-inflight-bytes", env = "ORDO_STREAMS_MAX_INFLIGHT_BYTES", default_value_t = DEFAULT_MAX_INFLIGHT_BYTES)]
    pub max_inflight_bytes: u64,
    /// Trim entries older than this many seconds (0: keep them until the app trims). The
    /// stream's primary deletes whole segment files once their last write is older; the newest
    /// file always stays.
    #[arg(long = "streams-retention-seconds", env = "ORDO_STREAMS_RETENTION_SECONDS", default_value_t = 0)]
    pub retention_seconds: u64,
    /// Trim the oldest entries of a stream beyond this many bytes (0: no limit). The primary
    /// deletes the oldest segment files while the rest exceed the limit; files roll at a quarter
    /// of it, so a replica holds about 1.25 times the limit at most (plus a second of appends).
    #[arg(long = "streams-retention-bytes", env = "ORDO_STREAMS_RETENTION_BYTES", default_value_t = 0)]
    pub retention_bytes: u64,
    /// Refuse appends to unknown streams instead of creating them with the defaults above.
    #[arg(long = "streams-no-auto-create", env = "ORDO_STREAMS_NO_AUTO_CREATE")]
    pub no_auto_create: bool,
    /// After a membership change, move stream replicas (onto members that joined, off crowded
    /// ones) until every member holds within one of the mean, this many streams at once;
    /// 0 switches the rebalance off (replicas then move onto new members only by hand).
    #[arg(long = "streams-rebalance-moves", env = "ORDO_STREAMS_REBALANCE_MOVES", default_value_t = DEFAULT_REBALANCE_MOVES)]
    pub rebalance_moves: u32,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self {
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            ack_quorum: None,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_batch_entries: DEFAULT_MAX_BATCH_ENTRIES,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            retention_seconds: 0,
            retention_bytes: 0,
            no_auto_create: false,
            rebalance_moves: DEFAULT_REBALANCE_MOVES,
        }
    }
}

impl LogArgs {
    /// Effective ack quorum: the flag, else a majority of the replication factor.
    pub fn effective_ack_quorum(&self) -> u32 {
        self.ack_quorum.unwrap_or(self.replication_factor / 2 + 1)
    }

    /// Checks the settings against each other: `1 <= ack quorum <= replication factor <= 31`,
    /// `entry <= batch <= in-flight <= 48 MiB`, at least one entry per batch.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rf = self.replication_factor;
        if !(1..=MAX_REPLICATION_FACTOR).contains(&rf) {
            return Err(ConfigError::OutOfRange(format!(
                "--streams-replication-factor must be in 1..={MAX_REPLICATION_FACTOR}, got {rf}"
            )));
        }
        let ack = self.effective_ack_quorum();
        if !(1..=rf).contains(&ack) {
            return Err(ConfigError::OutOfRange(format!(
                "--streams-ack-quorum must be in 1..={rf} (the replication factor), got {ack}"
            )));
        }
        if self.max_batch_entries == 0 {
            return Err(ConfigError::OutOfRange("--streams-max-batch-entries must be at least 1".into()));
        }
        if self.rebalance_moves > MAX_REBALANCE_MOVES {
            return Err(ConfigError::OutOfRange(format!(
                "--streams-rebalance-moves must be in 0..={MAX_REBALANCE_MOVES} (0: off), got {}",
                self.rebalance_moves
            )));
        }
        let (entry, batch, inflight) = (self.max_entry_bytes, self.max_batch_bytes, self.max_inflight_bytes);
        if !(entry >= 1 && entry <= batch && batch <= inflight && inflight <= MAX_LOG_BYTES_LIMIT) {
            return Err(ConfigError::OutOfRange(format!(
                "stream limits must satisfy 1 <= --streams-max-entry-bytes ({entry}) <= --streams-max-batch-bytes \
                 ({batch}) <= --streams-max-inflight-bytes ({inflight}) <= {MAX_LOG_BYTES_LIMIT}"
            )));
        }
        Ok(())
    }

    /// The flags that reproduce these settings (what the operator renders; parsing them back
    /// gives `self`).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--streams-replication-factor={}", self.replication_factor),
            format!("--streams-max-entry-bytes={}", self.max_entry_bytes),
            format!("--streams-max-batch-bytes={}", self.max_batch_bytes),
            format!("--streams-max-batch-entries={}", self.max_batch_entries),
            format!("--streams-max-inflight-bytes={}", self.max_inflight_bytes),
            format!("--streams-retention-seconds={}", self.retention_seconds),
            format!("--streams-retention-bytes={}", self.retention_bytes),
            format!("--streams-rebalance-moves={}", self.rebalance_moves),
        ];
        if let Some(ack) = self.ack_quorum {
            args.push(format!("--streams-ack-quorum={ack}"));
        }
        if self.no_auto_create {
            args.push("--streams-no-auto-create".into());
        }
        args
    }
}

/// Work divider flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Work divider")]
pub struct DividerArgs {
    /// WorkDivider config file (YAML: divider, seq_cluster, keys, default_affinity), as the
    /// operator mounts it in WorkDivider pods. Read and checked at startup; a bad file stops the
    /// sidecar. Its divider is the default of `ordo.v1.Divider` calls that name none.
    #[arg(long, env = "ORDO_DIVIDER_CONFIG")]
    pub divider_config: Option<PathBuf>,

    /// Member lease: a member whose sidecar stops renewing loses its keys this long after its
    /// last renewal (plus the drift margin), in milliseconds.
    #[arg(long, env = "ORDO_DIVIDER_LEASE_MS", default_value_t = 3000)]
    pub divider_lease_ms: u64,

    /// Drift margin: a holder's right ends this much before its lease, and observers wait this
    /// much after it (covers clock rate differences up to margin/lease), in milliseconds.
    #[arg(long, env = "ORDO_DIVIDER_DRIFT_MARGIN_MS", default_value_t = 300)]
    pub divider_drift_margin_ms: u64,

    /// How long an app has to confirm a stop before its token is declared dead, in milliseconds.
    #[arg(long, env = "ORDO_DIVIDER_STOP_TIMEOUT_MS", default_value_t = 10_000)]
    pub divider_stop_timeout_ms: u64,
}

/// A configuration that parsed but cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// Member role without a data directory.
    #[error("--data-dir (ORDO_DATA_DIR) is required in the member role")]
    MissingDataDir,
    /// No peer token anywhere.
    #[error(
        "a peer token is required: set --peer-token-file (ORDO_PEER_TOKEN_FILE) or --peer-token (ORDO_PEER_TOKEN)"
    )]
    MissingToken,
    /// The token file could not be read or is empty.
    #[error("peer token file {path}: {reason}")]
    TokenFile { path: String, reason: String },
    /// No id given and no pod name or hostname to fall back on.
    #[error("--id (ORDO_ID) is required: no POD_NAME or HOSTNAME to default to")]
    MissingId,
    /// The id is not a valid name.
    #[error("invalid id: {0}")]
    InvalidId(NameError),
    /// App TCP listener on a non-loopback address.
    #[error("--app-listen must be a loopback address (the app API is local only), got {0}")]
    AppListenNotLoopback(String),
    /// A numeric setting out of range.
    #[error("{0}")]
    OutOfRange(String),
    /// The divider config file is unusable.
    #[error("--divider-config (ORDO_DIVIDER_CONFIG): {0}")]
    DividerConfig(DividerConfigError),
}

impl SidecarArgs {
    /// Effective id: `--id`, else `POD_NAME`, else `HOSTNAME`.
    pub fn resolved_id(&self) -> Result<String, ConfigError> {
        let id = self
            .id
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::MissingId)?;
        validate_name(&id).map_err(ConfigError::InvalidId)?;
        Ok(id)
    }

    /// The peer token from the file or the flag.
    pub fn resolved_token(&self) -> Result<String, ConfigError> {
        if let Some(path) = &self.peer_token_file {
            let raw = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::TokenFile { path: path.display().to_string(), reason: e.to_string() })?;
            let token = raw.trim().to_string();
            if token.is_empty() {
                return Err(ConfigError::TokenFile { path: path.display().to_string(), reason: "empty".into() });
            }
            return Ok(token);
        }
        self.peer_token.clone().filter(|t| !t.is_empty()).ok_or(ConfigError::MissingToken)
    }

    /// The app TCP listener, `None` when disabled.
    pub fn app_tcp(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.app_listen.is_empty() || self.app_listen == "off" {
            return Ok(None);
        }
        let addr: SocketAddr =
            self.app_listen.parse().map_err(|_| ConfigError::AppListenNotLoopback(self.app_listen.clone()))?;
        if !addr.ip().is_loopback() {
            return Err(ConfigError::AppListenNotLoopback(self.app_listen.clone()));
        }
        Ok(Some(addr))
    }

    /// Request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Checks everything that parsing alone cannot (files are only read for the token).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolved_id()?;
        if self.role == Role::Member && self.data_dir.is_none() {
            return Err(ConfigError::MissingDataDir);
        }
        self.resolved_token()?;
        self.app_tcp()?;
        if self.request_timeout_ms < 10 {
            return Err(ConfigError::OutOfRange("--request-timeout-ms must be at least 10".into()));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError::OutOfRange(format!(
                "--worker-threads must be at most {MAX_WORKER_THREADS} (0: one per core), got {}",
                self.worker_threads
            )));
        }
        self.sequencer.validate()?;
        self.log.validate()?;
        self.divider.validate()
    }
}

impl SequencerArgs {
    /// Per-sequence range sizes.
    pub fn range_overrides(&self) -> BTreeMap<String, u64> {
        self.sequence_ranges.iter().cloned().collect()
    }

    /// Checks the numeric settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_count == 0 {
            return Err(ConfigError::OutOfRange("--max-count must be at least 1".into()));
        }
        let max_range = self.max_count.saturating_mul(1024);
        if self.range_size == 0 || self.range_size > max_range {
            return Err(ConfigError::OutOfRange(format!("--range-size must be in 1..={max_range}")));
        }
        if !(1..=MAX_ALLOCATIONS_IN_FLIGHT).contains(&self.sequence_allocations_in_flight) {
            return Err(ConfigError::OutOfRange(format!(
                "--sequence-allocations-in-flight must be in 1..={MAX_ALLOCATIONS_IN_FLIGHT}"
            )));
        }
        Ok(())
    }
}

impl DividerArgs {
    /// Checks the timing settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.divider_lease_ms < 100 || self.divider_drift_margin_ms * 3 >= self.divider_lease_ms {
            return Err(ConfigError::OutOfRange(
                "--divider-lease-ms must be at least 100 and more than 3x --divider-drift-margin-ms".into(),
            ));
        }
        if self.divider_stop_timeout_ms == 0 {
            return Err(ConfigError::OutOfRange("--divider-stop-timeout-ms must be at least 1".into()));
        }
        Ok(())
    }

    /// Reads and checks the divider config file, if one is configured.
    pub fn load(&self) -> Result<Option<DividerConfig>, ConfigError> {
        self.divider_config
            .as_deref()
            .map(|path| DividerConfig::load(path).map_err(ConfigError::DividerConfig))
            .transpose()
    }
}

fn parse_sequence_range(s: &str) -> Result<(String, u64), String> {
    let (name, size) = s.split_once('=').ok_or_else(|| format!("expected NAME=SIZE, got {s:?}"))?;
    validate_name(name).map_err(|e| e.to_string())?;
    let size: u64 = size.parse().map_err(|_| format!("range size of {name} is not a number: {size:?}"))?;
    if size == 0 {
        return Err(format!("range size of {name} must be at least 1"));
    }
    Ok((name.to_string(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> SidecarArgs {
        let mut all = vec!["ordo-sidecar"];
        all.extend_from_slice(args);
        SidecarArgs::try_parse_from(all).expect("parses")
    }

    #[test]
    fn member_defaults() {
        let a = parse(&["--id", "m-0", "--data-dir", "/d", "--members-file", "/m.yaml", "--peer-token", "t"]);
        assert_eq!(a.role, Role::Member);
        assert_eq!(a.app_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(a.app_tcp().unwrap(), Some("127.0.0.1:7070".parse().unwrap()));
        assert_eq!(a.sequencer.range_size, 1024);
        assert_eq!(a.divider.load(), Ok(None));
        a.validate().unwrap();
    }

    #[test]
    fn worker_threads_default_to_one_per_core_and_are_bounded() {
        let member = ["--id", "m-0", "--data-dir", "/d", "--members-file", "/m.yaml", "--peer-token", "t"];
        assert_eq!(parse(&member).worker_threads, 0, "0: one per core");
        let with = |n: &str| {
            let mut args = member.to_vec();
            args.extend(["--worker-threads", n]);
            parse(&args)
        };
        assert_eq!(with("1").worker_threads, 1);
        with("1").validate().unwrap();
        let e = with("257").validate().unwrap_err();
        assert!(e.to_string().contains("--worker-threads must be at most 256"), "{e}");
    }

    #[test]
    fn member_without_data_dir_is_rejected() {
        let a = parse(&["--id", "m-0", "--members-file", "/m.yaml", "--peer-token", "t"]);
        assert_eq!(a.validate(), Err(ConfigError::MissingDataDir));
    }

    #[test]
    fn app_listener_must_be_loopback() {
        let client = |listen: &str| {
            parse(&[
                "--id",
                "c",
                "--role",
                "client",
                "--members-file",
                "/m",
                "--peer-token",
                "t",
                "--app-listen",
                listen,
            ])
        };
        assert!(matches!(client("0.0.0.0:7070").validate(), Err(ConfigError::AppListenNotLoopback(_))));
        assert_eq!(client("off").app_tcp().unwrap(), None);
        assert_eq!(client("127.0.0.2:7070").app_tcp().unwrap(), Some("127.0.0.2:7070".parse().unwrap()));
    }

    #[test]
    fn sequence_ranges_parse_and_reject_garbage() {
        let a = parse(&["--members-file", "/m", "--sequence-range", "orders=10,users=1"]);
        assert_eq!(a.sequencer.range_overrides().get("orders"), Some(&10));
        let mut bad = vec!["ordo-sidecar", "--members-file", "/m", "--sequence-range", "orders=0"];
        assert!(SidecarArgs::try_parse_from(&bad).is_err());
        bad[4] = "no-equals";
        assert!(SidecarArgs::try_parse_from(&bad).is_err());
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "secret\n").unwrap();
        let a = parse(&["--id", "m", "--members-file", "/m", "--peer-token-file", p.to_str().unwrap()]);
        assert_eq!(a.resolved_token().unwrap(), "secret");
    }

    #[test]
    fn divider_config_is_loaded_and_a_bad_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("divider.yaml");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &good,
            "divider: stocks\nseq_cluster: ids\nseq_cluster_epoch: 1\ndefault_affinity: 1\nlease_ms: 5000\nstop_timeout_ms: 0\nkeys: {partitions: 8, prefix: p-}\n",
        )
        .unwrap();
        std::fs::write(
            &bad,
            "divider: stocks\nseq_cluster: ids\nseq_cluster_epoch: 1\ndefault_affinity: -2\nlease_ms: 5\nstop_timeout_ms: 0\nkeys: {names: []}\n",
        )
        .unwrap();
        let with = |p: &std::path::Path| parse(&["--members-file", "/m", "--divider-config", p.to_str().unwrap()]);
        let loaded = with(&good).divider.load().unwrap().expect("a config");
        assert_eq!((loaded.divider.as_str(), loaded.keys.partitions), ("stocks", Some(8)));
        let e = with(&bad).divider.load().unwrap_err().to_string();
        assert!(e.starts_with("--divider-config (ORDO_DIVIDER_CONFIG): divider config is invalid"), "{e}");
        assert!(e.contains("default_affinity") && e.contains("keys.names") && e.contains("lease_ms"), "{e}");
        let missing = with(&dir.path().join("nope.yaml")).divider.load().unwrap_err().to_string();
        assert!(missing.contains("nope.yaml"), "{missing}");
    }

    #[test]
    fn each_primitive_has_its_own_help_section() {
        use clap::CommandFactory;
        let help = SidecarArgs::command().render_long_help().to_string();
        let seq = help.find("Sequencer:").expect("a Sequencer heading");
        let div = help.find("Work divider:").expect("a Work divider heading");
        assert!(help[seq..div].contains("--range-size") && help[div..].contains("--divider-config"), "{help}");
        for flag in ["--divider-lease-ms", "--divider-drift-margin-ms", "--divider-stop-timeout-ms"] {
            assert!(help[div..].contains(flag), "{flag} missing from the Work divider section");
        }
    }

    #[test]
    fn divider_timing_is_checked() {
        let base = ["--id", "c", "--role", "client", "--members-file", "/m", "--peer-token", "t"];
        let with = |extra: &[&str]| {
            let mut argv = vec!["ordo-sidecar"];
            argv.extend(base);
            argv.extend(extra);
            SidecarArgs::try_parse_from(argv).unwrap().validate()
        };
        assert!(with(&[]).is_ok());
        assert!(with(&["--divider-lease-ms=900", "--divider-drift-margin-ms=300"]).is_err());
        assert!(with(&["--divider-lease-ms=50", "--divider-drift-margin-ms=1"]).is_err());
        assert!(with(&["--divider-stop-timeout-ms=0"]).is_err());
    }

    #[test]
    fn sequencer_limits_are_checked() {
        let base = ["--id", "c", "--role", "client", "--members-file", "/m", "--peer-token", "t"];
        let with = |extra: &[&str]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            parse(&all).validate()
        };
        assert!(matches!(with(&["--max-count", "0"]), Err(ConfigError::OutOfRange(_))));
        assert!(matches!(with(&["--range-size", "0"]), Err(ConfigError::OutOfRange(_))));
        assert!(matches!(with(&["--streams-ack-quorum", "4"]), Err(ConfigError::OutOfRange(_))));
        assert!(matches!(with(&["--streams-max-batch-bytes", "10"]), Err(ConfigError::OutOfRange(_))));
        assert!(matches!(with(&["--max-count", "1", "--range-size", "1025"]), Err(ConfigError::OutOfRange(_))));
        assert_eq!(with(&["--max-count", "1", "--range-size", "1024"]), Ok(()));
    }

    #[test]
    fn log_settings_round_trip_through_their_flags_and_are_checked() {
        let base = ["--id", "m-0", "--data-dir", "/d", "--members-file", "/m.yaml", "--peer-token", "t"];
        let defaults = parse(&base).log;
        assert_eq!(defaults, LogArgs::default());
        assert_eq!(defaults.effective_ack_quorum(), 2);
        let custom = LogArgs {
            replication_factor: 5,
            ack_quorum: Some(3),
            max_entry_bytes: 1000,
            max_batch_bytes: 10_000,
            max_batch_entries: 16,
            max_inflight_bytes: 100_000,
            retention_seconds: 3600,
            retention_bytes: 1 << 30,
            no_auto_create: true,
            rebalance_moves: 0,
        };
        let rendered = custom.to_args();
        let mut all: Vec<&str> = base.to_vec();
        all.extend(rendered.iter().map(String::as_str));
        let parsed = parse(&all);
        assert_eq!(parsed.log, custom);
        parsed.validate().unwrap();
        let bad = |f: &dyn Fn(&mut LogArgs)| {
            let mut l = LogArgs::default();
            f(&mut l);
            l.validate().unwrap_err().to_string()
        };
        assert!(bad(&|l| l.ack_quorum = Some(4)).contains("--streams-ack-quorum must be in 1..=3"));
        assert!(bad(&|l| l.ack_quorum = Some(0)).contains("--streams-ack-quorum"));
        assert!(bad(&|l| l.replication_factor = 0).contains("--streams-replication-factor"));
        assert!(bad(&|l| l.max_entry_bytes = l.max_batch_bytes + 1).contains("--streams-max-entry-bytes"));
        assert!(bad(&|l| l.max_inflight_bytes = MAX_LOG_BYTES_LIMIT + 1).contains("48"));
        assert!(bad(&|l| l.max_batch_entries = 0).contains("--streams-max-batch-entries"));
        assert!(bad(&|l| l.rebalance_moves = MAX_REBALANCE_MOVES + 1).contains("--streams-rebalance-moves"));
    }
}
